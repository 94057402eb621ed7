"""From etcd's state to fast-path table commands. Pure: no etcd, no threads, no devices.

1. `Snapshot` holds the parsed records of one network, keyed like etcd. `put(key, value, rev)` /
   `delete(key)` apply one etcd event (`rev` = the key's create_revision); a value that does not
   parse is kept out of the snapshot and listed in `Snapshot.bad` with the reason (the caller
   logs it once and counts it).
2. `desired(snapshot, self_node)` is the table this agent should hold: every endpoint of a live
   node (node key present = lease not expired) except this node's own (those are local on the
   bridge). fdb: endpoint MAC -> node underlay IP/port; neigh: each endpoint IP (IPv4 -> ARP,
   IPv6 -> neighbour discovery suppression in the fast path) -> MAC. Records that
   cannot be used (unknown node, VNI mismatch, duplicate MAC or IP) go to `Tables.skipped`.
   Conflicts: every endpoint of a known node with the network's VNI claims its MAC and its IP
   (this node's own and dead nodes' endpoints too, so a bogus newcomer cannot take over a
   genuine pod's address while its node restarts); the OLDEST claim (lowest create_revision,
   then key) wins each; an endpoint is installed only if it wins all (MAC, IPv4, IPv6). IPv4
   and IPv6 neighbour keys live in one claim index (records.neigh_key: disjoint int ranges).
3. `diff(old, new)` is the list of sink commands turning `old` into `new`: removals first (neigh,
   then fdb), then additions (fdb, then neigh, so an ARP answer never names an unforwarded MAC).
4. `apply_ops(sink, ops)` drives a `TableSink`.

`desired` and `diff` are the reference: a full computation, O(N log N). The sync keeps the same
tables incrementally with `LiveTables`: per watch event O(changed keys), through indexes by key
(the snapshot), by node (a node's lease expiry or VTEP change touches that node's endpoints
only), by MAC and by IP claim (who else claims this address; the next-oldest takes over when the
winner goes). `LiveTables.flush()` returns the commands for what changed since the last flush,
`diff_live(old, new)` the commands between two whole states (a re-list). The tests assert, over
random event sequences, that `LiveTables` always equals `desired()` of the same snapshot and
that `diff_live` converges like `diff`.
"""

from __future__ import annotations

import bisect
import logging
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from .keys import Layout, block_from_segment
from .records import (
    MAC_MASK,
    BlockRecord,
    EndpointRecord,
    NetworkConfig,
    NodeRecord,
    mac_text,
    neigh_key_text,
)

log = logging.getLogger(__name__)

FdbKey = tuple[int, str]          # (vni, mac)
FdbValue = tuple[str, int]        # (vtep, port)
NeighKey = tuple[int, str]        # (vni, ip): IPv4 dotted quad or compressed IPv6


class TableSink(Protocol):
    """The table interface of docs/architecture.md."""

    def fdb_add(self, vni: int, mac: str, vtep: str, port: int) -> None: ...
    def fdb_del(self, vni: int, mac: str) -> None: ...
    def neigh_add(self, vni: int, ip: str, mac: str) -> None: ...
    def neigh_del(self, vni: int, ip: str) -> None: ...


@dataclass
class Snapshot:
    """The parsed content of `layout.root`, plus the keys that failed to parse."""

    layout: Layout
    config: NetworkConfig | None = None
    nodes: dict[str, NodeRecord] = field(default_factory=dict)
    blocks: dict[str, BlockRecord] = field(default_factory=dict)         # "10.244.1.0-24" -> owner
    endpoints: dict[str, EndpointRecord] = field(default_factory=dict)   # "cid/eth0" -> record
    bad: dict[str, str] = field(default_factory=dict)                    # full key -> reason
    # optional: records shared between the agents of one process (control/hub.py)
    intern: RecordCache | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_kvs(cls, layout: Layout,
                 kvs: Iterable[tuple[str, bytes] | tuple[str, bytes, int]]) -> Snapshot:
        """From (key, value) or (key, value, create_revision) tuples."""
        snap = cls(layout)
        for kv in kvs:
            snap.put(*kv)
        return snap

    def put(self, key: str, value: bytes, rev: int = 0) -> str | None:
        """Apply a PUT (`rev`: the key's create_revision). Returns the reason if the value is bad
        (the key is then absent)."""
        kind_name = self.layout.classify(key)
        if kind_name is None:
            return None
        self._delete(key, kind_name)
        kind, name = kind_name
        try:
            if kind == "config":
                self.config = NetworkConfig.parse(value)
            elif kind == "node":
                self.nodes[name] = NodeRecord.parse(value)
            elif kind == "block":
                block_from_segment(name)
                self.blocks[name] = BlockRecord.parse(value)
            elif self.intern is not None:
                name, ep = self.intern.endpoint(name, value, rev)
                self.endpoints[name] = ep
            else:
                ep = EndpointRecord.parse(value)
                ep.rev = rev
                self.endpoints[name] = ep
        except ValueError as e:
            self.bad[key] = str(e)
            return str(e)
        return None

    def delete(self, key: str) -> None:
        kind_name = self.layout.classify(key)
        if kind_name is not None:
            self._delete(key, kind_name)

    def _delete(self, key: str, kind_name: tuple[str, str]) -> None:
        if self.bad:
            self.bad.pop(key, None)
        kind, name = kind_name
        if kind == "config":
            self.config = None
        elif kind == "node":
            self.nodes.pop(name, None)
        elif kind == "block":
            self.blocks.pop(name, None)
        else:
            self.endpoints.pop(name, None)

    def node_blocks(self, node: str) -> list[str]:
        return sorted(b for b, rec in self.blocks.items() if rec.node == node)


class RecordCache:
    """Parsed endpoint records shared by the agents of one process (control/hub.py).

    `endpoint(name, value, rev)` returns `(name, record)` for the etcd key `name` (endpoint
    part) with `value` and create_revision `rev`, parsing only the first time that exact triple
    is seen; later agents get the same (immutable) objects, so 500 simulated agents hold one
    copy of each record and name, and each agent keeps only its own indexes (LiveTables). A
    value that does not parse raises ValueError every time (bad records are not cached).
    Entries no agent holds any more are dropped by a sweep once the cache doubled since the
    last one (amortised O(1)). Thread-safe."""

    def __init__(self) -> None:
        self._d: dict[tuple[str, bytes, int], tuple[str, EndpointRecord]] = {}
        self._lock = threading.Lock()
        self._sweep_at = 1024
        self.parsed = 0                 # records parsed (the rest were shared)
        self.hits = 0

    def __len__(self) -> int:
        return len(self._d)

    def endpoint(self, name: str, value: bytes, rev: int) -> tuple[str, EndpointRecord]:
        k = (name, value, rev)
        got = self._d.get(k)
        if got is not None:
            self.hits += 1
            return got
        ep = EndpointRecord.parse(value)
        ep.rev = rev
        with self._lock:
            got = self._d.setdefault(k, (name, ep))
            self.parsed += 1
            if len(self._d) >= self._sweep_at:
                self._sweep()
        return got

    def _sweep(self) -> None:
        # a record only this cache holds: the dict's tuple, getrefcount's argument, `t`
        dead = [k for k, t in self._d.items() if sys.getrefcount(t[1]) <= 2]
        for k in dead:
            del self._d[k]
        self._sweep_at = max(1024, 2 * len(self._d))


@dataclass(frozen=True)
class Tables:
    fdb: Mapping[FdbKey, FdbValue] = field(default_factory=dict)
    neigh: Mapping[NeighKey, str] = field(default_factory=dict)
    # endpoint key -> why it is not in the tables; not part of equality
    skipped: Mapping[str, str] = field(default_factory=dict, compare=False)


def _dup_reason(what: str, text: str, layout: Layout, winner: str) -> str:
    return f"duplicate {what} {text} (also {layout.endpoints}{winner})"


def desired(snapshot: Snapshot, self_node: str) -> Tables:
    """The tables `self_node` should hold for `snapshot` (see the module docstring)."""
    fdb: dict[FdbKey, FdbValue] = {}
    neigh: dict[NeighKey, str] = {}
    skipped: dict[str, str] = {}
    known_nodes = set(snapshot.nodes) | {rec.node for rec in snapshot.blocks.values()}
    cfg = snapshot.config
    mac_claim: dict[int, tuple[int, str]] = {}          # mk -> (create_revision, name): oldest
    ip_claim: dict[int, tuple[int, str]] = {}
    claimants: list[str] = []
    for name in sorted(snapshot.endpoints):
        ep = snapshot.endpoints[name]
        key = snapshot.layout.endpoints + name
        if ep.node not in known_nodes:
            skipped[key] = f"endpoint names unknown node {ep.node!r}"
            continue
        if cfg is not None and ep.vni != cfg.vni:
            skipped[key] = f"endpoint VNI {ep.vni} is not the network's VNI {cfg.vni}"
            continue
        claim = (ep.rev, name)
        if ep.mk not in mac_claim or claim < mac_claim[ep.mk]:
            mac_claim[ep.mk] = claim
        for nk in ep.nks:
            if nk not in ip_claim or claim < ip_claim[nk]:
                ip_claim[nk] = claim
        claimants.append(name)
    for name in claimants:
        ep = snapshot.endpoints[name]
        key = snapshot.layout.endpoints + name
        if mac_claim[ep.mk][1] != name:
            skipped[key] = _dup_reason("MAC", ep.mac, snapshot.layout, mac_claim[ep.mk][1])
            continue
        lost = next((nk for nk in ep.nks if ip_claim[nk][1] != name), None)
        if lost is not None:
            skipped[key] = _dup_reason("IP", neigh_key_text(lost)[1], snapshot.layout,
                                       ip_claim[lost][1])
            continue
        if ep.node == self_node:
            continue                     # local on the bridge
        node = snapshot.nodes.get(ep.node)
        if node is None:
            continue                     # known node, lease expired: inactive, not an error
        fdb[(ep.vni, ep.mac)] = (node.underlay, node.port)
        for nk in ep.nks:
            neigh[neigh_key_text(nk)] = ep.mac
    return Tables(fdb=fdb, neigh=neigh, skipped=skipped)


class Op(NamedTuple):
    """One sink call: `getattr(sink, op.name)(*op.args)`."""

    name: str
    args: tuple[object, ...]


def diff(old: Tables, new: Tables) -> list[Op]:
    """The sink commands that turn `old` into `new` (empty when they are equal)."""
    ops = [Op("neigh_del", k) for k in sorted(old.neigh.keys() - new.neigh.keys())]
    ops += [Op("fdb_del", k) for k in sorted(old.fdb.keys() - new.fdb.keys())]
    ops += [Op("fdb_add", (vni, mac, vtep, port))
            for (vni, mac), (vtep, port) in sorted(new.fdb.items() - old.fdb.items())]
    ops += [Op("neigh_add", (vni, ip, mac))
            for (vni, ip), mac in sorted(new.neigh.items() - old.neigh.items())]
    return ops


def apply_ops(sink: TableSink, ops: Iterable[Op], counts: list[int] | None = None) -> int:
    """Run `ops` on `sink`. A failing call is logged and skipped; returns the number that failed.
    `counts`, if given, gets the number of ops run added to its first item."""
    failed = 0
    n = 0
    for op in ops:
        n += 1
        try:
            getattr(sink, op.name)(*op.args)
        except Exception:  # the sink is another team's code: never let it stop the sync
            failed += 1
            log.exception("table sink %s%r failed", op.name, op.args)
    if counts is not None:
        counts[0] += n
    return failed


# -- incremental -------------------------------------------------------------------------------

_ABSENT: Any = object()


def _names(entry: str | list[str] | None) -> list[str]:
    if entry is None:
        return []
    return [entry] if type(entry) is str else entry   # type: ignore[list-item,return-value]


class LiveTables:
    """`desired()` kept up to date event by event (see the module docstring).

    Indexes (all keyed by the same int objects the records hold, so they cost one dict slot):
      snapshot.endpoints  name -> EndpointRecord           (by key)
      by_node             node -> list of endpoint names   (lease expiry, VTEP change, known;
                          a list, not a set: 8 bytes an entry instead of ~60; a delete is a
                          memmove over that node's pods, ~5 us at 2,000 pods)
      mac_claims          mk -> name or [names]            (claimants of a MAC; oldest wins)
      ip_claims           nk -> name or [names]            (IPv4 and IPv6 keys: rec.nks)
      vtep                node -> (underlay, port)         (live nodes; one shared tuple each)
    An endpoint of the snapshot is installed unless its name is in `off` (the few that are not:
    this node's own, skipped, inactive nodes'); installed, it puts mk -> vtep[node] in the fdb
    and each of its neighbour keys (rec.nk, and rec.nk2 if dual stack) -> mk in the neighbour
    table (no separate table dicts: 10 MB less at 100,000 endpoints). The bit lives here, not
    in the record, so records can be shared by the agents of one process (`RecordCache`,
    control/hub.py): a LiveTables never changes a record.
    `skipped` (full key -> reason) and `snapshot.bad` are the reasons, as in `desired()`;
    `bad_changes` lists (key, reason or None) as they change, for the caller to log once.
    """

    def __init__(self, layout: Layout, self_node: str,
                 intern: RecordCache | None = None) -> None:
        self.layout = layout
        self.self_node = self_node
        self.snapshot = Snapshot(layout, intern=intern)
        self.intern = intern
        self.by_node: dict[str, list[str]] = {}
        self.block_owners: dict[str, int] = {}       # node -> blocks owned (a known node)
        self.mac_claims: dict[int, Any] = {}
        self.ip_claims: dict[int, Any] = {}
        self.vtep: dict[str, FdbValue] = {}
        self.off: set[str] = set()                   # endpoint names NOT installed
        self.installed = 0                           # endpoints installed
        self.skipped: dict[str, str] = {}
        self.bad_changes: list[tuple[str, str | None]] = []
        # endpoints whose installed bit or VTEP changed since the last flush:
        # name -> (record then, was installed, vtep then)
        self._touched: dict[str, tuple[EndpointRecord, bool, FdbValue | None]] = {}
        self._track = True

    @classmethod
    def from_snapshot(cls, snapshot: Snapshot, self_node: str) -> LiveTables:
        """The whole state at once (start, re-list); takes ownership of `snapshot` (no copy).
        Config, blocks and nodes are in place before the endpoints, so each endpoint is placed
        once. `flush()` afterwards returns nothing; use `diff_live`."""
        live = cls(snapshot.layout, self_node, snapshot.intern)
        live._track = False
        live.snapshot = snapshot
        for b in snapshot.blocks.values():
            live.block_owners[b.node] = live.block_owners.get(b.node, 0) + 1
        for name, n in snapshot.nodes.items():
            live.vtep[name] = (n.underlay, n.port)
        by_node = live.by_node
        mac_claims, ip_claims = live.mac_claims, live.ip_claims
        claimants = []
        off = live.off
        for name, ep in snapshot.endpoints.items():
            names = by_node.get(ep.node)
            if names is None:
                names = by_node[ep.node] = []
            names.append(name)
            reason = live._claim_reason(ep)
            if reason is not None:
                off.add(name)
                live._set_skipped(name, reason)
                continue
            claimants.append((name, ep))
            nk2 = ep.nk2
            if ep.mk in mac_claims or ep.nk in ip_claims or nk2 is not None and nk2 in ip_claims:
                live._claim_add(mac_claims, ep.mk, name)
                live._claim_add(ip_claims, ep.nk, name)
                if nk2 is not None:
                    live._claim_add(ip_claims, nk2, name)
            else:
                mac_claims[ep.mk] = ip_claims[ep.nk] = name
                if nk2 is not None:
                    ip_claims[nk2] = name
        vtep, me = live.vtep, self_node
        n = 0
        for name, ep in claimants:
            if mac_claims[ep.mk] != name or ip_claims[ep.nk] != name \
                    or ep.nk2 is not None and ip_claims[ep.nk2] != name:
                off.add(name)
                live._refresh(name)              # a conflict: the general path
            elif ep.node in vtep and ep.node != me:
                n += 1
            else:
                off.add(name)
        live.installed += n
        live._track = True
        return live

    # -- events ----------------------------------------------------------------------------------

    def put(self, key: str, value: bytes, rev: int = 0) -> None:
        kind_name = self.layout.classify(key)
        if kind_name is None:
            return
        kind, name = kind_name
        snap = self.snapshot
        if kind == "endpoint":
            if name in snap.endpoints:
                self._remove_endpoint(name)
            try:
                if self.intern is not None:
                    name, ep = self.intern.endpoint(name, value, rev)
                else:
                    ep = EndpointRecord.parse(value)
                    ep.rev = rev
            except ValueError as e:
                self._set_bad(key, str(e))
                return
            self._clear_bad(key)
            self._add_endpoint(name, ep)
        elif kind == "node":
            before = self._node_state(name)
            try:
                rec = NodeRecord.parse(value)
            except ValueError as e:
                snap.nodes.pop(name, None)
                self._set_bad(key, str(e))
            else:
                self._clear_bad(key)
                snap.nodes[name] = rec
            self._node_changed(name, before)
        elif kind == "block":
            old = snap.blocks.pop(name, None)
            try:
                block_from_segment(name)
                rec_b = BlockRecord.parse(value)
            except ValueError as e:
                self._set_bad(key, str(e))
                rec_b = None
            else:
                self._clear_bad(key)
            self._blocks_changed(old, rec_b, name)
        else:
            try:
                cfg: NetworkConfig | None = NetworkConfig.parse(value)
            except ValueError as e:
                self._set_bad(key, str(e))
                cfg = None
            else:
                self._clear_bad(key)
            self._config_changed(cfg)

    def delete(self, key: str) -> None:
        kind_name = self.layout.classify(key)
        if kind_name is None:
            return
        self._clear_bad(key)
        kind, name = kind_name
        snap = self.snapshot
        if kind == "endpoint":
            if name in snap.endpoints:
                self._remove_endpoint(name)
        elif kind == "node":
            before = self._node_state(name)
            snap.nodes.pop(name, None)
            self._node_changed(name, before)
        elif kind == "block":
            self._blocks_changed(snap.blocks.pop(name, None), None, name)
        else:
            self._config_changed(None)

    def flush(self) -> list[Op]:
        """The sink commands for everything changed since the last flush, in `diff()` order."""
        touched, self._touched = self._touched, {}
        bf: dict[int, FdbValue] = {}
        bn: dict[int, int] = {}
        af: dict[int, FdbValue] = {}
        an: dict[int, int] = {}
        vtep = self.vtep
        eps, off = self.snapshot.endpoints, self.off
        for name, (ep, was_on, old_vtep) in touched.items():
            if was_on:
                bf[ep.mk] = old_vtep              # type: ignore[assignment]
                bn[ep.nk] = ep.mk
                if ep.nk2 is not None:
                    bn[ep.nk2] = ep.mk
            cur = eps.get(name)
            if cur is not None and name not in off:
                af[cur.mk] = vtep[cur.node]
                an[cur.nk] = cur.mk
                if cur.nk2 is not None:
                    an[cur.nk2] = cur.mk
        return list(_ops([k for k in bn if k not in an], [k for k in bf if k not in af],
                         [k for k, v in af.items() if bf.get(k) != v],
                         [k for k, v in an.items() if bn.get(k) != v], af, an))

    # -- views -----------------------------------------------------------------------------------

    def fdb_items(self) -> Iterator[tuple[int, FdbValue]]:
        """(mk, (underlay, port)) of every installed endpoint."""
        vtep, off = self.vtep, self.off
        for name, ep in self.snapshot.endpoints.items():
            if name not in off:
                yield ep.mk, vtep[ep.node]

    def fdb_map(self) -> dict[int, FdbValue]:
        return dict(self.fdb_items())

    def neigh_map(self) -> dict[int, int]:
        off = self.off
        eps = self.snapshot.endpoints
        out = {ep.nk: ep.mk for name, ep in eps.items() if name not in off}
        out.update((ep.nk2, ep.mk) for name, ep in eps.items()
                   if ep.nk2 is not None and name not in off)
        return out

    def is_installed(self, name: str) -> bool:
        return name in self.snapshot.endpoints and name not in self.off

    def tables(self) -> Tables:
        """The public form, as `desired()` returns it (O(N): for tests and status)."""
        fdb = {(mk >> 48, mac_text(mk & MAC_MASK)): v for mk, v in self.fdb_items()}
        neigh = {neigh_key_text(nk): mac_text(mk & MAC_MASK) for nk, mk in self.neigh_map().items()}
        return Tables(fdb=fdb, neigh=neigh, skipped=dict(self.skipped))

    def bad(self) -> dict[str, str]:
        """Every key currently left out, with its reason."""
        return {**self.snapshot.bad, **self.skipped}

    def bad_count(self) -> int:
        return len(self.snapshot.bad) + len(self.skipped)

    # -- internals -------------------------------------------------------------------------------

    def _set_bad(self, key: str, reason: str) -> None:
        if self.snapshot.bad.get(key) != reason:
            self.snapshot.bad[key] = reason
            if self._track:
                self.bad_changes.append((key, reason))

    def _clear_bad(self, key: str) -> None:
        if self.snapshot.bad.pop(key, None) is not None and self._track:
            self.bad_changes.append((key, None))

    def _set_skipped(self, name: str, reason: str | None) -> None:
        key = self.layout.endpoints + name
        if reason is None:
            if self.skipped.pop(key, None) is not None and self._track:
                self.bad_changes.append((key, None))
        elif self.skipped.get(key) != reason:
            self.skipped[key] = reason
            if self._track:
                self.bad_changes.append((key, reason))

    def _known(self, node: str) -> bool:
        return node in self.snapshot.nodes or node in self.block_owners

    def _node_state(self, node: str) -> tuple[bool, FdbValue | None]:
        return self._known(node), self.vtep.get(node)

    def _node_changed(self, node: str, before: tuple[bool, FdbValue | None]) -> None:
        rec = self.snapshot.nodes.get(node)
        vtep = None if rec is None else (rec.underlay, rec.port)
        names = self.by_node.get(node, ())
        eps = self.snapshot.endpoints
        if vtep != before[1]:
            off = self.off
            for name in names:                     # remember what the tables held
                if name not in off:
                    self._touch(name, eps[name], before[1])
            if vtep is None:
                self.vtep.pop(node, None)
            else:
                self.vtep[node] = vtep
        if self._known(node) != before[0]:
            for name in list(names):
                self._reclaim(name)
        if vtep != before[1]:
            for name in list(names):
                self._refresh(name)

    def _blocks_changed(self, old: BlockRecord | None, new: BlockRecord | None,
                        segment: str) -> None:
        if new is not None:
            self.snapshot.blocks[segment] = new
        for rec, step in ((old, -1), (new, 1)):
            if rec is None:
                continue
            before = self._node_state(rec.node)
            count = self.block_owners.get(rec.node, 0) + step
            if count > 0:
                self.block_owners[rec.node] = count
            else:
                self.block_owners.pop(rec.node, None)
            self._node_changed(rec.node, before)

    def _config_changed(self, cfg: NetworkConfig | None) -> None:
        old = self.snapshot.config
        self.snapshot.config = cfg
        if (old is None) != (cfg is None) or (old is not None and cfg is not None
                                              and old.vni != cfg.vni):
            for name in list(self.snapshot.endpoints):   # rare: O(N)
                self._reclaim(name)

    def _claim_reason(self, ep: EndpointRecord) -> str | None:
        """Why `ep` claims nothing (None: it claims its MAC and IP)."""
        if not self._known(ep.node):
            return f"endpoint names unknown node {ep.node!r}"
        cfg = self.snapshot.config
        if cfg is not None and ep.vni != cfg.vni:
            return f"endpoint VNI {ep.vni} is not the network's VNI {cfg.vni}"
        return None

    @staticmethod
    def _winner(claims: dict[int, Any], k: int) -> str | None:
        entry = claims.get(k)
        if entry is None or type(entry) is str:
            return entry
        return entry[0]                            # kept sorted, oldest first

    def _claim_add(self, claims: dict[int, Any], k: int, name: str) -> None:
        entry = claims.get(k)
        if entry is None:
            claims[k] = name
            return
        if type(entry) is str:
            entry = claims[k] = [entry]
        eps = self.snapshot.endpoints
        bisect.insort(entry, name, key=lambda n: (eps[n].rev, n))

    @staticmethod
    def _claim_del(claims: dict[int, Any], k: int, name: str) -> None:
        entry = claims.get(k)
        if entry == name:
            del claims[k]
        elif type(entry) is list and name in entry:
            entry.remove(name)
            if len(entry) == 1:
                claims[k] = entry[0]

    @staticmethod
    def _claims(claims: dict[int, Any], k: int, name: str) -> bool:
        entry = claims.get(k)
        return entry == name or (type(entry) is list and name in entry)

    def _add_endpoint(self, name: str, ep: EndpointRecord) -> None:
        self.snapshot.endpoints[name] = ep
        self.off.add(name)
        names = self.by_node.get(ep.node)
        if names is None:
            names = self.by_node[ep.node] = []
        names.append(name)
        self._reclaim(name)

    def _remove_endpoint(self, name: str) -> None:
        ep = self.snapshot.endpoints[name]
        if self._claims(self.mac_claims, ep.mk, name):
            self._unclaim(name, ep)
        self._set_skipped(name, None)
        del self.snapshot.endpoints[name]
        self.off.discard(name)
        names = self.by_node[ep.node]
        names.remove(name)
        if not names:
            del self.by_node[ep.node]

    def _reclaim(self, name: str) -> None:
        """Make `name`'s claims match whether it may claim now; refresh whoever that affects."""
        ep = self.snapshot.endpoints[name]
        reason = self._claim_reason(ep)
        claiming = self._claims(self.mac_claims, ep.mk, name)
        if reason is None and not claiming:
            before = self._winners(ep)
            self._claim_add(self.mac_claims, ep.mk, name)
            for nk in ep.nks:
                self._claim_add(self.ip_claims, nk, name)
            self._winners_changed(ep, before)
            self._refresh(name)
        elif reason is not None:
            if claiming:
                self._unclaim(name, ep)
            self._set_skipped(name, reason)
        else:
            self._refresh(name)

    def _unclaim(self, name: str, ep: EndpointRecord) -> None:
        before = self._winners(ep)
        self._claim_del(self.mac_claims, ep.mk, name)
        for nk in ep.nks:
            self._claim_del(self.ip_claims, nk, name)
        self._set_on(name, ep, False)
        self._winners_changed(ep, before)

    def _claimed(self, ep: EndpointRecord) -> list[tuple[int, dict[int, Any]]]:
        """(key, claim index) of everything `ep` claims: its MAC, its IPv4 and/or IPv6."""
        out = [(ep.mk, self.mac_claims), (ep.nk, self.ip_claims)]
        if ep.nk2 is not None:
            out.append((ep.nk2, self.ip_claims))
        return out

    def _winners(self, ep: EndpointRecord) -> list[str | None]:
        return [self._winner(claims, k) for k, claims in self._claimed(ep)]

    def _winners_changed(self, ep: EndpointRecord, before: list[str | None]) -> None:
        """After a claim on `ep`'s MAC and IPs came or went: where the winner changed, every
        claimant's reason names the new winner and the old and new winners' entries move
        (O(claimants): one, unless someone writes duplicates)."""
        for (k, claims), was in zip(self._claimed(ep), before):
            if self._winner(claims, k) != was:
                if was is not None:
                    self._refresh(was)
                for other in _names(claims.get(k)):
                    self._refresh(other)

    def _refresh(self, name: str) -> None:
        """Recompute `name`'s reason and whether it is in the tables."""
        ep = self.snapshot.endpoints.get(name)
        if ep is None:
            return
        on = False
        if self._claims(self.mac_claims, ep.mk, name):
            wm = self._winner(self.mac_claims, ep.mk)
            wi = self._winner(self.ip_claims, ep.nk)
            lost = ep.nk
            if wi == name and ep.nk2 is not None:
                wi, lost = self._winner(self.ip_claims, ep.nk2), ep.nk2
            if wm != name:
                self._set_skipped(name, _dup_reason("MAC", ep.mac, self.layout, wm or ""))
            elif wi != name:
                self._set_skipped(name, _dup_reason("IP", neigh_key_text(lost)[1], self.layout,
                                                    wi or ""))
            else:
                self._set_skipped(name, None)
                on = ep.node != self.self_node and ep.node in self.vtep
        self._set_on(name, ep, on)

    def _touch(self, name: str, ep: EndpointRecord, vtep: FdbValue | None) -> None:
        """Remember `name`'s table contribution before its first change in this batch."""
        if self._track and name not in self._touched:
            self._touched[name] = (ep, name not in self.off, vtep)

    def _set_on(self, name: str, ep: EndpointRecord, on: bool) -> None:
        was = name not in self.off
        if was == on:
            return
        self._touch(name, ep, self.vtep.get(ep.node) if was else None)
        if on:
            self.off.discard(name)
        else:
            self.off.add(name)
        self.installed += 1 if on else -1


def _ops(n_del: list[int], f_del: list[int], f_add: list[int], n_add: list[int],
         fdb: Mapping[int, FdbValue], neigh: Mapping[int, int]) -> Iterator[Op]:
    """Ops made one at a time: 200,000 of them as a list would cost ~45 MB at a cold start."""
    for nk in sorted(n_del):
        yield Op("neigh_del", neigh_key_text(nk))
    for mk in sorted(f_del):
        yield Op("fdb_del", (mk >> 48, mac_text(mk & MAC_MASK)))
    for mk in sorted(f_add):
        yield Op("fdb_add", (mk >> 48, mac_text(mk & MAC_MASK), *fdb[mk]))
    for nk in sorted(n_add):
        yield Op("neigh_add", (*neigh_key_text(nk), mac_text(neigh[nk] & MAC_MASK)))


def diff_live(old: LiveTables | None, new: LiveTables) -> Iterator[Op]:
    """The sink commands turning `old`'s tables into `new`'s (same result as `diff()` of their
    `tables()`, without building them as strings: a re-list at 100,000 endpoints compares
    ints). A generator: consume it before changing either side. From nothing (a cold start)
    it streams the additions without building any map."""
    if old is None or not old.installed:
        off = new.off
        eps = [ep for name, ep in new.snapshot.endpoints.items() if name not in off]
        vtep = new.vtep
        for ep in eps:
            yield Op("fdb_add", (ep.mk >> 48, mac_text(ep.mk & MAC_MASK), *vtep[ep.node]))
        for ep in eps:
            yield Op("neigh_add", (*neigh_key_text(ep.nk), mac_text(ep.mk & MAC_MASK)))
            if ep.nk2 is not None:
                yield Op("neigh_add", (*neigh_key_text(ep.nk2), mac_text(ep.mk & MAC_MASK)))
        return
    of, on = old.fdb_map(), old.neigh_map()
    nf, nn = new.fdb_map(), new.neigh_map()
    n_del = [k for k in on if k not in nn]
    f_del = [k for k in of if k not in nf]
    f_add = [k for k, v in nf.items() if of.get(k) != v]
    n_add = [k for k, v in nn.items() if on.get(k) != v]
    yield from _ops(n_del, f_del, f_add, n_add, nf, nn)
