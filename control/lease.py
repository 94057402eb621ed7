"""The node lease: this node's record in etcd, on a lease kept alive by its own thread.

1. `register(client)`: grant a lease of `ttl` seconds, put the node record on it (one
   transaction-free put; the revision of that put is remembered as `reg_revision`).
2. The lease thread opens ONE LeaseKeepAlive bidirectional stream on the agent's channel and
   sends a keepalive every TTL/3 (pyetcd's `refresh_lease` opens a new stream per call; at
   5,000 agents with TTL 10 that is 1,500 streams/s). The requests come from a generator that
   only sleeps, so table work on the control thread cannot delay them (the GIL is released
   every few milliseconds; the sync never holds a lock the keepalive path needs).
3. A keepalive answered with TTL 0 (lease expired, e.g. an etcd outage longer than the TTL, or
   revoked): register again with a new lease, count it (`lease_expiries`), log it.
4. Stream broken (etcd gone, channel replaced after a reconnect): retry on the control plane's
   current channel with a short capped backoff; the first keepalive on the new stream tells
   whether the lease survived.
5. `repair(client)`: the control thread saw our key deleted or overwritten (garbage, another
   record, or a plain put that detached it from our lease): put our record back on our lease,
   or on a new one if it is gone.

Only `register`/`repair`/`revoke` write, always under `_lock`, so the two threads never
register twice for one loss.

Many agents in one process (control/hub.py, the scale harness): `NodeLease(..., mux=m)` puts
the lease on a `KeepAliveMux`, ONE LeaseKeepAlive stream and ONE reader thread carrying the
keepalives of every lease of the process, each still every TTL/3 for its own lease ID, each
answer handled by the same `_on_keepalive_response` as above (expiry -> register again).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc  # type: ignore[import-untyped]
import pyetcd  # type: ignore[import-untyped]
from pyetcd import etcdrpc  # type: ignore[import-untyped]

from .etcd import ETCD_ERRORS, describe

log = logging.getLogger(__name__)

KEEPALIVES_PER_TTL = 3


class NodeLease:
    """`key` = `value` on a lease of `ttl` seconds, kept alive by `start()`'s thread."""

    def __init__(self, key: str, value: bytes, ttl: int, *, name: str,
                 backoff_initial: float = 0.05, backoff_max: float = 1.0,
                 mux: KeepAliveMux | None = None) -> None:
        self.key = key
        self.value = value
        self.ttl = ttl
        self.name = name
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.lease_id: int | None = None
        self.reg_revision = 0               # mod revision of our latest put of the record
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()      # lease changed or stopping: send now
        self._thread: threading.Thread | None = None
        self._call: Any = None
        self._mux = mux
        # counters (cumulative), read with counters()
        self.registrations = 0
        self.lease_expiries = 0
        self.keepalives_sent = 0
        self.keepalives_acked = 0
        self.stream_restarts = 0
        self.last_ack = 0.0                 # time.monotonic() of the last TTL>0 answer

    def counters(self) -> dict[str, Any]:
        age = time.monotonic() - self.last_ack if self.last_ack else None
        return {"registrations": self.registrations, "lease_expiries": self.lease_expiries,
                "keepalives_sent": self.keepalives_sent,
                "keepalives_acked": self.keepalives_acked,
                "keepalive_stream_restarts": self.stream_restarts,
                "lease_id": None if self.lease_id is None else format(self.lease_id, "x"),
                "last_keepalive_age_s": None if age is None else round(age, 3)}

    # -- writes (any thread) ---------------------------------------------------------------------

    def register(self, client: pyetcd.MultiEndpointEtcd3Client, *,
                 unless_changed_from: int | None = -1) -> None:
        """Grant a new lease and put the record on it. With `unless_changed_from`, do nothing if
        another thread already replaced that lease (two threads saw the same loss)."""
        with self._lock:
            if unless_changed_from != -1 and self.lease_id != unless_changed_from:
                return
            lease = client.lease(self.ttl)
            resp = client.put(self.key, self.value, lease=lease.id)
            old, self.lease_id = self.lease_id, lease.id
            self.reg_revision = int(resp.header.revision)
            self.registrations += 1
            self.last_ack = time.monotonic()
        self._wake.set()
        if self._mux is not None:
            self._mux.rekey(self, old, lease.id)
        log.info("node %s registered: lease %x ttl %ds", self.name, lease.id, self.ttl)

    def repair(self, client: pyetcd.MultiEndpointEtcd3Client) -> None:
        """Put our record back on our lease (a new lease if ours is gone)."""
        with self._lock:
            lid = self.lease_id
            if lid is not None:
                try:
                    resp = client.put(self.key, self.value, lease=lid)
                    self.reg_revision = int(resp.header.revision)
                    return
                except ETCD_ERRORS as e:
                    if "lease not found" not in describe(e):
                        raise
        log.warning("node %s: lease %x is gone; registering again", self.name, lid or 0)
        self.lease_expiries += 1
        self.register(client, unless_changed_from=lid)

    def current(self, present: bool, value: bytes, lease: int, mod_revision: int) -> bool:
        """True if the key state seen at `mod_revision` needs no repair: it predates our latest
        put (history), or it is our record on our lease. Under the lock, so a registration in
        progress on the lease thread finishes first."""
        with self._lock:
            if mod_revision <= self.reg_revision:
                return True
            return present and value == self.value and lease == self.lease_id

    def alive(self, client: pyetcd.MultiEndpointEtcd3Client) -> bool:
        """One unary TimeToLive: is our lease still there?"""
        lid = self.lease_id
        if lid is None:
            return False
        return int(client.get_lease_info(lid).TTL) > 0

    def revoke(self, client: pyetcd.MultiEndpointEtcd3Client) -> None:
        with self._lock:
            lid, self.lease_id = self.lease_id, None
        if self._mux is not None:
            self._mux.remove(self)
        if lid is not None:
            client.revoke_lease(lid)

    # -- the thread ------------------------------------------------------------------------------

    def start(self, get_client: Callable[[float], pyetcd.MultiEndpointEtcd3Client | None]) -> None:
        """Keep the lease alive on `get_client(timeout)`'s channel (None: not connected yet).
        With a mux: join its shared stream instead (no thread of our own)."""
        if self._mux is not None:
            self._mux.add(self)
            return
        self._thread = threading.Thread(target=self._run, args=(get_client,),
                                        name=f"vxtap-lease-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._mux is not None:
            self._mux.remove(self)
        _close_keepalive(self, timeout)

    def _requests(self, stopped: threading.Event) -> Iterator[Any]:
        """Runs on gRPC's request thread: one keepalive now, then every TTL/3 or on a wake."""
        interval = self.ttl / KEEPALIVES_PER_TTL
        while not stopped.is_set() and not self._stop.is_set():
            lid = self.lease_id
            if lid is not None:
                self.keepalives_sent += 1
                yield etcdrpc.LeaseKeepAliveRequest(ID=lid)
            self._wake.wait(interval)
            self._wake.clear()

    def _run(self, get_client: Callable[[float], pyetcd.MultiEndpointEtcd3Client | None]) -> None:
        delay = self.backoff_initial
        first = True
        while not self._stop.is_set():
            client = get_client(0.5)
            if client is None:
                continue
            stopped = threading.Event()
            try:
                if self.lease_id is None:
                    self.register(client, unless_changed_from=None)
                if not first:
                    self.stream_restarts += 1
                first = False
                call = _open_keepalive(self, client, self._requests(stopped))
                for resp in call:
                    delay = self.backoff_initial
                    self._on_keepalive_response(client, resp)
            except grpc.RpcError as e:
                if self._stop.is_set():
                    break
                log.debug("node %s: keepalive stream: %s", self.name, describe(e))
            except (*ETCD_ERRORS, ValueError) as e:   # ValueError: channel closed by a reconnect
                log.debug("node %s: lease: %s", self.name, describe(e))
            except Exception:  # noqa: BLE001 -- never let the lease thread die silently
                log.exception("node %s: lease thread error", self.name)
            finally:
                stopped.set()
                self._wake.set()
                self._call = None
            if self._stop.wait(delay):
                break
            delay = min(self.backoff_max, delay * 2)

    def _on_keepalive_response(self, client: pyetcd.MultiEndpointEtcd3Client, resp: Any) -> None:
        """One LeaseKeepAlive answer (own stream or a mux's): TTL 0 -> register again."""
        lid = self.lease_id
        if int(resp.ID) != lid:
            return                                   # answer for a lease we replaced
        if int(resp.TTL) > 0:
            self.keepalives_acked += 1
            self.last_ack = time.monotonic()
            return
        log.warning("node %s: lease %x expired; registering again", self.name, lid or 0)
        self.lease_expiries += 1
        self.register(client, unless_changed_from=lid)


class KeepAliveMux:
    """ONE LeaseKeepAlive stream (and one reader thread) for the node leases of many agents of
    one process: each lease still gets its keepalive every TTL/3 for its own ID (a heap of due
    times), immediately after a (re)registration, and on every new stream; each answer goes to
    its lease's `_on_keepalive_response`. Stream broken: reopened on `get_client()`'s channel
    with capped backoff, every lease's keepalive sent at once on the new stream."""

    def __init__(self, get_client: Callable[[float], pyetcd.MultiEndpointEtcd3Client | None], *,
                 name: str = "mux", backoff_initial: float = 0.05,
                 backoff_max: float = 1.0) -> None:
        self._get_client = get_client
        self.name = name
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._cond = threading.Condition()
        self._due: dict[NodeLease, float] = {}          # lease -> when its next keepalive goes
        self._heap: list[tuple[float, int, NodeLease]] = []
        self._seq = itertools.count()
        self._by_id: dict[int, NodeLease] = {}
        self._stop = threading.Event()
        self._call: Any = None
        self._thread: threading.Thread | None = None
        self.streams = 0                                # streams opened (cumulative)

    def __len__(self) -> int:
        return len(self._due)

    def _push(self, lease: NodeLease, when: float) -> None:
        self._due[lease] = when
        heapq.heappush(self._heap, (when, next(self._seq), lease))
        self._cond.notify()

    def add(self, lease: NodeLease) -> None:
        with self._cond:
            if lease.lease_id is not None:
                self._by_id[lease.lease_id] = lease
            self._push(lease, 0.0)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name=f"vxtap-keepalive-{self.name}")
                self._thread.start()

    def remove(self, lease: NodeLease) -> None:
        with self._cond:
            self._due.pop(lease, None)
            for lid in [k for k, v in self._by_id.items() if v is lease]:
                del self._by_id[lid]

    def rekey(self, lease: NodeLease, old: int | None, new: int) -> None:
        """`lease` registered again: answers for `new` are its; send its keepalive now."""
        with self._cond:
            if old is not None and self._by_id.get(old) is lease:
                del self._by_id[old]
            if lease in self._due:
                self._by_id[new] = lease
                self._push(lease, 0.0)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        _close_keepalive(self, timeout)

    def _requests(self, stopped: threading.Event) -> Iterator[Any]:
        """On gRPC's request thread: the keepalives that are due, in due order."""
        while True:
            with self._cond:
                out = []
                while not stopped.is_set() and not self._stop.is_set():
                    now = time.monotonic()
                    heap = self._heap
                    while heap and heap[0][0] <= now:
                        when, _, lease = heapq.heappop(heap)
                        if self._due.get(lease) != when:
                            continue                      # stale entry (rescheduled, removed)
                        self._push(lease, now + lease.ttl / KEEPALIVES_PER_TTL)
                        if lease.lease_id is not None:
                            out.append(lease)
                    if out:
                        break
                    self._cond.wait(min(1.0, heap[0][0] - now) if heap else 1.0)
                if not out:
                    return
            for lease in out:
                lid = lease.lease_id
                if lid is not None:
                    lease.keepalives_sent += 1
                    yield etcdrpc.LeaseKeepAliveRequest(ID=lid)

    def _run(self) -> None:
        delay = self.backoff_initial
        while not self._stop.is_set():
            client = self._get_client(0.5)
            if client is None:
                continue
            stopped = threading.Event()
            try:
                with self._cond:
                    leases = list(self._due)
                    if self.streams:
                        for lease in leases:
                            lease.stream_restarts += 1
                    for lease in leases:                 # everyone's keepalive at once
                        self._push(lease, 0.0)
                self.streams += 1
                call = _open_keepalive(self, client, self._requests(stopped))
                for resp in call:
                    delay = self.backoff_initial
                    lease = self._by_id.get(int(resp.ID))
                    if lease is not None:
                        try:
                            lease._on_keepalive_response(client, resp)
                        except ETCD_ERRORS as e:         # re-registration failed: next answer
                            log.warning("node %s: registering again failed: %s", lease.name,
                                        describe(e))
            except grpc.RpcError as e:
                if self._stop.is_set():
                    break
                log.debug("keepalive mux %s: stream: %s", self.name, describe(e))
            except (*ETCD_ERRORS, ValueError) as e:
                log.debug("keepalive mux %s: %s", self.name, describe(e))
            except Exception:  # noqa: BLE001 -- never let the lease thread die silently
                log.exception("keepalive mux %s: thread error", self.name)
            finally:
                stopped.set()
                with self._cond:
                    self._cond.notify_all()
                self._call = None
            if self._stop.wait(delay):
                break
            delay = min(self.backoff_max, delay * 2)


def _open_keepalive(owner: NodeLease | KeepAliveMux, client: pyetcd.MultiEndpointEtcd3Client,
                    requests: Iterator[Any]) -> Any:
    """Open a LeaseKeepAlive stream, kept in ``owner._call`` so that ``owner.stop()`` can cancel
    it; cancelled at once if the stop came while it was being opened."""
    call = client.leasestub.LeaseKeepAlive(requests, credentials=client.call_credentials,
                                           metadata=client.metadata)
    owner._call = call
    if owner._stop.is_set():
        call.cancel()
    return call


def _close_keepalive(owner: NodeLease | KeepAliveMux, timeout: float) -> None:
    """The end of ``owner.stop()``, once ``owner._stop`` is set and its request generator woken:
    cancel the stream _open_keepalive opened (the thread's ``for resp in call`` then ends) and
    wait up to `timeout` seconds for the thread."""
    call = owner._call
    if call is not None:
        call.cancel()
    if owner._thread is not None:
        owner._thread.join(timeout)
