# Outbound offloads for frames read from a TAP with a virtio-net header, as inline C (no GIL,
# no Python): segmentation of GSO frames (TSO4/TSO6/USO) and completion of NEEDS_CSUM.
# Behaviour, checks and drop reasons: gso_ref.py (the reference; tests run both).
#
# Use (the TX classification, per frame f of len bytes with header h, after vnet_check):
#   GSO:   r = gso_prepare(&h, f, len, max_inner, &g)      # < 0: drop reason GS_*
#          for i in range(g.nseg):
#              plen_i = gso_seg_header(f, &g, i, out)      # out: g.hlen header bytes of
#                                                           # segment i, checksums complete;
#              payload of segment i: f + g.hlen + i * g.mss, plen_i bytes (not copied)
#   plain: if h.flags & NEEDS_CSUM: csum_complete(f, &h)   # in place
from libc.stdint cimport uint8_t, uint16_t, uint32_t
from libc.string cimport memcpy

from fastpath.headers cimport ld16, ld32, st16, st32, ipv4_checksum
from fastpath.csum cimport csum_add, csum_finish, pseudo4, pseudo6
from fastpath.vnet cimport (vnet_hdr, VNET_GSO_TCPV4, VNET_GSO_TCPV6, VNET_GSO_UDP_L4,
                            VNET_GSO_NONE)

cdef enum:
    GSO_MAX_SEGS = 128       # segments per GSO frame (a 64 KB frame at MSS 512)
    GSO_MAX_FRAME = 65550    # largest frame read from the TAP: 64 KB IP packet + Ethernet
    GSO_HDR_MAX = 128        # Ethernet + IP + L4 headers of one segment, at most (IPv6+TCP:
                             # 14 + 40 + 60 = 114)

# gso_prepare() results besides 0 (the vnet_check reasons are VN_*, -1..-7)
cdef enum:
    GS_NOT_TCP_UDP = -10     # IP protocol is not TCP/UDP
    GS_IP_OPTIONS = -11      # IPv4 options or IPv6 extension headers (not supported)
    GS_BAD_HEADERS = -12     # headers truncated or disagreeing with the virtio header
    GS_TOO_BIG = -13         # a segment would not fit the underlay MTU
    GS_TOO_MANY = -14        # more than GSO_MAX_SEGS segments

cdef struct gso_info:
    uint32_t l3              # IP header offset
    uint32_t l4              # L4 header offset
    uint32_t hlen            # all headers
    uint32_t plen            # payload bytes
    uint32_t mss             # payload bytes per segment (gso_size)
    uint32_t nseg            # segments
    uint8_t ipv6
    uint8_t proto            # 6 TCP, 17 UDP


cdef inline bint _ipv6_ext(uint8_t nh) noexcept nogil:
    return nh == 0 or nh == 43 or nh == 44 or nh == 51 or nh == 60 or nh == 135 or nh == 139 \
        or nh == 140


cdef inline int gso_prepare(const vnet_hdr *h, const uint8_t *f, uint32_t n, uint32_t max_inner,
                            gso_info *g) noexcept nogil:
    """Check a GSO frame (h already passed vnet_check) against its headers; fill g."""
    cdef uint32_t l3 = 14, l4, thl, hlen
    cdef uint16_t etype
    cdef uint8_t proto, want
    if n < 14 + 20:
        return GS_BAD_HEADERS
    etype = ld16(f + 12)
    if etype == 0x0800:
        if (f[l3] >> 4) != 4 or h.gso_type == VNET_GSO_TCPV6:
            return GS_BAD_HEADERS
        proto = f[l3 + 9]
        if proto != 6 and proto != 17:
            return GS_NOT_TCP_UDP
        if (f[l3] & 0x0f) != 5:
            return GS_IP_OPTIONS
        if l3 + ld16(f + l3 + 2) != n or (ld16(f + l3 + 6) & 0x3fff):
            return GS_BAD_HEADERS
        g.ipv6 = 0
        l4 = l3 + 20
    elif etype == 0x86dd:
        if n < l3 + 40 or (f[l3] >> 4) != 6 or h.gso_type == VNET_GSO_TCPV4:
            return GS_BAD_HEADERS
        proto = f[l3 + 6]
        if proto != 6 and proto != 17:
            return GS_IP_OPTIONS if _ipv6_ext(proto) else GS_NOT_TCP_UDP
        if l3 + 40 + ld16(f + l3 + 4) != n:
            return GS_BAD_HEADERS
        g.ipv6 = 1
        l4 = l3 + 40
    else:
        return GS_BAD_HEADERS
    want = 6 if (h.gso_type == VNET_GSO_TCPV4 or h.gso_type == VNET_GSO_TCPV6) else 17
    if proto != want:
        return GS_BAD_HEADERS
    if proto == 6:
        if n < l4 + 20:
            return GS_BAD_HEADERS
        thl = (f[l4 + 12] >> 4) * 4
        if thl < 20 or n < l4 + thl or h.csum_offset != 16:
            return GS_BAD_HEADERS
    else:
        thl = 8
        if n < l4 + 8 or h.csum_offset != 6 or ld16(f + l4 + 4) != n - l4:
            return GS_BAD_HEADERS
    if h.csum_start != l4:
        return GS_BAD_HEADERS
    hlen = l4 + thl
    if n == hlen:
        return GS_BAD_HEADERS
    if hlen + h.gso_size > max_inner:
        return GS_TOO_BIG
    g.l3 = l3
    g.l4 = l4
    g.hlen = hlen
    g.plen = n - hlen
    g.mss = h.gso_size
    g.nseg = (g.plen + g.mss - 1) // g.mss
    g.proto = proto
    if g.nseg > GSO_MAX_SEGS:
        return GS_TOO_MANY
    return 0


cdef inline uint32_t gso_seg_header(const uint8_t *f, const gso_info *g, uint32_t i,
                                    uint8_t *out) noexcept nogil:
    """Write the g.hlen header bytes of segment i at out; return its payload length.

    The payload itself stays where it is (f + g.hlen + i * g.mss); its checksum is summed
    from there into the L4 checksum written here.
    """
    cdef uint32_t l3 = g.l3, l4 = g.l4, hlen = g.hlen
    cdef uint32_t off = i * g.mss
    cdef uint32_t pay = g.plen - off if g.plen - off < g.mss else g.mss
    cdef uint32_t l4len = hlen - l4 + pay, s
    cdef uint32_t field
    cdef uint8_t fl
    cdef uint16_t c
    memcpy(out, f, hlen)
    if g.ipv6:
        st16(out + l3 + 4, <uint16_t>(hlen - l3 - 40 + pay))
        s = pseudo6(out + l3 + 8, out + l3 + 24, g.proto, l4len)
    else:
        st16(out + l3 + 2, <uint16_t>(hlen - l3 + pay))
        st16(out + l3 + 4, <uint16_t>(ld16(f + l3 + 4) + i))
        st16(out + l3 + 10, 0)
        st16(out + l3 + 10, ipv4_checksum(out + l3))
        s = pseudo4(ld32(out + l3 + 12), ld32(out + l3 + 16), g.proto, l4len)
    if g.proto == 6:
        st32(out + l4 + 4, ld32(f + l4 + 4) + off)
        fl = out[l4 + 13]
        if i + 1 != g.nseg:
            fl &= ~(0x01 | 0x08)        # FIN, PSH: last segment only
        if i:
            fl &= ~0x80                 # CWR: first segment only
        out[l4 + 13] = fl
        field = l4 + 16
    else:
        st16(out + l4 + 4, <uint16_t>l4len)
        field = l4 + 6
    st16(out + field, 0)
    s = csum_add(out + l4, hlen - l4, s)
    s = csum_add(f + hlen + off, pay, s)
    c = csum_finish(s)
    if g.proto == 17 and c == 0:
        c = 0xffff
    st16(out + field, c)
    return pay


cdef inline void csum_complete(uint8_t *f, uint32_t n, const vnet_hdr *h) noexcept nogil:
    """NEEDS_CSUM on a plain frame: sum f[csum_start:n] (the field holds the pseudo-header
    sum) and store it at csum_start + csum_offset (0 as 0xffff, like skb_checksum_help)."""
    cdef uint16_t c = csum_finish(csum_add(f + h.csum_start, n - h.csum_start, 0))
    st16(f + h.csum_start + h.csum_offset, c if c else 0xffff)


cdef inline int gso_rx_super(const uint8_t *f, uint32_t n, uint32_t max_inner,
                             vnet_hdr *vh) noexcept nogil:
    """Inbound: an inner frame larger than the MTU allows, as a kernel VXLAN sender's tunnel
    GSO packet arrives whole over a veth (no UDP_GRO control message: the inner TCP packet
    is one 64 KB super-frame, its checksum partial). If it is a well-formed TCP super-frame,
    fill vh to hand it to the TAP as a GSO frame (segment size: what the MTU leaves after its
    headers; NEEDS_CSUM, the kernel finishes the checksum) and return 0; else < 0."""
    cdef gso_info g
    cdef uint16_t etype
    cdef uint32_t l4, thl
    if n < 14 + 40 + 20 or n > GSO_MAX_FRAME:
        return GS_BAD_HEADERS
    etype = ld16(f + 12)
    if etype == 0x0800:
        vh.gso_type = VNET_GSO_TCPV4
        l4 = 14 + (f[14] & 0x0f) * 4
    elif etype == 0x86dd:
        vh.gso_type = VNET_GSO_TCPV6
        l4 = 14 + 40
    else:
        return GS_BAD_HEADERS
    if l4 + 20 > n:
        return GS_BAD_HEADERS
    thl = (f[l4 + 12] >> 4) * 4
    if l4 + thl >= max_inner:
        return GS_BAD_HEADERS
    vh.flags = 1                      # VNET_F_NEEDS_CSUM
    vh.hdr_len = <uint16_t>(l4 + thl)
    vh.gso_size = <uint16_t>(max_inner - l4 - thl)
    vh.csum_start = <uint16_t>l4
    vh.csum_offset = 16
    return gso_prepare(vh, f, n, max_inner, &g)
