"""The etcd key layout of one network. Everything an agent reads lives under one prefix.

    <prefix>/networks/<network>/config                          NetworkConfig   (persistent)
    <prefix>/networks/<network>/nodes/<node>                    NodeRecord      (on the node's lease)
    <prefix>/networks/<network>/blocks/<A.B.C.D>-<N>            BlockRecord     (persistent)
    <prefix>/networks/<network>/endpoints/<container>/<ifname>  EndpointRecord  (persistent)

The default prefix is "/vxtap". One prefix watch on `Layout.root` sees every change.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass
from typing import Literal

from .records import check_ifname, check_name

DEFAULT_PREFIX = "/vxtap"

Kind = Literal["config", "node", "block", "endpoint"]


def block_key_segment(block: ipaddress.IPv4Network | str) -> str:
    """"10.244.1.0/24" -> "10.244.1.0-24" (one key segment, readable with etcdctl)."""
    return str(block).replace("/", "-")


def block_from_segment(segment: str) -> ipaddress.IPv4Network:
    addr, sep, plen = segment.rpartition("-")
    if not sep or not plen.isdigit():
        raise ValueError(f"block key {segment!r} is not A.B.C.D-N")
    try:
        return ipaddress.IPv4Network(f"{addr}/{plen}", strict=True)
    except ValueError as e:
        raise ValueError(f"block key {segment!r} is not a valid block ({e})") from None


@dataclass(frozen=True)
class Layout:
    prefix: str
    network: str

    def __post_init__(self) -> None:
        if not self.prefix.startswith("/") or self.prefix.endswith("/") and self.prefix != "/":
            raise ValueError(f"etcd prefix {self.prefix!r} must start with '/' and not end with '/'")
        check_name(self.network, "network")

    @functools.cached_property
    def root(self) -> str:
        """The watched prefix, with its trailing slash (network "a" must not see network "ab")."""
        return f"{self.prefix.rstrip('/')}/networks/{self.network}/"

    @functools.cached_property
    def config(self) -> str:
        return self.root + "config"

    @functools.cached_property
    def nodes(self) -> str:
        return self.root + "nodes/"

    @functools.cached_property
    def blocks(self) -> str:
        return self.root + "blocks/"

    @functools.cached_property
    def endpoints(self) -> str:
        return self.root + "endpoints/"

    def node(self, node: str) -> str:
        return self.nodes + check_name(node, "node")

    def block(self, block: ipaddress.IPv4Network | str) -> str:
        return self.blocks + block_key_segment(block)

    def endpoint(self, container_id: str, ifname: str) -> str:
        return f"{self.endpoints}{check_name(container_id, 'container_id')}/{check_ifname(ifname)}"

    def classify(self, key: str) -> tuple[Kind, str] | None:
        """("node", "n1"), ("block", "10.244.1.0-24"), ("endpoint", "cid/eth0"), ("config", "").

        None for a key under the root that is not part of the layout (ignored, not an error).
        """
        root = self.root
        if not key.startswith(root):
            return None
        rest = key[len(root):]
        if rest == "config":
            return ("config", "")
        kind, sep, name = rest.partition("/")
        if not sep or not name:
            return None
        if kind == "nodes" and "/" not in name:
            return ("node", name)
        if kind == "blocks" and "/" not in name:
            return ("block", name)
        if kind == "endpoints" and name.count("/") == 1:
            return ("endpoint", name)
        return None
