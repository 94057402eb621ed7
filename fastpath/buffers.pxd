# The batch buffers of the forwarding loops, as inline C (no GIL, no Python): preallocated
# once per loop thread (and once per switch for the simulation), reused for every batch.
#
# txbuf (outbound, TAP -> underlay): a slab of `batch` slots, frame i at
#   slab + i*slot + HEADROOM so the outer headers are written in place in front of it (with
#   offloads the virtio-net header is read just before the frame); the outgoing messages
#   (mmsghdr + 2 iovecs + destination each, grown by txbuf_reserve for floods and GSO
#   segments); the ARP/ND replies to write back; per-packet decisions and trace state.
# rxbuf (inbound, underlay -> TAP): `batch` receive slots of RX_GRO_SLOT bytes for recvmmsg,
#   each with its source address and control messages; rx_split cuts them into datagrams
#   (a UDP_GRO buffer holds up to RX_GRO_SEGS), and per datagram its source, decision, the
#   TAP fd/network it goes to, and the coalescing arrays (gro.pxd) with offloads.
# Plumbing only (allocation, re-arming, splitting): the decisions are switch.pyx's.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport malloc, calloc, realloc, free
from libc.string cimport memset, memcpy

from fastpath.includes.sys cimport (
    iovec, msghdr, mmsghdr, sockaddr_in, sockaddr_in6, cmsghdr, CMSG_FIRSTHDR, CMSG_NXTHDR,
    CMSG_DATA, SOL_UDP, UDP_GRO, MSG_TRUNC, MSG_CTRUNC, AF_INET, IPPROTO_IPV6, IPV6_HOPOPTS,
    IPV6_RTHDR, IPV6_DSTOPTS, IPV6_RTHDRDSTOPTS, IPV6_RECVFRAGSIZE,
)
from fastpath.vnet cimport vnet_hdr
from fastpath.gso cimport gso_info, GSO_MAX_SEGS, GSO_HDR_MAX
from fastpath.gro cimport gro_seg, gro_run, GRO_MAX_FRAME
from fastpath.vtep cimport sockaddr_key
from fastpath.net cimport net_t, decision

cdef enum:
    HEADROOM = 56            # frame offset in a TX slot: room for OUTER6_HLEN (IPv4: 36 used)
    DECISION_SNAP = 128      # bytes of the frame kept with a decision record
    SEGH = 8 + GSO_HDR_MAX   # per segment: VXLAN header + inner headers
    CMSG_STRIDE = 32         # per message: room for one UDP_SEGMENT / UDP_GRO control message
    HDRS_STRIDE = 56         # per flood copy: its outer header (either family)
    RX_GRO_SLOT = 65600      # receive slot with UDP_GRO: one coalesced 64 KB buffer
    RX_GRO_SEGS = 64         # datagrams per UDP_GRO buffer (the kernel's UDP_GRO_CNT_MAX)
    RX_CMSG = 256            # per received message: UDP_GRO + IPv6 extension-header messages

cdef struct txbuf:
    uint8_t *slab          # batch slots; frame i at slab + i*slot + HEADROOM
    size_t slot
    uint32_t *lens
    int n
    decision *dec
    # outgoing datagrams
    mmsghdr *msgs
    iovec *iov             # 2 per message
    sockaddr_in6 *addrs    # storage for either family (vtep_sockaddr)
    uint8_t *msg_v6        # per message: 1 = to an IPv6 VTEP (raw IPv6 socket / IPv6 pool)
    uint8_t *hdrs          # HDRS_STRIDE per message (flood copies)
    size_t nmsg
    size_t cap
    int *msg_pkt           # per message: index of the packet it carries
    # ARP replies to write back into the TAP: slot indices
    int *tapw
    int ntapw
    # tracing (only touched while tracing is on)
    uint8_t *tmatch        # per packet: passes the trace filter
    uint8_t *snap          # per packet: first DECISION_SNAP bytes before classification
    uint64_t seq0          # sequence number of packet 0 of the batch
    int q                  # TAP queue of the thread that owns this buffer
    # offloads on (UDP socket pool): per message
    int *msg_sock          # pool socket index (the flow's)
    uint32_t *msg_segs     # wire datagrams it makes
    uint32_t *msg_wire     # their bytes on the wire (outer IPv4 + UDP included)
    uint8_t *cmsg          # CMSG_STRIDE each (UDP_SEGMENT)
    mmsghdr *smsgs         # staging: the messages of one socket, for its sendmmsg
    int *smap              # staging index -> message index
    # offloads on: per frame, GSO_MAX_SEGS segment slots
    uint8_t vh_zero[16]    # a virtio-net header that says nothing (ARP replies)
    uint8_t *seghdr        # SEGH bytes per segment: VXLAN + inner headers
    iovec *segiov          # 2 per segment: its headers, its payload (in the slab)

cdef struct rxbuf:
    uint8_t *slab
    size_t slot
    int n
    mmsghdr *msgs
    iovec *iov
    sockaddr_in6 *addrs    # either family (an IPv6 socket reports IPv4 sources mapped)
    uint8_t *cmsg          # RX_CMSG per message (UDP_GRO, IPv6 extension headers)
    uint32_t *gso          # per message: datagram size (UDP_GRO), 0 = one datagram
    # datagrams (a UDP_GRO buffer is split into several): nd of dcap
    int nd
    int dcap
    uint8_t **dp
    uint32_t *dlen
    uint32_t *dsrc         # outer source if IPv4, host order (else 0: trace records)
    uint64_t *dsrc_hi      # outer source as a VTEP key (vtep.pxd)
    uint64_t *dsrc_lo
    uint8_t *dext          # IPv6: 1 = came with extension headers, 2 = reassembled fragments
    uint16_t *dsport
    uint8_t *dtrunc        # the kernel truncated it (MSG_TRUNC)
    uint8_t *mext          # per message: its extension-header verdict (see dext)
    uint8_t *dsuper        # offloads: an inner TCP super-frame (kernel sender's tunnel GSO)
    vnet_hdr *dvh          # ... and the virtio-net header to write it with
    decision *dec          # per datagram
    int *out_fd            # per datagram: TAP fd to write the inner frame to, or -1
    net_t **out_net
    uint8_t *tmatch
    uint64_t seq0
    int q                  # TAP queue of the thread that owns this buffer (writes go there)
    uint8_t traced         # this batch was classified with tracing on (tmatch/seq0 valid)
    # offloads on: coalescing (gro.pxd), dcap each
    int *gidx              # coalescing segment k -> its datagram index
    uint8_t *tscratch      # tracing: a coalesced frame gathered for its tap_out record
    gro_seg *gsegs
    gro_run *gruns
    uint32_t *gorder
    iovec *giov            # dcap + 1 (offloads), 2 (off)
    uint8_t vh[16]
    uint8_t shdr[GSO_HDR_MAX]   # offloads off: headers of one segment of a super-frame
    gso_info sg                 # ... and its layout


cdef inline int buf_grow(void **p, size_t nbytes) noexcept nogil:
    """realloc *p to nbytes; -1 (and *p untouched) on failure."""
    cdef void *q = realloc(p[0], nbytes)
    if q == NULL:
        return -1
    p[0] = q
    return 0


cdef inline int txbuf_reserve(txbuf *b, size_t cap) noexcept nogil:
    """Make room for `cap` outgoing datagrams. Returns -1 on allocation failure."""
    cdef size_t i
    if cap <= b.cap:
        return 0
    if (buf_grow(<void **>&b.msgs, cap * sizeof(mmsghdr)) < 0
            or buf_grow(<void **>&b.iov, 2 * cap * sizeof(iovec)) < 0
            or buf_grow(<void **>&b.addrs, cap * sizeof(sockaddr_in6)) < 0
            or buf_grow(<void **>&b.msg_v6, cap) < 0
            or buf_grow(<void **>&b.hdrs, cap * HDRS_STRIDE) < 0
            or buf_grow(<void **>&b.msg_pkt, cap * sizeof(int)) < 0
            or buf_grow(<void **>&b.msg_sock, cap * sizeof(int)) < 0
            or buf_grow(<void **>&b.smap, cap * sizeof(int)) < 0
            or buf_grow(<void **>&b.msg_segs, cap * sizeof(uint32_t)) < 0
            or buf_grow(<void **>&b.msg_wire, cap * sizeof(uint32_t)) < 0
            or buf_grow(<void **>&b.cmsg, cap * CMSG_STRIDE) < 0
            or buf_grow(<void **>&b.smsgs, cap * sizeof(mmsghdr)) < 0):
        return -1
    memset(b.msgs, 0, cap * sizeof(mmsghdr))
    memset(b.addrs, 0, cap * sizeof(sockaddr_in6))
    memset(b.msg_v6, 0, cap)
    memset(b.cmsg, 0, cap * CMSG_STRIDE)
    for i in range(cap):
        b.msgs[i].msg_hdr.msg_name = &b.addrs[i]
        b.msgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_in)
        b.msgs[i].msg_hdr.msg_iov = &b.iov[2 * i]
        b.addrs[i].sin6_family = AF_INET
    b.cap = cap
    return 0


cdef inline void txbuf_free(txbuf *b) noexcept nogil:
    free(b.slab); free(b.lens); free(b.dec); free(b.msgs); free(b.iov); free(b.addrs)
    free(b.msg_v6); free(b.hdrs); free(b.tapw); free(b.msg_pkt); free(b.tmatch); free(b.snap)
    free(b.msg_sock); free(b.msg_segs); free(b.msg_wire); free(b.cmsg); free(b.smsgs)
    free(b.smap); free(b.seghdr); free(b.segiov)
    memset(b, 0, sizeof(txbuf))


cdef inline int txbuf_init(txbuf *b, int batch, size_t slot, bint offload) noexcept nogil:
    memset(b, 0, sizeof(txbuf))
    b.slot = slot
    b.slab = <uint8_t *>malloc(batch * slot)
    b.lens = <uint32_t *>calloc(batch, sizeof(uint32_t))
    b.dec = <decision *>calloc(batch, sizeof(decision))
    b.tapw = <int *>calloc(batch, sizeof(int))
    b.tmatch = <uint8_t *>calloc(batch, 1)
    b.snap = <uint8_t *>malloc(batch * DECISION_SNAP)
    if (b.slab == NULL or b.lens == NULL or b.dec == NULL or b.tapw == NULL or b.tmatch == NULL
            or b.snap == NULL):
        return -1
    if offload:
        b.seghdr = <uint8_t *>malloc(<size_t>batch * GSO_MAX_SEGS * SEGH)
        b.segiov = <iovec *>malloc(<size_t>batch * GSO_MAX_SEGS * 2 * sizeof(iovec))
        if b.seghdr == NULL or b.segiov == NULL:
            return -1
    return txbuf_reserve(b, batch)


cdef inline void rxbuf_free(rxbuf *b) noexcept nogil:
    free(b.slab); free(b.msgs); free(b.iov); free(b.addrs); free(b.dec); free(b.out_fd)
    free(b.out_net); free(b.tmatch); free(b.cmsg); free(b.gso); free(b.dp); free(b.dlen)
    free(b.dsrc); free(b.dsport); free(b.dtrunc); free(b.gsegs); free(b.gruns); free(b.gorder)
    free(b.giov); free(b.dsuper); free(b.dvh); free(b.dsrc_hi); free(b.dsrc_lo); free(b.dext)
    free(b.mext); free(b.gidx); free(b.tscratch)
    memset(b, 0, sizeof(rxbuf))


cdef inline int rxbuf_init(rxbuf *b, int batch, size_t slot, bint offload) noexcept nogil:
    cdef int i
    cdef int dcap = batch * (RX_GRO_SEGS if offload else 1)
    memset(b, 0, sizeof(rxbuf))
    b.slot = slot
    b.dcap = dcap
    b.slab = <uint8_t *>malloc(batch * slot)
    b.msgs = <mmsghdr *>calloc(batch, sizeof(mmsghdr))
    b.iov = <iovec *>calloc(batch, sizeof(iovec))
    b.addrs = <sockaddr_in6 *>calloc(batch, sizeof(sockaddr_in6))
    b.gso = <uint32_t *>calloc(batch, sizeof(uint32_t))
    b.cmsg = <uint8_t *>calloc(batch, RX_CMSG)
    b.mext = <uint8_t *>calloc(batch, 1)
    b.dsrc_hi = <uint64_t *>calloc(dcap, sizeof(uint64_t))
    b.dsrc_lo = <uint64_t *>calloc(dcap, sizeof(uint64_t))
    b.dext = <uint8_t *>calloc(dcap, 1)
    b.dp = <uint8_t **>calloc(dcap, sizeof(uint8_t *))
    b.dlen = <uint32_t *>calloc(dcap, sizeof(uint32_t))
    b.dsrc = <uint32_t *>calloc(dcap, sizeof(uint32_t))
    b.dsport = <uint16_t *>calloc(dcap, sizeof(uint16_t))
    b.dtrunc = <uint8_t *>calloc(dcap, 1)
    b.dsuper = <uint8_t *>calloc(dcap, 1)
    b.dvh = <vnet_hdr *>calloc(dcap, sizeof(vnet_hdr))
    b.dec = <decision *>calloc(dcap, sizeof(decision))
    b.out_fd = <int *>calloc(dcap, sizeof(int))
    b.out_net = <net_t **>calloc(dcap, sizeof(net_t *))
    b.tmatch = <uint8_t *>calloc(dcap, 1)
    if (b.slab == NULL or b.msgs == NULL or b.iov == NULL or b.addrs == NULL or b.dec == NULL
            or b.out_fd == NULL or b.out_net == NULL or b.tmatch == NULL or b.gso == NULL
            or b.cmsg == NULL or b.dp == NULL or b.dlen == NULL or b.dsrc == NULL
            or b.dsport == NULL or b.dtrunc == NULL or b.dsuper == NULL or b.dvh == NULL
            or b.mext == NULL or b.dsrc_hi == NULL or b.dsrc_lo == NULL or b.dext == NULL):
        return -1
    b.giov = <iovec *>calloc(dcap + 2, sizeof(iovec))
    if b.giov == NULL:
        return -1
    if offload:
        b.gsegs = <gro_seg *>calloc(dcap, sizeof(gro_seg))
        b.gruns = <gro_run *>calloc(dcap, sizeof(gro_run))
        b.gorder = <uint32_t *>calloc(dcap, sizeof(uint32_t))
        b.gidx = <int *>calloc(dcap, sizeof(int))
        b.tscratch = <uint8_t *>malloc(GRO_MAX_FRAME)
        if (b.gsegs == NULL or b.gruns == NULL or b.gorder == NULL or b.gidx == NULL
                or b.tscratch == NULL):
            return -1
    for i in range(batch):
        b.iov[i].iov_base = b.slab + i * slot
        b.iov[i].iov_len = slot
        b.msgs[i].msg_hdr.msg_iov = &b.iov[i]
        b.msgs[i].msg_hdr.msg_iovlen = 1
        b.msgs[i].msg_hdr.msg_name = &b.addrs[i]
    return 0


cdef inline void rxbuf_rearm(rxbuf *b, int n, bint offload) noexcept nogil:
    cdef int i
    for i in range(n):
        b.msgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_in6)
        b.msgs[i].msg_hdr.msg_flags = 0
        b.msgs[i].msg_len = 0
        b.gso[i] = 0
        b.mext[i] = 0
        # control messages always (offloads off too): an IPv6 socket reports extension
        # headers and reassembly there
        b.msgs[i].msg_hdr.msg_control = b.cmsg + i * RX_CMSG
        b.msgs[i].msg_hdr.msg_controllen = RX_CMSG


cdef inline uint32_t rx_cmsgs(msghdr *h, uint8_t *ext) noexcept nogil:
    """The control messages of a received buffer: returns its UDP_GRO datagram size (0 if
    none); *ext = 1 if the IPv6 packet carried extension headers (hop-by-hop, routing,
    destination options: IPV6_RECV* on the socket; control data truncated counts too, only
    those can be long), 2 if it was reassembled from fragments (IPV6_RECVFRAGSIZE)."""
    cdef cmsghdr *c = CMSG_FIRSTHDR(h)
    cdef int v
    cdef uint32_t g = 0
    if h.msg_flags & MSG_CTRUNC:
        ext[0] = 1
    while c != NULL:
        if c.cmsg_level == SOL_UDP and c.cmsg_type == UDP_GRO:
            memcpy(&v, CMSG_DATA(c), sizeof(int))
            g = <uint32_t>v if v > 0 else 0
        elif c.cmsg_level == IPPROTO_IPV6:
            if (c.cmsg_type == IPV6_HOPOPTS or c.cmsg_type == IPV6_RTHDR
                    or c.cmsg_type == IPV6_DSTOPTS or c.cmsg_type == IPV6_RTHDRDSTOPTS):
                ext[0] = 1
            elif c.cmsg_type == IPV6_RECVFRAGSIZE and ext[0] == 0:
                ext[0] = 2
        c = CMSG_NXTHDR(h, c)
    return g


cdef inline void rx_split(rxbuf *b) noexcept nogil:
    """The b.n received buffers as datagrams: a UDP_GRO buffer of gso-sized datagrams (the
    last may be shorter) is cut at every gso bytes; anything else is one datagram."""
    cdef int i, nd = 0
    cdef uint32_t len_, g, off, k
    cdef uint8_t *p
    for i in range(b.n):
        p = b.slab + i * b.slot
        len_ = b.msgs[i].msg_len
        g = b.gso[i]
        if g == 0 or g >= len_:
            g = len_ if len_ else 1
        off = 0
        while True:
            if nd == b.dcap:
                b.nd = nd
                return          # cannot happen: dcap = batch * the kernel's segment limit
            k = len_ - off if len_ - off < g else g
            b.dp[nd] = p + off
            b.dlen[nd] = k
            sockaddr_key(&b.addrs[i], &b.dsrc_hi[nd], &b.dsrc_lo[nd], &b.dsrc[nd],
                         &b.dsport[nd])
            b.dext[nd] = b.mext[i]
            b.dtrunc[nd] = 1 if b.msgs[i].msg_hdr.msg_flags & MSG_TRUNC else 0
            nd += 1
            off += k
            if off >= len_:
                break
        b.nd = nd

