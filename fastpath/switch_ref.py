"""Pure-Python reference of switch.pyx: what the fast path decides for each packet.

Same API as fastpath.switch.Switch, minus the forwarding loops (run_tx/run_rx/stop), which are
syscall plumbing around the two classification functions below. Read this file to learn the
behaviour; the unit tests check that the Cython switch agrees with it packet for packet.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from fastpath import addr as _addr
from fastpath import counters as _counters
from fastpath import spec
from fastpath.arp_ref import ARP_ANSWERED, ARP_MISS, ARP_NOT_REQUEST, arp_reduce
from fastpath.nd_ref import DROP_REASONS as ND_DROPS
from fastpath.nd_ref import ND_ANSWERED, ND_MISS, nd_reduce
from fastpath.headers_ref import (VX_NO_I_FLAG, VX_TRUNCATED, py_encap, py_parse_vxlan,
                                  py_source_port)

MAX_BATCH = 1024
MAX_NETS = 256


@dataclass
class _Vtep:
    ip: int
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
        self.vteps: dict[int, _Vtep] = {}      # VTEP IP -> VTEP, in insertion order
        self.c = dict.fromkeys(_counters.NAMES, 0)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int_in(what: str, v: Any, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ValueError(f"{what} must be in {lo}..{hi}, got {v!r}")
    return v


def _decision(vni: int, verdict: str, reason: str | None = None, vtep: int = 0,
              copies: int = 0) -> dict[str, Any]:
    return {"vni": vni, "verdict": verdict, "reason": reason,
            "vtep": _addr.int_to_ip(vtep) if vtep else None, "copies": copies}


class Switch:
    def __init__(self, local_ip: str, port: int = 4789, *, strict: bool = True,
                 flood: bool = False, srcport: tuple[int, int] = (32768, 61000), ttl: int = 64,
                 batch: int = 64, underlay_mtu: int = 1500, busy_poll_us: int = 0) -> None:
        lo, hi = srcport
        if not (_is_int(lo) and _is_int(hi) and 0 < lo < hi <= 65536):
            raise ValueError(f"bad source port range {lo}-{hi}: want 1 <= min < max <= 65536")
        _int_in("batch", batch, 1, MAX_BATCH)
        _int_in("ttl", ttl, 1, 255)
        _int_in("underlay MTU", underlay_mtu, 576, 65535)
        _int_in("busy_poll_us", busy_poll_us, 0, 1_000_000)
        self.local_ip = _addr.ip_to_int(local_ip)
        self.port = _addr.check_port(port)
        self.sport_lo, self.sport_hi = lo, hi
        self.strict, self.flood, self.ttl, self.batch = strict, flood, ttl, batch
        self.underlay_mtu = underlay_mtu
        self.busy_poll_ns = busy_poll_us * 1000     # loop tuning only: no effect on decisions
        self.max_inner = underlay_mtu - spec.OUTER_HLEN
        self._nets: dict[int, _Net] = {}
        self._g = dict.fromkeys(_counters.NAMES, 0)

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

    def fdb_add(self, vni: int, mac: str, vtep: str, port: int | None = None) -> None:
        m = _addr.check_unicast_mac(mac)
        ip = _addr.check_vtep_ip(vtep)
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
        return [(_addr.int_to_mac(m), _addr.int_to_ip(ip), n.vteps[ip].port)
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
        return [{"vtep": _addr.int_to_ip(v.ip), "port": v.port, "fdb_entries": v.refcnt,
                 "tx_packets": v.tx_packets, "tx_bytes": v.tx_bytes,
                 "rx_packets": v.rx_packets, "rx_bytes": v.rx_bytes}
                for v in sorted(self._net(vni).vteps.values(), key=lambda v: v.ip)]

    def counters(self, vni: int | None = None) -> dict[str, int]:
        return dict(self._g if vni is None else self._net(vni).c)

    # ---- outbound: a frame read from the TAP of `vni` -----------------------------------------
    def process_tap(self, vni: int, frames: Iterable[bytes]) -> tuple[list, list]:
        n = self._net(vni)
        out: list[tuple] = []
        replies: list[tuple] = []
        decs: list[dict[str, Any]] = []
        frames = [bytes(f) for f in frames]
        for start in range(0, len(frames), self.batch):
            for f in frames[start:start + self.batch]:
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
        verdict, reply = arp_reduce(f, n.neigh)
        if verdict == ARP_NOT_REQUEST:
            verdict, reply = nd_reduce(f, n.neigh6)         # IPv6 neighbour solicitation
        if verdict in (ARP_ANSWERED, ND_ANSWERED):
            assert reply is not None
            replies.append(("tap", n.vni, reply))
            arp = verdict == ARP_ANSWERED
            c["arp_replied" if arp else "nd_replied"] += 1
            return _decision(n.vni, "arp_reply" if arp else "nd_reply")
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
                self._send(n, v, f, out)
                return _decision(n.vni, "encap", vtep=v.ip, copies=1)
            reason = "unknown_unicast"
        if self.flood and n.vteps:
            for v in n.vteps.values():                     # head-end replication
                self._send(n, v, f, out)
            c["flooded"] += 1
            return _decision(n.vni, "flood", copies=len(n.vteps))
        return self._drop(c, n.vni, reason)

    def _send(self, n: _Net, v: _Vtep, f: bytes, out: list) -> None:
        sport = py_source_port(f, self.sport_lo, self.sport_hi)
        datagram = py_encap(f, self.local_ip, v.ip, sport, v.port, n.vni, self.ttl)
        out.append(("udp", _addr.int_to_ip(v.ip), v.port, datagram))
        v.tx_packets += 1
        v.tx_bytes += len(datagram)
        n.c["udp_tx_packets"] += 1
        n.c["udp_tx_bytes"] += len(datagram)

    @staticmethod
    def _drop(c: dict[str, int], vni: int, reason: str, vtep: int = 0) -> dict[str, Any]:
        c["drop_" + reason] += 1
        return _decision(vni, "drop", reason, vtep=vtep)

    # ---- inbound: a UDP payload received from `src` --------------------------------------------
    def process_udp(self, datagrams: Iterable[tuple[str, bytes]]) -> tuple[list, list]:
        out: list[tuple] = []
        decs = [self._rx_one(_addr.ip_to_int(src), bytes(p), out) for src, p in datagrams]
        return out, decs

    def _rx_one(self, src: int, p: bytes, out: list) -> dict[str, Any]:
        if len(p) > spec.VXLAN_HLEN + self.max_inner:
            return self._drop(self._g, 0, "rx_too_big", src)
        vni = py_parse_vxlan(p, self.strict)
        if vni < 0:
            reason = {VX_TRUNCATED: "truncated", VX_NO_I_FLAG: "no_i_flag"}.get(vni, "reserved")
            return self._drop(self._g, 0, reason, src)
        n = self._nets.get(vni)
        if n is None:
            return self._drop(self._g, vni, "unknown_vni", src)
        if len(p) < spec.VXLAN_HLEN + spec.ETH_HLEN:
            return self._drop(n.c, vni, "inner_short", src)
        v = n.vteps.get(src)
        if v is None and self.strict:
            return self._drop(n.c, vni, "spoofed", src)
        inner = p[spec.VXLAN_HLEN:]
        if inner[6] & 1 or inner[6:12] == bytes(6):
            return self._drop(n.c, vni, "bad_inner_src", src)
        n.c["udp_rx_packets"] += 1
        n.c["udp_rx_bytes"] += len(p)
        if v is not None:
            v.rx_packets += 1
            v.rx_bytes += len(p)
        n.c["tap_tx_packets"] += 1
        n.c["tap_tx_bytes"] += len(inner)
        out.append(("tap", vni, inner))
        return _decision(vni, "deliver", vtep=src, copies=1)
