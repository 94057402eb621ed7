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
