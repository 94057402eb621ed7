"""The records stored in etcd: one dataclass per kind, JSON in, JSON out.

Every parser takes the raw bytes of an etcd value and either returns a record or raises
`ValueError` with a message that names the field. Unknown JSON fields are ignored (forward
compatibility); missing or mistyped fields are errors. MACs are normalised to lower case.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any

VNI_MAX = (1 << 24) - 1          # RFC 7348: 24-bit VXLAN Network Identifier
DEFAULT_VXLAN_PORT = 4789        # IANA-assigned VXLAN UDP port
MIN_BLOCK_HOSTS_PREFIX = 30      # a /30 leaves two usable addresses: gateway + one pod

_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


# -- field validators (shared by parsers, the control socket handlers and the CLI) ------------

def check_mac(value: object, field: str = "mac") -> str:
    """A unicast, non-zero Ethernet MAC "aa:bb:cc:dd:ee:ff", returned in lower case."""
    if not isinstance(value, str) or not _MAC_RE.match(value):
        raise ValueError(f"{field}: {value!r} is not a MAC address (want aa:bb:cc:dd:ee:ff)")
    mac = value.lower()
    first = int(mac[:2], 16)
    if first & 1:
        raise ValueError(f"{field}: {mac} is a multicast MAC address")
    if mac == "00:00:00:00:00:00":
        raise ValueError(f"{field}: {mac} is the all-zero MAC address")
    return mac


def check_name(value: object, field: str) -> str:
    """A node / network / container name usable as one etcd key segment."""
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ValueError(f"{field}: {value!r} is not a valid name "
                         "(letters, digits, '_', '.', '-'; up to 253; no leading punctuation)")
    return value


def check_ifname(value: object, field: str = "ifname") -> str:
    if not isinstance(value, str) or not _IFNAME_RE.match(value) or value in (".", ".."):
        raise ValueError(f"{field}: {value!r} is not a valid interface name (1-15 of [A-Za-z0-9_.-])")
    return value


def check_ipv4(value: object, field: str) -> str:
    if not isinstance(value, str):       # ints would pass ipaddress; the contract is ValueError
        raise ValueError(f"{field}: {value!r} is not an IPv4 address")  # noqa: TRY004
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise ValueError(f"{field}: {value!r} is not an IPv4 address") from None


def check_ipv4_interface(value: object, field: str = "ip") -> ipaddress.IPv4Interface:
    """An address with prefix, "10.244.1.2/16"; the address must not be the network or broadcast."""
    if not isinstance(value, str) or "/" not in value:
        raise ValueError(f"{field}: {value!r} is not an IPv4 address with prefix (want A.B.C.D/N)")
    try:
        iface = ipaddress.IPv4Interface(value)
    except ValueError:
        raise ValueError(f"{field}: {value!r} is not an IPv4 address with prefix (want A.B.C.D/N)") from None
    net = iface.network
    if net.prefixlen < 31 and iface.ip in (net.network_address, net.broadcast_address):
        raise ValueError(f"{field}: {value} is the network or broadcast address of {net}")
    return iface


def check_ipv4_network(value: object, field: str) -> ipaddress.IPv4Network:
    if not isinstance(value, str):
        raise ValueError(f"{field}: {value!r} is not an IPv4 CIDR")  # noqa: TRY004
    try:
        return ipaddress.IPv4Network(value, strict=True)
    except ValueError as e:
        raise ValueError(f"{field}: {value!r} is not an IPv4 CIDR ({e})") from None


def check_int(value: object, field: str, lo: int, hi: int) -> int:
    if type(value) is not int:           # bool is an int subclass: rejected too
        raise ValueError(f"{field}: {value!r} is not an integer")
    if not lo <= value <= hi:
        raise ValueError(f"{field}: {value} is out of range {lo}..{hi}")
    return value


def load_object(raw: bytes | str) -> dict[str, Any]:
    """Decode one etcd value: UTF-8 JSON whose top level is an object."""
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"malformed JSON: {e}") from None
    if type(obj) is not dict:
        raise ValueError(f"JSON value is a {type(obj).__name__}, not an object")
    return obj


def _need(obj: dict[str, Any], field: str) -> Any:
    if field not in obj:
        raise ValueError(f"missing field {field!r}")
    return obj[field]


def _dump(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


# -- records -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class NetworkConfig:
    """<prefix>/networks/<network>/config"""

    vni: int
    subnet: str                    # "10.244.0.0/16": the whole overlay, one L2 segment
    block_prefix: int = 24         # each node gets one /block_prefix of the subnet
    port: int = DEFAULT_VXLAN_PORT

    def __post_init__(self) -> None:
        check_int(self.vni, "vni", 0, VNI_MAX)
        check_int(self.port, "port", 1, 65535)
        net = check_ipv4_network(self.subnet, "subnet")
        check_int(self.block_prefix, "block_prefix", net.prefixlen, MIN_BLOCK_HOSTS_PREFIX)

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @classmethod
    def parse(cls, raw: bytes | str) -> NetworkConfig:
        obj = load_object(raw)
        return cls(vni=_need(obj, "vni"), subnet=_need(obj, "subnet"),
                   block_prefix=obj.get("block_prefix", 24), port=obj.get("port", DEFAULT_VXLAN_PORT))

    def to_dict(self) -> dict[str, Any]:
        return {"vni": self.vni, "subnet": self.subnet, "block_prefix": self.block_prefix,
                "port": self.port}

    def to_json(self) -> bytes:
        return _dump(self.to_dict())


@dataclass(frozen=True)
class NodeRecord:
    """<prefix>/networks/<network>/nodes/<node>, attached to the node's lease."""

    underlay: str                  # IPv4 VTEP address other nodes send to (the fast path is IPv4)
    port: int                      # VXLAN UDP port this node listens on
    tap_mac: str

    def __post_init__(self) -> None:
        check_ipv4(self.underlay, "underlay")
        check_int(self.port, "port", 1, 65535)
        object.__setattr__(self, "tap_mac", check_mac(self.tap_mac, "tap_mac"))

    @classmethod
    def parse(cls, raw: bytes | str) -> NodeRecord:
        obj = load_object(raw)
        return cls(underlay=_need(obj, "underlay"), port=_need(obj, "port"),
                   tap_mac=_need(obj, "tap_mac"))

    def to_dict(self) -> dict[str, Any]:
        return {"underlay": self.underlay, "port": self.port, "tap_mac": self.tap_mac}

    def to_json(self) -> bytes:
        return _dump(self.to_dict())


@dataclass(frozen=True)
class BlockRecord:
    """<prefix>/networks/<network>/blocks/<A.B.C.D-N>: which node owns this address block."""

    node: str

    def __post_init__(self) -> None:
        check_name(self.node, "node")

    @classmethod
    def parse(cls, raw: bytes | str) -> BlockRecord:
        return cls(node=_need(load_object(raw), "node"))

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node}

    def to_json(self) -> bytes:
        return _dump(self.to_dict())


@dataclass(frozen=True)
class EndpointRecord:
    """<prefix>/networks/<network>/endpoints/<container_id>/<ifname>; persistent (no lease)."""

    mac: str
    ip: str                        # with prefix: "10.244.1.2/16"
    node: str
    vni: int
    gateway: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "mac", check_mac(self.mac))
        object.__setattr__(self, "ip", str(check_ipv4_interface(self.ip)))
        check_name(self.node, "node")
        check_int(self.vni, "vni", 0, VNI_MAX)
        if self.gateway is not None:
            check_ipv4(self.gateway, "gateway")

    @property
    def address(self) -> str:
        """The IP without prefix, as used in the neighbour table."""
        return self.ip.split("/", 1)[0]

    @classmethod
    def parse(cls, raw: bytes | str) -> EndpointRecord:
        obj = load_object(raw)
        return cls(mac=_need(obj, "mac"), ip=_need(obj, "ip"), node=_need(obj, "node"),
                   vni=_need(obj, "vni"), gateway=obj.get("gateway"))

    def to_dict(self) -> dict[str, Any]:
        return {"mac": self.mac, "ip": self.ip, "gateway": self.gateway, "node": self.node,
                "vni": self.vni}

    def to_json(self) -> bytes:
        return _dump(self.to_dict())
