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
"""

from __future__ import annotations

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
                 backoff_initial: float = 0.05, backoff_max: float = 1.0) -> None:
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
            self.lease_id = lease.id
            self.reg_revision = int(resp.header.revision)
            self.registrations += 1
            self.last_ack = time.monotonic()
        self._wake.set()
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
        if lid is not None:
            client.revoke_lease(lid)

    # -- the thread ------------------------------------------------------------------------------

    def start(self, get_client: Callable[[float], pyetcd.MultiEndpointEtcd3Client | None]) -> None:
        """Keep the lease alive on `get_client(timeout)`'s channel (None: not connected yet)."""
        self._thread = threading.Thread(target=self._run, args=(get_client,),
                                        name=f"vxtap-lease-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        call = self._call
        if call is not None:
            call.cancel()
        if self._thread is not None:
            self._thread.join(timeout)

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
                call = client.leasestub.LeaseKeepAlive(
                    self._requests(stopped), credentials=client.call_credentials,
                    metadata=client.metadata)
                self._call = call
                if self._stop.is_set():
                    call.cancel()
                for resp in call:
                    delay = self.backoff_initial
                    lid = self.lease_id
                    if int(resp.ID) != lid:
                        continue                         # answer for a lease we replaced
                    if int(resp.TTL) > 0:
                        self.keepalives_acked += 1
                        self.last_ack = time.monotonic()
                        continue
                    log.warning("node %s: lease %x expired; registering again", self.name,
                                lid or 0)
                    self.lease_expiries += 1
                    self.register(client, unless_changed_from=lid)
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
