"""The control thread: keeps the fast path's tables equal to etcd's view of the network.

1. bootstrap(): connect (URLs in order), read the network config (create it from the agent's
   flags if absent), take or reuse this node's address block. The agent needs the VNI and port
   before it builds its data plane, so this runs before the thread.
2. start(): the lease thread (control/lease.py) registers the node record on a fresh lease and
   keeps it alive over ONE long-lived LeaseKeepAlive stream, every TTL/3, whatever the table
   work does. The control thread lists the network prefix in pages at one revision
   (`list_prefix`), builds the indexes (`LiveTables`, control/tables.py), and opens ONE prefix
   watch stream from revision+1.
3. Each watch response changes only the keys it names: O(changed keys) per event, through the
   key / node / MAC / IP indexes of `LiveTables`; the resulting sink commands go to the sink.
   No polling, no timer on this thread.
4. Watch or connection lost: tables stay as they are (forwarding continues), the thread
   reconnects (backoff 0.05 s .. 1 s, so an agent is back well within 2 s of etcd answering
   again), logging once per state change, and resumes the watch from the last applied
   revision + 1. Lease gone: the lease thread registers again with a new lease.
5. Watch start revision compacted (or etcd's data replaced): list again, in pages at one
   revision, and apply only the difference.
6. Bad records are logged once per key and reason, counted, and left out; the sync goes on.
   A duplicate MAC or IP: the oldest record (lowest create_revision) wins.
7. Our own node key is watched like every other key: deleted, garbage, or a different record
   (a plain put also detaches it from our lease) -> restored on our lease, logged, counted
   (`own_key_repairs`).

API for drivers other than the agent (benchmarks/scale.py: many simulated agents per process)

    cp = ControlPlane(EtcdSettings.from_text(url), network, node, ttl=10,
                      on_applied=hook)          # hook(Applied) on the control thread
    cp.bootstrap()                              # config + block (control/ipam.py)
    cp.start(sink, underlay=..., port=4789, tap_mac=...)
    cp.wait_synced(timeout)                     # first list applied, watch running
    cp.status()                                 # dict, keys documented in control/README.md
    cp.stop()                                   # revokes the lease (revoke_on_stop=True)

- `sink` is any TableSink; `control.testing.CountingSink` counts calls and keeps nothing, so
  the REAL sync code runs with the fast path replaced.
- `on_applied(Applied)` is called after every watch response reached the sink, with
  `Applied(revision, keys, ops, t)`: the etcd keys the response changed, the number of sink
  commands, and `t = time.monotonic()` right after the last sink call (CLOCK_MONOTONIC is
  system-wide on Linux, so it compares across processes on one machine). Keep it cheap.
- Threads per ControlPlane, fixed whatever the table size: the control thread (list + watch +
  table work), the lease thread, and gRPC's own: one request-iterator thread per stream (watch,
  keepalive) and one poller per channel. So N agents in one process use about 5 N threads,
  all blocked in gRPC when idle; run a few hundred per process and more processes beyond.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import queue
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

import pyetcd  # type: ignore[import-untyped]
from pyetcd import events as etcd_events  # type: ignore[import-untyped]
from pyetcd import exceptions as etcd_exc  # type: ignore[import-untyped]

from . import endpoints as ep_store
from .etcd import ETCD_ERRORS, EtcdSettings, close_quietly, connect, describe
from .ipam import BlockPlan, take_block
from .keys import DEFAULT_PREFIX, Layout
from .records import (
    BlockRecord,
    EndpointRecord,
    NetworkConfig,
    NodeRecord,
    check_ifname,
    check_name,
)
from .tables import Snapshot, Tables, TableSink, apply_ops, desired, diff

log = logging.getLogger(__name__)

DEFAULT_NODE_TTL = 10   # seconds; the lease the node record is attached to


@dataclass
class SyncState:
    """Observability of the control thread. Fields are plain values, updated under a lock;
    read a consistent copy with `ControlPlane.status()`."""

    connected: bool = False
    etcd_url: str | None = None
    last_revision_applied: int = 0
    synced: bool = False            # first list applied
    resyncs: int = 0                # re-lists after the first (compaction)
    reconnects: int = 0             # successful connections after the first
    bad_records: int = 0            # bad (key, reason) pairs seen, each logged once
    bad_keys: int = 0               # keys currently skipped
    registrations: int = 0          # node record puts with a new lease
    sink_errors: int = 0
    fdb_entries: int = 0
    neigh_entries: int = 0
    last_error: str | None = None


class _Stop:
    pass


_STOP = _Stop()


class _WatchLost(Exception):
    pass


_RETRY_ERRORS: tuple[type[BaseException], ...] = (_WatchLost, *ETCD_ERRORS)


class Backoff:
    """Capped exponential backoff with +-20 % jitter."""

    def __init__(self, initial: float = 0.2, cap: float = 10.0) -> None:
        self.initial = initial
        self.cap = cap
        self._next = initial

    def reset(self) -> None:
        self._next = self.initial

    def next(self) -> float:
        delay = self._next
        self._next = min(self.cap, self._next * 2)
        return delay * random.uniform(0.8, 1.2)


class ControlPlane:
    """One network, one node: bootstrap(), then start(sink, ...), stop() at exit."""

    def __init__(self, settings: EtcdSettings, network: str, node: str, *,
                 prefix: str = DEFAULT_PREFIX, ttl: int = DEFAULT_NODE_TTL,
                 init_config: NetworkConfig | None = None,
                 backoff_initial: float = 0.2, backoff_max: float = 10.0,
                 revoke_on_stop: bool = True) -> None:
        if ttl < 2:
            raise ValueError(f"node lease TTL {ttl} must be >= 2 seconds")
        self.settings = settings
        self.layout = Layout(prefix, network)
        self.node = check_name(node, "node")
        self.ttl = ttl
        self.init_config = init_config
        self.revoke_on_stop = revoke_on_stop
        self._backoff = Backoff(backoff_initial, backoff_max)

        self._lock = threading.Lock()          # guards _client, _url, state
        self._client: pyetcd.MultiEndpointEtcd3Client | None = None
        self._url: str | None = None
        self.state = SyncState()

        self.config: NetworkConfig | None = None
        self.block: ipaddress.IPv4Network | None = None
        self._record: NodeRecord | None = None
        self._lease_id: int | None = None
        self._next_keepalive = 0.0
        self._reregister = False

        self._sink: TableSink | None = None
        self._snapshot = Snapshot(self.layout)
        self._applied = Tables()
        self._rev = 0
        self._cluster_id = 0
        self._logged_bad: dict[str, str] = {}
        self._config_warned: NetworkConfig | None = None

        self._stop = threading.Event()
        self._queue: queue.Queue[Any] | None = None
        self._watch_id: int | None = None
        self._thread: threading.Thread | None = None
        self._synced = threading.Event()
        self._ever_connected = False

    # -- public ----------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        with self._lock:
            return dataclasses.asdict(self.state)

    def bootstrap(self, timeout: float = 30.0) -> NetworkConfig:
        """Connect, read (or create) the network config, take/reuse the node's block.

        Retries etcd errors with backoff until `timeout`, then raises TimeoutError. Bad or missing
        config raises ValueError at once.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                client = self._connect()
                cfg = self._load_config(client)
                self.block = take_block(client, self.layout, cfg, self.node)
                self.config = cfg
                return cfg
            except ETCD_ERRORS as e:
                self._disconnected(e)
                delay = self._backoff.next()
                if time.monotonic() + delay > deadline:
                    raise TimeoutError(f"etcd not reachable at {self._urls_text()} within "
                                       f"{timeout:g}s: {describe(e)}") from None
                if self._stop.wait(delay):
                    raise TimeoutError("stopped during bootstrap") from None

    def start(self, sink: TableSink, *, underlay: str, port: int, tap_mac: str) -> None:
        """Start the control thread (after bootstrap()). Returns at once; see wait_synced()."""
        if self.config is None:
            raise RuntimeError("ControlPlane.start() before bootstrap()")
        self._record = NodeRecord(underlay=underlay, port=port, tap_mac=tap_mac)
        self._sink = sink
        self._thread = threading.Thread(target=self._run, name=f"vxtap-control-{self.node}",
                                        daemon=True)
        self._thread.start()

    def wait_synced(self, timeout: float | None = None) -> bool:
        """True once the first list is applied and the watch is running."""
        return self._synced.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread; revoke the node lease (others drop our endpoints now) if configured."""
        self._stop.set()
        q = self._queue
        if q is not None:
            q.put(_STOP)
        if self._thread is not None:
            self._thread.join(timeout)
        else:
            self._close_client()

    def plan(self) -> BlockPlan:
        if self.block is None or self.config is None:
            raise ValueError("control plane not ready: no address block yet")
        return BlockPlan(self.block, self.config.network)

    def client(self) -> pyetcd.MultiEndpointEtcd3Client:
        """The current etcd client, for the control socket handlers; ValueError if disconnected."""
        with self._lock:
            client = self._client
            connected = self.state.connected or self._thread is None
        if client is None or not connected:
            raise ValueError("etcd unavailable (agent is reconnecting); try again later")
        return client

    # endpoint operations used by the control socket handlers (control/agent.py)

    def endpoint_add(self, container_id: str, ifname: str, mac: str, ip: str,
                     gateway: str | None) -> dict[str, Any]:
        check_name(container_id, "container_id")
        check_ifname(ifname)
        if self.config is None:
            raise ValueError("control plane not ready: no network config yet")
        rec = ep_store.make_endpoint(self.config, self.node, mac, ip, gateway)
        return self._etcd_call(ep_store.put_endpoint, container_id, ifname, rec)

    def endpoint_del(self, container_id: str, ifname: str) -> dict[str, Any]:
        check_name(container_id, "container_id")
        check_ifname(ifname)
        return self._etcd_call(ep_store.delete_endpoint, container_id, ifname)

    def endpoint_get(self, container_id: str, ifname: str) -> dict[str, Any] | None:
        check_name(container_id, "container_id")
        check_ifname(ifname)
        return self._etcd_call(ep_store.get_endpoint, container_id, ifname)

    def endpoint_list(self) -> list[dict[str, Any]]:
        return self._etcd_call(ep_store.list_endpoints)

    def local_endpoints(self) -> dict[str, EndpointRecord]:
        """This node's endpoints as last seen by the watch (no etcd call)."""
        return {k: v for k, v in list(self._snapshot.endpoints.items()) if v.node == self.node}

    # -- connection --------------------------------------------------------------------------------

    def _urls_text(self) -> str:
        return ",".join(str(u) for u in self.settings.urls)

    def _connect(self) -> pyetcd.MultiEndpointEtcd3Client:
        with self._lock:
            if self._client is not None:
                return self._client
        client, url = connect(self.settings, self.layout.config)
        with self._lock:
            self._client, self._url = client, str(url)
        return client

    def _close_client(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        close_quietly(client)

    def _connected(self) -> None:
        with self._lock:
            was = self.state.connected
            self.state.connected = True
            self.state.etcd_url = self._url
            if not was and self._ever_connected:
                self.state.reconnects += 1
        if not was:
            log.info("etcd connected: %s (node %s, network %s)", self._url, self.node,
                     self.layout.network)
        self._ever_connected = True
        self._backoff.reset()

    def _disconnected(self, err: BaseException) -> None:
        text = describe(err)
        with self._lock:
            was = self.state.connected
            first_failure = self.state.last_error is None and not self._ever_connected
            self.state.connected = False
            self.state.last_error = text
        if was or first_failure:
            log.warning("etcd unavailable (%s): %s; keeping the last known tables, retrying with "
                        "backoff up to %gs", self._urls_text(), text, self._backoff.cap)
        self._close_client()

    def _etcd_call(self, fn: Any, *args: Any) -> Any:
        client = self.client()
        try:
            return fn(client, self.layout, *args)
        except ETCD_ERRORS as e:
            raise ValueError(f"etcd error: {describe(e)}") from None

    def _load_config(self, client: pyetcd.MultiEndpointEtcd3Client) -> NetworkConfig:
        if self.init_config is not None:
            created = client.put_if_not_exists(self.layout.config, self.init_config.to_json())
            if created:
                log.info("created network %s config %s", self.layout.network,
                         self.init_config.to_dict())
        cfg = ep_store.read_config(client, self.layout)
        if self.init_config is not None and cfg != self.init_config:
            log.warning("network %s: etcd has config %s, ignoring the one given (%s)",
                        self.layout.network, cfg.to_dict(), self.init_config.to_dict())
        return cfg

    # -- the thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        need_list = True
        try:
            while not self._stop.is_set():
                try:
                    client = self._connect()
                    if not need_list and self._store_replaced(client):
                        need_list = True
                    self._ensure_registered(client)
                    if need_list:
                        self._relist(client)
                        need_list = False
                    self._start_watch(client)
                    self._connected()
                    self._synced.set()
                    self._watch_loop(client)
                except etcd_exc.RevisionCompactedError as e:
                    log.info("watch from revision %d compacted (at %d): listing again",
                             self._rev + 1, e.compacted_revision)
                    self._cancel_watch()
                    need_list = True
                except _RETRY_ERRORS as e:
                    self._cancel_watch()
                    self._disconnected(e)
                    self._stop.wait(self._backoff.next())
                except Exception as e:  # a bug must not kill the agent's control plane silently
                    log.exception("control thread error; reconnecting")
                    self._cancel_watch()
                    self._disconnected(e)
                    self._stop.wait(self._backoff.next())
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        self._cancel_watch()
        with self._lock:
            client = self._client
        if client is not None and self.revoke_on_stop and self._lease_id is not None:
            try:
                client.revoke_lease(self._lease_id)
                log.info("node %s: lease revoked", self.node)
            except ETCD_ERRORS as e:
                log.info("node %s: lease not revoked (%s); it expires in %ds", self.node,
                         describe(e), self.ttl)
        self._close_client()
        with self._lock:
            self.state.connected = False

    def _register(self, client: pyetcd.MultiEndpointEtcd3Client) -> None:
        assert self._record is not None
        lease = client.lease(self.ttl)
        client.put(self.layout.node(self.node), self._record.to_json(), lease=lease.id)
        self._lease_id = lease.id
        self._next_keepalive = time.monotonic() + self.ttl / 3
        self._reregister = False
        with self._lock:
            self.state.registrations += 1
        self._reclaim_block(client)
        log.info("node %s registered: %s, lease %x ttl %ds", self.node, self._record.to_dict(),
                 lease.id, self.ttl)

    def _reclaim_block(self, client: pyetcd.MultiEndpointEtcd3Client) -> None:
        """Our block key must exist (it can vanish if etcd's data was replaced); put it back if
        it is free. Nothing is written when it is there."""
        if self.block is None:
            return
        key = self.layout.block(self.block)
        value = BlockRecord(self.node).to_json()
        ok, resp = client.transaction(compare=[client.transactions.create(key) == 0],
                                      success=[client.transactions.put(key, value)],
                                      failure=[client.transactions.get(key)])
        if ok:
            log.warning("node %s: block %s was missing in etcd; claimed it again", self.node,
                        self.block)
            return
        kvs = resp[0] if resp else []
        if kvs and kvs[0][0] != value:
            log.error("node %s: our block %s is now owned by another record %r; pods here may "
                      "get duplicate addresses", self.node, self.block, kvs[0][0][:200])

    def _keepalive(self, client: pyetcd.MultiEndpointEtcd3Client) -> bool:
        """Refresh the lease; False if it no longer exists."""
        if self._lease_id is None:
            return False
        resps = list(client.refresh_lease(self._lease_id))
        self._next_keepalive = time.monotonic() + self.ttl / 3
        return bool(resps) and resps[0].TTL > 0

    def _ensure_registered(self, client: pyetcd.MultiEndpointEtcd3Client) -> None:
        """On (re)connect or after our node key vanished: keep the lease if it is alive and the
        key is on it, else register again with a new lease."""
        if self._lease_id is not None and self._keepalive(client):
            value, meta = client.get(self.layout.node(self.node))
            assert self._record is not None
            if value == self._record.to_json() and meta.lease_id == self._lease_id:
                self._reregister = False
                return
            log.warning("node %s: record missing or changed in etcd; registering again", self.node)
        elif self._lease_id is not None:
            log.warning("node %s: lease %x expired; registering again", self.node, self._lease_id)
        self._register(client)

    def _store_replaced(self, client: pyetcd.MultiEndpointEtcd3Client) -> bool:
        """etcd's cluster ID changed or its revision is below ours: its data was restored or
        replaced. A watch from our revision would miss history or wait for the future, so list
        again instead."""
        header = client.get_response(self.layout.config).header
        rev, cluster = int(header.revision), int(header.cluster_id)
        if cluster != self._cluster_id or rev < self._rev:
            log.warning("etcd data replaced (cluster %x revision %d, was cluster %x revision %d):"
                        " listing again", cluster, rev, self._cluster_id, self._rev)
            return True
        return False

    def _relist(self, client: pyetcd.MultiEndpointEtcd3Client) -> None:
        resp = client.get_prefix_response(self.layout.root)
        kvs = [(kv.key.decode(errors="replace"), kv.value) for kv in resp.kvs]
        self._snapshot = Snapshot.from_kvs(self.layout, kvs)
        first = not self._synced.is_set()
        self._rev = resp.header.revision
        self._cluster_id = int(resp.header.cluster_id)
        self._reconcile()
        with self._lock:
            self.state.synced = True
            if not first:
                self.state.resyncs += 1
        log.info("listed %s at revision %d: %d nodes, %d endpoints", self.layout.root, self._rev,
                 len(self._snapshot.nodes), len(self._snapshot.endpoints))

    def _start_watch(self, client: pyetcd.MultiEndpointEtcd3Client) -> None:
        q: queue.Queue[Any] = queue.Queue()
        self._queue = q
        if self._stop.is_set():
            q.put(_STOP)
        self._watch_id = client.add_watch_prefix_callback(self.layout.root, q.put,
                                                          start_revision=self._rev + 1)

    def _cancel_watch(self) -> None:
        wid, self._watch_id = self._watch_id, None
        self._queue = None
        with self._lock:
            client = self._client
        if wid is not None and client is not None:
            try:
                client.cancel_watch(wid)
            except Exception as e:  # noqa: BLE001 -- the stream may already be gone
                log.debug("cancel watch %s: %s", wid, e)

    def _watch_loop(self, client: pyetcd.MultiEndpointEtcd3Client) -> None:
        q = self._queue
        assert q is not None
        while True:
            if self._reregister:
                self._ensure_registered(client)
            wait = self._next_keepalive - time.monotonic()
            if wait <= 0:
                if not self._keepalive(client):
                    log.warning("node %s: lease %x expired; registering again", self.node,
                                self._lease_id or 0)
                    self._register(client)
                continue
            try:
                item = q.get(timeout=wait)
            except queue.Empty:
                continue
            batch = [item]
            while True:                         # coalesce what is already there
                try:
                    batch.append(q.get_nowait())
                except queue.Empty:
                    break
            responses: list[Any] = []
            for item in batch:
                if item is _STOP:
                    return
                if isinstance(item, etcd_exc.RevisionCompactedError):
                    self._apply(responses)
                    raise item
                if isinstance(item, BaseException):
                    self._apply(responses)
                    raise _WatchLost(describe(item)) from item
                responses.append(item)
            self._apply(responses)

    def _apply(self, responses: list[Any]) -> None:
        if not responses:
            return
        node_key = self.layout.node(self.node)
        for resp in responses:
            for ev in resp.events:
                key = ev.key.decode(errors="replace")
                if isinstance(ev, etcd_events.DeleteEvent):
                    self._snapshot.delete(key)
                    if key == node_key:
                        self._reregister = True
                else:
                    self._snapshot.put(key, ev.value)
                self._rev = max(self._rev, ev.mod_revision)
        self._reconcile()

    def _reconcile(self) -> None:
        assert self._sink is not None
        new = desired(self._snapshot, self.node)
        ops = diff(self._applied, new)
        failed = apply_ops(self._sink, ops)
        self._applied = new
        bad = {**self._snapshot.bad, **new.skipped}
        fresh = {k: r for k, r in bad.items() if self._logged_bad.get(k) != r}
        for key, reason in sorted(fresh.items()):
            log.warning("skipping bad record %s: %s", key, reason)
        self._logged_bad = bad
        cfg = self._snapshot.config
        if cfg is not None and self.config is not None and cfg != self.config \
                and cfg != self._config_warned:
            log.warning("network %s config changed in etcd to %s; this agent keeps %s until "
                        "restarted", self.layout.network, cfg.to_dict(), self.config.to_dict())
            self._config_warned = cfg
        if ops:
            log.debug("revision %d: %d table commands", self._rev, len(ops))
        with self._lock:
            st = self.state
            st.last_revision_applied = self._rev
            st.bad_records += len(fresh)
            st.bad_keys = len(bad)
            st.sink_errors += failed
            st.fdb_entries = len(new.fdb)
            st.neigh_entries = len(new.neigh)
