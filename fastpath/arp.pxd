# ARP suppression (RFC 826): answer a request for a known IPv4 address in place.
# Reference implementation: arp_ref.py.
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from fastpath.headers cimport ld16, ld32, st16, ld_mac, st_mac, ETH_HLEN, ETH_P_ARP, ETH_P_IP
from fastpath.tables cimport u64map, u64map_slot, u64map_find

cdef enum:
    ARP_FRAME_LEN = 42       # Ethernet header + 28-byte ARP body (no padding on a TAP)
    ARP_NOT_REQUEST = 0      # not an Ethernet/IPv4 ARP request we may answer
    ARP_ANSWERED = 1         # frame rewritten in place into the reply (length ARP_FRAME_LEN)
    ARP_MISS = 2             # a request for an IP that is not in the table

cdef inline int arp_reduce(uint8_t *f, size_t n, const u64map *neigh) noexcept nogil:
    """If f is an ARP request for an IP in `neigh`, rewrite it in place into the reply.

    Not answered (ARP_NOT_REQUEST): non-ARP, ARP replies, non-Ethernet/IPv4 ARP, gratuitous
    requests (sender IP == target IP), and requests whose table MAC is the requester's own
    (it asks about itself). Those go the normal broadcast way.
    """
    cdef uint8_t *a = f + ETH_HLEN
    cdef uint64_t sha, tmac
    cdef uint32_t spa, tpa
    cdef const u64map_slot *s
    if n < ETH_HLEN + 28 or ld16(f + 12) != ETH_P_ARP:
        return ARP_NOT_REQUEST
    if ld16(a) != 1 or ld16(a + 2) != ETH_P_IP or a[4] != 6 or a[5] != 4 or ld16(a + 6) != 1:
        return ARP_NOT_REQUEST
    sha = ld_mac(a + 8)
    spa = ld32(a + 14)
    tpa = ld32(a + 24)
    if spa == tpa:
        return ARP_NOT_REQUEST
    s = u64map_find(neigh, tpa)
    if s == NULL:
        return ARP_MISS
    tmac = s.value
    if tmac == sha:
        return ARP_NOT_REQUEST
    # Ethernet: to the requester, from the target
    st_mac(f, sha)
    st_mac(f + 6, tmac)
    # ARP: op reply; sender = (target MAC, target IP); target = (requester MAC, requester IP)
    st16(a + 6, 2)
    st_mac(a + 8, tmac)
    a[14] = (tpa >> 24) & 0xff
    a[15] = (tpa >> 16) & 0xff
    a[16] = (tpa >> 8) & 0xff
    a[17] = tpa & 0xff
    st_mac(a + 18, sha)
    a[24] = (spa >> 24) & 0xff
    a[25] = (spa >> 16) & 0xff
    a[26] = (spa >> 8) & 0xff
    a[27] = spa & 0xff
    return ARP_ANSWERED
