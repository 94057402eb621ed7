"""flannel mode's control thread: this node's subnet lease, and one watch of everybody else's.

1. load_config(): connect (URLs in order, control/etcd.py), read `<prefix>/config`; the agent
   needs the VNI, port and MTU before it builds its TAP.
2. acquire(vtep_mac, mtu): flanneld's tryAcquireLease, up to 10 races:
   a. list `<prefix>/subnets/`; a lease holding our PublicIP is re-taken (same subnet) if it
      still fits the config: a fresh etcd lease, then a plain put (flannel's updateSubnet);
      one that no longer fits is deleted;
   b. else the subnet of the previous subnet.env (FLANNEL_SUBNET) if nobody holds it and it fits
      (a clean exit deleted our key; this is how a restart keeps its subnet);
   c. else a random one of the first 100 free subnets;
   d. b/c are created atomically: txn(version(key) == 0, put on a fresh lease); a lost race
      revokes that lease and starts again at a.
   Then subnet.env is written (atomically, tmp + rename).
3. start(sink): the address `<subnet.0>/32` goes on the TAP, then the thread lists
   `<prefix>/subnets/`, remembers the revision and opens ONE prefix watch from revision+1. Each
   batch of events updates the raw snapshot; `peers_from_leases()` + `peer_ops()` (pure,
   control/flannel.py) turn it into sink commands. Between events the thread only wakes to
   renew the lease (TTL - renew margin, like flanneld: new lease, put, and here also a revoke
   of the old one).
4. Connection or watch lost: the tables and routes stay (forwarding continues); reconnect with
   capped backoff, check our key (put it back on our lease if it vanished), list again and
   apply only the difference. Watch start revision compacted: the same re-list + diff.
5. stop(): revoke our lease (the key goes with it: peers drop their routes to us now), then
   remove every route, neighbour and fast-path entry this thread installed.

Unusable leases (see peers_from_leases) are logged once per key and reason, counted and left out.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import queue
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from pyetcd import events as etcd_events  # type: ignore[import-untyped]
from pyetcd import exceptions as etcd_exc  # type: ignore[import-untyped]

from .etcd import ETCD_ERRORS, EtcdSettings, describe
from .flannel import (
    DEFAULT_PREFIX,
    DEFAULT_SUBNET_FILE,
    LEASE_TTL,
    RENEW_MARGIN,
    FlannelConfig,
    LeaseAttrs,
    Op,
    Peer,
    SubnetEnv,
    del_ops,
    lease_public_ip,
    parse_subnet_key,
    peer_ops,
    peers_from_leases,
    pick_subnet,
    subnet_key,
)
from .session import EtcdSession

log = logging.getLogger(__name__)

RACE_RETRIES = 10           # flannel's raceRetries


class FlannelSink(Protocol):
    """What flannel mode asks of the data plane (docs/architecture.md). The first four are the
    fast path's table sink; the rest program the TAP as an L3 VTEP (dataplane/l3.py)."""

    def fdb_add(self, vni: int, mac: str, vtep: str, port: int) -> None: ...
    def fdb_del(self, vni: int, mac: str) -> None: ...
    def neigh_add(self, vni: int, ip: str, mac: str) -> None: ...
    def neigh_del(self, vni: int, ip: str) -> None: ...
    def address_add(self, cidr: str) -> None: ...
    def address_del(self, cidr: str) -> None: ...
    def kernel_neigh_add(self, ip: str, mac: str) -> None: ...
    def kernel_neigh_del(self, ip: str) -> None: ...
    def route_add(self, dst: str, gateway: str) -> None: ...
    def route_del(self, dst: str, gateway: str) -> None: ...


@dataclass
class FlannelState:
    connected: bool = False
    etcd_url: str | None = None
    subnet: str | None = None
    public_ip: str | None = None
    vtep_mac: str | None = None
    lease_id: str | None = None     # hex, as etcdctl prints it
    last_revision_applied: int = 0
    synced: bool = False
    resyncs: int = 0                # cumulative: lists after the first (reconnect, compaction)
    reconnects: int = 0             # cumulative
    renewals: int = 0               # cumulative
    lease_restored: int = 0         # cumulative: our key vanished and was put back
    peers: int = 0
    bad_leases: int = 0             # cumulative: (key, reason) pairs seen, each logged once
    skipped_leases: int = 0         # leases currently skipped
    sink_errors: int = 0            # cumulative
    last_error: str | None = None


class _Stop:
    pass


_STOP = _Stop()


class _WatchLost(Exception):
    pass


_RETRY = (_WatchLost, *ETCD_ERRORS)


# The cumulative keys of status(): Prometheus counters (dataplane/metrics.py), the rest gauges.
STATUS_COUNTERS = frozenset({"resyncs", "reconnects", "renewals", "lease_restored",
                             "bad_leases", "sink_errors"})


class FlannelControl(EtcdSession):
    """The flannel control thread; connection, backoff and retries: control/session.py."""

    status_counters = STATUS_COUNTERS
    _log = log

    def __init__(self, settings: EtcdSettings, *, public_ip: str, prefix: str = DEFAULT_PREFIX,
                 subnet_file: str = DEFAULT_SUBNET_FILE, lease_ttl: int = LEASE_TTL,
                 renew_margin: float = RENEW_MARGIN, ipmasq: bool = False,
                 backoff_initial: float = 0.2, backoff_max: float = 10.0) -> None:
        if not prefix.startswith("/") or prefix.endswith("/"):
            raise ValueError(f"etcd prefix {prefix!r} must start with '/' and not end with '/'")
        if lease_ttl < 5:
            raise ValueError(f"subnet lease TTL {lease_ttl} must be >= 5 seconds")
        if not 0 <= renew_margin < lease_ttl:
            raise ValueError(f"renew margin {renew_margin:g}s must be in 0 .. TTL {lease_ttl}s")
        self.settings = settings
        self.prefix = prefix
        self.config_key = prefix + "/config"
        self.subnets_prefix = prefix + "/subnets/"
        self.public_ip = str(ipaddress.IPv4Address(public_ip))
        self.subnet_file = subnet_file
        self.lease_ttl = lease_ttl
        self.renew_margin = renew_margin
        self.ipmasq = ipmasq
        self._check_key = self.config_key
        self._init_session(backoff_initial, backoff_max)     # control/session.py
        self.state = FlannelState(public_ip=self.public_ip)

        self.config: FlannelConfig | None = None
        self.subnet: ipaddress.IPv4Network | None = None
        self._attrs: LeaseAttrs | None = None
        self._lease_id: int | None = None
        self._renew_at = 0.0

        self._sink: FlannelSink | None = None
        self._address: str | None = None
        self._leases: dict[str, bytes] = {}
        self._applied: dict[str, Peer] = {}
        self._rev = 0
        self._logged_bad: dict[str, str] = {}
        self._check_own = False

        self._queue: queue.Queue[Any] | None = None
        self._watch_id: int | None = None
        self._thread: threading.Thread | None = None
        self._synced = threading.Event()

    # -- public ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        with self._lock:
            return dataclasses.asdict(self.state)

    def wait_synced(self, timeout: float | None = None) -> bool:
        return self._synced.wait(timeout)

    def load_config(self, timeout: float = 30.0) -> FlannelConfig:
        """Read and check `<prefix>/config`. ValueError for a missing or unsupported config,
        TimeoutError if etcd does not answer within `timeout`."""
        def read(client: Any) -> FlannelConfig:
            value, _ = client.get(self.config_key)
            if value is None:
                raise ValueError(f"flannel config not found at {self.config_key} in etcd "
                                 "(create it with etcdctl put, see the README)")
            return FlannelConfig.parse(value)
        self.config = self._retry(read, timeout, "reading the flannel config")
        return self.config

    def acquire(self, vtep_mac: str, mtu: int, timeout: float = 30.0) -> ipaddress.IPv4Network:
        """Take this node's subnet lease (see the module docstring) and write subnet.env."""
        if self.config is None:
            raise RuntimeError("acquire() before load_config()")
        cfg = self.config
        self._attrs = LeaseAttrs(ipaddress.IPv4Address(self.public_ip), "vxlan",
                                 cfg.backend.vni, vtep_mac.lower())
        prev = self._previous_subnet()

        def attempt(client: Any) -> ipaddress.IPv4Network:
            for _ in range(RACE_RETRIES):
                sn = self._try_acquire(client, cfg, prev)
                if sn is not None:
                    return sn
            raise ValueError(f"max retries ({RACE_RETRIES}) reached trying to acquire a subnet")
        self.subnet = self._retry(attempt, timeout, "acquiring the subnet lease")
        env = SubnetEnv(cfg.network, self.subnet, mtu, self.ipmasq)
        write_file_atomic(self.subnet_file, env.render())
        with self._lock:
            self.state.subnet = str(self.subnet)
            self.state.vtep_mac = self._attrs.vtep_mac
            self.state.lease_id = f"{self._lease_id:x}" if self._lease_id else None
        log.info("subnet lease %s for %s (VtepMAC %s, etcd lease %x, TTL %ds); wrote %s",
                 self.subnet, self.public_ip, self._attrs.vtep_mac, self._lease_id or 0,
                 self.lease_ttl, self.subnet_file)
        return self.subnet

    def start(self, sink: FlannelSink) -> None:
        """Put the VTEP address on the TAP and start the watch thread (after acquire())."""
        if self.subnet is None:
            raise RuntimeError("start() before acquire()")
        self._sink = sink
        self._address = f"{self.subnet.network_address}/32"
        sink.address_add(self._address)
        self._thread = threading.Thread(target=self._run, name="vxtap-flannel", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread; delete our lease key (revoke its lease); remove what we installed."""
        self._stop.set()
        q = self._queue
        if q is not None:
            q.put(_STOP)
        if self._thread is not None:
            self._thread.join(timeout)
        self._release()
        if self._sink is not None:
            ops = [op for p in self._applied.values() for op in del_ops(p, self._vni)]
            self._apply_ops(ops)
            self._applied = {}
            if self._address:
                self._apply_ops([Op("address_del", (self._address,))])
        self._close_client()

    # -- etcd plumbing ---------------------------------------------------------------------

    @property
    def _vni(self) -> int:
        assert self.config is not None
        return self.config.backend.vni

    def _session_text(self) -> str:
        return f"flannel prefix {self.prefix}"

    # -- the lease -------------------------------------------------------------------------

    def _previous_subnet(self) -> ipaddress.IPv4Network | None:
        try:
            with open(self.subnet_file, encoding="utf-8") as f:
                return SubnetEnv.previous_subnet(f.read())
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as e:
            log.warning("cannot read the previous subnet from %s: %s", self.subnet_file, e)
            return None

    def _grant(self, client: Any) -> int:
        return int(client.lease(self.lease_ttl).id)

    def _revoke_quietly(self, client: Any, lease_id: int) -> None:
        try:
            client.revoke_lease(lease_id)
        except ETCD_ERRORS as e:
            log.info("revoking lease %x: %s (it expires by itself)", lease_id, describe(e))

    def _try_acquire(self, client: Any, cfg: FlannelConfig,
                     prev: ipaddress.IPv4Network | None) -> ipaddress.IPv4Network | None:
        assert self._attrs is not None
        value = self._attrs.to_json()
        resp = client.get_prefix_response(self.subnets_prefix)
        taken: list[ipaddress.IPv4Network] = []
        mine: tuple[str, ipaddress.IPv4Network] | None = None
        for kv in resp.kvs:
            key = kv.key.decode(errors="replace")
            try:
                sn = parse_subnet_key(key[len(self.subnets_prefix):])
            except ValueError:
                continue
            taken.append(sn)
            if mine is None and lease_public_ip(kv.value) == self.public_ip:
                mine = (key, sn)
        if mine is not None:
            key, sn = mine
            if cfg.compatible(sn):
                lease_id = self._grant(client)
                client.put(key, value, lease=lease_id)        # flannel's updateSubnet
                self._took(lease_id)
                log.info("found lease %s for current IP %s, reusing", sn, self.public_ip)
                return sn
            log.info("found lease %s for current IP %s but not compatible with the config, "
                     "deleting", sn, self.public_ip)
            client.delete(key)
            taken.remove(sn)
        sn_new: ipaddress.IPv4Network | None = None
        if prev is not None:
            if any(t.overlaps(prev) for t in taken):
                log.info("previous subnet %s is leased by another node; picking a new one", prev)
            elif cfg.compatible(prev):
                log.info("found previously leased subnet %s, reusing", prev)
                sn_new = prev
            else:
                log.warning("previous subnet %s does not fit the network config, ignoring", prev)
        if sn_new is None:
            sn_new = pick_subnet(cfg, taken)
        key = self.subnets_prefix + subnet_key(sn_new)
        lease_id = self._grant(client)
        if self._create(client, key, value, lease_id):
            self._took(lease_id)
            log.info("allocated lease %s to current node (%s)", sn_new, self.public_ip)
            return sn_new
        self._revoke_quietly(client, lease_id)
        log.info("subnet %s was taken concurrently; trying again", sn_new)
        return None

    @staticmethod
    def _create(client: Any, key: str, value: str, lease_id: int) -> bool:
        t = client.transactions
        ok, _ = client.transaction(compare=[t.version(key) == 0],
                                   success=[t.put(key, value, lease=lease_id)], failure=[])
        return bool(ok)

    def _took(self, lease_id: int) -> None:
        self._lease_id = lease_id
        self._renew_at = time.monotonic() + self.lease_ttl - self.renew_margin
        with self._lock:
            self.state.lease_id = f"{lease_id:x}"

    def _renew(self, client: Any) -> None:
        """flannel's RenewLease (updateSubnet): a new lease, our value put on it; then the old
        lease is revoked (flanneld lets it expire; it holds no key any more either way)."""
        assert self.subnet is not None and self._attrs is not None
        old = self._lease_id
        lease_id = self._grant(client)
        client.put(self._own_key, self._attrs.to_json(), lease=lease_id)
        self._took(lease_id)
        if old is not None:
            self._revoke_quietly(client, old)
        with self._lock:
            self.state.renewals += 1
        log.info("lease %s renewed (etcd lease %x, TTL %ds)", self.subnet, lease_id,
                 self.lease_ttl)

    @property
    def _own_key(self) -> str:
        assert self.subnet is not None
        return self.subnets_prefix + subnet_key(self.subnet)

    def _ensure_own(self, client: Any) -> None:
        """Our key must hold our value on our live lease; put it back if it vanished (admin
        delete, or an etcd outage longer than the TTL). A key now holding somebody else's
        value is reported, not overwritten."""
        assert self._attrs is not None
        self._check_own = False
        value, meta = client.get(self._own_key)
        mine = self._attrs.to_json().encode()
        if value == mine and meta.lease_id == self._lease_id:
            return
        if value is not None and value != mine:
            log.error("our subnet %s is now leased by someone else (%r); not overwriting it",
                      self.subnet, value[:200])
            return
        alive = False
        if self._lease_id is not None:
            try:
                alive = client.get_lease_info(self._lease_id).TTL > 0
            except ETCD_ERRORS:
                alive = False
        lease_id = self._lease_id if alive and self._lease_id is not None else self._grant(client)
        if value == mine:                       # ours, but on another lease: move it to ours
            client.put(self._own_key, mine, lease=lease_id)
            ok = True
        else:
            ok = self._create(client, self._own_key, mine.decode(), lease_id)
        if ok:
            self._took(lease_id)
            with self._lock:
                self.state.lease_restored += 1
            log.warning("our lease key %s was missing; put it back (etcd lease %x)",
                        self._own_key, lease_id)
        else:
            log.error("our subnet %s was taken while our key was missing", self.subnet)

    def _release(self) -> None:
        """Clean exit: revoke our lease, which deletes our key."""
        if self._lease_id is None:
            return
        try:
            client = self._connect()
            value, meta = client.get(self._own_key)
            if meta is not None and meta.lease_id != self._lease_id and value is not None \
                    and self._attrs is not None and value == self._attrs.to_json().encode():
                client.delete(self._own_key)    # ours, on another lease
            client.revoke_lease(self._lease_id)
            log.info("lease %s released (key %s deleted)", self.subnet, self._own_key)
        except ETCD_ERRORS as e:
            log.warning("lease %s not released (%s); it expires in at most %ds", self.subnet,
                        describe(e), self.lease_ttl)
        self._lease_id = None

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                client = self._connect()
                self._ensure_own(client)
                self._relist(client)
                self._start_watch(client)
                self._connected()
                self._synced.set()
                self._watch_loop(client)
            except etcd_exc.RevisionCompactedError as e:
                log.info("watch from revision %d compacted (at %d): listing again",
                         self._rev + 1, e.compacted_revision)
                self._cancel_watch()
            except _RETRY as e:
                self._cancel_watch()
                self._disconnected(e)
                self._stop.wait(self._backoff.next())
            except Exception as e:  # a bug must not kill the control thread silently
                log.exception("flannel control thread error; reconnecting")
                self._cancel_watch()
                self._disconnected(e)
                self._stop.wait(self._backoff.next())
        self._cancel_watch()
        with self._lock:
            self.state.connected = False

    def _relist(self, client: Any) -> None:
        resp = client.get_prefix_response(self.subnets_prefix)
        self._leases = {kv.key.decode(errors="replace"): bytes(kv.value) for kv in resp.kvs}
        first = not self._synced.is_set()
        self._rev = int(resp.header.revision)
        self._reconcile()
        with self._lock:
            self.state.synced = True
            if not first:
                self.state.resyncs += 1
        log.info("listed %s at revision %d: %d leases, %d peers", self.subnets_prefix,
                 self._rev, len(self._leases), len(self._applied))

    def _start_watch(self, client: Any) -> None:
        q: queue.Queue[Any] = queue.Queue()
        self._queue = q
        if self._stop.is_set():
            q.put(_STOP)
        self._watch_id = client.add_watch_prefix_callback(self.subnets_prefix, q.put,
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

    def _watch_loop(self, client: Any) -> None:
        q = self._queue
        assert q is not None
        while True:
            if self._check_own:
                self._ensure_own(client)
            wait = self._renew_at - time.monotonic()
            if wait <= 0:
                self._renew(client)
                continue
            try:
                item = q.get(timeout=wait)
            except queue.Empty:
                continue
            batch = [item]
            while True:
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
        own = self._own_key
        for resp in responses:
            for ev in resp.events:
                key = ev.key.decode(errors="replace")
                if isinstance(ev, etcd_events.DeleteEvent):
                    self._leases.pop(key, None)
                else:
                    self._leases[key] = bytes(ev.value)
                if key == own:
                    self._check_own = True
                self._rev = max(self._rev, int(ev.mod_revision))
        self._reconcile()

    def _apply_ops(self, ops: list[Op]) -> int:
        assert self._sink is not None
        failed = 0
        for op in ops:
            try:
                getattr(self._sink, op.name)(*op.args)
            except Exception:  # the data plane's failure must not stop the sync
                failed += 1
                log.exception("flannel sink %s%r failed", op.name, op.args)
        if failed:
            with self._lock:
                self.state.sink_errors += failed
        return failed

    def _reconcile(self) -> None:
        assert self.config is not None
        cfg = self.config
        new = peers_from_leases(cfg, self._leases, own_subnet=self.subnet,
                                own_public_ip=self.public_ip, subnets_prefix=self.subnets_prefix)
        ops = peer_ops(self._applied, new.peers, cfg.backend.vni, cfg.backend.port)
        for k in sorted(self._applied.keys() - new.peers.keys()):
            log.info("peer %s gone: routes, neighbour and FDB entry removed", k)
        for k in sorted(new.peers):
            if self._applied.get(k) != new.peers[k]:
                p = new.peers[k]
                log.info("peer %s: PublicIP %s VtepMAC %s", k, p.public_ip, p.vtep_mac)
        self._apply_ops(ops)
        self._applied = dict(new.peers)
        bad = dict(new.skipped)
        fresh = {k: r for k, r in bad.items() if self._logged_bad.get(k) != r}
        for key, reason in sorted(fresh.items()):
            log.warning("skipping lease %s: %s", key, reason)
        self._logged_bad = bad
        with self._lock:
            st = self.state
            st.last_revision_applied = self._rev
            st.peers = len(new.peers)
            st.bad_leases += len(fresh)
            st.skipped_leases = len(bad)


def write_file_atomic(path: str, text: str, mode: int = 0o644) -> None:
    """Write `path` through a temporary file and rename (readers never see half a file)."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, mode=0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".subnet.env.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
