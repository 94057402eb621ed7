"""IPv6 underlay in the fast path, on both implementations: the outer IPv6 + UDP + VXLAN writer
(outer6) checked by scapy (checksum over the IPv6 pseudo-header, zero checksum only when
configured, flow label from the inner flow), the switch with an IPv6 or a dual-stack local
address (128-bit VTEP keys, per-VTEP counters, anti-spoofing, flood to both families, the
70-byte MTU budget), the IPv6 receive drop reasons, and the offload path's IPv6 pool."""
from __future__ import annotations

import os
from typing import Any

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from fastpath import addr, counters, outer6_ref, switch, switch_ref
from fastpath.vnet_ref import py_build
from tests.fastpath_impls import BROADCAST, Impl, impl, ip_frame, vxlan
from tests.test_fastpath_gso import MACS, check_tcp_segments, tso4

__all__ = ["impl"]

L4, L6 = "192.168.100.1", "fd00:100::1"
VNI = 42
A_MAC, B_MAC = "02:00:00:00:02:02", "02:00:00:00:03:02"
A6, B4 = "fd00:100::2", "192.168.100.3"
POD_MAC = "02:00:00:00:01:02"
POOL = list(range(40000, 40016))
NOHDR = bytes(10)


def make(impl: Impl, local: Any = L6, **kw: Any) -> Any:
    sw = impl.Switch(local, **kw)
    sw.add_network(VNI)
    return sw


def frame(dst: str = A_MAC, n: int = 100, sport: int = 1234) -> bytes:
    f = ip_frame(dst, POD_MAC, sport=sport, payload=b"x" * max(0, n - 42))
    return f + bytes(max(0, n - len(f)))


def nonzero(c: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in c.items() if v}


def check_outer6(dgram: bytes, src: str, dst: str, inner: bytes, *, vni: int = VNI,
                 dport: int = 4789, hlim: int = 64, zero_csum: bool = False) -> IPv6:
    p = IPv6(dgram)
    assert p.version == 6 and p.tc == 0 and p.nh == 17 and p.hlim == hlim
    assert p.src == src and p.dst == dst and p.plen == len(dgram) - 40
    assert p[UDP].dport == dport and p[UDP].len == p.plen
    assert p[VXLAN].flags == 0x08 and p[VXLAN].vni == vni
    assert bytes(p[VXLAN].payload) == inner
    assert p.fl == outer6_ref.py_flow_label(inner)
    if zero_csum:
        assert p[UDP].chksum == 0
    else:
        want = p[UDP].chksum
        p2 = IPv6(dgram)
        del p2[UDP].chksum
        assert want != 0 and IPv6(bytes(p2))[UDP].chksum == want, "UDP checksum over IPv6"
    return p


# ---- the header writer ----------------------------------------------------------------------


@pytest.fixture(params=["ref", "cython"])
def o6(request: pytest.FixtureRequest) -> Any:
    if request.param == "ref":
        return outer6_ref
    import importlib
    return importlib.import_module("fastpath.outer6")


@pytest.mark.parametrize("n", [0, 1, 14, 99, 1444])
@pytest.mark.parametrize("zero", [False, True])
def test_encap6_is_what_scapy_parses(o6: Any, n: int, zero: bool) -> None:
    inner = bytes(Ether(dst=A_MAC, src=POD_MAC) / IP(src="10.244.1.2", dst="10.244.2.2") /
                  UDP(sport=5, dport=6) / os.urandom(max(0, n - 42)))[:n] if n >= 42 else \
        os.urandom(n)
    src, dst = addr.ip6_to_int(L6).to_bytes(16, "big"), addr.ip6_to_int(A6).to_bytes(16, "big")
    fl = outer6_ref.py_flow_label(inner)
    d = o6.py_encap6(inner, src, dst, 40001, 4789, VNI, 64, fl, zero)
    assert len(d) == 56 + n
    check_outer6(d, L6, A6, inner, zero_csum=zero)
    assert d == outer6_ref.py_encap6(inner, src, dst, 40001, 4789, VNI, 64, fl, zero)


def test_flow_label_agrees_and_varies_per_flow(o6: Any) -> None:
    labels = set()
    for sport in range(64):
        f = frame(sport=sport)
        assert o6.py_flow_label(f) == outer6_ref.py_flow_label(f)
        assert 0 <= o6.py_flow_label(f) <= 0xFFFFF
        labels.add(o6.py_flow_label(f))
    assert len(labels) > 50


@pytest.mark.parametrize("args,msg", [
    ((b"\0" * 15, b"\0" * 16, 1, 2, 3, 64, 0), "src and dst must be 16-byte IPv6 addresses"),
    ((b"\0" * 16, b"\0" * 16, 1, 2, 1 << 24, 64, 0), "VNI must be in 0..16777215, got 16777216"),
    ((b"\0" * 16, b"\0" * 16, 1, 2, 3, 64, 1 << 20), "flow label must be in 0..1048575, got 1048576"),
    ((b"\0" * 16, b"\0" * 16, 1, 70000, 3, 64, 0), "UDP ports must be in 0..65535, got 1, 70000"),
])
def test_encap6_bad_arguments(o6: Any, args: tuple[Any, ...], msg: str) -> None:
    with pytest.raises(ValueError) as e:
        o6.py_encap6(b"abc", *args)
    assert str(e.value) == msg


# ---- addresses --------------------------------------------------------------------------------


@pytest.mark.parametrize("local,want", [
    (L6, [L6]), (f"{L4},{L6}", [L4, L6]), ([L6, L4], [L4, L6]), ("FD00:100:0::1", [L6]),
])
def test_local_addresses(impl: Impl, local: Any, want: list[str]) -> None:
    sw = impl.Switch(local)
    assert sw.locals() == want
    assert sw.has6 and sw.has4 == (len(want) == 2)


@pytest.mark.parametrize("local,msg", [
    ("fd00::1,fd00::2", "two IPv6 local addresses (fd00::1, fd00::2): give one of each family "
                        "at most"),
    ("10.0.0.1,10.0.0.2", "two IPv4 local addresses (10.0.0.1, 10.0.0.2): give one of each "
                          "family at most"),
    ("ff02::1", "ff02::1 is not a unicast IPv6 address, cannot be a VTEP"),
    ("::ffff:10.0.0.1", "::ffff:10.0.0.1 is an IPv4-mapped address: give the VTEP as 10.0.0.1"),
    ("fd00::zz", "not an IPv6 address: 'fd00::zz'"),
])
def test_bad_local_addresses(impl: Impl, local: str, msg: str) -> None:
    with pytest.raises(ValueError) as e:
        impl.Switch(local)
    assert str(e.value) == msg


def test_vtep_family_needs_a_local_address_of_that_family(impl: Impl) -> None:
    sw4, sw6 = make(impl, L4), make(impl, L6)
    with pytest.raises(ValueError, match="VTEP fd00:100::2 is IPv6 but this agent has no IPv6 "
                                         "local address"):
        sw4.fdb_add(VNI, A_MAC, A6)
    with pytest.raises(ValueError, match="VTEP 192.168.100.3 is IPv4 but this agent has no "
                                         "IPv4 local address"):
        sw6.fdb_add(VNI, A_MAC, B4)
    with pytest.raises(ValueError, match="IPv4-mapped"):
        sw6.fdb_add(VNI, A_MAC, "::ffff:192.168.100.3")
    assert sw4.fdb(VNI) == [] and sw6.fdb(VNI) == [] and sw6.vteps(VNI) == []


@pytest.mark.parametrize("s,want", [
    ("1.2.3.4", ("1.2.3.4", None)), ("1.2.3.4:8472", ("1.2.3.4", 8472)),
    ("fd00::2", ("fd00::2", None)), ("[fd00::2]", ("fd00::2", None)),
    ("[fd00::2]:8472", ("fd00::2", 8472)),
])
def test_split_host_port(s: str, want: tuple[str, int | None]) -> None:
    assert addr.split_host_port(s) == want


@pytest.mark.parametrize("s", ["[fd00::2", "[fd00::2]8472", "[fd00::2]:0", "[1.2.3.4]:1",
                               "1.2.3.4:x"])
def test_split_host_port_errors(s: str) -> None:
    with pytest.raises(ValueError):
        addr.split_host_port(s)


# ---- outbound ---------------------------------------------------------------------------------


def test_unicast_to_ipv6_vtep(impl: Impl) -> None:
    sw = make(impl, ttl=9)
    sw.fdb_add(VNI, A_MAC, A6, 8472)
    f = frame()
    out, decs = sw.process_tap(VNI, [f])
    assert decs == [{"vni": VNI, "verdict": "encap", "reason": None, "vtep": A6, "copies": 1}]
    assert out[0][:3] == ("udp", A6, 8472)
    p = check_outer6(out[0][3], L6, A6, f, dport=8472, hlim=9)
    assert 32768 <= p[UDP].sport < 61000
    assert sw.fdb(VNI) == [(A_MAC, A6, 8472)]
    v = sw.vteps(VNI)
    assert v[0]["vtep"] == A6 and v[0]["tx_packets"] == 1 and v[0]["tx_bytes"] == 56 + len(f)
    assert nonzero(sw.counters(VNI)) == {"tap_rx_packets": 1, "tap_rx_bytes": len(f),
                                         "udp_tx_packets": 1, "udp_tx_bytes": 56 + len(f)}


def test_udp6zerocsumtx(impl: Impl) -> None:
    sw = make(impl, udp6zerocsumtx=True)
    sw.fdb_add(VNI, A_MAC, A6)
    f = frame()
    out, _ = sw.process_tap(VNI, [f])
    check_outer6(out[0][3], L6, A6, f, zero_csum=True)


def test_mtu_budget_is_70_bytes_with_an_ipv6_local(impl: Impl) -> None:
    """Underlay MTU 1500: inner frames up to 1444 (TAP MTU 1430 + 14) leave; 1445 is dropped,
    never fragmented; with dual stack the same budget holds for IPv4 peers."""
    for local in (L6, [L4, L6]):
        sw = make(impl, local)
        sw.fdb_add(VNI, A_MAC, A6)
        if isinstance(local, list):
            sw.fdb_add(VNI, B_MAC, B4)
        out, decs = sw.process_tap(VNI, [frame(n=1444), frame(n=1445)] + (
            [frame(B_MAC, n=1445)] if isinstance(local, list) else []))
        assert [d["verdict"] for d in decs][:2] == ["encap", "drop"]
        assert all(d["reason"] == "tx_too_big" for d in decs[1:])
        assert len(out) == 1 and len(out[0][3]) == 1500
        assert sw.counters(VNI)["drop_tx_too_big"] == len(decs) - 1
    sw4 = make(impl, L4)
    sw4.fdb_add(VNI, B_MAC, B4)
    _, decs = sw4.process_tap(VNI, [frame(B_MAC, n=1464)])
    assert decs[0]["verdict"] == "encap", "IPv4 only: the 50-byte budget as before"


def test_dual_stack_unicast_and_flood(impl: Impl) -> None:
    sw = make(impl, [L4, L6], flood=True)
    sw.fdb_add(VNI, A_MAC, A6)
    sw.fdb_add(VNI, B_MAC, B4)
    fa, fb = frame(A_MAC), frame(B_MAC)
    bc = ip_frame(BROADCAST, POD_MAC)
    out, decs = sw.process_tap(VNI, [fa, fb, bc])
    assert [d["verdict"] for d in decs] == ["encap", "encap", "flood"]
    assert [d["vtep"] for d in decs] == [A6, B4, None] and decs[2]["copies"] == 2
    check_outer6(out[0][3], L6, A6, fa)
    p4 = IP(out[1][3])
    assert p4.src == L4 and p4.dst == B4 and bytes(p4[VXLAN].payload) == fb
    flood = {o[1]: o[3] for o in out[2:]}
    assert set(flood) == {A6, B4}
    check_outer6(flood[A6], L6, A6, bc)
    assert IP(flood[B4]).dst == B4 and bytes(IP(flood[B4])[VXLAN].payload) == bc
    vt = {v["vtep"]: v for v in sw.vteps(VNI)}
    assert vt[A6]["tx_packets"] == 2 and vt[B4]["tx_packets"] == 2
    assert vt[A6]["tx_bytes"] == 112 + len(fa) + len(bc)
    assert vt[B4]["tx_bytes"] == 72 + len(fb) + len(bc)
    assert [v["vtep"] for v in sw.vteps(VNI)] == [B4, A6]        # by key: IPv4-mapped first


def test_vtep_refcount_and_replacement_across_families(impl: Impl) -> None:
    sw = make(impl, [L4, L6])
    sw.fdb_add(VNI, A_MAC, A6)
    sw.fdb_add(VNI, B_MAC, A6)
    assert sw.vteps(VNI)[0]["fdb_entries"] == 2
    sw.fdb_add(VNI, A_MAC, B4)                  # A moves to an IPv4 VTEP
    assert {v["vtep"]: v["fdb_entries"] for v in sw.vteps(VNI)} == {A6: 1, B4: 1}
    assert sw.fdb_del(VNI, B_MAC) is True
    assert [v["vtep"] for v in sw.vteps(VNI)] == [B4]
    assert sw.table_sizes(VNI)["vteps"] == 1


# ---- inbound ----------------------------------------------------------------------------------


def inner(src: str = A_MAC) -> bytes:
    return ip_frame(POD_MAC, src, src_ip="10.244.2.2", dst_ip="10.244.1.2")


def test_rx_from_ipv6_vtep_counted_per_vtep(impl: Impl) -> None:
    sw = make(impl, [L4, L6])
    sw.fdb_add(VNI, A_MAC, A6)
    sw.fdb_add(VNI, B_MAC, B4)
    d6, d4 = vxlan(VNI, inner()), vxlan(VNI, inner(B_MAC))
    out, decs = sw.process_udp([(A6, d6), (B4, d4), ("fd00:100::99", d6),
                                ("::ffff:192.168.100.3", d4)])
    assert [d["verdict"] for d in decs] == ["deliver", "deliver", "drop", "deliver"]
    assert [d["vtep"] for d in decs] == [A6, B4, "fd00:100::99", B4]
    assert decs[2]["reason"] == "spoofed"
    assert [o[2] for o in out] == [inner(), inner(B_MAC), inner(B_MAC)]
    vt = {v["vtep"]: v for v in sw.vteps(VNI)}
    assert vt[A6]["rx_packets"] == 1 and vt[A6]["rx_bytes"] == len(d6)
    assert vt[B4]["rx_packets"] == 2, "a dual-stack socket's IPv4-mapped source is the IPv4 VTEP"
    assert sw.counters(VNI)["drop_spoofed"] == 1


def test_rx_lenient_accepts_unknown_ipv6_source(impl: Impl) -> None:
    sw = make(impl, L6, strict=False)
    _, decs = sw.process_udp([("fd00:100::99", vxlan(VNI, inner()))])
    assert decs[0]["verdict"] == "deliver"


@pytest.mark.parametrize("ext,reason", [("ext_hdr", "ip6_ext_hdr"), ("fragment", "ip6_fragment")])
def test_rx_ipv6_extension_headers_and_fragments_dropped(impl: Impl, ext: str,
                                                         reason: str) -> None:
    sw = make(impl, L6)
    sw.fdb_add(VNI, A_MAC, A6)
    out, decs = sw.process_udp([(A6, vxlan(VNI, inner()), 0, ext), (A6, vxlan(VNI, inner()))])
    assert out == [("tap", VNI, inner())]
    assert decs[0] == {"vni": 0, "verdict": "drop", "reason": reason, "vtep": A6, "copies": 0}
    assert sw.counters()["drop_" + reason] == 1
    assert sw.vteps(VNI)[0]["rx_packets"] == 1
    with pytest.raises(ValueError):
        sw.process_udp([(A6, vxlan(VNI, inner()), 0, "hop")])


def test_counter_names_include_ipv6_drops() -> None:
    assert counters.NAMES[-2:] == ("drop_ip6_ext_hdr", "drop_ip6_fragment")


# ---- offloads: the IPv6 pool ------------------------------------------------------------------


def make_off(impl: Impl, local: Any = L6) -> Any:
    sw = impl.Switch(local, offload=True)
    sw.add_network(VNI)
    if isinstance(local, list):
        sw.set_udp_pool([-1] * len(POOL), POOL)
    sw.set_udp_pool([-1] * 4, [41000, 41001, 41002, 41003], family=6)
    sw.fdb_add(VNI, MACS["dst"], A6)
    return sw


def test_offload_gso_over_ipv6_pool(impl: Impl) -> None:
    sw = make_off(impl)
    hdr, f = tso4(os.urandom(20000), mss=1500 - 70 - 40)    # the TAP MTU's MSS: 1390
    out, decs = sw.process_tap(VNI, [py_build(hdr) + f])
    assert decs[0]["verdict"] == "encap" and decs[0]["vtep"] == A6
    assert {o[:3] for o in out} == {("udp", A6, 4789)}
    assert len({o[3] for o in out}) == 1 and out[0][3] in (41000, 41001, 41002, 41003)
    segs = [o[4][8:] for o in out]
    assert all(len(o[4]) + 48 <= 1500 for o in out), "each segment + 56 outer bytes fits"
    check_tcp_segments(f, segs, 1500 - 70 - 40, False)
    c = sw.counters(VNI)
    assert c["udp_tx_bytes"] == sum(56 + len(o[4]) - 8 for o in out)
    assert sw.vteps(VNI)[0]["tx_bytes"] == c["udp_tx_bytes"]
    assert sw.offload_state()["pool_ports6"] == [41000, 41001, 41002, 41003]


def test_offload_gso_too_big_for_ipv6_mtu(impl: Impl) -> None:
    sw = make_off(impl)
    hdr, f = tso4(os.urandom(5000), mss=1500 - 70 - 40 + 1)
    _, decs = sw.process_tap(VNI, [py_build(hdr) + f])
    assert decs[0]["reason"] == "gso_too_big"


def test_offload_dual_stack_needs_both_pools(impl: Impl) -> None:
    sw = impl.Switch([L4, L6], offload=True)
    sw.add_network(VNI)
    with pytest.raises(ValueError, match="an IPv6 pool needs an IPv6 local address"):
        impl.Switch(L4, offload=True).set_udp_pool([-1], [1], family=6)
    sw.set_udp_pool([-1] * 2, [40000, 40001], family=6)
    sw.fdb_add(VNI, A_MAC, A6)
    sw.fdb_add(VNI, B_MAC, B4)
    sw.set_udp_pool([-1] * 2, [42000, 42001])
    out, decs = sw.process_tap(VNI, [NOHDR + frame(A_MAC), NOHDR + frame(B_MAC)])
    assert [(o[1], o[3] in (40000, 40001) if o[1] == A6 else o[3] in (42000, 42001))
            for o in out] == [(A6, True), (B4, True)]


def test_both_implementations_agree_on_a_mixed_batch() -> None:
    frames = [frame(A_MAC, n=n, sport=n) for n in (60, 200, 1444, 1445)] + \
             [frame(B_MAC, n=300), ip_frame(BROADCAST, POD_MAC)]
    res = []
    for mod in (switch_ref, switch):
        sw = mod.Switch([L4, L6], flood=True)
        sw.add_network(VNI)
        sw.fdb_add(VNI, A_MAC, A6)
        sw.fdb_add(VNI, B_MAC, B4)
        out, decs = sw.process_tap(VNI, frames)
        rx = sw.process_udp([(A6, vxlan(VNI, inner())), ("fd00::9", vxlan(VNI, inner())),
                             (A6, vxlan(VNI, inner()), 0, "ext_hdr")])
        res.append((sorted(out), decs, rx, sw.vteps(VNI), sw.counters(VNI), sw.counters()))
    assert res[0] == res[1]
