"""Packet capture (pcap at four points) and the per-packet decision trace, in the agent.

The path of a trace record:
  1. the forwarding threads (C, fastpath/switch.pyx) test `tr.active` once per batch; while a
     point is armed they copy matching packets into a byte ring in C memory, and when the ring
     is full they drop the record and count it (`trace_status()["dropped"]`), never the packet;
  2. the Tracer's thread wakes every `interval` (30 ms), takes whole records out of the ring
     (`Switch.trace_read`, in slices of READ_BYTES so the ring lock is held briefly) and parses
     them (`fastpath.trace_ref.parse_records`);
  3. capture records go to one pcap file per point (DIR/tap_in.pcap, ...): TAP points as
     Ethernet, underlay points as raw IPv4 (ul_in gets a synthesized IPv4+UDP header, source =
     the sending VTEP, destination = this agent), so tshark decodes the VXLAN layer;
  4. decision records become dicts (direction, verdict, reason, VTEPs, bytes in/out, the first
     128 bytes of the frame) kept in a bounded deque; `format_trace` prints them like VPP's
     `show trace`, one block per packet;
  5. when a session reaches its packet count or duration, the tracer closes its files and
     re-arms the fast path with what is still wanted (or disarms it).

One arming at a time: `Switch.trace_arm` replaces the previous one, and its filter (VNI, MAC,
IP) is global. The pcap session and the decision trace are combined here: the union of their
points is armed; if their filters differ, the fast path is armed with the fields both share
(the rest wildcarded), counts of the points concerned become unlimited, and each session
applies its own filter and count to the records (`Filter.matches` mirrors C `trace_match`).
A decision trace also arms ul_out and tap_out for its own use: to name the VTEPs a flooded
frame was replicated to and the MAC an ARP request was answered with.
"""
from __future__ import annotations

import collections
import contextlib
import ipaddress
import dataclasses
import datetime
import logging
import os
import struct
import threading
import time
from collections.abc import Iterable
from typing import Any

from dataplane import pcap
from fastpath import addr, spec
from fastpath.trace_ref import Record, parse_records

log = logging.getLogger("vxtap.trace")

CAPTURE_POINTS = ("tap_in", "ul_out", "ul_in", "tap_out")
POINT_TEXT = {"tap_in": "TAP in (inner frame from the node)",
              "ul_out": "underlay out (outer IPv4/UDP/VXLAN)",
              "ul_in": "underlay in (outer IPv4/UDP/VXLAN, IP+UDP synthesized)",
              "tap_out": "TAP out (inner frame to the node)"}
LINKTYPE = {"tap_in": pcap.LINKTYPE_ETHERNET, "tap_out": pcap.LINKTYPE_ETHERNET,
            "ul_out": pcap.LINKTYPE_RAW, "ul_in": pcap.LINKTYPE_RAW}

# implementation constants
DECISION_SNAP = 128          # bytes of the frame the fast path keeps with a decision record
READ_BYTES = 64 << 10        # per trace_read call: the ring lock is held while it copies
MAX_READS = 256              # per drain cycle (16 MB, twice the ring)
INTERVAL = 0.03              # seconds between drains while tracing
KEEP = 10000                 # decision records kept for `trace show`
PENDING = 4096               # capture facts kept per packet sequence, waiting for its decision

OUT_DROPS = frozenset(("tx_short", "tx_too_big", "unknown_unicast", "bum", "arp_miss",
                       "send_error", "nd_miss", "nd_truncated", "nd_bad_checksum",
                       "nd_bad_hop_limit", "nd_bad_option", "nd_invalid", "vnet_bad_flags",
                       "gso_bad_type", "gso_ecn", "gso_bad_size", "vnet_bad_hdr_len",
                       "vnet_bad_csum", "gso_no_csum", "gso_not_tcp_udp", "gso_ip_options",
                       "gso_bad_headers", "gso_too_big", "gso_too_many_segs"))
REASON_TEXT = {
    "tx_short": "frame shorter than an Ethernet header",
    "tx_too_big": "frame + 36 outer bytes (IPv6 underlay: 56) larger than the underlay MTU",
    "unknown_unicast": "no FDB entry for the destination MAC (flood off)",
    "bum": "broadcast/multicast destination (flood off, or no VTEP to replicate to)",
    "arp_miss": "ARP request for an IP with no neighbour entry (flood off)",
    "send_error": "the kernel refused the datagram",
    "truncated": "datagram shorter than a VXLAN header",
    "no_i_flag": "VXLAN I flag not set",
    "reserved": "reserved VXLAN bits set (strict mode)",
    "unknown_vni": "no network with this VNI",
    "rx_too_big": "datagram larger than the receive slot",
    "inner_short": "inner frame shorter than an Ethernet header",
    "spoofed": "outer source is not a known VTEP of this VNI (strict mode)",
    "bad_inner_src": "inner source MAC is multicast or zero",
    "tap_write_error": "write to the TAP failed",
    "nd_miss": "IPv6 neighbour solicitation for an address with no neighbour entry (flood off)",
    "nd_truncated": "ICMPv6 neighbour solicitation shorter than its header or payload length",
    "nd_bad_checksum": "ICMPv6 neighbour solicitation with a wrong checksum",
    "nd_bad_hop_limit": "neighbour solicitation with hop limit != 255 (RFC 4861 7.1.1)",
    "nd_bad_option": "neighbour solicitation option of length 0, past the end, or a bad SLLA",
    "nd_invalid": "neighbour solicitation with code != 0, a multicast target, or a malformed "
                  "DAD probe",
    "vnet_bad_flags": "virtio-net header: unknown flag bits",
    "gso_bad_type": "virtio-net header: gso_type not TCPv4/TCPv6/UDP",
    "gso_ecn": "virtio-net header: ECN bit (TSO with ECN is not offered)",
    "gso_bad_size": "virtio-net header: gso_size 0 or not smaller than the frame",
    "vnet_bad_hdr_len": "virtio-net header: hdr_len beyond the frame",
    "vnet_bad_csum": "virtio-net header: csum_start/csum_offset beyond the frame, or "
                     "csum_start inside the Ethernet/IPv4 header",
    "gso_no_csum": "GSO frame without NEEDS_CSUM",
    "gso_not_tcp_udp": "GSO frame whose IP protocol is not TCP/UDP",
    "gso_ip_options": "GSO frame with IPv4 options or IPv6 extension headers",
    "gso_bad_headers": "GSO frame whose headers are truncated or disagree with its virtio header",
    "gso_too_big": "GSO frame whose segments would not fit the underlay MTU",
    "gso_too_many_segs": "GSO frame of more than 128 segments",
    "ip6_ext_hdr": "outer IPv6 packet with extension headers",
    "ip6_fragment": "outer IPv6 packet reassembled from fragments",
    "reply_write_error": "the write of an ARP/ND reply into the TAP failed",
}


# ---- filter -----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Filter:
    """What a session wants: VNI (None = any), inner MAC (src or dst), inner IPv4 (IPv4 src/dst
    or ARP sender/target). Same semantics as the C `trace_match` (fastpath/trace.pyx)."""
    vni: int | None = None
    mac: str | None = None
    ip: str | None = None

    @classmethod
    def make(cls, vni: Any = None, mac: Any = None, ip: Any = None) -> Filter:
        """Validated and normalized (lower-case MAC, canonical IP); raises ValueError."""
        v = addr.check_vni(vni) if vni not in (None, 0) else None
        m = addr.int_to_mac(addr.mac_to_int(mac)) if mac is not None else None
        i = addr.int_to_ip(addr.ip_to_int(ip)) if ip is not None else None
        return cls(v, m, i)

    def matches(self, vni: int, frame: bytes) -> bool:
        if self.vni is not None and vni != self.vni:
            return False
        if self.mac is not None:
            m = bytes.fromhex(self.mac.replace(":", ""))
            if len(frame) < 12 or (frame[0:6] != m and frame[6:12] != m):
                return False
        if self.ip is not None:
            want = addr.ip_to_int(self.ip).to_bytes(4, "big")
            if len(frame) < 14:
                return False
            et = frame[12:14]
            if et == b"\x08\x00" and len(frame) >= 34:
                a, b = frame[26:30], frame[30:34]
            elif et == b"\x08\x06" and len(frame) >= 42:
                a, b = frame[28:32], frame[38:42]
            else:
                return False
            if want not in (a, b):
                return False
        return True

    def arm_kwargs(self) -> dict[str, Any]:
        return {"vni": self.vni or 0, "mac": self.mac, "ip": self.ip}

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def __str__(self) -> str:
        return " ".join(f"{k} {v}" for k, v in self.to_dict().items()) or "any"


def meet(filters: Iterable[Filter]) -> Filter:
    """The widest filter the fast path can be armed with so that every session sees all it
    wants: a field is kept only where all filters agree on it."""
    fs = list(filters)
    if not fs:
        return Filter()
    first = fs[0]
    return Filter(*(getattr(first, k) if all(getattr(f, k) == getattr(first, k) for f in fs)
                    else None for k in ("vni", "mac", "ip")))


def direction(verdict: str, reason: str | None) -> str:
    """'out' (TAP -> underlay) or 'in' (underlay -> TAP) of a decision record."""
    if verdict in ("encap", "flood", "arp_reply", "nd_reply"):
        return "out"
    if verdict == "drop" and reason in OUT_DROPS:
        return "out"
    return "in"


def filter_view(r: Record) -> tuple[int, bytes]:
    """(vni, inner frame) of a record, as the C filter saw them."""
    if r.point == "ul_out":            # outer IPv4 (36 bytes) or IPv6 (56) + UDP + VXLAN
        return r.vni, r.data[spec.OUTER6_HLEN if r.data[:1] and r.data[0] >> 4 == 6
                             else spec.OUTER_HLEN:]
    if r.point == "ul_in" or (r.point == "decision" and direction(r.verdict, r.reason) == "in"):
        d = r.data
        vni = int.from_bytes(d[4:7], "big") if len(d) >= spec.VXLAN_HLEN else 0
        return vni, d[spec.VXLAN_HLEN:]
    return r.vni, r.data


# ---- pcap framing of the underlay-in point -------------------------------------------------------
def _csum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    s: int = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def synth_ipv6_udp(payload: bytes, src: bytes, sport: int, dst: bytes, dport: int,
                   orig_len: int | None = None, hlim: int = 64) -> bytes:
    """IPv6 (RFC 8200) + UDP headers in front of a UDP payload (checksum 0: not verified)."""
    plen = spec.UDP_HLEN + (len(payload) if orig_len is None else orig_len)
    return (struct.pack("!IHBB", 6 << 28, plen, spec.IPPROTO_UDP, hlim) + src + dst
            + struct.pack("!HHHH", sport, dport, plen, 0) + payload)


def synth_ipv4_udp(payload: bytes, src: int, sport: int, dst: int, dport: int,
                   orig_len: int | None = None, ttl: int = 64) -> bytes:
    """IPv4 (RFC 791) + UDP (RFC 768, checksum 0 = none) headers in front of a UDP payload;
    lengths from orig_len (the payload's length on the wire) when the payload was cut."""
    plen = len(payload) if orig_len is None else orig_len
    udp = struct.pack("!HHHH", sport, dport, spec.UDP_HLEN + plen, 0)
    iph = bytearray(struct.pack("!BBHHHBBHII", 0x45, 0, spec.IPV4_HLEN + spec.UDP_HLEN + plen,
                                0, spec.IP_DF, ttl, spec.IPPROTO_UDP, 0, src, dst))
    iph[10:12] = _csum(bytes(iph)).to_bytes(2, "big")
    return bytes(iph) + udp + payload


# ---- sessions ---------------------------------------------------------------------------------
@dataclasses.dataclass
class PcapSession:
    dir: str
    points: tuple[str, ...]
    count: int | None            # packets per point, None = no limit
    duration: float | None       # seconds, None = no limit
    filter: Filter
    snaplen: int
    started: float = dataclasses.field(default_factory=time.monotonic)
    started_wall: float = dataclasses.field(default_factory=time.time)
    writers: dict[str, pcap.PcapWriter] = dataclasses.field(default_factory=dict)
    dropped_at_start: int = 0
    stopped: str | None = None   # why it ended
    error: str | None = None

    def written(self) -> dict[str, int]:
        return {p: w.packets for p, w in self.writers.items()}

    def wants(self, point: str) -> bool:
        w = self.writers.get(point)
        return w is not None and (self.count is None or w.packets < self.count)

    def summary(self, dropped_now: int) -> dict[str, Any]:
        return {"dir": self.dir, "points": list(self.points), "count": self.count,
                "duration": self.duration, "filter": self.filter.to_dict(),
                "snaplen": self.snaplen,
                "files": {p: w.path for p, w in self.writers.items()},
                "written": self.written(),
                "elapsed": round(time.monotonic() - self.started, 3),
                "ring_dropped": dropped_now - self.dropped_at_start,
                "active": self.stopped is None, "stopped": self.stopped, "error": self.error}


@dataclasses.dataclass
class DecisionSession:
    count: int
    filter: Filter
    got: int = 0
    started: float = dataclasses.field(default_factory=time.monotonic)


# ---- the tracer -------------------------------------------------------------------------------
class Tracer:
    """Drains the fast path's trace ring into pcap files and the decision log.

    Thread-safe: the control-socket ops call pcap_start/stop, add, show, clear, status from
    their threads; the drain runs in the tracer's own thread once `start()` was called
    (without it, `poll()` drains: the unit tests do that, deterministically).
    """

    def __init__(self, switch: Any, *, interval: float = INTERVAL, keep: int = KEEP,
                 read_bytes: int = READ_BYTES) -> None:
        self.sw = switch
        self.local_ip = int(switch.local_ip)
        v6 = getattr(switch, "local_ip6", None)
        self.local6 = addr.ip6_to_int(v6).to_bytes(16, "big") if v6 else None
        self.port = int(switch.port)
        self.interval = interval
        self.keep = keep
        self.read_bytes = read_bytes
        self.pcap: PcapSession | None = None
        self.last_pcap: dict[str, Any] | None = None
        self.decision: DecisionSession | None = None
        self.records: collections.deque[dict[str, Any]] = collections.deque(maxlen=keep)
        self.armed: dict[str, Any] = {}
        self.drained = 0
        self.error: str | None = None
        self._pending: collections.OrderedDict[int, dict[str, Any]] = collections.OrderedDict()
        self._py_filter: dict[str, bool] = {"pcap": False, "decision": False}
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def exclusive(self) -> Any:
        """Hold off the drain thread. For callers of the switch's simulation methods
        (process_tap/process_udp) while this tracer's thread runs: those call the C trace_put
        with the GIL held, and trace_read/trace_arm take the ring lock and then the GIL, which
        can deadlock (tests/TRACE_NOTES.md T1). The forwarding loops are not affected."""
        with self._lock:
            yield

    # ---- thread -----------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="vxtap-trace", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                self.poll()
            except Exception as e:             # never let the drain thread die
                log.exception("trace drain failed")
                self.error = f"drain: {e}"
            self._wake.wait(self.interval if self.busy else 1.0)
            self._wake.clear()

    @property
    def busy(self) -> bool:
        return self.pcap is not None or self.decision is not None

    def close(self) -> None:
        """Stop every session (final drain, files closed), disarm, end the thread."""
        with self._lock:
            if self.pcap is not None:
                self._drain()
                self._end_pcap("agent stopping")
            self.decision = None
            self._rearm()
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    # ---- ops --------------------------------------------------------------------------------
    def pcap_start(self, dir: str, points: Iterable[str] = CAPTURE_POINTS,
                   count: int | None = None, duration: float | None = None,
                   vni: Any = None, mac: Any = None, ip: Any = None, snaplen: int = 65535,
                   append: bool = False) -> dict[str, Any]:
        if isinstance(points, str):
            points = points.split(",")
        pts = tuple(dict.fromkeys(p.strip() for p in points))
        if not pts:
            raise ValueError("no capture point given; known: " + ", ".join(CAPTURE_POINTS))
        for p in pts:
            if p not in CAPTURE_POINTS:
                raise ValueError(f"unknown capture point {p!r}; known: "
                                 + ", ".join(CAPTURE_POINTS))
        if count is not None and (not isinstance(count, int) or isinstance(count, bool)
                                  or count <= 0):
            raise ValueError(f"count must be a positive integer, got {count!r}")
        if duration is not None and (not isinstance(duration, (int, float))
                                     or isinstance(duration, bool) or duration <= 0):
            raise ValueError(f"duration must be a positive number of seconds, got {duration!r}")
        if not isinstance(snaplen, int) or not 14 <= snaplen <= 65535:
            raise ValueError(f"snaplen must be in 14..65535, got {snaplen!r}")
        if not isinstance(dir, str) or not dir:
            raise ValueError("dir: a directory for the pcap files is required")
        flt = Filter.make(vni, mac, ip)
        with self._lock:
            if self.pcap is not None:
                raise ValueError(f"a capture is already running into {self.pcap.dir}; "
                                 "stop it first (trace pcap stop)")
            try:
                os.makedirs(dir, exist_ok=True)
            except OSError as e:
                raise ValueError(f"cannot create the pcap directory {dir}: {e.strerror}") from None
            s = PcapSession(os.path.abspath(dir), pts, count, duration, flt, snaplen)
            try:
                for p in pts:
                    s.writers[p] = pcap.PcapWriter(os.path.join(s.dir, f"{p}.pcap"),
                                                   LINKTYPE[p], snaplen, append=append)
            except (OSError, ValueError) as e:
                for w in s.writers.values():
                    w.close()
                raise ValueError(f"cannot open the pcap files in {s.dir}: {e}") from None
            self._drain()                      # what the previous arming left belongs to it
            s.dropped_at_start = self.sw.trace_status()["dropped"]
            self.pcap = s
            self._rearm()
        self._wake.set()
        return self.status()

    def pcap_stop(self) -> dict[str, Any]:
        with self._lock:
            if self.pcap is None:
                if self.last_pcap is None:
                    raise ValueError("no capture running")
                return self.last_pcap
            self._drain()
            self._end_pcap("stopped")
            self._rearm()
            assert self.last_pcap is not None
            return self.last_pcap

    def add(self, count: int, vni: Any = None, mac: Any = None,
            ip: Any = None) -> dict[str, Any]:
        """Trace the decisions for the next `count` packets (matching the filter). Replaces a
        running decision trace; records already taken stay until clear()."""
        if not isinstance(count, int) or isinstance(count, bool) or count <= 0:
            raise ValueError(f"count must be a positive integer, got {count!r}")
        if count > self.keep:
            raise ValueError(f"at most {self.keep} packets per trace (records kept), "
                             f"got {count}")
        flt = Filter.make(vni, mac, ip)
        with self._lock:
            self._drain()
            self.decision = DecisionSession(count, flt)
            self._pending.clear()
            self._rearm()
        self._wake.set()
        return self.status()

    def show(self, max: int | None = None) -> list[dict[str, Any]]:
        with self._lock:
            self._drain()
            recs = list(self.records)
        return recs[-max:] if max else recs

    def clear(self) -> dict[str, Any]:
        """Forget the decision records and stop a running decision trace."""
        with self._lock:
            self._drain()
            self.records.clear()
            self._pending.clear()
            self.decision = None
            self._rearm()
        return self.status()

    def status(self) -> dict[str, Any]:
        with self._lock:
            st = self.sw.trace_status()
            dec = None
            if self.decision is not None:
                dec = {"count": self.decision.count, "got": self.decision.got,
                       "filter": self.decision.filter.to_dict()}
            cap = self.pcap.summary(st["dropped"]) if self.pcap else None
            return {"fastpath": st, "armed": self.armed, "pcap": cap,
                    "last_pcap": self.last_pcap if cap is None else None,
                    "decision": dec, "records": len(self.records), "drained": self.drained,
                    "error": self.error,
                    "tshark_hint": (f"-d udp.port=={self.port},vxlan"
                                    if self.port != spec.VXLAN_PORT else None)}

    # ---- drain --------------------------------------------------------------------------------
    def poll(self) -> None:
        """One cycle: drain the ring, apply limits (count, duration), re-arm if needed."""
        with self._lock:
            if not self.busy and not self.armed:
                return
            self._drain()
            s = self.pcap
            if s is not None:
                st = self.sw.trace_status()
                if s.duration is not None and time.monotonic() - s.started >= s.duration:
                    self._end_pcap("duration reached")
                elif s.count is not None and not any(s.wants(p) for p in s.points):
                    self._end_pcap("count reached")
                elif (st["ring_used"] == 0 and not self._py_filter["pcap"]
                      and all(st["left"][p] == 0 for p in s.points)):
                    self._drain()              # a record put between the two reads above
                    self._end_pcap("count reached (fast path)")
                if self.pcap is None:
                    self._rearm()
            if self.armed and not self.busy:
                self._rearm()

    def _drain(self) -> None:
        for _ in range(MAX_READS):
            blob = self.sw.trace_read(self.read_bytes)
            if not blob:
                break
            recs = parse_records(blob)
            self.drained += len(recs)
            for r in recs:
                if r.point == "decision":
                    self._on_decision(r)
                else:
                    if self.pcap is not None:
                        self._on_capture(r)
                    if self.decision is not None:
                        self._note(r)
        if self.pcap is not None:
            try:
                for w in self.pcap.writers.values():
                    w.flush()
            except OSError as e:
                self.pcap.error = str(e)
                self._end_pcap(f"write error: {e}")
                self._rearm()

    def _on_capture(self, r: Record) -> None:
        s = self.pcap
        assert s is not None
        if not s.wants(r.point):
            return
        if self._py_filter["pcap"] and not s.filter.matches(*filter_view(r)):
            return
        data, olen = r.data, r.orig_len
        if r.point == "ul_in":
            if r.peer6 is not None or (r.peer == 0 and self.local6 is not None):  # IPv6 VTEP
                data = synth_ipv6_udp(r.data, r.peer6 or bytes(16), r.peer_port, self.local6
                                      or bytes(16), self.port, orig_len=r.orig_len)
                olen = r.orig_len + spec.IPV6_HLEN + spec.UDP_HLEN
            else:
                data = synth_ipv4_udp(r.data, r.peer, r.peer_port, self.local_ip, self.port,
                                      orig_len=r.orig_len)
                olen = r.orig_len + spec.IPV4_HLEN + spec.UDP_HLEN
        try:
            s.writers[r.point].write(r.ts_ns, data, olen)
        except OSError as e:
            s.error = str(e)
            self._end_pcap(f"write error: {e}")
            self._rearm()

    def _note(self, r: Record) -> None:
        """Facts for the decision of packet r.seq: VTEPs it went to, ARP reply MAC."""
        if r.point == "ul_out":                    # the outer IPv4 or IPv6 header first
            v6 = bool(r.data) and r.data[0] >> 4 == 6
            udp = r.data[spec.IPV6_HLEN if v6 else spec.IPV4_HLEN:]
            port = int.from_bytes(udp[2:4], "big") if len(udp) >= 4 else None
            if v6:                                      # destination: bytes 24..39
                peer = str(ipaddress.IPv6Address(r.data[24:40])) if len(r.data) >= 40 else "?"
            else:
                peer = addr.int_to_ip(r.peer)
            self._fact(r.seq).setdefault("vteps", []).append([peer, port])
        elif r.point == "tap_out" and r.verdict == "arp_reply" and len(r.data) >= 28:
            self._fact(r.seq)["arp_reply_mac"] = addr.int_to_mac(
                int.from_bytes(r.data[22:28], "big"))

    def _fact(self, seq: int) -> dict[str, Any]:
        f = self._pending.get(seq)
        if f is None:
            f = self._pending[seq] = {}
            while len(self._pending) > PENDING:
                self._pending.popitem(last=False)
        return f

    def _on_decision(self, r: Record) -> None:
        d = self.decision
        if d is None or d.got >= d.count:
            return
        if self._py_filter["decision"] and not d.filter.matches(*filter_view(r)):
            self._pending.pop(r.seq, None)
            return
        facts = self._pending.pop(r.seq, {})
        facts["strict"] = bool(getattr(self.sw, "strict", False))
        self.records.append(decision_dict(r, facts))
        d.got += 1
        if d.got >= d.count:
            self.decision = None
            self._pending.clear()
            self._rearm()

    def _end_pcap(self, why: str) -> None:
        s = self.pcap
        if s is None:
            return
        s.stopped = why
        for w in s.writers.values():
            try:
                w.close()
            except OSError as e:
                s.error = s.error or str(e)
        self.last_pcap = s.summary(self.sw.trace_status()["dropped"])
        self.pcap = None
        log.info("pcap capture into %s ended (%s): %s", s.dir, why, self.last_pcap["written"])

    # ---- arming -------------------------------------------------------------------------------
    def _rearm(self) -> None:
        """Arm the fast path with what the sessions still want (see the module docstring)."""
        s, d = self.pcap, self.decision
        sessions = [x.filter for x in (s, d) if x is not None]
        common = meet(sessions)
        self._py_filter = {"pcap": s is not None and s.filter != common,
                           "decision": d is not None and d.filter != common}
        want: dict[str, int] = {}

        def merge(point: str, n: int) -> None:
            cur = want.get(point)
            want[point] = -1 if -1 in (n, cur) else max(n, cur or 0)

        snaplen = 0
        if s is not None:
            snaplen = s.snaplen
            for p in s.points:
                left = -1 if s.count is None else s.count - s.writers[p].packets
                if left == 0:
                    continue
                merge(p, -1 if self._py_filter["pcap"] else left)
        if d is not None and d.got < d.count:
            merge("decision", -1 if self._py_filter["decision"] else d.count - d.got)
            merge("ul_out", -1)      # the VTEPs of each copy (flood), the VTEP's port
            merge("tap_out", -1)     # the ARP reply
            snaplen = max(snaplen, DECISION_SNAP)
        if any(self._py_filter.values()):
            snaplen = max(snaplen, DECISION_SNAP)   # enough for the Python filter
        if not want:
            if self.armed:
                self.sw.trace_disarm()
                self.armed = {}
            return
        kw = common.arm_kwargs()
        self.sw.trace_arm(want, snaplen=snaplen, **kw)
        self.armed = {"points": want, "filter": common.to_dict(), "snaplen": snaplen}


# ---- decision records ---------------------------------------------------------------------------
def decision_dict(r: Record, facts: dict[str, Any] | None = None) -> dict[str, Any]:
    """A decision record as a JSON-able dict (what `trace_show` returns)."""
    facts = facts or {}
    dirn = direction(r.verdict, r.reason)
    d: dict[str, Any] = {"seq": r.seq, "ts_ns": r.ts_ns, "vni": r.vni, "direction": dirn,
                         "verdict": r.verdict, "reason": r.reason, "bytes_in": r.orig_len,
                         "data": r.data.hex()}
    if dirn == "out":
        copies = r.peer_port
        d["copies"] = copies
        vteps = facts.get("vteps") or ([[addr.int_to_ip(r.peer), None]] if r.peer else [])
        d["vteps"] = vteps
        per = r.orig_len + spec.OUTER_HLEN
        d["bytes_out"] = {"encap": per, "flood": per * copies,
                          "arp_reply": spec.ETH_HLEN + spec.ARP_LEN,
                          "nd_reply": 86}.get(r.verdict, 0)
        if r.verdict == "arp_reply":
            d["arp_reply_mac"] = facts.get("arp_reply_mac")
    else:
        d["from"] = ([str(ipaddress.IPv6Address(r.peer6)), r.peer_port] if r.peer6
                     else [addr.int_to_ip(r.peer), r.peer_port] if r.peer else None)
        d["strict"] = facts.get("strict")
        d["bytes_out"] = r.orig_len - spec.VXLAN_HLEN if r.verdict == "deliver" else 0
    return d


def _mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def _ip(b: bytes) -> str:
    return ".".join(str(x) for x in b)


ICMP_TYPES = {0: "echo reply", 3: "destination unreachable", 8: "echo request",
              11: "time exceeded"}
IP_PROTOS = {1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6"}


def summarize_frame(f: bytes) -> list[str]:
    """Readable lines for an Ethernet frame (possibly cut): L2, then ARP/IPv4/IPv6 + L4."""
    if len(f) < spec.ETH_HLEN:
        return [f"{len(f)} bytes, shorter than an Ethernet header: {f.hex()}"]
    lines = [f"ethernet {_mac(f[6:12])} -> {_mac(f[0:6])}"]
    et, off = int.from_bytes(f[12:14], "big"), spec.ETH_HLEN
    if et == spec.ETH_P_8021Q and len(f) >= 18:
        lines[0] += f" vlan {int.from_bytes(f[14:16], 'big') & 0xFFF}"
        et, off = int.from_bytes(f[16:18], "big"), 18
    p = f[off:]
    if et == spec.ETH_P_ARP:
        if len(p) < spec.ARP_LEN:
            return lines + [f"ARP, truncated ({len(p)} bytes)"]
        op = int.from_bytes(p[6:8], "big")
        sha, spa, tpa = _mac(p[8:14]), _ip(p[14:18]), _ip(p[24:28])
        if op == spec.ARP_OP_REQUEST:
            lines.append(f"ARP request who-has {tpa} tell {spa} ({sha})")
        elif op == spec.ARP_OP_REPLY:
            lines.append(f"ARP reply {spa} is-at {sha}")
        else:
            lines.append(f"ARP op {op} {spa} -> {tpa}")
    elif et == spec.ETH_P_IP:
        if len(p) < spec.IPV4_HLEN:
            return lines + [f"IPv4, truncated ({len(p)} bytes)"]
        ihl = (p[0] & 0xF) * 4
        proto = p[9]
        s = (f"IPv4 {_ip(p[12:16])} -> {_ip(p[16:20])} {IP_PROTOS.get(proto, f'proto {proto}')}"
             f" ttl {p[8]} len {int.from_bytes(p[2:4], 'big')}")
        l4 = p[ihl:]
        if proto == 1 and len(l4) >= 8:
            s += f" {ICMP_TYPES.get(l4[0], f'type {l4[0]}')}"
            if l4[0] in (0, 8):
                s += (f" id {int.from_bytes(l4[4:6], 'big')}"
                      f" seq {int.from_bytes(l4[6:8], 'big')}")
        elif proto in (6, 17) and len(l4) >= 4:
            s += f" {int.from_bytes(l4[0:2], 'big')} -> {int.from_bytes(l4[2:4], 'big')}"
            if proto == 6 and len(l4) >= 14:
                flags = "".join(c for c, bit in zip("FSRPAU", range(6)) if l4[13] >> bit & 1)
                s += f" flags [{flags}]"
        lines.append(s)
    elif et == spec.ETH_P_IPV6 and len(p) >= 40:
        import ipaddress
        lines.append(f"IPv6 {ipaddress.IPv6Address(p[8:24])} -> "
                     f"{ipaddress.IPv6Address(p[24:40])} next-header {p[6]}")
    else:
        lines.append(f"ethertype {et:#06x}, {len(f)} bytes")
    return lines


def _when(ts_ns: int) -> str:
    t = datetime.datetime.fromtimestamp(ts_ns / 1e9, datetime.UTC)
    return t.strftime("%H:%M:%S.%f")


def _peer(v: list[Any]) -> str:
    """A VTEP as address:port ([address]:port for IPv6, as in a URL)."""
    a = f"[{v[0]}]" if ":" in str(v[0]) and v[1] else str(v[0])
    return f"{a}:{v[1]}" if v[1] else a


def format_decision(d: dict[str, Any], index: int | None = None) -> str:
    """One packet's block, in the manner of VPP `show trace`."""
    data = bytes.fromhex(d["data"])
    head = f"Packet {index}" if index is not None else "Packet"
    out = [f"{head}  seq {d['seq']}",
           f"  {_when(d['ts_ns'])}  vni {d['vni']}  "
           + ("outbound: TAP -> underlay" if d["direction"] == "out"
              else "inbound: underlay -> TAP")
           + f"  {d['bytes_in']} bytes in"]
    verdict, reason = d["verdict"], d.get("reason")
    if d["direction"] == "out":
        out += ["  " + ln for ln in summarize_frame(data)]
        dst = _mac(data[0:6]) if len(data) >= 6 else "?"
        vteps = d.get("vteps") or []
        if verdict == "encap":
            out.append(f"  fdb lookup: hit {dst} -> VTEP {_peer(vteps[0]) if vteps else '?'}")
            out.append(f"  verdict: encap, 1 datagram to {vteps[0][0] if vteps else '?'}, "
                       f"{d['bytes_out']} bytes out")
        elif verdict == "flood":
            names = ", ".join(_peer(v) for v in vteps) or "(VTEPs not captured)"
            kind = "broadcast/multicast" if len(data) >= 1 and data[0] & 1 else \
                f"fdb lookup: miss for {dst}"
            out.append(f"  {kind}: replicated to {d['copies']} VTEP(s): {names}")
            out.append(f"  verdict: flood, {d['copies']} datagram(s), "
                       f"{d['bytes_out']} bytes out")
        elif verdict == "arp_reply":
            tip = _ip(data[38:42]) if len(data) >= 42 else "?"
            mac = d.get("arp_reply_mac") or "(reply not captured)"
            out.append(f"  arp: neighbour hit, answered locally: {tip} is-at {mac}")
            out.append(f"  verdict: arp_reply, written back to the TAP, "
                       f"{d['bytes_out']} bytes out")
        elif verdict == "nd_reply":
            tgt = str(ipaddress.IPv6Address(data[62:78])) if len(data) >= 78 else "?"
            out.append(f"  nd: neighbour hit, solicitation for {tgt} answered locally")
            out.append(f"  verdict: nd_reply (neighbour advertisement), written back to the "
                       f"TAP, {d['bytes_out']} bytes out")
        else:
            if reason == "unknown_unicast":
                out.append(f"  fdb lookup: miss for {dst}")
            elif reason == "arp_miss" and len(data) >= 42:
                out.append(f"  arp: no neighbour entry for {_ip(data[38:42])}")
            out.append(f"  verdict: drop, reason {reason}: {REASON_TEXT.get(reason or '', '')}")
    else:
        frm = d.get("from")
        hdr = ""
        if len(data) >= spec.VXLAN_HLEN:
            hdr = (f", VXLAN flags {data[0]:#04x} vni "
                   f"{int.from_bytes(data[4:7], 'big')}")
        out.append(f"  from VTEP {_peer(frm) if frm else '?'}{hdr}")
        if len(data) > spec.VXLAN_HLEN:
            out += ["  " + ln for ln in summarize_frame(data[spec.VXLAN_HLEN:])]
        elif data:
            out.append(f"  datagram: {data.hex()}")
        if verdict == "deliver":
            if d.get("strict") and frm:
                out.append(f"  source check: {frm[0]} is a VTEP of vni {d['vni']} (strict)")
            out.append(f"  verdict: deliver to the TAP, {d['bytes_out']} bytes out")
        else:
            out.append(f"  verdict: drop, reason {reason}: {REASON_TEXT.get(reason or '', '')}")
    return "\n".join(out) + "\n"


def format_trace(recs: list[dict[str, Any]]) -> str:
    if not recs:
        return "No packets in the trace buffer (start one with `vxtap trace add N`).\n"
    return "\n".join(format_decision(d, i) for i, d in enumerate(recs, 1))


def _point_limit(st: dict[str, Any], point: str, armed: int) -> str:
    """What limits a point: its fast-path count, or (armed -1: the fast path does not count, as
    when two sessions share a point or their filters differ) the limits the sessions apply
    themselves. "unlimited" only when no session limits it at all."""
    if armed != -1:
        return str(armed)
    lim = []
    pc = st.get("pcap")
    if pc and pc.get("active") and point in (pc.get("files") or {}):
        if pc.get("count"):
            lim.append(f"capture {max(0, pc['count'] - pc.get('written', {}).get(point, 0))} left")
        if pc.get("duration"):
            lim.append(f"capture for {pc['duration']}s")
        if not pc.get("count") and not pc.get("duration"):
            return "unlimited"                  # the capture runs until it is stopped
    d = st.get("decision")
    if d and d.get("got", 0) < d.get("count", 0):
        lim.append(f"decision trace {d['count'] - d['got']} left")
    return "(" + ", ".join(lim) + ")" if lim else "unlimited"


def format_status(st: dict[str, Any]) -> str:
    """`vxtap trace status` text."""
    out = []
    fp = st["fastpath"]
    armed = st.get("armed") or {}
    pts = ", ".join(f"{p} {_point_limit(st, p, n)}"
                    for p, n in (armed.get("points") or {}).items())
    out.append("fast path: " + (f"armed {pts}; filter {Filter(**armed.get('filter', {}))}; "
                                f"snaplen {armed.get('snaplen')}"
                                if fp["active"] and armed else
                                "armed" if fp["active"] else "not tracing")
               + f"; ring {fp['ring_used']}/{fp['ring_size']} bytes, records "
                 f"{fp['recorded']}, dropped (ring full) {fp['dropped']}\n")
    for key, label in (("pcap", "capture"), ("last_pcap", "last capture")):
        if st.get(key):
            out.append(format_pcap(st[key], label))
    if st.get("tshark_hint"):
        out.append(f"  (VXLAN on a non-default port: tshark {st['tshark_hint']})\n")
    d = st.get("decision")
    out.append("decision trace: "
               + (f"{d['got']}/{d['count']} packets, filter {Filter(**d['filter'])}"
                  if d else "off")
               + f"; {st['records']} records kept\n")
    if st.get("error"):
        out.append(f"error: {st['error']}\n")
    return "".join(out)


def format_pcap(c: dict[str, Any], label: str = "capture") -> str:
    """One capture session's summary: state, limits, one line per file."""
    state = "running" if c["active"] else f"ended: {c['stopped']}"
    lim = []
    if c["count"]:
        lim.append(f"count {c['count']}/point")
    if c["duration"]:
        lim.append(f"duration {c['duration']}s")
    flt = Filter(**c["filter"]) if c["filter"] else "any"
    limits = ", " + ", ".join(lim) if lim else ""
    head = f"{label}: {state}, {c['elapsed']}s, dir {c['dir']}, filter {flt}{limits}"
    out = [f"{head}, ring drops {c['ring_dropped']}\n"]
    for p, path in c["files"].items():
        out.append(f"  {p:8} {c['written'].get(p, 0):8} packets  {path}\n")
    if c.get("error"):
        out.append(f"  error: {c['error']}\n")
    return "".join(out)
