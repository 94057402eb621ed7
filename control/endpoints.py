"""Endpoint records in etcd: ONE write (a transaction) per add and per delete, no lease.

An endpoint's MAC and IPs are unique in its network. Each record has one index key for its MAC
and one per address (IPv4 and/or IPv6), written and removed in the same transaction as the
record itself:

    <prefix>/networks/<net>/endpoints/<container>/<ifname>   the EndpointRecord (JSON)
    <prefix>/index/<net>/mac/<mac>                  "<container>/<ifname>" (lower-case MAC)
    <prefix>/index/<net>/ip/<A.B.C.D>               "<container>/<ifname>" (no prefix length)
    <prefix>/index/<net>/ip/<IPv6>                  the same, compressed (RFC 5952) so that
                                                    every spelling of an address is one key

The index is beside the watched prefix, not under it: agents never see it.

1. add (common case, a new endpoint): one Txn
       if create_revision(record) == 0 and create_revision(mac index) == 0
          and create_revision(ip index) == 0
       then put record, put mac index, put ip index
   so two writers can never register the same MAC or IP. etcd applies the three puts at one
   revision; agents' watches see only the record.
2. If that transaction fails, one read tells why: the MAC or IP index names another endpoint
   -> `DuplicateEndpoint` (nothing written); the same record is already there -> nothing written
   (CNI ADD retried); the record exists with other values -> one guarded update transaction
   (record, new index keys, removal of its old ones; the compares pin what was read).
3. del: read the record (for its MAC and IPs), then one Txn
       if mod_revision(record) == read and value(each index key) == name
       then delete the record and its index keys
   An index key that does not name this endpoint (records written by hand, or before the index
   existed) is left alone, and only the record goes. Deleting a missing endpoint writes nothing.
"""

from __future__ import annotations

from typing import Any

import pyetcd  # type: ignore[import-untyped]

from .ipam import index_root
from .keys import Layout
from .records import EndpointRecord, NetworkConfig, check_ipv4_interface, normalize_ip, parse_ipv6_interface

MAX_ATTEMPTS = 5      # update/delete transactions retried when the record changed under us


class DuplicateEndpoint(ValueError):
    """The MAC or IP is registered to another endpoint of the network."""


def mac_index_key(layout: Layout, mac: str) -> str:
    return f"{index_root(layout)}mac/{mac.lower()}"


def ip_index_key(layout: Layout, ip: str) -> str:
    """`ip` (IPv4 or IPv6) with or without a prefix length; IPv6 in its canonical spelling."""
    return f"{index_root(layout)}ip/{normalize_ip(ip)}"


def index_keys(layout: Layout, rec: EndpointRecord) -> tuple[str, ...]:
    """(MAC index key, IP index key per address)."""
    return (mac_index_key(layout, rec.mac),
            *(ip_index_key(layout, a) for a in (rec.address, rec.address6) if a is not None))


def _index_what(layout: Layout, rec: EndpointRecord) -> list[tuple[str, str]]:
    return list(zip(index_keys(layout, rec),
                    [f"MAC {rec.mac}", *(f"IP {a}" for a in (rec.address, rec.address6)
                                         if a is not None)]))


def read_config(client: pyetcd.MultiEndpointEtcd3Client, layout: Layout) -> NetworkConfig:
    """The network's config; ValueError if it is missing or malformed."""
    value, _ = client.get(layout.config)
    if value is None:
        raise ValueError(f"network {layout.network!r} has no config at {layout.config} "
                         "(create it with `vxtap network set`)")
    try:
        return NetworkConfig.parse(value)
    except ValueError as e:
        raise ValueError(f"{layout.config}: {e}") from None


def make_endpoint(cfg: NetworkConfig, node: str, mac: str, ip: str | None,
                  gateway: str | None, ip6: str | None = None,
                  gateway6: str | None = None) -> EndpointRecord:
    """Validate an endpoint for this network: its IPv4 address must be inside the network
    subnet, its IPv6 address inside the network's subnet6 (a network without one takes none)."""
    if ip:
        iface = check_ipv4_interface(ip)
        if iface.ip not in cfg.network:
            raise ValueError(f"ip: {ip} is outside the network subnet {cfg.subnet}")
    if ip6:
        a6, _ = parse_ipv6_interface(ip6)
        net6 = cfg.network6
        if net6 is None:
            raise ValueError(f"ip6: {ip6} given, but the network has no IPv6 subnet (set one "
                             "with `vxtap network set --subnet6`)")
        if not int(net6.network_address) <= a6 <= int(net6.broadcast_address):
            raise ValueError(f"ip6: {ip6} is outside the network subnet6 {cfg.subnet6}")
    return EndpointRecord(mac=mac, ip=ip or None, node=node, vni=cfg.vni, gateway=gateway or None,
                          ip6=ip6 or None, gateway6=gateway6 or None)


def _get(client: pyetcd.MultiEndpointEtcd3Client, key: str) -> tuple[bytes | None, int]:
    """(value, mod_revision) of one key; (None, 0) if absent."""
    value, meta = client.get(key)
    return (None, 0) if value is None else (value, int(meta.mod_revision))


def put_endpoint(client: pyetcd.MultiEndpointEtcd3Client, layout: Layout, container_id: str,
                 ifname: str, rec: EndpointRecord) -> dict[str, Any]:
    """Register an endpoint (see the module docstring). Raises DuplicateEndpoint."""
    key = layout.endpoint(container_id, ifname)
    name = key[len(layout.endpoints):].encode()
    idx_keys = index_keys(layout, rec)
    value = rec.to_json()
    tx = client.transactions
    ok, _ = client.transaction(
        compare=[tx.create(key) == 0, *(tx.create(k) == 0 for k in idx_keys)],
        success=[tx.put(key, value), *(tx.put(k, name) for k in idx_keys)], failure=[])
    for _attempt in range(MAX_ATTEMPTS):
        if ok:
            return {"key": key, **rec.to_dict()}
        old_value, old_rev = _get(client, key)
        compare = [tx.mod(key) == old_rev] if old_value is not None else [tx.create(key) == 0]
        success = [tx.put(key, value)]
        wanted = set(idx_keys)
        for idx, what in _index_what(layout, rec):
            owner, _ = _get(client, idx)
            if owner is None:
                compare.append(tx.create(idx) == 0)
                success.append(tx.put(idx, name))
            elif owner != name:
                raise DuplicateEndpoint(
                    f"{what} is already registered to endpoint "
                    f"{owner.decode(errors='replace')} in network {layout.network} ({idx})")
            else:
                compare.append(tx.value(idx) == name)
        if old_value is not None:
            try:
                old = EndpointRecord.parse(old_value)
            except ValueError:
                old = None
            if old == rec and len(success) == 1:
                return {"key": key, **rec.to_dict()}         # already registered as asked
            for idx in set(index_keys(layout, old)) - wanted if old is not None else ():
                if _get(client, idx)[0] == name:             # our old index keys go
                    compare.append(tx.value(idx) == name)
                    success.append(tx.delete(idx))
        ok, _ = client.transaction(compare=compare, success=success, failure=[])
    raise ValueError(f"endpoint {key} kept changing during {MAX_ATTEMPTS} update attempts")


def delete_endpoint(client: pyetcd.MultiEndpointEtcd3Client, layout: Layout, container_id: str,
                    ifname: str) -> dict[str, Any]:
    """Delete one endpoint and its index keys; deleting a missing one is not an error (CNI DEL
    is idempotent) and writes nothing."""
    key = layout.endpoint(container_id, ifname)
    return {"key": key, "deleted": _delete_key(client, layout, key)}


def _delete_key(client: pyetcd.MultiEndpointEtcd3Client, layout: Layout, key: str) -> bool:
    name = key[len(layout.endpoints):].encode()
    tx = client.transactions
    for attempt in range(MAX_ATTEMPTS):
        value, rev = _get(client, key)
        if value is None:
            return False
        try:
            idx_keys: tuple[str, ...] = index_keys(layout, EndpointRecord.parse(value))
        except ValueError:
            idx_keys = ()                      # a bad record: no index keys of its own
        if attempt > 0:                        # first try assumes the index is ours
            idx_keys = tuple(k for k in idx_keys if _get(client, k)[0] == name)
        ok, _ = client.transaction(
            compare=[tx.mod(key) == rev, *(tx.value(k) == name for k in idx_keys)],
            success=[tx.delete(key), *(tx.delete(k) for k in idx_keys)], failure=[])
        if ok:
            return True
    raise ValueError(f"endpoint {key} kept changing during {MAX_ATTEMPTS} delete attempts")


def get_endpoint(client: pyetcd.MultiEndpointEtcd3Client, layout: Layout, container_id: str,
                 ifname: str) -> dict[str, Any] | None:
    key = layout.endpoint(container_id, ifname)
    value, _ = client.get(key)
    if value is None:
        return None
    return {"key": key, **EndpointRecord.parse(value).to_dict()}


def list_endpoints(client: pyetcd.MultiEndpointEtcd3Client, layout: Layout) -> list[dict[str, Any]]:
    """Every endpoint record (operators' command: reads the endpoints prefix, paged)."""
    out: list[dict[str, Any]] = []
    for key, value in iter_prefix(client, layout.endpoints):
        try:
            out.append({"key": key, **EndpointRecord.parse(value).to_dict()})
        except ValueError as e:
            out.append({"key": key, "error": str(e)})
    return out


def iter_prefix(client: pyetcd.MultiEndpointEtcd3Client, prefix: str, page: int = 1000) -> Any:
    """(key, value) of every key under `prefix`, read in pages of `page` keys at one revision
    (never one unbounded response)."""
    from pyetcd import etcdrpc, utils  # type: ignore[import-untyped]
    start = prefix.encode()
    end = utils.prefix_range_end(start)
    rev = 0
    while True:
        req = etcdrpc.RangeRequest(key=start, range_end=end, limit=page, revision=rev,
                                   sort_order=etcdrpc.RangeRequest.ASCEND,
                                   sort_target=etcdrpc.RangeRequest.KEY)
        resp = client.kvstub.Range(req, client.timeout, credentials=client.call_credentials,
                                   metadata=client.metadata)
        rev = rev or int(resp.header.revision)
        for kv in resp.kvs:
            yield kv.key.decode(errors="replace"), kv.value
        if not resp.more or not resp.kvs:
            return
        start = resp.kvs[-1].key + b"\0"


def gc_node(client: pyetcd.MultiEndpointEtcd3Client, layout: Layout, node: str, *,
            force: bool = False, dry_run: bool = False) -> dict[str, Any]:
    """Remove every endpoint record of `node` (with its index keys): for a node whose agent is
    gone for good, so CNI DEL could not reach it. Refused while the node's key is alive (its
    agent runs) unless `force`. One delete transaction per endpoint."""
    alive, _ = client.get(layout.node(node))
    if alive is not None and not force:
        raise ValueError(f"node {node!r} is alive in network {layout.network} (its key "
                         f"{layout.node(node)} exists): stop its agent first, or give --force")
    removed: list[str] = []
    for key, value in iter_prefix(client, layout.endpoints):
        try:
            owner = EndpointRecord.parse(value).node
        except ValueError:
            continue
        if owner != node:
            continue
        if dry_run or _delete_key(client, layout, key):
            removed.append(key)
    return {"network": layout.network, "node": node, "node_alive": alive is not None,
            "dry_run": dry_run, "removed": removed}
