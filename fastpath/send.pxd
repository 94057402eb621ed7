# The underlay send stage of the outbound loop, as inline C (no GIL, no Python): the messages
# a classified batch holds (txbuf, buffers.pxd) leave in as few syscalls as order allows.
#   send_raw (offloads off): one sendmmsg per run of messages of one family, on the raw IPv4
#     or IPv6 socket (outer headers written by the classification); order is kept.
#   send_pool (offloads on): one sendmmsg per pool socket, in message order within a socket
#     (a flow is never reordered); UDP_SEGMENT sends the kernel refuses are re-sent one
#     datagram each and UDP_SEGMENT stays off for that family from then on.
# A refused datagram is counted (send_error) and skipped, never retried in a loop. Counters:
# c is the network's; adds are atomic when several threads forward (mt, queues.pxd cadd).
# Plumbing only (syscalls and counting); what is sent is decided in switch.pyx.
from libc.stdint cimport uint64_t
from fastpath.includes.sys cimport mmsghdr, sendmmsg, errno, EINTR, EIO, EINVAL, EOPNOTSUPP
from fastpath.headers cimport IPV4_HLEN, UDP_HLEN
from fastpath.outer6 cimport IPV6_HLEN
from fastpath.queues cimport cadd
from fastpath.net cimport C_UDP_TX_PKTS, C_UDP_TX_BYTES, D_SEND_ERROR
from fastpath.buffers cimport txbuf


cdef inline void send_raw(txbuf *b, uint64_t *c, int raw_fd, int raw6_fd,
                          bint mt) noexcept nogil:
    """Offloads off: the batch's messages on the raw sockets, one sendmmsg per run of
    messages of one family (IPv4: raw_fd, IPv6: raw6_fd); order is kept."""
    cdef size_t sent = 0, end
    cdef int r, k, fd
    while sent < b.nmsg:
        end = sent + 1
        while end < b.nmsg and b.msg_v6[end] == b.msg_v6[sent]:
            end += 1
        fd = raw6_fd if b.msg_v6[sent] else raw_fd
        r = sendmmsg(fd, b.msgs + sent, end - sent, 0)
        if r < 0:
            if errno == EINTR:
                continue
            cadd(&c[D_SEND_ERROR], 1, mt)   # skip the datagram refused
            sent += 1
            continue
        for k in range(r):
            cadd(&c[C_UDP_TX_PKTS], 1, mt)
            cadd(&c[C_UDP_TX_BYTES], b.msgs[sent + k].msg_len, mt)
        sent += r


cdef inline void send_pool(txbuf *b, uint64_t *c, int npool, int *pool_fd, int npool6,
                           int *pool_fd6, int *udp_gso, int *udp_gso6, bint mt) noexcept nogil:
    """Offloads on: the batch's messages, one sendmmsg per pool socket (in message order
    within a socket, so a flow is never reordered). A UDP_SEGMENT send the kernel refuses
    (EIO: no checksum offload on the underlay route; EINVAL/EOPNOTSUPP) is re-sent one
    datagram per message, and UDP_SEGMENT stays off from then on (per address family)."""
    cdef int sk, k, r, fd, e, fam, nsk
    cdef size_t m, sent, j
    cdef mmsghdr one
    for sk in range(npool + npool6):
        fam = sk >= npool              # IPv4 sockets first, then the IPv6 ones
        nsk = sk - npool if fam else sk
        k = 0
        for m in range(b.nmsg):
            if b.msg_sock[m] == nsk and b.msg_v6[m] == fam:
                b.smsgs[k] = b.msgs[m]
                b.smap[k] = <int>m
                k += 1
        if k == 0:
            continue
        fd = pool_fd6[nsk] if fam else pool_fd[nsk]
        sent = 0
        while sent < <size_t>k:
            r = sendmmsg(fd, b.smsgs + sent, k - sent, 0)
            if r < 0:
                e = errno
                if e == EINTR:
                    continue
                m = b.smap[sent]
                if b.msg_segs[m] > 1 and (e == EIO or e == EINVAL or e == EOPNOTSUPP):
                    if fam:
                        udp_gso6[0] = 0
                    else:
                        udp_gso[0] = 0
                    one = b.msgs[m]
                    one.msg_hdr.msg_control = NULL
                    one.msg_hdr.msg_controllen = 0
                    for j in range(0, b.msgs[m].msg_hdr.msg_iovlen, 2):
                        one.msg_hdr.msg_iov = b.msgs[m].msg_hdr.msg_iov + j
                        one.msg_hdr.msg_iovlen = 2
                        if sendmmsg(fd, &one, 1, 0) == 1:
                            cadd(&c[C_UDP_TX_PKTS], 1, mt)
                            cadd(&c[C_UDP_TX_BYTES], (IPV6_HLEN if fam else IPV4_HLEN)
                                 + UDP_HLEN + one.msg_hdr.msg_iov[0].iov_len
                                 + one.msg_hdr.msg_iov[1].iov_len, mt)
                        else:
                            cadd(&c[D_SEND_ERROR], 1, mt)
                else:
                    cadd(&c[D_SEND_ERROR], 1, mt)   # skip the message refused
                sent += 1
                continue
            for j in range(<size_t>r):
                m = b.smap[sent + j]
                cadd(&c[C_UDP_TX_PKTS], b.msg_segs[m], mt)
                cadd(&c[C_UDP_TX_BYTES], b.msg_wire[m], mt)
            sent += r
