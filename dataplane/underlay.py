"""Underlay sockets: a UDP socket that receives VXLAN, a raw IPv4 socket that sends it.

Sending through IPPROTO_RAW (IP_HDRINCL) lets the fast path write the outer IPv4 and UDP
headers itself, so the UDP source port carries the hash of the inner flow (ECMP entropy, as
the kernel's vxlan does) and DF is set (a frame that does not fit is dropped, never
fragmented). The kernel adds the Ethernet header and routes by the outer destination.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass

from dataplane.netns import netns

SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32
SO_MEMINFO = 55          # linux/sock_diag.h: u32[SK_MEMINFO_VARS], [8] = SK_MEMINFO_DROPS
IP_RECVERR = 11
BUFSIZE = 4 << 20


@dataclass
class Underlay:
    udp: socket.socket     # bound to (local, port); recvmmsg by the RX loop
    raw: socket.socket     # IPPROTO_RAW; sendmmsg by the TX loops

    def close(self) -> None:
        self.udp.close()
        self.raw.close()

    def kernel_drops(self) -> int:
        """Datagrams the kernel dropped for the UDP socket (receive buffer full), SO_MEMINFO."""
        try:
            raw = self.udp.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 9 * 4)
        except OSError:
            return 0
        return int.from_bytes(raw[32:36], "little")


def _bufsize(s: socket.socket, force: int, plain: int) -> None:
    try:
        s.setsockopt(socket.SOL_SOCKET, force, BUFSIZE)
    except PermissionError:
        s.setsockopt(socket.SOL_SOCKET, plain, BUFSIZE)


def open_underlay(local_ip: str, port: int, ns: str | None = None) -> Underlay:
    with netns(ns):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            _bufsize(udp, SO_RCVBUFFORCE, socket.SO_RCVBUF)
            try:
                udp.bind((local_ip, port))
            except OSError as e:
                raise OSError(e.errno, f"cannot bind the underlay UDP socket to "
                                       f"{local_ip}:{port}: {e.strerror}") from None
            raw = socket.socket(socket.AF_INET, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                socket.IPPROTO_RAW)
        except Exception:
            udp.close()
            raise
        _bufsize(raw, SO_SNDBUFFORCE, socket.SO_SNDBUF)
        # Without IP_RECVERR a raw socket hides ENOBUFS (a full qdisc or device queue) and
        # reports the datagram as sent; with it the TX loop sees the error and counts
        # drop_send_error (found by benchmarks/chaos.py, exhaustion scenario).
        raw.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
    return Underlay(udp=udp, raw=raw)
