"""Pure-Python reference for gso.pxd: what the fast path does with a frame read from a TAP that
has a virtio-net header (outbound offloads).

``py_offload(hdr, frame, max_inner) -> (code, frames)``:

- header inconsistent (vnet_ref.py_check) -> (VN_* reason, [])
- GSO frame (gso_type TCPV4/TCPV6/UDP_L4): checked against its own headers, then cut into
  segments of gso_size payload bytes, each a complete frame:
    Ethernet: copied;  IPv4: total length, ID = first ID + i (mod 2^16), header checksum;
    IPv6: payload length;  TCP: sequence number + i * gso_size, FIN and PSH only on the last
    segment, CWR only on the first, checksum complete;  UDP (USO): length, checksum complete
    (0 sent as 0xffff).
  Refused (code < 0, no frames): not IPv4/IPv6 directly over Ethernet, or IP version /
  protocol not what gso_type says (gso_not_tcp_udp for a non-TCP/UDP protocol,
  gso_bad_headers otherwise); IPv4 options or IPv6 extension headers (gso_ip_options);
  fragments, truncated headers, IP length that is not the frame's, csum_start/csum_offset not
  the L4 header's checksum field, UDP length wrong (gso_bad_headers); a segment (headers +
  gso_size) larger than max_inner, i.e. would not fit the underlay MTU (gso_too_big); more than
  GSO_MAX_SEGS segments (gso_too_many_segs).
- plain frame with NEEDS_CSUM: the checksum over frame[csum_start:] is stored at
  csum_start + csum_offset (the field held the pseudo-header sum; 0 is sent as 0xffff, as
  Linux's skb_checksum_help does) -> (0, [completed frame])
- plain frame otherwise -> (0, [frame]) unchanged.
The length check of plain frames (tx_too_big) is the switch's, as without offloads.
"""
from __future__ import annotations

import struct

from fastpath import vnet_ref as V
from fastpath.csum_ref import py_csum_add, py_csum_finish, py_pseudo4, py_pseudo6

GSO_MAX_SEGS = 128           # segments per GSO frame (a 64 KB frame at MSS 512)
GSO_MAX_FRAME = 65550        # largest frame read from the TAP: 64 KB IP packet + Ethernet
GSO_HDR_MAX = 128            # Ethernet + IP + L4 headers of one segment, at most

GS_NOT_TCP_UDP = -10
GS_IP_OPTIONS = -11
GS_BAD_HEADERS = -12
GS_TOO_BIG = -13
GS_TOO_MANY = -14
REASONS = {**V.REASONS, GS_NOT_TCP_UDP: "gso_not_tcp_udp", GS_IP_OPTIONS: "gso_ip_options",
           GS_BAD_HEADERS: "gso_bad_headers", GS_TOO_BIG: "gso_too_big",
           GS_TOO_MANY: "gso_too_many_segs"}

TCP_FIN, TCP_PSH, TCP_CWR = 0x01, 0x08, 0x80


def py_prepare(hdr: tuple[int, ...], f: bytes, max_inner: int) -> tuple[int, dict[str, int]]:
    """Check a GSO frame against its headers: (0, layout) or (reason, {})."""
    h = V.VnetHdr(*hdr)
    n = len(f)
    if n < 14 + 20:
        return GS_BAD_HEADERS, {}
    etype = struct.unpack_from("!H", f, 12)[0]
    l3 = 14
    if etype == 0x0800:
        if f[l3] >> 4 != 4 or h.gso_type == V.VNET_GSO_TCPV6:
            return GS_BAD_HEADERS, {}
        ihl = (f[l3] & 0x0F) * 4
        proto = f[l3 + 9]
        if proto not in (6, 17):
            return GS_NOT_TCP_UDP, {}
        if ihl != 20:
            return GS_IP_OPTIONS, {}
        tot, frag = struct.unpack_from("!H2xH", f, l3 + 2)
        if l3 + tot != n or frag & 0x3FFF:
            return GS_BAD_HEADERS, {}
        ipv6 = 0
        l4 = l3 + 20
    elif etype == 0x86DD:
        if n < l3 + 40 or f[l3] >> 4 != 6 or h.gso_type == V.VNET_GSO_TCPV4:
            return GS_BAD_HEADERS, {}
        proto = f[l3 + 6]
        if proto not in (6, 17):
            # extension headers (hop-by-hop 0, routing 43, fragment 44, dest. options 60, ...)
            return (GS_IP_OPTIONS if proto in (0, 43, 44, 51, 60, 135, 139, 140)
                    else GS_NOT_TCP_UDP), {}
        if l3 + 40 + struct.unpack_from("!H", f, l3 + 4)[0] != n:
            return GS_BAD_HEADERS, {}
        ipv6 = 1
        l4 = l3 + 40
    else:
        return GS_BAD_HEADERS, {}
    want = 6 if h.gso_type in (V.VNET_GSO_TCPV4, V.VNET_GSO_TCPV6) else 17
    if proto != want:
        return GS_BAD_HEADERS, {}
    if proto == 6:
        if n < l4 + 20:
            return GS_BAD_HEADERS, {}
        thl = (f[l4 + 12] >> 4) * 4
        if thl < 20 or n < l4 + thl or h.csum_offset != 16:
            return GS_BAD_HEADERS, {}
    else:
        thl = 8
        if n < l4 + 8 or h.csum_offset != 6 or struct.unpack_from("!H", f, l4 + 4)[0] != n - l4:
            return GS_BAD_HEADERS, {}
    if h.csum_start != l4:
        return GS_BAD_HEADERS, {}
    hlen = l4 + thl
    plen = n - hlen
    if plen == 0:
        return GS_BAD_HEADERS, {}
    if hlen + h.gso_size > max_inner:
        return GS_TOO_BIG, {}
    nseg = -(-plen // h.gso_size)
    if nseg > GSO_MAX_SEGS:
        return GS_TOO_MANY, {}
    return 0, {"l3": l3, "l4": l4, "hlen": hlen, "plen": plen, "mss": h.gso_size,
               "nseg": nseg, "ipv6": ipv6, "proto": proto}


def _ipv4_checksum(h: bytes) -> int:
    return py_csum_finish(py_csum_add(h))


def py_segment(f: bytes, g: dict[str, int], i: int) -> bytes:
    """Segment i of a prepared GSO frame, as a complete frame."""
    l3, l4, hlen, mss = g["l3"], g["l4"], g["hlen"], g["mss"]
    last = i == g["nseg"] - 1
    pay = f[hlen + i * mss: hlen + min((i + 1) * mss, g["plen"])]
    h = bytearray(f[:hlen])
    if g["ipv6"]:
        struct.pack_into("!H", h, l3 + 4, hlen - l3 - 40 + len(pay))
    else:
        ident = (struct.unpack_from("!H", f, l3 + 4)[0] + i) & 0xFFFF
        struct.pack_into("!HH", h, l3 + 2, hlen - l3 + len(pay), ident)
        h[l3 + 10:l3 + 12] = b"\0\0"
        struct.pack_into("!H", h, l3 + 10, _ipv4_checksum(bytes(h[l3:l3 + 20])))
    l4len = hlen - l4 + len(pay)
    if g["proto"] == 6:
        seq = (struct.unpack_from("!I", f, l4 + 4)[0] + i * mss) & 0xFFFFFFFF
        struct.pack_into("!I", h, l4 + 4, seq)
        flags = h[l4 + 13]
        if not last:
            flags &= ~(TCP_FIN | TCP_PSH)
        if i:
            flags &= ~TCP_CWR
        h[l4 + 13] = flags
        field = l4 + 16
    else:
        struct.pack_into("!H", h, l4 + 4, l4len)
        field = l4 + 6
    h[field:field + 2] = b"\0\0"
    if g["ipv6"]:
        ps = py_pseudo6(bytes(h[l3 + 8:l3 + 24]), bytes(h[l3 + 24:l3 + 40]), g["proto"], l4len)
    else:
        ps = py_pseudo4(int.from_bytes(h[l3 + 12:l3 + 16], "big"),
                        int.from_bytes(h[l3 + 16:l3 + 20], "big"), g["proto"], l4len)
    c = py_csum_finish(py_csum_add(pay, py_csum_add(bytes(h[l4:hlen]), ps)))
    if g["proto"] == 17 and c == 0:
        c = 0xFFFF
    struct.pack_into("!H", h, field, c)
    return bytes(h) + pay


def py_csum_complete(hdr: tuple[int, ...], f: bytes) -> bytes:
    """Finish a NEEDS_CSUM checksum of a plain frame (header already checked)."""
    h = V.VnetHdr(*hdr)
    s, o = h.csum_start, h.csum_start + h.csum_offset
    c = py_csum_finish(py_csum_add(f[s:])) or 0xFFFF
    return f[:o] + struct.pack("!H", c) + f[o + 2:]


def py_offload(hdr: tuple[int, ...], frame: bytes, max_inner: int) -> tuple[int, list[bytes]]:
    f = bytes(frame)
    h = V.VnetHdr(*hdr).checked()
    r = V.py_check(h, len(f))
    if r < 0:
        return r, []
    if h.gso_type == V.VNET_GSO_NONE:
        if h.flags & V.VNET_F_NEEDS_CSUM:
            return 0, [py_csum_complete(h, f)]
        return 0, [f]
    r, g = py_prepare(h, f, max_inner)
    if r < 0:
        return r, []
    return 0, [py_segment(f, g, i) for i in range(g["nseg"])]


def py_rx_super(frame: bytes, max_inner: int) -> V.VnetHdr | None:
    """Inbound: the header to hand an oversized inner TCP super-frame to the TAP with (a kernel
    VXLAN sender's tunnel GSO packet that crossed a veth whole), or None if it is not one."""
    f = bytes(frame)
    n = len(f)
    if n < 14 + 40 + 20 or n > GSO_MAX_FRAME:
        return None
    etype = struct.unpack_from("!H", f, 12)[0]
    if etype == 0x0800:
        gso_type, l4 = V.VNET_GSO_TCPV4, 14 + (f[14] & 0x0F) * 4
    elif etype == 0x86DD:
        gso_type, l4 = V.VNET_GSO_TCPV6, 54
    else:
        return None
    if l4 + 20 > n:
        return None
    thl = (f[l4 + 12] >> 4) * 4
    if l4 + thl >= max_inner:
        return None
    h = V.VnetHdr(V.VNET_F_NEEDS_CSUM, gso_type, l4 + thl, max_inner - l4 - thl, l4, 16)
    return h if py_prepare(h, f, max_inner)[0] == 0 else None
