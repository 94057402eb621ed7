# Multi-queue forwarding (`--threads multi`), as inline C (no GIL, no Python): which TAP queue
# fd a forwarding thread uses, and counter updates that stay exact when several threads
# forward for one network. Rules: queues_ref.py (the reference; tests run both).
#
# The model: a network's TAP is opened with IFF_MULTI_QUEUE, one fd per queue; the kernel
# puts a flow's frames on one queue (tun's flow table: the queue its reverse direction was
# last written to, else the flow hash), and forwarding thread q reads only queue q, so a flow
# is read by one thread, in order. A network whose TAP has fewer queues than there are
# threads (an adopted single-queue TAP) is read by threads 0..nq-1 only: two threads never
# read one queue. Writes (inbound frames) go to the thread's own queue when the network has
# it, else queue 0 (a write to any queue fd enters the same device).
#
# Counters: fields written inside the table lock (the classification) need nothing more;
# the few written outside it (TAP write results, send results, loop statistics) use cadd,
# a relaxed atomic add when the switch runs several threads (mt), a plain add otherwise.
from libc.stdint cimport uint64_t

cdef extern from *:
    uint64_t __atomic_fetch_add(uint64_t *p, uint64_t v, int order) nogil
    int __ATOMIC_RELAXED

cdef enum:
    MAX_QUEUES = 8           # TAP queues / forwarding threads per switch (implementation cap)


cdef inline int q_reads(int nq, int q) noexcept nogil:
    """Does thread q read a TAP with nq queues?"""
    return q < nq


cdef inline int q_fd(const int *qfd, int nq, int q) noexcept nogil:
    """The fd thread q reads (when q_reads) and writes inbound frames to; -1 without one."""
    if nq <= 0:
        return -1
    return qfd[q] if q < nq else qfd[0]


cdef inline void cadd(uint64_t *p, uint64_t v, bint mt) noexcept nogil:
    if mt:
        __atomic_fetch_add(p, v, __ATOMIC_RELAXED)
    else:
        p[0] += v
