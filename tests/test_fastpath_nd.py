"""IPv6 neighbour suppression (RFC 4861): NS -> NA replies checked by scapy, every drop reason,
the solicitations that must not be answered, what the switch does on a miss, and a
differential fuzz of the NS parser (reference vs Cython).

``impl.nd_reduce`` is nd_ref.nd_reduce for the reference and, for Cython, the same verdict
taken through a switch (the C responder is only reachable from the TX path).
"""
from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet6 import (
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
)
from scapy.layers.l2 import Ether

from fastpath.nd_ref import (
    ND_ANSWERED,
    ND_BAD_CHECKSUM,
    ND_BAD_HOP_LIMIT,
    ND_BAD_OPTION,
    ND_INVALID,
    ND_MISS,
    ND_NOT_NS,
    ND_TRUNCATED,
)
from tests.fastpath_impls import CYTHON, REF, Impl, examples, impl, mac_bytes

__all__ = ["impl"]

ME_MAC, ME_IP = "02:00:00:00:01:02", "fd00:244::1:2"         # the pod asking
PEER_MAC, PEER_IP = "02:00:00:00:02:02", "fd00:244::2:2"     # the remote pod in the table
LL_PEER = "fe80::2:2"
NEIGH6 = {int(ipaddress.IPv6Address(PEER_IP)): int.from_bytes(mac_bytes(PEER_MAC), "big"),
          int(ipaddress.IPv6Address(LL_PEER)): int.from_bytes(mac_bytes(PEER_MAC), "big")}


def solicited_node(ip: str) -> str:
    low = int(ipaddress.IPv6Address(ip)) & 0xFFFFFF
    return str(ipaddress.IPv6Address(int(ipaddress.IPv6Address("ff02::1:ff00:0")) | low))


def mcast_mac(ip6: str) -> str:
    b = ipaddress.IPv6Address(ip6).packed[-4:]
    return "33:33:" + ":".join(f"{x:02x}" for x in b)


def scapy_ns(target: str = PEER_IP, *, src: str = ME_IP, dst: str | None = None,
             eth_src: str = ME_MAC, slla: str | None = ME_MAC, hlim: int = 255,
             code: int = 0) -> bytes:
    dst = dst or solicited_node(target)
    pkt = (Ether(src=eth_src, dst=mcast_mac(dst)) / IPv6(src=src, dst=dst, hlim=hlim)
           / ICMPv6ND_NS(tgt=target, code=code))
    if slla is not None:
        pkt = pkt / ICMPv6NDOptSrcLLAddr(lladdr=slla)
    return bytes(pkt)


def raw_ns(target: bytes, *, src: bytes, dst: bytes, options: bytes = b"", hlim: int = 255,
           code: int = 0, icmp_type: int = 135, csum: int | None = None,
           plen: int | None = None, nh: int = 58, eth_src: str = ME_MAC) -> bytes:
    """An NS built by hand (struct; cheap inside hypothesis). The checksum is right unless
    csum is given."""
    body = struct.pack("!BBHI16s", icmp_type, code, 0, 0, target) + options
    if csum is None:
        data = src + dst + struct.pack("!IxxxB", len(body), 58) + body
        data += b"\0" * (len(data) % 2)
        s = sum(struct.unpack(f"!{len(data) // 2}H", data))
        while s >> 16:
            s = (s & 0xFFFF) + (s >> 16)
        csum = ~s & 0xFFFF
    body = body[:2] + struct.pack("!H", csum) + body[4:]
    ip6 = struct.pack("!IHBB16s16s", 6 << 28, len(body) if plen is None else plen, nh, hlim,
                      src, dst)
    return mac_bytes("33:33:ff:00:02:02") + mac_bytes(eth_src) + b"\x86\xdd" + ip6 + body


def p6(ip: str) -> bytes:
    return ipaddress.IPv6Address(ip).packed


def check_na(reply: bytes | None, *, to_mac: str = ME_MAC, to_ip: str = ME_IP,
             target: str = PEER_IP, target_mac: str = PEER_MAC) -> None:
    assert reply is not None and len(reply) == 86
    e = Ether(reply)
    assert (e.dst, e.src, e.type) == (to_mac, target_mac, 0x86DD)
    ip = e[IPv6]
    assert (ip.src, ip.dst, ip.hlim, ip.plen, ip.nh, ip.tc, ip.fl) == (
        target, to_ip, 255, 32, 58, 0, 0)
    na = e[ICMPv6ND_NA]
    assert (na.type, na.code, na.R, na.S, na.O, na.tgt) == (136, 0, 0, 1, 1, target)
    assert e[ICMPv6NDOptDstLLAddr].lladdr == target_mac
    assert e[ICMPv6NDOptDstLLAddr].len == 1
    sent = na.cksum                                  # scapy recomputes it when deleted
    del na.cksum
    assert Ether(bytes(e))[ICMPv6ND_NA].cksum == sent


# ---- answered --------------------------------------------------------------------------------


def test_reply_to_scapy_ns(impl: Impl) -> None:
    verdict, reply = impl.nd_reduce(scapy_ns(), NEIGH6)
    assert verdict == ND_ANSWERED
    check_na(reply)


def test_reply_to_link_local_ns(impl: Impl) -> None:
    """What a pod's kernel sends first: from its link-local address, for a link-local
    target (the reply goes to the link-local source)."""
    verdict, reply = impl.nd_reduce(scapy_ns(LL_PEER, src="fe80::1:2"), NEIGH6)
    assert verdict == ND_ANSWERED
    check_na(reply, to_ip="fe80::1:2", target=LL_PEER)


def test_reply_without_slla_goes_to_frame_source(impl: Impl) -> None:
    """A unicast NUD probe (no SLLA option): the reply goes to the Ethernet source."""
    ns = scapy_ns(dst=PEER_IP, slla=None)
    verdict, reply = impl.nd_reduce(ns, NEIGH6)
    assert verdict == ND_ANSWERED
    check_na(reply)


def test_reply_goes_to_slla_not_ethernet_source(impl: Impl) -> None:
    other = "02:00:00:00:09:09"
    verdict, reply = impl.nd_reduce(scapy_ns(eth_src=other), NEIGH6)
    assert verdict == ND_ANSWERED
    check_na(reply)                                   # to ME_MAC, the SLLA option


def test_reply_to_padded_ns(impl: Impl) -> None:
    """Bytes after the IPv6 payload (padding) are ignored; the reply is 86 bytes."""
    verdict, reply = impl.nd_reduce(scapy_ns(slla=None) + b"\xaa" * 20, NEIGH6)
    assert verdict == ND_ANSWERED
    check_na(reply)


def test_unknown_options_are_skipped(impl: Impl) -> None:
    """A nonce option (RFC 3971 type 14, 8 bytes) before the SLLA: skipped, reply to SLLA."""
    opts = bytes([14, 1]) + b"\x01" * 6 + bytes([1, 1]) + mac_bytes(ME_MAC)
    ns = raw_ns(p6(PEER_IP), src=p6(ME_IP), dst=p6(solicited_node(PEER_IP)), options=opts,
                eth_src="02:00:00:00:09:09")
    verdict, reply = impl.nd_reduce(ns, NEIGH6)
    assert verdict == ND_ANSWERED
    check_na(reply)


# ---- not answered: the normal path --------------------------------------------------------------


@pytest.mark.parametrize("frame", [
    pytest.param(bytes(Ether(src=ME_MAC, dst="33:33:ff:00:02:02")
                       / IPv6(src="::", dst=solicited_node(PEER_IP), hlim=255)
                       / ICMPv6ND_NS(tgt=PEER_IP)), id="dad-probe"),
    pytest.param(bytes(Ether(src=ME_MAC, dst=PEER_MAC) / IPv6(src=ME_IP, dst=PEER_IP, hlim=255)
                       / ICMPv6ND_NA(tgt=ME_IP)), id="neighbour-advertisement"),
    pytest.param(scapy_ns(eth_src=PEER_MAC, slla=PEER_MAC), id="asks-about-itself"),
    pytest.param(raw_ns(p6(PEER_IP), src=p6(ME_IP), dst=p6(PEER_IP), nh=0),
                 id="extension-header"),
    pytest.param(bytes(Ether(src=ME_MAC, dst="33:33:00:00:00:01")
                       / IPv6(src=ME_IP, dst="ff02::1")), id="not-icmpv6"),
])
def test_not_answered(impl: Impl, frame: bytes) -> None:
    assert impl.nd_reduce(frame, NEIGH6) == (ND_NOT_NS, None)


def test_miss(impl: Impl) -> None:
    assert impl.nd_reduce(scapy_ns("fd00:244::9:9"), NEIGH6) == (ND_MISS, None)


# ---- dropped: every reason ------------------------------------------------------------------------

GOOD = dict(target=p6(PEER_IP), src=p6(ME_IP), dst=p6(solicited_node(PEER_IP)))


@pytest.mark.parametrize("frame,verdict", [
    (scapy_ns(hlim=254), ND_BAD_HOP_LIMIT),
    (scapy_ns(hlim=1), ND_BAD_HOP_LIMIT),
    (raw_ns(**GOOD, csum=0x1234), ND_BAD_CHECKSUM),
    (raw_ns(**GOOD, csum=0), ND_BAD_CHECKSUM),
    (raw_ns(**GOOD, plen=23), ND_TRUNCATED),             # shorter than the NS message
    (raw_ns(**GOOD, plen=40), ND_TRUNCATED),             # payload length past the frame
    (raw_ns(**GOOD)[:77], ND_TRUNCATED),                 # frame cut inside the target
    (raw_ns(**GOOD, options=bytes([1, 0]) + bytes(6)), ND_BAD_OPTION),        # length 0
    (raw_ns(**GOOD, options=bytes([1, 2]) + bytes(6)), ND_BAD_OPTION),        # past the end
    (raw_ns(**GOOD, options=bytes([1, 2]) + bytes(14)), ND_BAD_OPTION),       # SLLA 16 bytes
    (raw_ns(**GOOD, options=bytes([1])), ND_BAD_OPTION),                      # half a header
    (scapy_ns(code=1), ND_INVALID),
    (raw_ns(p6("ff02::1"), src=p6(ME_IP), dst=p6("ff02::1")), ND_INVALID),    # multicast tgt
    (raw_ns(p6(PEER_IP), src=bytes(16), dst=p6(solicited_node(PEER_IP)),
            options=bytes([1, 1]) + mac_bytes(ME_MAC)), ND_INVALID),          # DAD with SLLA
    (raw_ns(p6(PEER_IP), src=bytes(16), dst=p6(PEER_IP)), ND_INVALID),        # DAD unicast
], ids=["hlim254", "hlim1", "csum", "csum0", "plen23", "plen-past-end", "cut-target",
        "opt-len0", "opt-past-end", "slla-16", "opt-half", "code1", "mcast-target",
        "dad-slla", "dad-unicast"])
def test_drop(impl: Impl, frame: bytes, verdict: int) -> None:
    assert impl.nd_reduce(frame, NEIGH6) == (verdict, None)


def test_switch_counts_every_reason(impl: Impl) -> None:
    sw = impl.Switch()
    sw.add_network(42)
    sw.neigh_add(42, PEER_IP, PEER_MAC)
    frames = [scapy_ns(), scapy_ns(hlim=64), raw_ns(**GOOD, csum=1), raw_ns(**GOOD)[:70],
              raw_ns(**GOOD, options=bytes([1, 0, 0, 0, 0, 0, 0, 0])), scapy_ns(code=3),
              scapy_ns("fd00:244::9:9")]
    out, decs = sw.process_tap(42, frames)
    assert [d["reason"] or d["verdict"] for d in decs] == [
        "nd_reply", "nd_bad_hop_limit", "nd_bad_checksum", "nd_truncated", "nd_bad_option",
        "nd_invalid", "nd_miss"]
    assert [o[0] for o in out] == ["tap"]                # the NA only, nothing to the underlay
    c = sw.counters(42)
    assert {k: v for k, v in c.items() if v and k.startswith(("nd_", "drop_"))} == {
        "nd_replied": 1, "drop_nd_bad_hop_limit": 1, "drop_nd_bad_checksum": 1,
        "drop_nd_truncated": 1, "drop_nd_bad_option": 1, "drop_nd_invalid": 1,
        "drop_nd_miss": 1}
    assert c["udp_tx_packets"] == 0


def test_known_target_never_crosses_the_underlay_even_with_flood(impl: Impl) -> None:
    sw = impl.Switch(flood=True)
    sw.add_network(42)
    sw.fdb_add(42, PEER_MAC, "192.168.100.2")
    sw.neigh_add(42, PEER_IP, PEER_MAC)
    out, decs = sw.process_tap(42, [scapy_ns(), scapy_ns("fd00:244::9:9"),
                                    bytes(Ether(src=ME_MAC, dst="33:33:ff:00:02:02")
                                          / IPv6(src="::", dst=solicited_node(PEER_IP))
                                          / ICMPv6ND_NS(tgt=PEER_IP))])
    # known: answered locally; unknown target and DAD: the BUM policy (flood is on)
    assert [d["verdict"] for d in decs] == ["nd_reply", "flood", "flood"]
    assert [o[0] for o in out] == ["udp", "udp", "tap"]
    check_na(out[2][2])


def test_neigh_table_holds_both_families(impl: Impl) -> None:
    sw = impl.Switch()
    sw.add_network(42)
    sw.neigh_add(42, "fd00::2", PEER_MAC)
    sw.neigh_add(42, "10.0.0.2", PEER_MAC)
    sw.neigh_add(42, "fd00::1", ME_MAC)
    sw.neigh_add(42, "FD00:0::1", PEER_MAC)                     # same address: replaces
    assert sw.neigh(42) == [("10.0.0.2", PEER_MAC), ("fd00::1", PEER_MAC),
                            ("fd00::2", PEER_MAC)]
    assert sw.table_sizes(42)["neigh"] == 3
    assert sw.neigh_del(42, "fd00::1") is True and sw.neigh_del(42, "fd00::1") is False
    for bad, msg in (("ff02::1", "ff02::1 is not a unicast IPv6 address, cannot be a neighbour"),
                     ("::", ":: is not a unicast IPv6 address, cannot be a neighbour"),
                     ("fd00::g", "not an IPv6 address: 'fd00::g'")):
        with pytest.raises(ValueError) as e:
            sw.neigh_add(42, bad, PEER_MAC)
        assert str(e.value) == msg


def test_removed_network_forgets_ipv6_neighbours(impl: Impl) -> None:
    sw = impl.Switch()
    sw.add_network(42)
    sw.neigh_add(42, PEER_IP, PEER_MAC)
    sw.remove_network(42)
    sw.add_network(42)
    assert sw.neigh(42) == []
    assert sw.process_tap(42, [scapy_ns()])[1][0]["reason"] == "nd_miss"


# ---- differential fuzz of the NS parser ----------------------------------------------------------

ADDRS = [p6(PEER_IP), p6(LL_PEER), p6(ME_IP), bytes(16), p6("ff02::1"),
         p6(solicited_node(PEER_IP)), p6("fd00:244::9:9")]
addr6 = st.one_of(st.sampled_from(ADDRS), st.binary(min_size=16, max_size=16))
option = st.one_of(
    st.builds(lambda t, m: bytes([t, 1]) + m, st.sampled_from([1, 2, 14]),
              st.binary(min_size=6, max_size=6)),
    st.builds(lambda t, n, b: bytes([t, n]) + b, st.integers(0, 255), st.integers(0, 3),
              st.binary(max_size=30)))


@st.composite
def ns_frames(draw: st.DrawFn) -> bytes:
    f = raw_ns(draw(addr6), src=draw(addr6), dst=draw(addr6),
               options=b"".join(draw(st.lists(option, max_size=3))),
               hlim=draw(st.sampled_from([255, 255, 255, 254, 0])),
               code=draw(st.sampled_from([0, 0, 0, 1])),
               icmp_type=draw(st.sampled_from([135, 135, 135, 136])),
               csum=draw(st.one_of(st.none(), st.none(), st.integers(0, 0xFFFF))),
               eth_src=draw(st.sampled_from([ME_MAC, PEER_MAC])),
               nh=draw(st.sampled_from([58, 58, 58, 0])))
    cut = draw(st.one_of(st.none(), st.integers(0, len(f))))
    f = f if cut is None else f[:cut]
    if draw(st.booleans()):                           # lying payload length
        plen = draw(st.integers(0, 120))
        f = f[:18] + struct.pack("!H", plen) + f[20:] if len(f) >= 20 else f
    return f + draw(st.binary(max_size=8))


@settings(max_examples=examples(400), deadline=None)
@given(ns_frames())
def test_fuzz_ns_parser_ref_vs_cython(frame: bytes) -> None:
    assert CYTHON.nd_reduce(frame, NEIGH6) == REF.nd_reduce(frame, NEIGH6)


def test_fuzz_finds_every_verdict() -> None:
    """The fuzz strategy above reaches every verdict (else it would prove little)."""
    seen: set[int] = set()

    @settings(max_examples=600, deadline=None, database=None)
    @given(ns_frames())
    def collect(frame: bytes) -> None:
        seen.add(REF.nd_reduce(frame, NEIGH6)[0])

    collect()
    assert seen >= {ND_ANSWERED, ND_MISS, ND_NOT_NS, ND_TRUNCATED, ND_BAD_CHECKSUM, ND_BAD_HOP_LIMIT, ND_BAD_OPTION,
                    ND_INVALID}
