"""GRO (inbound TCP coalescing) and partial-checksum completion, against both implementations.

Segments are built with scapy; every coalesced frame is parsed back with scapy (lengths,
payload, IP header checksum) and its virtio-net header is checked with vnet's own validator;
the TCP checksum the kernel will complete (NEEDS_CSUM) is completed here and checked too.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Packet, Raw

from fastpath import csum_ref, gro_ref, vnet_ref
from tests.fastpath_impls import Impl, impl

__all__ = ["impl"]

A_MAC, B_MAC = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
V4 = ("10.244.1.2", "10.244.2.2")
V6 = ("fd00:1::2", "fd00:2::2")
TS = [("NOP", None), ("NOP", None), ("Timestamp", (1000, 2000))]
MSS = 1000


def payload(i: int, n: int = MSS) -> bytes:
    return bytes((i * 7 + j) & 0xFF for j in range(n))


def seg(i: int, *, v6: bool = False, n: int = MSS, seq0: int = 5000, flags: str = "A",
        opts: Any = TS, ip: dict[str, Any] | None = None, tcp: dict[str, Any] | None = None,
        src_mac: str = A_MAC, data: bytes | None = None) -> Packet:
    """Segment i of a flow whose segments all carry n payload bytes (scapy packet)."""
    body = payload(i, n) if data is None else data
    t = TCP(**{"sport": 40000, "dport": 5201, "seq": seq0 + i * n, "ack": 77, "flags": flags,
               "window": 500, "options": opts, **(tcp or {})})
    if v6:
        l3: Packet = IPv6(**{"src": V6[0], "dst": V6[1], "hlim": 64, **(ip or {})})
    else:
        l3 = IP(**{"src": V4[0], "dst": V4[1], "ttl": 64, "id": 100 + i, "flags": "DF",
                   **(ip or {})})
    return Ether(dst=B_MAC, src=src_mac) / l3 / t / Raw(body)


def flow(k: int, **kw: Any) -> list[bytes]:
    return [bytes(seg(i, **kw)) for i in range(k)]


def l4_offset(frame: bytes) -> int:
    if frame[12:14] == b"\x86\xdd":
        return 54
    return 14 + (frame[14] & 0x0F) * 4


def pseudo(frame: bytes, l4len: int, proto: int = 6) -> int:
    if frame[12:14] == b"\x86\xdd":
        return csum_ref.py_pseudo6(frame[22:38], frame[38:54], proto, l4len)
    return csum_ref.py_pseudo4(int.from_bytes(frame[26:30], "big"),
                               int.from_bytes(frame[30:34], "big"), proto, l4len)


def make_partial(frame: bytes, proto: int = 6) -> bytes:
    """What a kernel sender with TX checksum offload leaves: field = folded pseudo sum."""
    f = bytearray(frame)
    t = l4_offset(f)
    ip_len = (f[18] << 8 | f[19]) if f[12] == 0x86 else (f[16] << 8 | f[17]) - (t - 14)
    off = t + (16 if proto == 6 else 6)
    f[off:off + 2] = csum_ref.py_csum_fold(pseudo(frame, ip_len, proto)).to_bytes(2, "big")
    return bytes(f)


def corrupt_l4_csum(frame: bytes) -> bytes:
    f = bytearray(frame)
    off = l4_offset(f) + 16
    f[off] ^= 0x5A
    return bytes(f)


def complete_like_kernel(hdr: bytes, frame: bytes) -> bytes:
    """Do what the kernel does for NEEDS_CSUM: sum from csum_start, store at +csum_offset."""
    h = vnet_ref.py_parse(hdr)
    f = bytearray(frame)
    off = h.csum_start + h.csum_offset
    seed = int.from_bytes(f[off:off + 2], "big")
    f[off:off + 2] = b"\0\0"
    c = csum_ref.py_csum_finish(csum_ref.py_csum_add(bytes(f[h.csum_start:]), seed))
    f[off:off + 2] = c.to_bytes(2, "big")
    return bytes(f)


def check_gso(impl: Impl, hdr: bytes, frame: bytes, segs: list[bytes], v6: bool = False) -> None:
    """hdr/frame is the coalesced form of segs: header fields, lengths, payload, checksums."""
    h = vnet_ref.py_parse(hdr)
    assert impl.vnet.py_check(h, len(frame)) == vnet_ref.VN_OK
    t = l4_offset(segs[0])
    thl = (segs[0][t + 12] >> 4) * 4
    assert h == (vnet_ref.VNET_F_NEEDS_CSUM,
                 vnet_ref.VNET_GSO_TCPV6 if v6 else vnet_ref.VNET_GSO_TCPV4,
                 t + thl, len(Ether(segs[0])[TCP].payload), t, 16)
    want_payload = b"".join(bytes(Ether(s)[TCP].payload) for s in segs)
    assert len(frame) == t + thl + len(want_payload)
    # the pseudo-header sum over the coalesced length, as the kernel expects
    field = int.from_bytes(frame[t + 16:t + 18], "big")
    assert field == csum_ref.py_csum_fold(pseudo(frame, len(frame) - t))
    done = Ether(complete_like_kernel(hdr, frame))
    l3 = done[IPv6] if v6 else done[IP]
    if v6:
        assert l3.plen == len(frame) - 54
    else:
        assert l3.len == len(frame) - 14
        want_ip = l3.chksum
        del l3.chksum
        assert IP(bytes(l3)).chksum == want_ip
    tcp = done[TCP]
    assert bytes(tcp.payload) == want_payload
    assert tcp.seq == Ether(segs[0])[TCP].seq and tcp.ack == Ether(segs[0])[TCP].ack
    want_tcp = tcp.chksum
    del tcp.chksum
    rebuilt = Ether(bytes(done))
    assert rebuilt[TCP].chksum == want_tcp, "completed TCP checksum wrong"
    last_flags = Ether(segs[-1])[TCP].flags
    assert done[TCP].flags == ("PA" if "P" in last_flags else "A")


def single(hdr: bytes, frame: bytes, original: bytes) -> None:
    assert hdr == bytes(10)
    assert frame == original


# ---- runs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("k", [2, 5, 40])
def test_run_coalesces(impl: Impl, v6: bool, k: int) -> None:
    segs = flow(k, v6=v6)
    out, stats = impl.gro.coalesce_stats(segs)
    assert len(out) == 1
    check_gso(impl, *out[0], segs, v6)
    assert stats == {"gro_frames": 1, "gro_segs": k, "csum_completed": 0, "csum_bad": 0}


def test_single_segment_is_untouched(impl: Impl) -> None:
    segs = flow(1)
    (out,) = impl.gro.coalesce(segs)
    single(*out, segs[0])


def test_empty_batch(impl: Impl) -> None:
    assert impl.gro.coalesce_stats([]) == ([], {k: 0 for k in gro_ref.STAT_NAMES})


def test_short_last_segment_ends_run(impl: Impl) -> None:
    segs = flow(3) + [bytes(seg(3, data=b"z" * 300))]
    segs.append(bytes(seg(0, seq0=5000 + 3 * MSS + 300)))     # continues the byte stream
    out = impl.gro.coalesce(segs)
    assert len(out) == 2
    check_gso(impl, *out[0], segs[:4])
    single(*out[1], segs[4])


def test_psh_ends_run_and_is_kept(impl: Impl) -> None:
    segs = flow(3)
    segs[2] = bytes(seg(2, flags="PA"))
    segs.append(bytes(seg(3)))
    segs.append(bytes(seg(4)))
    out = impl.gro.coalesce(segs)
    assert len(out) == 2
    check_gso(impl, *out[0], segs[:3])
    check_gso(impl, *out[1], segs[3:])


def test_psh_on_first_segment_is_single(impl: Impl) -> None:
    segs = [bytes(seg(0, flags="PA")), bytes(seg(1))]
    out = impl.gro.coalesce(segs)
    single(*out[0], segs[0])
    single(*out[1], segs[1])


def test_no_tcp_options(impl: Impl) -> None:
    segs = flow(4, opts=[])
    (out,) = impl.gro.coalesce(segs)
    check_gso(impl, *out, segs)


def test_fixed_ip_id_with_df(impl: Impl) -> None:
    segs = [bytes(seg(i, ip={"id": 7})) for i in range(4)]
    (out,) = impl.gro.coalesce(segs)
    check_gso(impl, *out, segs)


def test_ip_id_wraps(impl: Impl) -> None:
    segs = [bytes(seg(i, ip={"id": (65534 + i) & 0xFFFF})) for i in range(4)]
    (out,) = impl.gro.coalesce(segs)
    check_gso(impl, *out, segs)


def test_seq_wraps(impl: Impl) -> None:
    segs = [bytes(seg(i, seq0=(2**32 - 1500))) for i in range(1)]
    segs += [bytes(seg(i, tcp={"seq": (2**32 - 1500 + i * MSS) % 2**32})) for i in range(1, 4)]
    (out,) = impl.gro.coalesce(segs)
    check_gso(impl, *out, segs)


def test_ethernet_padding_is_not_copied(impl: Impl) -> None:
    """Tiny segments arrive padded to 60 bytes; the padding must not land in the stream."""
    segs = [bytes(seg(i, n=2, opts=[])) + b"\0" * 4 for i in range(4)]
    assert all(len(s) == 60 for s in segs)
    (out,) = impl.gro.coalesce(segs)
    check_gso(impl, *out, [s[:56] for s in segs])


def test_partial_checksums_coalesce_and_count(impl: Impl) -> None:
    segs = [make_partial(s) for s in flow(4)]
    out, stats = impl.gro.coalesce_stats(segs)
    assert len(out) == 1
    check_gso(impl, *out[0], flow(4))
    assert stats["csum_completed"] == 4 and stats["csum_bad"] == 0


def test_non_candidate_of_the_flow_closes_run(impl: Impl) -> None:
    """A pure ACK of the same flow between data keeps its place: run, ACK, then new data."""
    segs = flow(2)
    ack = bytes(seg(2, data=b""))
    segs += [ack, bytes(seg(2)), bytes(seg(3))]
    out = impl.gro.coalesce(segs)
    assert len(out) == 3
    check_gso(impl, *out[0], segs[:2])
    single(*out[1], ack)
    check_gso(impl, *out[2], segs[3:])


def test_fragment_between_same_hosts_closes_run(impl: Impl) -> None:
    segs = flow(2)
    frag = bytes(Ether(dst=B_MAC, src=A_MAC) / IP(src=V4[0], dst=V4[1], proto=6, flags="MF")
                 / Raw(b"q" * 64))
    segs += [frag, bytes(seg(2)), bytes(seg(3))]
    out = impl.gro.coalesce(segs)
    assert [vnet_ref.py_parse(h).gso_type for h, _ in out] == [1, 0, 1]
    check_gso(impl, *out[2], segs[3:])


def test_other_traffic_does_not_close_run(impl: Impl) -> None:
    """UDP, ARP and another TCP flow between the runs' segments leave the run open."""
    segs = flow(4)
    udp = bytes(Ether(dst=B_MAC, src=A_MAC) / IP(src=V4[0], dst=V4[1]) / UDP(sport=1, dport=2)
                / Raw(b"u" * 50))
    other = bytes(seg(0, tcp={"sport": 40001}, data=b""))
    batch = [segs[0], udp, segs[1], other, segs[2], segs[3]]
    out = impl.gro.coalesce(batch)
    assert len(out) == 3
    check_gso(impl, *out[0], segs)
    single(*out[1], udp)
    single(*out[2], other)


def test_interleaved_flows_keep_their_order(impl: Impl) -> None:
    a = flow(5)
    b = [bytes(seg(i, tcp={"sport": 40001}, seq0=9000)) for i in range(5)]
    c = flow(5, v6=True)
    batch = [x for trio in zip(a, b, c) for x in trio]
    out, stats = impl.gro.coalesce_stats(batch)
    assert len(out) == 3
    check_gso(impl, *out[0], a)
    check_gso(impl, *out[1], b)
    check_gso(impl, *out[2], c, v6=True)
    assert stats["gro_frames"] == 3 and stats["gro_segs"] == 15


def test_many_flows_beyond_open_limit(impl: Impl) -> None:
    """More flows than GRO_MAX_OPEN: the oldest runs are closed, nothing is lost or reordered."""
    n = gro_ref.GRO_MAX_OPEN + 8
    flows = [[bytes(seg(i, tcp={"sport": 30000 + f})) for i in range(3)] for f in range(n)]
    batch = [flows[f][i] for i in range(3) for f in range(n)]
    out = impl.gro.coalesce(batch)
    got: dict[int, bytes] = {}
    for hdr, frame in out:
        sport = Ether(frame)[TCP].sport
        got[sport] = got.get(sport, b"") + bytes(Ether(complete_like_kernel(hdr, frame)
                                                       if hdr != bytes(10) else frame)
                                                 [TCP].payload)
    assert got == {30000 + f: b"".join(payload(i) for i in range(3)) for f in range(n)}


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_64k_limit(impl: Impl, v6: bool) -> None:
    n = 1448
    segs = [bytes(seg(i, v6=v6, n=n)) for i in range(100)]
    out, stats = impl.gro.coalesce_stats(segs)
    assert all(len(f) <= 65535 for _, f in out)
    hdr_bytes = l4_offset(segs[0]) + 32
    per_run = (65535 - hdr_bytes) // n
    assert [len(f) for _, f in out][0] == hdr_bytes + per_run * n   # filled up to the limit
    assert stats["gro_segs"] == 100
    pos = 0
    for hdr, frame in out:
        k = (len(frame) - hdr_bytes) // n
        check_gso(impl, hdr, frame, segs[pos:pos + k], v6)
        pos += k
    assert pos == 100


def test_max_frame_parameter(impl: Impl) -> None:
    segs = flow(7)
    hdr_bytes = 14 + 20 + 32
    out = impl.gro.coalesce(segs, max_frame=hdr_bytes + 3 * MSS)
    assert [len(f) for _, f in out] == [hdr_bytes + 3 * MSS] * 2 + [hdr_bytes + MSS]
    check_gso(impl, *out[0], segs[:3])
    check_gso(impl, *out[1], segs[3:6])
    single(*out[2], segs[6])


@pytest.mark.parametrize("bad", [0, -1, 2**32])
def test_max_frame_must_be_positive(impl: Impl, bad: int) -> None:
    with pytest.raises(ValueError, match="max_frame"):
        impl.gro.coalesce(flow(2), max_frame=bad)


# ---- every disqualifying variation, one at a time ------------------------------------------------
# Segment 2 of 4 gets the variation. Segments 0 and 1 always coalesce; segment 2 never joins
# them; every byte of payload still reaches the TAP, in order.

def _v4opts(i: int) -> bytes:
    return bytes(seg(i, ip={"options": [b"\x01\x01\x01\x00"]}))


def _hbh(i: int) -> bytes:
    p = seg(i, v6=True)
    return bytes(Ether(dst=B_MAC, src=A_MAC) / IPv6(src=V6[0], dst=V6[1])
                 / IPv6ExtHdrHopByHop() / p[TCP])


def _bad_ip_csum(i: int) -> bytes:
    f = bytearray(seg(i).build())
    f[24] ^= 0xFF
    return bytes(f)


def _vlan(i: int) -> bytes:
    p = seg(i)
    return bytes(Ether(dst=B_MAC, src=A_MAC) / Dot1Q(vlan=5) / p[IP])



VARIANTS: dict[str, tuple[bool, Callable[[int], bytes]]] = {
    # name: (v6, builder of segment i with the variation)
    "syn": (False, lambda i: bytes(seg(i, flags="SA"))),
    "fin": (False, lambda i: bytes(seg(i, flags="FA"))),
    "rst": (False, lambda i: bytes(seg(i, flags="RA"))),
    "urg": (False, lambda i: bytes(seg(i, flags="UA"))),
    "ece": (False, lambda i: bytes(seg(i, flags="EA"))),
    "cwr": (False, lambda i: bytes(seg(i, flags="CA"))),
    "no_ack": (False, lambda i: bytes(seg(i, flags=""))),
    "tcp_reserved_bits": (False, lambda i: bytes(seg(i, tcp={"reserved": 1}))),
    "ip_options": (False, _v4opts),
    "fragment_mf": (False, lambda i: bytes(seg(i, ip={"flags": "MF"}))),
    "fragment_offset": (False, lambda i: bytes(seg(i, ip={"frag": 100, "flags": 0}))),
    "ipv6_ext_header": (True, _hbh),
    "vlan_tag": (False, _vlan),
    "bad_tcp_checksum": (False, lambda i: corrupt_l4_csum(bytes(seg(i)))),
    "bad_ip_checksum": (False, _bad_ip_csum),
    "ttl": (False, lambda i: bytes(seg(i, ip={"ttl": 63}))),
    "tos": (False, lambda i: bytes(seg(i, ip={"tos": 4}))),
    "ecn_ce": (False, lambda i: bytes(seg(i, ip={"tos": 3}))),
    "df": (False, lambda i: bytes(seg(i, ip={"flags": 0}))),
    "ip_id_jump": (False, lambda i: bytes(seg(i, ip={"id": 900}))),
    "ipv6_hop_limit": (True, lambda i: bytes(seg(i, v6=True, ip={"hlim": 63}))),
    "ipv6_traffic_class": (True, lambda i: bytes(seg(i, v6=True, ip={"tc": 4}))),
    "ipv6_flow_label": (True, lambda i: bytes(seg(i, v6=True, ip={"fl": 5}))),
    "timestamp_differs": (False, lambda i: bytes(
        seg(i, opts=[("NOP", None), ("NOP", None), ("Timestamp", (1001, 2000))]))),
    "options_differ_in_length": (False, lambda i: bytes(seg(i, opts=[]))),
    "ack_differs": (False, lambda i: bytes(seg(i, tcp={"ack": 78}))),
    "seq_gap": (False, lambda i: bytes(seg(i, tcp={"seq": 5000 + i * MSS + 1}))),
    "seq_retransmit": (False, lambda i: bytes(seg(i, tcp={"seq": 5000 + (i - 1) * MSS}))),
    "larger_than_mss": (False, lambda i: bytes(seg(i, data=payload(i, MSS + 1)))),
    "other_src_mac": (False, lambda i: bytes(seg(i, src_mac="02:00:00:00:00:0c"))),
    "other_port": (False, lambda i: bytes(seg(i, tcp={"dport": 5202}))),
    "other_address": (False, lambda i: bytes(seg(i, ip={"dst": "10.244.2.3"}))),
    "truncated_ip": (False, lambda i: bytes(seg(i))[:-10]),
    "udp": (False, lambda i: bytes(Ether(dst=B_MAC, src=A_MAC) / IP(src=V4[0], dst=V4[1], id=102)
                                   / UDP(sport=40000, dport=5201) / Raw(payload(i)))),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_disqualifying_variation(impl: Impl, name: str) -> None:
    v6, build = VARIANTS[name]
    segs = flow(4, v6=v6)
    odd = build(2)
    batch = [segs[0], segs[1], odd, segs[3]]
    out, stats = impl.gro.coalesce_stats(batch)
    check_gso(impl, *out[0], segs[:2], v6)
    assert stats["gro_segs"] == 2, "segment 2 or 3 joined a run"
    # everything else goes out exactly as it came (checksums here are all complete)
    assert out[1:] == [(bytes(10), odd), (bytes(10), segs[3])]
    if name == "bad_tcp_checksum":
        assert stats["csum_bad"] == 1


def test_two_variants_coalesce_among_themselves(impl: Impl) -> None:
    """A TTL change starts a new run rather than only singles."""
    segs = flow(2) + [bytes(seg(i, ip={"ttl": 63})) for i in range(2, 5)]
    out = impl.gro.coalesce(segs)
    assert len(out) == 2
    check_gso(impl, *out[0], segs[:2])
    check_gso(impl, *out[1], segs[2:])


# ---- checksum completion ------------------------------------------------------------------------


def _udp(v6: bool, data: bytes = b"datagram" * 20) -> bytes:
    l3: Packet = IPv6(src=V6[0], dst=V6[1]) if v6 else IP(src=V4[0], dst=V4[1])
    return bytes(Ether(dst=B_MAC, src=A_MAC) / l3 / UDP(sport=53, dport=4000) / Raw(data))


def _tcp(v6: bool) -> bytes:
    return bytes(seg(0, v6=v6, flags="PA", n=333))


FRAMES = {"tcp4": (_tcp, False, 6), "tcp6": (_tcp, True, 6), "udp4": (_udp, False, 17),
          "udp6": (_udp, True, 17)}


@pytest.mark.parametrize("verify", [False, True])
@pytest.mark.parametrize("kind", list(FRAMES))
def test_csum_partial_is_completed(impl: Impl, kind: str, verify: bool) -> None:
    build, v6, proto = FRAMES[kind]
    good = build(v6)
    partial = make_partial(good, proto)
    assert partial != good
    assert impl.gro.py_csum_rx_fix(partial, verify) == (gro_ref.CSUM_COMPLETED, good)


@pytest.mark.parametrize("kind", list(FRAMES))
def test_csum_complete_is_untouched(impl: Impl, kind: str) -> None:
    build, v6, _ = FRAMES[kind]
    good = build(v6)
    assert impl.gro.py_csum_rx_fix(good) == (gro_ref.CSUM_UNCHECKED, good)
    assert impl.gro.py_csum_rx_fix(good, True) == (gro_ref.CSUM_VALID, good)


@pytest.mark.parametrize("kind", list(FRAMES))
def test_csum_corrupt_stays_corrupt(impl: Impl, kind: str) -> None:
    build, v6, proto = FRAMES[kind]
    f = bytearray(build(v6))
    f[-1] ^= 0x01                       # data corrupted after the checksum was computed
    bad = bytes(f)
    assert impl.gro.py_csum_rx_fix(bad) == (gro_ref.CSUM_UNCHECKED, bad)
    assert impl.gro.py_csum_rx_fix(bad, True) == (gro_ref.CSUM_BAD, bad)


@pytest.mark.parametrize("kind", list(FRAMES))
def test_csum_complete_equal_to_pseudo_sum_is_verified_not_touched(impl: Impl,
                                                                    kind: str) -> None:
    """A complete checksum that happens to equal the pseudo-header sum: verified, VALID."""
    build, v6, proto = FRAMES[kind]
    base = bytearray(build(v6))
    t = l4_offset(base)
    off = t + (16 if proto == 6 else 6)
    ps = csum_ref.py_csum_fold(pseudo(bytes(base), len(base) - t, proto))
    # choose two payload bytes (at an even offset from the L4 header) so that the correct
    # checksum equals ps
    pay = t + (32 if proto == 6 else 8)
    base[off:off + 2] = ps.to_bytes(2, "big")
    base[pay:pay + 2] = b"\0\0"
    s = csum_ref.py_csum_fold(csum_ref.py_csum_add(bytes(base[t:]),
                                                   pseudo(bytes(base), len(base) - t, proto)))
    base[pay:pay + 2] = (~s & 0xFFFF).to_bytes(2, "big")   # the whole sum folds to 0xffff
    frame = bytes(base)
    assert impl.gro.py_csum_rx_fix(frame) == (gro_ref.CSUM_VALID, frame)
    # scapy agrees that this checksum is correct
    p = Ether(frame)
    layer = p[TCP] if proto == 6 else p[UDP]
    want = layer.chksum
    del layer.chksum
    assert (Ether(bytes(p))[TCP] if proto == 6 else Ether(bytes(p))[UDP]).chksum == want


@pytest.mark.parametrize("v6", [False, True])
def test_csum_udp_zero(impl: Impl, v6: bool) -> None:
    """UDP checksum 0: none over IPv4; invalid over IPv6 (left for the receiver to drop)."""
    f = bytearray(_udp(v6))
    t = l4_offset(f)
    f[t + 6:t + 8] = b"\0\0"
    assert impl.gro.py_csum_rx_fix(bytes(f), True) == (gro_ref.CSUM_NONE, bytes(f))


def test_csum_udp_completion_never_writes_zero(impl: Impl) -> None:
    """A UDP checksum that computes to 0 is sent as 0xffff (RFC 768)."""
    base = bytearray(_udp(False, b"ab" * 10))
    t = l4_offset(base)
    ps = pseudo(bytes(base), len(base) - t, 17)
    base[t + 6:t + 8] = b"\0\0"
    base[-2:] = b"\0\0"
    s = csum_ref.py_csum_fold(csum_ref.py_csum_add(bytes(base[t:]), ps))
    base[-2:] = (~s & 0xFFFF).to_bytes(2, "big")       # checksum of this datagram is 0
    base[t + 6:t + 8] = csum_ref.py_csum_fold(ps).to_bytes(2, "big")
    status, fixed = impl.gro.py_csum_rx_fix(bytes(base))
    assert status == gro_ref.CSUM_COMPLETED
    assert fixed[t + 6:t + 8] == b"\xff\xff"
    assert Ether(fixed)[UDP].chksum == 0xFFFF


@pytest.mark.parametrize("frame", [
    b"", b"\x01" * 13, bytes(Ether() / Raw(b"x" * 50)),
    bytes(Ether(dst=B_MAC, src=A_MAC) / IP(src=V4[0], dst=V4[1], flags="MF") / UDP() / Raw(b"x")),
    bytes(Ether(dst=B_MAC, src=A_MAC) / IP(src=V4[0], dst=V4[1], proto=1) / Raw(b"icmp")),
], ids=["empty", "short", "not_ip", "fragment", "icmp"])
def test_csum_not_applicable(impl: Impl, frame: bytes) -> None:
    assert impl.gro.py_csum_rx_fix(frame, True) == (gro_ref.CSUM_NONE, frame)


@pytest.mark.parametrize("cut", [1, 10, 30, 60])
def test_csum_truncated_frames(impl: Impl, cut: int) -> None:
    """Truncated copies of a partial TCP frame: never completed beyond their bytes."""
    f = make_partial(_tcp(False))[:-cut]
    assert impl.gro.py_csum_rx_fix(f, True) == (gro_ref.CSUM_NONE, f)


def test_singles_in_a_batch_get_completed(impl: Impl) -> None:
    udp = make_partial(_udp(False), 17)
    syn = make_partial(bytes(seg(0, flags="S", data=b"")))
    out, stats = impl.gro.coalesce_stats([udp, syn])
    assert out == [(bytes(10), _udp(False)), (bytes(10), bytes(seg(0, flags="S", data=b"")))]
    assert stats["csum_completed"] == 2


def test_constants_agree() -> None:
    from fastpath import gro
    for k, v in gro.C_CONSTANTS.items():
        assert getattr(gro_ref, k) == v, k

