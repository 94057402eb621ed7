"""Per-node address blocks: which block a node owns, how it is taken, how it is used.

A block is one /block_prefix of the network subnet. Taking one is a single etcd transaction

    if create_revision(<blocks>/<block>) == 0 and create_revision(<index>node-block/<node>) == 0
    then put <blocks>/<block> {"node": ...}, put <index>/node-block/<node> "<block segment>"

so of two nodes racing for the same block exactly one succeeds. The owner index key lets a node
(and the CNI plugin's direct-etcd path) find its block with ONE key read instead of the whole
blocks prefix.

1. Find: read the owner index key (one key). If it names a block whose record names us, that is
   ours. Without an index key (first start, or blocks written before the index existed) read the
   blocks prefix once; a block owned by us there is adopted (its index key written).
2. Take: the first choice is spread by a hash of the node name (blake2b, stable across hosts and
   Python runs), then probe onward, wrapping. Agents starting together start at different blocks,
   so they rarely race (50 agents on 256 blocks: a handful of conflicts, not 50*49/2).
   Blocks known taken from the read in step 1 are skipped without a transaction.

Inside a block: .1 is the gateway (the node bridge's address), .2 .. broadcast-1 go to pods.
Pods get the network's prefix length (one L2 segment; the fast path answers ARP for remote pods).

Dual stack (config `subnet6`): the node's IPv6 block is the /block_prefix6 of subnet6 with the
same index as its IPv4 block in subnet (`block6_of`), so owning the IPv4 block owns the IPv6 one:
no second allocation, no second etcd key. Inside it ::1 is the gateway, ::2 .. last-1 go to
pods, which get subnet6's prefix length (the fast path answers neighbour solicitations).

Index keys (node-block here; mac/ip in control/endpoints.py) live under
`<prefix>/index/<network>/`, outside the prefix agents list and watch, so they cost agents
nothing. The helpers are here, not in keys.py, while keys.py is being changed on another branch.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import pyetcd  # type: ignore[import-untyped]

from .keys import Layout, block_from_segment, block_key_segment
from .records import BlockRecord, NetworkConfig, check_name

log = logging.getLogger(__name__)


# -- index keys ------------------------------------------------------------------------------

def index_root(layout: Layout) -> str:
    """<prefix>/index/<network>/: beside the watched root, not under it, so N agents never list
    or watch the index keys (they would triple what every agent reads)."""
    return f"{layout.prefix.rstrip('/')}/index/{layout.network}/"


def node_block_key(layout: Layout, node: str) -> str:
    """<prefix>/index/<network>/node-block/<node> -> "A.B.C.D-N" (the block segment it owns)."""
    return f"{index_root(layout)}node-block/{check_name(node, 'node')}"


# -- blocks ----------------------------------------------------------------------------------

def iter_blocks(cfg: NetworkConfig) -> Iterator[ipaddress.IPv4Network]:
    return cfg.network.subnets(new_prefix=cfg.block_prefix)


def block_count(cfg: NetworkConfig) -> int:
    return 1 << (cfg.block_prefix - cfg.network.prefixlen)


def nth_block(cfg: NetworkConfig, i: int) -> ipaddress.IPv4Network:
    size = 1 << (32 - cfg.block_prefix)
    return ipaddress.IPv4Network((int(cfg.network.network_address) + i * size, cfg.block_prefix))


def first_choice(node: str, count: int) -> int:
    """Where `node` starts probing among `count` blocks: a stable hash of its name."""
    digest = hashlib.blake2b(node.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def probe_order(cfg: NetworkConfig, node: str) -> Iterator[ipaddress.IPv4Network]:
    """Every block of the subnet, starting at the node's hashed first choice, wrapping."""
    n = block_count(cfg)
    start = first_choice(node, n)
    for k in range(n):
        yield nth_block(cfg, (start + k) % n)


def block6_of(cfg: NetworkConfig, block: ipaddress.IPv4Network) -> ipaddress.IPv6Network | None:
    """The IPv6 block paired with IPv4 `block` (same index), or None for an IPv4-only network."""
    net6 = cfg.network6
    if net6 is None:
        return None
    i = (int(block.network_address) - int(cfg.network.network_address)) >> (32 - cfg.block_prefix)
    size6 = 1 << (128 - cfg.block_prefix6)
    return ipaddress.IPv6Network((int(net6.network_address) + i * size6, cfg.block_prefix6))


@dataclass(frozen=True)
class BlockPlan:
    """What a node's pods get from its block (and its IPv6 block, if the network has one)."""

    block: ipaddress.IPv4Network
    subnet: ipaddress.IPv4Network
    block6: ipaddress.IPv6Network | None = None
    subnet6: ipaddress.IPv6Network | None = None

    @classmethod
    def of(cls, block: ipaddress.IPv4Network, cfg: NetworkConfig) -> BlockPlan:
        return cls(block, cfg.network, block6_of(cfg, block), cfg.network6)

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return self.block.network_address + 1

    @property
    def range_start(self) -> ipaddress.IPv4Address:
        return self.block.network_address + 2

    @property
    def range_end(self) -> ipaddress.IPv4Address:
        return self.block.broadcast_address - 1

    def to_dict(self) -> dict[str, str]:
        out = {"block": str(self.block), "subnet": str(self.subnet), "gateway": str(self.gateway),
               "range_start": str(self.range_start), "range_end": str(self.range_end)}
        if self.block6 is not None and self.subnet6 is not None:
            b6 = self.block6
            out.update(block6=str(b6), subnet6=str(self.subnet6),
                       gateway6=str(b6.network_address + 1),
                       range6_start=str(b6.network_address + 2),
                       range6_end=str(b6.broadcast_address - 1))
        return out


def own_block(blocks: dict[str, str], node: str) -> ipaddress.IPv4Network | None:
    """The lowest block owned by `node` in {segment: owner}, or None."""
    mine = sorted((block_from_segment(seg) for seg, owner in blocks.items() if owner == node),
                  key=lambda n: int(n.network_address))
    return mine[0] if mine else None


def read_blocks(client: pyetcd.MultiEndpointEtcd3Client, layout: Layout) -> dict[str, str]:
    """{block segment: owner node} of every well-formed block record (bad ones are skipped).
    Reads the whole blocks prefix: for operators and the first start of a node, never per pod."""
    out: dict[str, str] = {}
    for value, meta in client.get_prefix(layout.blocks):
        seg = meta.key.decode(errors="replace")[len(layout.blocks):]
        try:
            block_from_segment(seg)
            out[seg] = BlockRecord.parse(value).node
        except ValueError as e:
            log.warning("skipping bad block record %s: %s", meta.key.decode(errors="replace"), e)
    return out


def _owner(value: bytes | None) -> str | None:
    if value is None:
        return None
    try:
        return BlockRecord.parse(value).node
    except ValueError:
        return None


def find_block(client: pyetcd.MultiEndpointEtcd3Client, layout: Layout,
               node: str) -> ipaddress.IPv4Network | None:
    """The node's block by its owner index key: two single-key reads, no prefix read.
    None if the index key is missing, malformed, or its block no longer names the node."""
    return _find_block(client, layout, node)[0]


def _find_block(client: pyetcd.MultiEndpointEtcd3Client, layout: Layout,
                node: str) -> tuple[ipaddress.IPv4Network | None, bytes | None]:
    """(block or None, the raw index value or None)."""
    seg, _ = client.get(node_block_key(layout, node))
    if seg is None:
        return None, None
    try:
        block = block_from_segment(seg.decode(errors="replace"))
    except ValueError as e:
        log.warning("node %s: bad block index %s: %s", node, node_block_key(layout, node), e)
        return None, seg
    value, _ = client.get(layout.block(block))
    return (block if _owner(value) == node else None), seg


def _fits(block: ipaddress.IPv4Network, cfg: NetworkConfig) -> bool:
    return block.subnet_of(cfg.network) and block.prefixlen == cfg.block_prefix


def take_block(client: pyetcd.MultiEndpointEtcd3Client, layout: Layout, cfg: NetworkConfig,
               node: str, stats: dict[str, int] | None = None) -> ipaddress.IPv4Network:
    """The node's existing block, or a free one taken atomically (hashed first choice, then
    onward). Raises ValueError when the subnet is exhausted; etcd errors propagate.
    `stats` (optional) gets "txns" and "conflicts" (transactions that lost a race)."""
    st = stats if stats is not None else {}
    st.setdefault("txns", 0)
    st.setdefault("conflicts", 0)
    index_key = node_block_key(layout, node)
    mine, idx_value = _find_block(client, layout, node)
    if mine is not None and _fits(mine, cfg):
        return mine
    blocks = read_blocks(client, layout)          # first start (or pre-index data): once
    legacy = own_block(blocks, node)
    if legacy is not None and _fits(legacy, cfg):
        client.put(index_key, block_key_segment(legacy))
        log.info("node %s: adopted its block %s (index written)", node, legacy)
        return legacy
    if legacy is not None or mine is not None:
        log.warning("node %s owns block %s, which does not fit network %s /%d; taking a new one",
                    node, legacy or mine, cfg.subnet, cfg.block_prefix)
    value = BlockRecord(node).to_json()
    tx = client.transactions
    for block in probe_order(cfg, node):
        seg = block_key_segment(block)
        if seg in blocks:
            continue
        key = layout.block(block)
        st["txns"] += 1
        # our index key may be stale (its block no longer names us): replace it
        idx_cmp = tx.create(index_key) == 0 if idx_value is None else \
            tx.value(index_key) == idx_value
        ok, _ = client.transaction(compare=[tx.create(key) == 0, idx_cmp],
                                   success=[tx.put(key, value), tx.put(index_key, seg)],
                                   failure=[])
        if ok:
            log.info("node %s took address block %s", node, block)
            return block
        st["conflicts"] += 1
        # lost the race for this block (or it appeared since the read): try the next one
    raise ValueError(f"network {layout.network}: no free /{cfg.block_prefix} block left in {cfg.subnet}")
