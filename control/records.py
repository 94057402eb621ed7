"""The records stored in etcd: one class per kind, JSON in, JSON out.

Every parser takes the raw bytes of an etcd value and either returns a record or raises
`ValueError` with a message that names the field. Unknown JSON fields are ignored (forward
compatibility); missing or mistyped fields are errors. MACs are normalised to lower case.

Endpoint records exist 100,000 times in every agent, so `EndpointRecord` is compact (`__slots__`,
MAC and IP held as ints, no per-record dict) and parsed without regexes or `ipaddress` on the
hot path: a well-formed field is accepted by a few C-level string checks (`_mac_int`,
`_ipv4_int`); anything else falls back to the precise checks below, which raise the
`ValueError` naming the field. Both paths accept exactly the same inputs (tested by a
differential fuzz test against `ipaddress` and the regexes).

Dual stack: an endpoint has an IPv4 address (`ip`, `gateway`), an IPv6 address (`ip6`,
`gateway6`), or both. IPv6 text is parsed by `inet_pton` into an int, so every spelling of one
address (`fd00::1`, `fd00:0::1`, upper case) is the same key, and printed in the compressed form
of RFC 5952. A network's config may carry an IPv6 subnet (`subnet6`, `block_prefix6`): a node's
IPv6 block is the one with the same index as its IPv4 block (control/ipam.py).
"""

from __future__ import annotations

import ipaddress
import json
import json.scanner
import re
import socket
import sys
from dataclasses import dataclass
from typing import Any

VNI_MAX = (1 << 24) - 1          # RFC 7348: 24-bit VXLAN Network Identifier
DEFAULT_VXLAN_PORT = 4789        # IANA-assigned VXLAN UDP port
MIN_BLOCK_HOSTS_PREFIX = 30      # a /30 leaves two usable addresses: gateway + one pod

_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")

MAC_MASK = (1 << 48) - 1
IP_MASK = (1 << 32) - 1
IP6_MASK = (1 << 128) - 1
VNI_MASK = (1 << 24) - 1
# Neighbour-table keys: IPv4 `vni << 32 | ip` (< 2**56); IPv6 `V6_TAG | vni << 128 | ip6`, so the
# two families share one claim index and never collide (tables.py).
V6_TAG = 1 << 160


# -- fast paths: None means "not obviously well-formed, ask the precise check" -----------------

def _mac_int(value: object) -> int | None:
    """"02:aa:..." -> int for a well-formed unicast non-zero MAC, else None."""
    if type(value) is not str or len(value) != 17:
        return None
    h = value.replace(":", "")
    if len(h) != 12 or value[2::3] != ":::::" or not (h.isascii() and h.isalnum()):
        return None
    try:
        mac = int(h, 16)
    except ValueError:
        return None
    if mac == 0 or mac >> 40 & 1:            # all-zero or multicast (I/G bit of the first octet)
        return None
    return mac


def _ipv4_int(value: object) -> int | None:
    """"10.1.2.3" -> int (strict dotted quad, no leading zeros, as `ipaddress`), else None."""
    if type(value) is not str:
        return None
    try:
        return int.from_bytes(socket.inet_pton(socket.AF_INET, value), "big")
    except (OSError, ValueError):
        return None


def _ipv6_int(value: object) -> int | None:
    """"fd00::1" -> int (any spelling `inet_pton` accepts, no zone index), else None."""
    if type(value) is not str:
        return None
    try:
        return int.from_bytes(socket.inet_pton(socket.AF_INET6, value), "big")
    except (OSError, ValueError):
        return None


def mac_text(mac: int) -> str:
    return mac.to_bytes(6, "big").hex(":")


def ipv4_text(ip: int) -> str:
    return socket.inet_ntoa(ip.to_bytes(4, "big"))


def ipv6_text(ip: int) -> str:
    """Compressed, lower case (RFC 5952): the one spelling used in keys and tables."""
    return socket.inet_ntop(socket.AF_INET6, ip.to_bytes(16, "big"))


def neigh_key(vni: int, ip: int, v6: bool) -> int:
    return V6_TAG | vni << 128 | ip if v6 else vni << 32 | ip


def neigh_key_text(nk: int) -> tuple[int, str]:
    """A neighbour key -> (vni, address text) for the sink."""
    if nk >= V6_TAG:
        return nk >> 128 & VNI_MASK, ipv6_text(nk & IP6_MASK)
    return nk >> 32, ipv4_text(nk & IP_MASK)


def normalize_ip(text: str) -> str:
    """An IPv4 or IPv6 address (prefix length dropped) in its one canonical spelling."""
    addr = text.partition("/")[0]
    ip6 = _ipv6_int(addr) if ":" in addr else None
    return addr if ip6 is None else ipv6_text(ip6)


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
    if _ipv4_int(value) is not None:
        return value                     # type: ignore[return-value]  # canonical already
    if not isinstance(value, str):       # ints would pass ipaddress; the contract is ValueError
        raise ValueError(f"{field}: {value!r} is not an IPv4 address")  # noqa: TRY004
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise ValueError(f"{field}: {value!r} is not an IPv4 address") from None


def check_ipv4_interface(value: object, field: str = "ip") -> ipaddress.IPv4Interface:
    """An address with prefix, "10.244.1.2/16"; the address must not be the network or broadcast."""
    if isinstance(value, str) and ":" in value and field == "ip":
        raise ValueError(f"ip: {value!r} is an IPv6 address: give it as 'ip6' (the IPv4 "
                         "address, if any, is 'ip')")
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


def _ipv6_reject(ip: int) -> str | None:
    """Why an IPv6 address cannot be a pod's address (None: it can)."""
    if ip == 0:
        return "the unspecified address"
    if ip == 1:
        return "the loopback address"
    if ip >> 120 == 0xFF:
        return "a multicast address"
    if ip >> 118 == 0xFE80 >> 6:
        return "a link-local address (register the pod's global or ULA address)"
    if ip >> 32 == 0xFFFF:
        return "an IPv4-mapped address (put IPv4 addresses in 'ip')"
    return None


def parse_ipv6_interface(value: object, field: str = "ip6") -> tuple[int, int]:
    """"fd00:10:244:1::2/64" -> (address int, prefix length), or ValueError naming `field`.
    A unicast address that is not the subnet-router anycast address of its prefix."""
    if type(value) is not str or "/" not in value:
        raise ValueError(f"{field}: {value!r} is not an IPv6 address with prefix "
                         "(want e.g. fd00::2/64)")
    addr, _, plen_text = value.partition("/")
    ip = _ipv6_int(addr)
    if ip is None or not (plen_text.isascii() and plen_text.isdigit()) or len(plen_text) > 3 \
            or str(int(plen_text)) != plen_text or not 1 <= int(plen_text) <= 128:
        raise ValueError(f"{field}: {value!r} is not an IPv6 address with prefix "
                         "(want e.g. fd00::2/64)")
    plen = int(plen_text)
    why = _ipv6_reject(ip)
    if why is not None:
        raise ValueError(f"{field}: {value} is {why}")
    if plen < 127 and ip & (IP6_MASK >> plen) == 0:
        raise ValueError(f"{field}: {value} is the subnet-router anycast address of its prefix")
    return ip, plen


def check_ipv6(value: object, field: str) -> str:
    """A unicast IPv6 address (a gateway may be link-local), returned compressed."""
    ip = _ipv6_int(value)
    if ip is None:
        raise ValueError(f"{field}: {value!r} is not an IPv6 address")
    why = _ipv6_reject(ip)
    if why is not None and not why.startswith("a link-local"):
        raise ValueError(f"{field}: {value} is {why}")
    return ipv6_text(ip)


def check_ipv6_network(value: object, field: str) -> ipaddress.IPv6Network:
    if not isinstance(value, str):
        raise ValueError(f"{field}: {value!r} is not an IPv6 CIDR")  # noqa: TRY004
    try:
        return ipaddress.IPv6Network(value, strict=True)
    except ValueError as e:
        raise ValueError(f"{field}: {value!r} is not an IPv6 CIDR ({e})") from None


def check_int(value: object, field: str, lo: int, hi: int) -> int:
    if type(value) is not int:           # bool is an int subclass: rejected too
        raise ValueError(f"{field}: {value!r} is not an integer")
    if not lo <= value <= hi:
        raise ValueError(f"{field}: {value} is out of range {lo}..{hi}")
    return value


_scan_once = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[attr-defined]


def load_object(raw: bytes | str) -> dict[str, Any]:
    """Decode one etcd value: UTF-8 JSON whose top level is an object.

    Fast path (every well-formed record: 100,000 of them at a cold start): UTF-8 text from
    "{" to "}" scanned to its end by json's C scanner, without json.loads' encoding detection
    and whitespace regexes; anything else goes through json.loads, so the accepted inputs and
    the error messages are json.loads' own."""
    if type(raw) is bytes and raw[:1] == b"{" and raw[-1:] == b"}":
        try:
            text = raw.decode()
            obj, end = _scan_once(text, 0)
            if end == len(text) and type(obj) is dict:
                return obj  # type: ignore[no-any-return]
        except (ValueError, StopIteration):      # UnicodeDecodeError is a ValueError
            pass
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
    """<prefix>/networks/<network>/config

    `subnet6` (optional) makes the network dual stack: node i's IPv6 block is the i-th
    /block_prefix6 of subnet6, where i is the index of its IPv4 block in `subnet`, so it needs at
    least as many IPv6 blocks as there are IPv4 blocks (no second allocation in etcd)."""

    vni: int
    subnet: str                    # "10.244.0.0/16": the whole overlay, one L2 segment
    block_prefix: int = 24         # each node gets one /block_prefix of the subnet
    port: int = DEFAULT_VXLAN_PORT
    subnet6: str | None = None     # "fd00:10:244::/48": the IPv6 overlay, same L2 segment
    block_prefix6: int = 64

    def __post_init__(self) -> None:
        check_int(self.vni, "vni", 0, VNI_MAX)
        check_int(self.port, "port", 1, 65535)
        net = check_ipv4_network(self.subnet, "subnet")
        check_int(self.block_prefix, "block_prefix", net.prefixlen, MIN_BLOCK_HOSTS_PREFIX)
        if self.subnet6 is not None:
            net6 = check_ipv6_network(self.subnet6, "subnet6")
            if _ipv6_reject(int(net6.network_address)) is not None or net6.prefixlen == 0:
                raise ValueError(f"subnet6: {self.subnet6} is not a unicast IPv6 prefix")
            object.__setattr__(self, "subnet6", str(net6))
            need = net6.prefixlen + (self.block_prefix - net.prefixlen)
            check_int(self.block_prefix6, "block_prefix6", max(need, 1), 126)

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def network6(self) -> ipaddress.IPv6Network | None:
        return None if self.subnet6 is None else ipaddress.IPv6Network(self.subnet6)

    @classmethod
    def parse(cls, raw: bytes | str) -> NetworkConfig:
        obj = load_object(raw)
        return cls(vni=_need(obj, "vni"), subnet=_need(obj, "subnet"),
                   block_prefix=obj.get("block_prefix", 24), port=obj.get("port", DEFAULT_VXLAN_PORT),
                   subnet6=obj.get("subnet6"), block_prefix6=obj.get("block_prefix6", 64))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"vni": self.vni, "subnet": self.subnet,
                               "block_prefix": self.block_prefix, "port": self.port}
        if self.subnet6 is not None:            # an IPv4-only config reads exactly as before
            out["subnet6"] = self.subnet6
            out["block_prefix6"] = self.block_prefix6
        return out

    def to_json(self) -> bytes:
        return _dump(self.to_dict())


def check_vtep_addr(value: object, field: str) -> str:
    """A node's underlay (VTEP) address: unicast IPv4, or unicast IPv6 (IPv6 underlay), in
    canonical form. An IPv4-mapped IPv6 address is refused (give the IPv4 form)."""
    if isinstance(value, str) and ":" in value:
        try:
            a = ipaddress.IPv6Address(value)
        except ValueError:
            raise ValueError(f"{field}: {value!r} is not an IPv4 or IPv6 address") from None
        if a.is_unspecified or a.is_multicast or a.ipv4_mapped is not None:
            raise ValueError(f"{field}: {value!r} is not a unicast IPv6 VTEP address")
        return str(a)
    try:
        return check_ipv4(value, field)
    except ValueError:
        raise ValueError(f"{field}: {value!r} is not an IPv4 or IPv6 address") from None


@dataclass(frozen=True)
class NodeRecord:
    """<prefix>/networks/<network>/nodes/<node>, attached to the node's lease."""

    underlay: str                  # VTEP address other nodes send to: IPv4 or IPv6
    port: int                      # VXLAN UDP port this node listens on
    tap_mac: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "underlay", check_vtep_addr(self.underlay, "underlay"))
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


# Values every pod of a node (or block) repeats, validated once: node name -> the interned name,
# gateway text -> its int (one shared object). Bounded: cleared when full.
_CACHE_MAX = 65536
_good_nodes: dict[str, str] = {}
_gateways: dict[str, int] = {}


def _node_name(value: object) -> str:
    good = _good_nodes.get(value) if type(value) is str else None  # type: ignore[arg-type]
    if good is not None:
        return good
    check_name(value, "node")
    assert isinstance(value, str)
    if len(_good_nodes) >= _CACHE_MAX:
        _good_nodes.clear()
    name = _good_nodes[value] = sys.intern(value)
    return name


def _gw_int(value: object) -> int | None:
    if value is None:
        return None
    gw = _gateways.get(value) if type(value) is str else None  # type: ignore[arg-type]
    if gw is not None:
        return gw
    gw = _ipv4_int(value)
    if gw is None:
        check_ipv4(value, "gateway")      # raises the precise error
        gw = _ipv4_int(value)
        assert gw is not None
    if len(_gateways) >= _CACHE_MAX:
        _gateways.clear()
    _gateways[value] = gw                 # type: ignore[index]
    return gw


def _parse_interface(value: object) -> tuple[int, int]:
    """"10.244.1.2/16" -> (ip int, prefix length); precise ValueError otherwise."""
    if type(value) is str:
        addr, sep, plen_text = value.partition("/")
        ip = _ipv4_int(addr)
        if ip is not None and sep and plen_text.isdigit() and plen_text.isascii() \
                and len(plen_text) <= 2:
            plen = int(plen_text)
            host_mask = IP_MASK >> plen if plen < 31 else -1
            if plen <= 32 and str(plen) == plen_text and ip & host_mask not in (0, host_mask):
                return ip, plen
    iface = check_ipv4_interface(value)   # raises the precise error for what is left
    return int(iface.ip), iface.network.prefixlen


_gateways6: dict[str, int] = {}


def _gw6_int(value: object) -> int | None:
    if value is None:
        return None
    gw = _gateways6.get(value) if type(value) is str else None  # type: ignore[arg-type]
    if gw is not None:
        return gw
    gw = _ipv6_int(check_ipv6(value, "gateway6"))
    assert gw is not None
    if len(_gateways6) >= _CACHE_MAX:
        _gateways6.clear()
    _gateways6[value] = gw                # type: ignore[index]
    return gw


class EndpointRecord:
    """<prefix>/networks/<network>/endpoints/<container_id>/<ifname>; persistent (no lease).

    JSON: {"mac", "ip": "10.244.1.2/16", "gateway", "ip6": "fd00::2/48", "gateway6", "node",
    "vni"}: `ip` (IPv4) and/or `ip6` (IPv6), each with its optional gateway. A record of
    before dual stack is an IPv4-only one, and an IPv4-only record serialises as before.

    Compact: `mk` = vni << 48 | MAC is the fdb key; `nk` the neighbour key of the first address
    (IPv4 `vni << 32 | IP`, or for an IPv6-only endpoint the tagged IPv6 key, see `neigh_key`),
    `plen`/`gw` its prefix length and gateway (int or None); a dual-stack endpoint's IPv6
    address is in `nk2` with `x2` = (prefix length, gateway int or None), both None otherwise.
    The index dicts share these int objects. `node` is an interned string. `rev` is the key's
    etcd create_revision (0 if unknown): metadata for the oldest-wins rule, not part of the
    value (not compared, not serialised). Whether an agent installed it is the agent's
    (`LiveTables.off`), so the agents of one process can share records (`RecordCache`). The string views (`mac`, `ip`, `ip6`, `address`, `address6`, `gateway`,
    `gateway6`, `vni`) are computed. Treat instances as immutable.
    """

    __slots__ = ("mk", "nk", "plen", "node", "gw", "nk2", "x2", "rev")

    mk: int
    nk: int
    plen: int
    node: str
    gw: int | None
    nk2: int | None
    x2: tuple[int, int | None] | None
    rev: int

    def __init__(self, mac: str, ip: str | None, node: str, vni: int, gateway: str | None = None,
                 ip6: str | None = None, gateway6: str | None = None) -> None:
        m = _mac_int(mac)
        if m is None:
            m = int(check_mac(mac).replace(":", ""), 16)
        if ip is not None:
            addr, plen = _parse_interface(ip)
        elif ip6 is None:
            raise ValueError("missing field 'ip' (or 'ip6' for an IPv6 address)")
        elif gateway is not None:
            raise ValueError(f"gateway: {gateway!r} is given without 'ip' (an IPv6 gateway "
                             "is 'gateway6')")
        node = _node_name(node)
        if type(vni) is not int or not 0 <= vni <= VNI_MAX:
            check_int(vni, "vni", 0, VNI_MAX)
        self.mk = vni << 48 | m
        self.nk2 = self.x2 = None
        if ip6 is not None:
            a6, p6 = parse_ipv6_interface(ip6)
            g6 = _gw6_int(gateway6)
            if ip is None:
                self.nk, self.plen, self.gw = V6_TAG | vni << 128 | a6, p6, g6
            else:
                self.nk2, self.x2 = V6_TAG | vni << 128 | a6, (p6, g6)
        elif gateway6 is not None:
            raise ValueError(f"gateway6: {gateway6!r} is given without 'ip6'")
        if ip is not None:
            self.nk = vni << 32 | addr
            self.plen = plen
            self.gw = _gw_int(gateway)
        self.node = node
        self.rev = 0

    @classmethod
    def parse(cls, raw: bytes | str) -> EndpointRecord:
        obj = load_object(raw)
        try:
            return cls(obj["mac"], obj.get("ip"), obj["node"], obj["vni"], obj.get("gateway"),
                       obj.get("ip6"), obj.get("gateway6"))
        except KeyError:
            for f in ("mac", "node", "vni"):
                _need(obj, f)
            raise

    @property
    def vni(self) -> int:
        return self.mk >> 48

    @property
    def mac(self) -> str:
        return mac_text(self.mk & MAC_MASK)

    @property
    def nks(self) -> tuple[int, ...]:
        """The neighbour keys: one per address."""
        return (self.nk,) if self.nk2 is None else (self.nk, self.nk2)

    @property
    def address(self) -> str | None:
        """The IPv4 address without prefix (None for an IPv6-only endpoint)."""
        return None if self.nk >= V6_TAG else ipv4_text(self.nk & IP_MASK)

    @property
    def ip(self) -> str | None:
        """IPv4 with prefix: "10.244.1.2/16" (None for an IPv6-only endpoint)."""
        return None if self.nk >= V6_TAG else f"{ipv4_text(self.nk & IP_MASK)}/{self.plen}"

    @property
    def gateway(self) -> str | None:
        return None if self.gw is None or self.nk >= V6_TAG else ipv4_text(self.gw)

    def _v6(self) -> tuple[int, int, int | None] | None:
        if self.nk2 is not None:
            assert self.x2 is not None
            return self.nk2, self.x2[0], self.x2[1]
        if self.nk >= V6_TAG:
            return self.nk, self.plen, self.gw
        return None

    @property
    def address6(self) -> str | None:
        v6 = self._v6()
        return None if v6 is None else ipv6_text(v6[0] & IP6_MASK)

    @property
    def ip6(self) -> str | None:
        """IPv6 with prefix, compressed: "fd00:10:244:1::2/48" (None without one)."""
        v6 = self._v6()
        return None if v6 is None else f"{ipv6_text(v6[0] & IP6_MASK)}/{v6[1]}"

    @property
    def gateway6(self) -> str | None:
        v6 = self._v6()
        return None if v6 is None or v6[2] is None else ipv6_text(v6[2])

    def _value(self) -> tuple[int, int, int, str, int | None, int | None, object]:
        return (self.mk, self.nk, self.plen, self.node, self.gw, self.nk2, self.x2)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EndpointRecord):
            return NotImplemented
        return self._value() == other._value()

    def __hash__(self) -> int:
        return hash(self._value())

    def __repr__(self) -> str:
        v6 = f", ip6={self.ip6!r}, gateway6={self.gateway6!r}" if self._v6() is not None else ""
        return (f"EndpointRecord(mac={self.mac!r}, ip={self.ip!r}, node={self.node!r}, "
                f"vni={self.vni}, gateway={self.gateway!r}{v6})")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mac": self.mac}
        if self.nk < V6_TAG:                    # an IPv4-only record reads exactly as before
            out["ip"] = self.ip
            out["gateway"] = self.gateway
        if self._v6() is not None:
            out["ip6"] = self.ip6
            out["gateway6"] = self.gateway6
        out["node"] = self.node
        out["vni"] = self.vni
        return out

    def to_json(self) -> bytes:
        return _dump(self.to_dict())
