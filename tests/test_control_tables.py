"""Unit tests: snapshot -> desired tables -> diff -> sink commands (control/tables.py). No etcd."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from control.keys import Layout
from control.tables import Op, Snapshot, Tables, apply_ops, desired, diff
from control.testing import FakeSink

L = Layout("/vxtap", "net1")
CFG = json.dumps({"vni": 42, "subnet": "10.244.0.0/16", "block_prefix": 24}).encode()


def node(i: int) -> tuple[str, bytes]:
    return L.node(f"n{i}"), json.dumps({"underlay": f"192.168.100.{i}", "port": 4789,
                                        "tap_mac": f"02:00:00:00:00:{i:02x}"}).encode()


def block(i: int) -> tuple[str, bytes]:
    return L.block(f"10.244.{i}.0/24"), json.dumps({"node": f"n{i}"}).encode()


def ep(name: str, n: int, host: int, vni: int = 42, mac: str | None = None) -> tuple[str, bytes]:
    return L.endpoint(name, "eth0"), json.dumps({
        "mac": mac or f"02:00:00:00:{n:02x}:{host:02x}", "ip": f"10.244.{n}.{host}/16",
        "gateway": f"10.244.{n}.1", "node": f"n{n}", "vni": vni}).encode()


def snap(*kvs: tuple[str, bytes]) -> Snapshot:
    return Snapshot.from_kvs(L, [(L.config, CFG), *kvs])


def test_desired_excludes_self_and_dead_nodes() -> None:
    s = snap(node(1), node(2), block(1), block(2), block(3),
             ep("a", 1, 2), ep("b", 2, 2), ep("c", 3, 2))       # n3: block but no node key = dead
    t = desired(s, "n1")
    assert t.fdb == {(42, "02:00:00:00:02:02"): ("192.168.100.2", 4789)}
    assert t.neigh == {(42, "10.244.2.2"): "02:00:00:00:02:02"}
    assert t.skipped == {}                                       # a dead node is not bad data
    t2 = desired(s, "n2")
    assert set(t2.fdb) == {(42, "02:00:00:00:01:02")}


def test_desired_skips_unknown_node_vni_mismatch_duplicates() -> None:
    s = snap(node(1), node(2), node(3),
             ep("a", 2, 2), ep("dupmac", 3, 3, mac="02:00:00:00:02:02"),
             ep("ghost", 9, 2), ep("vni", 3, 4, vni=7))
    # duplicate IP: same address as "a" on another node
    k, v = ep("dupip", 3, 5)
    s.put(k, v.replace(b"10.244.3.5", b"10.244.2.2"))
    t = desired(s, "n1")
    assert set(t.fdb) == {(42, "02:00:00:00:02:02")}
    assert t.skipped == {
        L.endpoint("dupmac", "eth0"): f"duplicate MAC 02:00:00:00:02:02 (also {L.endpoint('a', 'eth0')})",
        L.endpoint("dupip", "eth0"): f"duplicate IP 10.244.2.2 (also {L.endpoint('a', 'eth0')})",
        L.endpoint("ghost", "eth0"): "endpoint names unknown node 'n9'",
        L.endpoint("vni", "eth0"): "endpoint VNI 7 is not the network's VNI 42",
    }


def test_snapshot_bad_values_are_listed_and_cleared() -> None:
    s = snap(node(1))
    key = L.endpoint("x", "eth0")
    assert s.put(key, b"{not json") is not None
    assert s.put(L.node("n5"), b'{"underlay":"1.2.3.4","port":1,"tap_mac":"not-a-mac"}') is not None
    assert set(s.bad) == {key, L.node("n5")}
    assert "malformed JSON" in s.bad[key]
    s.put(*ep("x", 1, 2))
    assert key not in s.bad and "x/eth0" in s.endpoints
    s.delete(L.node("n5"))
    assert s.bad == {}
    assert s.put("/vxtap/networks/net1/unrelated", b"junk") is None   # outside the layout: ignored


def test_diff_order_and_content() -> None:
    old = Tables(fdb={(1, "02:00:00:00:00:01"): ("10.0.0.1", 4789),
                      (1, "02:00:00:00:00:02"): ("10.0.0.2", 4789)},
                 neigh={(1, "10.1.0.1"): "02:00:00:00:00:01", (1, "10.1.0.2"): "02:00:00:00:00:02"})
    new = Tables(fdb={(1, "02:00:00:00:00:02"): ("10.0.0.9", 4789),
                      (1, "02:00:00:00:00:03"): ("10.0.0.3", 4789)},
                 neigh={(1, "10.1.0.2"): "02:00:00:00:00:02", (1, "10.1.0.3"): "02:00:00:00:00:03"})
    assert diff(old, new) == [
        Op("neigh_del", (1, "10.1.0.1")),
        Op("fdb_del", (1, "02:00:00:00:00:01")),
        Op("fdb_add", (1, "02:00:00:00:00:02", "10.0.0.9", 4789)),     # moved VTEP: replaced
        Op("fdb_add", (1, "02:00:00:00:00:03", "10.0.0.3", 4789)),
        Op("neigh_add", (1, "10.1.0.3", "02:00:00:00:00:03")),
    ]
    assert diff(new, new) == []
    assert diff(Tables(), Tables()) == []


def test_apply_ops_survives_a_failing_sink() -> None:
    class Broken(FakeSink):
        def fdb_add(self, vni: int, mac: str, vtep: str, port: int) -> None:
            raise ValueError("boom")
    sink = Broken()
    failed = apply_ops(sink, [Op("fdb_add", (1, "02:00:00:00:00:01", "1.1.1.1", 1)),
                              Op("neigh_add", (1, "10.0.0.1", "02:00:00:00:00:01"))])
    assert failed == 1 and sink.neigh == {(1, "10.0.0.1"): "02:00:00:00:00:01"}


# Property: applying diff(old, new) to a sink holding `old` yields exactly `new`.
_macs = st.integers(1, 40).map(lambda i: f"02:00:00:00:00:{i:02x}")
_ips = st.integers(1, 40).map(lambda i: f"10.9.0.{i}")
_vteps = st.sampled_from([("192.168.0.1", 4789), ("192.168.0.2", 4789), ("192.168.0.2", 8472)])
_tables = st.builds(
    lambda fdb, neigh: Tables(fdb={(42, m): v for m, v in fdb.items()},
                              neigh={(42, i): m for i, m in neigh.items()}),
    st.dictionaries(_macs, _vteps, max_size=20), st.dictionaries(_ips, _macs, max_size=20))


@settings(max_examples=300, deadline=None)
@given(_tables, _tables)
def test_diff_converges(old: Tables, new: Tables) -> None:
    sink = FakeSink()
    apply_ops(sink, diff(Tables(), old))
    assert sink.tables() == old
    ops = diff(old, new)
    apply_ops(sink, ops)
    assert sink.tables() == new
    names = [op.name for op in ops]                     # removals before additions
    assert names == sorted(names, key=["neigh_del", "fdb_del", "fdb_add", "neigh_add"].index)
    assert len(ops) <= len(old.fdb) + len(old.neigh) + len(new.fdb) + len(new.neigh)


# Property: desired() is the same whether the snapshot was built by a list or by events.
@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 3), st.integers(2, 6), st.booleans()), max_size=30))
def test_events_equal_relist(events: list[tuple[int, int, bool]]) -> None:
    s = snap(node(1), node(2), node(3), block(1), block(2), block(3))
    for n, host, is_put in events:
        k, v = ep(f"p{n}x{host}", n, host)
        if is_put:
            s.put(k, v)
        else:
            s.delete(k)
    raw = [(L.endpoint(name.split("/")[0], "eth0"), r.to_json()) for name, r in s.endpoints.items()]
    relisted = snap(node(1), node(2), node(3), block(1), block(2), block(3), *raw)
    assert desired(s, "n1") == desired(relisted, "n1")
