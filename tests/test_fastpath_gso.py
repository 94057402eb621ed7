"""Outbound offloads (gso): segmentation of scapy-built GSO frames, NEEDS_CSUM completion and
every drop reason of a lying virtio-net header, against both implementations."""
from __future__ import annotations

import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop
from scapy.layers.l2 import Ether

from fastpath import gso, gso_ref
from fastpath.vnet_ref import (VNET_F_NEEDS_CSUM, VNET_GSO_NONE, VNET_GSO_TCPV4, VNET_GSO_TCPV6,
                               VNET_GSO_UDP_L4)
from tests.fastpath_impls import Impl, examples, impl

__all__ = ["impl"]

MAX_INNER = 1500 - 36
MACS = dict(dst="02:00:00:00:00:02", src="02:00:00:00:00:01")


def tso4(payload: bytes, *, mss: int = 1398, flags: str = "PA", ident: int = 100,
         seq: int = 1000, options: list | None = None, ipopts: bytes = b"") -> tuple[tuple, bytes]:
    tcp = TCP(sport=40000, dport=5201, seq=seq, ack=77, flags=flags, window=500,
              options=options or [])
    ip = IP(src="10.244.1.2", dst="10.244.2.3", id=ident, flags="DF", options=ipopts)
    f = bytes(Ether(**MACS) / ip / tcp / payload)
    ihl = (f[14] & 0xF) * 4
    thl = (f[14 + ihl + 12] >> 4) * 4
    return (VNET_F_NEEDS_CSUM, VNET_GSO_TCPV4, 14 + ihl + thl, mss, 14 + ihl, 16), f


def tso6(payload: bytes, *, mss: int = 1378, flags: str = "A") -> tuple[tuple, bytes]:
    f = bytes(Ether(**MACS) / IPv6(src="fd00::1", dst="fd00::2") /
              TCP(sport=1, dport=2, seq=2**32 - 3000, flags=flags, options=[("NOP", None),
                                                                           ("NOP", None),
                                                                           ("Timestamp", (1, 2))])
              / payload)
    return (VNET_F_NEEDS_CSUM, VNET_GSO_TCPV6, 14 + 40 + 32, mss, 54, 16), f


def uso4(payload: bytes, *, mss: int = 1400) -> tuple[tuple, bytes]:
    f = bytes(Ether(**MACS) / IP(src="10.244.1.2", dst="10.244.2.3", id=65530) /
              UDP(sport=9, dport=10) / payload)
    return (VNET_F_NEEDS_CSUM, VNET_GSO_UDP_L4, 42, mss, 34, 6), f


def check_tcp_segments(orig: bytes, segs: list[bytes], mss: int, v6: bool) -> None:
    o = Ether(orig)
    ip0 = o[IPv6] if v6 else o[IP]
    t0 = o[TCP]
    data = bytes(t0.payload)
    assert len(segs) == -(-len(data) // mss)
    got = b""
    for i, raw in enumerate(segs):
        p = Ether(raw)
        t = p[TCP]
        pay = bytes(t.payload)
        assert len(pay) == min(mss, len(data) - i * mss)
        got += pay
        if v6:
            assert p[IPv6].plen == len(raw) - 54
        else:
            ip = p[IP]
            assert ip.len == len(raw) - 14 and ip.ihl == 5
            assert ip.id == (ip0.id + i) & 0xFFFF
            assert ip.flags == ip0.flags
            ck = ip.chksum
            del ip.chksum
            assert IP(bytes(ip)).chksum == ck, f"segment {i}: IPv4 header checksum"
        assert t.seq == (t0.seq + i * mss) & 0xFFFFFFFF
        assert t.ack == t0.ack and t.window == t0.window and t.options == t0.options
        last = i == len(segs) - 1
        want = int(t0.flags)
        if not last:
            want &= ~0x09
        if i:
            want &= ~0x80
        assert int(t.flags) == want, f"segment {i}: flags {t.flags}"
        ck = t.chksum
        del t.chksum
        re = Ether(bytes(p))
        assert re[TCP].chksum == ck, f"segment {i}: TCP checksum"
    assert got == data


@pytest.mark.parametrize("size", [1397, 1398, 1399, 2796, 30000, 65483])
def test_tso4_segments(impl: Impl, size: int) -> None:
    hdr, f = tso4(os.urandom(size), flags="FPA" if size % 2 else "PA")
    code, segs = impl.gso.py_offload(hdr, f, MAX_INNER)
    assert code == 0
    check_tcp_segments(f, segs, 1398, False)
    assert all(len(s) <= MAX_INNER for s in segs)


def test_tso4_cwr_first_fin_last_timestamps_id_wrap(impl: Impl) -> None:
    hdr, f = tso4(os.urandom(5000), flags="FPAC", ident=65534, seq=2**32 - 10,
                  options=[("NOP", None), ("NOP", None), ("Timestamp", (123, 456))], mss=1000)
    code, segs = impl.gso.py_offload(hdr, f, MAX_INNER)
    assert code == 0 and len(segs) == 5
    check_tcp_segments(f, segs, 1000, False)
    assert [Ether(s)[IP].id for s in segs] == [65534, 65535, 0, 1, 2]


@pytest.mark.parametrize("size", [1378, 1379, 40000])
def test_tso6_segments(impl: Impl, size: int) -> None:
    hdr, f = tso6(os.urandom(size), flags="PA")
    code, segs = impl.gso.py_offload(hdr, f, MAX_INNER)
    assert code == 0
    check_tcp_segments(f, segs, 1378, True)


def test_uso4_segments(impl: Impl) -> None:
    data = os.urandom(10000)
    hdr, f = uso4(data)
    code, segs = impl.gso.py_offload(hdr, f, MAX_INNER)
    assert code == 0 and len(segs) == 8
    got = b""
    for i, raw in enumerate(segs):
        p = Ether(raw)
        assert p[IP].id == (65530 + i) & 0xFFFF and p[IP].len == len(raw) - 14
        assert p[UDP].len == len(raw) - 34 and (p.sport, p.dport) == (9, 10)
        ck = p[UDP].chksum
        del p[UDP].chksum, p[IP].chksum
        assert Ether(bytes(p))[UDP].chksum == ck != 0
        got += bytes(p[UDP].payload)
    assert got == data


def test_uso6_segments(impl: Impl) -> None:
    data = os.urandom(3000)
    f = bytes(Ether(**MACS) / IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=9, dport=10) / data)
    code, segs = impl.gso.py_offload((1, VNET_GSO_UDP_L4, 62, 1000, 54, 6), f, MAX_INNER)
    assert code == 0 and len(segs) == 3
    for raw in segs:
        p = Ether(raw)
        ck = p[UDP].chksum
        del p[UDP].chksum
        assert Ether(bytes(p))[UDP].chksum == ck
        assert p[IPv6].plen == len(raw) - 54


def partial(pkt: bytes, l4: int, field: int, proto: int, v6: bool) -> bytes:
    """What the kernel hands over with NEEDS_CSUM: the field holds the folded pseudo sum."""
    from fastpath.csum_ref import py_csum_fold, py_pseudo4, py_pseudo6
    b = bytearray(pkt)
    n = len(b) - l4
    if v6:
        ps = py_pseudo6(bytes(b[22:38]), bytes(b[38:54]), proto, n)
    else:
        ps = py_pseudo4(int.from_bytes(b[26:30], "big"), int.from_bytes(b[30:34], "big"), proto, n)
    struct.pack_into("!H", b, l4 + field, py_csum_fold(ps))
    return bytes(b)


@pytest.mark.parametrize("kind", ["tcp4", "udp4", "tcp6", "udp6"])
def test_needs_csum_completion(impl: Impl, kind: str) -> None:
    v6 = kind.endswith("6")
    l3 = IPv6(src="fd00::1", dst="fd00::2") if v6 else IP(src="10.0.0.1", dst="10.0.0.2")
    l4p = TCP(sport=5, dport=6, flags="PA") if kind.startswith("tcp") else UDP(sport=5, dport=6)
    good = bytes(Ether(**MACS) / l3 / l4p / os.urandom(333))
    l4 = 54 if v6 else 34
    field = 16 if kind.startswith("tcp") else 6
    f = partial(good, l4, field, 6 if kind.startswith("tcp") else 17, v6)
    assert f != good
    code, (out,) = impl.gso.py_offload((VNET_F_NEEDS_CSUM, VNET_GSO_NONE, 0, 0, l4, field), f,
                                       MAX_INNER)
    assert code == 0 and out == good


def test_plain_frame_untouched(impl: Impl) -> None:
    f = bytes(Ether(**MACS) / IP() / UDP() / b"x")
    assert impl.gso.py_offload((0, 0, 0, 0, 0, 0), f, MAX_INNER) == (0, [f])


def _reason(impl: Impl, hdr: tuple, f: bytes, max_inner: int = MAX_INNER) -> str | None:
    code, segs = impl.gso.py_offload(hdr, f, max_inner)
    if code == 0:
        assert segs
        return None
    assert segs == []
    return gso_ref.REASONS[code]


def _with(hdr: tuple, **kw: int) -> tuple:
    names = ("flags", "gso_type", "hdr_len", "gso_size", "csum_start", "csum_offset")
    return tuple(kw.get(n, v) for n, v in zip(names, hdr))


def test_every_drop_reason(impl: Impl) -> None:
    hdr, f = tso4(os.urandom(5000))
    assert _reason(impl, hdr, f) is None
    cases = {
        "vnet_bad_flags": (_with(hdr, flags=0x11), f),
        "gso_ecn": (_with(hdr, gso_type=VNET_GSO_TCPV4 | 0x80), f),
        "gso_bad_type": (_with(hdr, gso_type=3), f),
        "gso_bad_size": (_with(hdr, gso_size=0), f),
        "vnet_bad_hdr_len": (_with(hdr, hdr_len=len(f) + 1), f),
        "vnet_bad_csum": (_with(hdr, csum_start=len(f) - 1), f),
        "gso_no_csum": (_with(hdr, flags=0), f),
    }
    for reason, (h, fr) in cases.items():
        assert _reason(impl, h, fr) == reason, reason
    assert _reason(impl, _with(hdr, gso_size=len(f)), f) == "gso_bad_size"
    # not TCP/UDP: ICMP claiming TSO
    icmp = bytearray(f)
    icmp[23] = 1
    assert _reason(impl, hdr, bytes(icmp)) == "gso_not_tcp_udp"
    # IPv4 options / IPv6 extension headers
    h2, f2 = tso4(os.urandom(5000), ipopts=b"\x01\x01\x01\x00")
    assert _reason(impl, h2, f2) == "gso_ip_options"
    f6 = bytes(Ether(**MACS) / IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrHopByHop() /
               TCP() / os.urandom(5000))
    assert _reason(impl, (1, VNET_GSO_TCPV6, 82, 1000, 62, 16), f6) == "gso_ip_options"
    # headers that disagree
    assert _reason(impl, _with(hdr, csum_start=38), f) == "gso_bad_headers"
    assert _reason(impl, _with(hdr, csum_offset=6), f) == "gso_bad_headers"
    assert _reason(impl, _with(hdr, gso_type=VNET_GSO_TCPV6), f) == "gso_bad_headers"
    assert _reason(impl, _with(hdr, gso_type=VNET_GSO_UDP_L4), f) == "gso_bad_headers"
    assert _reason(impl, hdr, f[:-1]) == "gso_bad_headers"             # IP length != frame
    frag = bytearray(f)
    frag[20] |= 0x20                                                   # MF
    assert _reason(impl, hdr, bytes(frag)) == "gso_bad_headers"
    arp = bytearray(f)
    arp[12:14] = b"\x08\x06"
    assert _reason(impl, hdr, bytes(arp)) == "gso_bad_headers"
    only_hdrs = f[:66]
    assert _reason(impl, _with(hdr, gso_size=10, hdr_len=54), only_hdrs[:54]) == "gso_bad_headers"
    # segments larger than the underlay allows; too many segments
    assert _reason(impl, hdr, f, max_inner=1398 + 53) == "gso_too_big"
    assert _reason(impl, hdr, f, max_inner=1398 + 54) is None
    h3, f3 = tso4(os.urandom(60000), mss=100)
    assert _reason(impl, h3, f3) == "gso_too_many_segs"


def test_constants_and_reasons_agree() -> None:
    for k, v in gso.C_CONSTANTS.items():
        assert getattr(gso_ref, k) == v
    for k, v in gso.C_REASONS.items():
        assert gso_ref.REASONS[k] == v


@settings(max_examples=examples(150), deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(size=st.integers(1, 9000), mss=st.integers(1, 2000), gso_type=st.sampled_from([1, 4, 5]),
       mut=st.lists(st.tuples(st.integers(0, 120), st.integers(0, 255)), max_size=3),
       hdr_mut=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 65535)), max_size=2),
       cut=st.integers(0, 40))
def test_differential_fuzz(size: int, mss: int, gso_type: int, mut: list, hdr_mut: list,
                           cut: int) -> None:
    """Random GSO frames with corrupted headers: both implementations agree byte for byte."""
    data = bytes(range(256)) * (size // 256 + 1)
    if gso_type == 1:
        hdr, f = tso4(data[:size], mss=mss)
    elif gso_type == 4:
        hdr, f = tso6(data[:size], mss=mss)
    else:
        hdr, f = uso4(data[:size], mss=mss)
    b = bytearray(f[:len(f) - cut] if cut < len(f) else f)
    for pos, val in mut:
        if pos < len(b):
            b[pos] = val
    h = list(hdr)
    for idx, val in hdr_mut:
        h[idx] = val & (0xFF if idx < 2 else 0xFFFF)
    a = gso_ref.py_offload(tuple(h), bytes(b), MAX_INNER)
    c = gso.py_offload(tuple(h), bytes(b), MAX_INNER)
    assert a == c
    if a[0] == 0:
        assert all(len(s) <= max(MAX_INNER, len(b)) for s in a[1])
