"""Many agents' control planes in one process, on one etcd connection (the scale harness).

A real node runs ONE agent: `ControlPlane` with its own client, watch stream, lease thread
(control/sync.py). To simulate hundreds of nodes on a 2-core machine, what a process of many
simulated agents would otherwise have N times over (a gRPC channel each with its poller, a
watch stream and a keepalive stream each with a request thread, a control and a lease thread:
~5 threads per agent, GIL hand-offs every few ms) is shared here, and NOTHING of the agent's
own work is:

    hub = Hub(EtcdSettings.from_text(url))
    cps = [ControlPlane(settings, net, f"node{i}", hub=hub) for i in range(250)]
    for cp in cps: cp.bootstrap(); cp.start(sink, underlay=..., port=4789, tap_mac=...)
    ...; for cp in cps: cp.stop();  hub.close()

Shared by the agents of one hub:
  - one gRPC channel (one pyetcd client, one TCP connection);
  - one Watch stream carrying one etcd watch PER AGENT (etcd, or a grpc-proxy, still sees and
    serves every agent's watch, each from that agent's own revision; responses are dispatched
    by watch_id). Both etcd and grpc-proxy number a stream's watches 0, 1, 2, ... in the order
    of the create requests (pyetcd's protocol has no client-chosen watch_id), so the k-th
    create is watch k; the created answers themselves may come out of order (a proxy answers
    once its upstream watch for that start revision exists). A created answer we did not
    expect means that numbering broke: the stream is dropped and every agent resumes;
  - one LeaseKeepAlive stream (lease.KeepAliveMux) carrying each agent's own lease ID every
    TTL/3;
  - three threads: "watch" (reads the stream, runs each agent's apply of its own responses),
    "work" (each agent's steps before its watch: register, paged list, re-list; one agent at a
    time per worker thread, so cold starts are staggered), "keepalive" (the mux);
  - immutable parsed endpoint records (`tables.RecordCache`, by key + value + create_revision).
Done by each agent alone, with the same ControlPlane code as a real agent (`_prepare`,
`_relist`, `_on_watch_response`, `_apply`, own-key repair, lease expiry handling): its
bootstrap (config, block transaction), its node record on its own lease, its own paged list at
its own revision, its own LiveTables (key/node/MAC/IP indexes, installed set), its sink, its
status, its re-list after a compaction, its resume from its own revision after a reconnect.

Invariant that keeps one agent's state single-threaded: an agent has a job queued or running on
the work threads only while it has no watch on the current stream, and its events arrive only
on a watch created after its job finished.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyetcd  # type: ignore[import-untyped]
from pyetcd import etcdrpc  # type: ignore[import-untyped]

from .etcd import ETCD_ERRORS, EtcdSettings, close_quietly, connect, describe, prefix_end
from .lease import KeepAliveMux
from .tables import RecordCache

if TYPE_CHECKING:
    from .sync import ControlPlane

log = logging.getLogger(__name__)


@dataclass
class _Slot:
    need_list: bool = True
    queued: bool = False             # a job queued or running
    watch_id: int | None = None      # on the current stream
    pending: bool = False            # create sent, not answered yet


class Hub:
    """One etcd connection, watch stream, keepalive stream and 3 threads for many agents."""

    def __init__(self, settings: EtcdSettings, *, name: str = "hub", workers: int = 1,
                 backoff_initial: float = 0.05, backoff_max: float = 1.0,
                 probe_key: str = "/") -> None:
        from .sync import Backoff
        self.settings = settings
        self.name = name
        self.probe_key = probe_key
        self.records = RecordCache()
        self.leases = KeepAliveMux(self._wait_client_or_none, name=name,
                                   backoff_initial=backoff_initial, backoff_max=backoff_max)
        self._backoff = Backoff(backoff_initial, backoff_max)
        self._job_backoff = Backoff(backoff_initial, backoff_max)
        self._cond = threading.Condition()        # guards everything below
        self._client: pyetcd.MultiEndpointEtcd3Client | None = None
        self._url: str | None = None
        self._gen = 0                             # watch streams opened
        self._send: queue.SimpleQueue[Any] | None = None
        self._call: Any = None
        self._slots: dict[ControlPlane, _Slot] = {}
        self._by_watch: dict[int, ControlPlane] = {}
        self._expect: dict[int, ControlPlane] = {}   # watch_id -> agent, create not answered
        self._next_wid = 0
        self._jobs: deque[ControlPlane] = deque()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._watch_loop, daemon=True,
                                          name=f"vxtap-hub-watch-{name}")]
        self._threads += [threading.Thread(target=self._work_loop, daemon=True,
                                           name=f"vxtap-hub-work{i}-{name}")
                          for i in range(max(1, workers))]
        for t in self._threads:
            t.start()
        # counters (cumulative)
        self.reconnects = 0
        self.responses = 0

    # -- for ControlPlane --------------------------------------------------------------------

    def wait_client(self, timeout: float | None = None) -> tuple[pyetcd.MultiEndpointEtcd3Client,
                                                                  str]:
        """The hub's client once connected; ConnectionError (an ETCD_ERRORS) after `timeout`."""
        t = self.settings.timeout if timeout is None else timeout
        with self._cond:
            if self._client is None and not self._stop.is_set():
                self._cond.wait_for(lambda: self._client is not None or self._stop.is_set(), t)
            if self._client is None:
                raise ConnectionError(f"hub {self.name}: etcd not connected")
            return self._client, self._url or "?"

    def _wait_client_or_none(self, timeout: float) -> pyetcd.MultiEndpointEtcd3Client | None:
        try:
            return self.wait_client(timeout)[0]
        except ConnectionError:
            return None

    def attach(self, cp: ControlPlane) -> None:
        """cp.start() in hub mode: its first job (register, list) then its watch."""
        with self._cond:
            self._slots[cp] = _Slot()
            self._schedule(cp)

    def detach(self, cp: ControlPlane) -> None:
        """cp.stop(): its watch canceled; its lease is revoked by cp itself."""
        with self._cond:
            slot = self._slots.pop(cp, None)
            if slot is not None and slot.watch_id is not None:
                self._by_watch.pop(slot.watch_id, None)
                self._cancel(slot.watch_id)

    def agents(self) -> int:
        return len(self._slots)

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
            if self._send is not None:
                self._send.put(None)
            call = self._call
        if call is not None:
            call.cancel()
        self.leases.stop()
        for t in self._threads:
            t.join(timeout)
        with self._cond:
            client, self._client = self._client, None
        close_quietly(client)

    # -- internals (under self._cond unless said otherwise) -----------------------------------

    def _schedule(self, cp: ControlPlane, need_list: bool = False) -> None:
        slot = self._slots.get(cp)
        if slot is None:
            return
        slot.need_list = slot.need_list or need_list
        if not slot.queued:
            slot.queued = True
            self._jobs.append(cp)
            self._cond.notify_all()

    def _cancel(self, watch_id: int) -> None:
        if self._send is not None:
            self._send.put(etcdrpc.WatchRequest(
                cancel_request=etcdrpc.WatchCancelRequest(watch_id=watch_id)))

    def _create(self, cp: ControlPlane) -> None:
        root = cp.layout.root.encode()
        assert self._send is not None
        self._expect[self._next_wid] = cp
        self._next_wid += 1
        self._send.put(etcdrpc.WatchRequest(create_request=etcdrpc.WatchCreateRequest(
            key=root, range_end=prefix_end(root), start_revision=cp._rev + 1)))

    def _work_loop(self) -> None:
        """Each agent's steps before its watch (ControlPlane._prepare), one agent at a time."""
        from .sync import _compacted
        while not self._stop.is_set():
            with self._cond:
                self._cond.wait_for(lambda: (self._jobs and self._client is not None)
                                    or self._stop.is_set())
                if self._stop.is_set():
                    return
                cp = self._jobs.popleft()
                slot = self._slots.get(cp)
                if slot is None:
                    continue
                gen, client, url = self._gen, self._client, self._url or "?"
                need, slot.need_list = slot.need_list, False
            try:
                cp._use_client(client, url)
                cp._prepare(client, need)
            except Exception as e:  # noqa: BLE001 -- retried; a bug is logged, not fatal
                if self._stop.is_set():
                    return
                if not isinstance(e, ETCD_ERRORS):
                    log.exception("hub %s: node %s: start/re-list error", self.name, cp.node)
                elif not _compacted(e):
                    cp._disconnected(e)
                with self._cond:
                    slot.need_list = slot.need_list or need or _compacted(e)
                    if cp in self._slots:
                        self._jobs.append(cp)            # still queued: run again
                if not _compacted(e):
                    self._stop.wait(self._job_backoff.next())
                continue
            self._job_backoff.reset()
            with self._cond:
                if cp not in self._slots:
                    continue
                if gen != self._gen or self._send is None:
                    self._jobs.append(cp)                # reconnected meanwhile: again
                    continue
                slot.queued = False
                slot.pending = True
                self._create(cp)

    def _watch_loop(self) -> None:
        while not self._stop.is_set():
            client = None
            q: queue.SimpleQueue[Any] = queue.SimpleQueue()
            call: Any = None
            try:
                client, url = connect(self.settings, self.probe_key)

                def requests() -> Iterator[Any]:
                    while True:                # never half-close: grpc-proxy ends such watches
                        item = q.get()
                        if item is None:
                            return
                        yield item

                call = etcdrpc.WatchStub(client.channel).Watch(
                    requests(), credentials=client.call_credentials, metadata=client.metadata)
                with self._cond:
                    if self._gen:
                        self.reconnects += 1
                    self._gen += 1
                    self._client, self._url = client, str(url)
                    self._send, self._call = q, call
                    self._by_watch.clear()
                    self._expect.clear()
                    self._next_wid = 0
                    for cp, slot in self._slots.items():   # every agent resumes on this stream
                        slot.watch_id = None
                        slot.pending = False
                        self._schedule(cp)
                    self._cond.notify_all()
                if self._stop.is_set():
                    return
                for resp in call:
                    self._backoff.reset()
                    self._dispatch(client, resp)
                raise ConnectionError("hub watch stream ended")
            except Exception as e:  # noqa: BLE001 -- reconnect whatever it was
                if self._stop.is_set():
                    return
                if not isinstance(e, ETCD_ERRORS):
                    log.exception("hub %s: watch loop error; reconnecting", self.name)
                with self._cond:
                    if self._client is client:
                        self._client = None
                    self._send = None
                    self._call = None
                    agents = list(self._slots)
                for cp in agents:
                    cp._disconnected(e)
                log.warning("hub %s: etcd stream lost (%s); %d agents reconnecting", self.name,
                            describe(e), len(agents))
                self._stop.wait(self._backoff.next())
            finally:
                q.put(None)
                if call is not None:
                    call.cancel()
                if client is not None and self._client is not client:
                    close_quietly(client)

    def _dispatch(self, client: pyetcd.MultiEndpointEtcd3Client, resp: Any) -> None:
        """One response of the shared stream -> the agent whose watch it is."""
        from .sync import _Compacted, _WatchLost
        self.responses += 1
        wid = int(resp.watch_id)
        with self._cond:
            if resp.created:
                cp = self._expect.pop(wid, None)
                if cp is None:
                    raise ConnectionError(f"hub {self.name}: created answer for watch {wid} "
                                          f"we did not ask for (canceled: {resp.canceled}); "
                                          "resuming every agent on a new stream")
                slot = self._slots.get(cp)
                if slot is None:                         # stopped meanwhile
                    if not resp.canceled:
                        self._cancel(wid)
                    return
                slot.pending = False
                if not resp.canceled:
                    slot.watch_id = wid
                    self._by_watch[wid] = cp
            else:
                cp = self._by_watch.get(wid)
                if cp is None:
                    return                               # a watch we canceled
                slot = self._slots[cp]
        try:
            cp._on_watch_response(client, resp)
        except (_Compacted, _WatchLost) as e:
            log.info("hub %s: node %s: %s; %s", self.name, cp.node, e,
                     "listing again" if isinstance(e, _Compacted) else "watching again")
            with self._cond:
                self._drop_watch(cp, slot, wid, cancel=False)
                self._schedule(cp, need_list=isinstance(e, _Compacted))
        except Exception as e:  # noqa: BLE001 -- e.g. own-key repair failed: list again
            if not isinstance(e, ETCD_ERRORS):
                log.exception("hub %s: node %s: error applying a watch response", self.name,
                              cp.node)
            else:
                log.warning("hub %s: node %s: %s; listing again", self.name, cp.node,
                            describe(e))
            with self._cond:
                self._drop_watch(cp, slot, wid, cancel=True)
                self._schedule(cp, need_list=True)

    def _drop_watch(self, cp: ControlPlane, slot: _Slot, wid: int, *, cancel: bool) -> None:
        if self._by_watch.get(wid) is cp:
            del self._by_watch[wid]
            if cancel:
                self._cancel(wid)
        if slot.watch_id == wid:
            slot.watch_id = None

    def stats(self) -> dict[str, Any]:
        return {"agents": len(self._slots), "watches": len(self._by_watch),
                "jobs": len(self._jobs), "streams": self._gen, "reconnects": self.reconnects,
                "responses": self.responses, "leases": len(self.leases),
                "keepalive_streams": self.leases.streams, "records": len(self.records),
                "records_parsed": self.records.parsed, "records_shared": self.records.hits}
