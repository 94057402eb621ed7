"""Pure-Python reference for outer6.pxd: the outer IPv6 + UDP + VXLAN header of an IPv6
underlay (layout in outer6.pxd; the IPv4 one is headers_ref.py)."""
from __future__ import annotations

import struct

from fastpath import spec
from fastpath.csum_ref import py_csum_add, py_csum_finish, py_pseudo6
from fastpath.headers_ref import py_flow_hash

IPV6_HLEN = 40
OUTER6_HLEN = IPV6_HLEN + spec.UDP_HLEN + spec.VXLAN_HLEN       # 56
FLOWLABEL_MASK = 0xFFFFF


def py_flow_label(frame: bytes) -> int:
    """Flow label of the inner flow: flow_hash rotated by 16 bits, low 20 bits (the kernel's
    ip6_make_flowlabel does the same with its skb hash)."""
    h = py_flow_hash(frame)
    return ((h << 16 | h >> 16) & 0xFFFFFFFF) & FLOWLABEL_MASK


def check_encap6_args(frame_len: int, src: bytes, dst: bytes, sport: int, dport: int,
                      vni: int, hop_limit: int, flowlabel: int) -> None:
    """Argument checks of py_encap6, shared by this reference and the Cython wrapper."""
    if frame_len > 65535 - spec.UDP_HLEN - spec.VXLAN_HLEN:
        raise ValueError(f"frame of {frame_len} bytes does not fit an IPv6 payload with "
                         "UDP + VXLAN headers")
    if not (isinstance(src, bytes) and isinstance(dst, bytes) and len(src) == len(dst) == 16):
        raise ValueError("src and dst must be 16-byte IPv6 addresses")
    if not (0 <= sport <= 65535 and 0 <= dport <= 65535):
        raise ValueError(f"UDP ports must be in 0..65535, got {sport}, {dport}")
    if not 0 <= vni < 1 << 24:
        raise ValueError(f"VNI must be in 0..16777215, got {vni}")
    if not 0 <= hop_limit <= 255:
        raise ValueError(f"hop limit must be in 0..255, got {hop_limit}")
    if not 0 <= flowlabel <= FLOWLABEL_MASK:
        raise ValueError(f"flow label must be in 0..{FLOWLABEL_MASK}, got {flowlabel}")


def py_encap6(frame: bytes, src: bytes, dst: bytes, sport: int, dport: int, vni: int,
              hop_limit: int, flowlabel: int, zero_csum: bool = False) -> bytes:
    frame = bytes(frame)
    check_encap6_args(len(frame), src, dst, sport, dport, vni, hop_limit, flowlabel)
    ulen = spec.UDP_HLEN + spec.VXLAN_HLEN + len(frame)
    ip = struct.pack("!IHBB", 6 << 28 | flowlabel, ulen, spec.IPPROTO_UDP, hop_limit) + src + dst
    vxlan = struct.pack("!BBBBI", spec.VXLAN_FLAG_I, 0, 0, 0, (vni << 8) & 0xFFFFFFFF)
    csum = 0
    if not zero_csum:
        s = py_csum_add(struct.pack("!HHHH", sport, dport, ulen, 0) + vxlan + frame,
                        py_pseudo6(src, dst, spec.IPPROTO_UDP, ulen))
        csum = py_csum_finish(s) or 0xFFFF
    return ip + struct.pack("!HHHH", sport, dport, ulen, csum) + vxlan + frame
