"""Pure-Python reference of switch.pyx: what the fast path decides for each packet.

Same API as fastpath.switch.Switch, minus the forwarding loops (run_tx/run_rx/stop), which are
syscall plumbing around the two classification functions below. Read this file to learn the
behaviour; the unit tests check that the Cython switch agrees with it packet for packet.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from fastpath import addr as _addr
from fastpath import counters as _counters
from fastpath import spec
from fastpath import gro_ref, gso_ref, vnet_ref
from fastpath.arp_ref import ARP_ANSWERED, ARP_MISS, ARP_NOT_REQUEST, arp_reduce
from fastpath.nd_ref import DROP_REASONS as ND_DROPS
from fastpath.nd_ref import ND_ANSWERED, ND_MISS, nd_reduce
from fastpath.headers_ref import (VX_NO_I_FLAG, VX_TRUNCATED, py_encap, py_flow_hash,
                                  py_parse_vxlan, py_source_port)
from fastpath.outer6_ref import OUTER6_HLEN, py_encap6, py_flow_label

MAX_BATCH = 1024
MAX_NETS = 256
MAX_POOL = 64
RX_GRO_SLOT = 65600          # receive slot with offloads (one UDP_GRO buffer)


@dataclass
class _Vtep:
    ip: int            # key (addr.vtep_key): IPv6 address, or IPv4-mapped ::ffff:a.b.c.d
    port: int
    refcnt: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    rx_bytes: int = 0


class _Net:
    def __init__(self, vni: int, tap_fd: int) -> None:
        self.vni = vni
        self.tap_fd = tap_fd
        self.fdb: dict[int, int] = {}          # MAC -> VTEP IP
        self.neigh: dict[int, int] = {}        # IPv4 -> MAC
        self.neigh6: dict[int, int] = {}       # IPv6 -> MAC
        self.vteps: dict[int, _Vtep] = {}      # VTEP key -> VTEP, in insertion order
        self.c = dict.fromkeys(_counters.NAMES, 0)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int_in(what: str, v: Any, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ValueError(f"{what} must be in {lo}..{hi}, got {v!r}")
    return v


def _decision(vni: int, verdict: str, reason: str | None = None, vtep: int = 0,
              copies: int = 0) -> dict[str, Any]:
    """vtep: a VTEP key (addr.vtep_key), 0 = none."""
    return {"vni": vni, "verdict": verdict, "reason": reason,
            "vtep": _addr.key_to_ip(vtep) if vtep else None, "copies": copies}


EXT_CODES = (None, "ext_hdr", "fragment")   # what an IPv6 receive socket may report


class Switch:
    def __init__(self, local_ip: str | list[str], port: int = 4789, *, strict: bool = True,
                 flood: bool = False, srcport: tuple[int, int] = (32768, 61000), ttl: int = 64,
                 batch: int = 64, underlay_mtu: int = 1500, busy_poll_us: int = 0,
                 offload: bool = False, udp6zerocsumtx: bool = False) -> None:
        lo, hi = srcport
        if not (_is_int(lo) and _is_int(hi) and 0 < lo < hi <= 65536):
            raise ValueError(f"bad source port range {lo}-{hi}: want 1 <= min < max <= 65536")
        _int_in("batch", batch, 1, MAX_BATCH)
        _int_in("ttl", ttl, 1, 255)
        _int_in("underlay MTU", underlay_mtu, 576, 65535)
        _int_in("busy_poll_us", busy_poll_us, 0, 1_000_000)
        v4, v6 = _addr.check_locals(local_ip)     # IPv4, IPv6, or one of each (dual stack)
        self.has4, self.has6 = v4 is not None, v6 is not None
        self.local_ip = _addr.ip_to_int(v4) if v4 is not None else 0
        self.local_ip6 = v6
        self._local6 = _addr.ip6_to_int(v6).to_bytes(16, "big") if v6 is not None else b""
        self.udp6zerocsumtx = bool(udp6zerocsumtx)
        self.port = _addr.check_port(port)
        self.sport_lo, self.sport_hi = lo, hi
        self.strict, self.flood, self.ttl, self.batch = strict, flood, ttl, batch
        self.underlay_mtu = underlay_mtu
        self.busy_poll_ns = busy_poll_us * 1000     # loop tuning only: no effect on decisions
        # frames up to max_inner leave (with an IPv6 local address: what fits the IPv6 headers,
        # for every peer); datagrams up to rx_max_inner are accepted (IPv4 headers)
        self.max_inner = underlay_mtu - (OUTER6_HLEN if self.has6 else spec.OUTER_HLEN)
        self.rx_max_inner = underlay_mtu - spec.OUTER_HLEN
        self._nets: dict[int, _Net] = {}
        self._g = dict.fromkeys(_counters.NAMES, 0)
        self.offload = bool(offload)
        self._pool: list[int] = []
        self._pool6: list[int] = []
        self.flowinfo6 = False

    # ---- offloads: the UDP socket pool (ports only; the sockets are the data plane's) ---------
    def set_udp_pool(self, fds: list[int], ports: list[int], family: int = 4,
                     flowinfo: bool = False) -> None:
        """One pool per local address family; flowinfo (IPv6): the sockets take a flow label
        per datagram (IPV6_FLOWINFO_SEND)."""
        if not self.offload:
            raise ValueError("a UDP socket pool needs offload=True")
        if family not in (4, 6):
            raise ValueError(f"family must be 4 or 6, got {family!r}")
        if not (self.has6 if family == 6 else self.has4):
            raise ValueError(f"an IPv{family} pool needs an IPv{family} local address")
        fds, ports = list(fds), list(ports)
        if not 1 <= len(ports) <= MAX_POOL or len(fds) != len(ports):
            raise ValueError(f"want 1..{MAX_POOL} sockets with one port each")
        checked = [_addr.check_port(p) for p in ports]
        if family == 4:
            self._pool = checked
        else:
            self._pool6 = checked
            self.flowinfo6 = bool(flowinfo)

    def set_raw6(self, fd: int) -> None:
        if not self.has6:
            raise ValueError("a raw IPv6 socket needs an IPv6 local address")

    def udp_pool(self, family: int = 4) -> list[int]:
        return list(self._pool6 if family == 6 else self._pool)

    def offload_state(self) -> dict[str, Any]:
        st: dict[str, Any] = {"offload": self.offload, "udp_gso": self.offload,
                              "pool_ports": self.udp_pool()}
        if self.has6:
            st["udp_gso6"] = self.offload
            st["pool_ports6"] = self.udp_pool(6)
        return st

    def locals(self) -> list[str]:
        return ([_addr.int_to_ip(self.local_ip)] if self.has4 else []) + (
            [self.local_ip6] if self.local_ip6 is not None else [])

    def _pool_port(self, frame: bytes, v6: bool = False) -> int:
        """The flow's socket: all its datagrams leave with this source port."""
        pool = self._pool6 if v6 else self._pool
        return pool[(py_flow_hash(frame) * len(pool)) >> 32]

    # ---- networks and tables ------------------------------------------------------------------
    def add_network(self, vni: int, tap_fd: int = -1) -> None:
        _addr.check_vni(vni)
        if vni in self._nets:
            raise ValueError(f"network with VNI {vni} exists")
        if len(self._nets) == MAX_NETS:
            raise ValueError(f"at most {MAX_NETS} networks per switch")
        self._nets[vni] = _Net(vni, tap_fd)

    def remove_network(self, vni: int) -> None:
        self._net(vni)
        del self._nets[vni]

    def networks(self) -> list[int]:
        return sorted(self._nets)

    def _net(self, vni: int) -> _Net:
        _addr.check_vni(vni)
        try:
            return self._nets[vni]
        except KeyError:
            raise KeyError(f"no network with VNI {vni}") from None

    def _vtep_key(self, vtep: str) -> int:
        """A VTEP's key; refused without a local address of its family (unreachable)."""
        k = _addr.vtep_key(vtep)
        if _addr.key_is_v4(k) and not self.has4:
            raise ValueError(f"VTEP {vtep} is IPv4 but this agent has no IPv4 local address "
                             f"(--local {self.local_ip6}); give --local an IPv4 address too")
        if not _addr.key_is_v4(k) and not self.has6:
            raise ValueError(f"VTEP {vtep} is IPv6 but this agent has no IPv6 local address "
                             f"(--local {_addr.int_to_ip(self.local_ip)}); give --local an "
                             "IPv6 address too")
        return k

    def fdb_add(self, vni: int, mac: str, vtep: str, port: int | None = None) -> None:
        m = _addr.check_unicast_mac(mac)
        ip = self._vtep_key(vtep)
        p = _addr.check_port(self.port if port is None else port)
        n = self._net(vni)
        v = n.vteps.setdefault(ip, _Vtep(ip, p))
        v.port = p
        v.refcnt += 1
        if m in n.fdb:
            self._unref(n, n.fdb[m])
        n.fdb[m] = ip

    def _unref(self, n: _Net, ip: int) -> None:
        v = n.vteps[ip]
        v.refcnt -= 1
        if v.refcnt == 0:
            del n.vteps[ip]

    def fdb_del(self, vni: int, mac: str) -> bool:
        m = _addr.mac_to_int(mac)
        n = self._net(vni)
        if m not in n.fdb:
            return False
        self._unref(n, n.fdb.pop(m))
        return True

    def neigh_add(self, vni: int, ip: str, mac: str) -> None:
        m = _addr.check_unicast_mac(mac)
        fam, a = _addr.neigh_ip(ip)
        n = self._net(vni)
        (n.neigh if fam == 4 else n.neigh6)[a] = m

    def neigh_del(self, vni: int, ip: str) -> bool:
        fam, a = _addr.neigh_ip(ip)
        n = self._net(vni)
        return (n.neigh if fam == 4 else n.neigh6).pop(a, None) is not None

    def fdb(self, vni: int) -> list[tuple[str, str, int]]:
        n = self._net(vni)
        return [(_addr.int_to_mac(m), _addr.key_to_ip(ip), n.vteps[ip].port)
                for m, ip in sorted(n.fdb.items())]

    def neigh(self, vni: int) -> list[tuple[str, str]]:
        n = self._net(vni)
        return ([(_addr.int_to_ip(a), _addr.int_to_mac(m)) for a, m in sorted(n.neigh.items())]
                + [(_addr.int_to_ip6(a), _addr.int_to_mac(m))
                   for a, m in sorted(n.neigh6.items())])

    def table_sizes(self, vni: int) -> dict[str, int]:
        n = self._net(vni)
        return {"fdb": len(n.fdb), "neigh": len(n.neigh) + len(n.neigh6),
                "vteps": len(n.vteps)}

    def vteps(self, vni: int) -> list[dict[str, Any]]:
        return [{"vtep": _addr.key_to_ip(v.ip), "port": v.port, "fdb_entries": v.refcnt,
                 "tx_packets": v.tx_packets, "tx_bytes": v.tx_bytes,
                 "rx_packets": v.rx_packets, "rx_bytes": v.rx_bytes}
                for v in sorted(self._net(vni).vteps.values(), key=lambda v: v.ip)]

    def counters(self, vni: int | None = None) -> dict[str, int]:
        return dict(self._g if vni is None else self._net(vni).c)

    # ---- outbound: a frame read from the TAP of `vni` -----------------------------------------
    def process_tap(self, vni: int, frames: Iterable[bytes]) -> tuple[list, list]:
        """Offloads on: each frame starts with its virtio-net header, and the outputs are
        ("udp", dst_ip, dst_port, src_port, udp_payload) per wire datagram and
        ("tap", vni, virtio_header + reply) per ARP reply."""
        n = self._net(vni)
        out: list[tuple] = []
        replies: list[tuple] = []
        decs: list[dict[str, Any]] = []
        frames = [bytes(f) for f in frames]
        if self.offload and ((self.has4 and not self._pool) or (self.has6 and not self._pool6)):
            raise ValueError("offloads on: set_udp_pool() first")
        for start in range(0, len(frames), self.batch):
            for f in frames[start:start + self.batch]:
                if self.offload:
                    f = f[:vnet_ref.VNET_HLEN + gso_ref.GSO_MAX_FRAME + 1]
                    decs.append(self._tx_one_off(n, f, out, replies))
                    continue
                f = f[:self.max_inner + 1]                 # what read() into the slot returns
                decs.append(self._tx_one(n, f, out, replies))
            out.extend(replies)                            # ARP replies after the batch's sends
            replies = []
        return out, decs

    def _tx_one(self, n: _Net, f: bytes, out: list, replies: list) -> dict[str, Any]:
        c = n.c
        c["tap_rx_packets"] += 1
        c["tap_rx_bytes"] += len(f)
        if len(f) < spec.ETH_HLEN:
            return self._drop(c, n.vni, "tx_short")
        if len(f) > self.max_inner:
            return self._drop(c, n.vni, "tx_too_big")
        def send(vteps: list[_Vtep]) -> int:
            for v in vteps:                                # head-end replication
                self._send(n, v, f, out)
            return len(vteps)
        return self._classify(n, f, replies, send)

    def _classify(self, n: _Net, f: bytes, replies: list, send: Callable[[list[_Vtep]], int],
                  arp: bool = True, reply_prefix: bytes = b"") -> dict[str, Any]:
        """ARP/ND suppression (not for a GSO frame: arp=False), then unicast to the FDB's
        VTEP, flood or drop. send(vteps) emits the datagrams and returns how many."""
        c = n.c
        verdict = ARP_NOT_REQUEST
        if arp:
            verdict, reply = arp_reduce(f, n.neigh)
            if verdict == ARP_NOT_REQUEST:
                verdict, reply = nd_reduce(f, n.neigh6)     # IPv6 neighbour solicitation
            if verdict in (ARP_ANSWERED, ND_ANSWERED):
                assert reply is not None
                replies.append(("tap", n.vni, reply_prefix + reply))
                is_arp = verdict == ARP_ANSWERED
                c["arp_replied" if is_arp else "nd_replied"] += 1
                return _decision(n.vni, "arp_reply" if is_arp else "nd_reply")
            if verdict in ND_DROPS:
                return self._drop(c, n.vni, ND_DROPS[verdict])
        if verdict == ARP_MISS:
            reason = "arp_miss"
        elif verdict == ND_MISS:
            reason = "nd_miss"
        elif f[0] & 1:
            reason = "bum"
        else:
            vtep_ip = n.fdb.get(int.from_bytes(f[:6], "big"))
            if vtep_ip is not None:
                v = n.vteps[vtep_ip]
                return _decision(n.vni, "encap", vtep=v.ip, copies=send([v]))
            reason = "unknown_unicast"
        if self.flood and n.vteps:
            copies = send(list(n.vteps.values()))
            c["flooded"] += 1
            return _decision(n.vni, "flood", copies=copies)
        return self._drop(c, n.vni, reason)

    def _tx_one_off(self, n: _Net, raw: bytes, out: list, replies: list) -> dict[str, Any]:
        """One frame with its virtio-net header (offloads on)."""
        c = n.c
        f = raw[vnet_ref.VNET_HLEN:]
        c["tap_rx_packets"] += 1
        c["tap_rx_bytes"] += len(f)
        if len(f) < spec.ETH_HLEN:
            return self._drop(c, n.vni, "tx_short")
        h = vnet_ref.py_parse(raw)
        r = vnet_ref.py_check(h, len(f))
        if r < 0:
            return self._drop(c, n.vni, gso_ref.REASONS[r])
        segs = None
        if h.gso_type != vnet_ref.VNET_GSO_NONE:
            if len(f) > gso_ref.GSO_MAX_FRAME:
                return self._drop(c, n.vni, "tx_too_big")
            r, g = gso_ref.py_prepare(h, f, self.max_inner)
            if r < 0:
                return self._drop(c, n.vni, gso_ref.REASONS[r])
            segs = [gso_ref.py_segment(f, g, i) for i in range(g["nseg"])]
        elif len(f) > self.max_inner:
            return self._drop(c, n.vni, "tx_too_big")
        elif h.flags & vnet_ref.VNET_F_NEEDS_CSUM:
            f = gso_ref.py_csum_complete(h, f)
            c["csum_completed"] += 1
        return self._classify(n, f, replies, lambda vs: self._send_off(n, vs, f, segs, out),
                              arp=segs is None, reply_prefix=bytes(vnet_ref.VNET_HLEN))

    def _send_off(self, n: _Net, vteps: list[_Vtep], f: bytes, segs: list[bytes] | None,
                  out: list) -> int:
        """Offloads on: VXLAN header + frame (or + each segment) on the flow's pool socket."""
        if segs is not None:
            n.c["gso_frames"] += 1
            n.c["gso_segments"] += len(segs)
        vx = struct.pack("!II", spec.VXLAN_FLAG_I << 24, n.vni << 8)
        copies = 0
        for v in vteps:
            v6 = not _addr.key_is_v4(v.ip)
            sport = self._pool_port(f, v6)       # the kernel writes the outer headers
            for seg in (segs if segs is not None else [f]):
                out.append(("udp", _addr.key_to_ip(v.ip), v.port, sport, vx + seg))
                wire = (OUTER6_HLEN if v6 else spec.OUTER_HLEN) + len(seg)
                v.tx_packets += 1
                v.tx_bytes += wire
                n.c["udp_tx_packets"] += 1
                n.c["udp_tx_bytes"] += wire
                copies += 1
        return copies

    def _send(self, n: _Net, v: _Vtep, f: bytes, out: list) -> None:
        sport = py_source_port(f, self.sport_lo, self.sport_hi)
        if _addr.key_is_v4(v.ip):
            datagram = py_encap(f, self.local_ip, v.ip & 0xFFFFFFFF, sport, v.port, n.vni,
                                self.ttl)
        else:                                     # outer IPv6: checksum, inner flow label
            datagram = py_encap6(f, self._local6, v.ip.to_bytes(16, "big"), sport, v.port,
                                 n.vni, self.ttl, py_flow_label(f), self.udp6zerocsumtx)
        out.append(("udp", _addr.key_to_ip(v.ip), v.port, datagram))
        v.tx_packets += 1
        v.tx_bytes += len(datagram)
        n.c["udp_tx_packets"] += 1
        n.c["udp_tx_bytes"] += len(datagram)

    @staticmethod
    def _drop(c: dict[str, int], vni: int, reason: str, vtep: int = 0) -> dict[str, Any]:
        c["drop_" + reason] += 1
        return _decision(vni, "drop", reason, vtep=vtep)

    # ---- inbound: a UDP payload received from `src` --------------------------------------------
    def process_udp(self, datagrams: Iterable[tuple]) -> tuple[list, list]:
        """datagrams: (src_ip, payload), with offloads also (src_ip, payload, gso_size): a
        UDP_GRO buffer of gso_size datagrams; a 4th item is what an IPv6 receive socket
        reported (EXT_CODES: None, "ext_hdr", "fragment"). Decisions: one per datagram. Outputs: ("tap",
        vni, inner_frame); offloads on: ("tap", vni, virtio_header + frame) per TAP write,
        after coalescing (gro_ref) the delivered datagrams of each batch, per run of
        consecutive datagrams of one network."""
        out: list[tuple] = []
        decs: list[dict[str, Any]] = []
        items = []
        for it in datagrams:
            gso = it[2] if len(it) >= 3 else 0
            if gso and not self.offload:
                raise ValueError("a gso_size needs offload=True")
            ext = it[3] if len(it) >= 4 else None
            if ext not in (0, *EXT_CODES):
                raise ValueError(f"ext must be None, 'ext_hdr' or 'fragment', got {ext!r}")
            items.append((_addr.src_key(it[0]), bytes(it[1]), gso, ext or None))
        if not self.offload:
            for src, p, _, ext in items:
                trunc = len(p) > RX_GRO_SLOT
                d, n, sup = self._rx_check(src, p[:RX_GRO_SLOT], trunc, ext)
                if n is not None:
                    for f in self._plain_frames(n, p[spec.VXLAN_HLEN:], sup):
                        self._deliver_count(n, len(f))
                        out.append(("tap", n.vni, f))
                decs.append(d)
            return out, decs
        for start in range(0, len(items), self.batch):
            got: list[tuple[_Net | None, bytes]] = []
            for src, p, gso, ext in items[start:start + self.batch]:
                trunc = len(p) > RX_GRO_SLOT
                p = p[:RX_GRO_SLOT]
                g = gso if 0 < gso < len(p) else max(len(p), 1)
                for off in range(0, max(len(p), 1), g):
                    dg = p[off:off + g]
                    d, n, sup = self._rx_check(src, dg, trunc, ext)
                    decs.append(d)
                    got.append((n, dg[spec.VXLAN_HLEN:], sup))
            i = 0
            while i < len(got):
                n, inner, sup = got[i]
                if n is None:
                    i += 1
                    continue
                if sup is not None:        # a kernel sender's super-frame: one GSO write
                    self._deliver_count(n, len(inner))
                    n.c["gro_frames"] += 1
                    n.c["gro_segments"] += -(-(len(inner) - sup.hdr_len) // sup.gso_size)
                    out.append(("tap", n.vni, vnet_ref.py_build(sup) + inner))
                    i += 1
                    continue
                frames = []
                while i < len(got) and (got[i][0] is None or (got[i][0] is n
                                                             and got[i][2] is None)):
                    if got[i][0] is n:
                        frames.append(got[i][1])
                    i += 1
                runs, st = gro_ref.coalesce_stats(frames, gro_ref.GRO_MAX_FRAME)
                n.c["gro_frames"] += st["gro_frames"]
                n.c["gro_segments"] += st["gro_segs"]
                n.c["csum_completed"] += st["csum_completed"]
                for hdr, body in runs:
                    self._deliver_count(n, len(body))
                    out.append(("tap", n.vni, hdr + body))
        return out, decs

    def _plain_frames(self, n: _Net, inner: bytes, sup: vnet_ref.VnetHdr | None) -> list[bytes]:
        """Offloads off: what is written to the TAP (no virtio-net header) for one inner frame:
        a partial checksum completed (gro_ref.py_csum_rx_fix), a super-frame cut into
        segments (gso_ref)."""
        if sup is not None:
            _, g = gso_ref.py_prepare(sup, inner, self.max_inner)
            return [gso_ref.py_segment(inner, g, i) for i in range(g["nseg"])]
        st, fixed = gro_ref.py_csum_rx_fix(inner, False)
        if st == gro_ref.CSUM_COMPLETED:
            n.c["csum_completed"] += 1
        return [fixed]

    @staticmethod
    def _deliver_count(n: _Net, nbytes: int) -> None:
        n.c["tap_tx_packets"] += 1
        n.c["tap_tx_bytes"] += nbytes

    def _rx_check(self, src: int, p: bytes, trunc: bool, ext: str | None = None
                  ) -> tuple[dict[str, Any], _Net | None, vnet_ref.VnetHdr | None]:
        """One datagram: its decision, the network to deliver it to (None = dropped), and
        for an inner super-frame (offloads on, gso_ref.py_rx_super) its virtio-net header.
        ext: the outer IPv6 packet had extension headers / was reassembled (dropped: a VTEP
        sends neither, RFC 7348 + RFC 8200 5)."""
        sup = None
        if ext is not None:
            return self._drop(self._g, 0, "ip6_" + ext, src), None, None
        if trunc or len(p) > spec.VXLAN_HLEN + self.rx_max_inner:
            if not trunc:        # a kernel sender's tunnel GSO packet, arrived whole
                sup = gso_ref.py_rx_super(p[spec.VXLAN_HLEN:], self.max_inner)
            if sup is None:
                return self._drop(self._g, 0, "rx_too_big", src), None, None
        d, n = self._rx_valid(src, p)
        return d, n, (sup if n is not None else None)

    def _rx_valid(self, src: int, p: bytes) -> tuple[dict[str, Any], _Net | None]:
        vni = py_parse_vxlan(p, self.strict)
        if vni < 0:
            reason = {VX_TRUNCATED: "truncated", VX_NO_I_FLAG: "no_i_flag"}.get(vni, "reserved")
            return self._drop(self._g, 0, reason, src), None
        n = self._nets.get(vni)
        if n is None:
            return self._drop(self._g, vni, "unknown_vni", src), None
        if len(p) < spec.VXLAN_HLEN + spec.ETH_HLEN:
            return self._drop(n.c, vni, "inner_short", src), None
        v = n.vteps.get(src)
        if v is None and self.strict:
            return self._drop(n.c, vni, "spoofed", src), None
        inner = p[spec.VXLAN_HLEN:]
        if inner[6] & 1 or inner[6:12] == bytes(6):
            return self._drop(n.c, vni, "bad_inner_src", src), None
        n.c["udp_rx_packets"] += 1
        n.c["udp_rx_bytes"] += len(p)
        if v is not None:
            v.rx_packets += 1
            v.rx_bytes += len(p)
        return _decision(vni, "deliver", vtep=src, copies=1), n
