# IPv6 neighbour suppression (RFC 4861 sections 4.3, 4.4, 7.1.1, 7.2.4): a neighbour
# solicitation for an IPv6 address in the table is answered in place with a neighbour
# advertisement, the way the kernel's vxlan proxy mode does (neigh_reduce/vxlan_na_create).
# Reference implementation: nd_ref.py (the readable version of every rule below).
#
#   NS in:  Ethernet | IPv6 (next header 58, hop limit 255) | ICMPv6 135: code 0, checksum,
#           reserved (4), target (16) | options (type, length in 8-byte units, ...)
#   NA out: Ethernet (to the SLLA option's MAC, else the frame's source; from the target MAC)
#           | IPv6 (target -> NS source, hop limit 255, payload 32) | ICMPv6 136: flags
#           S (solicited) + O (override), R clear, target | option 2 (target link-layer address)
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy
from fastpath.headers cimport ld16, st16, ld_mac, st_mac, ETH_HLEN
from fastpath.map128 cimport u128map, u128map_slot, u128map_find

# spec constants (RFC 8200, RFC 4443, RFC 4861)
cdef enum:
    ND_ETH_P_IPV6 = 0x86DD
    ND_IPV6_HLEN = 40
    ND_IPPROTO_ICMPV6 = 58
    ND_HOP_LIMIT = 255
    ND_TYPE_NS = 135
    ND_TYPE_NA = 136
    ND_MSG_LEN = 24          # type, code, checksum, reserved/flags (4), target (16)
    ND_OPT_SLLA = 1          # source link-layer address
    ND_OPT_TLLA = 2          # target link-layer address
    ND_NA_FLAGS = 0x60       # first flags byte: S (0x40) | O (0x20); R (0x80) clear

# implementation constants: verdicts of nd_reduce (distinct from arp.pxd's, so one switch
# branch can tell them apart)
cdef enum:
    ND_NA_FRAME_LEN = 86     # 14 + 40 + 24 + 8: the advertisement written in place
    ND_NOT_NS = 0            # not a neighbour solicitation we may answer: the normal path
    ND_ANSWERED = 11         # rewritten in place into the advertisement (ND_NA_FRAME_LEN)
    ND_MISS = 12             # a valid solicitation for a target not in the table
    ND_TRUNCATED = 13        # drops: an ICMPv6 NS that fails RFC 4861 7.1.1 validation
    ND_BAD_CHECKSUM = 14
    ND_BAD_HOP_LIMIT = 15
    ND_BAD_OPTION = 16       # option length 0, past the end, or an SLLA that is not 8 bytes
    ND_INVALID = 17          # code != 0, multicast target, DAD probe with SLLA or not to a
                             # solicited-node multicast address

cdef inline uint64_t nd_ld64(const uint8_t *p) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    for i in range(8):
        v = (v << 8) | p[i]
    return v

cdef inline uint16_t nd_csum(const uint8_t *ip6, const uint8_t *msg, size_t n) noexcept nogil:
    """One's complement sum (folded, not inverted) of the ICMPv6 pseudo-header (source,
    destination, upper-layer length, next header 58) and the n-byte message (RFC 4443 2.3).
    A message with a correct checksum sums to 0xffff."""
    cdef uint32_t s = ND_IPPROTO_ICMPV6 + <uint32_t>(n >> 16) + <uint32_t>(n & 0xffff)
    cdef size_t i
    for i in range(8, 40, 2):
        s += (<uint32_t>ip6[i] << 8) | ip6[i + 1]
    i = 0
    while i + 1 < n:
        s += (<uint32_t>msg[i] << 8) | msg[i + 1]
        i += 2
        if s & 0x80000000u:
            s = (s & 0xffff) + (s >> 16)
    if i < n:
        s += <uint32_t>msg[i] << 8
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return <uint16_t>s

cdef inline int nd_reduce(uint8_t *f, size_t n, const u128map *neigh6) noexcept nogil:
    """If f is a valid NS for an address in neigh6, rewrite it in place into the NA.

    Not answered (ND_NOT_NS, the normal BUM/unicast path): anything that is not ICMPv6 type
    135 right after a plain IPv6 header (extension headers included), DAD probes (source ::),
    and solicitations whose table MAC is the sender's own.
    """
    cdef uint8_t *ip = f + ETH_HLEN
    cdef uint8_t *m = ip + ND_IPV6_HLEN
    cdef uint8_t *slla = NULL
    cdef uint8_t src[16]
    cdef uint8_t tgt[16]
    cdef size_t plen, i, olen
    cdef uint64_t tmac, dmac
    cdef bint dad
    cdef const u128map_slot *s
    if n < ETH_HLEN + ND_IPV6_HLEN + 1 or ld16(f + 12) != ND_ETH_P_IPV6:
        return ND_NOT_NS
    if (ip[0] >> 4) != 6 or ip[6] != ND_IPPROTO_ICMPV6 or m[0] != ND_TYPE_NS:
        return ND_NOT_NS
    plen = ld16(ip + 4)
    if plen < ND_MSG_LEN or n < ETH_HLEN + ND_IPV6_HLEN + plen:
        return ND_TRUNCATED
    if ip[7] != ND_HOP_LIMIT:
        return ND_BAD_HOP_LIMIT
    if nd_csum(ip, m, plen) != 0xffff:
        return ND_BAD_CHECKSUM
    if m[1] != 0 or m[8] == 0xff:
        return ND_INVALID
    i = ND_MSG_LEN
    while i < plen:
        if i + 2 > plen:
            return ND_BAD_OPTION
        olen = <size_t>m[i + 1] * 8
        if olen == 0 or i + olen > plen:
            return ND_BAD_OPTION
        if m[i] == ND_OPT_SLLA:
            if olen != 8:
                return ND_BAD_OPTION
            if slla == NULL:
                slla = m + i + 2
        i += olen
    dad = nd_ld64(ip + 8) == 0 and nd_ld64(ip + 16) == 0
    if dad:
        # RFC 4861 7.1.1: to a solicited-node multicast address (ff02::1:ffXX:XXXX), no SLLA
        if (slla != NULL or nd_ld64(ip + 24) != 0xff02000000000000ULL
                or (nd_ld64(ip + 32) >> 24) != 0x01ff):
            return ND_INVALID
        return ND_NOT_NS                 # duplicate address detection: never answered
    s = u128map_find(neigh6, nd_ld64(m + 8), nd_ld64(m + 16))
    if s == NULL:
        return ND_MISS
    tmac = s.value
    if tmac == ld_mac(f + 6):
        return ND_NOT_NS
    dmac = ld_mac(slla) if slla != NULL else ld_mac(f + 6)
    memcpy(src, ip + 8, 16)
    memcpy(tgt, m + 8, 16)
    # Ethernet: to the solicitor, from the target
    st_mac(f, dmac)
    st_mac(f + 6, tmac)
    # IPv6: version 6, traffic class and flow label 0, payload 32, ICMPv6, hop limit 255
    ip[0] = 0x60
    ip[1] = 0
    ip[2] = 0
    ip[3] = 0
    st16(ip + 4, ND_MSG_LEN + 8)
    ip[6] = ND_IPPROTO_ICMPV6
    ip[7] = ND_HOP_LIMIT
    memcpy(ip + 8, tgt, 16)
    memcpy(ip + 24, src, 16)
    # ICMPv6 NA: S and O set, R clear (as the kernel's proxy without NTF_ROUTER), the target,
    # and the target link-layer address option
    m[0] = ND_TYPE_NA
    m[1] = 0
    m[2] = 0
    m[3] = 0
    m[4] = ND_NA_FLAGS
    m[5] = 0
    m[6] = 0
    m[7] = 0
    memcpy(m + 8, tgt, 16)
    m[24] = ND_OPT_TLLA
    m[25] = 1
    st_mac(m + 26, tmac)
    st16(m + 2, <uint16_t>(~nd_csum(ip, m, ND_MSG_LEN + 8) & 0xffff))
    return ND_ANSWERED
