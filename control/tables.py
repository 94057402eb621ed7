"""From etcd's state to fast-path table commands. Pure: no etcd, no threads, no devices.

1. `Snapshot` holds the parsed records of one network, keyed like etcd. `put(key, value)` /
   `delete(key)` apply one etcd event; a value that does not parse is kept out of the snapshot and
   listed in `Snapshot.bad` with the reason (the caller logs it once and counts it).
2. `desired(snapshot, self_node)` is the table this agent should hold: every endpoint of a live
   node (node key present = lease not expired) except this node's own (those are local on the
   bridge). fdb: endpoint MAC -> node underlay IP/port; neigh: endpoint IP -> MAC. Records that
   cannot be used (unknown node, VNI mismatch, duplicate MAC or IP) go to `Tables.skipped`.
3. `diff(old, new)` is the list of sink commands turning `old` into `new`: removals first (neigh,
   then fdb), then additions (fdb, then neigh, so an ARP answer never names an unforwarded MAC).
4. `apply_ops(sink, ops)` drives a `TableSink`.

The same three steps serve a watch event, a reconnect and a re-list after compaction.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from .keys import Layout, block_from_segment
from .records import BlockRecord, EndpointRecord, NetworkConfig, NodeRecord

log = logging.getLogger(__name__)

FdbKey = tuple[int, str]          # (vni, mac)
FdbValue = tuple[str, int]        # (vtep, port)
NeighKey = tuple[int, str]        # (vni, ip)


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

    @classmethod
    def from_kvs(cls, layout: Layout, kvs: Iterable[tuple[str, bytes]]) -> Snapshot:
        snap = cls(layout)
        for key, value in kvs:
            snap.put(key, value)
        return snap

    def put(self, key: str, value: bytes) -> str | None:
        """Apply a PUT. Returns the reason if the value is bad (the key is then absent)."""
        self.delete(key)
        kind_name = self.layout.classify(key)
        if kind_name is None:
            return None
        kind, name = kind_name
        try:
            if kind == "config":
                self.config = NetworkConfig.parse(value)
            elif kind == "node":
                self.nodes[name] = NodeRecord.parse(value)
            elif kind == "block":
                block_from_segment(name)
                self.blocks[name] = BlockRecord.parse(value)
            else:
                self.endpoints[name] = EndpointRecord.parse(value)
        except ValueError as e:
            self.bad[key] = str(e)
            return str(e)
        return None

    def delete(self, key: str) -> None:
        self.bad.pop(key, None)
        kind_name = self.layout.classify(key)
        if kind_name is None:
            return
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


@dataclass(frozen=True)
class Tables:
    fdb: Mapping[FdbKey, FdbValue] = field(default_factory=dict)
    neigh: Mapping[NeighKey, str] = field(default_factory=dict)
    # endpoint key -> why it is not in the tables; not part of equality
    skipped: Mapping[str, str] = field(default_factory=dict, compare=False)


def desired(snapshot: Snapshot, self_node: str) -> Tables:
    """The tables `self_node` should hold for `snapshot` (see the module docstring)."""
    fdb: dict[FdbKey, FdbValue] = {}
    neigh: dict[NeighKey, str] = {}
    fdb_owner: dict[FdbKey, str] = {}
    neigh_owner: dict[NeighKey, str] = {}
    skipped: dict[str, str] = {}
    known_nodes = set(snapshot.nodes) | {rec.node for rec in snapshot.blocks.values()}
    cfg = snapshot.config
    for name in sorted(snapshot.endpoints):
        ep = snapshot.endpoints[name]
        key = snapshot.layout.endpoints + name
        if ep.node == self_node:
            continue
        if ep.node not in known_nodes:
            skipped[key] = f"endpoint names unknown node {ep.node!r}"
            continue
        node = snapshot.nodes.get(ep.node)
        if node is None:
            continue                     # known node, lease expired: inactive, not an error
        if cfg is not None and ep.vni != cfg.vni:
            skipped[key] = f"endpoint VNI {ep.vni} is not the network's VNI {cfg.vni}"
            continue
        fk: FdbKey = (ep.vni, ep.mac)
        nk: NeighKey = (ep.vni, ep.address)
        if fk in fdb_owner:
            skipped[key] = f"duplicate MAC {ep.mac} (also {snapshot.layout.endpoints}{fdb_owner[fk]})"
            continue
        if nk in neigh_owner:
            skipped[key] = f"duplicate IP {ep.address} (also {snapshot.layout.endpoints}{neigh_owner[nk]})"
            continue
        fdb_owner[fk] = name
        neigh_owner[nk] = name
        fdb[fk] = (node.underlay, node.port)
        neigh[nk] = ep.mac
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


def apply_ops(sink: TableSink, ops: Iterable[Op]) -> int:
    """Run `ops` on `sink`. A failing call is logged and skipped; returns the number that failed."""
    failed = 0
    for op in ops:
        try:
            getattr(sink, op.name)(*op.args)
        except Exception:  # the sink is another team's code: never let it stop the sync
            failed += 1
            log.exception("table sink %s%r failed", op.name, op.args)
    return failed
