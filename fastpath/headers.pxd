# Header build/parse for the fast path, as inline C. Mirrors RFC 791 (IPv4), RFC 768 (UDP),
# RFC 7348 (VXLAN), IEEE 802.3 (Ethernet II). Reference implementation: headers_ref.py.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

cdef enum:
    ETH_HLEN = 14
    ETH_P_IP = 0x0800
    ETH_P_ARP = 0x0806
    IPV4_HLEN = 20
    UDP_HLEN = 8
    VXLAN_HLEN = 8
    OUTER_HLEN = 36          # IPV4_HLEN + UDP_HLEN + VXLAN_HLEN
    VXLAN_FLAG_I = 0x08
    IPPROTO_TCP = 6
    IPPROTO_UDP = 17

cdef inline uint16_t ld16(const uint8_t *p) noexcept nogil:
    return (<uint16_t>p[0] << 8) | p[1]

cdef inline uint32_t ld32(const uint8_t *p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]

cdef inline void st16(uint8_t *p, uint16_t v) noexcept nogil:
    p[0] = v >> 8
    p[1] = v & 0xff

cdef inline void st32(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = v >> 24
    p[1] = (v >> 16) & 0xff
    p[2] = (v >> 8) & 0xff
    p[3] = v & 0xff

cdef inline uint64_t ld_mac(const uint8_t *p) noexcept nogil:
    """A MAC address as a 48-bit integer (first octet most significant)."""
    return ((<uint64_t>p[0] << 40) | (<uint64_t>p[1] << 32) | (<uint64_t>p[2] << 24) |
            (<uint64_t>p[3] << 16) | (<uint64_t>p[4] << 8) | p[5])

cdef inline void st_mac(uint8_t *p, uint64_t m) noexcept nogil:
    p[0] = (m >> 40) & 0xff
    p[1] = (m >> 32) & 0xff
    p[2] = (m >> 24) & 0xff
    p[3] = (m >> 16) & 0xff
    p[4] = (m >> 8) & 0xff
    p[5] = m & 0xff

cdef inline uint16_t ipv4_checksum(const uint8_t *h) noexcept nogil:
    """RFC 1071 ones' complement sum over a 20-byte IPv4 header (checksum field included)."""
    cdef uint32_t s = 0
    cdef int i
    for i in range(0, IPV4_HLEN, 2):
        s += (<uint32_t>h[i] << 8) | h[i + 1]
    s = (s & 0xffff) + (s >> 16)
    s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff

cdef inline uint32_t flow_hash(const uint8_t *f, size_t n) noexcept nogil:
    """Hash of the inner flow, for the outer UDP source port (ECMP entropy).

    FNV-1a (32 bit) over: Ethernet dst+src+type; for IPv4 also src, dst and protocol, and the
    first 4 bytes after the IP header (TCP/UDP ports) when the packet is not a fragment.
    A final avalanche (murmur3 fmix32) spreads the bits before the range is applied.
    """
    cdef uint32_t h = 2166136261u
    cdef size_t i, ihl, end = 14
    cdef uint16_t ethertype
    if n < 14:
        end = n
    for i in range(end):
        h = (h ^ f[i]) * 16777619u
    if n >= 34:
        ethertype = ld16(f + 12)
        if ethertype == ETH_P_IP and (f[14] >> 4) == 4:
            for i in range(26, 34):          # src + dst
                h = (h ^ f[i]) * 16777619u
            h = (h ^ f[23]) * 16777619u       # protocol
            ihl = (f[14] & 0x0f) * 4
            if ((f[23] == IPPROTO_TCP or f[23] == IPPROTO_UDP) and (ld16(f + 20) & 0x3fff) == 0
                    and ihl >= 20 and n >= 14 + ihl + 4):
                for i in range(14 + ihl, 14 + ihl + 4):
                    h = (h ^ f[i]) * 16777619u
    h ^= h >> 16
    h *= 0x85ebca6bu
    h ^= h >> 13
    h *= 0xc2b2ae35u
    h ^= h >> 16
    return h

cdef inline uint16_t source_port(uint32_t h, uint32_t lo, uint32_t hi) noexcept nogil:
    """Map a hash into [lo, hi), the same way as Linux udp_flow_src_port()."""
    return <uint16_t>(((<uint64_t>h * (hi - lo)) >> 32) + lo)

cdef inline void write_outer(uint8_t *p, uint32_t src_ip, uint32_t dst_ip, uint16_t sport,
                             uint16_t dport, uint32_t vni, size_t inner_len,
                             uint8_t ttl) noexcept nogil:
    """Write outer IPv4 + UDP + VXLAN (36 bytes) at p, in front of an inner frame of inner_len.

    IPv4: no options, DF set (never fragment: frames that do not fit are dropped before),
    ID 0, TOS 0. UDP checksum 0 (allowed for IPv4, the Linux vxlan default).
    VXLAN: flags = I, reserved = 0, VNI in the top 24 bits of the second word.
    """
    cdef uint16_t total = <uint16_t>(OUTER_HLEN + inner_len)
    p[0] = 0x45
    p[1] = 0
    st16(p + 2, total)
    st16(p + 4, 0)
    st16(p + 6, 0x4000)
    p[8] = ttl
    p[9] = IPPROTO_UDP
    st16(p + 10, 0)
    st32(p + 12, src_ip)
    st32(p + 16, dst_ip)
    st16(p + 10, ipv4_checksum(p))
    st16(p + 20, sport)
    st16(p + 22, dport)
    st16(p + 24, <uint16_t>(total - IPV4_HLEN))
    st16(p + 26, 0)
    p[28] = VXLAN_FLAG_I
    p[29] = 0
    p[30] = 0
    p[31] = 0
    st32(p + 32, vni << 8)

cdef inline void write_vxlan(uint8_t *p, uint32_t vni) noexcept nogil:
    """The 8-byte VXLAN header alone (flags I, VNI), for datagrams sent on a UDP socket (the
    kernel writes the outer IPv4 and UDP headers)."""
    p[0] = VXLAN_FLAG_I
    p[1] = 0
    p[2] = 0
    p[3] = 0
    st32(p + 4, vni << 8)

# Results of parse_vxlan(): >= 0 is the VNI; negative values are drop reasons.
cdef enum:
    VX_TRUNCATED = -1
    VX_NO_I_FLAG = -2
    VX_RESERVED = -3

cdef inline long parse_vxlan(const uint8_t *p, size_t n, bint strict) noexcept nogil:
    """Validate an RFC 7348 header (the UDP payload); return the VNI or a negative reason.

    strict: reserved bits must be zero (what Linux does); otherwise they are ignored, as
    RFC 7348 asks of receivers.
    """
    if n < VXLAN_HLEN:
        return VX_TRUNCATED
    if not (p[0] & VXLAN_FLAG_I):
        return VX_NO_I_FLAG
    if strict and ((p[0] & ~VXLAN_FLAG_I) or p[1] or p[2] or p[3] or p[7]):
        return VX_RESERVED
    return (<long>p[4] << 16) | (<long>p[5] << 8) | p[6]
