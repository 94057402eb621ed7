# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The simulation side of the switch (see sim.pxd): Switch.process_tap / process_udp.

  1. tx_load / rx_load: Python frames (TAP reads) or datagrams (UDP receives) into the batch
     buffers, with the lengths and flags the kernel would report;
  2. the switch classifies them as its loops do (_tx_batch, _rx_batch) and, inbound, delivers
     them (_rx_deliver) into a sink instead of the TAPs (sink_put);
  3. tx_collect / sink_take / decision_dicts: the messages, replies, TAP writes and decisions
     of the batch as Python objects; the datagrams sent are counted as the send paths count
     them (udp_tx_packets/bytes).
Reference: switch_ref.py process_tap / process_udp (the tests run both).
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t
from libc.stdlib cimport realloc
from libc.string cimport memcpy
from cpython.bytes cimport PyBytes_FromStringAndSize

from fastpath.includes.sys cimport iovec, sockaddr_in, ntohs, ntohl, MSG_TRUNC
from fastpath.headers cimport IPV4_HLEN
from fastpath.outer6 cimport IPV6_HLEN
from fastpath.vnet cimport VNET_HLEN
from fastpath.gso cimport GSO_MAX_FRAME
from fastpath.vtep cimport sockaddr_set_src
from fastpath.net cimport C_UDP_TX_PKTS, C_UDP_TX_BYTES, V_DROP
from fastpath.buffers cimport HEADROOM, rxbuf_rearm

from fastpath import addr as _addr
from fastpath import counters as _counters

_EXT = {None: 0, 0: 0, "ext_hdr": 1, "fragment": 2}


cdef ssize_t sink_put(sink *s, uint32_t vni, const iovec *iov, int nio) noexcept nogil:
    """Store one TAP write (the iovecs gathered); returns its bytes, as writev would."""
    cdef size_t n = 0, need, cap
    cdef uint32_t n32
    cdef uint8_t *p
    cdef int j
    for j in range(nio):
        n += iov[j].iov_len
    need = s.len + 8 + n
    if need > s.cap:
        cap = 2 * need
        p = <uint8_t *>realloc(s.buf, cap)
        if p == NULL:
            s.failed = 1
            return -1
        s.buf, s.cap = p, cap
    n32 = <uint32_t>n
    memcpy(s.buf + s.len, &vni, 4)
    memcpy(s.buf + s.len + 4, &n32, 4)
    s.len += 8
    for j in range(nio):
        memcpy(s.buf + s.len, iov[j].iov_base, iov[j].iov_len)
        s.len += iov[j].iov_len
    return <ssize_t>n


cdef sink_take(sink *s, list out):
    """The stored TAP writes as ("tap", vni, bytes) onto out; empties the sink."""
    cdef size_t at = 0
    cdef uint32_t vni, n
    while at < s.len:
        memcpy(&vni, s.buf + at, 4)
        memcpy(&n, s.buf + at + 4, 4)
        out.append(("tap", vni, PyBytes_FromStringAndSize(<char *>(s.buf + at + 8), n)))
        at += 8 + n
    s.len = 0


cdef tx_load(txbuf *b, list frames, bint offload, size_t max_inner):
    """frames (bytes) as the TAP reads of one batch: each at HEADROOM (offloads: its
    virtio-net header just before), cut at what read() would return."""
    cdef size_t at = HEADROOM - VNET_HLEN if offload else HEADROOM
    cdef size_t cap = VNET_HLEN + GSO_MAX_FRAME + 1 if offload else max_inner + 1
    cdef size_t hl = VNET_HLEN if offload else 0
    cdef size_t k
    cdef bytes frame
    cdef int i
    b.n = len(frames)
    for i in range(b.n):
        frame = frames[i]
        k = min(<size_t>len(frame), cap)
        memcpy(b.slab + i * b.slot + at, <char *>frame, k)
        b.lens[i] = <uint32_t>(k - hl if k >= hl else 0)


cdef tx_collect(txbuf *b, net_t *n, vni, bint offload, uint16_t *port4, uint16_t *port6,
                list out):
    """The batch's outputs onto out, in emission order, counted as sent. Offloads off:
    ("udp", dst_ip, dst_port, datagram) with the full outer packet; on: ("udp", dst_ip,
    dst_port, src_port, udp_payload) per wire datagram (a UDP_SEGMENT send cut at its
    segment size, as the kernel does). Then ("tap", vni, frame) per ARP/ND reply (offloads:
    with a zero virtio-net header)."""
    cdef size_t m, j, step
    cdef int i, k
    cdef iovec *io
    for m in range(b.nmsg):
        dst = _dst_str(b, m)
        io = b.msgs[m].msg_hdr.msg_iov
        if not offload:
            datagram = b"".join([PyBytes_FromStringAndSize(<char *>b.iov[2 * m + j].iov_base,
                                                           b.iov[2 * m + j].iov_len)
                                 for j in range(b.msgs[m].msg_hdr.msg_iovlen)])
            n.c[C_UDP_TX_PKTS] += 1
            n.c[C_UDP_TX_BYTES] += len(datagram)
            po = IPV6_HLEN + 2 if b.msg_v6[m] else IPV4_HLEN + 2
            out.append(("udp", dst, int.from_bytes(datagram[po:po + 2], "big"), datagram))
            continue
        dport = ntohs(b.addrs[m].sin6_port)
        sport = port6[b.msg_sock[m]] if b.msg_v6[m] else port4[b.msg_sock[m]]
        step = 1 if b.msgs[m].msg_hdr.msg_iovlen == 1 else 2
        for j in range(0, b.msgs[m].msg_hdr.msg_iovlen, step):
            parts = [PyBytes_FromStringAndSize(<char *>io[j + k].iov_base, io[j + k].iov_len)
                     for k in range(step)]
            out.append(("udp", dst, dport, sport, b"".join(parts)))
        n.c[C_UDP_TX_PKTS] += b.msg_segs[m]
        n.c[C_UDP_TX_BYTES] += b.msg_wire[m]
    for k in range(b.ntapw):
        i = b.tapw[k]
        frame = PyBytes_FromStringAndSize(<char *>(b.slab + i * b.slot + HEADROOM), b.lens[i])
        out.append(("tap", vni, bytes(VNET_HLEN) + frame if offload else frame))


cdef list rx_items(datagrams, bint offload):
    """process_udp input (src, payload[, gso_size[, ext]]) -> [(key, bytes, gso, ext code)].
    ext: what the receive socket reported for an IPv6 datagram (None, "ext_hdr", "fragment")."""
    items = []
    for it in datagrams:
        gso = it[2] if len(it) >= 3 else 0
        if gso and not offload:
            raise ValueError("a gso_size needs offload=True")
        ext = it[3] if len(it) >= 4 else None
        if ext not in _EXT:
            raise ValueError(f"ext must be None, 'ext_hdr' or 'fragment', got {ext!r}")
        items.append((_addr.src_key(it[0]), bytes(it[1]), gso, _EXT[ext]))
    return items


cdef rx_load(rxbuf *b, list items, bint offload):
    """items (rx_items) as one recvmmsg: payload, length (MSG_TRUNC beyond a slot), source,
    UDP_GRO size and IPv6 extension-header verdict of each."""
    cdef int i
    cdef size_t k
    cdef bytes payload
    b.n = len(items)
    rxbuf_rearm(b, b.n, offload)
    for i in range(b.n):
        src, payload, gso, ext = items[i]
        k = min(<size_t>len(payload), b.slot)
        memcpy(b.slab + i * b.slot, <char *>payload, k)
        b.msgs[i].msg_len = <unsigned int>k
        if <size_t>len(payload) > b.slot:
            b.msgs[i].msg_hdr.msg_flags = MSG_TRUNC
        sockaddr_set_src(&b.addrs[i], src >> 64, src & 0xFFFFFFFFFFFFFFFF)
        b.gso[i] = gso
        b.mext[i] = ext


cdef list decision_dicts(decision *d, int n):
    """The decisions of a batch as the reference's dicts."""
    cdef int i
    return [{"vni": d[i].vni, "verdict": _counters.VERDICTS[d[i].verdict],
             "reason": _counters.NAMES[d[i].reason][5:] if d[i].verdict == V_DROP else None,
             "vtep": _addr.key_to_ip((<object>d[i].vhi << 64) | d[i].vlo)
             if (d[i].vhi or d[i].vlo) else None, "copies": d[i].copies}
            for i in range(n)]


cdef object _dst_str(txbuf *b, size_t m):
    if b.msg_v6[m]:
        return _addr.int_to_ip6(int.from_bytes(
            PyBytes_FromStringAndSize(<char *>b.addrs[m].sin6_addr.s6_addr, 16), "big"))
    return _addr.int_to_ip(ntohl((<sockaddr_in *>&b.addrs[m]).sin_addr.s_addr))
