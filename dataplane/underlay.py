"""Underlay sockets: a UDP socket that receives VXLAN, a raw IPv4 socket that sends it.

Sending through IPPROTO_RAW (IP_HDRINCL) lets the fast path write the outer IPv4 and UDP
headers itself, so the UDP source port carries the hash of the inner flow (ECMP entropy, as
the kernel's vxlan does) and DF is set (a frame that does not fit is dropped, never
fragmented). The kernel adds the Ethernet header and routes by the outer destination.

With offloads (--offload auto) the send side is instead a pool of K UDP sockets bound to K
distinct source ports inside --srcport (UDP GSO needs a UDP socket: one sendmsg with
UDP_SEGMENT carries up to 64 segments). The inner flow hash picks the socket, so a flow keeps
one outer source port; ECMP entropy is K ports instead of the whole range (the trade-off,
README "Limitations"). DF via IP_MTU_DISCOVER=IP_PMTUDISC_DO. The receive socket gets UDP_GRO:
the kernel hands over up to 64 datagrams of one flow as one buffer.

Multi-queue (`--threads multi`, N forwarding threads): N receive sockets bound to the same
address with SO_REUSEPORT; the kernel picks one by the hash of the outer addresses and ports,
and a peer's outer source port follows its inner flow, so each inner flow arrives on one
socket (one thread, in order). The send side (raw socket or pool) is shared.

IPv6 underlay (an IPv6 --local): the receive socket is AF_INET6 (bound to the IPv6 address;
with both families, dual stack, to [::] with IPV6_V6ONLY off, so IPv4 peers arrive as
IPv4-mapped sources on the same socket and the forwarding loops keep one receive fd). The
kernel validates what it hands over (payload length, UDP length and checksum, a zero
checksum refused unless UDP_NO_CHECK6_RX: `--udp6zerocsumrx`, like the kernel's
`udp6zerocsumrx`); the socket also reports extension headers (IPV6_RECVHOPOPTS/RTHDR/DSTOPTS)
and reassembly (IPV6_RECVFRAGSIZE) as control messages, which the fast path drops and counts
(ip6_ext_hdr, ip6_fragment). Sending: a raw IPv6 socket (IPPROTO_RAW: header included, we write
it, with the UDP checksum) with offloads off; with offloads a pool of IPv6 UDP sockets on the
same ports as the IPv4 pool (the kernel writes the header and the checksum; DF via
IPV6_MTU_DISCOVER=IPV6_PMTUDISC_DO; UDP_NO_CHECK6_TX for `--udp6zerocsumtx`, with which the
kernel refuses UDP GSO, so that family falls back to one datagram per send;
IPV6_FLOWINFO_SEND so each datagram carries its inner flow's label).
"""
from __future__ import annotations

import socket
from dataclasses import dataclass, field

from dataplane.netns import netns
from fastpath import addr

import errno
import logging

SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32
SO_MEMINFO = 55          # linux/sock_diag.h: u32[SK_MEMINFO_VARS], [8] = SK_MEMINFO_DROPS
IP_RECVERR = 11
BUFSIZE = 4 << 20
SOL_UDP = 17
UDP_GRO = 104
IP_MTU_DISCOVER = 10
IP_PMTUDISC_DO = 2
POOL_SIZE = 16
# IPv6 (linux/in6.h, linux/udp.h)
IPV6_UNICAST_HOPS = 16
IPV6_MTU_DISCOVER = 23
IPV6_PMTUDISC_DO = 2
IPV6_RECVERR = 25
IPV6_V6ONLY = 26
IPV6_FLOWINFO_SEND = 33
IPV6_RECVHOPOPTS = 53
IPV6_RECVRTHDR = 56
IPV6_RECVDSTOPTS = 58
IPV6_RECVFRAGSIZE = 77
UDP_NO_CHECK6_TX = 101
UDP_NO_CHECK6_RX = 102

log = logging.getLogger("vxtap.underlay")


@dataclass
class Underlay:
    udp: socket.socket     # bound to (local, port); recvmmsg by the RX loop
    raw: socket.socket | None     # IPPROTO_RAW IPv4; sendmmsg by the TX loops (offloads off)
    pool: list[socket.socket] = field(default_factory=list)   # offloads on: send sockets
    gro: bool = False      # UDP_GRO on the receive socket
    raw6: socket.socket | None = None     # IPPROTO_RAW IPv6 (an IPv6 local address)
    pool6: list[socket.socket] = field(default_factory=list)  # offloads on: IPv6 send sockets
    flowinfo6: bool = False               # the IPv6 pool takes per-datagram flow labels
    udp_more: list[socket.socket] = field(default_factory=list)   # multi-queue: sockets 1..

    @property
    def receivers(self) -> list[socket.socket]:
        """The receive sockets, one per forwarding thread of the multi-queue mode."""
        return [self.udp, *self.udp_more]

    @property
    def pool_ports(self) -> list[int]:
        return [s.getsockname()[1] for s in self.pool]

    @property
    def pool_ports6(self) -> list[int]:
        return [s.getsockname()[1] for s in self.pool6]

    def raw_fd(self) -> int:
        """The loops' raw_fd (IPv4); -1 on an IPv6-only underlay (never used there)."""
        return self.raw.fileno() if self.raw is not None else -1

    def close(self) -> None:
        self.udp.close()
        for s in [self.raw, self.raw6, *self.pool, *self.pool6, *self.udp_more]:
            if s is not None:
                s.close()

    def kernel_drops(self) -> int:
        """Datagrams the kernel dropped for the UDP socket (receive buffer full), SO_MEMINFO."""
        total = 0
        for s in self.receivers:
            try:
                raw = s.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 9 * 4)
            except OSError:
                continue
            total += int.from_bytes(raw[32:36], "little")
        return total


# What the kernel drops of an IPv6 underlay before a datagram can reach the socket (its
# namespace's /proc/net/snmp6): a bad or (without --udp6zerocsumrx) zero UDP checksum, a UDP
# length beyond the packet, a payload length beyond the frame, bad IPv6 headers. Node-wide
# counters (not only VXLAN), shown next to the fast path's own drop reasons.
SNMP6_DROPS = {"Ip6InHdrErrors": "ip6_in_hdr_errors", "Ip6InTruncatedPkts": "ip6_in_truncated",
               "Ip6ReasmFails": "ip6_reasm_fails", "Udp6InErrors": "udp6_in_errors",
               "Udp6InCsumErrors": "udp6_in_csum_errors"}


# A checksum the receive path leaves to recvmsg (not validated earlier, e.g. from a veth) is
# checked while it is copied out, and counted in the "Udp:" MIB of /proc/net/snmp.
SNMP_UDP_DROPS = {"InErrors": "udp_in_errors", "InCsumErrors": "udp_in_csum_errors"}


def kernel_ip6_drops(ns: str | None) -> dict[str, int]:
    out = dict.fromkeys([*SNMP6_DROPS.values(), *SNMP_UDP_DROPS.values()], 0)
    try:
        with netns(ns):
            with open("/proc/thread-self/net/snmp6") as f:
                text = f.read()
            with open("/proc/thread-self/net/snmp") as f:
                udp = [line.split() for line in f if line.startswith("Udp:")]
    except (OSError, ValueError):
        return out
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in SNMP6_DROPS:
            out[SNMP6_DROPS[parts[0]]] = int(parts[1])
    if len(udp) == 2:
        for k, v in zip(udp[0][1:], udp[1][1:]):
            if k in SNMP_UDP_DROPS:
                out[SNMP_UDP_DROPS[k]] = int(v)
    return out


def _bufsize(s: socket.socket, force: int, plain: int) -> None:
    try:
        s.setsockopt(socket.SOL_SOCKET, force, BUFSIZE)
    except PermissionError:
        s.setsockopt(socket.SOL_SOCKET, plain, BUFSIZE)


def pool_ports(lo: int, hi: int, k: int) -> list[int]:
    """The K candidate source ports, spread evenly over [lo, hi) (deterministic)."""
    k = max(1, min(k, hi - lo))
    step = (hi - lo) // k
    return [lo + i * step for i in range(k)]


def open_pool(local_ip: str, srcport: tuple[int, int], ttl: int, k: int = POOL_SIZE,
              ns: str | None = None, zerocsumtx: bool = False) -> list[socket.socket]:
    """K UDP send sockets bound to distinct ports in [lo, hi); a busy port is skipped for
    the next free one after it (each candidate tries up to its neighbour's start). An IPv6
    local_ip gives IPv6 sockets (zerocsumtx: UDP_NO_CHECK6_TX)."""
    lo, hi = srcport
    socks: list[socket.socket] = []
    cands = pool_ports(lo, hi, k)
    v6 = ":" in local_ip
    fam = socket.AF_INET6 if v6 else socket.AF_INET
    with netns(ns):
        try:
            for i, p0 in enumerate(cands):
                end = cands[i + 1] if i + 1 < len(cands) else hi
                for p in range(p0, end):
                    s = socket.socket(fam, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                    try:
                        if v6:
                            s.setsockopt(socket.IPPROTO_IPV6, IPV6_V6ONLY, 1)
                        s.bind((local_ip, p))
                    except OSError as e:
                        s.close()
                        if e.errno == errno.EADDRINUSE:
                            continue
                        raise OSError(e.errno, f"cannot bind an underlay send socket to "
                                               f"{local_ip}:{p}: {e.strerror}") from None
                    if v6:
                        s.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO)
                        s.setsockopt(socket.IPPROTO_IPV6, IPV6_UNICAST_HOPS, ttl)
                        s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
                        if zerocsumtx:
                            s.setsockopt(SOL_UDP, UDP_NO_CHECK6_TX, 1)
                    else:
                        s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
                        s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
                        # as on the raw socket: a full qdisc/device queue (ENOBUFS) is
                        # reported and counted as drop_send_error instead of passing as sent
                        s.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                    _bufsize(s, SO_SNDBUFFORCE, socket.SO_SNDBUF)
                    socks.append(s)
                    break
        except Exception:
            for s in socks:
                s.close()
            raise
    if not socks:
        raise OSError(errno.EADDRINUSE, f"no free UDP source port in {lo}-{hi} on {local_ip}")
    return socks


def enable_gro(udp: socket.socket) -> bool:
    try:
        udp.setsockopt(SOL_UDP, UDP_GRO, 1)
        return True
    except OSError as e:
        log.warning("UDP_GRO refused on the underlay socket: %s", e)
        return False


def enable_flowinfo(pool6: list[socket.socket]) -> bool:
    """IPV6_FLOWINFO_SEND on the IPv6 pool: each datagram's flow label is the one the fast
    path puts in its destination address (the inner flow's, as the kernel's vxlan sets it)."""
    try:
        for s in pool6:
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_FLOWINFO_SEND, 1)
        return bool(pool6)
    except OSError as e:
        log.warning("IPV6_FLOWINFO_SEND refused (flow labels per socket, not per flow): %s", e)
        return False


def _raw_sender(family: int) -> socket.socket:
    """A raw send socket of `family` (AF_INET or AF_INET6). IPPROTO_RAW: the fast path writes
    the outer IP header (over IPv6 too, where IPPROTO_RAW means "header included"). Without
    IP_RECVERR / IPV6_RECVERR a raw socket hides ENOBUFS (a full qdisc or device queue) and
    reports the datagram as sent; with it the TX loop sees the error and counts
    drop_send_error (found by benchmarks/chaos.py, exhaustion)."""
    s = socket.socket(family, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.IPPROTO_RAW)
    try:
        _bufsize(s, SO_SNDBUFFORCE, socket.SO_SNDBUF)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
        else:
            s.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
    except Exception:
        s.close()
        raise
    return s


def _receiver(v4: str | None, v6: str | None, port: int, zerocsumrx: bool,
              reuseport: bool) -> socket.socket:
    """One receive socket for the local address(es) (IPv4 only: AF_INET; with IPv6: AF_INET6,
    dual stack on [::] when there is an IPv4 address too)."""
    if v6 is None:
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        bind: tuple[str, int] = (v4 or "", port)
    else:
        udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        if v6 is not None:
            # dual stack: one socket for both families (IPv4 peers as ::ffff:a.b.c.d)
            udp.setsockopt(socket.IPPROTO_IPV6, IPV6_V6ONLY, 0 if v4 else 1)
            bind = ("::" if v4 else v6, port)
            for opt in (IPV6_RECVHOPOPTS, IPV6_RECVRTHDR, IPV6_RECVDSTOPTS, IPV6_RECVFRAGSIZE):
                udp.setsockopt(socket.IPPROTO_IPV6, opt, 1)
            if zerocsumrx:
                udp.setsockopt(SOL_UDP, UDP_NO_CHECK6_RX, 1)
        _bufsize(udp, SO_RCVBUFFORCE, socket.SO_RCVBUF)
        if reuseport:
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            udp.bind(bind)
        except OSError as e:
            raise OSError(e.errno, f"cannot bind the underlay UDP socket to "
                          f"{addr.join_host_port(bind[0] or '0.0.0.0', port)}: "
                          f"{e.strerror}") from None
    except Exception:
        udp.close()
        raise
    return udp


def open_underlay(local_ip: str, port: int, ns: str | None = None, *,
                  zerocsumrx: bool = False, queues: int = 1) -> Underlay:
    """The receive socket(s) and the raw send sockets for the local address(es) `local_ip`
    ("v4", "v6" or "v4,v6"). queues > 1: that many receive sockets (SO_REUSEPORT)."""
    v4, v6 = addr.check_locals(local_ip)
    socks: list[socket.socket] = []
    with netns(ns):
        try:
            if queues > 1:
                # SO_REUSEPORT would let a second agent on this address share the port
                # silently (same uid): a plain bind first says "in use" as with one socket
                _receiver(v4, v6, port, zerocsumrx, False).close()
            udp = _receiver(v4, v6, port, zerocsumrx, queues > 1)
            socks.append(udp)
            more = [_receiver(v4, v6, port, zerocsumrx, True) for _ in range(queues - 1)]
            socks.extend(more)
            raw = raw6 = None
            if v4 is not None:
                raw = _raw_sender(socket.AF_INET)
                socks.append(raw)
            if v6 is not None:
                raw6 = _raw_sender(socket.AF_INET6)
                socks.append(raw6)
        except Exception:
            for s in socks:
                s.close()
            raise
    return Underlay(udp=udp, raw=raw, raw6=raw6, udp_more=more)
