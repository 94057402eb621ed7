"""Outer headers (RFC 791 / 768 / 7348): encode checked by scapy, parse, checksum, source port.

Every test runs against fastpath.headers_ref and the Cython fastpath.headers (``impl``);
the hypothesis tests at the end check the two agree byte for byte.
"""
from __future__ import annotations

import importlib
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.all import raw
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from fastpath import headers_ref, spec
from tests.fastpath_impls import (
    CYTHON,
    REF,
    Impl,
    examples,
    impl,
    ip_frame,
    ip_int,
    vxlan,
)

__all__ = ["impl"]  # the fixture, imported for pytest

headers = importlib.import_module("fastpath.headers")   # compiled: no stubs for mypy

FAST = settings(max_examples=examples(300), deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])

INNER = bytes(Ether(dst="02:00:00:00:02:02", src="02:00:00:00:01:02")
              / IP(src="10.244.1.2", dst="10.244.2.2") / TCP(sport=40000, dport=443, flags="S"))


# ---- constants ----------------------------------------------------------------------------------


def test_c_constants_agree_with_spec() -> None:
    assert headers.C_CONSTANTS, "no C constants exported"
    for name, value in headers.C_CONSTANTS.items():
        assert getattr(spec, name) == value, name
    assert spec.OUTER_HLEN == spec.IPV4_HLEN + spec.UDP_HLEN + spec.VXLAN_HLEN == 36
    assert spec.VXLAN_OVERHEAD == 50


def test_error_codes(impl: Impl) -> None:
    assert impl.headers.VX_ERRORS == {-1: "truncated", -2: "no_i_flag", -3: "reserved"}


# ---- encode, checked by scapy -------------------------------------------------------------------


@pytest.mark.parametrize("vni", [1, 42, 0x123456, spec.VNI_MAX])
@pytest.mark.parametrize("ttl", [1, 64, 255])
def test_encap_parses_as_vxlan_in_scapy(impl: Impl, vni: int, ttl: int) -> None:
    d = impl.headers.py_encap(INNER, ip_int("192.168.100.1"), ip_int("192.168.100.2"), 54321,
                              spec.VXLAN_PORT, vni, ttl)
    assert isinstance(d, bytes) and len(d) == 36 + len(INNER)
    p = IP(d)
    assert (p.version, p.ihl, p.tos, p.id, p.frag) == (4, 5, 0, 0, 0)
    assert p.flags == "DF"
    assert (p.ttl, p.proto, p.len) == (ttl, 17, len(d))
    assert (p.src, p.dst) == ("192.168.100.1", "192.168.100.2")
    u = p[UDP]
    assert (u.sport, u.dport, u.len, u.chksum) == (54321, 4789, len(d) - 20, 0)
    v = p[VXLAN]
    assert (v.flags, v.vni) == (0x08, vni)
    assert raw(v)[:8] == bytes([0x08, 0, 0, 0]) + struct.pack("!I", vni << 8)
    assert bytes(v.payload) == INNER
    assert p[TCP].dport == 443


def test_encap_checksum_matches_scapy(impl: Impl) -> None:
    for dst in ("192.168.100.2", "10.255.255.254", "0.0.0.1", "255.255.255.255"):
        for n in (14, 60, 1464):
            d = impl.headers.py_encap(INNER[:14] + bytes(n - 14), ip_int("172.16.0.1"),
                                      ip_int(dst), 40000, 4789, 7, 64)
            p = IP(d)
            ours = p.chksum
            del p.chksum
            assert IP(raw(p)).chksum == ours, (dst, n)
            assert impl.headers.py_ipv4_checksum(d[:20]) == 0    # a valid header sums to 0


def test_encap_other_port_and_addresses(impl: Impl) -> None:
    d = impl.headers.py_encap(INNER, ip_int("10.0.0.1"), ip_int("10.0.0.2"), 1, 8472, 9, 64)
    p = IP(d)
    u = p[UDP]
    assert (u.sport, u.dport) == (1, 8472)          # scapy binds VXLAN to 4789 only
    v = VXLAN(bytes(u.payload))
    assert (v.flags, v.vni, bytes(v.payload)) == (0x08, 9, INNER)


@pytest.mark.parametrize("args,msg", [
    ({"n": 65500}, "frame of 65500 bytes does not fit an IPv4 packet with outer headers"),
    ({"sport": 65536}, "UDP ports must be in 0..65535, got 65536, 4789"),
    ({"dport": 70000}, "UDP ports must be in 0..65535, got 40000, 70000"),
    ({"sport": -1}, "UDP ports must be in 0..65535, got -1, 4789"),
    ({"vni": 1 << 24}, "VNI must be in 0..16777215, got 16777216"),
    ({"ttl": 256}, "ttl must be in 0..255, got 256"),
    ({"ttl": -1}, "ttl must be in 0..255, got -1"),
])
def test_encap_rejects_what_does_not_fit(impl: Impl, args: dict[str, int], msg: str) -> None:
    kw = {"sport": 40000, "dport": 4789, "vni": 42, "ttl": 64, **args}
    frame = bytes(kw.pop("n", 60))
    with pytest.raises(ValueError) as e:
        impl.headers.py_encap(frame, 1, 2, kw["sport"], kw["dport"], kw["vni"], kw["ttl"])
    assert str(e.value) == msg


@pytest.mark.parametrize("args,msg", [
    ({"vni": -1}, "VNI must be in 0..16777215, got -1"),
    ({"vni": 2**32}, "VNI must be in 0..16777215, got 4294967296"),
    ({"ttl": 2**40}, "ttl must be in 0..255, got 1099511627776"),
    ({"sport": 2**40}, "UDP ports must be in 0..65535, got 1099511627776, 4789"),
])
def test_encap_rejects_out_of_c_range(request: pytest.FixtureRequest, impl: Impl,
                                      args: dict[str, int], msg: str) -> None:
    """Values beyond the C parameter types get the same ValueError, not OverflowError."""
    kw = {"sport": 40000, "dport": 4789, "vni": 42, "ttl": 64, **args}
    with pytest.raises(ValueError) as e:
        impl.headers.py_encap(bytes(60), 1, 2, kw["sport"], kw["dport"], kw["vni"], kw["ttl"])
    assert str(e.value) == msg


def test_encap_largest_frame(impl: Impl) -> None:
    d = impl.headers.py_encap(bytes(65499), 1, 2, 3, 4, 5, 6)
    assert len(d) == 65535 and IP(d).len == 65535


# ---- decode -------------------------------------------------------------------------------------


@pytest.mark.parametrize("vni", [1, 4096, 0xABCDEF, spec.VNI_MAX])
@pytest.mark.parametrize("strict", [True, False])
def test_parse_scapy_vxlan(impl: Impl, vni: int, strict: bool) -> None:
    # flags=0x08 always: VXLAN(vni=N) alone builds a VXLAN-GPE header in scapy
    payload = raw(VXLAN(flags=0x08, vni=vni) / Ether(INNER))
    assert impl.headers.py_parse_vxlan(payload, strict) == vni


def test_parse_vni_zero_is_a_vni(impl: Impl) -> None:
    assert impl.headers.py_parse_vxlan(vxlan(0)) == 0


@pytest.mark.parametrize("n", range(8))
def test_parse_truncated(impl: Impl, n: int) -> None:
    for strict in (True, False):
        assert impl.headers.py_parse_vxlan(vxlan(42, INNER)[:n], strict) == -1
        assert impl.headers.py_parse_vxlan(bytes(n), strict) == -1     # truncation wins


@pytest.mark.parametrize("flags", [0x00, 0x80, 0x04, 0xF7])
def test_parse_no_i_flag(impl: Impl, flags: int) -> None:
    for strict in (True, False):
        assert impl.headers.py_parse_vxlan(vxlan(42, INNER, flags=flags), strict) == -2


@pytest.mark.parametrize("kw", [
    {"flags": 0x0C}, {"flags": 0x88}, {"flags": 0xFF}, {"flags": 0x09},
    {"rsv1": 0x800000}, {"rsv1": 0x000100}, {"rsv1": 0x000001}, {"rsv2": 0x01}, {"rsv2": 0xFF},
], ids=lambda kw: "-".join(f"{k}={v:#x}" for k, v in kw.items()))
def test_parse_reserved_strict_vs_lenient(impl: Impl, kw: dict[str, int]) -> None:
    payload = vxlan(0x345678, INNER, **kw)
    assert impl.headers.py_parse_vxlan(payload, True) == -3
    assert impl.headers.py_parse_vxlan(payload, False) == 0x345678
    assert impl.headers.py_parse_vxlan(payload) == -3               # strict by default


def test_parse_gpe_header_from_scapy(impl: Impl) -> None:
    gpe = raw(VXLAN(vni=77) / Ether(INNER))          # scapy default: GPE flags (P bit set)
    assert gpe[0] & 0x08 and gpe[0] != 0x08
    assert impl.headers.py_parse_vxlan(gpe, True) == -3
    assert impl.headers.py_parse_vxlan(gpe, False) == 77


def test_parse_accepts_bytearray_and_memoryview(impl: Impl) -> None:
    p = vxlan(99, INNER)
    assert impl.headers.py_parse_vxlan(bytearray(p)) == 99
    assert impl.headers.py_parse_vxlan(memoryview(p)) == 99


# ---- checksum -----------------------------------------------------------------------------------


def test_checksum_matches_scapy(impl: Impl) -> None:
    for ttl, ident, tos in ((64, 0, 0), (1, 0xFFFF, 0xB8), (255, 1234, 0x10)):
        hdr = raw(IP(src="10.1.2.3", dst="10.3.2.1", ttl=ttl, id=ident, tos=tos, proto=17,
                     flags="DF", len=1500))[:20]
        zeroed = hdr[:10] + b"\0\0" + hdr[10 + 2:]
        assert impl.headers.py_ipv4_checksum(zeroed) == struct.unpack("!H", hdr[10:12])[0]
        assert impl.headers.py_ipv4_checksum(hdr) == 0


@pytest.mark.parametrize("n", [0, 1, 19])
def test_checksum_short_header(impl: Impl, n: int) -> None:
    with pytest.raises(ValueError, match=f"^IPv4 header needs 20 bytes, got {n}$"):
        impl.headers.py_ipv4_checksum(bytes(n))


def test_checksum_all_ones_and_zeros(impl: Impl) -> None:
    assert impl.headers.py_ipv4_checksum(bytes(20)) == 0xFFFF
    assert impl.headers.py_ipv4_checksum(b"\xff" * 20) == 0


# ---- source port --------------------------------------------------------------------------------

RANGES = [(32768, 61000), (49152, 65535), (1, 2), (1000, 1010), (4789, 4790), (1, 65535)]


def _flows() -> list[bytes]:
    fl = []
    for i in range(64):
        fl.append(ip_frame("02:00:00:00:02:02", "02:00:00:00:01:02", sport=30000 + i))
        fl.append(ip_frame("02:00:00:00:02:02", "02:00:00:00:01:02", dport=1000 + i, proto=6))
        fl.append(ip_frame("02:00:00:00:02:02", "02:00:00:00:01:02", src_ip=f"10.0.{i}.1"))
        fl.append(ip_frame("02:00:00:00:02:02", "02:00:00:00:01:02", dst_ip=f"10.9.{i}.1"))
        fl.append(ip_frame(f"02:00:00:00:02:{i:02x}", "02:00:00:00:01:02"))
    return fl


@pytest.mark.parametrize("lo,hi", RANGES)
def test_source_port_in_range(impl: Impl, lo: int, hi: int) -> None:
    ports = {impl.headers.py_source_port(f, lo, hi) for f in _flows()}
    assert ports and all(lo <= p < hi for p in ports), sorted(ports)
    if hi - lo >= 1000:
        assert len(ports) > 300, "flows collapse onto few ports"
    else:
        assert ports == set(range(lo, hi))      # a small range: every port is used


def test_source_port_stable_per_flow(impl: Impl) -> None:
    sp = impl.headers.py_source_port
    ref = sp(ip_frame("02:00:00:00:02:02", "02:00:00:00:01:02", proto=6), 32768, 61000)
    for payload, ident, ttl in ((b"", 1, 64), (b"x" * 1000, 7, 1), (b"seq", 0xFFFF, 200)):
        f = ip_frame("02:00:00:00:02:02", "02:00:00:00:01:02", proto=6, payload=payload,
                     ident=ident, ttl=ttl)
        assert sp(f, 32768, 61000) == ref
        assert sp(f, 32768, 61000) == sp(bytes(f), 32768, 61000)


@pytest.mark.parametrize("field", ["sport", "dport", "src_ip", "dst_ip", "proto", "dst_mac"])
def test_source_port_varies_across_flows(impl: Impl, field: str) -> None:
    def frame(i: int) -> bytes:
        choices: dict[str, dict[str, Any]] = {
            "sport": {"sport": 20000 + i}, "dport": {"dport": 20000 + i},
            "src_ip": {"src_ip": f"10.1.{i // 256}.{i % 256}"},
            "dst_ip": {"dst_ip": f"10.2.{i // 256}.{i % 256}"},
            "proto": {"proto": i}, "dst_mac": {}}
        kw = choices[field]
        dst = (f"02:00:00:00:{i // 256:02x}:{i % 256:02x}" if field == "dst_mac"
               else "02:00:00:00:02:02")
        return ip_frame(dst, "02:00:00:00:01:02", **kw)
    ports = [impl.headers.py_source_port(frame(i), 32768, 61000) for i in range(256)]
    assert len(set(ports)) > 240, f"{field}: only {len(set(ports))} distinct of 256"


def test_source_port_ignores_l4_ports_of_fragments(impl: Impl) -> None:
    """Fragments of one datagram (first has MF, rest have an offset) hash alike: no L4 ports."""
    sp = impl.headers.py_source_port
    first = [sp(ip_frame("02:00:00:00:02:02", "02:00:00:00:01:02", sport=s, frag=0x2000),
                32768, 61000) for s in range(1000, 1020)]
    later = [sp(ip_frame("02:00:00:00:02:02", "02:00:00:00:01:02", sport=s, frag=185),
                32768, 61000) for s in range(1000, 1020)]
    assert len(set(first + later)) == 1
    unfragmented = {sp(ip_frame("02:00:00:00:02:02", "02:00:00:00:01:02", sport=s), 32768, 61000)
                    for s in range(1000, 1020)}
    assert len(unfragmented) == 20


def test_source_port_non_ip_and_short_frames(impl: Impl) -> None:
    sp = impl.headers.py_source_port
    for f in (b"", b"\x02", bytes(13), bytes(14), bytes(33), bytes(34), b"\xff" * 100):
        assert 32768 <= sp(f, 32768, 61000) < 61000


@pytest.mark.parametrize("lo,hi", [(0, 10), (10, 10), (10, 5), (1, 65537), (-5, 10)])
def test_source_port_bad_range(impl: Impl, lo: int, hi: int) -> None:
    with pytest.raises(ValueError, match=f"^bad source port range {lo}-{hi}$"):
        impl.headers.py_source_port(b"\0" * 60, lo, hi)


@pytest.mark.parametrize("lo", [1, 32768, 65535])
def test_source_port_range_up_to_65536(impl: Impl,
                                       lo: int) -> None:
    """hi = 65536 is accepted (port 65535 usable); ports must stay in [lo, 65536)."""
    ports = {impl.headers.py_source_port(f, lo, 65536) for f in _flows()}
    assert all(lo <= p <= 65535 for p in ports), sorted(ports)[:5]
    assert ports == {REF.headers.py_source_port(f, lo, 65536) for f in _flows()}


# ---- reference and Cython agree ----------------------------------------------------------------

frames = st.one_of(
    st.binary(max_size=120),
    st.builds(lambda s, d, pr, sp, dp, fr, pl, cut: ip_frame(
        "02:00:00:00:02:02", "02:00:00:00:01:02", src_ip=s, dst_ip=d, proto=pr, sport=sp,
        dport=dp, frag=fr, payload=pl)[:cut],
        st.ip_addresses(v=4).map(str), st.ip_addresses(v=4).map(str),
        st.sampled_from([6, 17, 1, 132]), st.integers(0, 65535), st.integers(0, 65535),
        st.sampled_from([0, 0x4000, 0x2000, 1, 0x1FFF]), st.binary(max_size=20),
        st.integers(0, 80)),
    # IPv4 with options (ihl > 5) or a bogus ihl: the L4 offset moves
    st.builds(lambda ihl, body: bytes(12) + b"\x08\x00" + bytes([0x40 | ihl]) + body,
              st.integers(0, 15), st.binary(min_size=19, max_size=80)),
)


@FAST
@given(f=frames, r=st.integers(1, 65535).flatmap(
    lambda lo: st.tuples(st.just(lo), st.integers(lo + 1, 65536))))
def test_ref_and_cython_agree_on_flow_hash_and_port(f: bytes, r: tuple[int, int]) -> None:
    assert CYTHON.headers.py_flow_hash(f) == REF.headers.py_flow_hash(f)
    assert CYTHON.headers.py_source_port(f, *r) == REF.headers.py_source_port(f, *r)


@FAST
@given(f=st.binary(max_size=200), src=st.integers(0, 2**32 - 1), dst=st.integers(0, 2**32 - 1),
       sport=st.integers(1, 65535), dport=st.integers(1, 65535), vni=st.integers(0, spec.VNI_MAX),
       ttl=st.integers(1, 255))
def test_ref_and_cython_agree_on_encap(f: bytes, src: int, dst: int, sport: int, dport: int,
                                       vni: int, ttl: int) -> None:
    d = CYTHON.headers.py_encap(f, src, dst, sport, dport, vni, ttl)
    assert d == REF.headers.py_encap(f, src, dst, sport, dport, vni, ttl)
    assert REF.headers.py_ipv4_checksum(d[:20]) == 0
    assert REF.headers.py_parse_vxlan(d[28:]) == vni


@FAST
@given(p=st.one_of(st.binary(max_size=24),
                   st.builds(lambda fl, r1, vni, r2: vxlan(vni, b"x", flags=fl, rsv1=r1, rsv2=r2),
                             st.sampled_from([0x08, 0x08, 0x00, 0x0C, 0x48, 0xFF]),
                             st.sampled_from([0, 0, 1, 0x800000]), st.integers(0, spec.VNI_MAX),
                             st.sampled_from([0, 0, 1, 0x80]))),
       strict=st.booleans())
def test_ref_and_cython_agree_on_parse(p: bytes, strict: bool) -> None:
    got = CYTHON.headers.py_parse_vxlan(p, strict)
    assert got == REF.headers.py_parse_vxlan(p, strict)
    assert got in headers_ref.VX_ERRORS or 0 <= got <= spec.VNI_MAX


@FAST
@given(h=st.binary(min_size=20, max_size=40))
def test_ref_and_cython_agree_on_checksum(h: bytes) -> None:
    assert CYTHON.headers.py_ipv4_checksum(h) == REF.headers.py_ipv4_checksum(h)
