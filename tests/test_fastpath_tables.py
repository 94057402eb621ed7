"""U64Map (the C open-addressing table behind FDB, neighbours, VTEPs) against tables_ref and a dict.

The Cython map uses linear probing with tombstones and a power-of-two capacity kept at most half
full; these tests drive growth, tombstone churn and probing with colliding keys.
"""
from __future__ import annotations

from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from tests.fastpath_impls import CYTHON, REF, Impl, examples, impl

__all__ = ["impl"]

MISS = 2**64 - 1
U64 = st.integers(0, 2**64 - 1)


def test_basic(impl: Impl) -> None:
    m = impl.tables.U64Map()
    assert len(m) == 0 and m.items() == [] and m.get(1) is None
    m.put(1, 10)
    m.put(0, 0)                              # key 0 and value 0 are ordinary
    m.put(2**64 - 1, 2**64 - 1)
    assert len(m) == 3
    assert (m.get(1), m.get(0), m.get(2**64 - 1), m.get(5, "d")) == (10, 0, 2**64 - 1, "d")
    m.put(1, 11)                             # replace
    assert len(m) == 3 and m.get(1) == 11
    assert m.delete(1) is True and m.delete(1) is False and m.delete(77) is False
    assert m.get(1) is None
    assert m.items() == [(0, 0), (2**64 - 1, 2**64 - 1)]


@pytest.mark.parametrize("key,value", [(-1, 0), (0, -1), (2**64, 0), (0, 2**64)])
def test_put_out_of_range(impl: Impl, key: int, value: int) -> None:
    m = impl.tables.U64Map()
    with pytest.raises(OverflowError):
        m.put(key, value)
    assert len(m) == 0


@pytest.mark.parametrize("capacity", [0, 1, 8, 1000])
def test_growth(impl: Impl, capacity: int) -> None:
    m = impl.tables.U64Map(capacity)
    keys = [k * 0x9E3779B97F4A7C15 % 2**64 for k in range(5000)] + list(range(5000))
    for k in keys:
        m.put(k, k ^ 0xFFFF)
    assert len(m) == len(set(keys))
    assert all(m.get(k) == k ^ 0xFFFF for k in keys)
    assert m.items() == sorted((k, k ^ 0xFFFF) for k in set(keys))
    if hasattr(m, "capacity"):                           # Cython: power of two, load <= 1/2
        c = m.capacity
        assert c & (c - 1) == 0 and len(m) * 2 <= c


def test_tombstone_churn_does_not_grow_or_hang(impl: Impl) -> None:
    """Insert/delete fresh keys many times: tombstones must be purged, lookups must end."""
    m = impl.tables.U64Map(8)
    m.put(123, 1)
    for k in range(1000, 60000):
        m.put(k, k)
        assert m.get(k) == k
        assert m.delete(k)
        assert m.get(k + 1) is None                      # a miss must terminate
    assert len(m) == 1 and m.items() == [(123, 1)]
    if hasattr(m, "capacity"):
        assert m.capacity <= 16


def test_reinsert_after_delete_in_probe_chain(impl: Impl) -> None:
    """Deleting a key in the middle of a probe chain keeps the keys after it reachable."""
    m = impl.tables.U64Map(8)
    keys = list(range(100, 104))                        # 4 keys in 8 slots: chains are likely
    for k in keys:
        m.put(k, k)
    for victim in keys:
        m.delete(victim)
        assert all(m.get(k) == k for k in keys if k != victim)
        m.put(victim, victim + 1)                        # may land in the tombstone
        assert m.get(victim) == victim + 1
        assert len(m) == 4
        m.put(victim, victim)
    assert m.items() == [(k, k) for k in keys]


def test_lookup_many(impl: Impl) -> None:
    m = impl.tables.U64Map()
    for k in range(0, 200, 2):
        m.put(k, k * 3)
    keys = array("Q", range(200))
    out = array("Q", bytes(8 * 200))
    assert m.lookup_many(keys, out) == 100
    assert list(out) == [k * 3 if k % 2 == 0 else MISS for k in range(200)]
    empty_out = array("Q")
    assert m.lookup_many(array("Q"), empty_out) == 0


def test_lookup_many_overwrites_previous_output(impl: Impl) -> None:
    m = impl.tables.U64Map()
    m.put(7, 0)
    out = array("Q", [5, 5])
    assert m.lookup_many(array("Q", [7, 8]), out) == 1
    assert list(out) == [0, MISS]


# ---- the same operations give the same contents ----------------------------------------------

small_keys = st.integers(0, 40)                 # few keys: replaces, deletes hit, tombstones
any_keys = st.one_of(small_keys, U64, st.sampled_from([0, 2**64 - 1, 2**48, 2**32]))
ops = st.lists(st.tuples(st.sampled_from(["put", "put", "delete", "get"]), any_keys, U64),
               max_size=300)


@settings(max_examples=examples(200), deadline=None, database=None)
@given(seq=ops, capacity=st.sampled_from([0, 8, 64]))
def test_random_operations_agree(seq: list[tuple[str, int, int]], capacity: int) -> None:
    c, r, model = CYTHON.tables.U64Map(capacity), REF.tables.U64Map(capacity), {}
    for op, k, v in seq:
        if op == "put":
            c.put(k, v)
            r.put(k, v)
            model[k] = v
        elif op == "delete":
            assert c.delete(k) == r.delete(k) == (model.pop(k, None) is not None)
        else:
            assert c.get(k) == r.get(k) == model.get(k)
    assert len(c) == len(r) == len(model)
    assert c.items() == r.items() == sorted(model.items())
    keys = array("Q", [k for _, k, _ in seq] + [12345678])
    oc, orf = array("Q", bytes(8 * len(keys))), array("Q", bytes(8 * len(keys)))
    assert c.lookup_many(keys, oc) == r.lookup_many(keys, orf)
    assert oc == orf


class MapMachine(RuleBasedStateMachine):
    """Stateful: both maps and a dict go through the same rules; all three always agree."""

    keys = Bundle("keys")

    def __init__(self) -> None:
        super().__init__()
        self.c = CYTHON.tables.U64Map(8)
        self.r = REF.tables.U64Map(8)
        self.model: dict[int, int] = {}

    @rule(target=keys, k=any_keys)
    def new_key(self, k: int) -> int:
        return k

    @rule(k=keys, v=U64)
    def put(self, k: int, v: int) -> None:
        self.c.put(k, v)
        self.r.put(k, v)
        self.model[k] = v

    @rule(k=keys)
    def delete(self, k: int) -> None:
        expect = self.model.pop(k, None) is not None
        assert self.c.delete(k) == expect
        assert self.r.delete(k) == expect

    @rule(k=keys)
    def get(self, k: int) -> None:
        assert self.c.get(k) == self.r.get(k) == self.model.get(k)

    @rule(n=st.integers(1, 64), base=st.integers(0, 2**32))
    def churn(self, n: int, base: int) -> None:
        """A burst of insert+delete of fresh keys: leaves only tombstones behind."""
        for k in range(base, base + n):
            if k in self.model:
                continue
            for m in (self.c, self.r):
                m.put(k, 1)
                assert m.delete(k)

    @invariant()
    def same_contents(self) -> None:
        assert len(self.c) == len(self.r) == len(self.model)
        assert self.c.items() == self.r.items() == sorted(self.model.items())


MapMachine.TestCase.settings = settings(max_examples=examples(60), stateful_step_count=60,
                                        deadline=None, database=None)
TestMapMachine = MapMachine.TestCase
