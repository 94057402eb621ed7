# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Inbound TCP coalescing (GRO) and completion of partial inner checksums, in C.

The rules, the flow of a batch and the byte layout are documented in gro_ref.py (the
reference, same decisions and bytes); the C API in gro.pxd. At the end: Python wrappers with
the reference's API, for tests and benchmarks.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcmp, memcpy, memset
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING

from fastpath.includes.sys cimport iovec
from fastpath.headers cimport (
    ETH_HLEN, ETH_P_IP, IPV4_HLEN, UDP_HLEN, IPPROTO_TCP, IPPROTO_UDP, ld16, ld32, st16,
    ipv4_checksum,
)
from fastpath.csum cimport csum_add, csum_fold, pseudo4, pseudo6
from fastpath.vnet cimport (
    vnet_hdr, vnet_build, VNET_HLEN, VNET_F_NEEDS_CSUM, VNET_GSO_TCPV4, VNET_GSO_TCPV6,
)

from fastpath import gro_ref as _ref

# ---- wire constants (RFC 793, RFC 8200) ------------------------------------------------------
cdef enum:
    ETH_P_IPV6 = 0x86DD
    IPV6_HLEN = 40
    TCP_HLEN = 20
    TCP_CSUM_OFF = 16
    UDP_CSUM_OFF = 6
    TCP_PSH = 0x08
    TCP_ACK = 0x10
    IP_DF_HI = 0x40          # DF in the high byte of the fragment word
    IP_MF_OFFMASK = 0x3fff
    IP_MAXPACKET = 65535
    NH_ICMPV6 = 58
    NH_NONE = 59

# kinds of _ip_l4()
cdef enum:
    K_OTHER = 0              # not IPv4/IPv6
    K_IP_OPAQUE = 1          # IP without a readable TCP/UDP header
    K_L4 = 2                 # IP with TCP or UDP, lengths consistent
    K_IP_OTHER = 3           # IP, another protocol

# segment kinds (gro_seg.kind)
cdef enum:
    S_OTHER = 0
    S_OPAQUE = 1
    S_TCP = 2
    S_CAND = 3

C_CONSTANTS = {
    "GRO_MAX_FRAME": GRO_MAX_FRAME, "GRO_MAX_OPEN": GRO_MAX_OPEN, "CSUM_NONE": CSUM_NONE,
    "CSUM_UNCHECKED": CSUM_UNCHECKED, "CSUM_VALID": CSUM_VALID,
    "CSUM_COMPLETED": CSUM_COMPLETED, "CSUM_BAD": CSUM_BAD,
}
for _k, _v in C_CONSTANTS.items():
    assert getattr(_ref, _k) == _v, f"gro.pxd and gro_ref.py disagree on {_k}"
CSUM_NAMES = _ref.CSUM_NAMES
STAT_NAMES = _ref.STAT_NAMES


cdef struct l4info:
    uint32_t l4len           # L4 header + payload bytes (from the IP length field)
    uint16_t l4              # offset of the L4 header
    uint8_t proto
    uint8_t v6


cdef inline int _ip_l4(const uint8_t *f, uint32_t n, l4info *o) noexcept nogil:
    cdef uint32_t ihl, total, plen
    cdef uint16_t et
    cdef uint8_t proto
    if n < ETH_HLEN + IPV4_HLEN:
        return K_OTHER
    et = ld16(f + 12)
    if et == ETH_P_IP:
        if (f[14] >> 4) != 4:
            return K_OTHER
        ihl = (f[14] & 0x0f) * 4
        total = ld16(f + 16)
        if ihl < IPV4_HLEN or total < ihl or ETH_HLEN + total > n:
            return K_IP_OPAQUE
        if ld16(f + 20) & IP_MF_OFFMASK:
            return K_IP_OPAQUE
        proto = f[23]
        if proto != IPPROTO_TCP and proto != IPPROTO_UDP:
            return K_IP_OTHER
        o.v6 = 0
        o.l4 = <uint16_t>(ETH_HLEN + ihl)
        o.l4len = total - ihl
        o.proto = proto
        return K_L4
    if et == ETH_P_IPV6:
        if n < ETH_HLEN + IPV6_HLEN or (f[14] >> 4) != 6:
            return K_OTHER
        plen = ld16(f + 18)
        proto = f[20]
        if proto == NH_ICMPV6 or proto == NH_NONE:
            return K_IP_OTHER
        if ((proto != IPPROTO_TCP and proto != IPPROTO_UDP) or plen == 0
                or ETH_HLEN + IPV6_HLEN + plen > n):
            return K_IP_OPAQUE
        o.v6 = 1
        o.l4 = ETH_HLEN + IPV6_HLEN
        o.l4len = plen
        o.proto = proto
        return K_L4
    return K_OTHER


cdef inline uint32_t _pseudo(const uint8_t *f, const l4info *l, uint32_t length) noexcept nogil:
    if l.v6:
        return pseudo6(f + 22, f + 38, l.proto, length)
    return pseudo4(ld32(f + 26), ld32(f + 30), l.proto, length)


cdef int _csum_fix(uint8_t *f, const l4info *l, bint verify) noexcept nogil:
    cdef uint32_t off, clen, ulen, pseudo, s
    cdef uint64_t d
    cdef uint16_t field, ps, c
    if l.proto == IPPROTO_TCP:
        if l.l4len < TCP_HLEN:
            return CSUM_NONE
        off = l.l4 + TCP_CSUM_OFF
        clen = l.l4len
    else:
        if l.l4len < UDP_HLEN:
            return CSUM_NONE
        ulen = ld16(f + l.l4 + 4)
        if ulen < UDP_HLEN or ulen > l.l4len:
            return CSUM_NONE
        off = l.l4 + UDP_CSUM_OFF
        clen = ulen
    field = ld16(f + off)
    if l.proto == IPPROTO_UDP and field == 0:
        return CSUM_NONE
    pseudo = _pseudo(f, l, clen)
    ps = csum_fold(pseudo)
    if not verify and field != ps:
        return CSUM_UNCHECKED
    s = csum_add(f + l.l4, clen, pseudo)
    if csum_fold(s) == 0xffff:
        return CSUM_VALID
    if field != ps:
        return CSUM_BAD
    d = <uint64_t>s + (~field & 0xffff)       # the sum without the field
    d = (d & 0xffffffffu) + (d >> 32)
    c = <uint16_t>(~csum_fold(<uint32_t>d) & 0xffff)
    if c == 0 and l.proto == IPPROTO_UDP:
        c = 0xffff
    st16(f + off, c)
    return CSUM_COMPLETED


cdef int csum_rx_fix(uint8_t *f, uint32_t n, bint verify) noexcept nogil:
    cdef l4info l
    if _ip_l4(f, n, &l) != K_L4:
        return CSUM_NONE
    return _csum_fix(f, &l, verify)


# ---- coalescing ------------------------------------------------------------------------------

cdef void _classify(gro_seg *s, gro_stats *st) noexcept nogil:
    cdef l4info l
    cdef uint8_t *f = s.p
    cdef int k = _ip_l4(f, s.len, &l)
    cdef uint32_t t, thl
    cdef uint8_t flags
    cdef bint cand
    cdef int c
    s.next = -1
    s.kind = S_OTHER
    s.pay = s.seq = s.ack = 0
    s.hlen = s.l4 = 0
    s.flags = 0
    s.v6 = s.len > 12 and f[12] == 0x86
    if k == K_OTHER or k == K_IP_OTHER:
        return
    if k == K_IP_OPAQUE:
        s.kind = S_OPAQUE
        return
    if l.proto != IPPROTO_TCP:
        if _csum_fix(f, &l, 0) == CSUM_COMPLETED:
            st.csum_completed += 1
        return
    if l.l4len < TCP_HLEN:
        s.kind = S_OPAQUE
        return
    t = l.l4
    s.l4 = <uint16_t>t
    thl = (f[t + 12] >> 4) * 4
    flags = f[t + 13]
    cand = (thl >= TCP_HLEN and thl < l.l4len and (f[t + 12] & 0x0f) == 0
            and (flags == TCP_ACK or flags == (TCP_ACK | TCP_PSH)))
    if cand and not l.v6:
        cand = (f[14] & 0x0f) == 5 and csum_fold(csum_add(f + ETH_HLEN, IPV4_HLEN, 0)) == 0xffff
    c = _csum_fix(f, &l, cand)
    if c == CSUM_COMPLETED:
        st.csum_completed += 1
    elif c == CSUM_BAD:
        st.csum_bad += 1
        cand = 0
    if not cand:
        s.kind = S_TCP
        return
    s.kind = S_CAND
    s.hlen = <uint16_t>(t + thl)
    s.pay = l.l4len - thl
    s.seq = ld32(f + t + 4)
    s.ack = ld32(f + t + 8)
    s.flags = flags


cdef inline bint _same_addrs(const gro_seg *a, const gro_seg *b) noexcept nogil:
    """Same IP version and addresses (a and b are IPv4 or IPv6 frames)."""
    if a.v6 != b.v6:
        return 0
    if a.v6:
        return memcmp(a.p + 22, b.p + 22, 32) == 0
    return memcmp(a.p + 26, b.p + 26, 8) == 0


cdef inline bint _same_flow(const gro_seg *a, const gro_seg *b) noexcept nogil:
    """Same Ethernet header, addresses and TCP ports (kind >= S_TCP)."""
    return (ld32(a.p + a.l4) == ld32(b.p + b.l4) and _same_addrs(a, b)
            and memcmp(a.p, b.p, ETH_HLEN) == 0)


cdef int _continues(const gro_seg *segs, const gro_run *R, int i,
                    uint32_t max_frame) noexcept nogil:
    """0: segment i does not continue R; otherwise it does: 1, or 10 + the IP ID mode it
    fixes when R has one segment so far."""
    cdef const gro_seg *sa = &segs[R.first]
    cdef const gro_seg *sb = &segs[i]
    cdef const uint8_t *a = sa.p
    cdef const uint8_t *b = sb.p
    cdef uint8_t mode = R.id_mode
    cdef uint16_t id0, idb
    cdef uint32_t total, thl = sa.hlen - sa.l4
    if sb.v6:
        if ld32(a + 14) != ld32(b + 14) or a[21] != b[21]:
            return 0
    else:
        if a[15] != b[15] or a[22] != b[22] or (a[20] & IP_DF_HI) != (b[20] & IP_DF_HI):
            return 0
        id0 = ld16(a + 18)
        idb = ld16(b + 18)
        if mode == 0:
            if idb == <uint16_t>(id0 + 1):
                mode = 1
            elif idb == id0 and (a[20] & IP_DF_HI):
                mode = 2
            else:
                return 0
        elif mode == 1:
            if idb != <uint16_t>(id0 + R.nseg):
                return 0
        elif idb != id0:
            return 0
    if <uint32_t>(sb.hlen - sb.l4) != thl:
        return 0
    if memcmp(a + sa.l4 + TCP_HLEN, b + sb.l4 + TCP_HLEN, thl - TCP_HLEN) != 0:
        return 0
    if sb.ack != sa.ack or sb.seq != R.next_seq or sb.pay > R.mss:
        return 0
    total = sa.hlen + R.paysum + sb.pay
    if total > max_frame or total - ETH_HLEN - (IPV6_HLEN if sb.v6 else 0) > IP_MAXPACKET:
        return 0
    return 10 + mode if R.id_mode == 0 else 1


cdef inline void _new_run(gro_run *R, int i, const gro_seg *s) noexcept nogil:
    memset(R, 0, sizeof(gro_run))
    R.first = i
    R.last = i
    R.nseg = 1
    R.mss = s.pay
    R.paysum = s.pay
    R.next_seq = s.seq + s.pay


cdef inline void _drop_open(int *open_, int *nopen, int j) noexcept nogil:
    cdef int k
    for k in range(j, nopen[0] - 1):
        open_[k] = open_[k + 1]
    nopen[0] -= 1


cdef void _finish(gro_seg *segs, gro_run *R) noexcept nogil:
    """Rewrite the first segment's headers for the coalesced length; fill R.vh."""
    cdef gro_seg *s = &segs[R.first]
    cdef uint8_t *f = s.p
    cdef uint32_t l4len = s.hlen - s.l4 + R.paysum
    cdef uint32_t ps
    if s.v6:
        st16(f + 18, <uint16_t>l4len)
        ps = pseudo6(f + 22, f + 38, IPPROTO_TCP, l4len)
        R.vh.gso_type = VNET_GSO_TCPV6
    else:
        st16(f + 16, <uint16_t>(IPV4_HLEN + l4len))
        st16(f + 24, 0)
        st16(f + 24, ipv4_checksum(f + ETH_HLEN))
        ps = pseudo4(ld32(f + 26), ld32(f + 30), IPPROTO_TCP, l4len)
        R.vh.gso_type = VNET_GSO_TCPV4
    f[s.l4 + 13] |= segs[R.last].flags & TCP_PSH
    st16(f + s.l4 + TCP_CSUM_OFF, csum_fold(ps))
    R.vh.flags = VNET_F_NEEDS_CSUM
    R.vh.hdr_len = s.hlen
    R.vh.gso_size = <uint16_t>R.mss
    R.vh.csum_start = s.l4
    R.vh.csum_offset = TCP_CSUM_OFF
    R.len = s.hlen + R.paysum


cdef int gro_coalesce(gro_seg *segs, int n, gro_run *runs, uint32_t *order, uint32_t max_frame,
                      gro_stats *st) noexcept nogil:
    cdef int open_[GRO_MAX_OPEN]
    cdef int nopen = 0, nruns = 0, i, j, c
    cdef uint32_t pos = 0
    cdef int32_t k
    cdef gro_seg *s
    cdef gro_run *R
    for i in range(n):
        _classify(&segs[i], st)
    for i in range(n):
        s = &segs[i]
        if s.kind == S_OPAQUE:
            j = 0
            while j < nopen:
                if _same_addrs(&segs[runs[open_[j]].first], s):
                    _drop_open(open_, &nopen, j)
                else:
                    j += 1
        if s.kind <= S_OPAQUE:
            _new_run(&runs[nruns], i, s)
            nruns += 1
            continue
        j = 0
        while j < nopen and not _same_flow(&segs[runs[open_[j]].first], s):
            j += 1
        if j == nopen:
            j = -1
        if s.kind == S_TCP:
            if j >= 0:
                _drop_open(open_, &nopen, j)
            _new_run(&runs[nruns], i, s)
            nruns += 1
            continue
        if j >= 0:
            R = &runs[open_[j]]
            c = _continues(segs, R, i, max_frame)
            if c:
                if c >= 10:
                    R.id_mode = <uint8_t>(c - 10)
                segs[R.last].next = i
                R.last = i
                R.nseg += 1
                R.paysum += s.pay
                R.next_seq = s.seq + s.pay
                if s.pay < R.mss or (s.flags & TCP_PSH):
                    _drop_open(open_, &nopen, j)
                continue
            _drop_open(open_, &nopen, j)
        _new_run(&runs[nruns], i, s)
        nruns += 1
        if s.flags & TCP_PSH:
            continue
        if nopen == GRO_MAX_OPEN:
            _drop_open(open_, &nopen, 0)
        open_[nopen] = nruns - 1
        nopen += 1
    for j in range(nruns):
        R = &runs[j]
        R.start = pos
        k = R.first
        while k >= 0:
            order[pos] = k
            pos += 1
            k = segs[k].next
        if R.nseg >= 2:
            _finish(segs, R)
            st.gro_frames += 1
            st.gro_segs += R.nseg
        else:
            memset(&R.vh, 0, sizeof(vnet_hdr))
            R.len = segs[R.first].len
    return nruns


cdef int gro_iovec(const gro_seg *segs, const gro_run *run, const uint32_t *order,
                   uint8_t *vh_buf, iovec *iov, int max_iov) noexcept nogil:
    cdef const gro_seg *s
    cdef uint32_t k
    if <uint32_t>max_iov < run.nseg + 1:
        return -1
    vnet_build(vh_buf, &run.vh)
    iov[0].iov_base = vh_buf
    iov[0].iov_len = VNET_HLEN
    s = &segs[order[run.start]]
    iov[1].iov_base = s.p
    if run.nseg == 1:
        iov[1].iov_len = s.len
        return 2
    iov[1].iov_len = s.hlen + s.pay
    for k in range(1, run.nseg):
        s = &segs[order[run.start + k]]
        iov[k + 1].iov_base = s.p + s.hlen
        iov[k + 1].iov_len = s.pay
    return run.nseg + 1


# ---- Python wrappers (tests, benchmarks): the API of gro_ref.py --------------------------------

def py_csum_rx_fix(frame, bint verify=False):
    """(CSUM_* status, the frame after the fix); see gro_ref.py_csum_rx_fix."""
    cdef bytes b = bytes(frame)
    out = PyBytes_FromStringAndSize(PyBytes_AS_STRING(b), len(b))
    cdef uint8_t *p = <uint8_t *>PyBytes_AS_STRING(out)
    cdef uint32_t n = len(b)
    cdef int r
    with nogil:
        r = csum_rx_fix(p, n, verify)
    return r, out


def coalesce_stats(frames, max_frame=GRO_MAX_FRAME):
    """coalesce() and the counters of this batch; see gro_ref.coalesce_stats."""
    _ref.check_max_frame(max_frame)
    cdef list fl = [bytes(f) for f in frames]
    cdef int n = len(fl), i, r, nruns, niov, j
    cdef size_t total = 0, off = 0, size
    cdef uint32_t mf = max_frame
    for f in fl:
        total += len(f)
    cdef uint8_t *slab = <uint8_t *>malloc(total + 1)
    cdef gro_seg *segs = <gro_seg *>malloc((n + 1) * sizeof(gro_seg))
    cdef gro_run *runs = <gro_run *>malloc((n + 1) * sizeof(gro_run))
    cdef uint32_t *order = <uint32_t *>malloc((n + 1) * sizeof(uint32_t))
    cdef iovec *iov = <iovec *>malloc((n + 2) * sizeof(iovec))
    cdef uint8_t vh[VNET_HLEN]
    cdef gro_stats st
    cdef uint8_t *q
    memset(&st, 0, sizeof(st))
    out = []
    try:
        if not slab or not segs or not runs or not order or not iov:
            raise MemoryError()
        for i in range(n):
            size = len(fl[i])
            memcpy(slab + off, PyBytes_AS_STRING(fl[i]), size)
            segs[i].p = slab + off
            segs[i].len = <uint32_t>size
            off += size
        with nogil:
            nruns = gro_coalesce(segs, n, runs, order, mf, &st)
        for r in range(nruns):
            niov = gro_iovec(segs, &runs[r], order, vh, iov, n + 2)
            assert niov >= 2, niov
            size = 0
            for j in range(1, niov):
                size += iov[j].iov_len
            assert size == runs[r].len, (size, runs[r].len)
            frame = PyBytes_FromStringAndSize(NULL, size)
            q = <uint8_t *>PyBytes_AS_STRING(frame)
            for j in range(1, niov):
                memcpy(q, iov[j].iov_base, iov[j].iov_len)
                q += iov[j].iov_len
            out.append((PyBytes_FromStringAndSize(<char *>vh, VNET_HLEN), frame))
    finally:
        free(slab)
        free(segs)
        free(runs)
        free(order)
        free(iov)
    return out, {"gro_frames": st.gro_frames, "gro_segs": st.gro_segs,
                 "csum_completed": st.csum_completed, "csum_bad": st.csum_bad}


def coalesce(frames, max_frame=GRO_MAX_FRAME):
    """Coalesce one batch of inner frames: [(virtio_net_hdr, frame to write to the TAP)]."""
    return coalesce_stats(frames, max_frame)[0]
