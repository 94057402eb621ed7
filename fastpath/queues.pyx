# cython: language_level=3, boundscheck=False, wraparound=False
"""Python wrappers over fastpath/queues.pxd, for tests. Same API as queues_ref.py."""
from libc.stdint cimport uint64_t

C_CONSTANTS = {"MAX_QUEUES": MAX_QUEUES}


def queue_reads(int nq, int q):
    return bool(q_reads(nq, q))


def queue_fd(qfd, int nq, int q):
    cdef int fds[MAX_QUEUES]
    cdef int i
    if len(qfd) > MAX_QUEUES:
        raise ValueError(f"at most {MAX_QUEUES} queues")
    for i in range(len(qfd)):
        fds[i] = qfd[i]
    return q_fd(fds, nq, q)


def cadd_many(uint64_t[::1] counter, int n, bint mt):
    """Add 1 to counter[0] n times with cadd, GIL released (several Python threads may run
    it at once on one counter: with mt every add must count)."""
    cdef int i
    with nogil:
        for i in range(n):
            cadd(&counter[0], 1, mt)
