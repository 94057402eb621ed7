"""U128Map (the C table behind the IPv6 neighbour table) against map128_ref: IPv6-sized keys,
keys that share one 64-bit half, growth and tombstone churn, and a model-based run."""
from __future__ import annotations

import importlib
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastpath import map128_ref
from tests.fastpath_impls import examples

map128 = importlib.import_module("fastpath.map128")
MODS = (map128_ref, map128)


@pytest.fixture(params=MODS, ids=["ref", "cython"])
def mod(request: pytest.FixtureRequest) -> ModuleType:
    return request.param  # type: ignore[no-any-return]


def test_basic(mod: ModuleType) -> None:
    m = mod.U128Map()
    a, b = 0xFD00_0000_0000_0000_0000_0000_0000_0002, 0xFE80 << 112
    assert len(m) == 0 and m.get(a) is None and m.items() == []
    m.put(a, 1)
    m.put(b, 2)
    m.put(0, 0)
    m.put(2**128 - 1, 2**64 - 1)
    assert (m.get(a), m.get(b), m.get(0), m.get(2**128 - 1), m.get(5, "d")) == (
        1, 2, 0, 2**64 - 1, "d")
    m.put(a, 3)
    assert len(m) == 4 and m.get(a) == 3
    assert m.delete(a) is True and m.delete(a) is False and m.get(a) is None
    assert m.items() == [(0, 0), (b, 2), (2**128 - 1, 2**64 - 1)]


def test_keys_sharing_a_half_are_distinct(mod: ModuleType) -> None:
    """Same low word, different high word (and the other way round): two entries."""
    m = mod.U128Map()
    lo = 0x0000_0000_0000_0002
    for hi in range(200):
        m.put((hi << 64) | lo, hi)
        m.put((lo << 64) | hi, 1000 + hi)
    assert all(m.get((hi << 64) | lo) == hi for hi in range(200) if hi != lo)
    assert len(m) == 399                    # (2 << 64) | 2 is one key
    assert all(m.get((lo << 64) | hi) == 1000 + hi for hi in range(200) if hi != lo)


@pytest.mark.parametrize("key,value", [(-1, 0), (2**128, 0), (0, -1), (0, 2**64)])
def test_put_out_of_range(mod: ModuleType, key: int, value: int) -> None:
    m = mod.U128Map()
    with pytest.raises(OverflowError):
        m.put(key, value)
    assert len(m) == 0


def test_growth_and_churn(mod: ModuleType) -> None:
    m = mod.U128Map(0)
    keys = [(k * 0x9E3779B97F4A7C15F39CC0605CEDC835) % 2**128 for k in range(3000)]
    for k in keys:
        m.put(k, k & 0xFFFF)
    assert len(m) == len(set(keys)) and all(m.get(k) == k & 0xFFFF for k in keys)
    for _ in range(5):                      # tombstones do not grow the table without bound
        for k in keys[:1000]:
            assert m.delete(k)
        for k in keys[:1000]:
            m.put(k, 7)
    assert len(m) == len(set(keys))
    if hasattr(m, "capacity"):
        c = m.capacity
        assert c & (c - 1) == 0 and len(m) * 2 <= c <= 16384


ops = st.lists(st.tuples(st.sampled_from(["put", "del", "get"]),
                         st.one_of(st.integers(0, 40), st.integers(0, 2**128 - 1)),
                         st.integers(0, 2**64 - 1)), max_size=200)


@settings(max_examples=examples(100), deadline=None)
@given(ops)
def test_model(seq: list[tuple[str, int, int]]) -> None:
    ref, c = map128_ref.U128Map(), map128.U128Map()
    for op, k, v in seq:
        if op == "put":
            ref.put(k, v)
            c.put(k, v)
        elif op == "del":
            assert ref.delete(k) == c.delete(k)
        else:
            assert ref.get(k) == c.get(k)
    assert ref.items() == c.items() and len(ref) == len(c)
