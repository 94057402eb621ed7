"""Decision trace over the simulated switch: what `vxtap trace show` prints for a ping (lookup
hit and VTEP), malformed datagrams (drop reason), an ARP request (local reply), a flood (the
VTEPs), and the limits (count, filter). Also: the Python filter mirrors the C one.
"""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.trace import (
    Filter,
    Tracer,
    decision_dict,
    direction,
    format_decision,
    format_trace,
    summarize_frame,
)
from fastpath.trace_ref import Record, parse_records
from tests.fastpath_impls import eth
from tests.test_trace_common import (
    B_IP,
    B_MAC,
    B_VTEP,
    POD,
    VNI,
    arp_for_b,
    icmp_echo,
    make_switch,
    ping_back,
    ping_out,
    vxlan,
)


def traced(sw, n: int = 10, **flt) -> Tracer:
    t = Tracer(sw)
    t.add(n, **flt)
    return t


def test_ping_shows_lookup_hit_and_vtep() -> None:
    sw = make_switch()
    t = traced(sw)
    sw.process_tap(VNI, [ping_out(7)])
    (d,) = t.show()
    assert (d["direction"], d["verdict"], d["vteps"], d["copies"]) == \
        ("out", "encap", [[B_VTEP, 4789]], 1)
    assert d["bytes_in"] == len(ping_out(7)) and d["bytes_out"] == len(ping_out(7)) + 36
    text = format_decision(d, 1)
    lines = text.splitlines()
    assert lines[0] == f"Packet 1  seq {d['seq']}"
    assert f"vni {VNI}  outbound: TAP -> underlay  {len(ping_out(7))} bytes in" in lines[1]
    assert lines[2] == f"  ethernet {POD[1]} -> {B_MAC}"
    assert lines[3].startswith(f"  IPv4 {POD[0]} -> {B_IP} ICMP ttl 64")
    assert lines[3].endswith("echo request id 4660 seq 7")
    assert lines[4] == f"  fdb lookup: hit {B_MAC} -> VTEP {B_VTEP}:4789"
    assert lines[5] == f"  verdict: encap, 1 datagram to {B_VTEP}, {len(ping_out(7)) + 36} bytes out"


def test_ping_reply_inbound_delivered() -> None:
    sw = make_switch()
    t = traced(sw)
    sw.process_udp([(B_VTEP, vxlan(VNI, ping_back(7)))])
    (d,) = t.show()
    assert (d["direction"], d["verdict"], d["from"]) == ("in", "deliver", [B_VTEP, 0])
    text = format_decision(d)
    assert f"  from VTEP {B_VTEP}, VXLAN flags 0x08 vni {VNI}" in text
    assert "echo reply id 4660 seq 7" in text
    assert f"  source check: {B_VTEP} is a VTEP of vni {VNI} (strict)\n" in text
    assert f"  verdict: deliver to the TAP, {len(ping_back(7))} bytes out" in text


@pytest.mark.parametrize("payload,reason,text", [
    (b"\x08\x00\x00", "truncated", "datagram shorter than a VXLAN header"),
    (vxlan(VNI, ping_back(), flags=0x00), "no_i_flag", "VXLAN I flag not set"),
    (vxlan(VNI, ping_back(), rsv1=1), "reserved", "reserved VXLAN bits set (strict mode)"),
    (vxlan(4242, ping_back()), "unknown_vni", "no network with this VNI"),
    (vxlan(VNI, b"\x02" * 10), "inner_short", "inner frame shorter than an Ethernet header"),
    (vxlan(VNI, icmp_echo(POD[1], "01:00:5e:00:00:01", B_IP, POD[0])), "bad_inner_src",
     "inner source MAC is multicast or zero"),
])
def test_malformed_datagram_shows_drop_reason(payload: bytes, reason: str, text: str) -> None:
    sw = make_switch()
    t = traced(sw)
    _, (dec,) = sw.process_udp([(B_VTEP, payload)])
    assert dec["reason"] == reason
    (d,) = t.show()
    assert (d["direction"], d["verdict"], d["reason"], d["bytes_out"]) == ("in", "drop", reason, 0)
    out = format_decision(d)
    assert f"  verdict: drop, reason {reason}: {text}\n" in out
    assert out.startswith("Packet  seq")


def test_spoofed_source() -> None:
    sw = make_switch()
    t = traced(sw)
    sw.process_udp([("192.168.100.66", vxlan(VNI, ping_back()))])
    (d,) = t.show()
    assert d["reason"] == "spoofed" and d["from"] == ["192.168.100.66", 0]
    assert "from VTEP 192.168.100.66, VXLAN flags 0x08 vni 42" in format_decision(d)


def test_arp_request_answered_locally() -> None:
    sw = make_switch()
    t = traced(sw)
    sw.process_tap(VNI, [arp_for_b()])
    (d,) = t.show()
    assert (d["verdict"], d["arp_reply_mac"], d["bytes_out"]) == ("arp_reply", B_MAC, 42)
    out = format_decision(d)
    assert f"  ARP request who-has {B_IP} tell {POD[0]} ({POD[1]})\n" in out
    assert f"  arp: neighbour hit, answered locally: {B_IP} is-at {B_MAC}\n" in out
    assert "  verdict: arp_reply, written back to the TAP, 42 bytes out\n" in out


def test_arp_miss_and_unknown_unicast_drops() -> None:
    sw = make_switch()
    t = traced(sw)
    sw.process_tap(VNI, [eth("ff:ff:ff:ff:ff:ff", POD[1], 0x0806, bytes(arp_for_b()[14:38]) +
                             bytes([10, 244, 9, 9])),
                         icmp_echo("02:00:00:00:09:09", POD[1], POD[0], "10.244.9.9"),
                         b"\x01\x02\x03"])
    a, u, s = t.show()
    assert "  arp: no neighbour entry for 10.244.9.9\n" in format_decision(a)
    assert "reason arp_miss: ARP request for an IP with no neighbour entry" in format_decision(a)
    assert "  fdb lookup: miss for 02:00:00:00:09:09\n" in format_decision(u)
    assert "reason unknown_unicast" in format_decision(u)
    assert s["reason"] == "tx_short" and "3 bytes, shorter than an Ethernet header: 010203" in \
        format_decision(s)


def test_flood_names_every_vtep() -> None:
    sw = make_switch(flood=True)
    t = traced(sw)
    bcast = icmp_echo("ff:ff:ff:ff:ff:ff", POD[1], POD[0], "10.244.255.255")
    sw.process_tap(VNI, [bcast])
    (d,) = t.show()
    assert d["verdict"] == "flood" and d["copies"] == 2
    assert sorted(v[0] for v in d["vteps"]) == ["192.168.100.2", "192.168.100.3"]
    assert d["bytes_out"] == 2 * (len(bcast) + 36)
    out = format_decision(d)
    assert "broadcast/multicast: replicated to 2 VTEP(s): 192.168.100." in out


def test_count_then_disarmed_and_records_kept() -> None:
    sw = make_switch()
    t = traced(sw, 3)
    sw.process_tap(VNI, [ping_out(i) for i in range(10)])
    recs = t.show()
    assert len(recs) == 3 and [r["seq"] for r in recs] == sorted(r["seq"] for r in recs)
    assert t.decision is None and not sw.trace_status()["active"]
    assert t.show(max=1) == recs[-1:]
    text = format_trace(recs)
    assert text.count("Packet ") == 3 and "Packet 3  seq" in text
    t.clear()
    assert t.show() == [] and "No packets in the trace buffer" in format_trace([])


def test_filter_selects_packets() -> None:
    sw = make_switch()
    t = traced(sw, 2, ip="10.244.3.2")
    to_c = icmp_echo("02:00:00:00:03:02", POD[1], POD[0], "10.244.3.2")
    sw.process_tap(VNI, [ping_out(), to_c, ping_out(), to_c])
    assert [r["vteps"][0][0] for r in t.show()] == ["192.168.100.3"] * 2
    assert t.status()["armed"] == {}


def test_add_validation() -> None:
    t = Tracer(make_switch(), keep=100)
    for n, msg in [(0, "count must be a positive integer, got 0"),
                   (True, "count must be a positive integer, got True"),
                   (101, "at most 100 packets per trace (records kept), got 101")]:
        with pytest.raises(ValueError) as e:
            t.add(n)
        assert str(e.value) == msg


# ---- pure pieces --------------------------------------------------------------------------------


def test_direction_of_every_drop_reason() -> None:
    from fastpath import counters
    from dataplane.trace import OUT_DROPS
    outs = {"tx_short", "tx_too_big", "unknown_unicast", "bum", "arp_miss", "send_error",
            "nd_miss", "nd_truncated", "nd_bad_checksum", "nd_bad_hop_limit", "nd_bad_option",
            "nd_invalid"}
    outs |= {n for n in OUT_DROPS if n.startswith(("gso_", "vnet_"))}
    assert len(outs) == 24
    for name in counters.DROPS:
        assert direction("drop", name[5:]) == ("out" if name[5:] in outs else "in"), name


def test_summarize_frames() -> None:
    tcp = eth(B_MAC, POD[1], 0x0800, bytes.fromhex("4500002800010000400600000af401020af40202")
              + struct.pack("!HHIIBBHHH", 40000, 443, 1, 0, 0x50, 0x12, 1024, 0, 0))
    assert summarize_frame(tcp)[1] == f"IPv4 {POD[0]} -> {B_IP} TCP ttl 64 len 40 40000 -> 443 flags [SA]"
    vlan = eth(B_MAC, POD[1], 0x8100, b"\x00\x05\x08\x06" + arp_for_b()[14:])
    assert summarize_frame(vlan) == [f"ethernet {POD[1]} -> {B_MAC} vlan 5",
                                     f"ARP request who-has {B_IP} tell {POD[0]} ({POD[1]})"]
    assert summarize_frame(eth(B_MAC, POD[1], 0x88cc, b"x"))[1] == "ethertype 0x88cc, 15 bytes"
    assert summarize_frame(eth(B_MAC, POD[1], 0x0800, b"\x45"))[1] == "IPv4, truncated (1 bytes)"


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=140), verdict=st.sampled_from(
    ["encap", "flood", "arp_reply", "deliver", "drop"]), copies=st.integers(0, 3))
def test_format_never_fails_on_any_bytes(data: bytes, verdict: str, copies: int) -> None:
    r = Record("decision", verdict, "truncated" if verdict == "drop" else None, 0, 1, VNI,
               0xC0A86402, copies, len(data), data)
    out = format_decision(decision_dict(r))
    assert out.startswith("Packet  seq 1\n") and "verdict: " in out


FRAMES = [ping_out(), arp_for_b(), icmp_echo("02:00:00:00:03:02", POD[1], POD[0], "10.244.3.2"),
          eth(B_MAC, POD[1], 0x86dd, bytes(40)), b"\x02" * 11, eth(B_MAC, POD[1], 0x0800, b"x")]


@pytest.mark.parametrize("flt", [Filter(mac=B_MAC), Filter(mac=POD[1]), Filter(ip=B_IP),
                                 Filter(ip="10.244.3.2"), Filter(ip=POD[0], mac=B_MAC),
                                 Filter(vni=VNI), Filter(vni=7)])
def test_python_filter_mirrors_c_trace_match(flt: Filter) -> None:
    """Filter.matches (used when two sessions' filters differ) selects what the C filter does."""
    sw = make_switch()
    sw.trace_arm({"tap_in": -1}, **flt.arm_kwargs())
    sw.process_tap(VNI, FRAMES)
    got = [r.data for r in parse_records(sw.trace_read())]
    assert got == [f for f in FRAMES if flt.matches(VNI, f)]
