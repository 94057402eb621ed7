"""Differential fuzz: the Cython switch against switch_ref, packet for packet.

Hypothesis builds a switch configuration, then a random script of table edits and traffic
(structured frames and datagrams, truncated, padded past the MTU, or plain garbage) and runs
it on both implementations. After every step the outputs, the decisions, and everything the
switch shows (tables, VTEPs, counters) must be identical; flood copies are compared per frame as
multisets (replication order is VTEP-slot order in C, insertion order in the reference).
Neither side may raise anything but the same ValueError/KeyError for the same bad edit.

The script also removes and re-adds networks and passes bad VNIs (0, 2**24, True, "1"), which
must fail alike. (This suite found B1-B7 of tests/FASTPATH_BUGS.md; all inputs that showed them
are generated here.)
"""
from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fastpath import counters
from tests.fastpath_impls import (
    CYTHON,
    REF,
    arp,
    arp_request,
    eth,
    examples,
    int_to_mac,
    ip_frame,
    state,
    tx_groups,
    vxlan,
)

FUZZ = settings(max_examples=examples(400), deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

NETS = [1, 2, 3]
STATIONS = [f"02:00:00:00:00:{i:02x}" for i in range(1, 7)]
ODD_MACS = ["ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:01", "33:33:00:00:00:01", "00:00:00:00:00:00"]
VTEPS = [f"10.0.0.{i}" for i in range(1, 6)]
NEIGH_IPS = [f"10.244.0.{i}" for i in range(1, 6)]

# 5: no such network (KeyError); the others are not VNIs (ValueError)
vnis = st.sampled_from(NETS * 6 + [5, 5, 0, 1 << 24, True, "1", 2**32])
station = st.sampled_from(STATIONS)
any_mac = st.sampled_from(STATIONS * 2 + ODD_MACS)       # stations: FDB hits, good sources

config = st.fixed_dictionaries({
    "strict": st.booleans(),
    "flood": st.booleans(),
    "srcport": st.sampled_from([(32768, 61000), (1, 2), (100, 65535), (49152, 65535), (7, 9),
                                (60000, 65536), (1, 65536), (65535, 65536)]),
    "batch": st.sampled_from([1, 2, 3, 64]),
    "underlay_mtu": st.sampled_from([576, 600, 1500]),
    "ttl": st.integers(1, 255),
    "port": st.sampled_from([4789, 8472]),
})

table_op = st.one_of(
    st.tuples(st.just("fdb_add"), vnis, st.one_of(station, station, any_mac),
              st.sampled_from(VTEPS), st.sampled_from([None, None, 4789, 8472, 1])),
    st.tuples(st.just("fdb_del"), vnis, any_mac),
    st.tuples(st.just("neigh_add"), vnis, st.sampled_from(NEIGH_IPS), st.one_of(station,
                                                                                  any_mac)),
    st.tuples(st.just("neigh_del"), vnis, st.sampled_from(NEIGH_IPS)),
)


def _shape(frame: bytes, cut: int | None, pad: int) -> bytes:
    if cut is not None:
        frame = frame[:cut]
    return frame + bytes(pad)


arp_body = st.builds(
    lambda op, sha, spa, tha, tpa, ht, pt: arp(op, sha, spa, tha, tpa, htype=ht, ptype=pt),
    st.sampled_from([1, 1, 1, 2, 3]), any_mac, st.sampled_from([*NEIGH_IPS, "10.244.9.9"]),
    any_mac, st.sampled_from([*NEIGH_IPS, "10.244.9.9"]), st.sampled_from([1, 1, 6]),
    st.sampled_from([0x0800, 0x0800, 0x86DD]))

structured_frame = st.one_of(
    st.builds(lambda d, s, sp, dp, pr, fr: ip_frame(d, s, sport=sp, dport=dp, proto=pr, frag=fr),
              any_mac, any_mac, st.integers(0, 65535), st.integers(0, 65535),
              st.sampled_from([6, 17, 1]), st.sampled_from([0, 0, 0x2000, 5])),
    st.builds(lambda d, s, body: eth(d, s, 0x0806, body), any_mac, any_mac, arp_body),
    st.builds(lambda d, s, t, body: eth(d, s, t, body), any_mac, any_mac,
              st.sampled_from([0x86DD, 0x8100, 0x0000, 0xFFFF]), st.binary(max_size=40)),
)

shaped_frame = st.builds(_shape, structured_frame,
                         st.one_of(st.none(), st.none(), st.none(), st.integers(0, 60)),
                         st.sampled_from([0] * 8 + [1, 18, 480, 497, 498, 520, 1500]))
arp_req = st.builds(arp_request, station, st.sampled_from(NEIGH_IPS),
                    st.sampled_from([*NEIGH_IPS, "10.244.9.9"]))
frame = st.one_of(st.binary(max_size=64), shaped_frame, shaped_frame, shaped_frame, arp_req)

vxlan_payload = st.builds(lambda vni, fl, r1, r2, inner, cut, pad: _shape(
        vxlan(vni, inner, flags=fl, rsv1=r1, rsv2=r2), cut, pad),
        st.sampled_from([*NETS, 5, 0, 16777215]), st.sampled_from([0x08] * 6 + [0x00, 0x0C, 0x88]),
        st.sampled_from([0] * 6 + [1, 0x800000]), st.sampled_from([0] * 6 + [1, 0xFF]),
        frame, st.one_of(st.none(), st.none(), st.none(), st.integers(0, 30)),
        st.sampled_from([0] * 8 + [500, 520, 521, 560, 600, 1500, 2000]))
good_payload = st.builds(lambda vni, d, s, sp: vxlan(vni, ip_frame(d, s, sport=sp)),
                         st.sampled_from(NETS), any_mac, station, st.integers(0, 65535))
payload = st.one_of(st.binary(max_size=40), vxlan_payload, vxlan_payload, good_payload,
                    good_payload)
source = st.sampled_from(VTEPS * 2 + ["10.9.9.9", "0.0.0.0"])

# a populated starting point, so that traffic mostly finds FDB entries, VTEPs and neighbours
setup = st.lists(st.one_of(
    st.tuples(st.just("fdb_add"), st.sampled_from(NETS), station, st.sampled_from(VTEPS),
              st.sampled_from([None, None, 8472])),
    st.tuples(st.just("neigh_add"), st.sampled_from(NETS), st.sampled_from(NEIGH_IPS), station),
), min_size=4, max_size=30)

net_op = st.tuples(st.sampled_from(["remove_network", "add_network"]), vnis)

step = st.one_of(
    table_op,
    net_op,
    st.tuples(st.just("tap"), vnis, st.lists(frame, max_size=12)),
    st.tuples(st.just("udp"), st.lists(st.tuples(source, payload), max_size=12)),
)


def _call(sw: Any, op: tuple[Any, ...]) -> tuple[str, Any]:
    """Run one step; an expected error is a result too (type and message)."""
    try:
        if op[0] == "tap":
            return "ok", sw.process_tap(op[1], op[2])
        if op[0] == "udp":
            return "ok", sw.process_udp(op[1])
        return "ok", getattr(sw, op[0])(*op[1:])
    except (ValueError, KeyError) as e:
        return type(e).__name__, str(e)


def _check_invariants(op: tuple[Any, ...], result: tuple[list[Any], list[dict[str, Any]]]) -> None:
    out, decs = result
    n_in = len(op[2]) if op[0] == "tap" else len(op[1])
    assert len(decs) == n_in
    for d in decs:
        assert set(d) == {"vni", "verdict", "reason", "vtep", "copies"}
        assert d["verdict"] in counters.VERDICTS[1:]
        assert (d["reason"] is None) == (d["verdict"] != "drop")
        if d["reason"] is not None:
            assert "drop_" + d["reason"] in counters.DROPS
    if op[0] == "udp":
        assert len(out) == sum(d["verdict"] == "deliver" for d in decs)


@FUZZ
@given(cfg=config, init=setup, script=st.lists(step, min_size=1, max_size=10))
def test_switches_agree(cfg: dict[str, Any], init: list[tuple[Any, ...]],
                        script: list[tuple[Any, ...]]) -> None:
    c, r = CYTHON.Switch("192.168.100.1", **cfg), REF.Switch("192.168.100.1", **cfg)
    for sw in (c, r):
        for v in NETS:
            sw.add_network(v)
        for op in init:
            getattr(sw, op[0])(*op[1:])
    assert state(c) == state(r)
    for op in script:
        rc, rr = _call(c, op), _call(r, op)
        assert rc[0] == rr[0], (op, rc, rr)
        if rc[0] != "ok" or op[0] not in ("tap", "udp"):
            assert rc == rr, op
        else:
            _check_invariants(op, rr[1])
            for d in rr[1][1]:
                # coverage: shown by pytest --hypothesis-show-statistics
                event(f"{op[0]}: {d['reason'] or d['verdict']}")
            (oc, dc), (orf, drf) = rc[1], rr[1]
            assert dc == drf, op
            if op[0] == "tap":
                assert tx_groups(oc, dc, cfg["batch"]) == tx_groups(orf, drf, cfg["batch"])
            else:
                assert oc == orf
        assert state(c) == state(r), op


@settings(max_examples=examples(150), deadline=None, database=None, print_blob=True)
@given(cfg=config, frames=st.lists(st.binary(max_size=700), max_size=20),
       payloads=st.lists(st.tuples(source, st.binary(max_size=700)), max_size=20),
       neigh=st.dictionaries(st.sampled_from(NEIGH_IPS), station, max_size=5))
def test_garbage_never_crashes_and_agrees(cfg: dict[str, Any], frames: list[bytes],
                                          payloads: list[tuple[str, bytes]],
                                          neigh: dict[str, str]) -> None:
    results = []
    for impl in (CYTHON, REF):
        sw = impl.Switch("192.168.100.1", **cfg)
        sw.add_network(1)
        sw.fdb_add(1, STATIONS[0], VTEPS[0])
        for ip, mac in neigh.items():
            sw.neigh_add(1, ip, mac)
        tx = sw.process_tap(1, frames)
        rx = sw.process_udp(payloads)
        results.append((tx[1], tx_groups(tx[0], tx[1], cfg["batch"]), rx, state(sw)))
    assert results[0] == results[1]


@settings(max_examples=examples(100), deadline=None, database=None, print_blob=True)
@given(macs=st.lists(st.tuples(st.integers(0, 2**48 - 1).map(lambda m: m & ~(1 << 40)),
                               st.sampled_from(VTEPS), st.booleans()), max_size=60))
def test_fdb_churn_agrees(macs: list[tuple[int, str, bool]]) -> None:
    """Many adds/deletes of random station MACs: tables, VTEP refcounts and lookups agree."""
    sws = [impl.Switch("192.168.100.1", flood=True) for impl in (CYTHON, REF)]
    for sw in sws:
        sw.add_network(1)
    for m, vtep, delete in macs:
        mac = int_to_mac(m)
        for sw in sws:
            if delete:
                sw.fdb_del(1, mac)
            else:
                sw.fdb_add(1, mac, vtep)
    assert state(sws[0]) == state(sws[1])
    frames = [ip_frame(int_to_mac(m), STATIONS[0]) for m, _, _ in macs] + [
        ip_frame("ff:ff:ff:ff:ff:ff", STATIONS[0])]
    res = [sw.process_tap(1, frames) for sw in sws]
    assert res[0][1] == res[1][1]
    assert tx_groups(res[0][0], res[0][1], 64) == tx_groups(res[1][0], res[1][1], 64)
