# RFC 1071 Internet checksum primitives for the fast path, as inline C (no GIL, no Python).
# Reference implementation: csum_ref.py (same semantics, tests run against both).
#
# Sums are ones' complement sums of big-endian 16-bit words, carried in a uint32_t "partial
# sum" that is not yet folded. Only csum_fold() of a partial sum is specified; two
# implementations may carry different (equivalent) 32-bit partial sums. To checksum a region
# in pieces, every piece but the last must have even length (the words must stay aligned to
# the region's start); the last may be odd (padded with a zero byte, RFC 1071).
#
# A finished TCP/UDP checksum field is  ~csum_fold(csum_add(l4, len, pseudo4(...))) & 0xffff
# (UDP: 0 becomes 0xffff). A "partial" checksum as the kernel leaves it with CHECKSUM_PARTIAL
# is csum_fold(pseudo4(...)), not complemented.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy


cdef inline uint32_t _fold64(uint64_t s) noexcept nogil:
    s = (s & 0xffffffffu) + (s >> 32)
    s = (s & 0xffffffffu) + (s >> 32)
    return <uint32_t>s


cdef inline uint32_t csum_add(const uint8_t *p, size_t n, uint32_t sum) noexcept nogil:
    """Add the n bytes at p (any alignment, any length) to the partial sum `sum`.

    Loads 8 bytes at a time in host order into a 64-bit accumulator with end-around carry;
    the ones' complement sum is byte-order independent up to a final byte swap (RFC 1071
    section 2(B)), done once at the end on little-endian hosts.
    """
    cdef uint64_t acc = 0, v, t
    cdef uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0
    cdef uint32_t x
    cdef uint16_t one = 1
    cdef const uint8_t *q = p
    # 32 bytes per round: four independent accumulators of 32-bit halves (no carries lost:
    # each adds at most 2 * 0xffffffff per round, so 2^31 rounds before overflow)
    while n >= 32:
        memcpy(&v, q, 8); a0 += (v & 0xffffffffu) + (v >> 32)
        memcpy(&v, q + 8, 8); a1 += (v & 0xffffffffu) + (v >> 32)
        memcpy(&v, q + 16, 8); a2 += (v & 0xffffffffu) + (v >> 32)
        memcpy(&v, q + 24, 8); a3 += (v & 0xffffffffu) + (v >> 32)
        q += 32
        n -= 32
    acc = <uint64_t>_fold64(a0) + _fold64(a1) + _fold64(a2) + _fold64(a3)
    while n >= 8:
        memcpy(&v, q, 8)
        acc += (v & 0xffffffffu) + (v >> 32)
        q += 8
        n -= 8
    if n:
        t = 0
        memcpy(&t, q, n)
        acc += (t & 0xffffffffu) + (t >> 32)
    # fold to 16 bits (host-order words)
    x = _fold64(acc)
    x = (x & 0xffff) + (x >> 16)
    x = (x & 0xffff) + (x >> 16)
    if (<uint8_t *>&one)[0] == 1:          # little-endian host: swap to big-endian words
        x = ((x & 0xff) << 8) | (x >> 8)
    return _fold64(<uint64_t>sum + x)


cdef inline uint16_t csum_fold(uint32_t sum) noexcept nogil:
    """Fold a partial sum into 16 bits (ones' complement addition), NOT complemented."""
    sum = (sum & 0xffff) + (sum >> 16)
    sum = (sum & 0xffff) + (sum >> 16)
    return <uint16_t>sum


cdef inline uint32_t pseudo4(uint32_t saddr, uint32_t daddr, uint8_t proto,
                             uint32_t l4len) noexcept nogil:
    """Partial sum of the IPv4 pseudo-header (RFC 793/768): addresses in host order."""
    return _fold64(<uint64_t>(saddr >> 16) + (saddr & 0xffff) + (daddr >> 16) + (daddr & 0xffff)
                   + proto + (l4len >> 16) + (l4len & 0xffff))


cdef inline uint32_t pseudo6(const uint8_t *src16, const uint8_t *dst16, uint8_t proto,
                             uint32_t l4len) noexcept nogil:
    """Partial sum of the IPv6 pseudo-header (RFC 8200 section 8.1)."""
    return csum_add(dst16, 16, csum_add(src16, 16, proto + (l4len >> 16) + (l4len & 0xffff)))


cdef inline uint16_t csum_finish(uint32_t sum) noexcept nogil:
    """The checksum field value for a partial sum: ~fold."""
    return <uint16_t>(~csum_fold(sum) & 0xffff)
