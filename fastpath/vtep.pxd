# VTEP addresses of either family for the fast path (IPv4 and IPv6 underlays), as inline C.
# Reference: fastpath/addr.py (vtep_key, key_to_ip) and switch_ref.py.
#
# A VTEP is keyed by 128 bits (hi, lo: the address's two big-endian halves): an IPv6 address
# as is, an IPv4 address as the IPv4-mapped ::ffff:a.b.c.d (RFC 4291 2.5.5.2), which is also
# what a dual-stack receive socket reports for an IPv4 source. So one u128map per network
# finds the VTEP of a datagram's source whatever its family (anti-spoofing, per-VTEP
# counters), and one FDB entry points at a VTEP of either family.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

from fastpath.includes.sys cimport (
    sockaddr_in, sockaddr_in6, socklen_t, AF_INET, AF_INET6, htons, ntohs, htonl, ntohl,
)
from fastpath.nd cimport nd_ld64

cdef enum:
    V4MAPPED_HI32 = 0xffff       # lo >> 32 of an IPv4-mapped key (hi = 0)

cdef struct vtep_t:
    uint64_t hi            # key (see above)
    uint64_t lo
    uint32_t ip            # IPv4 VTEP: its address, host order; IPv6 VTEP: 0
    uint8_t v6             # 1: an IPv6 VTEP
    uint8_t a6[16]         # IPv6 VTEP: its address, network order
    uint16_t port
    uint32_t refcnt        # FDB entries that point here; 0 = free slot
    uint64_t tx_packets
    uint64_t tx_bytes
    uint64_t rx_packets
    uint64_t rx_bytes

cdef inline bint key_is_v4(uint64_t hi, uint64_t lo) noexcept nogil:
    return hi == 0 and (lo >> 32) == V4MAPPED_HI32

cdef inline void st64(uint8_t *p, uint64_t v) noexcept nogil:
    cdef int i
    for i in range(8):
        p[i] = (v >> (56 - 8 * i)) & 0xff

cdef inline void vtep_set_key(vtep_t *v, uint64_t hi, uint64_t lo) noexcept nogil:
    v.hi = hi
    v.lo = lo
    v.v6 = not key_is_v4(hi, lo)
    if v.v6:
        v.ip = 0
        st64(v.a6, hi)
        st64(v.a6 + 8, lo)
    else:
        v.ip = <uint32_t>(lo & 0xffffffffu)
        memset(v.a6, 0, 16)

cdef inline socklen_t vtep_sockaddr(const vtep_t *v, sockaddr_in6 *sa, uint16_t port,
                                    uint32_t flowinfo) noexcept nogil:
    """The destination address of a datagram to v in sa (storage for either family);
    returns its length (msg_namelen). port 0 for a raw socket; flowinfo: IPv6 flow label
    (used when the socket has IPV6_FLOWINFO_SEND)."""
    cdef sockaddr_in *s4
    if not v.v6:
        s4 = <sockaddr_in *>sa
        s4.sin_family = AF_INET
        s4.sin_port = htons(port)
        s4.sin_addr.s_addr = htonl(v.ip)
        return sizeof(sockaddr_in)
    sa.sin6_family = AF_INET6
    sa.sin6_port = htons(port)
    sa.sin6_flowinfo = htonl(flowinfo)
    memcpy(sa.sin6_addr.s6_addr, v.a6, 16)
    sa.sin6_scope_id = 0
    return sizeof(sockaddr_in6)

cdef inline void sockaddr_key(const sockaddr_in6 *sa, uint64_t *hi, uint64_t *lo,
                              uint32_t *ip4, uint16_t *port) noexcept nogil:
    """A received datagram's source (sockaddr_in or sockaddr_in6) as a VTEP key; ip4 gets
    the IPv4 address (host order) of an IPv4 source, else 0."""
    cdef const sockaddr_in *s4
    if sa.sin6_family == AF_INET6:
        hi[0] = nd_ld64(sa.sin6_addr.s6_addr)
        lo[0] = nd_ld64(sa.sin6_addr.s6_addr + 8)
        port[0] = ntohs(sa.sin6_port)
        ip4[0] = <uint32_t>(lo[0] & 0xffffffffu) if key_is_v4(hi[0], lo[0]) else 0
        return
    s4 = <const sockaddr_in *>sa
    ip4[0] = ntohl(s4.sin_addr.s_addr)
    hi[0] = 0
    lo[0] = (<uint64_t>V4MAPPED_HI32 << 32) | ip4[0]
    port[0] = ntohs(s4.sin_port)

cdef inline void sockaddr_set_src(sockaddr_in6 *sa, uint64_t hi, uint64_t lo) noexcept nogil:
    """Simulation (process_udp): a source address as recvmmsg would report it: IPv4 keys as
    sockaddr_in (an IPv4 socket), IPv6 ones as sockaddr_in6."""
    cdef sockaddr_in *s4
    memset(sa, 0, sizeof(sockaddr_in6))
    if key_is_v4(hi, lo):
        s4 = <sockaddr_in *>sa
        s4.sin_family = AF_INET
        s4.sin_addr.s_addr = htonl(<uint32_t>(lo & 0xffffffffu))
        return
    sa.sin6_family = AF_INET6
    st64(sa.sin6_addr.s6_addr, hi)
    st64(sa.sin6_addr.s6_addr + 8, lo)
