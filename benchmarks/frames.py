"""Packets used by the micro benchmarks, built by hand with struct (byte layouts as in the specs).

Addressing follows tests/topo.py: pod 1 (10.244.1.2, 02:00:00:00:01:02) behind the local TAP,
pod 2 (10.244.2.2, 02:00:00:00:02:02) behind VTEP 192.168.100.2.
"""
from __future__ import annotations

import socket
import struct

VNI = 42
LOCAL_VTEP, REMOTE_VTEP = "192.168.100.1", "192.168.100.2"
POD1_MAC, POD1_IP = "02:00:00:00:01:02", "10.244.1.2"
POD2_MAC, POD2_IP = "02:00:00:00:02:02", "10.244.2.2"

# iperf3 -u -l 64: 14 Ethernet + 20 IPv4 + 8 UDP + 64 payload
SMALL_FRAME = 106
# a full-size TCP segment at the pod MTU of 1450 (underlay 1500 - 50)
LARGE_FRAME = 14 + 1450


def mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


def ip_bytes(ip: str) -> bytes:
    return socket.inet_aton(ip)


def ip_int(ip: str) -> int:
    return int.from_bytes(ip_bytes(ip), "big")


def _csum(hdr: bytes) -> int:
    s = sum(struct.unpack(f"!{len(hdr) // 2}H", hdr))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def udp_frame(size: int = SMALL_FRAME, sport: int = 40000, dport: int = 5201,
              src_mac: str = POD1_MAC, dst_mac: str = POD2_MAC,
              src_ip: str = POD1_IP, dst_ip: str = POD2_IP) -> bytes:
    """Ethernet + IPv4 + UDP frame of exactly ``size`` bytes (size >= 42)."""
    payload = bytes(size - 42)
    ip_len = 20 + 8 + len(payload)
    iph = struct.pack("!BBHHHBBH4s4s", 0x45, 0, ip_len, 1, 0x4000, 64, 17, 0,
                      ip_bytes(src_ip), ip_bytes(dst_ip))
    iph = iph[:10] + struct.pack("!H", _csum(iph)) + iph[12:]
    udph = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
    return mac_bytes(dst_mac) + mac_bytes(src_mac) + b"\x08\x00" + iph + udph + payload


def udp_frames(n: int, size: int = SMALL_FRAME) -> list[bytes]:
    """``n`` frames of different flows (source port varies), as a real batch would hold."""
    return [udp_frame(size, sport=40000 + i) for i in range(n)]


def arp_request(target_ip: str = POD2_IP) -> bytes:
    """ARP who-has ``target_ip`` from pod 1 (RFC 826), 42 bytes as read from a TAP."""
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac_bytes(POD1_MAC),
                      ip_bytes(POD1_IP), bytes(6), ip_bytes(target_ip))
    return b"\xff" * 6 + mac_bytes(POD1_MAC) + b"\x08\x06" + arp


def vxlan_payload(inner: bytes, vni: int = VNI) -> bytes:
    """UDP payload of a VXLAN datagram (RFC 7348): flags I, VNI, then the inner frame."""
    return struct.pack("!BBBBI", 0x08, 0, 0, 0, vni << 8) + inner


def reverse_frame(frame: bytes) -> bytes:
    """The same frame sent by pod 2 to pod 1 (inbound direction): swap the MACs."""
    return frame[6:12] + frame[0:6] + frame[12:]
