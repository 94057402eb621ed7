# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The trace points of the forwarding loops: what each records from a batch (trace.pxd ring).

The switch calls them under its table lock, only while tracing is on (it reads tr.active once
per batch, so the pre and post hooks of a batch agree); nothing here runs otherwise.
  Outbound (switch._tx_batch): trace_tx_pre before classification (tap_in records, the
  first DECISION_SNAP bytes of every matching frame for its decision record), trace_tx_post
  after it (ul_out per datagram; with offloads one per wire datagram, the outer header the
  kernel will write rebuilt in front, so a pcap shows what leaves; tap_out per ARP/ND reply;
  decision).
  Inbound (switch._rx_batch): trace_rx_pre (ul_in per datagram), trace_rx_post (tap_out of a
  frame written as it is, decision); trace_run: with offloads, the tap_out record of one
  coalesced TAP write, as written.
Record layout: trace.pxd rec_hdr, its Python mirror and parser trace_ref.py; what is
recorded where is checked by tests/test_trace_*.py.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

from fastpath.includes.sys cimport (
    iovec, sockaddr_in, sockaddr_in6, ntohs, ntohl, pthread_mutex_t, pthread_mutex_lock,
    pthread_mutex_unlock,
)
from fastpath.headers cimport OUTER_HLEN, VXLAN_HLEN, UDP_HLEN, write_outer
from fastpath.outer6 cimport write_outer6, OUTER6_HLEN, IPV6_HLEN
from fastpath.csum cimport csum_add, pseudo6, csum_finish
from fastpath.gso cimport GSO_HDR_MAX
from fastpath.gro cimport gro_run, GRO_MAX_FRAME
from fastpath.trace cimport (
    trace_t, trace_match, trace_put, TP_TAP_IN, TP_UL_OUT, TP_UL_IN, TP_TAP_OUT, TP_DECISION,
    REC_INBOUND, REC_PEER6,
)
from fastpath.net cimport decision, V_ENCAP, V_DELIVER
from fastpath.buffers cimport txbuf, rxbuf, HEADROOM, DECISION_SNAP
from fastpath.vtep cimport key_is_v4, st64

cdef extern from *:
    uint64_t __atomic_fetch_add(uint64_t *p, uint64_t v, int order) nogil
    int __ATOMIC_RELAXED


cdef struct origin:         # what the kernel puts in the outer header of a pool socket's datagram
    uint32_t local_ip
    uint8_t *local6
    uint8_t ttl
    bint zerocsum6
    uint16_t *port4
    uint16_t *port6


cdef void trace_tx_pre(trace_t *tr, uint32_t vni, txbuf *b) noexcept nogil:
    """tap_in records and decision snapshots of the b.n frames read (before classification)."""
    cdef int i
    cdef uint8_t *f
    cdef size_t k
    b.seq0 = __atomic_fetch_add(&tr.seq, <uint64_t>b.n, __ATOMIC_RELAXED)
    for i in range(b.n):
        f = b.slab + i * b.slot + HEADROOM
        b.tmatch[i] = trace_match(tr, vni, f, b.lens[i])
        if not b.tmatch[i]:
            continue
        if tr.left[TP_TAP_IN]:
            trace_put(tr, TP_TAP_IN, vni, 0, 0, 0, 0, b.seq0 + i, f, b.lens[i],
                      NULL, 0, b.lens[i], 0)
        if tr.left[TP_DECISION]:
            k = b.lens[i] if b.lens[i] < DECISION_SNAP else DECISION_SNAP
            memcpy(b.snap + i * DECISION_SNAP, f, k)

cdef void trace_tx_post(trace_t *tr, uint32_t vni, txbuf *b, bint offload, uint32_t local_ip,
                        uint8_t *local6, uint8_t ttl, bint zerocsum6, uint16_t *port4,
                        uint16_t *port6) noexcept nogil:
    """ul_out, tap_out (replies) and decision records of a classified batch. Offloads on: the
    outer header the kernel writes is rebuilt from the local addresses, ttl, udp6zerocsumtx and
    the pool ports (port4/port6: pool socket index -> source port)."""
    cdef origin o
    o.local_ip, o.local6, o.ttl, o.zerocsum6, o.port4, o.port6 = (local_ip, local6, ttl,
                                                                  zerocsum6, port4, port6)
    cdef int i, k
    cdef size_t m, j
    cdef decision *d
    cdef size_t olen
    if offload:
        _tx_post_off(tr, vni, b, &o)
    for m in range(b.nmsg if not offload else 0):
        i = b.msg_pkt[m]
        if b.tmatch[i] and tr.left[TP_UL_OUT]:
            olen = b.iov[2 * m].iov_len
            if b.msgs[m].msg_hdr.msg_iovlen == 2:
                olen += b.iov[2 * m + 1].iov_len
            trace_put(tr, TP_UL_OUT, vni, peer32(b, m),
                      0, V_ENCAP, 0, b.seq0 + i,
                      <uint8_t *>b.iov[2 * m].iov_base, b.iov[2 * m].iov_len,
                      <uint8_t *>b.iov[2 * m + 1].iov_base if b.msgs[m].msg_hdr.msg_iovlen == 2 else NULL,
                      b.iov[2 * m + 1].iov_len if b.msgs[m].msg_hdr.msg_iovlen == 2 else 0,
                      olen, 0)
    for k in range(b.ntapw):
        i = b.tapw[k]
        if b.tmatch[i] and tr.left[TP_TAP_OUT]:
            trace_put(tr, TP_TAP_OUT, vni, 0, 0, b.dec[i].verdict, 0, b.seq0 + i,
                      b.slab + i * b.slot + HEADROOM, b.lens[i], NULL, 0, b.lens[i], 0)
    if tr.left[TP_DECISION]:
        for i in range(b.n):
            if not b.tmatch[i]:
                continue
            d = &b.dec[i]
            trace_put(tr, TP_DECISION, vni, d.vtep, d.copies, d.verdict, d.reason,
                      b.seq0 + i, b.snap + i * DECISION_SNAP,
                      b.lens[i] if b.lens[i] < DECISION_SNAP else DECISION_SNAP, NULL, 0,
                      b.lens[i], 0)

cdef void _tx_post_off(trace_t *tr, uint32_t vni, txbuf *b, origin *o) noexcept nogil:
    """Offloads on: one UL_OUT record per wire datagram, with the outer IPv4/UDP header
    the kernel will write (ID 0; the pool socket's source port) rebuilt in front, so a
    pcap shows the segments as they leave."""
    cdef size_t m, j
    cdef int i
    cdef uint8_t scratch[OUTER6_HLEN + GSO_HDR_MAX]
    cdef iovec *io
    cdef size_t hl, pl, ohl
    cdef uint32_t peer
    cdef uint16_t sport, dport
    cdef sockaddr_in6 *sa
    for m in range(b.nmsg):
        i = b.msg_pkt[m]
        if not b.tmatch[i]:
            continue
        io = b.msgs[m].msg_hdr.msg_iov
        peer = peer32(b, m)
        sa = &b.addrs[m]
        dport = ntohs(sa.sin6_port)          # same offset as sin_port
        sport = o.port6[b.msg_sock[m]] if b.msg_v6[m] else o.port4[b.msg_sock[m]]
        ohl = OUTER6_HLEN if b.msg_v6[m] else OUTER_HLEN
        j = 0
        while j < b.msgs[m].msg_hdr.msg_iovlen and tr.left[TP_UL_OUT]:
            hl = io[j].iov_len - VXLAN_HLEN       # plain: the frame; GSO: its headers
            pl = io[j + 1].iov_len if b.msgs[m].msg_hdr.msg_iovlen > 1 else 0
            if hl > GSO_HDR_MAX:
                hl = GSO_HDR_MAX if b.msgs[m].msg_hdr.msg_iovlen > 1 else hl
            if b.msgs[m].msg_hdr.msg_iovlen == 1:
                _outer(o, scratch, b, m, sport, dport, vni,
                                  <uint8_t *>io[0].iov_base + VXLAN_HLEN, hl, NULL, 0)
                trace_put(tr, TP_UL_OUT, vni, peer, 0,
                          V_ENCAP, 0, b.seq0 + i, scratch, ohl,
                          <uint8_t *>io[0].iov_base + VXLAN_HLEN, hl, ohl + hl, 0)
                break
            memcpy(scratch + ohl, <uint8_t *>io[j].iov_base + VXLAN_HLEN, hl)
            _outer(o, scratch, b, m, sport, dport, vni, scratch + ohl, hl,
                              <uint8_t *>io[j + 1].iov_base, pl)
            trace_put(tr, TP_UL_OUT, vni, peer, 0,
                      V_ENCAP, 0, b.seq0 + i, scratch, ohl + hl,
                      <uint8_t *>io[j + 1].iov_base, pl, ohl + hl + pl, 0)
            j += 2

cdef void _outer(origin *o, uint8_t *hdr, txbuf *b, size_t m, uint16_t sport,
                       uint16_t dport, uint32_t vni, uint8_t *inner, size_t hl,
                       uint8_t *payload, size_t pl) noexcept nogil:
    """Offloads on: the outer header the kernel writes for message m's datagram (inner
    headers or frame at `inner`, hl bytes, then pl payload bytes): IPv4 (ID 0) or IPv6
    with its UDP checksum (flow label: ours if the socket takes it, else 0)."""
    cdef sockaddr_in6 *sa = &b.addrs[m]
    cdef uint32_t ulen, c
    if not b.msg_v6[m]:
        write_outer(hdr, o.local_ip, ntohl((<sockaddr_in *>sa).sin_addr.s_addr), sport,
                    dport, vni, hl + pl, o.ttl)
        return
    write_outer6(hdr, o.local6, sa.sin6_addr.s6_addr, sport, dport, vni, inner, hl + pl,
                 o.ttl, ntohl(sa.sin6_flowinfo), 1)
    if o.zerocsum6:
        return
    ulen = <uint32_t>(UDP_HLEN + VXLAN_HLEN + hl + pl)
    c = csum_add(hdr + IPV6_HLEN, UDP_HLEN + VXLAN_HLEN,
                 pseudo6(o.local6, sa.sin6_addr.s6_addr, 17, ulen))
    c = csum_add(inner, hl, c)             # hl is even whenever pl > 0 (inner headers)
    if pl:
        c = csum_add(payload, pl, c)
    c = csum_finish(c)
    hdr[46] = (c >> 8) & 0xff if c else 0xff
    hdr[47] = c & 0xff if c else 0xff

cdef void _put_in(trace_t *tr, rxbuf *b, int i, int point, uint32_t vni, uint32_t peer,
                  uint8_t verdict, uint8_t reason, const uint8_t *p, size_t n,
                  size_t orig_len) noexcept nogil:
    """An inbound record of datagram i; from an IPv6 VTEP it carries the source address
    (REC_PEER6: 16 bytes in front of the data), as `peer` carries an IPv4 one."""
    cdef uint8_t a6[16]
    cdef uint64_t hi = b.dsrc_hi[i], lo = b.dsrc_lo[i]
    if key_is_v4(hi, lo):
        trace_put(tr, point, vni, peer, b.dsport[i], verdict, reason, b.seq0 + i, p, n,
                  NULL, 0, orig_len, REC_INBOUND)
        return
    st64(a6, hi)                            # the key's two halves are the address, big endian
    st64(a6 + 8, lo)
    trace_put(tr, point, vni, 0, b.dsport[i], verdict, reason, b.seq0 + i, a6, 16, p, n,
              orig_len, REC_INBOUND | REC_PEER6)


cdef void trace_rx_pre(trace_t *tr, rxbuf *b) noexcept nogil:
    """ul_in records of the b.nd datagrams received (before classification)."""
    cdef int i
    cdef uint8_t *p
    cdef uint32_t len_, vni
    b.seq0 = __atomic_fetch_add(&tr.seq, <uint64_t>b.nd, __ATOMIC_RELAXED)
    for i in range(b.nd):
        p = b.dp[i]
        len_ = b.dlen[i]
        vni = ((<uint32_t>p[4] << 16) | (<uint32_t>p[5] << 8) | p[6]) if len_ >= 8 else 0
        b.tmatch[i] = trace_match(tr, vni, p + 8, len_ - 8 if len_ >= 8 else 0)
        if b.tmatch[i] and tr.left[TP_UL_IN]:
            _put_in(tr, b, i, TP_UL_IN, vni, b.dsrc[i], 0, 0, p, len_, len_)

cdef void trace_rx_post(trace_t *tr, rxbuf *b, bint offload) noexcept nogil:
    """tap_out (frames written as they are) and decision records of a classified batch."""
    cdef int i
    cdef uint8_t *p
    cdef uint32_t len_
    cdef decision *d
    for i in range(b.nd):
        if not b.tmatch[i]:
            continue
        p = b.dp[i]
        len_ = b.dlen[i]
        d = &b.dec[i]
        # offloads: a frame that goes through coalescing is recorded as written, with its
        # run (trace_run); a super-frame is written as it is
        if (b.out_net[i] != NULL and tr.left[TP_TAP_OUT]
                and (not offload or b.dsuper[i])):
            trace_put(tr, TP_TAP_OUT, d.vni, d.vtep, 0, V_DELIVER, 0, b.seq0 + i,
                      p + VXLAN_HLEN, len_ - VXLAN_HLEN, NULL, 0, len_ - VXLAN_HLEN, REC_INBOUND)
        if tr.left[TP_DECISION]:
            _put_in(tr, b, i, TP_DECISION, d.vni, d.vtep, d.verdict, d.reason, p,
                    len_ if len_ < DECISION_SNAP else DECISION_SNAP, len_)


cdef void trace_run(trace_t *tr, pthread_mutex_t *lock, rxbuf *b, gro_run *run,
                    int nio) noexcept nogil:
    """Offloads, tracing: the tap_out record of one TAP write of _rx_drain, the frame as
    written (a coalesced run: its first segment's rewritten headers and every segment's
    payload, gathered from b.giov[1:nio]; the virtio-net header is not part of it). Taken
    under the table lock, like every trace record."""
    cdef int i0, k
    cdef size_t at = 0
    if not b.traced or nio < 2:
        return
    i0 = b.gidx[run.first]
    if not b.tmatch[i0]:
        return
    for k in range(1, nio):
        if at + b.giov[k].iov_len > GRO_MAX_FRAME:
            break
        memcpy(b.tscratch + at, b.giov[k].iov_base, b.giov[k].iov_len)
        at += b.giov[k].iov_len
    pthread_mutex_lock(lock)
    if tr.left[TP_TAP_OUT]:
        trace_put(tr, TP_TAP_OUT, b.dec[i0].vni, b.dec[i0].vtep, 0, V_DELIVER, 0,
                  b.seq0 + i0, b.tscratch, at, NULL, 0, run.len, REC_INBOUND)
    pthread_mutex_unlock(lock)


cdef inline uint32_t peer32(txbuf *b, size_t m) noexcept nogil:
    """Message m's destination for a trace record: IPv4 host order, 0 for IPv6."""
    if b.msg_v6[m]:
        return 0
    return ntohl((<sockaddr_in *>&b.addrs[m]).sin_addr.s_addr)
