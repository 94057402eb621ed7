"""pcap of the offload path: the TAP point shows the GSO super-frame as read, the underlay
point one packet per wire datagram (outer IPv4/UDP rebuilt: pool source port), both read by
tshark; the segments are the ones gso_ref makes."""
from __future__ import annotations

import os
from pathlib import Path

from scapy.layers.inet import IP, UDP
from scapy.layers.vxlan import VXLAN
from scapy.utils import rdpcap

from dataplane.trace import Tracer
from fastpath import gso_ref
from fastpath.switch import Switch
from fastpath.vnet_ref import py_build
from tests.test_fastpath_gso import MACS, tso4
from tests.test_trace_common import tshark

LOCAL, VNI, PEER = "192.168.100.1", 42, "192.168.100.2"


def test_pcap_shows_super_frame_and_segments(tmp_path: Path) -> None:
    sw = Switch(LOCAL, offload=True)
    sw.add_network(VNI)
    sw.set_udp_pool([-1, -1], [40000, 50000])
    sw.fdb_add(VNI, MACS["dst"], PEER)
    t = Tracer(sw)
    t.pcap_start(str(tmp_path), points=["tap_in", "ul_out"])
    hdr, f = tso4(os.urandom(5000))
    out, decs = sw.process_tap(VNI, [py_build(hdr) + f])
    summary = t.pcap_stop()
    assert decs[0]["copies"] == 4
    assert summary["written"]["tap_in"] == 1 and summary["written"]["ul_out"] == 4
    tap_in = rdpcap(str(tmp_path / "tap_in.pcap"))
    assert [bytes(p) for p in tap_in] == [f]
    ul = rdpcap(str(tmp_path / "ul_out.pcap"))
    segs = gso_ref.py_offload(hdr, f, 1464)[1]
    assert [bytes(p[VXLAN].payload) for p in ul] == segs
    sport = out[0][3]
    for p, seg in zip(ul, segs):
        assert p[IP].src == LOCAL and p[IP].dst == PEER and p[IP].len == 36 + len(seg)
        assert p[UDP].sport == sport and p[UDP].dport == 4789
    rows = tshark(str(tmp_path / "ul_out.pcap"), "vxlan.vni", "tcp.seq_raw", "tcp.len",
                  extra=("-o", "tcp.check_checksum:TRUE"))
    assert [r[0] for r in rows] == [str(VNI)] * 4
    assert [int(r[1]) for r in rows] == [1000 + i * 1398 for i in range(4)]
    assert [int(r[2]) for r in rows] == [1398, 1398, 1398, 806]


def test_pcap_tap_out_shows_the_coalesced_frame_as_written(tmp_path: Path) -> None:
    """Inbound with offloads: 10 TCP segments of one flow in a UDP_GRO buffer are written to
    the TAP as one GRO frame; the tap_out point records that frame (not the 10 datagrams),
    the ul_in point the 10 datagrams; tshark reads both."""
    from scapy.layers.l2 import Ether

    from tests.fastpath_impls import vxlan
    from tests.test_fastpath_switch_offload import POD_MAC, PEER_MAC, segments_of

    sw = Switch(LOCAL, offload=True)
    sw.add_network(VNI)
    sw.set_udp_pool([-1], [40000])
    sw.fdb_add(VNI, PEER_MAC, PEER)
    t = Tracer(sw)
    t.pcap_start(str(tmp_path), points=["ul_in", "tap_out"])
    inner = [bytes(Ether(dst=POD_MAC, src=PEER_MAC))[:12] + s[12:] for s in segments_of(10)]
    dgrams = [vxlan(VNI, s) for s in inner]
    out, decs = sw.process_udp([(PEER, b"".join(dgrams), len(dgrams[0]))])
    summary = t.pcap_stop()
    ((_, _, written),) = out
    assert summary["written"]["ul_in"] == 10 and summary["written"]["tap_out"] == 1
    (rec,) = rdpcap(str(tmp_path / "tap_out.pcap"))
    assert bytes(rec) == written[10:], "tap_out must be the frame written (no virtio header)"
    rows = tshark(str(tmp_path / "tap_out.pcap"), "ip.len", "tcp.len")
    assert rows == [[str(len(written) - 10 - 14), str(10 * 1398)]]
