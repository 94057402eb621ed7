# cython: language_level=3, boundscheck=False, wraparound=False
"""Python wrappers over the inline checksum primitives (csum.pxd), for tests and benchmarks.

Same API as csum_ref.py.
"""
from libc.stdint cimport uint8_t, uint32_t


def py_csum_add(const uint8_t[::1] data, uint32_t sum=0) -> int:
    return csum_add(&data[0] if data.shape[0] else NULL, data.shape[0], sum)


def py_csum_add_bulk(const uint8_t[::1] data, uint32_t sum=0, int bulk=0) -> int:
    """csum_add with its bulk loop chosen: 0 scalar, 1 AVX2 (only if py_have_avx2()), -1 auto."""
    if bulk == 1 and not py_have_avx2():
        raise ValueError("this CPU has no AVX2")
    return csum_add_impl(&data[0] if data.shape[0] else NULL, data.shape[0], sum, bulk)


def py_have_avx2() -> bool:
    """Whether csum_add's bulk loop uses AVX2 on this CPU."""
    return vx_csum_avx2_ok() == 1


def py_csum_fold(uint32_t sum) -> int:
    return csum_fold(sum)


def py_csum_finish(uint32_t sum) -> int:
    return csum_finish(sum)


def py_pseudo4(uint32_t saddr, uint32_t daddr, int proto, uint32_t l4len) -> int:
    if not 0 <= proto <= 255:
        raise ValueError(f"protocol must be in 0..255, got {proto}")
    return pseudo4(saddr, daddr, <uint8_t>proto, l4len)


def py_pseudo6(const uint8_t[::1] src, const uint8_t[::1] dst, int proto,
               uint32_t l4len) -> int:
    if src.shape[0] != 16 or dst.shape[0] != 16:
        raise ValueError("IPv6 addresses are 16 bytes")
    if not 0 <= proto <= 255:
        raise ValueError(f"protocol must be in 0..255, got {proto}")
    return pseudo6(&src[0], &dst[0], <uint8_t>proto, l4len)
