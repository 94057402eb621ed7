"""The switch with offloads on (virtio-net header on the TAP, UDP socket pool, UDP_GRO), on both
implementations: GSO frames split into scapy-valid segments on the flow's pool port, NEEDS_CSUM
completion, ARP replies with a header, every outbound drop reason counted, UDP_GRO buffers
split and validated per datagram then coalesced into one TAP write; and the two agree."""
from __future__ import annotations

import os
import random
from typing import Any

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from fastpath import counters, gso_ref, switch, switch_ref
from fastpath.vnet_ref import VNET_GSO_TCPV4, VnetHdr, py_build, py_parse
from tests.fastpath_impls import Impl, arp_request, impl, ip_frame, vxlan
from tests.test_fastpath_gso import MACS, check_tcp_segments, partial, tso4

__all__ = ["impl"]

LOCAL, VNI = "192.168.100.1", 42
PEER = "192.168.100.2"
PEER_MAC, POD_MAC = MACS["dst"], MACS["src"]
POOL = list(range(40000, 40016))
NOHDR = bytes(10)


def make(impl: Impl | Any, **kw: Any) -> Any:
    """An offload switch with one peer; impl: an Impl or a switch module (both have Switch)."""
    sw = impl.Switch(LOCAL, offload=True, **kw)
    sw.add_network(VNI)
    sw.set_udp_pool([-1] * len(POOL), POOL)
    sw.fdb_add(VNI, PEER_MAC, PEER)
    sw.neigh_add(VNI, "10.244.2.3", PEER_MAC)
    return sw


def nonzero(c: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in c.items() if v}


def test_gso_frame_becomes_valid_segments_on_one_pool_port(impl: Impl) -> None:
    sw = make(impl)
    hdr, f = tso4(os.urandom(20000))
    plain = bytes(Ether(**MACS) / IP(src="10.244.1.2", dst="10.244.2.3") /
                  TCP(sport=40000, dport=5201, flags="A"))
    out, decs = sw.process_tap(VNI, [py_build(hdr) + f, NOHDR + plain])
    assert [d["verdict"] for d in decs] == ["encap", "encap"]
    assert decs[0]["copies"] == 15 and decs[1]["copies"] == 1
    assert all(o[:3] == ("udp", PEER, 4789) for o in out)
    ports = {o[3] for o in out}
    assert len(ports) == 1 and ports <= set(POOL), "one flow, one outer source port"
    segs = []
    for o in out[:15]:
        assert o[4][:8] == vxlan(VNI) and len(o[4]) - 8 <= 1500 - 36
        segs.append(o[4][8:])
    check_tcp_segments(f, segs, 1398, False)
    assert out[15][4][8:] == plain
    c = sw.counters(VNI)
    assert c["gso_frames"] == 1 and c["gso_segments"] == 15
    assert c["udp_tx_packets"] == 16
    assert c["udp_tx_bytes"] == sum(36 + len(o[4]) - 8 for o in out)
    assert sw.vteps(VNI)[0]["tx_packets"] == 16


def test_flows_spread_over_the_pool(impl: Impl) -> None:
    sw = make(impl)
    frames = [NOHDR + ip_frame(PEER_MAC, POD_MAC, src_ip="10.244.1.2", dst_ip="10.244.2.3",
                               sport=1000 + i, proto=6) for i in range(64)]
    out, _ = sw.process_tap(VNI, frames)
    assert len({o[3] for o in out}) >= 8


def test_needs_csum_completed_and_counted(impl: Impl) -> None:
    sw = make(impl)
    good = bytes(Ether(**MACS) / IP(src="10.244.1.2", dst="10.244.2.3") /
                 TCP(sport=1, dport=2, flags="PA") / (b"z" * 100))
    f = partial(good, 34, 16, 6, False)
    out, decs = sw.process_tap(VNI, [py_build((1, 0, 0, 0, 34, 16)) + f])
    assert out[0][4][8:] == good
    assert sw.counters(VNI)["csum_completed"] == 1


def test_arp_reply_carries_a_virtio_header(impl: Impl) -> None:
    sw = make(impl)
    out, decs = sw.process_tap(VNI, [NOHDR + arp_request(POD_MAC, "10.244.1.2", "10.244.2.3")])
    assert decs[0]["verdict"] == "arp_reply"
    ((kind, vni, data),) = out
    assert kind == "tap" and data[:10] == NOHDR and Ether(data[10:]).op == 2


def _lie(hdr: tuple, **kw: int) -> tuple:
    return tuple(VnetHdr(*hdr)._replace(**kw))


def test_every_outbound_offload_drop_is_counted(impl: Impl) -> None:
    sw = make(impl)
    hdr, f = tso4(os.urandom(5000))
    icmp = bytearray(f)
    icmp[23] = 1
    cases = [
        ("vnet_bad_flags", _lie(hdr, flags=0x10), f),
        ("gso_ecn", _lie(hdr, gso_type=0x81), f),
        ("gso_bad_type", _lie(hdr, gso_type=3), f),
        ("gso_bad_size", _lie(hdr, gso_size=0), f),
        ("vnet_bad_hdr_len", _lie(hdr, hdr_len=9000), f),
        ("vnet_bad_csum", _lie(hdr, csum_start=6000), f),
        ("gso_no_csum", _lie(hdr, flags=0), f),
        ("gso_not_tcp_udp", hdr, bytes(icmp)),
        ("gso_ip_options", *tso4(os.urandom(5000), ipopts=b"\x01\x01\x01\x00")),
        ("gso_bad_headers", _lie(hdr, csum_start=38), f),
        ("gso_too_big", _lie(hdr, gso_size=1460), f),
        ("gso_too_many_segs", *tso4(os.urandom(60000), mss=100)),
        ("tx_too_big", (0, 0, 0, 0, 0, 0), f),
        ("tx_short", (0, 0, 0, 0, 0, 0), f[:10]),
    ]
    frames = [py_build(h) + fr for _, h, fr in cases] + [NOHDR[:5]]
    out, decs = sw.process_tap(VNI, frames)
    assert out == []
    assert [d["reason"] for d in decs] == [c[0] for c in cases] + ["tx_short"]
    c = nonzero(sw.counters(VNI))
    for reason, _, _ in cases:
        assert c.pop("drop_" + reason) == (2 if reason == "tx_short" else 1)
    assert set(c) == {"tap_rx_packets", "tap_rx_bytes"}


def test_truncated_read_of_a_huge_frame_is_too_big(impl: Impl) -> None:
    sw = make(impl)
    hdr, f = tso4(os.urandom(5000))
    out, decs = sw.process_tap(VNI, [py_build(hdr) + f + bytes(70000)])
    assert decs[0]["reason"] == "tx_too_big"


def segments_of(n: int, mss: int = 1398) -> list[bytes]:
    hdr, f = tso4(bytes(random.Random(n).randbytes(n * mss)), mss=mss, flags="A")
    return gso_ref.py_offload(hdr, f, 1464)[1]


def test_udp_gro_buffer_split_validated_and_coalesced(impl: Impl) -> None:
    sw = make(impl)
    inner = [bytes(Ether(dst=POD_MAC, src=PEER_MAC))[:12] + s[12:] for s in segments_of(10)]
    dgrams = [vxlan(VNI, s) for s in inner]
    size = len(dgrams[0])
    bad = vxlan(VNI, bytes(Ether(dst=POD_MAC, src="01:00:00:00:00:01"))[:12] + inner[3][12:])
    buf = b"".join(dgrams[:3]) + bad + b"".join(dgrams[3:])
    out, decs = sw.process_udp([(PEER, buf, size)])
    assert len(decs) == 11 and [d["reason"] for d in decs].count("bad_inner_src") == 1
    ((kind, vni, data),) = out
    h = py_parse(data)
    assert h.gso_type == VNET_GSO_TCPV4 and h.gso_size == 1398
    frame = Ether(data[10:])
    assert len(bytes(frame[TCP].payload)) == 10 * 1398
    c = sw.counters(VNI)
    assert c["gro_frames"] == 1 and c["gro_segments"] == 10 and c["tap_tx_packets"] == 1
    assert c["udp_rx_packets"] == 10 and c["drop_bad_inner_src"] == 1


def test_udp_gro_buffer_from_unknown_vtep_drops_every_datagram(impl: Impl) -> None:
    sw = make(impl)
    d = vxlan(VNI, bytes(Ether(dst=POD_MAC, src=PEER_MAC)) + bytes(100))
    out, decs = sw.process_udp([("192.168.100.9", d * 5, len(d))])
    assert out == [] and [x["reason"] for x in decs] == ["spoofed"] * 5
    assert sw.counters(VNI)["drop_spoofed"] == 5


def test_gso_size_needs_offload(impl: Impl) -> None:
    sw = impl.Switch(LOCAL)
    with pytest.raises(ValueError):
        sw.process_udp([(PEER, b"x", 1)])
    with pytest.raises(ValueError):
        sw.set_udp_pool([-1], [1])


def test_counters_have_offload_names() -> None:
    for name in counters.OFFLOAD_STATS:
        assert name in counters.NAMES


@pytest.mark.parametrize("seed", range(6))
def test_cython_agrees_with_reference(seed: int) -> None:
    """A random mix of GSO, plain, partial-checksum, lying, ARP frames out, and of GRO buffers
    and datagrams in: same outputs, decisions and counters."""
    rnd = random.Random(seed)
    batch = rnd.choice([1, 4, 64])
    sws = [make(m, batch=batch) for m in (switch_ref, switch)]
    frames = []
    for _ in range(30):
        k = rnd.randrange(5)
        if k == 0:
            hdr, f = tso4(rnd.randbytes(rnd.randrange(1500, 30000)), mss=rnd.choice([500, 1398]))
        elif k == 1:
            hdr, f = (0, 0, 0, 0, 0, 0), ip_frame(PEER_MAC, POD_MAC, src_ip="10.244.1.2",
                                                  dst_ip="10.244.2.3", sport=rnd.randrange(9))
        elif k == 2:
            hdr, f = (0, 0, 0, 0, 0, 0), arp_request(POD_MAC, "10.244.1.2", "10.244.2.3")
        elif k == 3:
            hdr, f = tso4(rnd.randbytes(3000))
            hdr = _lie(hdr, **{rnd.choice(VnetHdr._fields): rnd.randrange(65536) & 0xFF})
        else:
            hdr, f = (1, 0, 0, 0, 34, 16), tso4(rnd.randbytes(200))[1]
        frames.append(py_build(hdr) + f)
    res = [sw.process_tap(VNI, frames) for sw in sws]
    assert res[0] == res[1]
    dgs = []
    for _ in range(10):
        segs = [bytes(Ether(dst=POD_MAC, src=PEER_MAC))[:12] + s[12:]
                for s in segments_of(rnd.randrange(1, 6), mss=rnd.choice([600, 1398]))]
        if rnd.random() < 0.3:
            segs.reverse()
        ds = [vxlan(VNI, s) for s in segs]
        if rnd.random() < 0.5 and len(ds) > 1 and len(ds[-1]) == len(ds[0]):
            dgs.append((PEER, b"".join(ds), len(ds[0])))
        else:
            dgs.extend((PEER, d) for d in ds)
    res = [sw.process_udp(dgs) for sw in sws]
    assert res[0] == res[1]
    assert sws[0].counters(VNI) == sws[1].counters(VNI)
    assert sws[0].counters() == sws[1].counters()
    c = sws[1].counters(VNI)
    assert c["gro_frames"] > 0 and c["gso_frames"] > 0, "the mix exercised both directions"


def test_kernel_tunnel_gso_super_frame_goes_to_the_tap_whole(impl: Impl) -> None:
    """A kernel VXLAN sender's TSO packet crosses a veth as one datagram (no UDP_GRO message):
    its inner TCP super-frame is written as one GSO frame; a too-big non-TCP one is dropped."""
    sw = make(impl)
    _, f = tso4(os.urandom(20000))
    f = bytes(Ether(dst=POD_MAC, src=PEER_MAC))[:12] + f[12:]
    big = bytearray(f)
    big[23] = 17                                   # not TCP
    out, decs = sw.process_udp([(PEER, vxlan(VNI, f)), (PEER, vxlan(VNI, bytes(big)))])
    assert [d["verdict"] for d in decs] == ["deliver", "drop"]
    assert decs[1]["reason"] == "rx_too_big"
    ((kind, vni, data),) = out
    h = py_parse(data)
    assert (h.flags, h.gso_type, h.gso_size, h.csum_start, h.csum_offset) == (1, 1, 1410, 34, 16)
    assert data[10:] == f
    c = sw.counters(VNI)
    assert c["gro_frames"] == 1 and c["gro_segments"] == 15 and c["tap_tx_packets"] == 1


def test_offload_off_completes_partial_checksums_and_cuts_super_frames(impl: Impl) -> None:
    """Without offloads the TAP takes no virtio-net header, but a kernel sender's partial
    checksums and whole tunnel-GSO super-frames must still reach the pod intact."""
    sw = impl.Switch(LOCAL)
    sw.add_network(VNI)
    sw.fdb_add(VNI, PEER_MAC, PEER)
    hdr, f = tso4(os.urandom(5000))
    f = bytes(Ether(dst=POD_MAC, src=PEER_MAC))[:12] + f[12:]
    good = bytes(Ether(dst=POD_MAC, src=PEER_MAC) / IP(src="10.244.2.3", dst="10.244.1.2") /
                 TCP(sport=1, dport=2, flags="PA") / (b"q" * 200))
    part = partial(good, 34, 16, 6, False)
    out, decs = sw.process_udp([(PEER, vxlan(VNI, f)), (PEER, vxlan(VNI, part)),
                                (PEER, vxlan(VNI, good))])
    assert [d["verdict"] for d in decs] == ["deliver"] * 3
    frames = [o[2] for o in out]
    assert frames[-2:] == [good, good]
    segs = frames[:-2]
    assert len(segs) == 4 and all(len(s) <= 1464 for s in segs)
    check_tcp_segments(f, segs, 1410, False)
    c = sw.counters(VNI)
    assert c["csum_completed"] == 1 and c["tap_tx_packets"] == 6
