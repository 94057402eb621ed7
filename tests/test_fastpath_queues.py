"""fastpath/queues.pxd against its reference (queues_ref.py): which TAP queue a forwarding
thread of the multi-queue mode reads and writes, and counters that stay exact with threads."""
from __future__ import annotations

import pytest

from fastpath import queues_ref
from tests.fastpath_impls import Impl, impl

__all__ = ["impl"]


def test_constants_agree() -> None:
    from fastpath import queues
    assert queues.C_CONSTANTS["MAX_QUEUES"] == queues_ref.MAX_QUEUES


@pytest.mark.parametrize("nq,q,reads,fd", [
    (2, 0, True, 10), (2, 1, True, 11),      # each thread its own queue
    (1, 1, False, 10),                       # single-queue TAP: thread 1 never reads it,
    (1, 0, True, 10),                        # and writes to queue 0
    (0, 0, False, -1),                       # removed network: no fd at all
    (3, 2, True, 12), (3, 5, False, 10),
])
def test_queue_choice(impl: Impl, nq: int, q: int, reads: bool, fd: int) -> None:
    qfd = [10, 11, 12][:max(nq, 1)]
    assert impl.queues.queue_reads(nq, q) is reads
    assert impl.queues.queue_fd(qfd, nq, q) == fd


def test_cadd_counts_exactly_from_two_threads() -> None:
    """Two threads adding to one counter at once (GIL released): the multi-queue mode's
    atomic adds lose nothing; a single thread's plain adds count too."""
    import array
    import threading

    from fastpath import queues
    c = array.array("Q", [0])
    queues.cadd_many(c, 1000, False)
    assert c[0] == 1000
    n = 2_000_000
    th = [threading.Thread(target=queues.cadd_many, args=(c, n, True)) for _ in range(2)]
    for x in th:
        x.start()
    for x in th:
        x.join()
    assert c[0] == 1000 + 2 * n
