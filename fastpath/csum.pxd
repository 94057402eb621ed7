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


cdef extern from *:
    """
    /* Bulk ones' complement sum for csum_add: sums the 32-bit host-order words of the first
       (n & ~63) bytes at p into 64-bit accumulators and returns them folded to 32 bits (a
       partial sum in host word order, which csum_add combines with the rest). With AVX2
       (checked once, at run time) 64 bytes per step: the sixteen 32-bit words are widened to
       64-bit lanes (unpack with zero) and added to four accumulators of four lanes; without
       AVX2 the same sum in four scalar accumulators. Every word is < 2^32 and there are n/4
       of them, so the 64-bit total cannot overflow below n = 2^34 (a frame is < 2^17). */
    #include <stdint.h>
    #include <string.h>
    #if defined(__x86_64__) && defined(__GNUC__)
    #include <immintrin.h>
    __attribute__((target("avx2")))
    static uint64_t vx_csum_bulk_avx2(const uint8_t *p, size_t n) {
        __m256i z = _mm256_setzero_si256(), a0 = z, a1 = z, a2 = z, a3 = z;
        const uint8_t *e = p + (n & ~(size_t)63);
        uint64_t l[4];
        for (; p < e; p += 64) {
            __m256i x = _mm256_loadu_si256((const __m256i *)p);
            __m256i y = _mm256_loadu_si256((const __m256i *)(p + 32));
            a0 = _mm256_add_epi64(a0, _mm256_unpacklo_epi32(x, z));
            a1 = _mm256_add_epi64(a1, _mm256_unpackhi_epi32(x, z));
            a2 = _mm256_add_epi64(a2, _mm256_unpacklo_epi32(y, z));
            a3 = _mm256_add_epi64(a3, _mm256_unpackhi_epi32(y, z));
        }
        a0 = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
        _mm256_storeu_si256((__m256i *)l, a0);
        return l[0] + l[1] + l[2] + l[3];
    }
    #endif
    static int vx_have_avx2 = -1;       /* -1: not checked yet; 0 on CPUs without it */
    static inline int vx_csum_avx2_ok(void) {   /* the CPU check, once per module */
        if (vx_have_avx2 < 0) {
    #if defined(__x86_64__) && defined(__GNUC__)
            vx_have_avx2 = __builtin_cpu_supports("avx2") ? 1 : 0;
    #else
            vx_have_avx2 = 0;
    #endif
        }
        return vx_have_avx2;
    }
    static uint64_t vx_csum_bulk_scalar(const uint8_t *p, size_t n) {
        uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0, v;
        const uint8_t *e = p + (n & ~(size_t)63);
        for (; p < e; p += 32) {
            memcpy(&v, p, 8); a0 += (v & 0xffffffffu) + (v >> 32);
            memcpy(&v, p + 8, 8); a1 += (v & 0xffffffffu) + (v >> 32);
            memcpy(&v, p + 16, 8); a2 += (v & 0xffffffffu) + (v >> 32);
            memcpy(&v, p + 24, 8); a3 += (v & 0xffffffffu) + (v >> 32);
        }
        return a0 + a1 + a2 + a3;
    }
    static inline uint32_t vx_csum_bulk(const uint8_t *p, size_t n, int use_avx2) {
        uint64_t s;
        if (use_avx2 < 0)
            use_avx2 = vx_csum_avx2_ok();
    #if defined(__x86_64__) && defined(__GNUC__)
        s = use_avx2 ? vx_csum_bulk_avx2(p, n) : vx_csum_bulk_scalar(p, n);
    #else
        s = vx_csum_bulk_scalar(p, n);
    #endif
        s = (s & 0xffffffffu) + (s >> 32);
        s = (s & 0xffffffffu) + (s >> 32);
        return (uint32_t)s;
    }
    """
    uint32_t vx_csum_bulk(const uint8_t *p, size_t n, int use_avx2) nogil
    int vx_csum_avx2_ok() nogil


cdef enum:
    CSUM_BULK_MIN = 256      # below this, the plain loop (the bulk call costs more than it saves)


cdef inline uint32_t csum_add_impl(const uint8_t *p, size_t n, uint32_t sum,
                                   int bulk) noexcept nogil:
    """csum_add with a choice of bulk loop: bulk < 0 picks at run time (AVX2 where the CPU has
    it), 1 forces AVX2 (caller checked), 0 the scalar loop; tests compare all of them."""
    cdef uint64_t acc = 0, v, t
    cdef uint32_t x
    cdef uint16_t one = 1
    cdef const uint8_t *q = p
    cdef size_t k
    if n >= CSUM_BULK_MIN:
        # 64-byte blocks from the region's start keep the 32-bit words aligned to it
        acc = vx_csum_bulk(q, n, bulk)
        k = n & ~(<size_t>63)
        q += k
        n -= k
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


cdef inline uint32_t csum_add(const uint8_t *p, size_t n, uint32_t sum) noexcept nogil:
    """Add the n bytes at p (any alignment, any length) to the partial sum `sum`.

    Sums 32-bit host-order words into a 64-bit accumulator with end-around carry (bulk: AVX2
    where the CPU has it, 64 bytes per step); the ones' complement sum is byte-order
    independent up to a final byte swap (RFC 1071 section 2(B)), done once at the end on
    little-endian hosts.
    """
    return csum_add_impl(p, n, sum, -1)


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
