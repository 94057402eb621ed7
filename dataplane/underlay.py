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
"""
from __future__ import annotations

import socket
from dataclasses import dataclass, field

from dataplane.netns import netns

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

log = logging.getLogger("vxtap.underlay")


@dataclass
class Underlay:
    udp: socket.socket     # bound to (local, port); recvmmsg by the RX loop
    raw: socket.socket     # IPPROTO_RAW; sendmmsg by the TX loops (offloads off)
    pool: list[socket.socket] = field(default_factory=list)   # offloads on: send sockets
    gro: bool = False      # UDP_GRO on the receive socket
    udp_more: list[socket.socket] = field(default_factory=list)   # multi-queue: sockets 1..

    @property
    def receivers(self) -> list[socket.socket]:
        """The receive sockets, one per forwarding thread of the multi-queue mode."""
        return [self.udp, *self.udp_more]

    @property
    def pool_ports(self) -> list[int]:
        return [s.getsockname()[1] for s in self.pool]

    def close(self) -> None:
        self.udp.close()
        for s in self.udp_more:
            s.close()
        self.raw.close()
        for s in self.pool:
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
              ns: str | None = None) -> list[socket.socket]:
    """K UDP send sockets bound to distinct ports in [lo, hi); a busy port is skipped for
    the next free one after it (each candidate tries up to its neighbour's start)."""
    lo, hi = srcport
    socks: list[socket.socket] = []
    cands = pool_ports(lo, hi, k)
    with netns(ns):
        try:
            for i, p0 in enumerate(cands):
                end = cands[i + 1] if i + 1 < len(cands) else hi
                for p in range(p0, end):
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                    try:
                        s.bind((local_ip, p))
                    except OSError as e:
                        s.close()
                        if e.errno == errno.EADDRINUSE:
                            continue
                        raise OSError(e.errno, f"cannot bind an underlay send socket to "
                                               f"{local_ip}:{p}: {e.strerror}") from None
                    s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
                    s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                    # as on the raw socket: a full qdisc/device queue (ENOBUFS) is reported
                    # and counted as drop_send_error instead of passing as sent
                    s.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
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


def _receiver(local_ip: str, port: int, reuseport: bool) -> socket.socket:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        _bufsize(udp, SO_RCVBUFFORCE, socket.SO_RCVBUF)
        if reuseport:
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            udp.bind((local_ip, port))
        except OSError as e:
            raise OSError(e.errno, f"cannot bind the underlay UDP socket to "
                                   f"{local_ip}:{port}: {e.strerror}") from None
    except Exception:
        udp.close()
        raise
    return udp


def open_underlay(local_ip: str, port: int, ns: str | None = None,
                  queues: int = 1) -> Underlay:
    """The receive socket (queues > 1: that many, SO_REUSEPORT) and the raw send socket."""
    with netns(ns):
        if queues > 1:
            # SO_REUSEPORT would let a second agent on this address share the port silently
            # (same uid): a plain bind first says "in use" as in the single-socket case
            _receiver(local_ip, port, False).close()
        udp = _receiver(local_ip, port, queues > 1)
        more: list[socket.socket] = []
        try:
            for _ in range(queues - 1):
                more.append(_receiver(local_ip, port, True))
            raw = socket.socket(socket.AF_INET, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                socket.IPPROTO_RAW)
        except Exception:
            udp.close()
            for s in more:
                s.close()
            raise
        _bufsize(raw, SO_SNDBUFFORCE, socket.SO_SNDBUF)
        # Without IP_RECVERR a raw socket hides ENOBUFS (a full qdisc or device queue) and
        # reports the datagram as sent; with it the TX loop sees the error and counts
        # drop_send_error (found by benchmarks/chaos.py, exhaustion scenario).
        raw.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
    return Underlay(udp=udp, raw=raw, udp_more=more)
