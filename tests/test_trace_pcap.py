"""pcap capture: the writer, and the record -> pcap path of the Tracer over the simulated switch.

Files are read back with tshark (VXLAN dissected on the underlay points), tcpdump and scapy;
inner frames are compared byte for byte with what was sent and what was delivered.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.vxlan import VXLAN
from scapy.utils import rdpcap

from dataplane import pcap
from dataplane.trace import CAPTURE_POINTS, Filter, Tracer, format_decision, synth_ipv4_udp
from fastpath.switch import Switch
from tests.test_trace_common import (
    B_IP,
    B_MAC,
    B_VTEP,
    LOCAL,
    POD,
    REMOTE,
    VNI,
    arp_for_b,
    icmp_echo,
    make_switch,
    ping_back,
    ping_out,
    tcpdump_count,
    tshark,
    vxlan,
)

# ---- the writer ---------------------------------------------------------------------------------


def test_writer_roundtrip_and_tcpdump(tmp_path: Path) -> None:
    path = str(tmp_path / "x.pcap")
    frames = [ping_out(i) for i in range(3)]
    with pcap.PcapWriter(path, pcap.LINKTYPE_ETHERNET) as w:
        for i, f in enumerate(frames):
            w.write(1_700_000_000_123_456_789 + i, f)
    lt, pkts = pcap.read_pcap(path)
    assert lt == pcap.LINKTYPE_ETHERNET
    assert [p[2] for p in pkts] == frames
    assert pkts[0][0] == 1_700_000_000_123_456_789        # nanosecond timestamps kept
    assert tcpdump_count(path) == 3
    assert [bytes(p) for p in rdpcap(path)] == frames


def test_writer_snaplen_keeps_orig_len(tmp_path: Path) -> None:
    path = str(tmp_path / "s.pcap")
    with pcap.PcapWriter(path, pcap.LINKTYPE_ETHERNET, snaplen=20) as w:
        w.write(1, ping_out())
    (_, olen, data), = pcap.read_pcap(path)[1]
    assert data == ping_out()[:20] and olen == len(ping_out())
    assert tshark(path, "frame.len", "frame.cap_len") == [[str(olen), "20"]]


def test_writer_append_cuts_torn_record(tmp_path: Path) -> None:
    path = str(tmp_path / "a.pcap")
    with pcap.PcapWriter(path, pcap.LINKTYPE_RAW) as w:
        w.write(1, b"\x45" + bytes(27))
        w.write(2, b"\x45" + bytes(27))
    with open(path, "ab") as f:                      # a crash in the middle of a record
        f.write(pcap.PKT_HDR.pack(3, 0, 100, 100) + b"\x45" * 10)
    with pcap.PcapWriter(path, pcap.LINKTYPE_RAW, append=True) as w:
        assert w.packets == 2
        w.write(4, b"\x45" + bytes(27))
    assert [ts for ts, _, _ in pcap.read_pcap(path)[1]] == [1, 2, 4]


def test_writer_append_refuses_other_linktype(tmp_path: Path) -> None:
    path = str(tmp_path / "b.pcap")
    pcap.PcapWriter(path, pcap.LINKTYPE_ETHERNET).close()
    with pytest.raises(ValueError) as e:
        pcap.PcapWriter(path, pcap.LINKTYPE_RAW, append=True)
    assert str(e.value) == f"{path}: cannot append: linktype 1 in the file, 101 wanted"
    Path(path).write_bytes(b"\xd4\xc3\xb2\xa1" + bytes(20))
    with pytest.raises(ValueError, match="is not the little-endian nanosecond pcap magic"):
        pcap.PcapWriter(path, pcap.LINKTYPE_ETHERNET, append=True)


def test_synth_header_checksum_and_lengths() -> None:
    pkt = synth_ipv4_udp(b"x" * 10, 0xC0A86402, 40000, 0xC0A86401, 4789, orig_len=50)
    ip = IP(pkt)
    assert (ip.src, ip.dst, ip.len, ip[UDP].sport, ip[UDP].dport, ip[UDP].len) == \
        ("192.168.100.2", "192.168.100.1", 78, 40000, 4789, 58)
    assert IP(bytes(IP(pkt[:20]))).chksum == int.from_bytes(pkt[10:12], "big")   # scapy agrees


# ---- the tracer: every point, read back --------------------------------------------------------


def _traffic(sw, port: int = 40001) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """Ping out, an ARP request answered locally, the reply back. Returns (sent to the TAP
    side, inner frames received from the underlay, frames delivered to the TAP)."""
    sent = [ping_out(1), arp_for_b(), ping_out(2)]
    out, decs = sw.process_tap(VNI, sent)
    assert [d["verdict"] for d in decs] == ["encap", "arp_reply", "encap"]
    back = [ping_back(1), ping_back(2)]
    delivered, decs = sw.process_udp([(B_VTEP, vxlan(VNI, f)) for f in back])
    assert [d["verdict"] for d in decs] == ["deliver", "deliver"]
    tap_out = [o[2] for o in out if o[0] == "tap"] + [o[2] for o in delivered]
    return sent, back, tap_out


def test_capture_all_points_tshark_reads_vxlan(tmp_path: Path) -> None:
    sw = make_switch()
    t = Tracer(sw)
    st = t.pcap_start(str(tmp_path))
    assert set(st["pcap"]["files"]) == set(CAPTURE_POINTS)
    sent, back, tap_out = _traffic(sw)
    summary = t.pcap_stop()
    assert summary["written"] == {"tap_in": 3, "ul_out": 2, "ul_in": 2, "tap_out": 3}
    assert summary["ring_dropped"] == 0 and summary["stopped"] == "stopped"
    f = {p: str(tmp_path / f"{p}.pcap") for p in CAPTURE_POINTS}
    for p in CAPTURE_POINTS:
        assert tcpdump_count(f[p]) == summary["written"][p]

    # underlay out: VXLAN decoded by tshark's dissector, right VNI, right VTEP, inner = sent
    rows = tshark(f["ul_out"], "ip.src", "ip.dst", "udp.dstport", "vxlan.vni", "eth.dst",
                  "icmp.type")
    assert rows == [[LOCAL, B_VTEP, "4789", str(VNI), B_MAC, "8"]] * 2
    inner = [bytes(p[VXLAN].payload) for p in rdpcap(f["ul_out"])]
    assert inner == [sent[0], sent[2]]

    # underlay in: synthesized IPv4/UDP from the VTEP to us, VXLAN decoded, inner = received
    rows = tshark(f["ul_in"], "ip.src", "ip.dst", "udp.dstport", "vxlan.vni", "icmp.type")
    assert rows == [[B_VTEP, LOCAL, "4789", str(VNI), "0"]] * 2
    assert [bytes(p[VXLAN].payload) for p in rdpcap(f["ul_in"])] == back

    # TAP points: Ethernet frames, byte for byte
    assert [bytes(p) for p in rdpcap(f["tap_in"])] == sent
    assert [bytes(p) for p in rdpcap(f["tap_out"])] == tap_out
    rows = tshark(f["tap_out"], "arp.opcode", "arp.src.hw_mac", "arp.src.proto_ipv4")
    assert rows[0] == ["2", B_MAC, B_IP]                     # the local ARP reply


def test_capture_selected_points_and_count(tmp_path: Path) -> None:
    sw = make_switch()
    t = Tracer(sw)
    t.pcap_start(str(tmp_path), points=["ul_out"], count=2)
    assert sw.trace_status()["left"]["ul_out"] == 2
    sw.process_tap(VNI, [ping_out(i) for i in range(5)])
    t.poll()
    assert t.pcap is None and t.last_pcap is not None
    assert t.last_pcap["stopped"] == "count reached"
    assert t.last_pcap["written"] == {"ul_out": 2}
    assert sorted(os.listdir(tmp_path)) == ["ul_out.pcap"]
    assert not sw.trace_status()["active"]                   # disarmed when done
    assert [r[0] for r in tshark(str(tmp_path / "ul_out.pcap"), "icmp.seq")] == ["0", "1"]


def test_capture_duration(tmp_path: Path) -> None:
    sw = make_switch()
    t = Tracer(sw)
    t.pcap_start(str(tmp_path), points=["tap_in"], duration=0.05)
    sw.process_tap(VNI, [ping_out()])
    time.sleep(0.06)
    t.poll()
    assert t.last_pcap is not None and t.last_pcap["stopped"] == "duration reached"
    assert t.last_pcap["written"] == {"tap_in": 1}
    assert not sw.trace_status()["active"]


@pytest.mark.parametrize("flt,want", [
    ({"vni": 7}, 1),
    ({"mac": "02:00:00:00:03:02"}, 1),
    ({"ip": "10.244.3.2"}, 1),
    ({"ip": "10.244.9.9"}, 0),
])
def test_capture_filter(tmp_path: Path, flt: dict, want: int) -> None:
    sw = make_switch()
    sw.add_network(7)
    sw.fdb_add(7, "02:00:00:00:07:02", B_VTEP)
    t = Tracer(sw)
    t.pcap_start(str(tmp_path), points=["tap_in"], **flt)
    frames = {VNI: [ping_out(), icmp_echo("02:00:00:00:03:02", POD[1], POD[0], "10.244.3.2")],
              7: [icmp_echo("02:00:00:00:07:02", POD[1], POD[0], "10.244.7.2")]}
    for vni, fs in frames.items():
        sw.process_tap(vni, fs)
    assert t.pcap_stop()["written"] == {"tap_in": want}


def test_capture_and_decision_with_different_filters(tmp_path: Path) -> None:
    """One C arming, two filters: each session gets exactly what its own filter selects."""
    sw = make_switch()
    t = Tracer(sw)
    t.pcap_start(str(tmp_path), points=["tap_in"], mac=B_MAC)
    t.add(2, ip="10.244.3.2")
    assert t.armed["filter"] == {}                          # meet of the two filters: any
    to_c = icmp_echo("02:00:00:00:03:02", POD[1], POD[0], "10.244.3.2")
    sw.process_tap(VNI, [ping_out(1), to_c, ping_out(2), to_c, to_c])
    recs = t.show()
    assert [r["vteps"][0][0] for r in recs] == ["192.168.100.3"] * 2
    assert t.pcap_stop()["written"] == {"tap_in": 2}
    assert [bytes(p)[0:6] for p in rdpcap(str(tmp_path / "tap_in.pcap"))] == \
        [bytes.fromhex(B_MAC.replace(":", ""))] * 2


def test_decision_added_during_capture_keeps_capture_count(tmp_path: Path) -> None:
    """trace_arm replaces the arming: the tracer re-arms the capture with what it still
    wants, so adding a decision trace neither resets nor ends the capture."""
    sw = make_switch()
    t = Tracer(sw)
    t.pcap_start(str(tmp_path), points=["tap_in"], count=4)
    sw.process_tap(VNI, [ping_out(1), ping_out(2)])
    t.add(1)
    assert t.armed["points"]["tap_in"] == 2
    sw.process_tap(VNI, [ping_out(3), ping_out(4), ping_out(5)])
    t.poll()
    assert t.last_pcap is not None and t.last_pcap["written"] == {"tap_in": 4}
    assert len(t.show()) == 1


def test_non_default_port_hint(tmp_path: Path) -> None:
    sw = make_switch()
    sw2 = type(sw)(LOCAL, 8472)
    sw2.add_network(VNI)
    sw2.fdb_add(VNI, B_MAC, B_VTEP, 8472)
    t = Tracer(sw2)
    st = t.pcap_start(str(tmp_path), points=["ul_out"])
    assert st["tshark_hint"] == "-d udp.port==8472,vxlan"
    sw2.process_tap(VNI, [ping_out()])
    t.pcap_stop()
    rows = tshark(str(tmp_path / "ul_out.pcap"), "vxlan.vni", extra=("-d", "udp.port==8472,vxlan"))
    assert rows == [[str(VNI)]]


def test_ring_overflow_counts_records_never_packets(tmp_path: Path) -> None:
    """Nobody drains: the 8 MB ring fills with 60 kB records; later records are dropped and
    counted, while every packet is still forwarded."""
    sw = make_switch(underlay_mtu=65535)
    t = Tracer(sw)
    t.pcap_start(str(tmp_path), points=["tap_in"])
    big = ping_out() + bytes(60000)
    out, decs = sw.process_tap(VNI, [big] * 200)
    assert [d["verdict"] for d in decs] == ["encap"] * 200 and len(out) == 200
    st = sw.trace_status()
    assert st["dropped"] > 0 and st["recorded"] + st["dropped"] == 200
    summary = t.pcap_stop()
    assert summary["ring_dropped"] == st["dropped"]
    assert summary["written"]["tap_in"] == st["recorded"]
    assert tcpdump_count(str(tmp_path / "tap_in.pcap")) == st["recorded"]


def test_bad_requests(tmp_path: Path) -> None:
    t = Tracer(make_switch())
    cases = [({"points": ["eth0"]},
              "unknown capture point 'eth0'; known: tap_in, ul_out, ul_in, tap_out"),
             ({"count": 0}, "count must be a positive integer, got 0"),
             ({"duration": -1}, "duration must be a positive number of seconds, got -1"),
             ({"snaplen": 10}, "snaplen must be in 14..65535, got 10"),
             ({"mac": "zz"}, "not a MAC address: 'zz' (want aa:bb:cc:dd:ee:ff)"),
             ({"vni": 1 << 24}, "VNI must be an integer in 1..16777215, got 16777216")]
    for kw, msg in cases:
        with pytest.raises(ValueError) as e:
            t.pcap_start(str(tmp_path), **kw)
        assert str(e.value) == msg
    t.pcap_start(str(tmp_path))
    with pytest.raises(ValueError, match="a capture is already running into"):
        t.pcap_start(str(tmp_path))
    t.pcap_stop()
    assert Filter.make(vni=0) == Filter()


def test_points_as_text_and_unwritable_dir(tmp_path: Path) -> None:
    t = Tracer(make_switch())
    st = t.pcap_start(str(tmp_path), points="tap_in, ul_in")
    assert st["pcap"]["points"] == ["tap_in", "ul_in"]
    t.pcap_stop()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError) as e:
        t.pcap_start(str(blocker / "sub"))
    assert str(e.value) == f"cannot create the pcap directory {blocker}/sub: Not a directory"


def test_ipv6_vtep_address_in_ul_in_and_decisions(tmp_path: Path) -> None:
    """A dual-stack switch, a peer over IPv6: the ul_in pcap carries the peer's real IPv6
    address (not ::), the inbound decision says which VTEP it came from and the outbound one
    which VTEP it went to; an IPv4 peer in the same capture keeps its IPv4 records."""
    l6, b6 = "fd00:100::1", "fd00:100::2"
    c_vtep = "192.168.100.3"
    c_ip, c_mac = REMOTE[c_vtep]
    sw = Switch([LOCAL, l6])
    sw.add_network(VNI)
    sw.fdb_add(VNI, B_MAC, b6)
    sw.neigh_add(VNI, B_IP, B_MAC)
    sw.fdb_add(VNI, c_mac, c_vtep)
    t = Tracer(sw)
    t.pcap_start(str(tmp_path), points=["ul_in", "ul_out"])
    t.add(10)
    back_c = icmp_echo(POD[1], c_mac, c_ip, POD[0], seq=9, reply=True)
    _, decs = sw.process_udp([(b6, vxlan(VNI, ping_back(1))), (c_vtep, vxlan(VNI, back_c))])
    assert [d["verdict"] for d in decs] == ["deliver", "deliver"]
    sw.process_tap(VNI, [ping_out(2)])
    recs = t.show()
    summary = t.pcap_stop()
    assert summary["written"] == {"ul_in": 2, "ul_out": 1}

    rows = tshark(str(tmp_path / "ul_in.pcap"), "ipv6.src", "ipv6.dst", "ip.src",
                  "udp.dstport", "vxlan.vni")
    # ip.src: the first IPv4 header, the inner one under IPv6, the outer one from the IPv4 peer
    assert rows == [[b6, l6, B_IP, "4789", str(VNI)],
                    ["", "", c_vtep, "4789", str(VNI)]]
    assert [bytes(p[VXLAN].payload) for p in rdpcap(str(tmp_path / "ul_in.pcap"))] == \
        [ping_back(1), back_c]
    rows = tshark(str(tmp_path / "ul_out.pcap"), "ipv6.src", "ipv6.dst", "udp.dstport")
    assert rows == [[l6, b6, "4789"]]

    by_dir = {(r["direction"], r["verdict"]): r for r in recs}
    inb6, inb4 = [r for r in recs if r["direction"] == "in"]
    assert inb6["from"][0] == b6 and inb4["from"][0] == c_vtep
    text = format_decision(inb6)          # (the simulation's datagrams come from port 0)
    assert f"from VTEP {b6}, VXLAN" in text and f"source check: {b6} is a VTEP" in text
    assert by_dir[("out", "encap")]["vteps"] == [[b6, 4789]]
    assert f"-> VTEP [{b6}]:4789" in format_decision(by_dir[("out", "encap")])


def test_record_with_ipv6_peer_flag_parses_and_short_one_is_refused() -> None:
    from fastpath import trace_ref as tr
    a6 = bytes.fromhex("fd000100000000000000000000000002")
    pkt = b"\x08" + bytes(7) + b"inner"

    def rec(data: bytes, flags: int) -> bytes:
        n = tr.RECORD.size + len(data)
        n += -n % 8
        return (tr.RECORD.pack(n, 2, 0, 0, flags, 1, 7, VNI, 0, len(pkt), len(data), 4789)
                + data).ljust(n, b"\0")

    (r,) = tr.parse_records(rec(a6 + pkt, tr.REC_INBOUND | tr.REC_PEER6))
    assert (r.point, r.peer6, r.data, r.peer, r.inbound) == ("ul_in", a6, pkt, 0, True)
    (r,) = tr.parse_records(rec(pkt, tr.REC_INBOUND))
    assert r.peer6 is None and r.data == pkt
    with pytest.raises(ValueError, match="IPv6 peer flag"):
        tr.parse_records(rec(a6[:10], tr.REC_INBOUND | tr.REC_PEER6))
