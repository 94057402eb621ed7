"""Offload primitives, against both implementations: RFC 1071 checksums (csum), the virtio-net
header (vnet). Segmentation (gso) tests are in tests/test_fastpath_gso.py."""
from __future__ import annotations

import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6

from tests.fastpath_impls import Impl, examples, impl

__all__ = ["impl"]  # the fixture (pytest finds it by name)


def naive_checksum(data: bytes) -> int:
    """RFC 1071 section 4.1, word by word."""
    if len(data) % 2:
        data += b"\0"
    s = 0
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


# ---- csum ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 8, 9, 31, 32, 33, 63, 64, 65, 1499, 1500, 65535])
def test_csum_lengths(impl: Impl, n: int) -> None:
    data = os.urandom(n)
    c = impl.csum
    assert c.py_csum_finish(c.py_csum_add(data, 0)) == naive_checksum(data)


def test_csum_all_ones_and_zero(impl: Impl) -> None:
    c = impl.csum
    assert c.py_csum_fold(c.py_csum_add(b"\xff" * 4096, 0)) == 0xFFFF
    assert c.py_csum_fold(c.py_csum_add(b"\0" * 4096, 0)) == 0
    assert c.py_csum_fold(0xFFFFFFFF) == 0xFFFF
    assert c.py_csum_fold(0x0001FFFF) == 0x0001


@settings(max_examples=examples(200), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=3000), cut=st.integers(0, 3000), off=st.integers(0, 7),
       seed=st.integers(0, 0xFFFFFFFF))
def test_csum_pieces_and_alignment(impl: Impl, data: bytes, cut: int, off: int,
                                   seed: int) -> None:
    """Any alignment (offset into a buffer), two pieces (first even), a non-zero start sum."""
    c = impl.csum
    cut = min(cut, len(data)) & ~1
    buf = memoryview(bytes(off) + data)[off:]
    whole = c.py_csum_add(buf, seed)
    pieces = c.py_csum_add(buf[cut:], c.py_csum_add(buf[:cut], seed))
    assert c.py_csum_fold(whole) == c.py_csum_fold(pieces)
    expect = naive_checksum(seed.to_bytes(4, "big") + data)
    assert c.py_csum_finish(whole) == expect


def test_csum_both_agree_on_folds(impl: Impl) -> None:
    from fastpath import csum, csum_ref
    for n in (0, 5, 100, 9001):
        d = os.urandom(n)
        assert csum.py_csum_fold(csum.py_csum_add(d, 7)) == csum_ref.py_csum_fold(
            csum_ref.py_csum_add(d, 7))


def _bulk_loops() -> list[int]:
    """The bulk loops of the C csum_add this machine can run: 0 scalar, 1 AVX2, -1 auto."""
    from fastpath import csum
    return [0, -1] + ([1] if csum.py_have_avx2() else [])


@settings(max_examples=examples(300), deadline=None)
@given(n=st.one_of(st.integers(190, 330), st.integers(0, 66000)), off=st.integers(0, 31),
       seed=st.integers(0, 0xFFFFFFFF))
def test_csum_bulk_loops_agree_with_reference(n: int, off: int, seed: int) -> None:
    """Every bulk loop of the C checksum (scalar, AVX2 where the CPU has it) gives the
    reference's sum: around the 256-byte switch to the bulk loop, its 64-byte steps, any
    alignment, up to a 64 KB GSO frame."""
    from fastpath import csum, csum_ref
    buf = memoryview(os.urandom(off + n))[off:]
    want = csum_ref.py_csum_fold(csum_ref.py_csum_add(bytes(buf), seed))
    for bulk in _bulk_loops():
        assert csum.py_csum_fold(csum.py_csum_add_bulk(buf, seed, bulk)) == want, bulk


@pytest.mark.parametrize("fill", [b"\xff", b"\0", b"\xff\xfe", b"\x80\x00\x00\x01"])
def test_csum_bulk_loops_extreme_words(fill: bytes) -> None:
    """All-ones (every add carries) and other extreme words over 64 KB + odd tails: the
    accumulators must not lose a carry."""
    from fastpath import csum
    for n in (256, 65536, 65549):
        data = (fill * (n // len(fill) + 1))[:n]
        want = naive_checksum(data)
        for bulk in _bulk_loops():
            assert csum.py_csum_finish(csum.py_csum_add_bulk(data, 0, bulk)) == want, (n, bulk)


def _ip_int(a: str) -> int:
    return int.from_bytes(bytes(int(x) for x in a.split(".")), "big")


def _l4_without_checksum(raw: bytes, ip_header_len: int, proto: str) -> tuple[bytes, int]:
    """The TCP or UDP segment of a packet scapy built (`raw`) with its checksum field zeroed,
    and the checksum scapy computed there (what py_csum_finish must give back over it)."""
    seg = bytearray(raw[ip_header_len:])
    field = 16 if proto == "tcp" else 6
    want = struct.unpack_from("!H", seg, field)[0]
    seg[field:field + 2] = b"\0\0"
    return bytes(seg), want


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_pseudo4_against_scapy(impl: Impl, proto: str) -> None:
    c = impl.csum
    l4 = TCP(sport=1234, dport=80, seq=7, flags="PA") if proto == "tcp" else UDP(sport=1, dport=2)
    pkt = IP(bytes(IP(src="10.244.1.2", dst="10.244.2.3") / l4 / (b"x" * 1001)))
    seg, want = _l4_without_checksum(bytes(pkt), 20, proto)
    ps = c.py_pseudo4(_ip_int("10.244.1.2"), _ip_int("10.244.2.3"), pkt.proto, len(seg))
    assert c.py_csum_finish(c.py_csum_add(seg, ps)) == want


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_pseudo6_against_scapy(impl: Impl, proto: str) -> None:
    import socket
    c = impl.csum
    l4 = TCP(sport=1234, dport=80) if proto == "tcp" else UDP(sport=1, dport=2)
    pkt = IPv6(bytes(IPv6(src="fd00::1", dst="fd00::2:3") / l4 / (b"y" * 777)))
    seg, want = _l4_without_checksum(bytes(pkt), 40, proto)
    ps = c.py_pseudo6(socket.inet_pton(socket.AF_INET6, "fd00::1"),
                      socket.inet_pton(socket.AF_INET6, "fd00::2:3"), pkt.nh, len(seg))
    assert c.py_csum_finish(c.py_csum_add(seg, ps)) == want


def test_pseudo_bad_args(impl: Impl) -> None:
    c = impl.csum
    with pytest.raises(ValueError):
        c.py_pseudo4(1, 2, 256, 20)
    with pytest.raises(ValueError):
        c.py_pseudo6(b"\0" * 15, b"\0" * 16, 6, 20)


# ---- vnet ---------------------------------------------------------------------------------------


def test_vnet_layout_little_endian(impl: Impl) -> None:
    v = impl.vnet
    raw = v.py_build((1, 4, 0x0102, 0x0304, 0x0506, 0x0708))
    assert raw == bytes([1, 4, 2, 1, 4, 3, 6, 5, 8, 7])
    assert tuple(v.py_parse(raw + b"junk")) == (1, 4, 0x0102, 0x0304, 0x0506, 0x0708)
    with pytest.raises(ValueError):
        v.py_parse(raw[:9])
    with pytest.raises(ValueError):
        v.py_build((0, 0, 65536, 0, 0, 0))


def test_vnet_constants_match() -> None:
    from fastpath import vnet, vnet_ref
    for k, val in vnet.C_CONSTANTS.items():
        assert getattr(vnet_ref, k) == val, k


# (header, frame length) -> expected reason name (None = accepted)
VNET_CASES = [
    ((0, 0, 0, 0, 0, 0), 60, None),
    ((1, 0, 34, 0, 34, 16), 100, None),                 # NEEDS_CSUM, TCP field in range
    ((2, 0, 0, 0, 0, 0), 60, None),                     # DATA_VALID
    ((1, 1, 66, 1448, 34, 16), 65000, None),            # TSO4
    ((1, 4, 86, 1428, 54, 16), 65000, None),            # TSO6
    ((1, 5, 42, 1472, 34, 6), 30000, None),             # USO
    ((4, 0, 0, 0, 0, 0), 60, "vnet_bad_flags"),
    ((0x81, 0, 0, 0, 0, 0), 60, "vnet_bad_flags"),
    ((1, 3, 42, 1472, 34, 6), 30000, "gso_bad_type"),   # UFO: not offered
    ((1, 2, 66, 1448, 34, 16), 65000, "gso_bad_type"),
    ((1, 0x81, 66, 1448, 34, 16), 65000, "gso_ecn"),
    ((1, 1, 66, 0, 34, 16), 65000, "gso_bad_size"),
    ((1, 1, 66, 65000, 34, 16), 65000, "gso_bad_size"),
    ((1, 1, 66, 1448, 34, 16), 60, "vnet_bad_hdr_len"),
    ((1, 0, 0, 0, 90, 16), 100, "vnet_bad_csum"),
    ((1, 0, 0, 0, 65535, 65535), 100, "vnet_bad_csum"),
    ((1, 0, 0, 0, 0, 0), 100, "vnet_bad_csum"),         # would overwrite the dst MAC
    ((1, 0, 0, 0, 12, 0), 100, "vnet_bad_csum"),        # ... the ethertype
    ((1, 0, 0, 0, 33, 0), 100, "vnet_bad_csum"),
    ((0, 1, 66, 1448, 34, 16), 65000, "gso_no_csum"),
]


@pytest.mark.parametrize("hdr,length,reason", VNET_CASES)
def test_vnet_check(impl: Impl, hdr: tuple[int, ...], length: int, reason: str | None) -> None:
    v = impl.vnet
    r = v.py_check(hdr, length)
    assert (None if r == 0 else v.REASONS[r]) == reason


@settings(max_examples=examples(300), deadline=None)
@given(hdr=st.tuples(st.integers(0, 255), st.integers(0, 255), *[st.integers(0, 65535)] * 4),
       length=st.integers(0, 70000))
def test_vnet_check_differential(hdr: tuple[int, ...], length: int) -> None:
    from fastpath import vnet, vnet_ref
    assert vnet.py_check(hdr, length) == vnet_ref.py_check(hdr, length)
    raw = vnet_ref.py_build(hdr)
    assert vnet.py_build(hdr) == raw
    assert tuple(vnet.py_parse(raw)) == tuple(vnet_ref.py_parse(raw)) == hdr
