"""Pure-Python reference for csum.pxd: the RFC 1071 Internet checksum in pieces.

A partial sum is an int that has not been folded to 16 bits; only ``py_csum_fold`` of it is
specified (the C version carries a different but equivalent 32-bit value). Pieces of one
region: every piece but the last has even length.

    checksum field of a TCP/UDP segment = py_csum_finish(py_csum_add(l4, pseudo))
    partial checksum (CHECKSUM_PARTIAL)  = py_csum_fold(pseudo)
"""
from __future__ import annotations

_M32 = 0xFFFFFFFF


def _fold32(s: int) -> int:
    while s >> 32:
        s = (s & _M32) + (s >> 32)
    return s


def py_csum_add(data: bytes, sum: int = 0) -> int:
    """Add the big-endian 16-bit words of data (odd length: zero-padded) to a partial sum."""
    b = bytes(data)
    if len(b) % 2:
        b += b"\0"
    s = sum + sum_words(b)
    return _fold32(s)


def sum_words(b: bytes) -> int:
    return sum(int.from_bytes(b[i:i + 2], "big") for i in range(0, len(b), 2))


def py_csum_fold(sum: int) -> int:
    s = sum & _M32
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def py_csum_finish(sum: int) -> int:
    return ~py_csum_fold(sum) & 0xFFFF


def py_pseudo4(saddr: int, daddr: int, proto: int, l4len: int) -> int:
    if not 0 <= proto <= 255:
        raise ValueError(f"protocol must be in 0..255, got {proto}")
    return _fold32((saddr >> 16) + (saddr & 0xFFFF) + (daddr >> 16) + (daddr & 0xFFFF) + proto
                   + (l4len >> 16) + (l4len & 0xFFFF))


def py_pseudo6(src: bytes, dst: bytes, proto: int, l4len: int) -> int:
    if len(src) != 16 or len(dst) != 16:
        raise ValueError("IPv6 addresses are 16 bytes")
    if not 0 <= proto <= 255:
        raise ValueError(f"protocol must be in 0..255, got {proto}")
    return py_csum_add(bytes(dst), py_csum_add(bytes(src), proto + (l4len >> 16) + (l4len & 0xFFFF)))
