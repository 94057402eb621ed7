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

import ctypes
import dataclasses
import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc  # type: ignore[import-untyped]
import pyetcd  # type: ignore[import-untyped]
from pyetcd import etcdrpc  # type: ignore[import-untyped]
from pyetcd.etcdrpc import kv_pb2  # type: ignore[import-untyped]

from . import endpoints as ep_store
from .etcd import ETCD_ERRORS, EtcdSettings, close_quietly, connect, describe, prefix_end
from .ipam import BlockPlan, take_block
from .keys import DEFAULT_PREFIX, Layout
from .lease import NodeLease
from .session import Backoff, EtcdSession  # noqa: F401 -- Backoff: also for hub.py
from .records import BlockRecord, EndpointRecord, NetworkConfig, NodeRecord, check_ifname, check_name
from .tables import LiveTables, Snapshot, TableSink, apply_ops, diff_live

if TYPE_CHECKING:
    from .hub import Hub

log = logging.getLogger(__name__)

DEFAULT_NODE_TTL = 10   # seconds; the lease the node record is attached to
PAGE_SIZE = 5000        # keys per range page; ~1.2 MB at typical record sizes (see etcd.py)
PUT = kv_pb2.Event.PUT
DELETE = kv_pb2.Event.DELETE


@dataclass
class SyncState:
    """Observability of the control thread. Plain values, updated under a lock; read a
    consistent copy with `ControlPlane.status()`. Names are stable (control/README.md):
    "cumulative" ones only grow (export them as Prometheus counters), the others are gauges."""

    connected: bool = False
    etcd_url: str | None = None
    last_revision_applied: int = 0
    synced: bool = False            # first list applied
    resyncs: int = 0                # cumulative: re-lists after the first (compaction, restore)
    reconnects: int = 0             # cumulative: successful connections after the first
    bad_records: int = 0            # cumulative: bad (key, reason) pairs seen, each logged once
    bad_keys: int = 0               # keys currently skipped (bad value, unknown node, duplicate)
    registrations: int = 0          # cumulative: node record puts on a new lease
    lease_expiries: int = 0         # cumulative: our lease found gone while we ran
    own_key_repairs: int = 0        # cumulative: our node key restored after a delete/overwrite
    sink_errors: int = 0            # cumulative
    watch_events: int = 0           # cumulative: etcd events applied
    sink_ops: int = 0               # cumulative: table commands sent to the sink
    list_pages: int = 0             # cumulative: range pages read by lists
    last_list_seconds: float = 0.0  # duration of the last full list + apply
    fdb_entries: int = 0
    neigh_entries: int = 0
    last_error: str | None = None   # the last etcd error; None again once reconnected


# The cumulative keys of status() (only grow; export as Prometheus counters `..._total`).
# Every other numeric key is a gauge. Names are stable; control/README.md documents each.
STATUS_COUNTERS = frozenset({
    "resyncs", "reconnects", "bad_records", "registrations", "lease_expiries", "own_key_repairs",
    "sink_errors", "watch_events", "sink_ops", "list_pages", "keepalives_sent",
    "keepalives_acked", "keepalive_stream_restarts"})


@dataclass(frozen=True)
class Applied:
    """What `on_applied` receives after each watch response reached the sink."""

    revision: int
    keys: tuple[str, ...]           # the etcd keys the response changed
    ops: int                        # sink commands sent
    t: float                        # time.monotonic() right after the last sink call


class _WatchLost(Exception):
    pass


class _Compacted(Exception):
    def __init__(self, revision: int) -> None:
        super().__init__(f"revision compacted at {revision}")
        self.revision = revision


_RETRY_ERRORS: tuple[type[BaseException], ...] = (_WatchLost, *ETCD_ERRORS)


def _compacted(err: BaseException) -> bool:
    return isinstance(err, grpc.RpcError) and "compacted" in describe(err)


def list_prefix(client: pyetcd.MultiEndpointEtcd3Client, ranges: list[tuple[bytes, bytes]],
                page_size: int = PAGE_SIZE,
                on_page: Callable[[], None] | None = None) -> tuple[Iterator[Any], list[int]]:
    """Read `ranges` (key, range_end) in pages of at most `page_size` keys, every page at the
    revision of the first one, so the result is one consistent snapshot. Returns
    (iterator of KeyValue protos, [revision, cluster_id]); the list is filled in by the first
    page. A page refused as too large (RESOURCE_EXHAUSTED) is asked again with half the limit.
    A revision compacted mid-list raises the gRPC error (the caller lists again from scratch).
    """
    header = [0, 0]

    def fetch(key: bytes, end: bytes, limit: int) -> Any:
        req = etcdrpc.RangeRequest(key=key, range_end=end, limit=limit, revision=header[0])
        return client.kvstub.Range.future(req, client.timeout,
                                          credentials=client.call_credentials,
                                          metadata=client.metadata)

    def pages() -> Iterator[Any]:
        # The next page is asked for before this one is handed out, so etcd reads it while
        # the caller parses (they run on different cores).
        limit = page_size
        pending: Any = None
        try:
            for start, end in ranges:
                key = start
                pending = fetch(key, end, limit)
                while True:
                    try:
                        resp = pending.result()
                    except grpc.RpcError as e:
                        if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and limit > 1:
                            limit = max(1, limit // 2)
                            log.warning("range page too large (%s); %d keys per page now",
                                        describe(e), limit)
                            pending = fetch(key, end, limit)
                            continue
                        raise
                    pending = None
                    if not header[0]:
                        header[0] = int(resp.header.revision)
                        header[1] = int(resp.header.cluster_id)
                    if on_page is not None:
                        on_page()
                    more = resp.more and len(resp.kvs) > 0
                    if more:
                        key = resp.kvs[-1].key + b"\0"
                        pending = fetch(key, end, limit)
                    yield from resp.kvs
                    if not more:
                        break
        finally:
            if pending is not None:
                pending.cancel()
    return pages(), header


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


_malloc_trim = _load_malloc_trim()


def _trim_heap() -> None:
    """After a list: give the pages' transient memory (protobuf, JSON) back to the OS, so RSS
    shows the tables, not the peak (glibc only; elsewhere a no-op)."""
    if _malloc_trim is not None:
        _malloc_trim(0)


class ControlPlane(EtcdSession):
    """One network, one node: bootstrap(), then start(sink, ...), stop() at exit. The etcd
    session (state on connect/disconnect, backoff, retries): control/session.py."""

    status_counters = STATUS_COUNTERS       # cumulative status() fields (dataplane/metrics.py)
    _log = log

    def __init__(self, settings: EtcdSettings, network: str, node: str, *,
                 prefix: str = DEFAULT_PREFIX, ttl: int = DEFAULT_NODE_TTL,
                 init_config: NetworkConfig | None = None,
                 backoff_initial: float = 0.05, backoff_max: float = 1.0,
                 revoke_on_stop: bool = True, page_size: int = PAGE_SIZE,
                 on_applied: Callable[[Applied], None] | None = None,
                 hub: Hub | None = None) -> None:
        if ttl < 2:
            raise ValueError(f"node lease TTL {ttl} must be >= 2 seconds")
        if page_size < 1:
            raise ValueError(f"page size {page_size} must be >= 1")
        self.settings = settings
        self.layout = Layout(prefix, network)
        self.node = check_name(node, "node")
        self.ttl = ttl
        self.init_config = init_config
        self.revoke_on_stop = revoke_on_stop
        self.page_size = page_size
        self.on_applied = on_applied
        self._hub = hub
        self._backoff = Backoff(backoff_initial, backoff_max)

        self._lock = threading.Lock()          # guards _client, _url, state
        self._client_ready = threading.Condition(self._lock)
        self._client: pyetcd.MultiEndpointEtcd3Client | None = None
        self._url: str | None = None
        self.state = SyncState()

        self.config: NetworkConfig | None = None
        self.block: ipaddress.IPv4Network | None = None
        self._record: NodeRecord | None = None
        self._lease: NodeLease | None = None
        self._own_key = self.layout.node(self.node).encode()
        self._own_seen: tuple[int, bytes, int, int] | None = None  # (type, value, lease, mod_rev)

        self._sink: TableSink | None = None
        self._live = LiveTables(self.layout, self.node, None if hub is None else hub.records)
        self._rev = 0
        self._cluster_id = 0
        self._logged_bad: dict[str, str] = {}
        self._config_warned: NetworkConfig | None = None

        self._stop = threading.Event()
        self._watch_call: Any = None
        self._thread: threading.Thread | None = None
        self._synced = threading.Event()
        self._ever_connected = False

    # -- public ----------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        with self._lock:
            out = dataclasses.asdict(self.state)
        lease = self._lease
        if lease is not None:
            c = lease.counters()
            out["registrations"] = c.pop("registrations")
            out["lease_expiries"] += c.pop("lease_expiries")
            out.update(c)
        return out

    @property
    def _lease_id(self) -> int | None:
        return None if self._lease is None else self._lease.lease_id

    def bootstrap(self, timeout: float = 30.0) -> NetworkConfig:
        """Connect, read (or create) the network config, take/reuse the node's block.

        Retries etcd errors with backoff until `timeout`, then raises TimeoutError. Bad or missing
        config raises ValueError at once.
        """
        def attempt(client: pyetcd.MultiEndpointEtcd3Client) -> NetworkConfig:
            cfg = self._load_config(client)
            self.block = take_block(client, self.layout, cfg, self.node)
            return cfg
        self.config = self._retry(attempt, timeout, "bootstrap")
        return self.config

    def start(self, sink: TableSink, *, underlay: str, port: int, tap_mac: str) -> None:
        """Start the control thread (after bootstrap()). Returns at once; see wait_synced()."""
        if self.config is None:
            raise RuntimeError("ControlPlane.start() before bootstrap()")
        self._record = NodeRecord(underlay=underlay, port=port, tap_mac=tap_mac)
        hub = self._hub
        self._lease = NodeLease(self.layout.node(self.node), self._record.to_json(), self.ttl,
                                name=self.node, backoff_initial=self._backoff.initial,
                                backoff_max=self._backoff.cap,
                                mux=None if hub is None else hub.leases)
        self._sink = sink
        if hub is not None:          # no thread of our own: the hub's run our steps
            hub.attach(self)
            return
        self._thread = threading.Thread(target=self._run, name=f"vxtap-control-{self.node}",
                                        daemon=True)
        self._thread.start()

    def wait_synced(self, timeout: float | None = None) -> bool:
        """True once the first list is applied and the watch is running."""
        return self._synced.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the threads; revoke the node lease (others drop our endpoints now) if configured."""
        self._stop.set()
        with self._client_ready:
            self._client_ready.notify_all()
        if self._hub is not None:
            self._hub.detach(self)
            if self._lease is not None:
                self._shutdown()
            return
        call = self._watch_call
        if call is not None:
            call.cancel()
        if self._thread is not None:
            self._thread.join(timeout)
        else:
            self._close_client()

    def plan(self) -> BlockPlan:
        if self.block is None or self.config is None:
            raise ValueError("control plane not ready: no address block yet")
        return BlockPlan.of(self.block, self.config)

    def client(self) -> pyetcd.MultiEndpointEtcd3Client:
        """The current etcd client, for the control socket handlers; ValueError if disconnected."""
        with self._lock:
            client = self._client
            connected = self.state.connected or self._thread is None
        if client is None or not connected:
            raise ValueError("etcd unavailable (agent is reconnecting); try again later")
        return client

    # endpoint operations used by the control socket handlers (control/agent.py)

    def endpoint_add(self, container_id: str, ifname: str, mac: str, ip: str | None,
                     gateway: str | None, ip6: str | None = None,
                     gateway6: str | None = None) -> dict[str, Any]:
        check_name(container_id, "container_id")
        check_ifname(ifname)
        if self.config is None:
            raise ValueError("control plane not ready: no network config yet")
        rec = ep_store.make_endpoint(self.config, self.node, mac, ip, gateway, ip6, gateway6)
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
        """This node's endpoints as last seen by the watch (no etcd call; by the node index)."""
        live = self._live
        eps = live.snapshot.endpoints
        return {n: eps[n] for n in list(live.by_node.get(self.node, ())) if n in eps}

    # -- connection --------------------------------------------------------------------------------

    def _session_text(self) -> str:
        return f"node {self.node}, network {self.layout.network}"

    def _connect(self) -> pyetcd.MultiEndpointEtcd3Client:
        with self._lock:
            if self._client is not None:
                return self._client
        if self._hub is not None:
            client, url = self._hub.wait_client()
        else:
            client, url = connect(self.settings, self.layout.config)
        with self._client_ready:
            self._client, self._url = client, str(url)
            self._client_ready.notify_all()
        return client

    def _use_client(self, client: pyetcd.MultiEndpointEtcd3Client, url: str) -> None:
        """Hub mode: the hub's current client is ours (control/hub.py)."""
        with self._client_ready:
            self._client, self._url = client, url
            self._client_ready.notify_all()

    def _wait_client(self, timeout: float) -> pyetcd.MultiEndpointEtcd3Client | None:
        """For the lease thread: the current client once the control thread has one."""
        with self._client_ready:
            if self._client is None and not self._stop.is_set():
                self._client_ready.wait(timeout)
            return self._client

    def _close_client(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if self._hub is None:             # a hub's client is the hub's to close
            close_quietly(client)

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
        assert self._lease is not None
        try:
            while not self._stop.is_set():
                try:
                    client = self._connect()
                    self._prepare(client, need_list)
                    need_list = False
                    self._watch(client)
                except _Compacted as e:
                    log.info("watch from revision %d compacted (at %d): listing again",
                             self._rev + 1, e.revision)
                    need_list = True
                except _RETRY_ERRORS as e:
                    if self._stop.is_set():
                        break
                    if _compacted(e):              # compacted under a paged list: start over
                        log.info("revision compacted during the list (%s): listing again",
                                 describe(e))
                        need_list = True
                        continue
                    self._disconnected(e)
                    self._stop.wait(self._backoff.next())
                except Exception as e:  # a bug must not kill the agent's control plane silently
                    if self._stop.is_set():
                        break
                    log.exception("control thread error; reconnecting")
                    self._disconnected(e)
                    self._stop.wait(self._backoff.next())
        finally:
            self._shutdown()

    def _prepare(self, client: pyetcd.MultiEndpointEtcd3Client, need_list: bool) -> None:
        """Everything before the watch, after a (re)connect: data replaced? -> list; the node
        lease registered (first time: its keepalives started); a list if needed."""
        assert self._lease is not None
        if not need_list and self._store_replaced(client):
            need_list = True
        if self._lease.lease_id is None:
            self._lease.register(client)
            self._lease.start(self._wait_client)
        if need_list:
            self._relist(client)

    def _shutdown(self) -> None:
        lease = self._lease
        if lease is not None:
            lease.stop()
        with self._lock:
            client = self._client
        if client is not None and self.revoke_on_stop and lease is not None \
                and lease.lease_id is not None:
            lid = lease.lease_id
            try:
                lease.revoke(client)
                log.info("node %s: lease %x revoked", self.node, lid)
            except ETCD_ERRORS as e:
                log.info("node %s: lease not revoked (%s); it expires in %ds", self.node,
                         describe(e), self.ttl)
        self._close_client()
        with self._lock:
            self.state.connected = False

    def _reclaim_block(self, client: pyetcd.MultiEndpointEtcd3Client) -> None:
        """Our block key must exist (it can vanish if etcd's data was replaced); put it back if
        it is free. Called only when a list does not show it."""
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
        if not kvs:
            return
        try:        # compare what the record says, not its bytes (spacing, key order)
            owner: str | None = BlockRecord.parse(kvs[0][0]).node
        except ValueError:
            owner = None
        if owner != self.node:
            log.error("node %s: our block %s is now owned by another record %r; pods here may "
                      "get duplicate addresses", self.node, self.block, kvs[0][0][:200])

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

    def _ranges(self) -> list[tuple[bytes, bytes]]:
        """The parts of the root the tables use, in key order (index keys etc. are skipped)."""
        lay = self.layout
        out = []
        for p in (lay.blocks, lay.endpoints, lay.nodes):
            b = p.encode()
            out.append((b, prefix_end(b)))
        cfg = lay.config.encode()
        out.insert(1, (cfg, cfg + b"\0"))
        return out

    def _relist(self, client: pyetcd.MultiEndpointEtcd3Client) -> None:
        """Paged list at one revision -> a new LiveTables -> only the difference to the sink."""
        t0 = time.monotonic()
        pages = 0

        def count() -> None:
            nonlocal pages
            pages += 1
        kvs, header = list_prefix(client, self._ranges(), self.page_size, count)
        snap = Snapshot(self.layout, intern=self._live.intern)
        own: Any = None
        own_key = self._own_key
        for kv in kvs:
            key = kv.key
            if key == own_key:
                own = (kv.value, int(kv.lease), int(kv.mod_revision))
            snap.put(key.decode(errors="replace"), kv.value, int(kv.create_revision))
        new = LiveTables.from_snapshot(snap, self.node)
        old, self._live = self._live, new
        first = not self._synced.is_set()
        assert self._sink is not None
        n_ops = [0]
        failed = apply_ops(self._sink, diff_live(old, new), n_ops)
        del old
        _trim_heap()
        self._rev, self._cluster_id = header
        bad = new.bad()
        fresh = {k: r for k, r in bad.items() if self._logged_bad.get(k) != r}
        for key_s, reason in sorted(fresh.items()):
            log.warning("skipping bad record %s: %s", key_s, reason)
        self._logged_bad = bad
        self._check_config()
        with self._lock:
            st = self.state
            st.synced = True
            if not first:
                st.resyncs += 1
            st.list_pages += pages
            st.last_revision_applied = self._rev
            st.bad_records += len(fresh)
            st.bad_keys = new.bad_count()
            st.sink_errors += failed
            st.sink_ops += n_ops[0]
            st.fdb_entries = new.installed
            st.neigh_entries = new.installed
            st.last_list_seconds = round(time.monotonic() - t0, 3)
        log.info("listed %s at revision %d in %d pages (%.2fs): %d nodes, %d endpoints, "
                 "%d table commands", self.layout.root, self._rev, pages,
                 time.monotonic() - t0, len(new.snapshot.nodes), len(new.snapshot.endpoints),
                 n_ops[0])
        if own is None:
            self._check_own(client, DELETE, b"", 0, self._rev)
        else:
            self._check_own(client, PUT, own[0], own[1], own[2])
        if self.block is not None and \
                self.layout.block(self.block)[len(self.layout.blocks):] not in new.snapshot.blocks:
            self._reclaim_block(client)

    def _check_config(self) -> None:
        cfg = self._live.snapshot.config
        if cfg is not None and self.config is not None and cfg != self.config \
                and cfg != self._config_warned:
            log.warning("network %s config changed in etcd to %s; this agent keeps %s until "
                        "restarted", self.layout.network, cfg.to_dict(), self.config.to_dict())
            self._config_warned = cfg

    def _watch(self, client: pyetcd.MultiEndpointEtcd3Client) -> None:
        """ONE prefix watch from our revision + 1; returns only when stopped."""
        root = self.layout.root.encode()
        create = etcdrpc.WatchCreateRequest(key=root, range_end=prefix_end(root),
                                            start_revision=self._rev + 1)
        done = threading.Event()

        def requests() -> Iterator[Any]:
            yield etcdrpc.WatchRequest(create_request=create)
            done.wait()          # keep the stream open: grpc-proxy ends a half-closed watch

        stub = etcdrpc.WatchStub(client.channel)
        call = stub.Watch(requests(), credentials=client.call_credentials,
                          metadata=client.metadata)
        self._watch_call = call
        try:
            if self._stop.is_set():
                return
            for resp in call:
                self._on_watch_response(client, resp)
            if not self._stop.is_set():
                raise _WatchLost("watch stream ended")
        except grpc.RpcError:
            if self._stop.is_set():
                return
            raise
        finally:
            done.set()
            self._watch_call = None
            call.cancel()

    def _on_watch_response(self, client: pyetcd.MultiEndpointEtcd3Client, resp: Any) -> None:
        """One WatchResponse of our watch (own stream, or a hub's shared one)."""
        if resp.compact_revision:
            raise _Compacted(int(resp.compact_revision))
        if resp.canceled:
            raise _WatchLost(f"watch canceled by etcd: {resp.cancel_reason or '?'}")
        if resp.created:
            self._connected()
            self._synced.set()
        if resp.events:
            self._apply(client, resp.events)

    def _apply(self, client: pyetcd.MultiEndpointEtcd3Client, events: Any) -> None:
        live = self._live
        own_key = self._own_key
        rev = self._rev
        hook = self.on_applied
        for ev in events:
            kv = ev.kv
            if ev.type == DELETE:
                live.delete(kv.key.decode(errors="replace"))
            else:
                live.put(kv.key.decode(errors="replace"), kv.value, kv.create_revision)
            if kv.key == own_key:
                self._own_seen = (ev.type, kv.value, kv.lease, kv.mod_revision)
            if kv.mod_revision > rev:
                rev = kv.mod_revision
        self._rev = rev
        ops = live.flush()
        assert self._sink is not None
        failed = apply_ops(self._sink, ops) if ops else 0
        t_done = time.monotonic()
        fresh = 0
        if live.bad_changes:
            logged = self._logged_bad
            for key, reason in live.bad_changes:
                if reason is None:
                    logged.pop(key, None)
                elif logged.get(key) != reason:
                    log.warning("skipping bad record %s: %s", key, reason)
                    logged[key] = reason
                    fresh += 1
            live.bad_changes.clear()
            self._check_config()
        if ops:
            log.debug("revision %d: %d table commands", rev, len(ops))
        with self._lock:
            st = self.state
            st.last_revision_applied = rev
            st.watch_events += len(events)
            st.sink_ops += len(ops)
            st.bad_records += fresh
            st.bad_keys = live.bad_count()
            st.sink_errors += failed
            st.fdb_entries = live.installed
            st.neigh_entries = live.installed
        seen, self._own_seen = self._own_seen, None
        if seen is not None:
            self._check_own(client, *seen)
        if hook is not None:
            hook(Applied(rev, tuple(ev.kv.key.decode(errors="replace") for ev in events),
                         len(ops), t_done))

    def _check_own(self, client: pyetcd.MultiEndpointEtcd3Client, ev_type: int, value: bytes,
                   lease: int, mod_revision: int) -> None:
        """Our node key as etcd had it at `mod_revision`; anything but our record on our lease,
        after our last registration, is repaired."""
        assert self._lease is not None
        if self._lease.current(ev_type != DELETE, value, lease, mod_revision):
            return
        if ev_type == DELETE:
            self._repair_own(client, "deleted")
        elif value != self._lease.value:
            try:
                NodeRecord.parse(value)
                what = f"overwritten with another record {value[:200]!r}"
            except ValueError as e:
                what = f"overwritten with a bad record ({e})"
            self._repair_own(client, what)
        else:
            self._repair_own(client, f"detached from our lease (now lease {lease:x})")

    def _repair_own(self, client: pyetcd.MultiEndpointEtcd3Client, what: str) -> None:
        assert self._lease is not None
        log.warning("node %s: our node key %s was %s; restoring our record on lease %x",
                    self.node, self.layout.node(self.node), what, self._lease.lease_id or 0)
        self._lease.repair(client)
        with self._lock:
            self.state.own_key_repairs += 1
