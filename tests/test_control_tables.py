"""Unit tests: snapshot -> desired tables -> diff -> sink commands (control/tables.py). No etcd."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from control.keys import Layout
from control.tables import (
    LiveTables,
    Op,
    RecordCache,
    Snapshot,
    Tables,
    apply_ops,
    desired,
    diff,
    diff_live,
)
from control.testing import CountingSink, FakeSink

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


def snap(*kvs: tuple[str, bytes] | tuple[str, bytes, int]) -> Snapshot:
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


# -- conflicts: the oldest record wins (issue 12 item 1) ---------------------------------------

def test_bogus_duplicates_do_not_hijack_a_genuine_pod() -> None:
    """pod2 (n2) is genuine and old; `dupmac` copies its MAC, `aaa-dupip` (sorts first) its IP,
    both written later. Every agent keeps pod2; n2 itself never answers ARP with the fake MAC;
    when pod2 goes, the next-oldest claim takes over."""
    pod2 = ep("pod2", 2, 2)
    dupmac = ep("dupmac", 3, 3, mac="02:00:00:00:02:02")
    k, v = ep("aaa-dupip", 3, 4)
    dupip = (k, v.replace(b"10.244.3.4", b"10.244.2.2"))
    live = {n: LiveTables(L, n) for n in ("n1", "n2")}
    s = Snapshot(L)
    for rev, kv in enumerate([(L.config, CFG), node(1), node(2), node(3), block(1), block(2),
                              block(3), pod2, dupmac, dupip], start=2):
        s.put(*kv, rev)
        for lt in live.values():
            lt.put(*kv, rev)
    for n, lt in live.items():
        lt.flush()
        assert lt.tables() == desired(s, n)
    t1, t2 = desired(s, "n1"), desired(s, "n2")
    assert t1.fdb == {(42, "02:00:00:00:02:02"): ("192.168.100.2", 4789)}
    assert t1.neigh == {(42, "10.244.2.2"): "02:00:00:00:02:02"}
    assert t2.fdb == {} and t2.neigh == {}          # no fake ARP answer for its own pod's IP
    assert t1.skipped == t2.skipped == {
        dupmac[0]: f"duplicate MAC 02:00:00:00:02:02 (also {pod2[0]})",
        dupip[0]: f"duplicate IP 10.244.2.2 (also {pod2[0]})",
    }
    # the genuine pod leaves: the next-oldest (dupmac, rev 10 < 11) takes its MAC, and
    # aaa-dupip its IP; at n1 both come in, with one command each
    s.delete(pod2[0])
    live["n1"].delete(pod2[0])
    ops = live["n1"].flush()
    assert live["n1"].tables() == desired(s, "n1")
    sink = FakeSink()
    apply_ops(sink, diff(Tables(), t1))
    apply_ops(sink, ops)
    assert sink.tables() == desired(s, "n1")
    assert desired(s, "n1").fdb[(42, "02:00:00:00:02:02")] == ("192.168.100.3", 4789)
    assert desired(s, "n1").skipped == {}


def test_oldest_wins_regardless_of_key_order() -> None:
    old, new = ep("zzz", 2, 2), ep("aaa", 3, 3, mac="02:00:00:00:02:02")
    s = snap(node(1), node(2), node(3), (*old, 5), (*new, 9))
    assert desired(s, "n1").skipped == {new[0]: f"duplicate MAC 02:00:00:00:02:02 (also {old[0]})"}
    s2 = snap(node(1), node(2), node(3), (*old, 9), (*new, 5))
    assert desired(s2, "n1").skipped == {old[0]: f"duplicate MAC 02:00:00:00:02:02 (also {new[0]})"}


# -- incremental == full re-list, over random event sequences ----------------------------------

_names = st.sampled_from([L.endpoint(f"c{i}", "eth0") for i in range(8)])
# IPv6 spellings of one address ("fd00::3", "fd00:0:0::3", "FD00::3") must be one claim key
_v6_spellings = ["fd00::{:x}/64", "fd00:0:0::{:x}/64", "FD00::{:X}/64"]


def _ep_json(m: int, h: int, n: int, vni: int, fam: str, h6: int, sp: int) -> bytes:
    obj: dict[str, object] = {"mac": f"02:00:00:00:00:{m:02x}", "node": f"n{n}", "vni": vni}
    if "4" in fam:
        obj["ip"] = f"10.244.0.{h}/16"
    if "6" in fam:
        obj["ip6"] = _v6_spellings[sp].format(h6) if h6 else "fe80::1/64"   # 0: bad IPv6
    return json.dumps(obj).encode()


_ep_values = st.builds(
    _ep_json, st.integers(1, 5), st.integers(2, 6), st.integers(1, 4),
    st.sampled_from([42, 42, 42, 7]), st.sampled_from(["4", "4", "6", "46", "46"]),
    st.integers(0, 5), st.integers(0, 2))
_node_values = st.one_of(
    st.builds(lambda u, p: json.dumps({"underlay": f"192.168.0.{u}", "port": p,
                                        "tap_mac": "02:00:00:00:00:01"}).encode(),
              st.integers(1, 3), st.sampled_from([4789, 8472])),
    st.just(b"garbage"))
_event = st.one_of(
    st.tuples(_names, _ep_values),
    st.tuples(st.sampled_from([L.node(f"n{i}") for i in range(1, 5)]), _node_values),
    st.tuples(st.sampled_from([L.block(f"10.244.{i}.0/24") for i in range(4)]),
              st.sampled_from([json.dumps({"node": f"n{i}"}).encode() for i in range(1, 5)])),
    st.tuples(st.just(L.config), st.sampled_from([CFG, json.dumps({"vni": 7, "subnet": "10.244.0.0/16"}).encode()])),
    st.tuples(st.one_of(_names, st.sampled_from([L.node("n2"), L.node("n3"), L.config,
                                                 L.block("10.244.2.0/24")])), st.none()),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(_event, st.booleans()), max_size=50), st.sampled_from(["n1", "n2"]))
def test_incremental_equals_full_relist(events: list[tuple[tuple[str, bytes | None], bool]],
                                        me: str) -> None:
    live = LiveTables(L, me)
    s = Snapshot(L)
    sink = FakeSink()
    created: dict[str, int] = {}
    for rev, ((key, value), flush) in enumerate(events, start=2):
        if value is None:
            live.delete(key)
            s.delete(key)
            created.pop(key, None)
        else:
            cr = created.setdefault(key, rev)
            live.put(key, value, cr)
            s.put(key, value, cr)
        if flush:
            apply_ops(sink, live.flush())
            assert sink.tables() == desired(s, me)
    apply_ops(sink, live.flush())
    want = desired(s, me)
    got = live.tables()
    assert got == want and got.skipped == want.skipped
    assert sink.tables() == want
    assert live.bad() == {**s.bad, **want.skipped} and live.bad_count() == len(live.bad())
    assert live.installed == len(want.fdb)
    assert len(want.neigh) == sum(len(e.nks) for n, e in live.snapshot.endpoints.items()
                                  if live.is_installed(n))
    # a full re-list of the same state, and the difference between the two ways
    full = LiveTables.from_snapshot(s, me)
    assert full.tables() == want and full.skipped == want.skipped
    other = FakeSink()
    apply_ops(other, diff_live(None, full))
    assert other.tables() == want
    assert list(diff_live(live, full)) == []


@settings(max_examples=200, deadline=None)
@given(st.lists(_event, max_size=40))
def test_agents_sharing_records_each_equal_their_own_desired(
        events: list[tuple[str, bytes | None]]) -> None:
    """Two agents (n1, n2) of one process share parsed records (RecordCache, as control/hub.py
    does): each one's incremental tables still equal its own desired(), the records are the
    same objects in both, and a re-list through the cache agrees too."""
    cache = RecordCache()
    lives = {me: LiveTables(L, me, cache) for me in ("n1", "n2")}
    sinks = {me: FakeSink() for me in lives}
    s = Snapshot(L)
    created: dict[str, int] = {}
    for rev, (key, value) in enumerate(events, start=2):
        for me, live in lives.items():
            if value is None:
                live.delete(key)
            else:
                live.put(key, value, created.setdefault(key, rev))
            apply_ops(sinks[me], live.flush())
        if value is None:
            s.delete(key)
            created.pop(key, None)
        else:
            s.put(key, value, created[key])
    for me, live in lives.items():
        want = desired(s, me)
        assert live.tables() == want and sinks[me].tables() == want
        relisted = Snapshot(L, intern=cache)
        for name, ep in s.endpoints.items():
            relisted.put(L.endpoints + name, ep.to_json(), ep.rev)
        for k, v in ((L.node(n), r.to_json()) for n, r in s.nodes.items()):
            relisted.put(k, v)
        for b, r in s.blocks.items():
            relisted.put(L.blocks + b, r.to_json())
        if s.config is not None:
            relisted.put(L.config, s.config.to_json())
        assert LiveTables.from_snapshot(relisted, me).tables() == want
    a, b = lives["n1"].snapshot.endpoints, lives["n2"].snapshot.endpoints
    assert a.keys() == b.keys() and all(a[k] is b[k] for k in a)


@settings(max_examples=200, deadline=None)
@given(st.lists(_event, max_size=30), st.lists(_event, max_size=30))
def test_relist_applies_only_the_difference(a: list[tuple[str, bytes | None]],
                                            b: list[tuple[str, bytes | None]]) -> None:
    def build(evs: list[tuple[str, bytes | None]]) -> Snapshot:
        s = snap(node(1), node(2), block(1), block(2))
        for rev, (k, v) in enumerate(evs, start=10):
            if v is None:
                s.delete(k)
            else:
                s.put(k, v, rev)
        return s
    old, new = LiveTables.from_snapshot(build(a), "n1"), LiveTables.from_snapshot(build(b), "n1")
    sink = FakeSink()
    apply_ops(sink, diff_live(None, old))
    assert sink.tables() == old.tables()
    ops = list(diff_live(old, new))
    apply_ops(sink, ops)
    assert sink.tables() == new.tables()
    assert sorted(ops) == sorted(diff(old.tables(), new.tables()))   # the same commands
    names = [op.name for op in ops]                                   # in diff()'s order
    assert names == sorted(names, key=["neigh_del", "fdb_del", "fdb_add", "neigh_add"].index)


def test_counting_sink_counts() -> None:
    sink = CountingSink()
    apply_ops(sink, [Op("fdb_add", (1, "02:00:00:00:00:01", "1.1.1.1", 1)),
                     Op("neigh_add", (1, "10.0.0.1", "02:00:00:00:00:01")),
                     Op("fdb_del", (1, "02:00:00:00:00:01"))])
    assert (sink.fdb_adds, sink.neigh_adds, sink.fdb_dels, sink.neigh_dels) == (1, 1, 1, 0)


# -- dual stack: IPv6 addresses in endpoint records -------------------------------------------

def ep6(name: str, n: int, host: int, ip6: str | None, *, v4: bool = True,
        mac: str | None = None) -> tuple[str, bytes]:
    obj: dict[str, object] = {"mac": mac or f"02:00:00:00:{n:02x}:{host:02x}", "node": f"n{n}",
                              "vni": 42}
    if v4:
        obj["ip"], obj["gateway"] = f"10.244.{n}.{host}/16", f"10.244.{n}.1"
    if ip6 is not None:
        obj["ip6"], obj["gateway6"] = ip6, f"fd00:10:244:{n}::1"
    return L.endpoint(name, "eth0"), json.dumps(obj).encode()


def test_dual_stack_endpoint_programs_both_neighbour_entries() -> None:
    s = snap(node(1), node(2), ep6("dual", 2, 2, "fd00:10:244:2::2/48"),
             ep6("only6", 2, 3, "FD00:10:244:2:0::3/48", v4=False))
    t = desired(s, "n1")
    assert t.neigh == {(42, "10.244.2.2"): "02:00:00:00:02:02",
                       (42, "fd00:10:244:2::2"): "02:00:00:00:02:02",
                       (42, "fd00:10:244:2::3"): "02:00:00:00:02:03"}
    assert t.fdb == {(42, "02:00:00:00:02:02"): ("192.168.100.2", 4789),
                     (42, "02:00:00:00:02:03"): ("192.168.100.2", 4789)}
    ops = diff(Tables(), t)
    assert Op("neigh_add", (42, "fd00:10:244:2::3", "02:00:00:00:02:03")) in ops
    live = LiveTables.from_snapshot(s, "n1")
    assert live.tables() == t
    sink = FakeSink()
    apply_ops(sink, diff_live(None, live))
    assert sink.tables() == t


def test_ipv6_duplicates_oldest_wins_across_spellings() -> None:
    """fd00:10:244:2::2 and fd00:10:244:2:0:0:0:2 are one address: the newer claim is skipped,
    whatever the family of its other address; when the older goes, the newer takes over."""
    old = ep6("zzz", 2, 2, "fd00:10:244:2::2/48")
    new = ep6("aaa", 3, 3, "fd00:10:244:2:0:0:0:2/48", v4=False)
    s = snap(node(1), node(2), node(3), (*old, 5), (*new, 9))
    t = desired(s, "n1")
    assert t.skipped == {new[0]: f"duplicate IP fd00:10:244:2::2 (also {old[0]})"}
    live = LiveTables(L, "n1")
    sink = FakeSink()
    for rev, kv in enumerate([(L.config, CFG), node(1), node(2), node(3)], start=1):
        live.put(*kv, rev)
    live.put(*old, 5)
    live.put(*new, 9)
    apply_ops(sink, live.flush())
    assert sink.tables() == t and live.skipped == t.skipped
    live.delete(old[0])
    apply_ops(sink, live.flush())
    assert sink.neigh == {(42, "fd00:10:244:2::2"): "02:00:00:00:03:03"}
    assert live.skipped == {}


def test_bad_ipv6_is_skipped_and_counted_not_fatal() -> None:
    live = LiveTables(L, "n1")
    for kv in [(L.config, CFG), node(1), node(2), ep6("good", 2, 2, "fd00::2/64")]:
        live.put(*kv)
    for name, ip6 in [("mcast", "ff02::1/64"), ("ll", "fe80::2/64"), ("anycast", "fd00::/64"),
                      ("noprefix", "fd00::9"), ("junk", "fd00:::1/64"), ("num", 7)]:
        live.put(*ep6(name, 2, 9, ip6))          # type: ignore[arg-type]
    bad = live.bad()
    assert sorted(k.rsplit("/", 2)[1] for k in bad) == sorted(
        ["mcast", "ll", "anycast", "noprefix", "junk", "num"])
    assert bad[L.endpoint("mcast", "eth0")] == "ip6: ff02::1/64 is a multicast address"
    assert bad[L.endpoint("junk", "eth0")].startswith("ip6: 'fd00:::1/64' is not an IPv6 address")
    assert all(reason.startswith("ip6: ") for reason in bad.values())
    assert [op for op in live.flush() if op.name == "neigh_add"] == [
        Op("neigh_add", (42, "10.244.2.2", "02:00:00:00:02:02")),
        Op("neigh_add", (42, "fd00::2", "02:00:00:00:02:02"))]
