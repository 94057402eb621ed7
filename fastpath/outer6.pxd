# Outer IPv6 + UDP + VXLAN for an IPv6 underlay, as inline C. Mirrors RFC 8200 (IPv6 header,
# section 8.1 upper-layer checksum), RFC 768 (UDP), RFC 7348 (VXLAN), RFC 6438 (flow label
# for tunnels). The IPv4 writer is headers.pxd write_outer; this one sits beside it.
# Reference implementation: outer6_ref.py.
#
#    0   IPv6 header, 40 bytes: version 6, traffic class 0, flow label (20 bits, from the
#        inner flow hash, like the kernel's auto flow labels), payload length, next header 17
#        (no extension headers), hop limit, source VTEP, destination VTEP
#   40   UDP header, 8 bytes: source port (inner flow hash in [lo, hi)), destination port,
#        length, checksum over the IPv6 pseudo-header + UDP + VXLAN + inner frame (mandatory
#        over IPv6, RFC 8200 8.1; 0 only when configured like the kernel's udp6zerocsumtx,
#        RFC 6935/6936)
#   48   VXLAN header, 8 bytes
#   56   inner Ethernet frame
from libc.stdint cimport uint8_t, uint16_t, uint32_t
from libc.string cimport memcpy

from fastpath.headers cimport st16, st32, UDP_HLEN, VXLAN_HLEN, VXLAN_FLAG_I, IPPROTO_UDP
from fastpath.csum cimport csum_add, pseudo6, csum_finish

cdef enum:
    IPV6_HLEN = 40
    OUTER6_HLEN = 56          # IPV6_HLEN + UDP_HLEN + VXLAN_HLEN
    FLOWLABEL_MASK = 0xfffff

cdef inline uint32_t flow_label(uint32_t h) noexcept nogil:
    """The 20-bit flow label of an inner flow hash (flow_hash), as the kernel's
    ip6_make_flowlabel: the hash rotated by 16, masked to 20 bits."""
    return ((h << 16) | (h >> 16)) & FLOWLABEL_MASK

cdef inline void write_outer6(uint8_t *p, const uint8_t *src16, const uint8_t *dst16,
                              uint16_t sport, uint16_t dport, uint32_t vni,
                              const uint8_t *inner, size_t inner_len, uint8_t hop_limit,
                              uint32_t flowlabel, bint zero_csum) noexcept nogil:
    """Write outer IPv6 + UDP + VXLAN (56 bytes) at p for the inner frame at `inner` (which
    may follow the header directly, or live elsewhere: flood copies). The UDP checksum covers
    the inner frame, so it is read once here unless zero_csum."""
    cdef uint32_t ulen = <uint32_t>(UDP_HLEN + VXLAN_HLEN + inner_len)
    cdef uint32_t s
    cdef uint16_t c
    st32(p, (<uint32_t>6 << 28) | (flowlabel & FLOWLABEL_MASK))
    st16(p + 4, <uint16_t>ulen)
    p[6] = IPPROTO_UDP
    p[7] = hop_limit
    memcpy(p + 8, src16, 16)
    memcpy(p + 24, dst16, 16)
    st16(p + 40, sport)
    st16(p + 42, dport)
    st16(p + 44, <uint16_t>ulen)
    st16(p + 46, 0)
    p[48] = VXLAN_FLAG_I
    p[49] = 0
    p[50] = 0
    p[51] = 0
    st32(p + 52, vni << 8)
    if zero_csum:
        return
    s = csum_add(p + IPV6_HLEN, UDP_HLEN + VXLAN_HLEN, pseudo6(src16, dst16, IPPROTO_UDP, ulen))
    s = csum_add(inner, inner_len, s)
    c = csum_finish(s)
    st16(p + 46, c if c else 0xffff)       # RFC 768: a computed 0 is sent as all ones
