"""Reference for fastpath/queues.pxd: which TAP queue a forwarding thread uses (multi-queue).

A network's TAP has `nq` queue fds (`qfd[0..nq-1]`); forwarding thread `q` reads queue q only
if the TAP has it (so no two threads read one queue and a flow is never reordered), and
writes inbound frames to its own queue if the TAP has it, else to queue 0.
"""
from __future__ import annotations

from collections.abc import Sequence

MAX_QUEUES = 8


def queue_reads(nq: int, q: int) -> bool:
    return q < nq


def queue_fd(qfd: Sequence[int], nq: int, q: int) -> int:
    if nq <= 0:
        return -1
    return qfd[q] if q < nq else qfd[0]
