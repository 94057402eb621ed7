"""Differential fuzz of both offload directions: Cython against the reference, plus invariants.

Inbound: hypothesis writes a receive batch of interleaved TCP flows (segments of MSS or other
sizes, random flags, IP ID / TTL / TOS / option / ACK / sequence changes, partial and corrupt
checksums, IP options, fragments), UDP datagrams, truncated copies and garbage. Both GRO
implementations must give the same frames, headers and counters; every flow's byte stream
reaches the TAP complete and in order; every coalesced frame passes the virtio-header check
and, segmented again by gso, gives valid segments carrying the same bytes.
Checksum completion: random frames and checksum states; both agree, only a partial checksum is
ever changed, and a completed one is valid.
Outbound: random and lying virtio headers in front of TCP/UDP frames: gso never raises, both
agree, and accepted segments are well-formed (lengths, IPv4 header checksum, valid L4
checksum, within max_inner).
"""
from __future__ import annotations

import struct
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fastpath import csum_ref, gro, gro_ref, gso, gso_ref, vnet, vnet_ref
from tests.fastpath_impls import examples

FUZZ = settings(max_examples=examples(150), deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

MACS = [bytes.fromhex("02000000000a"), bytes.fromhex("02000000000b")]
V4 = [bytes([10, 244, 1, 2]), bytes([10, 244, 2, 2])]
V6 = [bytes.fromhex("fd000001" + "00" * 11 + "02"), bytes.fromhex("fd000002" + "00" * 11 + "02")]
TS = b"\x01\x01\x08\x0a" + struct.pack("!II", 1000, 2000)
MAX_INNER = 9000


# ---- a struct-only frame builder (cheap enough for hypothesis) ------------------------------------

def _l4_csum(l4: bytes, ps: int) -> int:
    return csum_ref.py_csum_finish(csum_ref.py_csum_add(l4, ps))


def tcp_frame(*, v6: bool, sport: int, seq: int, ack: int = 77, flags: int = 0x10,
              opts: bytes = TS, pay: bytes = b"", ttl: int = 64, tos: int = 0, ident: int = 0,
              df: bool = True, ipopts: bytes = b"", frag: int = 0, fl: int = 0,
              csum: str = "good") -> bytes:
    thl = 20 + len(opts)
    tcp = bytearray(struct.pack("!HHIIBBHHH", sport, 5201, seq & 0xFFFFFFFF, ack,
                                (thl // 4) << 4, flags, 500, 0, 0) + opts + pay)
    l4len = len(tcp)
    if v6:
        ps = csum_ref.py_pseudo6(V6[0], V6[1], 6, l4len)
        ip = struct.pack("!IHBB", (6 << 28) | (tos << 20) | fl, l4len, 6, ttl) + V6[0] + V6[1]
        et = 0x86DD
    else:
        ps = csum_ref.py_pseudo4(int.from_bytes(V4[0], "big"), int.from_bytes(V4[1], "big"), 6,
                                 l4len)
        ihl = 5 + len(ipopts) // 4
        h = bytearray(struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, tos, ihl * 4 + l4len, ident,
                                  (0x4000 if df else 0) | frag, ttl, 6, 0, V4[0], V4[1])
                      + ipopts)
        h[10:12] = csum_ref.py_csum_finish(csum_ref.py_csum_add(bytes(h))).to_bytes(2, "big")
        ip = bytes(h)
        et = 0x0800
    if csum == "partial":
        c = csum_ref.py_csum_fold(ps)
    else:
        c = _l4_csum(bytes(tcp), ps) ^ (0x1234 if csum == "corrupt" else 0)
    tcp[16:18] = c.to_bytes(2, "big")
    return MACS[1] + MACS[0] + struct.pack("!H", et) + ip + bytes(tcp)


def udp_frame(*, v6: bool, pay: bytes, csum: str = "good") -> bytes:
    n = 8 + len(pay)
    udp = bytearray(struct.pack("!HHHH", 53, 4000, n, 0) + pay)
    if v6:
        ps = csum_ref.py_pseudo6(V6[0], V6[1], 17, n)
        ip = struct.pack("!IHBB", 6 << 28, n, 17, 64) + V6[0] + V6[1]
        et = 0x86DD
    else:
        ps = csum_ref.py_pseudo4(int.from_bytes(V4[0], "big"), int.from_bytes(V4[1], "big"), 17,
                                 n)
        h = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + n, 1, 0x4000, 64, 17, 0, V4[0],
                                  V4[1]))
        h[10:12] = csum_ref.py_csum_finish(csum_ref.py_csum_add(bytes(h))).to_bytes(2, "big")
        ip = bytes(h)
        et = 0x0800
    if csum == "partial":
        c = csum_ref.py_csum_fold(ps)
    elif csum == "zero":
        c = 0
    else:
        c = (_l4_csum(bytes(udp), ps) or 0xFFFF) ^ (0x0F0F if csum == "corrupt" else 0)
    udp[6:8] = c.to_bytes(2, "big")
    return MACS[1] + MACS[0] + struct.pack("!H", et) + ip + bytes(udp)


# ---- a small independent parser for the invariants ------------------------------------------------

def tcp_view(f: bytes) -> tuple[Any, bytes] | None:
    """(flow key, TCP payload) of a well-formed unfragmented TCP frame, else None."""
    if len(f) < 34:
        return None
    et = f[12:14]
    if et == b"\x08\x00" and f[14] >> 4 == 4:
        ihl = (f[14] & 15) * 4
        tot = int.from_bytes(f[16:18], "big")
        if f[23] != 6 or ihl < 20 or tot < ihl + 20 or 14 + tot > len(f) or \
                int.from_bytes(f[20:22], "big") & 0x3FFF:
            return None
        t, end, addrs = 14 + ihl, 14 + tot, f[26:34]
    elif et == b"\x86\xdd" and len(f) >= 74 and f[14] >> 4 == 6 and f[20] == 6:
        plen = int.from_bytes(f[18:20], "big")
        if plen < 20 or 54 + plen > len(f):
            return None
        t, end, addrs = 54, 54 + plen, f[22:54]
    else:
        return None
    thl = (f[t + 12] >> 4) * 4
    if thl < 20 or t + thl > end:
        return None
    return (et, addrs, f[t:t + 4]), f[t + thl:end]


def damage(f: bytearray, cut: int, flips: list[tuple[int, int]]) -> bytes:
    """f without its last `cut` bytes (if it is longer), with bytes[pos] = val for each flip."""
    if cut and cut < len(f):
        f = f[:-cut]
    for pos, val in flips:
        if pos < len(f):
            f[pos] = val
    return bytes(f)


def l4_valid(f: bytes) -> bool:
    st, _ = gro_ref.py_csum_rx_fix(f, True)
    return st == gro_ref.CSUM_VALID


# ---- inbound: GRO ------------------------------------------------------------------------------

MUTATIONS = ["none"] * 40 + ["ttl", "tos", "id", "ts", "noopts", "ack", "gap", "partial",
                             "partial", "corrupt", "ipopts", "frag", "fl", "nodf"]
step = st.tuples(
    st.integers(0, 3),                                           # flow
    st.sampled_from(["mss"] * 16 + ["short", "long", "zero", "one"]),
    st.sampled_from([0x10] * 30 + [0x18, 0x18, 0x11, 0x12, 0x14, 0x50, 0x90, 0x00, 0x30]),
    st.sampled_from(MUTATIONS),
)
extra = st.one_of(
    st.binary(max_size=80),
    st.tuples(st.booleans(), st.integers(0, 300), st.sampled_from(["good", "partial",
                                                                     "corrupt", "zero"])),
    st.tuples(st.integers(0, 1000), st.integers(0, 100)),        # truncate an earlier frame
)


def build_batch(steps: list[Any], extras: list[tuple[int, Any]], mss: int,
                v6s: list[bool], fixed_id: bool) -> list[bytes]:
    seqs = [1000 * (k + 1) for k in range(4)]
    ids = [100 * k for k in range(4)]
    frames: list[bytes] = []
    for fl, size, flags, mut in steps:
        n = {"mss": mss, "short": mss // 2, "long": mss + 1, "zero": 0, "one": 1}[size]
        pay = bytes((seqs[fl] + j) & 0xFF for j in range(n))
        kw: dict[str, Any] = {"v6": v6s[fl], "sport": 40000 + fl, "seq": seqs[fl],
                              "flags": flags, "pay": pay,
                              "ident": ids[fl] if not fixed_id else 7}
        if mut == "ttl":
            kw["ttl"] = 63
        elif mut == "tos":
            kw["tos"] = 4
        elif mut == "id":
            kw["ident"] = ids[fl] + 50
        elif mut == "ts":
            kw["opts"] = b"\x01\x01\x08\x0a" + struct.pack("!II", 1001, 2000)
        elif mut == "noopts":
            kw["opts"] = b""
        elif mut == "ack":
            kw["ack"] = 78
        elif mut == "gap":
            kw["seq"] = seqs[fl] + 1
        elif mut in ("partial", "corrupt"):
            kw["csum"] = mut
        elif mut == "ipopts":
            kw["ipopts"] = b"\x01\x01\x01\x00"
        elif mut == "frag":
            kw["frag"] = 0x2000
        elif mut == "fl":
            kw["fl"] = 9
        elif mut == "nodf":
            kw["df"] = False
        frames.append(tcp_frame(**kw))
        seqs[fl] += n
        ids[fl] = (ids[fl] + 1) & 0xFFFF
    for pos, e in extras:
        if isinstance(e, bytes):
            x = e
        elif len(e) == 3:
            x = udp_frame(v6=e[0], pay=bytes(e[1]), csum=e[2])
        else:
            if not frames:
                continue
            src = frames[e[0] % len(frames)]
            x = src[:max(0, len(src) - 1 - e[1])]
        frames.insert(pos % (len(frames) + 1), x)
    return frames


@FUZZ
@given(steps=st.lists(step, min_size=4, max_size=48),
       extras=st.lists(st.tuples(st.integers(0, 100), extra), max_size=4),
       mss=st.sampled_from([1, 7, 500, 1448, 1448, 1448, 8948]),
       v6s=st.lists(st.booleans(), min_size=4, max_size=4),
       fixed_id=st.booleans(),
       max_frame=st.sampled_from([65535] * 4 + [20000, 3000, 100]))
def test_gro_differential(steps: list[Any], extras: list[Any], mss: int, v6s: list[bool],
                          fixed_id: bool, max_frame: int) -> None:
    batch = build_batch(steps, extras, mss, v6s, fixed_id)
    ref_out, ref_st = gro_ref.coalesce_stats(batch, max_frame)
    c_out, c_st = gro.coalesce_stats(batch, max_frame)
    assert c_out == ref_out
    assert c_st == ref_st

    # every flow's bytes arrive complete and in order; other frames as they were (checksum
    # completed where it was partial), in order
    def streams(frames: list[bytes]) -> dict[Any, list[bytes]]:
        out: dict[Any, list[bytes]] = {}
        for f in frames:
            v = tcp_view(f)
            key, content = v if v is not None else ("other", f)
            out.setdefault(key, []).append(content)
        return {k: ([b"".join(v)] if k != "other" else v) for k, v in out.items()}

    fixed_inputs = [gro_ref.py_csum_rx_fix(f)[1] for f in batch]
    assert streams([f for _, f in ref_out]) == streams(fixed_inputs)

    nseg = 0
    for hdr, frame in ref_out:
        h = vnet_ref.py_parse(hdr)
        if h.gso_type == vnet_ref.VNET_GSO_NONE:
            assert hdr == bytes(vnet_ref.VNET_HLEN)
            continue
        assert vnet_ref.py_check(h, len(frame)) == 0 and vnet.py_check(h, len(frame)) == 0
        assert len(frame) <= max_frame and len(frame) - 14 <= 65535 + (40 if h.gso_type == 4
                                                                        else 0)
        # the kernel segments it again (TSO on a forwarding pod): valid segments, same bytes
        r, segs = gso.py_offload(h, frame, 65600)
        assert (r, segs) == gso_ref.py_offload(h, frame, 65600)
        assert r == 0 and len(segs) >= 2
        assert all(l4_valid(s) for s in segs)
        assert b"".join(tcp_view(s)[1] for s in segs) == tcp_view(frame)[1]  # type: ignore[index]
        nseg += len(segs)
    assert ref_st["gro_segs"] == nseg
    event(f"gro frames: {min(ref_st['gro_frames'], 3)}")
    event(f"partial completed: {min(ref_st['csum_completed'], 1)}")


# ---- checksum completion -----------------------------------------------------------------------

@FUZZ
@given(kind=st.sampled_from(["tcp4", "tcp6", "udp4", "udp6", "garbage"]),
       n=st.integers(0, 2000), state=st.sampled_from(["good", "partial", "corrupt", "zero"]),
       cut=st.sampled_from([0] * 6 + [1, 2, 10, 40, 60]),
       flips=st.one_of(st.just([]), st.just([]),
                       st.lists(st.tuples(st.integers(0, 120), st.integers(0, 255)), max_size=2)),
       verify=st.booleans(), junk=st.binary(max_size=100))
def test_csum_rx_fix_differential(kind: str, n: int, state: str, cut: int,
                                  flips: list[tuple[int, int]], verify: bool,
                                  junk: bytes) -> None:
    pay = bytes((j * 31) & 0xFF for j in range(n))
    if kind == "garbage":
        f = bytearray(junk)
    elif kind.startswith("tcp"):
        f = bytearray(tcp_frame(v6=kind == "tcp6", sport=1, seq=5, pay=pay,
                                csum="good" if state == "zero" else state))
    else:
        f = bytearray(udp_frame(v6=kind == "udp6", pay=pay, csum=state))
    frame = damage(f, cut, flips)
    a = gro_ref.py_csum_rx_fix(frame, verify)
    assert gro.py_csum_rx_fix(frame, verify) == a
    status, out = a
    event(f"csum {gro_ref.CSUM_NAMES[status]}")
    if status == gro_ref.CSUM_COMPLETED:
        diff = [i for i in range(len(frame)) if frame[i] != out[i]]
        assert len(diff) <= 2 and l4_valid(out)
    else:
        assert out == frame, "only a partial checksum may be changed"
    if kind != "garbage" and not cut and not flips:
        want = {"good": gro_ref.CSUM_VALID if verify else gro_ref.CSUM_UNCHECKED,
                "partial": gro_ref.CSUM_COMPLETED,
                "corrupt": gro_ref.CSUM_BAD if verify else gro_ref.CSUM_UNCHECKED,
                "zero": gro_ref.CSUM_NONE if kind.startswith("udp") else
                (gro_ref.CSUM_VALID if verify else gro_ref.CSUM_UNCHECKED)}[state]
        assert status == want


# ---- outbound: GSO with random and lying virtio headers ------------------------------------------

@FUZZ
@given(kind=st.sampled_from(["tcp4", "tcp6", "udp4", "udp6", "garbage"]),
       n=st.integers(0, 20000), junk=st.binary(max_size=200),
       hdr=st.tuples(st.sampled_from([0, 1, 2, 3, 0x81]), st.sampled_from([0, 1, 3, 4, 5, 0x81, 9]),
                     st.integers(0, 65535), st.integers(0, 65535), st.integers(0, 65535),
                     st.integers(0, 65535)),
       honest=st.booleans(), mss=st.integers(1, 9000),
       flips=st.one_of(st.just([]), st.just([]),
                       st.lists(st.tuples(st.integers(0, 80), st.integers(0, 255)), max_size=2)),
       cut=st.sampled_from([0] * 4 + [1, 20]))
def test_gso_lying_headers(kind: str, n: int, junk: bytes, hdr: tuple[int, ...], honest: bool,
                           mss: int, flips: list[tuple[int, int]], cut: int) -> None:
    pay = bytes((j * 13) & 0xFF for j in range(n))
    if kind == "garbage":
        f = bytearray(junk)
        l4 = 34
    elif kind.startswith("tcp"):
        f = bytearray(tcp_frame(v6=kind == "tcp6", sport=1, seq=5, pay=pay[:65000 - 100],
                                csum="partial", flags=0x18))
        l4 = 54 if kind == "tcp6" else 34
    else:
        f = bytearray(udp_frame(v6=kind == "udp6", pay=pay[:65000 - 100], csum="partial"))
        l4 = 54 if kind == "udp6" else 34
    if honest:   # what a kernel would write; the frame may still be cut or flipped below
        gt = {"tcp4": 1, "tcp6": 4, "udp4": 5, "udp6": 5}.get(kind, 1)
        co = 6 if kind.startswith("udp") else 16
        hl = l4 + (8 if co == 6 else 32)
        hdr = (1, gt if len(f) - hl > mss else 0, hl, mss if len(f) - hl > mss else 0, l4, co)
    frame = damage(f, cut, flips)
    a = gso_ref.py_offload(hdr, frame, MAX_INNER)
    assert gso.py_offload(hdr, frame, MAX_INNER) == a
    r, segs = a
    event(f"gso result {gso_ref.REASONS.get(r, r)}")
    if r < 0:
        assert segs == []
        assert r in gso_ref.REASONS
        return
    h = vnet_ref.VnetHdr(*hdr)
    if h.gso_type == vnet_ref.VNET_GSO_NONE:
        assert len(segs) == 1
        return
    for s in segs:
        assert len(s) <= MAX_INNER
        assert len(s) >= 34
        if s[12:14] == b"\x08\x00":
            assert int.from_bytes(s[16:18], "big") == len(s) - 14
            assert csum_ref.py_csum_fold(csum_ref.py_csum_add(s[14:34])) == 0xFFFF
        else:
            assert int.from_bytes(s[18:20], "big") == len(s) - 54
        assert l4_valid(s), "a segment on the wire with a wrong L4 checksum"
