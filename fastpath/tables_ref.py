"""Pure-Python reference for tables.pyx: the same API over a dict."""
from __future__ import annotations

from typing import Any

MISS = 0xFFFFFFFFFFFFFFFF


class U64Map:
    def __init__(self, capacity: int = 8) -> None:
        self._d: dict[int, int] = {}

    def put(self, key: int, value: int) -> None:
        if not (0 <= key < 1 << 64 and 0 <= value < 1 << 64):
            raise OverflowError("key and value must fit in 64 bits")
        self._d[key] = value

    def get(self, key: int, default: Any = None) -> Any:
        return self._d.get(key, default)

    def delete(self, key: int) -> bool:
        return self._d.pop(key, None) is not None

    def __len__(self) -> int:
        return len(self._d)

    def items(self) -> list[tuple[int, int]]:
        return sorted(self._d.items())

    def lookup_many(self, keys: Any, out: Any) -> int:
        hits = 0
        for i, k in enumerate(keys):
            v = self._d.get(int(k))
            out[i] = MISS if v is None else v
            hits += v is not None
        return hits
