"""Chaos harness: vxtap under faults and abuse, with figures (issue 12).

    python -m benchmarks.chaos                 # full run (~15 min): 10^6 bad inputs, 60 s etcd
                                               # outage, 10 min soak, ...
    python -m benchmarks.chaos --quick         # short durations (~2 min)
    python -m benchmarks.chaos --scenarios bad_inputs,restart   # a subset
    bash benchmarks/run.sh chaos [--quick]     # the same, with the repo's virtualenv

Root only. What it builds (tests/topo.py, tests/etcd_server.py):

    etcd (loopback) <- TCP proxy (the harness can cut the agents' connections) <- agents
    node 1: vxtap agent --etcd (pod n1p2)      node 2: vxtap agent --etcd (pod n2p2)
    node 3: kernel VXLAN vx42 (pod n3p2), registered in etcd by hand as a static node
    (three nodes on a hub bridge, underlay MTU 1500, pods at 1450)

Continuous traffic during every scenario (class Traffic): a TCP stream pod1 -> pod2 paced at
--tcp-rate, a ping at 10 ms pod1 -> pod2 (vxtap <-> vxtap) and one pod1 -> pod3 (vxtap <->
kernel VXLAN). Each scenario reports: inputs it injected, traffic lost (pings lost and the
longest ping gap in ms, the longest TCP receive stall in ms, TCP connection broken or not), time
to reconverge, table entries wrong afterwards (agent tables vs the tables computed from etcd's
content), crashes (agent deaths the harness did not cause, tracebacks in the logs), agent RSS
and fd drift, agent log lines written. Scenarios:

  bad_inputs   10^6 bad VXLAN datagrams on node 1's underlay from a raw socket in node 2
               (sendmmsg batches: truncated, no I flag, reserved bits, unknown VNI, oversize
               (fragmented), inner too short, spoofed source, bad inner source MAC) and bad
               frames from pod 1 into the TAP (runts, bad/truncated/unanswerable/gratuitous
               ARP, multicast); every input must land in exactly its one drop counter
               (per-reason deltas == per-kind counts sent; losses in the kernel before the
               agent are counted separately and reported). Then lying virtio-net headers
               (vnet_kinds: truncated header, unknown flags/gso_type, ECN, gso_size 0 or over
               the frame, hdr_len/csum_start/csum_offset beyond it or csum_start in the
               Ethernet header, TSO on UDP/ICMP/IPv6, IP options, length/fragment lies, MSS
               over the MTU, too many segments, over 64 KB), two ways:
               - from outside: pod 1 sends each with PACKET_VNET_HDR at node 1's TAP. The
                 kernel refuses most at the sender and normalises others (the tun driver
                 writes the header a TAP read returns, from the skb), but some GSO lies reach
                 the agent (a pod with CAP_NET_RAW can do this): each must land in its one
                 counter (sent 100x alone, counter delta == 100);
               - in-process, since most lies cannot come from outside: the agent's own
                 Switch(offload=True), UDP send pool and Forwarder run_all thread, in node 1's
                 namespace on loopback, with a SOCK_SEQPACKET socketpair as the TAP fd (one
                 frame per read, cut at the read length, as a TAP). --vnet-inputs lies with
                 valid plain and TSO frames between them: every lie in its one counter, every
                 valid datagram delivered, the loop alive and forwarding afterwards.
  etcd_down    etcd stopped for --etcd-down seconds; an endpoint written as soon as it is back
               must reach both agents (time measured); zero traffic loss required.
  restart      node 1's agent SIGKILLed and restarted after 1 s: time to forward again, TAP
               re-created on br0, tables == etcd, node 2 never drops node 1 (lease TTL 10 s).
  compaction   agents cut from etcd, 50 changes, etcd compacted, agents back: re-list; then a
               snapshot, 20 more endpoints, etcd restored from the snapshot (revision goes
               back), one more endpoint: the agents must converge to the restored state.
  soak         --soak seconds of traffic with an endpoint churned every --churn seconds;
               agent RSS and fds sampled every --sample seconds, reported as slopes.
  exhaustion   table growth (--table-entries FDB entries on node 1), TAP queue overflow (UDP
               flood into the TAP), underlay send queue full (tc tbf on node 1's underlay),
               disk full under a pcap capture (a small tmpfs mounted in a temporary dir).

At the end: a table and benchmarks/results/chaos-<time>.json. Exit status 1 if a bar of the
issue was missed (crash, unaccounted input, loss across the etcd outage, stale entry, ...).
Everything is torn down on exit, error, SIGINT/SIGTERM; processes are stopped by PID only.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tests import topo
from tests.etcd_server import EtcdServer, TcpProxy, etcd_client

HERE = Path(__file__).resolve().parent
NETWORK = "chaos"
VNI = 42
LEASE_TTL = 10
TCP_PORT = 5399
PING_INTERVAL = 0.01

# -------------------------------------------------------------------------------------------
# Configuration
# -------------------------------------------------------------------------------------------

SCENARIOS = ("bad_inputs", "etcd_down", "restart", "compaction", "soak", "exhaustion")


@dataclasses.dataclass
class Config:
    bad_inputs: int = 1_000_000         # underlay datagrams; TAP frames: a fifth of this
    vnet_inputs: int = 200_000          # lying virtio-net headers (in-process, see vnet_kinds)
    rate: int = 100_000                 # bad inputs per second (paced, so the kernel keeps up)
    etcd_down: float = 60.0
    soak: float = 600.0
    churn: float = 5.0
    sample: float = 10.0
    table_entries: int = 100_000
    flood: float = 5.0                  # seconds of each exhaustion flood
    tcp_rate: int = 2_000_000           # bytes/s of the TCP stream
    scenarios: tuple[str, ...] = SCENARIOS

    @classmethod
    def quick(cls) -> Config:
        return cls(bad_inputs=100_000, vnet_inputs=20_000, etcd_down=5.0, soak=40.0, churn=2.0, sample=2.0,
                   table_entries=20_000, flood=2.0)


# -------------------------------------------------------------------------------------------
# Helper programs run inside namespaces
# -------------------------------------------------------------------------------------------

# sendmmsg() through ctypes: Python builds the packets once, the kernel gets batches of 64.
_SENDMMSG = textwrap.dedent("""
    import ctypes, json, os, socket, sys, time
    libc = ctypes.CDLL(None, use_errno=True)
    class iovec(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
    class msghdr(ctypes.Structure):
        _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                    ("iov", ctypes.POINTER(iovec)), ("iovlen", ctypes.c_size_t),
                    ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                    ("flags", ctypes.c_int)]
    class mmsghdr(ctypes.Structure):
        _fields_ = [("hdr", msghdr), ("len", ctypes.c_uint)]
    def send_all(fd, packets, total_units, unit_of, rate):
        # packets: list of bytes; one "unit" (input) may be several packets (fragments):
        # unit_of[i] is the unit index of packet i in the cycle (-1 = continues the previous)
        n = len(packets)
        bufs = [ctypes.create_string_buffer(p, len(p)) for p in packets]
        iov = (iovec * n)(*[iovec(ctypes.addressof(b), len(p)) for b, p in zip(bufs, packets)])
        msgs = (mmsghdr * n)()
        for i in range(n):
            msgs[i].hdr.iov = ctypes.pointer(iov[i]); msgs[i].hdr.iovlen = 1
        units_per_cycle = sum(1 for u in unit_of if u >= 0)
        cycles = (total_units + units_per_cycle - 1) // units_per_cycle
        t0 = time.monotonic(); sent_units = 0; failed = 0
        per = [0] * units_per_cycle
        for c in range(cycles):
            off = 0
            while off < n:
                r = libc.sendmmsg(fd, ctypes.byref(msgs, off * ctypes.sizeof(mmsghdr)), n - off, 0)
                if r < 0:
                    e = ctypes.get_errno()
                    if e in (11, 105):          # EAGAIN, ENOBUFS: wait, retry
                        failed += 1; time.sleep(0.0005); continue
                    raise OSError(e, os.strerror(e))
                off += r
            for i, u in enumerate(unit_of):
                if u >= 0:
                    per[u] += 1
            sent_units += units_per_cycle
            ahead = sent_units / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
        return per, time.monotonic() - t0, failed
""")

# spec["dst"]: a raw IPv4 socket connected to it (underlay); spec["dev"]: a packet socket bound
# to that interface (TAP side, from a pod).
_SENDER = _SENDMMSG + textwrap.dedent("""
    spec = json.load(open(sys.argv[1]))
    if "dst" in spec:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        s.connect((spec["dst"], 0))
    else:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        s.bind((spec["dev"], 0))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    packets = [bytes.fromhex(p) for p in spec["packets"]]
    per, secs, failed = send_all(s.fileno(), packets, spec["total"], spec["unit_of"], spec["rate"])
    print(json.dumps({"per_kind": dict(zip(spec["kinds"], per)), "seconds": secs,
                      "send_retries": failed}))
""")

# Lying virtio-net headers, in-process (see vnet_kinds): the agent's own data-plane objects
# (Switch with offload=True, the UDP send pool of dataplane/underlay.py, the Forwarder's run_all
# thread) on loopback, with a SOCK_SEQPACKET socketpair standing in for the TAP fd: one message
# per read(), cut at the read length, exactly as a TAP with IFF_VNET_HDR hands frames over.
# The harness side writes [header][frame] messages, each lie kind once per cycle with a valid
# plain frame and a valid TSO frame in between; a receiver socket counts what reaches the VTEP.
_VNET_LOOP = textwrap.dedent("""
    import json, logging, os, socket, sys, threading, time
    spec = json.load(open(sys.argv[1]))
    sys.path.insert(0, spec["repo"])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from fastpath.switch import Switch
    from dataplane import underlay
    from dataplane.forwarder import Forwarder
    LO, VNI = "127.0.0.1", spec["vni"]
    sw = Switch(LO, spec["port"], offload=True, underlay_mtu=1500, busy_poll_us=50)
    ul = underlay.open_underlay(LO, spec["port"])
    ul.pool = underlay.open_pool(LO, (spec["port"] + 100, spec["port"] + 200), 64)
    sw.set_udp_pool([x.fileno() for x in ul.pool], ul.pool_ports)
    rcv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rcv.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)           # SO_RCVBUFFORCE
    rcv.bind((LO, 0)); rcv.settimeout(0.2)
    got = [0]
    def receive():
        buf = bytearray(70000)
        while not stop.is_set():
            try:
                rcv.recv_into(buf); got[0] += 1
            except socket.timeout:
                pass
    stop = threading.Event()
    rt = threading.Thread(target=receive, daemon=True); rt.start()
    tap, far = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    tap.setblocking(False)
    far.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    class FakeTap:                       # what Forwarder needs of dataplane.devices.Tap
        vni = VNI
        def fileno(self): return tap.fileno()
        def close(self): tap.close()
    fwd = Forwarder(sw, ul, nice=None)
    sw.add_network(VNI, tap.fileno()); fwd.taps[VNI] = FakeTap()
    sw.fdb_add(VNI, spec["peer_mac"], LO, rcv.getsockname()[1])
    fwd.start("single")
    c0 = sw.counters(VNI)
    msgs = [bytes.fromhex(m) for m in spec["packets"]]
    kinds, valid_segs = spec["kinds"], spec["valid_segs"]
    per = {k: 0 for k in kinds}; valid_sent = 0; expect_dgrams = 0; written = 0
    t0 = time.monotonic(); lies = 0
    while lies < spec["total"]:
        for k, m in zip(kinds, msgs):
            far.send(m); written += 1
            if k in valid_segs:
                valid_sent += 1; expect_dgrams += valid_segs[k]
            else:
                per[k] += 1; lies += 1
        ahead = lies / spec["rate"] - (time.monotonic() - t0)
        if ahead > 0:
            time.sleep(ahead)
    secs = time.monotonic() - t0
    t1 = time.monotonic()
    while sw.counters(VNI)["tap_rx_packets"] - c0["tap_rx_packets"] < written and time.monotonic() - t1 < 20:
        time.sleep(0.02)
    while got[0] < expect_dgrams and time.monotonic() - t1 < 20:
        time.sleep(0.02)
    time.sleep(0.2)
    c1 = sw.counters(VNI)
    alive = not fwd.failed.is_set() and all(t.is_alive() for t in fwd._threads)
    # forwarding after the barrage: one more valid frame must reach the VTEP
    before = got[0]; far.send(msgs[kinds.index("valid_plain")]); t2 = time.monotonic()
    while got[0] == before and time.monotonic() - t2 < 5:
        time.sleep(0.01)
    stop.set(); rt.join(1)
    raw = rcv.getsockopt(socket.SOL_SOCKET, 55, 36)          # SO_MEMINFO [8] = drops
    fwd.close()
    print(json.dumps({"per_kind": per, "seconds": secs, "messages": written,
                      "deltas": {k: c1[k] - c0[k] for k in c1 if c1[k] != c0[k]},
                      "valid_sent": valid_sent, "valid_dgrams_expected": expect_dgrams,
                      "valid_dgrams_received": before, "receiver_kernel_drops":
                      int.from_bytes(raw[32:36], "little"), "loop_alive": alive,
                      "forwarding_after": got[0] > before}))
""")

# The same lies from outside: pod 1 sends them to the agent's TAP through a packet socket with
# PACKET_VNET_HDR (the only way a process can hand the kernel a virtio-net header for a frame it
# transmits). Prints, per lie, what the kernel said (sent / errno); spec["reps"] copies each.
_VNET_PROBE = textwrap.dedent("""
    import errno, json, socket, sys
    spec = json.load(open(sys.argv[1]))
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    s.setsockopt(263, 15, 1)                                   # SOL_PACKET, PACKET_VNET_HDR
    s.bind((spec["dev"], 0))
    out = {}
    for k, m in zip(spec["kinds"], spec["packets"]):
        for _ in range(spec["reps"]):
            try:
                s.send(bytes.fromhex(m)); out[k] = "sent"
            except OSError as e:
                out[k] = errno.errorcode.get(e.errno, str(e.errno))
                break
    print(json.dumps(out))
""")

# A paced TCP stream: "recv PORT" prints one JSON line at SIGTERM; "send IP PORT RATE" too.
_TCP_STREAM = textwrap.dedent("""
    import json, select, signal, socket, sys, time
    stop = False
    def on_term(*a):
        global stop
        stop = True
    signal.signal(signal.SIGTERM, on_term)
    res = {"bytes": 0, "max_gap_ms": 0.0, "error": None, "connected": False}
    mode = sys.argv[1]
    try:
        if mode == "recv":
            ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            ls.bind(("0.0.0.0", int(sys.argv[2]))); ls.listen(1)
            print("listening", flush=True)
            while not stop:
                r, _, _ = select.select([ls], [], [], 0.1)
                if r:
                    c, _ = ls.accept(); break
            else:
                c = None
            if c is not None:
                res["connected"] = True
                last = None
                while not stop:
                    r, _, _ = select.select([c], [], [], 0.05)
                    if r:
                        d = c.recv(1 << 16)
                        if not d:
                            break                     # the sender stopped (clean FIN)
                        now = time.monotonic()
                        if last is not None:
                            res["max_gap_ms"] = max(res["max_gap_ms"], (now - last) * 1000)
                        last = now
                        res["bytes"] += len(d)
        else:
            rate = int(sys.argv[4]); chunk = 16384
            c = socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=10)
            c.settimeout(None); res["connected"] = True
            t0 = time.monotonic(); buf = b"x" * chunk
            while not stop:
                c.sendall(buf); res["bytes"] += chunk
                ahead = res["bytes"] / rate - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
    except OSError as e:
        if not stop:
            res["error"] = f"{type(e).__name__}: {e}"
    print(json.dumps(res), flush=True)
""")


# -------------------------------------------------------------------------------------------
# Packets
# -------------------------------------------------------------------------------------------

def _csum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    s = sum(int.from_bytes(b[i:i + 2], "big") for i in range(0, len(b), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4(src: str, dst: str, payload: bytes, ident: int = 1, frag: int = 0,
         proto: int = 17) -> bytes:
    """An IPv4 packet (checksum filled, no options). frag: the flags+offset field."""
    hdr = bytearray(20)
    hdr[0], hdr[8], hdr[9] = 0x45, 64, proto
    hdr[2:4] = (20 + len(payload)).to_bytes(2, "big")
    hdr[4:6] = ident.to_bytes(2, "big")
    hdr[6:8] = frag.to_bytes(2, "big")
    hdr[12:16], hdr[16:20] = socket.inet_aton(src), socket.inet_aton(dst)
    hdr[10:12] = _csum(bytes(hdr)).to_bytes(2, "big")
    return bytes(hdr) + payload


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    return (sport.to_bytes(2, "big") + dport.to_bytes(2, "big")
            + (8 + len(payload)).to_bytes(2, "big") + b"\0\0" + payload)


def vxlan(vni: int, inner: bytes, flags: int = 0x08, rsvd_last: int = 0) -> bytes:
    return bytes([flags, 0, 0, 0]) + vni.to_bytes(3, "big") + bytes([rsvd_last]) + inner


def mac(s: str) -> bytes:
    return bytes.fromhex(s.replace(":", ""))


def eth(dst: str, src: str, etype: int, payload: bytes) -> bytes:
    return mac(dst) + mac(src) + etype.to_bytes(2, "big") + payload


def arp(op: int, sha: str, spa: str, tpa: str, htype: int = 1, hlen: int = 6) -> bytes:
    return (htype.to_bytes(2, "big") + b"\x08\x00" + bytes([hlen, 4]) + op.to_bytes(2, "big")
            + mac(sha) + socket.inet_aton(spa) + b"\0" * 6 + socket.inet_aton(tpa))


def underlay_kinds(src: str, dst: str, peer_mac: str, pod_mac: str
                   ) -> list[tuple[str, str, list[bytes]]]:
    """(kind, the drop counter it must land in, its packets) for the underlay barrage."""
    inner = eth(pod_mac, peer_mac, 0x0800, ipv4("10.244.2.99", "10.244.1.2", b"\0" * 40))

    def dgram(payload: bytes, s: str = src) -> bytes:
        return ipv4(s, dst, udp(40000, topo.VXLAN_PORT, payload))

    big = udp(40000, topo.VXLAN_PORT, vxlan(VNI, eth(pod_mac, peer_mac, 0x0800, b"\0" * 1986)))
    # RFC 791 fragments of one 2008-byte UDP datagram (fragment offset in 8-byte units)
    frags = [ipv4(src, dst, big[:1472], ident=0x4242, frag=0x2000),
             ipv4(src, dst, big[1472:], ident=0x4242, frag=1472 // 8)]
    return [
        ("truncated", "global.drop_truncated", [dgram(b"\x08\0\0")]),
        ("no_i_flag", "global.drop_no_i_flag", [dgram(vxlan(VNI, inner, flags=0x00))]),
        ("reserved", "global.drop_reserved", [dgram(vxlan(VNI, inner, flags=0x0C))]),
        ("reserved_last", "global.drop_reserved", [dgram(vxlan(VNI, inner, rsvd_last=1))]),
        ("unknown_vni", "global.drop_unknown_vni", [dgram(vxlan(4242, inner))]),
        ("oversize", "global.drop_rx_too_big", frags),
        ("inner_short", "net.drop_inner_short", [dgram(vxlan(VNI, inner[:10]))]),
        ("spoofed", "net.drop_spoofed", [dgram(vxlan(VNI, inner), s="192.168.100.77")]),
        ("bad_inner_src", "net.drop_bad_inner_src",
         [dgram(vxlan(VNI, eth(pod_mac, "01:00:5e:00:00:01", 0x0800, b"\0" * 46)))]),
    ]


def tap_kinds(pod_mac: str, pod_ip: str, known_ip: str) -> list[tuple[str, str, list[bytes]]]:
    """(kind, drop counter, frames) injected from pod 1 through br0 into node 1's TAP."""
    unk, bc = "02:00:00:00:99:99", "ff:ff:ff:ff:ff:ff"
    return [
        ("runt_header_only", "net.drop_unknown_unicast", [eth(unk, pod_mac, 0x0800, b"")]),
        ("runt_ipv4_cut", "net.drop_unknown_unicast",
         [eth(unk, pod_mac, 0x0800, b"\x45\0\0\x54")]),
        ("arp_bad_htype", "net.drop_bum",
         [eth(bc, pod_mac, 0x0806, arp(1, pod_mac, pod_ip, known_ip, htype=7))]),
        ("arp_bad_hlen", "net.drop_bum",
         [eth(bc, pod_mac, 0x0806, arp(1, pod_mac, pod_ip, known_ip, hlen=8))]),
        ("arp_truncated", "net.drop_bum",
         [eth(bc, pod_mac, 0x0806, arp(1, pod_mac, pod_ip, known_ip)[:12])]),
        ("arp_gratuitous", "net.drop_bum",
         [eth(bc, pod_mac, 0x0806, arp(1, pod_mac, pod_ip, pod_ip))]),
        ("arp_unknown_ip", "net.drop_arp_miss",
         [eth(bc, pod_mac, 0x0806, arp(1, pod_mac, pod_ip, "10.244.99.99"))]),
        ("multicast", "net.drop_bum", [eth("01:00:5e:01:02:03", pod_mac, 0x0800, b"\0" * 46)]),
    ]


def tcp4(dst: str, src: str, payload: bytes, proto: int = 6, ipopts: bytes = b"",
         frag: int = 0x4000, ip_len_delta: int = 0) -> bytes:
    """An Ethernet + IPv4 + TCP (20-byte header) frame 10.244.1.2 -> 10.244.2.2; proto and the
    IPv4 fields can be made to lie (the TCP header stays, whatever proto says)."""
    l4 = (1000).to_bytes(2, "big") + (2000).to_bytes(2, "big") + (1).to_bytes(4, "big") \
        + bytes(4) + bytes([5 << 4, 0x18]) + b"\xff\xff" + bytes(4) + payload
    ip = bytearray(ipv4("10.244.1.2", "10.244.2.2", ipopts + l4, frag=frag, proto=proto))
    if ipopts:
        ip[0] = 0x45 + len(ipopts) // 4
    ip[2:4] = (len(ip) + ip_len_delta).to_bytes(2, "big")
    return eth(dst, src, 0x0800, bytes(ip))


def vnet(flags: int = 0, gso_type: int = 0, hdr_len: int = 0, gso_size: int = 0,
         csum_start: int = 0, csum_offset: int = 0) -> bytes:
    """struct virtio_net_hdr (fastpath/vnet.pxd), little-endian."""
    return bytes([flags, gso_type]) + b"".join(
        v.to_bytes(2, "little") for v in (hdr_len, gso_size, csum_start, csum_offset))


# a valid TSO4 header for tcp4(..., 4000 bytes): 54 header bytes, MSS 1000 -> 4 segments
TSO4 = dict(flags=1, gso_type=1, hdr_len=54, gso_size=1000, csum_start=34, csum_offset=16)


def vnet_kinds(peer_mac: str, pod_mac: str) -> list[tuple[str, str | None, list[bytes]]]:
    """(kind, the drop counter it must land in, [one TAP read: virtio-net header + frame]) for
    lying virtio-net headers (issue 12 scenario 1 with offloads). Every frame is addressed to a
    known peer, so a lie that got through would be forwarded, not dropped. Two valid kinds
    (counter None) ride along: they must be forwarded, all of them."""
    pay = bytes(range(256)) * 16                                   # 4096 bytes
    tcp = tcp4(peer_mac, pod_mac, pay[:4000])                     # 4054-byte frame
    small = tcp4(peer_mac, pod_mac, pay[:446])                    # 500-byte frame
    udp_ = eth(peer_mac, pod_mac, 0x0800, ipv4("10.244.1.2", "10.244.2.2",
                                               udp(1000, 2000, pay[:1358])))  # 1400 bytes
    ipv6 = eth(peer_mac, pod_mac, 0x86DD, b"\x60" + bytes(3) + (4000).to_bytes(2, "big")
               + b"\x06\x40" + bytes(32) + pay[:4000])

    def t(**kw: int) -> bytes:
        return vnet(**{**TSO4, **kw})
    uso = dict(flags=1, gso_type=5, hdr_len=42, csum_start=34, csum_offset=6)
    big = tcp + bytes(65600 - len(tcp))          # read() cuts it at 10 + 65551 bytes
    return [
        ("valid_plain", None, [vnet() + small]),
        ("valid_tso", None, [t() + tcp]),
        ("vnet_truncated", "net.drop_tx_short", [vnet(flags=1, gso_type=1)[:3]]),
        ("vnet_header_only", "net.drop_tx_short", [t()]),
        ("vnet_runt_frame", "net.drop_tx_short", [t() + tcp[:10]]),
        ("flags_unknown", "net.drop_vnet_bad_flags", [vnet(flags=0x10) + small]),
        ("flags_rsc_info", "net.drop_vnet_bad_flags", [vnet(flags=4) + small]),
        ("gso_type_unknown", "net.drop_gso_bad_type", [t(gso_type=2) + tcp]),
        ("gso_type_ufo", "net.drop_gso_bad_type", [t(gso_type=3, csum_offset=6) + udp_]),
        ("gso_ecn", "net.drop_gso_ecn", [t(gso_type=0x81) + tcp]),
        ("gso_size_0", "net.drop_gso_bad_size", [t(gso_size=0) + tcp]),
        ("gso_size_over_frame", "net.drop_gso_bad_size", [t(gso_size=5000) + tcp]),
        ("hdr_len_over_frame", "net.drop_vnet_bad_hdr_len", [t(hdr_len=9000) + tcp]),
        ("csum_start_over_frame", "net.drop_vnet_bad_csum",
         [vnet(flags=1, csum_start=4000, csum_offset=16) + small]),
        ("csum_offset_over_frame", "net.drop_vnet_bad_csum",
         [vnet(flags=1, csum_start=34, csum_offset=60000) + small]),
        ("csum_in_ethernet", "net.drop_vnet_bad_csum", [vnet(flags=1) + small]),
        ("tso_without_csum", "net.drop_gso_no_csum", [t(flags=0) + tcp]),
        ("tso_on_udp", "net.drop_gso_bad_headers", [t(hdr_len=42) + udp_]),
        ("uso_on_tcp", "net.drop_gso_bad_headers", [vnet(**uso, gso_size=1000) + tcp]),
        ("tso_on_icmp", "net.drop_gso_not_tcp_udp",
         [t() + tcp4(peer_mac, pod_mac, pay[:4000], proto=1)]),
        ("tso_ip_options", "net.drop_gso_ip_options",
         [t(hdr_len=58, csum_start=38) + tcp4(peer_mac, pod_mac, pay[:4000], ipopts=b"\1\1\1\0")]),
        ("tso4_on_ipv6", "net.drop_gso_bad_headers", [t(hdr_len=74, csum_start=54) + ipv6]),
        ("tso_csum_start_wrong", "net.drop_gso_bad_headers", [t(csum_start=38) + tcp]),
        ("tso_csum_offset_wrong", "net.drop_gso_bad_headers", [t(csum_offset=6) + tcp]),
        ("tso_ip_len_lie", "net.drop_gso_bad_headers",
         [t() + tcp4(peer_mac, pod_mac, pay[:4000], ip_len_delta=-100)]),
        ("tso_ip_fragment", "net.drop_gso_bad_headers",
         [t() + tcp4(peer_mac, pod_mac, pay[:4000], frag=0x2000)]),
        ("tso_mss_over_mtu", "net.drop_gso_too_big", [t(gso_size=1460) + tcp]),
        ("uso_too_many_segs", "net.drop_gso_too_many_segs", [vnet(**uso, gso_size=8) + udp_]),
        ("gso_frame_over_64k", "net.drop_tx_too_big", [t() + big]),
        ("plain_over_mtu", "net.drop_tx_too_big", [vnet() + tcp]),
    ]


VALID_VNET_SEGS = {"valid_plain": 1, "valid_tso": 4}
PROBE_REPS = 100          # copies of each lie the kernel lets a pod send (vnet_outside)


def sender_spec(kinds: list[tuple[str, str, list[bytes]]], total: int, rate: int,
                **extra: Any) -> dict[str, Any]:
    packets: list[str] = []
    unit_of: list[int] = []
    for k, (_name, _ctr, pkts) in enumerate(kinds):
        for j, p in enumerate(pkts):
            packets.append(p.hex())
            unit_of.append(k if j == len(pkts) - 1 else -1)   # counted when the last is sent
    return {"kinds": [k[0] for k in kinds], "packets": packets, "unit_of": unit_of,
            "total": total, "rate": rate, **extra}


# -------------------------------------------------------------------------------------------
# Measurements
# -------------------------------------------------------------------------------------------

def parse_ping(text: str) -> dict[str, Any]:
    """`ping -D` output -> sent, received, longest gap between replies (ms)."""
    ts = [float(m.group(1)) for m in re.finditer(r"^\[(\d+\.\d+)\] \d+ bytes from", text, re.M)]
    m = re.search(r"(\d+) packets transmitted, (\d+) received", text)
    sent, recv = (int(m.group(1)), int(m.group(2))) if m else (0, len(ts))
    gaps = [b - a for a, b in zip(ts, ts[1:])]
    return {"sent": sent, "received": recv, "lost": max(0, sent - recv),
            "max_gap_ms": round(max(gaps, default=0.0) * 1000, 1), "reply_times": ts}


class Traffic:
    """TCP stream pod1 -> pod2 and pings at 10 ms pod1 -> pod2 and pod1 -> pod3, in the
    background from start() to stop()."""

    def __init__(self, t: topo.Topology, tcp_rate: int, label: str) -> None:
        self.t, self.tcp_rate, self.label = t, tcp_rate, label
        self.procs: dict[str, topo.BgProcess] = {}

    def start(self) -> Traffic:
        t, p1, p2, p3 = self.t, self.t.pod(1), self.t.pod(2), self.t.pod(3)
        n = len(t.procs)
        rcv = t.start([sys.executable, "-c", _TCP_STREAM, "recv", TCP_PORT], p2.ns,
                      name=f"tcprecv-{self.label}-{n}")
        rcv.wait_output("listening", timeout=10)
        self.procs["tcp_recv"] = rcv
        self.procs["tcp_send"] = t.start([sys.executable, "-c", _TCP_STREAM, "send", p2.ip,
                                          TCP_PORT, self.tcp_rate], p1.ns,
                                         name=f"tcpsend-{self.label}-{n}")
        for key, dst in (("ping_vxtap", p2), ("ping_kernel", p3)):
            self.procs[key] = t.start(["ping", "-D", "-n", "-i", PING_INTERVAL, "-W", "1",
                                       dst.ip], p1.ns, name=f"{key}-{self.label}-{n}")
        time.sleep(0.3)
        return self

    def stop(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in ("ping_vxtap", "ping_kernel"):
            p = self.procs[key]
            p.stop(sig=signal.SIGINT, timeout=5)
            out[key] = parse_ping(p.stdout_text())
        for key in ("tcp_send", "tcp_recv"):
            p = self.procs[key]
            p.stop(timeout=5)
            try:
                out[key] = json.loads(p.stdout_text().strip().splitlines()[-1])
            except (IndexError, json.JSONDecodeError):
                out[key] = {"error": f"no result; stderr {p.stderr_text()[-300:]!r}"}
        return out


def agent_tables(a: topo.Agent) -> tuple[dict[Any, Any], dict[Any, Any]]:
    fdb = a.request("show", what="fdb")["rows"]
    neigh = a.request("show", what="neigh")["rows"]
    return ({m: (v, p) for m, v, p in fdb}, {ip: m for ip, m in neigh})


def wrong_entries(a: topo.Agent, etcd: EtcdServer, node: str) -> int:
    """Entries that differ between the agent's tables and what etcd says it should hold."""
    from tests.etcd_server import etcd_desired
    want = etcd_desired(etcd, NETWORK, node)
    fdb, neigh = agent_tables(a)
    wf = {m: vp for (_v, m), vp in want.fdb.items()}
    wn = {ip: m for (_v, ip), m in want.neigh.items()}
    return (len(set(fdb.items()) ^ set(wf.items()))
            + len(set(neigh.items()) ^ set(wn.items())))


def proc_usage(pid: int) -> dict[str, int]:
    rss = 0
    with contextlib.suppress(OSError):
        m = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
        rss = int(m.group(1)) if m else 0
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        fds = 0
    return {"rss_kb": rss, "fds": fds}


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope dy/dx (0 with fewer than two points)."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0


def ns_kernel_counters(ns: str) -> dict[str, int]:
    """Counters of the kernel that can lose an input before the agent sees it."""
    out: dict[str, int] = {}
    cp = topo.run(["cat", "/proc/net/snmp"], ns, timeout=10, check=False)
    lines = cp.stdout.splitlines()
    for head, vals in zip(lines[::2], lines[1::2]):
        names, nums = head.split()[1:], vals.split()[1:]
        proto = head.split(":")[0]
        for k, v in zip(names, nums):
            if (proto, k) in (("Udp", "RcvbufErrors"), ("Udp", "InErrors"), ("Ip", "ReasmFails"),
                              ("Ip", "InDiscards"), ("Udp", "InCsumErrors")):
                out[f"{proto}.{k}"] = int(v)
    cp = topo.run(["ip", "-s", "-j", "link"], ns, timeout=10, check=False)
    for link in json.loads(cp.stdout or "[]"):
        s = link.get("stats64") or link.get("stats") or {}
        for d in ("rx", "tx"):
            out[f"{link['ifname']}.{d}_dropped"] = int(s.get(d, {}).get("dropped", 0))
    return out


def diff(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: b[k] - a.get(k, 0) for k in b if b[k] != a.get(k, 0)}


def drop_counters(st: dict[str, Any]) -> dict[str, int]:
    """Every drop counter of the agent (one network): its own drop_* counters, and the kernel
    drops it reports (underlay socket buffer full, TAP queue full)."""
    out = {f"global.{k}": v for k, v in st["global"].items() if k.startswith("drop_")}
    for k, v in st["networks"][0]["counters"].items():
        if k.startswith("drop_"):
            out[f"net.{k}"] = v
    for k, v in st.get("kernel", {}).items():
        out[f"kernel.{k}"] = v
    for k, v in st["networks"][0].get("kernel", {}).items():
        out[f"net.kernel.{k}"] = v
    return out


# -------------------------------------------------------------------------------------------
# The harness
# -------------------------------------------------------------------------------------------

class Chaos:
    def __init__(self, cfg: Config, log: Callable[[str], None] | None = None,
                 prefix: str | None = None) -> None:
        self.cfg = cfg
        self.log = log or (lambda m: print(m, file=sys.stderr, flush=True))
        self.prefix = prefix
        self.etcd: EtcdServer | None = None
        self.proxy: TcpProxy | None = None
        self.t: topo.Topology | None = None
        self.agents: dict[int, topo.Agent] = {}
        self.expected_deaths: set[int] = set()
        self.results: list[dict[str, Any]] = []
        self.extra_eps = 0
        self.t0 = time.monotonic()

    # ---- set-up / tear-down -----------------------------------------------------------------
    def __enter__(self) -> Chaos:
        try:
            self.setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def setup(self) -> None:
        self.log("== etcd, 3 nodes (vxtap, vxtap, kernel VXLAN), pods")
        self.etcd = EtcdServer(name="vxtap-chaos")
        self.etcd.start()
        self.proxy = TcpProxy(self.etcd.client_port)
        self.t = t = topo.Topology(nodes=3, pods=1, prefix=self.prefix)
        t.build()
        self.layout = __import__("control.keys", fromlist=["Layout"]).Layout("/vxtap", NETWORK)
        from control.records import BlockRecord, NetworkConfig
        c = etcd_client(self.etcd)
        try:
            c.put(self.layout.config, NetworkConfig(vni=VNI, subnet="10.244.0.0/16").to_json())
            for n in (1, 2):   # blocks clear of the topology's pod addresses
                c.put(self.layout.block(f"10.244.{n * 10}.0/24"),
                      BlockRecord(f"node{n}").to_json())
        finally:
            c.close()
        for n in (1, 2):
            self.agents[n] = self.start_agent(n)
        n3 = t.node(3)
        dev = t.add_kernel_vxlan(n3, fdb=[(p.mac, p.node.ip, p.node.vxlan_port)
                                          for p in t.remote_pods(n3)])
        vx_mac = json.loads(topo.run(["ip", "-j", "link", "show", dev], n3.ns).stdout)[0]["address"]
        self.put(self.layout.node("node3"), {"underlay": n3.ip, "port": topo.VXLAN_PORT,
                                             "tap_mac": vx_mac})
        for pod in t.pods:
            self.put_endpoint(pod.ns, pod.node.index, pod.mac, f"{pod.ip}/16")
        self.wait_converged(20)
        for dst in (t.pod(2), t.pod(3)):
            t.pod(1).ping(dst, count=3, interval=0.1)
        self.log(f"   ready in {time.monotonic() - self.t0:.1f} s: namespaces {t.prefix}*, "
                 f"agents pid {self.agents[1].proc.pid}, {self.agents[2].proc.pid}")

    def close(self) -> None:
        if self.t is not None:
            self.t.close()
            self.t = None
        if self.proxy is not None:
            self.proxy.cut()
            self.proxy = None
        if self.etcd is not None:
            self.etcd.cleanup()
            self.etcd = None

    def start_agent(self, n: int) -> topo.Agent:
        assert self.t is not None and self.proxy is not None
        return self.t.add_vxtap_agent(self.t.node(n), fdb=[], neigh=[], extra=[
            "--etcd", self.proxy.url, "--network", NETWORK, "--node", f"node{n}",
            "--lease-ttl", LEASE_TTL], ready_timeout=30)

    # ---- etcd helpers -----------------------------------------------------------------------
    @contextlib.contextmanager
    def client(self) -> Iterator[Any]:
        assert self.etcd is not None
        c = etcd_client(self.etcd)
        try:
            yield c
        finally:
            c.close()

    def put(self, key: str, value: dict[str, Any]) -> None:
        with self.client() as c:
            c.put(key, json.dumps(value))

    def put_endpoint(self, cid: str, node: int, mac_: str, ip: str) -> None:
        self.put(self.layout.endpoint(cid, "eth0"),
                 {"mac": mac_, "ip": ip, "node": f"node{node}", "vni": VNI})

    def del_endpoint(self, cid: str) -> None:
        with self.client() as c:
            c.delete(self.layout.endpoint(cid, "eth0"))

    def fake_endpoint(self, node: int = 2) -> str:
        """A new endpoint record for a pod that does not exist (no traffic to it)."""
        self.extra_eps += 1
        k = self.extra_eps
        cid = f"chaos{k}"
        self.put_endpoint(cid, node, f"02:00:00:{node:02x}:{k >> 8 & 0xff:02x}:{k & 0xff:02x}",
                          f"10.244.{100 + node}.{k % 250 + 2}/16")
        return cid

    def wrong(self) -> dict[str, int]:
        assert self.etcd is not None
        return {f"node{n}": wrong_entries(a, self.etcd, f"node{n}") for n, a in self.agents.items()}

    def wait_converged(self, timeout: float) -> float | None:
        """Seconds until both agents hold etcd's tables; None if not within timeout."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            try:
                if not any(self.wrong().values()):
                    return time.monotonic() - t0
            except (OSError, topo.AgentError):
                pass
            time.sleep(0.02)
        return None

    # ---- per-scenario bookkeeping ----------------------------------------------------------
    def _snapshot(self) -> dict[str, Any]:
        snap: dict[str, Any] = {}
        for n, a in self.agents.items():
            snap[n] = {"pid": a.proc.pid, "usage": proc_usage(a.proc.pid),
                       "log_lines": len(a.stderr_text().splitlines()),
                       "tracebacks": a.stderr_text().count("Traceback")}
        return snap

    def scenario(self, name: str, body: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        assert self.t is not None
        k = len(self.results) + 1
        self.log(f"[{k}/{len(self.cfg.scenarios)} {_fmt(time.monotonic() - self.t0)}] "
                 f"{name} ...")
        res: dict[str, Any] = {"scenario": name, "ok": True, "notes": [], "checks": {}}
        before = self._snapshot()
        traffic = Traffic(self.t, self.cfg.tcp_rate, name).start()
        t0 = time.monotonic()
        try:
            body(res)
        except Exception as e:  # noqa: BLE001 -- record it, keep the other scenarios
            res["ok"] = False
            res["error"] = f"{type(e).__name__}: {e}"
            self.log(f"   ERROR {res['error']}")
        finally:
            res["seconds"] = round(time.monotonic() - t0, 1)
            res["traffic"] = traffic.stop()
        for key in ("ping_vxtap", "ping_kernel"):
            res["traffic"][key].pop("reply_times", None)
        after = self._snapshot()
        crashes, logs, tbs, drift = 0, 0, 0, {}
        for n, a in self.agents.items():
            b, f = before.get(n), after[n]
            if not a.proc.alive and a.proc.pid not in self.expected_deaths:
                crashes += 1
            same = b is not None and b["pid"] == f["pid"]
            logs += f["log_lines"] - (b["log_lines"] if same else 0)
            tbs += f["tracebacks"] - (b["tracebacks"] if same else 0)
            if same:
                drift[f"node{n}"] = {"rss_kb": f["usage"]["rss_kb"] - b["usage"]["rss_kb"],
                                     "fds": f["usage"]["fds"] - b["usage"]["fds"]}
        res.update(crashes=crashes + tbs + res.pop("extra_crashes", 0), log_lines=logs,
                   drift=drift)
        try:
            res["wrong_entries"] = sum(self.wrong().values())
        except (OSError, topo.AgentError) as e:
            res["wrong_entries"] = None
            res["notes"].append(f"tables unreadable: {e}")
        self._judge(res)
        self.results.append(res)
        self.log("   " + summary_line(res))
        return res

    def _judge(self, res: dict[str, Any]) -> None:
        ch = res["checks"]
        ch["no_crash"] = res["crashes"] == 0
        ch["no_wrong_entries"] = res["wrong_entries"] == 0
        ch["logs_bounded"] = res["log_lines"] <= res.pop("log_budget", 40)
        tr = res["traffic"]
        ch["tcp_unbroken"] = not tr["tcp_send"].get("error") and not tr["tcp_recv"].get("error")
        if res.pop("zero_loss", False):
            ch["zero_ping_loss"] = tr["ping_vxtap"]["lost"] == 0 and tr["ping_kernel"]["lost"] == 0
        res["ok"] = res["ok"] and all(ch.values())

    # ---- scenarios --------------------------------------------------------------------------
    def run(self) -> list[dict[str, Any]]:
        bodies = {"bad_inputs": self.s_bad_inputs, "etcd_down": self.s_etcd_down,
                  "restart": self.s_restart, "compaction": self.s_compaction,
                  "soak": self.s_soak, "exhaustion": self.s_exhaustion}
        for name in self.cfg.scenarios:
            self.scenario(name, bodies[name])
            if not all(a.proc.alive for a in self.agents.values()):   # keep going: restart it
                for n, a in list(self.agents.items()):
                    if not a.proc.alive:
                        self.log(f"   agent node{n} is dead; restarting it for the next scenario")
                        self.expected_deaths.add(a.proc.pid)
                        self._replace_agent(n)
        return self.results

    def _replace_agent(self, n: int) -> None:
        assert self.t is not None
        old = self.agents[n]
        self.t.agents.remove(old)
        self.agents[n] = self.start_agent(n)

    def s_bad_inputs(self, res: dict[str, Any]) -> None:
        assert self.t is not None
        t, cfg, a1 = self.t, self.cfg, self.agents[1]
        n1, n2 = t.node(1), t.node(2)
        p1 = t.pod(1)
        ul_kinds = underlay_kinds(n2.ip, n1.ip, n2.pods[0].mac, p1.mac)
        tap_kinds_ = tap_kinds(p1.mac, p1.ip, t.pod(2).ip)
        n_tap = max(len(tap_kinds_), cfg.bad_inputs // 5)
        k0 = {ns: ns_kernel_counters(ns) for ns in t.namespaces if "p" not in ns[len(t.prefix):]}
        k0[p1.ns] = ns_kernel_counters(p1.ns)
        d0 = drop_counters(a1.stats())
        specs = []
        for label, kinds, total, ns, extra in (
                ("underlay", ul_kinds, cfg.bad_inputs, n2.ns, {"dst": n1.ip}),
                ("tap", tap_kinds_, n_tap, p1.ns, {"dev": p1.dev})):
            path = t.workdir / f"bad-{label}.json"
            path.write_text(json.dumps(sender_spec(kinds, total, cfg.rate // 2, **extra)))
            specs.append((label, kinds, t.start([sys.executable, "-c", _SENDER, path], ns,
                                                name=f"bad-{label}")))
        sent: dict[str, dict[str, int]] = {}
        for label, _kinds, proc in specs:
            rc = proc.wait(timeout=cfg.bad_inputs / cfg.rate * 4 + 60)
            if rc != 0:
                raise RuntimeError(f"{label} sender failed: {proc.stderr_text()[-500:]}")
            sent[label] = json.loads(proc.stdout_text().strip().splitlines()[-1])["per_kind"]
        time.sleep(1.0)        # let the agent drain its queues
        d1 = drop_counters(a1.stats())
        got = diff(d0, d1)
        k1 = {ns: ns_kernel_counters(ns) for ns in k0}
        kernel = {f"{ns[len(t.prefix):]}:{k}": v for ns in k0
                  for k, v in diff(k0[ns], k1[ns]).items() if v > 0}
        expect: dict[str, int] = {}
        for label, kinds, _p in specs:
            for name, ctr, _pk in kinds:
                expect[ctr] = expect.get(ctr, 0) + sent[label][name]
        total_sent = sum(sum(v.values()) for v in sent.values())
        total_drops = sum(got.values())
        lost_in_kernel = sum(kernel.values())
        res.update(inputs=total_sent, sent=sent, drop_deltas=got, expected=expect,
                   kernel_drops=kernel, unaccounted=total_sent - total_drops)
        res["checks"]["drops_sum_to_inputs"] = total_drops == total_sent
        in_kernel = sum(v for k, v in got.items() if ".kernel." in k or k.startswith("kernel."))
        if in_kernel == 0:
            res["checks"]["each_kind_in_its_counter"] = got == {k: v for k, v in expect.items()
                                                                if v}
        else:
            res["notes"].append(f"{in_kernel} inputs dropped by the kernel before the agent "
                                "read them (counted by the agent's kernel counters): the "
                                "per-kind check is skipped")
        if lost_in_kernel:
            res["notes"].append(f"kernel counters before the agent moved: {kernel}")
        res["log_budget"] = 40
        self.log(f"   sent {total_sent} bad inputs ({sent['underlay'] and sum(sent['underlay'].values())} "
                 f"underlay, {sum(sent['tap'].values())} TAP); agent drop counters +{total_drops}")
        if cfg.vnet_inputs:
            self._vnet_lies(res)

    def _vnet_lies(self, res: dict[str, Any]) -> None:
        """Lying virtio-net headers: the outside probe, then the in-process barrage."""
        assert self.t is not None
        t, cfg, a1 = self.t, self.cfg, self.agents[1]
        p1 = t.pod(1)
        kinds = vnet_kinds(t.pod(2).mac, p1.mac)
        lies = [k for k in kinds if k[1] is not None]
        # 1. from outside: pod 1 -> the agent's TAP, PACKET_VNET_HDR. Each lie once: what does
        # the kernel say? Then each lie it took, PROBE_REPS times, alone: either the kernel
        # normalised it (no vnet/gso counter moves: the TAP read gave a header the tun driver
        # wrote) or it reached the agent as a lie and must be in exactly its one counter.
        ctr_of = {k: c for k, c, _p in lies}

        def probe(names: list[str], reps: int) -> tuple[dict[str, str], dict[str, int]]:
            path = t.workdir / "vnet-probe.json"
            path.write_text(json.dumps({"dev": p1.dev, "kinds": names, "reps": reps, "packets": [
                p[0].hex() for k, _c, p in lies if k in names]}))
            d0 = drop_counters(a1.stats())
            cp = topo.run([sys.executable, "-c", _VNET_PROBE, path], p1.ns, timeout=30,
                          check=False)
            time.sleep(0.3)
            moved = {k: v for k, v in diff(d0, drop_counters(a1.stats())).items()
                     if "vnet_" in k or "gso_" in k}
            try:
                return json.loads(cp.stdout.strip().splitlines()[-1]), moved
            except (IndexError, json.JSONDecodeError):
                raise RuntimeError(f"virtio-net probe failed: {cp.stderr[-300:]}") from None
        verdicts, _ = probe([k for k, _c, _p in lies if k != "gso_frame_over_64k"], 1)
        refused = {k: v for k, v in verdicts.items() if v != "sent"}
        reached: dict[str, dict[str, int]] = {}
        normalised: list[str] = []
        wrong: dict[str, dict[str, int]] = {}
        for k in sorted(set(verdicts) - set(refused)):
            _v, moved = probe([k], PROBE_REPS)
            if not moved:
                normalised.append(k)
            elif moved == {ctr_of[k]: PROBE_REPS}:
                reached[k] = moved
            else:
                wrong[k] = moved
        res["vnet_outside"] = {
            "how": f"pod 1 sends each lie with PACKET_VNET_HDR at node 1's TAP (once; then "
                   f"{PROBE_REPS}x each one the kernel took)",
            "kernel_refused": refused, "kernel_normalised": normalised,
            "reached_agent_and_counted": reached, "reached_agent_miscounted": wrong}
        res["checks"]["vnet_outside_counted_or_normalised"] = not wrong
        n_out = PROBE_REPS * (len(reached) + len(wrong))
        res["inputs"] += n_out
        res["unaccounted"] += n_out - sum(sum(m.values()) for m in (*reached.values(),
                                                                    *wrong.values()))
        self.log(f"   virtio-net lies from pod 1 (PACKET_VNET_HDR): {len(refused)}/{len(verdicts)} "
                 f"refused by the kernel, {len(normalised)} normalised by it, {len(reached)} "
                 f"reached the agent (each {PROBE_REPS}x in its counter: "
                 f"{', '.join(reached) or '-'}){'; MISCOUNTED ' + str(wrong) if wrong else ''}")
        # 2. in-process: the agent's Switch/underlay/Forwarder code on a socketpair 'TAP'
        spec2 = {"repo": str(HERE.parent), "vni": VNI, "port": 47000, "rate": cfg.rate // 2,
                 "total": cfg.vnet_inputs, "peer_mac": t.pod(2).mac,
                 "kinds": [k for k, _c, _p in kinds], "packets": [p[0].hex() for _k, _c, p in kinds],
                 "valid_segs": VALID_VNET_SEGS}
        path = t.workdir / "vnet-loop.json"
        path.write_text(json.dumps(spec2))
        proc = t.start([sys.executable, "-c", _VNET_LOOP, path], t.node(1).ns, name="vnet-loop")
        rc = proc.wait(timeout=cfg.vnet_inputs / max(1, cfg.rate // 2) * 4 + 90)
        if rc != 0:
            res["extra_crashes"] = 1
            raise RuntimeError(f"in-process virtio-net loop exited {rc} "
                               f"(a crash of the data-plane code?): {proc.stderr_text()[-800:]}")
        out = json.loads(proc.stdout_text().strip().splitlines()[-1])
        expect: dict[str, int] = {}
        for name, ctr, _p in lies:
            key = ctr.split(".", 1)[1]
            expect[key] = expect.get(key, 0) + out["per_kind"][name]
        got = {k: v for k, v in out["deltas"].items() if k.startswith("drop_")}
        sent = sum(out["per_kind"].values())
        log_lines = [ln for ln in proc.stderr_text().splitlines() if ln.strip()]
        res["vnet_inprocess"] = {
            "how": "the agent's Switch(offload=True) + UDP pool + Forwarder run_all thread in node "
                   "1's namespace on loopback, a SOCK_SEQPACKET socketpair as the TAP fd",
            "sent": out["per_kind"], "inputs": sent, "drop_deltas": got, "expected": expect,
            "unaccounted": sent - sum(got.values()), "valid": {
                k: out[k] for k in ("valid_sent", "valid_dgrams_expected",
                                    "valid_dgrams_received", "receiver_kernel_drops")},
            "loop_alive": out["loop_alive"], "forwarding_after": out["forwarding_after"],
            "seconds": round(out["seconds"], 1), "log_lines": len(log_lines)}
        ch = res["checks"]
        ch["vnet_each_kind_in_its_counter"] = got == {k: v for k, v in expect.items() if v}
        ch["vnet_valid_all_forwarded"] = (out["valid_dgrams_received"]
                                          == out["valid_dgrams_expected"])
        ch["vnet_loop_alive_and_forwarding"] = out["loop_alive"] and out["forwarding_after"]
        ch["vnet_logs_bounded"] = len(log_lines) <= 5
        res["inputs"] += sent
        res["unaccounted"] += sent - sum(got.values())
        ch["drops_sum_to_inputs"] = ch["drops_sum_to_inputs"] and sent == sum(got.values())
        self.log(f"   virtio-net lies in-process: {sent} sent ({len(lies)} kinds) in "
                 f"{out['seconds']:.1f} s, drop counters +{sum(got.values())}; valid datagrams "
                 f"{out['valid_dgrams_received']}/{out['valid_dgrams_expected']}")

    def s_etcd_down(self, res: dict[str, Any]) -> None:
        assert self.etcd is not None
        self.etcd.stop()
        t_stop = time.monotonic()
        self.log(f"   etcd stopped; waiting {self.cfg.etcd_down:g} s")
        while time.monotonic() - t_stop < self.cfg.etcd_down:
            time.sleep(0.5)
            for n, a in self.agents.items():
                if not a.proc.alive:
                    raise RuntimeError(f"agent node{n} died while etcd was down")
        self.etcd.start()
        t_back = time.monotonic()
        cid = self.fake_endpoint(2)
        write = time.monotonic() - t_back
        conv = self.wait_converged(30)
        res.update(inputs=f"{self.cfg.etcd_down:g} s outage", reconverge_s=conv,
                   write_after_return_s=round(write, 3), change=cid)
        st = {n: a.request("control_status") for n, a in self.agents.items()}
        res["control_status"] = {f"node{n}": {k: s.get(k) for k in ("connected", "last_error",
                                                                    "resyncs")}
                                 for n, s in st.items()}
        res["checks"]["change_reached_agents"] = conv is not None
        res["checks"]["reconverge_le_2s"] = conv is not None and conv + write <= 2.0
        res["zero_loss"] = True
        if conv is not None:
            res["reconverge_s"] = round(conv + write, 3)

    def s_restart(self, res: dict[str, Any]) -> None:
        assert self.t is not None
        a1, a2 = self.agents[1], self.agents[2]
        p1mac = self.t.pod(1).mac
        seen_gone = []
        self.expected_deaths.add(a1.proc.pid)
        t_kill = time.monotonic()
        a1.proc.stop(sig=signal.SIGKILL)
        self.log("   node1's agent SIGKILLed; restarting it in 1 s")
        while time.monotonic() - t_kill < 1.0:
            if p1mac not in agent_tables(a2)[0]:
                seen_gone.append(round(time.monotonic() - t_kill, 2))
            time.sleep(0.05)
        self.t.agents.remove(a1)
        t_start = time.monotonic()
        self.agents[1] = a1 = self.start_agent(1)
        ready = time.monotonic() - t_start
        # forwarding again: first reply of a ping sent now
        fwd = None
        while time.monotonic() - t_start < 20:
            st = topo.ping(self.t.pod(1).ns, self.t.pod(2).ip, count=1, interval=0.2,
                           deadline=1, check=False)
            if st.received:
                fwd = time.monotonic() - t_start
                break
        for _ in range(20):
            if p1mac not in agent_tables(a2)[0]:
                seen_gone.append(round(time.monotonic() - t_kill, 2))
            time.sleep(0.05)
        conv = self.wait_converged(15)
        links = json.loads(topo.run(["ip", "-j", "-d", "link", "show"], self.t.node(1).ns).stdout)
        taps = [x for x in links if x["ifname"] == a1.tap]
        master = taps[0].get("master") if taps else None
        res.update(inputs="SIGKILL + restart after 1 s", agent_ready_s=round(ready, 2),
                   forwarding_again_s=None if fwd is None else round(fwd, 2),
                   reconverge_s=None if conv is None else round(conv, 2),
                   peer_dropped_node_at=seen_gone, tap_master=master)
        res["checks"]["forwarding_again"] = fwd is not None
        res["checks"]["peer_kept_node"] = not seen_gone
        res["checks"]["tap_on_bridge"] = len(taps) == 1 and master == self.t.node(1).bridge

    def s_compaction(self, res: dict[str, Any]) -> None:
        assert self.proxy is not None and self.etcd is not None
        logs0 = {n: len(a.stderr_text().splitlines()) for n, a in self.agents.items()}
        resyncs0 = {n: a.request("control_status").get("resyncs", 0) for n, a in self.agents.items()}
        # 1. compaction while the agents are cut off
        self.proxy.cut()
        cids = [self.fake_endpoint(2) for _ in range(25)]
        for cid in cids[:12]:
            self.del_endpoint(cid)
        out = self.etcd.etcdctl("endpoint", "status", "-w", "json")
        rev = json.loads(out)[0]["Status"]["header"]["revision"]
        self.etcd.etcdctl("compaction", str(rev))
        self.proxy.restore()
        conv1 = self.wait_converged(20)

        def resyncs() -> dict[int, int]:
            return {n: a.request("control_status").get("resyncs", 0)
                    for n, a in self.agents.items()}
        t_wait = time.monotonic()       # the counter moves just after the tables are applied
        resyncs1 = resyncs()
        while any(v <= resyncs0[n] for n, v in resyncs1.items()) \
                and time.monotonic() - t_wait < 5:
            time.sleep(0.05)
            resyncs1 = resyncs()
        # 2. rollback: snapshot, 20 endpoints, restore the snapshot, one more endpoint
        snap = Path(self.etcd.data_dir) / "chaos.snap"
        self.etcd.etcdctl("snapshot", "save", str(snap))
        for _ in range(20):
            self.fake_endpoint(2)
        conv_pre = self.wait_converged(20)
        self.etcd.stop()
        data = Path(self.etcd.data_dir) / "data"
        shutil.rmtree(data)
        peer = f"http://127.0.0.1:{self.etcd.peer_port}"
        env = dict(os.environ, ETCDCTL_API="3")
        subprocess.run(["etcdctl", "snapshot", "restore", str(snap), "--data-dir", str(data),
                        "--name", self.etcd.name, "--initial-cluster", f"{self.etcd.name}={peer}",
                        "--initial-advertise-peer-urls", peer], env=env, check=True,
                       capture_output=True, timeout=60)
        self.etcd.start()
        t_back = time.monotonic()
        cid = self.fake_endpoint(2)
        conv2 = self.wait_converged(20)
        if conv2 is not None:
            conv2 = round(time.monotonic() - t_back, 2)     # from etcd's return
        logs = {n: len(a.stderr_text().splitlines()) - logs0[n] for n, a in self.agents.items()}
        res.update(inputs="compaction + snapshot rollback",
                   reconverge_s=None if conv1 is None or conv2 is None else round(max(conv1, conv2), 2),
                   compaction_reconverge_s=conv1, rollback_reconverge_s=conv2,
                   before_rollback_converged=conv_pre is not None,
                   resyncs={f"node{n}": resyncs1[n] - resyncs0[n] for n in self.agents},
                   log_lines_per_agent=logs, last_change=cid)
        res["checks"]["compaction_converged"] = conv1 is not None
        res["checks"]["resynced_after_compaction"] = all(resyncs1[n] > resyncs0[n]
                                                         for n in self.agents)
        res["checks"]["rollback_converged"] = conv2 is not None
        res["log_budget"] = 30

    def s_soak(self, res: dict[str, Any]) -> None:
        cfg = self.cfg
        samples: dict[int, list[tuple[float, int, int]]] = {n: [] for n in self.agents}
        t0 = time.monotonic()
        next_sample = next_churn = t0
        prev: str | None = None
        churns = 0
        while time.monotonic() - t0 < cfg.soak:
            now = time.monotonic()
            if now >= next_sample:
                for n, a in self.agents.items():
                    u = proc_usage(a.proc.pid)
                    samples[n].append((now - t0, u["rss_kb"], u["fds"]))
                next_sample += cfg.sample
                self.log(f"   soak {now - t0:5.0f}/{cfg.soak:g} s: " + ", ".join(
                    f"node{n} rss {s[-1][1]} kB fds {s[-1][2]}" for n, s in samples.items()))
            if now >= next_churn:
                cid = self.fake_endpoint(2 if churns % 2 else 1)
                if prev:
                    self.del_endpoint(prev)
                prev, churns = cid, churns + 1
                next_churn += cfg.churn
            time.sleep(0.05)
        if prev:
            self.del_endpoint(prev)
        conv = self.wait_converged(15)
        slopes = {}
        for n, s in samples.items():
            xs = [x / 60 for x, _r, _f in s]
            slopes[f"node{n}"] = {"rss_kb_per_min": round(slope(xs, [r for _x, r, _f in s]), 1),
                                  "fds_per_min": round(slope(xs, [f for _x, _r, f in s]), 2),
                                  "rss_kb_first_last": (s[0][1], s[-1][1]) if s else None,
                                  "fds_first_last": (s[0][2], s[-1][2]) if s else None}
        res.update(inputs=f"{cfg.soak:g} s, {churns} endpoint churns", slopes=slopes,
                   samples={f"node{n}": s for n, s in samples.items()},
                   reconverge_s=None if conv is None else round(conv, 2))
        # flat within noise: < 1 % of RSS per 10 minutes beyond the first sample, no fd growth
        for n, sl in slopes.items():
            rss0 = sl["rss_kb_first_last"][0] if sl["rss_kb_first_last"] else 1
            res["checks"][f"{n}_rss_flat"] = sl["rss_kb_per_min"] * 10 <= max(0.01 * rss0, 512)
            res["checks"][f"{n}_fds_flat"] = sl["fds_first_last"] is None or \
                sl["fds_first_last"][1] <= sl["fds_first_last"][0] + 1
        res["log_budget"] = 20 + 2 * churns

    def s_exhaustion(self, res: dict[str, Any]) -> None:
        assert self.t is not None
        t, cfg, a1 = self.t, self.cfg, self.agents[1]
        n1, p1, p2 = t.node(1), t.pod(1), t.pod(2)
        parts: dict[str, Any] = {}
        # (a) table growth: N FDB entries through the control socket, one connection
        st0 = a1.stats()
        rss0 = proc_usage(a1.proc.pid)["rss_kb"]
        macs = [f"02:cc:{i >> 16 & 0xff:02x}:{i >> 8 & 0xff:02x}:{i & 0xff:02x}:01"
                for i in range(cfg.table_entries)]
        t0 = time.monotonic()
        errors = _pipeline(a1.sock, [{"op": "fdb_add", "mac": m,
                                      "vtep": f"10.{200 + i % 50}.{i // 250 % 250}.{i % 250 + 1}"}
                                     for i, m in enumerate(macs)])
        add_s = time.monotonic() - t0
        st1 = a1.stats()
        ping_mid = p1.ping(p2, count=20, interval=0.01, check=False)
        rss1 = proc_usage(a1.proc.pid)["rss_kb"]
        errors += _pipeline(a1.sock, [{"op": "fdb_del", "mac": m} for m in macs])
        parts["table"] = {"entries_added": cfg.table_entries, "errors": errors[:3],
                          "n_errors": len(errors), "seconds": round(add_s, 2),
                          "fdb_size": st1["networks"][0]["fdb_size"],
                          "fdb_size_before": st0["networks"][0]["fdb_size"],
                          "rss_kb_added": rss1 - rss0, "ping_lost_while_full": ping_mid.transmitted - ping_mid.received}
        # (b) TAP queue overflow: UDP flood pod1 -> pod2 through the TAP
        parts["tap_queue"] = self._flood(lambda: None, lambda: None, "tap queue")
        # (c) underlay send queue full: a tiny tbf qdisc on node 1's underlay
        parts["send_queue"] = self._flood(
            lambda: topo.run(["tc", "qdisc", "add", "dev", n1.dev, "root", "tbf", "rate", "5mbit",
                              "burst", "5kb", "limit", "3kb"], n1.ns),
            lambda: topo.run(["tc", "qdisc", "del", "dev", n1.dev, "root"], n1.ns, check=False),
            "send queue")
        # (d) disk full under a pcap capture
        parts["disk_full"] = self._disk_full()
        after = p1.ping(p2, count=20, interval=0.01, check=False)
        parts["ping_after"] = {"sent": after.transmitted, "received": after.received}
        res.update(inputs="table, TAP queue, send queue, disk", parts=parts)
        c = res["checks"]
        c["table_entries_all_added"] = parts["table"]["n_errors"] == 0 and \
            parts["table"]["fdb_size"] >= cfg.table_entries
        c["tap_queue_overflow_counted"] = parts["tap_queue"]["counted"]
        c["send_queue_full_counted"] = parts["send_queue"]["counted"]
        c["disk_full_reported"] = bool(parts["disk_full"].get("error"))
        c["forwarding_after"] = after.received == after.transmitted

    def _flood(self, setup: Callable[[], Any], teardown: Callable[[], Any], what: str
               ) -> dict[str, Any]:
        assert self.t is not None
        t, a1 = self.t, self.agents[1]
        p1, p2, n1 = t.pod(1), t.pod(2), t.node(1)
        st0 = a1.stats()
        k0 = ns_kernel_counters(n1.ns)
        setup()
        try:
            srv = t.start(["iperf3", "-s", "-1", "--forceflush", "-B", p2.ip, "-p", 5398], p2.ns, name="iperf-flood")
            srv.wait_output("Server listening", timeout=10)
            # the client is stopped by PID after the flood: with a full send queue its own
            # control connection can stall the end-of-test exchange
            cli = t.start(["iperf3", "-c", p2.ip, "-p", 5398, "-u", "-b", "0", "-l", "1380",
                           "-t", f"{self.cfg.flood:g}", "-P", "2"], p1.ns, name="iperf-flood-c")
            with contextlib.suppress(topo.TopoError, subprocess.TimeoutExpired):
                cli.wait(timeout=self.cfg.flood + 3)
            cli.stop(timeout=3)
            srv.stop(timeout=3)
        finally:
            teardown()
        st1 = a1.stats()
        k1 = ns_kernel_counters(n1.ns)
        kd = diff(k0, k1)
        c0, c1 = st0["networks"][0]["counters"], st1["networks"][0]["counters"]
        tap_drop = kd.get(f"{self.agents[1].tap}.tx_dropped", 0)
        out = {"tap_rx_packets": c1["tap_rx_packets"] - c0["tap_rx_packets"],
               "udp_tx_packets": c1["udp_tx_packets"] - c0["udp_tx_packets"],
               "drop_send_error": c1["drop_send_error"] - c0["drop_send_error"],
               "kernel": kd}
        kern1 = st1["networks"][0].get("kernel", {})
        kern0 = st0["networks"][0].get("kernel", {})
        out["agent_kernel_counters"] = {k: kern1[k] - kern0.get(k, 0) for k in kern1}
        if what == "tap queue":
            out["tap_tx_dropped_kernel"] = tap_drop
            out["counted"] = out["agent_kernel_counters"].get("tap_queue_dropped") == tap_drop
        else:
            qd = kd.get(f"{n1.dev}.tx_dropped", 0)
            out["qdisc_or_dev_drops"] = qd
            out["counted"] = out["drop_send_error"] > 0
        self.log(f"   {what}: {out}")
        return out

    def _disk_full(self) -> dict[str, Any]:
        assert self.t is not None
        a1, p1, p2 = self.agents[1], self.t.pod(1), self.t.pod(2)
        d = Path(tempfile.mkdtemp(prefix="vxchaos-tmpfs-"))
        topo.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", d])
        out: dict[str, Any] = {}
        try:
            a1.request("trace_pcap_start", dir=str(d / "cap"))
            t0 = time.monotonic()
            while time.monotonic() - t0 < 10:
                p1.ping(p2, count=20, interval=0.01, size=1400, check=False)
                st = a1.request("trace_status")
                pc = st.get("pcap") or st.get("last_pcap") or {}
                if pc.get("error") or not pc.get("active", True):
                    out = {"error": pc.get("error"), "stopped": pc.get("stopped"),
                           "written": pc.get("written")}
                    break
            else:
                out = {"error": None, "note": "capture never hit the disk limit"}
            with contextlib.suppress(topo.AgentError):
                a1.request("trace_pcap_stop")
        finally:
            topo.run(["umount", d], check=False)
            with contextlib.suppress(OSError):
                d.rmdir()
        self.log(f"   disk full: {out}")
        return out


def _pipeline(sock: Path, reqs: list[dict[str, Any]]) -> list[str]:
    """Send many requests on one control connection; return the error texts."""
    errors: list[str] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(60)
        s.connect(str(sock))
        f = s.makefile("rwb")
        for i in range(0, len(reqs), 500):
            chunk = reqs[i:i + 500]
            f.write(b"".join(json.dumps(r).encode() + b"\n" for r in chunk))
            f.flush()
            for _ in chunk:
                resp = json.loads(f.readline())
                if not resp.get("ok"):
                    errors.append(resp.get("error", "?"))
    return errors


# -------------------------------------------------------------------------------------------
# Report
# -------------------------------------------------------------------------------------------

def _fmt(s: float) -> str:
    return f"{int(s // 60)}m{int(s % 60):02d}s"


def _ms(tr: dict[str, Any]) -> str:
    return f"{tr['lost']}/{tr['sent']} ({tr['lost'] * PING_INTERVAL * 1000:.0f} ms)"


def summary_line(r: dict[str, Any]) -> str:
    tr = r["traffic"]
    bad = [k for k, v in r["checks"].items() if not v]
    return (f"{'ok' if r['ok'] else 'FAIL'}: ping lost vxtap {_ms(tr['ping_vxtap'])}, kernel "
            f"{_ms(tr['ping_kernel'])}, TCP stall {tr['tcp_recv'].get('max_gap_ms', 0):.0f} ms, "
            f"reconverge {r.get('reconverge_s')}, wrong entries {r['wrong_entries']}, "
            f"crashes {r['crashes']}, log lines {r['log_lines']}"
            + (f"; failed checks: {', '.join(bad)}" if bad else "")
            + (f"; {r['error']}" if r.get("error") else ""))


def format_table(results: list[dict[str, Any]]) -> str:
    head = ("scenario", "inputs", "pings lost vxtap<->vxtap", "pings lost vxtap<->kernel",
            "TCP max stall", "reconverge", "wrong entries", "crashes", "RSS / fd drift",
            "log lines", "result")
    rows = []
    for r in results:
        tr = r["traffic"]
        if r["scenario"] == "soak" and r.get("slopes"):
            drift = "; ".join(f"{n} {s['rss_kb_per_min']:+.1f} kB/min {s['fds_per_min']:+.2f} fd/min"
                              for n, s in r["slopes"].items())
        else:
            drift = "; ".join(f"{n} {d['rss_kb']:+d} kB {d['fds']:+d} fd"
                              for n, d in r.get("drift", {}).items()) or "(restarted)"
        inputs = r.get("inputs", "")
        if r["scenario"] == "bad_inputs" and isinstance(inputs, int):
            inputs = f"{inputs:,} (unaccounted {r.get('unaccounted')})"
        rc = r.get("reconverge_s")
        if r["scenario"] == "restart" and r.get("forwarding_again_s") is not None:
            rc = f"fwd {r['forwarding_again_s']} s, tables {rc} s"
        elif isinstance(rc, (int, float)):
            rc = f"{rc} s"
        bad = [k for k, v in r["checks"].items() if not v]
        rows.append((r["scenario"], str(inputs), _ms(tr["ping_vxtap"]), _ms(tr["ping_kernel"]),
                     f"{tr['tcp_recv'].get('max_gap_ms', 0):.0f} ms"
                     + (" BROKEN" if tr["tcp_send"].get("error") or tr["tcp_recv"].get("error")
                        else ""),
                     str(rc if rc is not None else "-"), str(r["wrong_entries"]),
                     str(r["crashes"]), drift, str(r["log_lines"]),
                     "ok" if r["ok"] else "FAIL: " + ", ".join(bad or [r.get("error", "")])))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, Config]:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.chaos",
                                 description=(__doc__ or "").split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__)
    ap.add_argument("--quick", action="store_true", help="short durations (~2 min)")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS),
                    help=f"comma-separated subset of {','.join(SCENARIOS)}")
    for f in dataclasses.fields(Config):
        if f.name != "scenarios":
            ap.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=None)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    cfg = Config.quick() if args.quick else Config()
    for f in dataclasses.fields(Config):
        v = getattr(args, f.name, None)
        if f.name != "scenarios" and v is not None:
            setattr(cfg, f.name, v)
    cfg.scenarios = tuple(s for s in args.scenarios.split(",") if s)
    unknown = set(cfg.scenarios) - set(SCENARIOS)
    if unknown:
        ap.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    return args, cfg


def main(argv: Sequence[str] | None = None) -> int:
    args, cfg = parse_args(argv)
    why = topo.missing_requirements(("iperf3", "ping", "tc", "etcdctl"))
    if why:
        print(f"benchmarks.chaos: {why}", file=sys.stderr)
        return 2
    topo.install_sigterm_handler()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"chaos-{stamp}.json"
    from benchmarks.system import code_info, machine_info
    doc: dict[str, Any] = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "command": " ".join(shlex.quote(x) for x in [sys.executable, "-m", "benchmarks.chaos",
                                                     *(sys.argv[1:] if argv is None else argv)]),
        "config": dataclasses.asdict(cfg), "machine": machine_info(), "code": code_info(),
        "results": [],
    }
    t0 = time.monotonic()
    rc = 1
    try:
        with Chaos(cfg) as ch:
            doc["results"] = ch.run()
        rc = 0 if all(r["ok"] for r in doc["results"]) else 1
    except KeyboardInterrupt:
        print("interrupted: cleaning up", file=sys.stderr)
    finally:
        doc["machine"]["loadavg_end"] = os.getloadavg()
        doc["wall_seconds"] = round(time.monotonic() - t0, 1)
        json_path.write_text(json.dumps(doc, indent=1, default=str))
        m = doc["machine"]
        print(f"\nvxtap chaos harness, {doc['date_utc']} UTC, {m['cores']} cores, kernel "
              f"{m['kernel']}, load {m['loadavg_start'][0]:.1f}/{m['loadavg_end'][0]:.1f}, "
              f"{_fmt(doc['wall_seconds'])}\n")
        if doc["results"]:
            print(format_table(doc["results"]))
        print(f"\njson: {json_path}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
