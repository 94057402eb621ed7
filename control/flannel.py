"""flannel's etcd records, as flanneld (vxlan backend, etcd v3 API) writes and reads them. Pure:
no etcd, no threads, no devices.

    <prefix>/config                      FlannelConfig  {"Network": "10.5.0.0/16", "SubnetLen": 24,
                                                         "Backend": {"Type": "vxlan", "VNI": 1}}
    <prefix>/subnets/10.5.52.0-24        LeaseAttrs     {"PublicIP": "192.168.64.3",
                                                         "PublicIPv6": null, "BackendType": "vxlan",
                                                         "BackendData": {"VNI": 1,
                                                                         "VtepMAC": "c6:d2:..."}}
    /run/flannel/subnet.env              SubnetEnv      FLANNEL_NETWORK, FLANNEL_SUBNET (the
                                                        subnet's first address), FLANNEL_MTU,
                                                        FLANNEL_IPMASQ

The default prefix is "/coreos.com/network". Learned from flannel's pkg/subnet/config.go,
pkg/subnet/subnet.go, pkg/lease/lease.go and pkg/backend/vxlan (written anew here):

- Field names match case-insensitively, as Go's encoding/json does ("VNI", "vni", "Vni").
- Config defaults (CheckNetworkConfig): SubnetLen 24 if the network is /22 or larger, else
  prefix + 2; SubnetMin = Network + one subnet (the first subnet is never used), SubnetMax = the
  last subnet; both must lie in the Network and on a SubnetLen boundary.
- Backend defaults (parseVXLANConfig): VNI 1, Port 0 = the kernel's default, 8472.
- A lease key is "A.B.C.D-N" (optionally "&<ipv6>-<len>", the IPv6 half of a dual-stack lease).

`peers_from_leases()` turns the parsed leases into the peers this node programs (skipping and
explaining what it cannot use) and `peer_ops()` is the diff between two such sets as sink
commands; both are pure, so the watcher, a reconnect and a re-list after compaction share them.
"""

from __future__ import annotations

import ipaddress
import json
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

DEFAULT_PREFIX = "/coreos.com/network"
DEFAULT_SUBNET_FILE = "/run/flannel/subnet.env"
DEFAULT_VNI = 1                  # flannel's vxlan backend default
KERNEL_VXLAN_PORT = 8472         # Linux's default VXLAN dstport (flannel's Port 0)
LEASE_TTL = 24 * 3600            # flannel's subnetTTL
RENEW_MARGIN = 3600              # flanneld --subnet-lease-renew-margin default (60 min)
ENCAP_OVERHEAD = 50              # outer Ethernet + IPv4 + UDP + VXLAN
VNI_MAX = (1 << 24) - 1          # RFC 7348
ALLOC_CANDIDATES = 100           # flannel picks randomly among the first 100 free subnets

_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
# flannel's subnetRegex, anchored at the end of the key like theirs
_KEY_RE = re.compile(r"(\d+\.\d+\.\d+\.\d+)-(\d+)(?:&([a-fA-F\d:]+)-(\d+))?$")


# -- helpers ----------------------------------------------------------------------------------

def _fold(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Go's case-insensitive field matching: {"vni": 1} -> {"vni": 1} keyed in lower case.
    A later key wins on a case-only duplicate, like encoding/json."""
    return {k.lower(): v for k, v in obj.items()}


def _json_object(raw: bytes | str, what: str) -> dict[str, Any]:
    try:
        text = raw.decode() if isinstance(raw, bytes) else raw
        obj = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{what}: not JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{what}: want a JSON object, got {type(obj).__name__}")
    return obj


def _int_field(d: Mapping[str, Any], name: str, what: str, default: int,
               lo: int, hi: int) -> int:
    v = d.get(name.lower())
    if v is None:
        return default
    if type(v) is not int:
        raise ValueError(f"{what}: {name} must be an integer, not {json.dumps(v)}")
    if not lo <= v <= hi:
        raise ValueError(f"{what}: {name} {v} out of range {lo}..{hi}")
    return v


def _bool_field(d: Mapping[str, Any], name: str, what: str) -> bool:
    v = d.get(name.lower(), False)
    if type(v) is not bool:
        raise ValueError(f"{what}: {name} must be true or false, not {json.dumps(v)}")
    return v


def _ipv4(v: Any, what: str) -> ipaddress.IPv4Address:
    if not isinstance(v, str):
        raise ValueError(f"{what}: {json.dumps(v)} is not an IPv4 address")
    try:
        return ipaddress.IPv4Address(v)
    except ValueError:
        raise ValueError(f"{what}: {v!r} is not an IPv4 address") from None


def check_vtep_mac(v: Any, what: str = "VtepMAC") -> str:
    """A unicast, non-zero MAC, lower case."""
    if not isinstance(v, str) or not _MAC_RE.match(v):
        raise ValueError(f"{what}: {json.dumps(v)} is not a MAC address (want aa:bb:cc:dd:ee:ff)")
    mac = v.lower()
    if int(mac[:2], 16) & 1:
        raise ValueError(f"{what}: {mac} is a multicast MAC address")
    if mac == "00:00:00:00:00:00":
        raise ValueError(f"{what}: {mac} is the all-zero MAC address")
    return mac


# -- the network config -----------------------------------------------------------------------

@dataclass(frozen=True)
class VxlanBackend:
    """`Backend` of a vxlan network: the fields flannel's VXLANConfig knows."""

    vni: int = DEFAULT_VNI
    port: int = KERNEL_VXLAN_PORT
    mtu: int | None = None          # flannel: the external interface's MTU; device MTU = mtu - 50

    @classmethod
    def parse(cls, obj: Any) -> VxlanBackend:
        if obj is None:
            raise ValueError("flannel config: no Backend (flannel's default is the udp backend, "
                             "which vxtap does not support; want \"Backend\": {\"Type\": \"vxlan\"})")
        if not isinstance(obj, dict):
            raise ValueError(f"flannel config: Backend must be an object, not {json.dumps(obj)}")
        d = _fold(obj)
        btype = d.get("type")
        if btype != "vxlan":
            raise ValueError(f"flannel config: Backend.Type {json.dumps(btype)} is not supported "
                             "(vxtap joins vxlan networks only)")
        what = "flannel config: Backend"
        for name in ("DirectRouting", "GBP", "Learning"):
            if _bool_field(d, name, what):
                raise ValueError(f"{what}.{name} true is not supported by vxtap "
                                 f"(it needs a kernel {'route to the peer' if name == 'DirectRouting' else 'vxlan device'})")
        vni = _int_field(d, "VNI", what, DEFAULT_VNI, 0, VNI_MAX)
        port = _int_field(d, "Port", what, 0, 0, 65535) or KERNEL_VXLAN_PORT
        mtu = _int_field(d, "MTU", what, 0, 0, 65535) or None
        if mtu is not None and mtu - ENCAP_OVERHEAD < 576:
            raise ValueError(f"{what}.MTU {mtu} leaves less than 576 bytes for pods")
        return cls(vni=vni, port=port, mtu=mtu)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"Type": "vxlan", "VNI": self.vni, "Port": self.port}
        if self.mtu:
            d["MTU"] = self.mtu
        return d


@dataclass(frozen=True)
class FlannelConfig:
    """`<prefix>/config`, checked and completed like flannel's CheckNetworkConfig."""

    network: ipaddress.IPv4Network
    subnet_len: int
    subnet_min: ipaddress.IPv4Address
    subnet_max: ipaddress.IPv4Address
    backend: VxlanBackend

    @classmethod
    def parse(cls, raw: bytes | str) -> FlannelConfig:
        what = "flannel config"
        d = _fold(_json_object(raw, what))
        v6 = _bool_field(d, "EnableIPv6", what)
        v4 = d.get("enableipv4", True)
        if type(v4) is not bool:
            raise ValueError(f"{what}: EnableIPv4 must be true or false, not {json.dumps(v4)}")
        if v6 or d.get("ipv6network"):
            raise ValueError(f"{what}: IPv6 (EnableIPv6/IPv6Network) is not supported by vxtap "
                             "(IPv4 underlay and overlay only)")
        if not v4:
            raise ValueError(f"{what}: EnableIPv4 false (an IPv6-only network) is not supported")
        net_text = d.get("network")
        if not isinstance(net_text, str) or not net_text:
            raise ValueError(f"{what}: Network is missing (want e.g. \"10.5.0.0/16\")")
        try:
            network = ipaddress.IPv4Network(net_text, strict=False)
        except ValueError:
            raise ValueError(f"{what}: Network {net_text!r} is not an IPv4 CIDR") from None
        plen = network.prefixlen
        subnet_len = _int_field(d, "SubnetLen", what, 0, 0, 32)
        if subnet_len:
            if subnet_len > 30:
                raise ValueError(f"{what}: SubnetLen {subnet_len} must be less than /31")
            if subnet_len < plen + 2:
                raise ValueError(f"{what}: Network {network} must be able to accommodate at "
                                 f"least four /{subnet_len} subnets")
        elif plen > 28:
            raise ValueError(f"{what}: Network {network} is too small; the minimum useful "
                             "network prefix is /28")
        else:
            subnet_len = 24 if plen <= 22 else plen + 2
        size = 1 << (32 - subnet_len)
        base = int(network.network_address)
        last = base + network.num_addresses

        def bound(name: str, default: int) -> ipaddress.IPv4Address:
            v = d.get(name.lower())
            if v is None or v == "" or v == "0.0.0.0":
                return ipaddress.IPv4Address(default)
            a = _ipv4(v, f"{what}: {name}")
            if a not in network:
                raise ValueError(f"{what}: {name} {a} is not in the range of the Network {network}")
            if int(a) % size:
                raise ValueError(f"{what}: {name} {a} is not on a SubnetLen (/{subnet_len}) "
                                 "boundary")
            return a

        smin = bound("SubnetMin", base + size)
        smax = bound("SubnetMax", last - size)
        if smin > smax:
            raise ValueError(f"{what}: SubnetMin {smin} is above SubnetMax {smax}")
        return cls(network=network, subnet_len=subnet_len, subnet_min=smin, subnet_max=smax,
                   backend=VxlanBackend.parse(d.get("backend")))

    def compatible(self, subnet: ipaddress.IPv4Network) -> bool:
        """flannel's isSubnetConfigCompat: in [SubnetMin, SubnetMax], prefix SubnetLen."""
        return (subnet.prefixlen == self.subnet_len
                and self.subnet_min <= subnet.network_address <= self.subnet_max)

    def to_dict(self) -> dict[str, Any]:
        return {"Network": str(self.network), "SubnetLen": self.subnet_len,
                "SubnetMin": str(self.subnet_min), "SubnetMax": str(self.subnet_max),
                "Backend": self.backend.to_dict()}


# -- subnet keys --------------------------------------------------------------------------------

def subnet_key(subnet: ipaddress.IPv4Network) -> str:
    """10.5.52.0/24 -> "10.5.52.0-24" (flannel's MakeSubnetKey, IPv4 only)."""
    return f"{subnet.network_address}-{subnet.prefixlen}"


def parse_subnet_key(key: str) -> ipaddress.IPv4Network:
    """The IPv4 subnet of a lease key ("<prefix>/subnets/10.5.52.0-24", optionally with the
    "&fc00::-64" IPv6 half, which is ignored). ValueError if it is not a subnet key."""
    m = _KEY_RE.search(key)
    if m is None:
        raise ValueError(f"lease key {key!r}: not A.B.C.D-N")
    try:
        return ipaddress.IPv4Network(f"{m.group(1)}/{m.group(2)}", strict=True)
    except ValueError as e:
        raise ValueError(f"lease key {key!r}: not a subnet ({e})") from None


# -- leases -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class LeaseAttrs:
    """The value of a lease key (flannel's lease.LeaseAttrs with the vxlan BackendData)."""

    public_ip: ipaddress.IPv4Address
    backend_type: str
    vni: int
    vtep_mac: str

    @classmethod
    def parse(cls, raw: bytes | str, what: str = "lease") -> LeaseAttrs:
        """A vxlan lease. ValueError names what is wrong: not JSON, a foreign BackendType, a
        missing or bad PublicIP / BackendData.VNI / BackendData.VtepMAC."""
        d = _fold(_json_object(raw, what))
        btype = d.get("backendtype")
        if btype != "vxlan":
            raise ValueError(f"{what}: BackendType {json.dumps(btype)} is not vxlan")
        if d.get("publicip") is None:
            raise ValueError(f"{what}: no PublicIP (an IPv6-only lease is not supported)")
        public_ip = _ipv4(d.get("publicip"), f"{what}: PublicIP")
        bd = d.get("backenddata")
        if not isinstance(bd, dict):
            raise ValueError(f"{what}: BackendData must be an object, not {json.dumps(bd)}")
        b = _fold(bd)
        if b.get("vni") is None:
            raise ValueError(f"{what}: BackendData.VNI is missing")
        vni = _int_field(b, "VNI", f"{what}: BackendData", 0, 0, VNI_MAX)
        if "vtepmac" not in b:
            raise ValueError(f"{what}: BackendData.VtepMAC is missing")
        return cls(public_ip=public_ip, backend_type=btype, vni=vni,
                   vtep_mac=check_vtep_mac(b["vtepmac"], f"{what}: BackendData.VtepMAC"))

    def to_json(self) -> str:
        """Byte for byte what flanneld's json.Marshal writes."""
        return json.dumps({"PublicIP": str(self.public_ip), "PublicIPv6": None,
                           "BackendType": self.backend_type,
                           "BackendData": {"VNI": self.vni, "VtepMAC": self.vtep_mac}},
                          separators=(",", ":"))


def lease_public_ip(raw: bytes) -> str | None:
    """The PublicIP of any lease (even a foreign backend's), None if unreadable. flannel's
    findLeaseByIP looks at every lease that parses as JSON, whatever its backend."""
    try:
        d = _fold(_json_object(raw, "lease"))
        return str(_ipv4(d.get("publicip"), "PublicIP"))
    except ValueError:
        return None


# -- subnet allocation (flannel's allocateSubnet) -----------------------------------------------

def free_subnets(cfg: FlannelConfig, taken: Iterable[ipaddress.IPv4Network],
                 limit: int = ALLOC_CANDIDATES) -> list[ipaddress.IPv4Network]:
    """The first `limit` subnets from SubnetMin to SubnetMax that overlap no taken subnet."""
    taken = list(taken)
    size = 1 << (32 - cfg.subnet_len)
    out: list[ipaddress.IPv4Network] = []
    a = int(cfg.subnet_min)
    while a <= int(cfg.subnet_max) and len(out) < limit:
        sn = ipaddress.IPv4Network((a, cfg.subnet_len))
        if not any(sn.overlaps(t) for t in taken):
            out.append(sn)
        a += size
    return out


def pick_subnet(cfg: FlannelConfig, taken: Iterable[ipaddress.IPv4Network],
                rng: random.Random | None = None) -> ipaddress.IPv4Network:
    """A random one of the first 100 free subnets, like flanneld; ValueError if none is free."""
    free = free_subnets(cfg, taken)
    if not free:
        raise ValueError(f"out of subnets: every /{cfg.subnet_len} of {cfg.subnet_min} .. "
                         f"{cfg.subnet_max} is leased")
    return (rng or random).choice(free)


# -- subnet.env ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class SubnetEnv:
    network: ipaddress.IPv4Network
    subnet: ipaddress.IPv4Network
    mtu: int
    ipmasq: bool = False

    def render(self) -> str:
        """As flannel's WriteSubnetFile: FLANNEL_SUBNET is the subnet's first address."""
        first = self.subnet.network_address + 1
        return (f"FLANNEL_NETWORK={self.network}\nFLANNEL_SUBNET={first}/{self.subnet.prefixlen}\n"
                f"FLANNEL_MTU={self.mtu}\nFLANNEL_IPMASQ={'true' if self.ipmasq else 'false'}\n")

    @staticmethod
    def read_values(text: str) -> dict[str, str]:
        """KEY=VALUE lines (a dotenv subset: comments, `export `, optional quotes)."""
        out: dict[str, str] = {}
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("export "):
                line = line[7:].lstrip()
            k, sep, v = line.partition("=")
            if sep:
                out[k.strip()] = v.strip().strip("'\"")
        return out

    @classmethod
    def parse(cls, text: str) -> SubnetEnv:
        """A subnet.env as written by render() (or by flanneld). ValueError names the key."""
        v = cls.read_values(text)

        def need(k: str) -> str:
            if k not in v:
                raise ValueError(f"subnet.env: {k} is missing")
            return v[k]
        try:
            network = ipaddress.IPv4Network(need("FLANNEL_NETWORK"))
        except ValueError as e:
            raise ValueError(f"subnet.env: FLANNEL_NETWORK: {e}") from None
        try:
            subnet = ipaddress.IPv4Interface(need("FLANNEL_SUBNET")).network
        except ValueError as e:
            raise ValueError(f"subnet.env: FLANNEL_SUBNET: {e}") from None
        mtu_text = need("FLANNEL_MTU")
        if not mtu_text.isdigit():
            raise ValueError(f"subnet.env: FLANNEL_MTU {mtu_text!r} is not a number")
        masq = v.get("FLANNEL_IPMASQ", "false")
        if masq not in ("true", "false"):
            raise ValueError(f"subnet.env: FLANNEL_IPMASQ {masq!r} is not true or false")
        return cls(network, subnet, int(mtu_text), masq == "true")

    @classmethod
    def previous_subnet(cls, text: str) -> ipaddress.IPv4Network | None:
        """FLANNEL_SUBNET of an old subnet.env as a network (10.5.52.1/24 -> 10.5.52.0/24), or
        None if absent or unreadable (flanneld then allocates anew)."""
        v = cls.read_values(text).get("FLANNEL_SUBNET")
        if not v or "," in v:
            return None
        try:
            return ipaddress.IPv4Interface(v).network
        except ValueError:
            return None


def cni_config(env: SubnetEnv, *, name: str = "cbr0", bridge: str = "cni0",
               data_dir: str | None = None) -> dict[str, Any]:
    """The CNI network config for pods of a flannel node: the standard `bridge` plugin (the
    bridge holds the subnet's first address as the pods' gateway) with `host-local` IPAM over
    FLANNEL_SUBNET and a route to the whole FLANNEL_NETWORK, which is what flannel's own CNI
    plugin hands to the same two plugins."""
    gateway = str(env.subnet.network_address + 1)
    ipam: dict[str, Any] = {"type": "host-local",
                            "ranges": [[{"subnet": str(env.subnet), "gateway": gateway}]],
                            "routes": [{"dst": str(env.network)}]}
    if data_dir:
        ipam["dataDir"] = data_dir
    return {"cniVersion": "1.0.0", "name": name, "type": "bridge", "bridge": bridge,
            "isGateway": True, "ipMasq": env.ipmasq, "hairpinMode": True, "mtu": env.mtu,
            "ipam": ipam}


# -- peers: what this node programs for the other leases ---------------------------------------

@dataclass(frozen=True, order=True)
class Peer:
    subnet: ipaddress.IPv4Network
    public_ip: str
    vtep_mac: str

    @property
    def gateway(self) -> str:
        """The peer VTEP's own address: the subnet's network address (10.5.52.0)."""
        return str(self.subnet.network_address)


@dataclass(frozen=True)
class PeerSet:
    peers: Mapping[str, Peer] = field(default_factory=dict)          # subnet key -> peer
    skipped: Mapping[str, str] = field(default_factory=dict, compare=False)   # key -> reason


def peers_from_leases(cfg: FlannelConfig, leases: Mapping[str, bytes], *,
                      own_subnet: ipaddress.IPv4Network | None,
                      own_public_ip: str | None, subnets_prefix: str) -> PeerSet:
    """Every usable lease except our own, in key order; the rest, with the reason, in `skipped`:
    a key that is not a subnet, bad JSON, another backend, a wrong VNI, a bad PublicIP or
    VtepMAC, a subnet outside the Network or overlapping ours or an earlier lease, a VtepMAC
    already used by an earlier lease, our own PublicIP on another subnet (a stale lease of ours).
    `leases` maps full etcd keys to raw values."""
    peers: dict[str, Peer] = {}
    skipped: dict[str, str] = {}
    macs: dict[str, str] = {}
    for key in sorted(leases):
        name = key[len(subnets_prefix):] if key.startswith(subnets_prefix) else key
        try:
            sn = parse_subnet_key(name)
        except ValueError as e:
            skipped[key] = str(e)
            continue
        if own_subnet is not None and sn == own_subnet:
            continue
        try:
            attrs = LeaseAttrs.parse(leases[key], f"lease {name}")
        except ValueError as e:
            skipped[key] = str(e)
            continue
        if attrs.vni != cfg.backend.vni:
            skipped[key] = (f"lease {name}: VNI {attrs.vni} is not the network's VNI "
                            f"{cfg.backend.vni}")
            continue
        if not sn.subnet_of(cfg.network):
            skipped[key] = f"lease {name}: subnet {sn} is outside the Network {cfg.network}"
            continue
        if own_subnet is not None and sn.overlaps(own_subnet):
            skipped[key] = f"lease {name}: subnet {sn} overlaps this node's subnet {own_subnet}"
            continue
        clash = next((k for k, p in peers.items() if p.subnet.overlaps(sn)), None)
        if clash is not None:
            skipped[key] = f"lease {name}: subnet {sn} overlaps lease {clash}"
            continue
        if own_public_ip is not None and str(attrs.public_ip) == own_public_ip:
            skipped[key] = (f"lease {name}: PublicIP {attrs.public_ip} is this node's, on "
                            "another subnet (a stale lease of this node?)")
            continue
        if attrs.vtep_mac in macs:
            skipped[key] = (f"lease {name}: VtepMAC {attrs.vtep_mac} is already used by lease "
                            f"{macs[attrs.vtep_mac]}")
            continue
        macs[attrs.vtep_mac] = name
        peers[name] = Peer(sn, str(attrs.public_ip), attrs.vtep_mac)
    return PeerSet(peers=peers, skipped=skipped)


class Op(NamedTuple):
    """One sink call: `getattr(sink, op.name)(*op.args)` (see FlannelSink)."""

    name: str
    args: tuple[object, ...]


def add_ops(p: Peer, vni: int, port: int) -> list[Op]:
    """flannel's order (AddARP, AddFDB, route) with the fast path's entries first: nothing is
    routed into the TAP before the fast path can forward it."""
    return [Op("fdb_add", (vni, p.vtep_mac, p.public_ip, port)),
            Op("neigh_add", (vni, p.gateway, p.vtep_mac)),
            Op("kernel_neigh_add", (p.gateway, p.vtep_mac)),
            Op("route_add", (str(p.subnet), p.gateway))]


def del_ops(p: Peer, vni: int) -> list[Op]:
    return [Op("route_del", (str(p.subnet), p.gateway)),
            Op("kernel_neigh_del", (p.gateway,)),
            Op("neigh_del", (vni, p.gateway)),
            Op("fdb_del", (vni, p.vtep_mac))]


def peer_ops(old: Mapping[str, Peer], new: Mapping[str, Peer], vni: int, port: int) -> list[Op]:
    """The sink commands that turn `old` into `new`: removals (of gone and changed peers)
    first, then additions, so a VtepMAC or gateway that moves is never deleted after it was
    re-added."""
    ops: list[Op] = []
    for k in sorted(old):
        if new.get(k) != old[k]:
            ops += del_ops(old[k], vni)
    for k in sorted(new):
        if old.get(k) != new[k]:
            ops += add_ops(new[k], vni, port)
    return ops
