"""Pure-Python reference for gro.pyx: inbound TCP coalescing (GRO) and completion of partial
inner checksums. Same API, same decisions, same bytes; the tests run against both.

One receive batch (the validated inner Ethernet frames after VXLAN decap) goes through
`coalesce`:

  1. every frame is classified: a TCP data segment that may be coalesced (a *candidate*:
     rules below), another TCP frame of a known 5-tuple, an IP frame whose 5-tuple cannot be
     read (fragment, IPv6 extension header, truncated), or anything else;
  2. checksums (py_csum_rx_fix; C: csum_rx_fix): a candidate's TCP checksum is always
     verified (the coalesced frame goes to the kernel as NEEDS_CSUM, which it trusts, so a
     corrupt segment must not hide inside one); every other TCP/UDP frame is only compared
     with its pseudo-header sum and verified when equal. A partial checksum (the field holds
     the folded pseudo-header sum, what a kernel sender with TX checksum offload leaves) is
     completed in place; a corrupt one is left alone (the pod drops it, as it would from the
     kernel) and the frame goes out singly;
  3. a candidate joins the open run of its flow when it continues it (rules below), else it
     closes that run and opens a new one. A non-candidate TCP frame of the flow closes the
     flow's run; an IP frame without a readable 5-tuple closes every run between its two
     addresses; other frames do not touch runs. So every flow keeps its order: its runs and
     singles are disjoint, consecutive pieces of it;
  4. the runs are emitted in the order of their first segment. A run of two or more segments
     becomes one frame: the first segment's IP total length and header checksum (IPv6 payload
     length), PSH (from the last segment) and TCP checksum field (the pseudo-header sum over the
     coalesced length) are rewritten in place, and a virtio_net_hdr says GSO_TCPV4/TCPV6,
     gso_size = the first segment's payload (the MSS), NEEDS_CSUM at the TCP header. The
     payloads of the following segments are referenced, not copied: the frame on the TAP is
     first segment (headers + payload), then each following payload. A run of one is the frame
     as it is (after checksum completion) with an all-zero header (GSO_NONE).

Candidate (Linux tcp_gro_receive / inet_gro_receive / ipv6_gro_receive, written anew):
  Ethernet II IPv4 or IPv6 without VLAN tag; IPv4: version 4, IHL 5 (no options), header
  checksum valid, not a fragment (MF = 0, offset = 0), total length within the frame; IPv6:
  next header TCP (no extension headers), payload length within the frame; TCP: data offset
  5..15 within the IP payload, reserved bits zero, flags exactly ACK or ACK|PSH, payload of at
  least one byte, checksum valid or partial.
Continues the open run R of the same flow (Ethernet header, addresses, ports all equal) when:
  IPv4: same TOS, TTL and DF; IP ID = first ID + k for the k-th segment, or (DF set) equal to
  the first ID for every segment; IPv6: same first word (version, traffic class, flow label)
  and hop limit; TCP: same data offset and byte-identical options (timestamps included, as the
  kernel requires), same ACK number, sequence = the previous segment's sequence + its payload;
  payload <= the MSS; the coalesced frame stays within max_frame bytes and within the IP length
  field (65535). R is closed after a segment with PSH or a payload shorter than the MSS.
"""
from __future__ import annotations

from dataclasses import dataclass

from fastpath import spec, vnet_ref
from fastpath.csum_ref import py_csum_add as csum_add
from fastpath.csum_ref import py_csum_fold as csum_fold
from fastpath.csum_ref import py_pseudo4 as pseudo4
from fastpath.csum_ref import py_pseudo6 as pseudo6
from fastpath.vnet_ref import VNET_F_NEEDS_CSUM, VNET_GSO_TCPV4, VNET_GSO_TCPV6, VNET_HLEN

# ---- wire constants (RFC 793/8200) -----------------------------------------------------------
ETH_P_IPV6 = spec.ETH_P_IPV6
IPV6_HLEN = 40
TCP_HLEN = 20
TCP_CSUM_OFF = 16
UDP_CSUM_OFF = 6
TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x04, 0x08, 0x10
IP_MF = 0x2000
IP_OFFMASK = 0x1FFF
IP_MAXPACKET = 65535

# ---- implementation constants ----------------------------------------------------------------
GRO_MAX_FRAME = 65535             # default cap on a coalesced Ethernet frame (bytes)
GRO_MAX_OPEN = 32                 # open runs tracked per batch; the oldest is closed beyond

# csum_rx_fix results
CSUM_NONE = 0          # not a TCP/UDP checksum we look at (not IP, fragment, IPv6 extension
                       # header, truncated, UDP checksum 0)
CSUM_UNCHECKED = 1     # field differs from the pseudo-header sum: left to the receiver
CSUM_VALID = 2         # verified correct (left untouched)
CSUM_COMPLETED = 3     # was partial (field = pseudo-header sum): completed in place
CSUM_BAD = 4           # verified wrong and not partial: left as it is
CSUM_NAMES = {CSUM_NONE: "none", CSUM_UNCHECKED: "unchecked", CSUM_VALID: "valid",
              CSUM_COMPLETED: "completed", CSUM_BAD: "bad"}

STAT_NAMES = ("gro_frames", "gro_segs", "csum_completed", "csum_bad")


# ---- frame parsing ---------------------------------------------------------------------------

@dataclass
class _L4:
    """Where a frame's TCP/UDP header is, as csum_rx_fix and the classifier see it."""
    v6: bool
    l3: int           # offset of the IP header (14)
    l4: int           # offset of the TCP/UDP header
    l4len: int        # bytes of L4 header + payload (from the IP length field)
    proto: int

    def pseudo(self, f: bytearray, length: int) -> int:
        """The pseudo-header sum for an L4 length of `length`."""
        if self.v6:
            return pseudo6(bytes(f[22:38]), bytes(f[38:54]), self.proto, length)
        return pseudo4(int.from_bytes(f[26:30], "big"), int.from_bytes(f[30:34], "big"),
                       self.proto, length)


def _ip_l4(f: bytearray, n: int) -> tuple[int, _L4 | None]:
    """Parse Ethernet + IP. Returns (kind, l4):

    kind 0: not IPv4/IPv6 (or too short to say); 1: IP without a readable TCP/UDP header
    (fragment, extension header, truncated, bad lengths) — l4 None; 2: IP with TCP or UDP and
    consistent lengths — l4 set; 3: IP, another protocol.
    """
    if n < spec.ETH_HLEN + 20:
        return 0, None
    et = (f[12] << 8) | f[13]
    if et == spec.ETH_P_IP:
        if f[14] >> 4 != 4:
            return 0, None
        ihl = (f[14] & 0x0F) * 4
        total = (f[16] << 8) | f[17]
        if ihl < 20 or total < ihl or spec.ETH_HLEN + total > n:
            return 1, None
        frag = (f[20] << 8) | f[21]
        if frag & (IP_MF | IP_OFFMASK):
            return 1, None
        proto = f[23]
        if proto not in (spec.IPPROTO_TCP, spec.IPPROTO_UDP):
            return 3, None
        return 2, _L4(False, 14, 14 + ihl, total - ihl, proto)
    if et == ETH_P_IPV6:
        if n < spec.ETH_HLEN + IPV6_HLEN or f[14] >> 4 != 6:
            return 0, None
        plen = (f[18] << 8) | f[19]
        nh = f[20]
        if nh == 58 or nh == 59:             # ICMPv6, no next header
            return 3, None
        if nh not in (spec.IPPROTO_TCP, spec.IPPROTO_UDP) or plen == 0 \
                or spec.ETH_HLEN + IPV6_HLEN + plen > n:
            return 1, None
        return 2, _L4(True, 14, 54, plen, nh)
    return 0, None


def _csum_fix(f: bytearray, n: int, l4: _L4, verify: bool) -> int:
    if l4.proto == spec.IPPROTO_TCP:
        if l4.l4len < TCP_HLEN:
            return CSUM_NONE
        off = l4.l4 + TCP_CSUM_OFF
        clen = l4.l4len
    else:
        if l4.l4len < spec.UDP_HLEN:
            return CSUM_NONE
        ulen = (f[l4.l4 + 4] << 8) | f[l4.l4 + 5]
        if ulen < spec.UDP_HLEN or ulen > l4.l4len:
            return CSUM_NONE
        off = l4.l4 + UDP_CSUM_OFF
        clen = ulen                   # the checksum covers (and the pseudo-header carries)
                                      # the UDP length; bytes beyond it are padding
    fieldv = (f[off] << 8) | f[off + 1]
    if l4.proto == spec.IPPROTO_UDP and fieldv == 0:
        return CSUM_NONE              # IPv4: no checksum; IPv6: invalid, the receiver decides
    pseudo = l4.pseudo(f, clen)
    ps = csum_fold(pseudo)
    if not verify and fieldv != ps:
        return CSUM_UNCHECKED
    s = csum_add(bytes(f[l4.l4:l4.l4 + clen]), pseudo)
    if csum_fold(s) == 0xFFFF:
        return CSUM_VALID
    if fieldv != ps:
        return CSUM_BAD
    d = s + (~fieldv & 0xFFFF)        # the sum without the field: s - field
    c = ~csum_fold((d & 0xFFFFFFFF) + (d >> 32)) & 0xFFFF
    if c == 0 and l4.proto == spec.IPPROTO_UDP:
        c = 0xFFFF
    f[off] = c >> 8
    f[off + 1] = c & 0xFF
    return CSUM_COMPLETED


def py_csum_rx_fix(frame: bytes | bytearray, verify: bool = False) -> tuple[int, bytes]:
    """Classify an inner frame's TCP/UDP checksum and complete a partial one.

    verify False: the field is first compared with the folded pseudo-header sum; only when
    equal is the checksum computed (a complete checksum that happens to equal it is VALID and
    untouched; otherwise the checksum was partial and is COMPLETED). verify True: always
    computed (VALID, COMPLETED or BAD). Returns (status, frame after the fix).
    """
    f = bytearray(frame)
    kind, l4 = _ip_l4(f, len(f))
    if kind != 2 or l4 is None:
        return CSUM_NONE, bytes(f)
    return _csum_fix(f, len(f), l4, verify), bytes(f)


# ---- coalescing ------------------------------------------------------------------------------

@dataclass
class _Seg:
    kind: int                  # 0 other, 1 IP without 5-tuple, 2 TCP with 5-tuple, 3 candidate
    akey: bytes = b""          # IP version + addresses
    key: bytes = b""           # Ethernet header + addresses + ports
    v6: bool = False
    l4: int = 0                # TCP header offset
    thl: int = 0               # TCP header length
    hlen: int = 0              # Ethernet + IP + TCP header bytes
    pay: int = 0               # payload bytes
    seq: int = 0
    ack: int = 0
    flags: int = 0


@dataclass
class _Run:
    segs: list[int]
    first: int
    mss: int = 0
    paysum: int = 0
    next_seq: int = 0
    id_mode: int = 0           # 0 undecided (one segment), 1 incrementing, 2 fixed (DF)
    open: bool = True


@dataclass
class Stats:
    gro_frames: int = 0        # coalesced frames built (runs of >= 2 segments)
    gro_segs: int = 0          # segments that went into them
    csum_completed: int = 0    # partial inner checksums completed (or handed on as NEEDS_CSUM)
    csum_bad: int = 0          # verified wrong (not partial); the frame went out singly

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in STAT_NAMES}


def _classify(f: bytearray, n: int, st: Stats) -> _Seg:
    kind, l4 = _ip_l4(f, n)
    if kind == 0 or kind == 3:
        return _Seg(0)
    v6 = f[12] == 0x86
    akey = bytes(f[12:14]) + (bytes(f[22:54]) if v6 else bytes(f[26:34]))
    if kind == 1 or l4 is None:
        return _Seg(1, akey)
    if l4.proto != spec.IPPROTO_TCP:
        st_ = _csum_fix(f, n, l4, False)
        if st_ == CSUM_COMPLETED:
            st.csum_completed += 1
        return _Seg(0)
    if l4.l4len < TCP_HLEN:
        return _Seg(1, akey)
    t = l4.l4
    key = bytes(f[0:14]) + akey[2:] + bytes(f[t:t + 4])
    thl = (f[t + 12] >> 4) * 4
    flags = f[t + 13]
    cand = (thl >= TCP_HLEN and thl < l4.l4len and (f[t + 12] & 0x0F) == 0
            and flags in (TCP_ACK, TCP_ACK | TCP_PSH))
    if not v6:
        cand = cand and (f[14] & 0x0F) == 5 and csum_fold(csum_add(bytes(f[14:34]))) == 0xFFFF
    cst = _csum_fix(f, n, l4, cand)
    if cst == CSUM_COMPLETED:
        st.csum_completed += 1
    elif cst == CSUM_BAD:
        st.csum_bad += 1
        cand = False
    seg = _Seg(3 if cand else 2, akey, key, v6)
    if cand:
        seg.l4, seg.thl = t, thl
        seg.hlen = t + thl
        seg.pay = l4.l4len - thl
        seg.seq = int.from_bytes(f[t + 4:t + 8], "big")
        seg.ack = int.from_bytes(f[t + 8:t + 12], "big")
        seg.flags = flags
    return seg


def _continues(fs: list[bytearray], segs: list[_Seg], r: _Run, i: int, max_frame: int) -> int:
    """0: segment i does not continue run r; 1: it does; the id mode it implies in 1..2 is
    returned as 10 + mode when the run has one segment so far."""
    a, b = fs[r.first], fs[i]
    sa, sb = segs[r.first], segs[i]
    mode = r.id_mode
    if sb.v6:
        if a[14:18] != b[14:18] or a[21] != b[21]:
            return 0
    else:
        if a[15] != b[15] or a[22] != b[22] or (a[20] & 0x40) != (b[20] & 0x40):
            return 0
        id0 = (a[18] << 8) | a[19]
        idb = (b[18] << 8) | b[19]
        k = len(r.segs)
        if mode == 0:
            if idb == (id0 + 1) & 0xFFFF:
                mode = 1
            elif idb == id0 and a[20] & 0x40:
                mode = 2
            else:
                return 0
        elif mode == 1:
            if idb != (id0 + k) & 0xFFFF:
                return 0
        elif idb != id0:
            return 0
    if sb.thl != sa.thl or a[sa.l4 + 20:sa.hlen] != b[sb.l4 + 20:sb.hlen]:
        return 0
    if sb.ack != sa.ack or sb.seq != r.next_seq or sb.pay > r.mss:
        return 0
    total = sa.hlen + r.paysum + sb.pay
    if total > max_frame or total - spec.ETH_HLEN - (IPV6_HLEN if sb.v6 else 0) > IP_MAXPACKET:
        return 0
    return 10 + mode if r.id_mode == 0 else 1


def _finish(f: bytearray, s: _Seg, r: _Run, last_flags: int) -> bytes:
    """Rewrite the first segment's headers for the coalesced length; return the vnet header."""
    l4len = s.thl + r.paysum
    t = s.l4
    if s.v6:
        f[18:20] = l4len.to_bytes(2, "big")
        ps = pseudo6(bytes(f[22:38]), bytes(f[38:54]), spec.IPPROTO_TCP, l4len)
        gso = VNET_GSO_TCPV6
    else:
        f[16:18] = (20 + l4len).to_bytes(2, "big")
        f[24:26] = b"\0\0"
        f[24:26] = (~csum_fold(csum_add(bytes(f[14:34]))) & 0xFFFF).to_bytes(2, "big")
        ps = pseudo4(int.from_bytes(f[26:30], "big"), int.from_bytes(f[30:34], "big"),
                     spec.IPPROTO_TCP, l4len)
        gso = VNET_GSO_TCPV4
    f[t + 13] |= last_flags & TCP_PSH
    f[t + 16:t + 18] = csum_fold(ps).to_bytes(2, "big")
    return vnet_ref.py_build((VNET_F_NEEDS_CSUM, gso, s.hlen, r.mss, t, TCP_CSUM_OFF))


def check_max_frame(max_frame: int) -> None:
    """Argument check shared by this reference and the Cython wrapper."""
    if not 0 < max_frame <= 0xFFFFFFFF:
        raise ValueError(f"max_frame must be in 1..4294967295, got {max_frame}")


def coalesce_stats(frames: list[bytes], max_frame: int = GRO_MAX_FRAME
                   ) -> tuple[list[tuple[bytes, bytes]], dict[str, int]]:
    """coalesce() and the counters of this batch."""
    check_max_frame(max_frame)
    st = Stats()
    fs = [bytearray(x) for x in frames]
    segs = [_classify(f, len(f), st) for f in fs]
    runs: list[_Run] = []
    open_: list[_Run] = []          # open runs, oldest first

    def close(r: _Run) -> None:
        r.open = False
        open_.remove(r)

    for i, s in enumerate(segs):
        if s.kind == 1:
            for r in [r for r in open_ if segs[r.first].akey == s.akey]:
                close(r)
            runs.append(_Run([i], i))
            continue
        if s.kind == 0:
            runs.append(_Run([i], i))
            continue
        r = next((r for r in open_ if segs[r.first].key == s.key), None)
        if s.kind == 2:
            if r is not None:
                close(r)
            runs.append(_Run([i], i))
            continue
        if r is not None:
            c = _continues(fs, segs, r, i, max_frame)
            if c:
                if c >= 10:
                    r.id_mode = c - 10
                r.segs.append(i)
                r.paysum += s.pay
                r.next_seq = (s.seq + s.pay) & 0xFFFFFFFF
                if s.pay < r.mss or s.flags & TCP_PSH:
                    close(r)
                continue
            close(r)
        nr = _Run([i], i, mss=s.pay, paysum=s.pay, next_seq=(s.seq + s.pay) & 0xFFFFFFFF)
        runs.append(nr)
        if s.flags & TCP_PSH:
            nr.open = False
            continue
        if len(open_) == GRO_MAX_OPEN:
            close(open_[0])
        open_.append(nr)

    out: list[tuple[bytes, bytes]] = []
    for r in runs:
        if len(r.segs) == 1:
            out.append((bytes(VNET_HLEN), bytes(fs[r.first])))
            continue
        s0 = segs[r.first]
        hdr = _finish(fs[r.first], s0, r, segs[r.segs[-1]].flags)
        body = bytearray(fs[r.first][:s0.hlen + s0.pay])
        for j in r.segs[1:]:
            body += fs[j][segs[j].hlen:segs[j].hlen + segs[j].pay]
        out.append((hdr, bytes(body)))
        st.gro_frames += 1
        st.gro_segs += len(r.segs)
    return out, st.as_dict()


def coalesce(frames: list[bytes], max_frame: int = GRO_MAX_FRAME) -> list[tuple[bytes, bytes]]:
    """Coalesce one batch of inner frames: [(virtio_net_hdr, frame to write to the TAP)]."""
    return coalesce_stats(frames, max_frame)[0]


