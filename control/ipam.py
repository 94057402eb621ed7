"""Per-node address blocks: which block a node owns, how it is taken, how it is used.

A block is one /block_prefix of the network subnet. Taking one is a single etcd transaction
`if create_revision(<blocks>/<block>) == 0 then put {"node": ...}`: of two nodes racing for the
same block exactly one transaction succeeds; the loser moves on to the next free block. A node
that restarts finds its block by owner and keeps it (blocks are persistent, not on the lease).

Inside a block: .1 is the gateway (the node bridge's address), .2 .. broadcast-1 go to pods.
Pods get the network's prefix length (one L2 segment; the fast path answers ARP for remote pods).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import pyetcd  # type: ignore[import-untyped]

from .keys import Layout, block_from_segment, block_key_segment
from .records import BlockRecord, NetworkConfig

log = logging.getLogger(__name__)


def iter_blocks(cfg: NetworkConfig) -> Iterator[ipaddress.IPv4Network]:
    return cfg.network.subnets(new_prefix=cfg.block_prefix)


@dataclass(frozen=True)
class BlockPlan:
    """What a node's pods get from its block."""

    block: ipaddress.IPv4Network
    subnet: ipaddress.IPv4Network

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
        return {"block": str(self.block), "subnet": str(self.subnet), "gateway": str(self.gateway),
                "range_start": str(self.range_start), "range_end": str(self.range_end)}


def own_block(blocks: dict[str, str], node: str) -> ipaddress.IPv4Network | None:
    """The lowest block owned by `node` in {segment: owner}, or None."""
    mine = sorted((block_from_segment(seg) for seg, owner in blocks.items() if owner == node),
                  key=lambda n: int(n.network_address))
    return mine[0] if mine else None


def read_blocks(client: pyetcd.MultiEndpointEtcd3Client, layout: Layout) -> dict[str, str]:
    """{block segment: owner node} of every well-formed block record (bad ones are skipped)."""
    out: dict[str, str] = {}
    for value, meta in client.get_prefix(layout.blocks):
        seg = meta.key.decode(errors="replace")[len(layout.blocks):]
        try:
            block_from_segment(seg)
            out[seg] = BlockRecord.parse(value).node
        except ValueError as e:
            log.warning("skipping bad block record %s: %s", meta.key.decode(errors="replace"), e)
    return out


def take_block(client: pyetcd.MultiEndpointEtcd3Client, layout: Layout, cfg: NetworkConfig,
               node: str) -> ipaddress.IPv4Network:
    """The node's existing block, or the first free one taken atomically. Raises ValueError when
    the subnet is exhausted; etcd errors propagate."""
    blocks = read_blocks(client, layout)
    mine = own_block(blocks, node)
    if mine is not None:
        if mine.subnet_of(cfg.network) and mine.prefixlen == cfg.block_prefix:
            return mine
        log.warning("node %s owns block %s, which does not fit network %s /%d; taking a new one",
                    node, mine, cfg.subnet, cfg.block_prefix)
    value = BlockRecord(node).to_json()
    for block in iter_blocks(cfg):
        if block_key_segment(block) in blocks:
            continue
        key = layout.block(block)
        ok, _ = client.transaction(compare=[client.transactions.create(key) == 0],
                                   success=[client.transactions.put(key, value)],
                                   failure=[client.transactions.get(key)])
        if ok:
            log.info("node %s took address block %s", node, block)
            return block
        # lost the race for this block (or it appeared since the read): try the next one
    raise ValueError(f"network {layout.network}: no free /{cfg.block_prefix} block left in {cfg.subnet}")
