"""Pure-Python reference for map128.pyx: a 128-bit key -> 64-bit value map over a dict."""
from __future__ import annotations

from typing import Any


class U128Map:
    def __init__(self, capacity: int = 8) -> None:
        self._d: dict[int, int] = {}

    @staticmethod
    def _check(key: int) -> None:
        if not 0 <= key < 1 << 128:
            raise OverflowError("key must fit in 128 bits")

    def put(self, key: int, value: int) -> None:
        self._check(key)
        if not 0 <= value < 1 << 64:
            raise OverflowError("value must fit in 64 bits")
        self._d[key] = value

    def get(self, key: int, default: Any = None) -> Any:
        self._check(key)
        return self._d.get(key, default)

    def delete(self, key: int) -> bool:
        self._check(key)
        return self._d.pop(key, None) is not None

    def __len__(self) -> int:
        return len(self._d)

    def items(self) -> list[tuple[int, int]]:
        return sorted(self._d.items())
