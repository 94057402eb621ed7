"""Pure-Python reference for headers.pxd: the byte layout of what the fast path writes.

Outer packet (what goes to the raw IPv4 socket; the kernel adds Ethernet):

    0      IPv4 header, 20 bytes: 0x45, tos 0, total length, id 0, DF, ttl, proto 17, csum,
           source VTEP, destination VTEP                                        (RFC 791)
    20     UDP header, 8 bytes: source port = hash of the inner flow mapped into
           [lo, hi), destination port (4789), length, checksum 0              (RFC 768)
    28     VXLAN header, 8 bytes: flags 0x08 (I), 24 reserved bits, VNI (24 bits),
           8 reserved bits                                                    (RFC 7348)
    36     inner Ethernet frame
"""
from __future__ import annotations

import struct

from fastpath import spec

VX_TRUNCATED = -1
VX_NO_I_FLAG = -2
VX_RESERVED = -3
VX_ERRORS = {VX_TRUNCATED: "truncated", VX_NO_I_FLAG: "no_i_flag", VX_RESERVED: "reserved"}

_M32 = 0xFFFFFFFF


def _fnv(h: int, data: bytes) -> int:
    for b in data:
        h = ((h ^ b) * 16777619) & _M32
    return h


def py_flow_hash(frame: bytes) -> int:
    f = bytes(frame)
    n = len(f)
    h = _fnv(2166136261, f[:14])
    if n >= 34:
        ethertype = struct.unpack_from("!H", f, 12)[0]
        if ethertype == spec.ETH_P_IP and f[14] >> 4 == 4:
            h = _fnv(h, f[26:34])
            h = _fnv(h, f[23:24])
            ihl = (f[14] & 0x0F) * 4
            frag = struct.unpack_from("!H", f, 20)[0] & 0x3FFF
            if (f[23] in (spec.IPPROTO_TCP, spec.IPPROTO_UDP) and frag == 0 and ihl >= 20
                    and n >= 14 + ihl + 4):
                h = _fnv(h, f[14 + ihl:14 + ihl + 4])
    # murmur3 fmix32
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _M32
    h ^= h >> 16
    return h


def py_source_port(frame: bytes, lo: int, hi: int) -> int:
    if not (0 < lo < hi <= 65536):
        raise ValueError(f"bad source port range {lo}-{hi}")
    return ((py_flow_hash(frame) * (hi - lo)) >> 32) + lo


def py_ipv4_checksum(hdr: bytes) -> int:
    if len(hdr) < spec.IPV4_HLEN:
        raise ValueError(f"IPv4 header needs {spec.IPV4_HLEN} bytes, got {len(hdr)}")
    s = sum(struct.unpack("!10H", bytes(hdr[:20])))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def check_encap_args(frame_len: int, src_ip: int, dst_ip: int, sport: int, dport: int,
                     vni: int, ttl: int) -> None:
    """Argument checks of py_encap, shared by this reference and the Cython wrapper."""
    if frame_len > 65535 - spec.OUTER_HLEN:
        raise ValueError(f"frame of {frame_len} bytes does not fit an IPv4 packet with outer "
                         "headers")
    if not (0 <= sport <= 65535 and 0 <= dport <= 65535):
        raise ValueError(f"UDP ports must be in 0..65535, got {sport}, {dport}")
    if not 0 <= vni < 1 << 24:
        raise ValueError(f"VNI must be in 0..16777215, got {vni}")
    if not 0 <= ttl <= 255:
        raise ValueError(f"ttl must be in 0..255, got {ttl}")
    for name, ip in (("src_ip", src_ip), ("dst_ip", dst_ip)):
        if not 0 <= ip <= 0xFFFFFFFF:
            raise ValueError(f"{name} must be in 0..2**32-1, got {ip}")


def py_encap(frame: bytes, src_ip: int, dst_ip: int, sport: int, dport: int, vni: int,
             ttl: int) -> bytes:
    check_encap_args(len(frame), src_ip, dst_ip, sport, dport, vni, ttl)
    total = spec.OUTER_HLEN + len(frame)
    ip = bytearray(struct.pack("!BBHHHBBHII", 0x45, 0, total, 0, spec.IP_DF, ttl,
                               spec.IPPROTO_UDP, 0, src_ip, dst_ip))
    struct.pack_into("!H", ip, 10, py_ipv4_checksum(bytes(ip)))
    udp = struct.pack("!HHHH", sport, dport, total - spec.IPV4_HLEN, 0)
    vxlan = struct.pack("!BBBBI", spec.VXLAN_FLAG_I, 0, 0, 0, (vni << 8) & _M32)
    return bytes(ip) + udp + vxlan + bytes(frame)


def py_parse_vxlan(payload: bytes, strict: bool = True) -> int:
    p = bytes(payload)
    if len(p) < spec.VXLAN_HLEN:
        return VX_TRUNCATED
    if not p[0] & spec.VXLAN_FLAG_I:
        return VX_NO_I_FLAG
    if strict and (p[0] & ~spec.VXLAN_FLAG_I or p[1] or p[2] or p[3] or p[7]):
        return VX_RESERVED
    return int.from_bytes(p[4:7], "big")
