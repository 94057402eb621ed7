"""Captured-style packets (tests/fixtures/*.bin, made once by tests/fixtures/make_fixtures.py)
and every truncation of them, with the exact verdict and drop reason at each length.
"""
from __future__ import annotations

import os
from collections import Counter
from typing import Any

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN

from tests.fastpath_impls import Impl, impl

__all__ = ["impl"]

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
VNI = 42
LOCAL, PEER = "192.168.100.1", "192.168.100.2"
POD1_MAC, POD2_MAC = "02:00:00:00:01:02", "02:00:00:00:02:02"


def load(name: str) -> bytes:
    with open(os.path.join(FIXTURES, name), "rb") as f:
        return f.read()


def udp_payload(name: str) -> bytes:
    """The VXLAN datagram's UDP payload (what recvmmsg() hands the switch)."""
    data = load(name)
    payload = bytes(Ether(data)[UDP].payload)
    assert payload == data[14 + 20 + 8:]
    return payload


def switch(impl: Impl, **kw: Any) -> Any:
    sw = impl.Switch(LOCAL, **kw)
    sw.add_network(VNI)
    sw.fdb_add(VNI, POD2_MAC, PEER)
    sw.neigh_add(VNI, "10.244.2.2", POD2_MAC)
    return sw


def rx_reasons(sw: Any, payload: bytes) -> list[str]:
    """Each truncation of payload, alone: 'deliver' or the drop reason."""
    out, decs = sw.process_udp([(PEER, payload[:n]) for n in range(len(payload) + 1)])
    delivered = iter(out)
    result = []
    for n, d in enumerate(decs):
        if d["verdict"] == "deliver":
            assert next(delivered) == ("tap", VNI, payload[8:n])
            result.append("deliver")
        else:
            assert d["verdict"] == "drop" and d["vtep"] == PEER, d
            result.append(d["reason"])
    assert next(delivered, None) is None
    return result


def tx_reasons(sw: Any, frame: bytes) -> list[str]:
    _out, decs = sw.process_tap(VNI, [frame[:n] for n in range(len(frame) + 1)])
    return [d["reason"] or d["verdict"] for d in decs]


# ---- the fixtures are what they claim to be ----------------------------------------------------


def test_fixture_files_parse() -> None:
    names = sorted(f for f in os.listdir(FIXTURES) if f.endswith(".bin"))
    assert names == ["tap_arp_request.bin", "tap_ipv6_ns.bin", "tap_tcp_syn.bin",
                     "underlay_vxlan_arp_reply.bin", "underlay_vxlan_gpe.bin",
                     "underlay_vxlan_tcp.bin"]
    p = Ether(load("underlay_vxlan_tcp.bin"))
    assert (p[IP].src, p[IP].dst, p[UDP].dport, p[VXLAN].flags, p[VXLAN].vni) == (
        PEER, LOCAL, 4789, 0x08, VNI)
    assert p[VXLAN][TCP].flags == "SA"
    assert Ether(load("underlay_vxlan_arp_reply.bin"))[ARP].op == 2
    assert load("underlay_vxlan_gpe.bin")[42] == 0x0C
    assert Ether(load("tap_tcp_syn.bin"))[TCP].flags == "S"
    assert Ether(load("tap_arp_request.bin"))[ARP].op == 1
    assert Ether(load("tap_ipv6_ns.bin")).dst == "33:33:ff:00:02:02"


# ---- header parse -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["underlay_vxlan_tcp.bin", "underlay_vxlan_arp_reply.bin"])
def test_parse_every_truncation(impl: Impl, name: str) -> None:
    p = udp_payload(name)
    got = [impl.headers.py_parse_vxlan(p[:n]) for n in range(len(p) + 1)]
    assert got == [-1] * 8 + [VNI] * (len(p) - 7)


def test_parse_gpe_every_truncation(impl: Impl) -> None:
    p = udp_payload("underlay_vxlan_gpe.bin")
    for strict, want in ((True, -3), (False, VNI)):
        got = [impl.headers.py_parse_vxlan(p[:n], strict) for n in range(len(p) + 1)]
        assert got == [-1] * 8 + [want] * (len(p) - 7)


def test_outer_header_matches_our_encap(impl: Impl) -> None:
    """Re-encapsulating the captured inner frame reproduces the captured outer IPv4 header
    except for the UDP source port, which is ours (the capture's sender chose its own)."""
    data = load("underlay_vxlan_tcp.bin")
    cap = data[14:]
    inner = cap[36:]
    ours = impl.headers.py_encap(inner, int.from_bytes(cap[12:16], "big"),
                                 int.from_bytes(cap[16:20], "big"), 51234, 4789, VNI, 64)
    assert ours == cap


# ---- inbound: every truncation -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["underlay_vxlan_tcp.bin", "underlay_vxlan_arp_reply.bin"])
def test_rx_every_truncation(impl: Impl, name: str) -> None:
    p = udp_payload(name)
    sw = switch(impl)
    reasons = rx_reasons(sw, p)
    assert reasons == ["truncated"] * 8 + ["inner_short"] * 14 + ["deliver"] * (len(p) - 21)
    assert {k: v for k, v in sw.counters().items() if v} == {"drop_truncated": 8}
    c = sw.counters(VNI)
    n_ok = len(p) - 21
    assert (c["drop_inner_short"], c["udp_rx_packets"], c["tap_tx_packets"]) == (14, n_ok, n_ok)
    assert c["udp_rx_bytes"] == sum(range(22, len(p) + 1))
    assert c["tap_tx_bytes"] == c["udp_rx_bytes"] - 8 * n_ok


def test_rx_gpe_every_truncation(impl: Impl) -> None:
    p = udp_payload("underlay_vxlan_gpe.bin")
    assert rx_reasons(switch(impl, strict=True), p) == ["truncated"] * 8 + ["reserved"] * (
        len(p) - 7)
    assert rx_reasons(switch(impl, strict=False), p) == (
        ["truncated"] * 8 + ["inner_short"] * 14 + ["deliver"] * (len(p) - 21))


def test_rx_every_truncation_unknown_vni_and_spoofed(impl: Impl) -> None:
    p = udp_payload("underlay_vxlan_tcp.bin")
    sw = impl.Switch(LOCAL)
    sw.add_network(7)
    assert rx_reasons(sw, p) == ["truncated"] * 8 + ["unknown_vni"] * (len(p) - 7)
    sw = switch(impl)
    sw.fdb_del(VNI, POD2_MAC)                       # PEER is no longer a VTEP of VNI 42
    assert rx_reasons(sw, p) == ["truncated"] * 8 + ["inner_short"] * 14 + ["spoofed"] * (
        len(p) - 21)


def test_rx_every_truncation_small_mtu(impl: Impl) -> None:
    """With underlay MTU 576 the slot holds 8 + 540 bytes: the padded capture is too big."""
    p = udp_payload("underlay_vxlan_tcp.bin") + bytes(600)
    reasons = rx_reasons(switch(impl, underlay_mtu=576), p)
    assert reasons == (["truncated"] * 8 + ["inner_short"] * 14 + ["deliver"] * (548 - 21)
                       + ["rx_too_big"] * (len(p) - 548))


# ---- outbound: every truncation ------------------------------------------------------------------


def test_tx_tcp_every_truncation(impl: Impl) -> None:
    f = load("tap_tcp_syn.bin")
    sw = switch(impl)
    out, decs = sw.process_tap(VNI, [f[:n] for n in range(len(f) + 1)])
    assert [d["reason"] or d["verdict"] for d in decs] == ["tx_short"] * 14 + ["encap"] * (
        len(f) - 13)
    assert [o[3][36:] for o in out] == [f[:n] for n in range(14, len(f) + 1)]
    assert all(o[:3] == ("udp", PEER, 4789) for o in out)
    full = IP(out[-1][3])
    assert (full[VXLAN].vni, full[VXLAN][TCP].flags) == (VNI, "S")
    # the L4 ports are hashed only when all 4 bytes are there: one port per truncation class
    sports = [int.from_bytes(o[3][20:22], "big") for o in out]
    assert len(set(sports[38 - 14:])) == 1


def test_tx_arp_every_truncation(impl: Impl) -> None:
    f = load("tap_arp_request.bin")
    assert len(f) == 42
    sw = switch(impl)
    out, decs = sw.process_tap(VNI, [f[:n] for n in range(43)] + [f + bytes(18)])
    assert [d["reason"] or d["verdict"] for d in decs] == (
        ["tx_short"] * 14 + ["bum"] * 28 + ["arp_reply"] * 2)
    assert len(out) == 2 and out[0] == out[1]
    a = Ether(out[0][2])[ARP]
    assert (a.op, a.hwsrc, a.psrc, a.hwdst, a.pdst) == (2, POD2_MAC, "10.244.2.2", POD1_MAC,
                                                        "10.244.1.2")


def test_tx_arp_every_truncation_flood(impl: Impl) -> None:
    """With flood on, the unanswerable truncations are replicated instead of dropped."""
    f = load("tap_arp_request.bin")
    sw = switch(impl, flood=True)
    sw.fdb_add(VNI, "02:00:00:00:03:02", "192.168.100.3")
    assert tx_reasons(sw, f) == ["tx_short"] * 14 + ["flood"] * 28 + ["arp_reply"]
    c = sw.counters(VNI)
    assert (c["flooded"], c["udp_tx_packets"], c["arp_replied"], c["drop_tx_short"]) == (
        28, 56, 1, 14)


@pytest.mark.parametrize("flood", [False, True])
def test_tx_ipv6_multicast_every_truncation(impl: Impl, flood: bool) -> None:
    f = load("tap_ipv6_ns.bin")
    sw = switch(impl, flood=flood)
    sw.fdb_add(VNI, "02:00:00:00:03:02", "192.168.100.3", 8472)
    out, decs = sw.process_tap(VNI, [f[:n] for n in range(len(f) + 1)])
    # Up to the ICMPv6 type byte (offset 54) a prefix is plain multicast (BUM policy); from
    # there on it is a neighbour solicitation cut short (dropped: nd_truncated, whatever the
    # flood setting); the whole NS, for a target not in the table, is a miss (BUM policy).
    want, miss = ("flood", "flood") if flood else ("bum", "nd_miss")
    assert [d["reason"] or d["verdict"] for d in decs] == (
        ["tx_short"] * 14 + [want] * (55 - 14) + ["nd_truncated"] * (len(f) - 55) + [miss])
    if flood:
        copies = 55 - 14 + 1
        assert Counter((o[1], o[2]) for o in out) == {(PEER, 4789): copies,
                                                      ("192.168.100.3", 8472): copies}
    else:
        assert out == []
