"""flannel's records (control/flannel.py): the fixture JSON as flannel writes it, every error
message, flanneld's defaults, subnet allocation, and the pure peers/diff step. No root, no etcd."""

from __future__ import annotations

import ipaddress
import json
import random
from pathlib import Path

import pytest

from control.flannel import (
    FlannelConfig,
    LeaseAttrs,
    Op,
    Peer,
    SubnetEnv,
    cni_config,
    free_subnets,
    lease_public_ip,
    parse_subnet_key,
    peer_ops,
    peers_from_leases,
    pick_subnet,
    subnet_key,
)

FIX = Path(__file__).parent / "fixtures" / "flannel"
SUBNETS = "/coreos.com/network/subnets/"
N = ipaddress.IPv4Network


def fixture(name: str) -> bytes:
    return (FIX / name).read_bytes()


def cfg(**kw: object) -> FlannelConfig:
    d: dict[str, object] = {"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}}
    d.update(kw)
    return FlannelConfig.parse(json.dumps(d))


# -- config ---------------------------------------------------------------------------------

def test_kube_flannel_config_gets_flanneld_defaults() -> None:
    c = FlannelConfig.parse(fixture("config-kube-flannel.json"))
    assert c.network == N("10.244.0.0/16")
    assert c.subnet_len == 24
    assert str(c.subnet_min) == "10.244.1.0"          # the first subnet is never used
    assert str(c.subnet_max) == "10.244.255.0"
    assert (c.backend.vni, c.backend.port, c.backend.mtu) == (1, 8472, None)


def test_full_vxlan_config() -> None:
    c = FlannelConfig.parse(fixture("config-vxlan-full.json"))
    assert (str(c.subnet_min), str(c.subnet_max), c.subnet_len) == ("10.5.10.0", "10.5.99.0", 24)
    assert c.compatible(N("10.5.10.0/24")) and c.compatible(N("10.5.99.0/24"))
    assert not c.compatible(N("10.5.9.0/24")) and not c.compatible(N("10.5.100.0/24"))
    assert not c.compatible(N("10.5.10.0/25"))


def test_docs_udp_config_is_refused() -> None:
    with pytest.raises(ValueError, match=r'Backend.Type "udp" is not supported'):
        FlannelConfig.parse(fixture("config-docs-udp.json"))


def test_dual_stack_config_is_refused() -> None:
    with pytest.raises(ValueError, match=r"IPv6 \(EnableIPv6/IPv6Network\) is not supported"):
        FlannelConfig.parse(fixture("config-dualstack.json"))


def test_default_subnet_len_small_network() -> None:
    c = cfg(Network="10.5.0.0/24")
    assert c.subnet_len == 26 and str(c.subnet_min) == "10.5.0.64"


def test_go_style_case_insensitive_fields() -> None:
    c = FlannelConfig.parse('{"network": "10.6.0.0/16", "subnetlen": 25, '
                            '"backend": {"type": "vxlan", "vni": 7, "port": 4789}}')
    assert (c.subnet_len, c.backend.vni, c.backend.port) == (25, 7, 4789)


@pytest.mark.parametrize("raw, message", [
    (b"", "flannel config: not JSON"),
    (b"[1]", "flannel config: want a JSON object, got list"),
    (b'{"Backend": {"Type": "vxlan"}}', "flannel config: Network is missing"),
    (b'{"Network": "10.5.0.0/33", "Backend": {"Type": "vxlan"}}',
     "flannel config: Network '10.5.0.0/33' is not an IPv4 CIDR"),
    (b'{"Network": "10.5.0.0/16", "SubnetLen": 31, "Backend": {"Type": "vxlan"}}',
     "flannel config: SubnetLen 31 must be less than /31"),
    (b'{"Network": "10.5.0.0/16", "SubnetLen": 17, "Backend": {"Type": "vxlan"}}',
     "flannel config: Network 10.5.0.0/16 must be able to accommodate at least four /17"),
    (b'{"Network": "10.5.0.0/29", "Backend": {"Type": "vxlan"}}',
     "flannel config: Network 10.5.0.0/29 is too small"),
    (b'{"Network": "10.5.0.0/16", "SubnetLen": "24", "Backend": {"Type": "vxlan"}}',
     'flannel config: SubnetLen must be an integer, not "24"'),
    (b'{"Network": "10.5.0.0/16", "SubnetMin": "10.6.0.0", "Backend": {"Type": "vxlan"}}',
     "flannel config: SubnetMin 10.6.0.0 is not in the range of the Network 10.5.0.0/16"),
    (b'{"Network": "10.5.0.0/16", "SubnetMax": "10.5.3.4", "Backend": {"Type": "vxlan"}}',
     r"flannel config: SubnetMax 10.5.3.4 is not on a SubnetLen \(/24\) boundary"),
    (b'{"Network": "10.5.0.0/16", "SubnetMin": "10.5.9.0", "SubnetMax": "10.5.8.0", '
     b'"Backend": {"Type": "vxlan"}}', "flannel config: SubnetMin 10.5.9.0 is above SubnetMax"),
    (b'{"Network": "10.5.0.0/16"}', "flannel config: no Backend"),
    (b'{"Network": "10.5.0.0/16", "Backend": {"Type": "host-gw"}}',
     'Backend.Type "host-gw" is not supported'),
    (b'{"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan", "DirectRouting": true}}',
     "Backend.DirectRouting true is not supported"),
    (b'{"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan", "GBP": true}}',
     "Backend.GBP true is not supported"),
    (b'{"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan", "VNI": 16777216}}',
     "Backend: VNI 16777216 out of range 0..16777215"),
    (b'{"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan", "Port": "8472"}}',
     'Backend: Port must be an integer, not "8472"'),
    (b'{"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan", "MTU": 600}}',
     "Backend.MTU 600 leaves less than 576 bytes"),
    (b'{"Network": "10.5.0.0/16", "EnableIPv4": false, "Backend": {"Type": "vxlan"}}',
     "EnableIPv4 false \\(an IPv6-only network\\) is not supported"),
])
def test_config_errors(raw: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FlannelConfig.parse(raw)


# -- leases ---------------------------------------------------------------------------------

def test_vxlan_lease_fixture_round_trips_byte_for_byte() -> None:
    raw = fixture("lease-vxlan.json")
    a = LeaseAttrs.parse(raw)
    assert (str(a.public_ip), a.backend_type, a.vni, a.vtep_mac) == (
        "192.168.64.3", "vxlan", 1, "c6:d2:32:6f:8f:44")
    assert a.to_json().encode() == raw


def test_dual_stack_lease_gives_its_ipv4_half() -> None:
    a = LeaseAttrs.parse(fixture("lease-dualstack.json"))
    assert (str(a.public_ip), a.vtep_mac) == ("192.168.64.5", "2a:11:22:33:44:55")


def test_udp_lease_is_foreign() -> None:
    raw = fixture("lease-udp.json")
    with pytest.raises(ValueError, match='lease: BackendType "udp" is not vxlan'):
        LeaseAttrs.parse(raw)
    assert lease_public_ip(raw) == "192.168.64.4"      # findLeaseByIP still sees it


def test_truncated_lease_fixture_is_not_json() -> None:
    raw = fixture("lease-vxlan.json")
    for n in range(len(raw)):
        with pytest.raises(ValueError, match=r"^lease: not JSON \("):
            LeaseAttrs.parse(raw[:n])


@pytest.mark.parametrize("value, message", [
    ({"PublicIP": None, "BackendType": "vxlan"}, "lease: no PublicIP"),
    ({"PublicIP": "1.2.3", "BackendType": "vxlan"}, "lease: PublicIP: '1.2.3' is not an IPv4"),
    ({"PublicIP": "1.2.3.4", "BackendType": "vxlan"}, "lease: BackendData must be an object"),
    ({"PublicIP": "1.2.3.4", "BackendType": "vxlan", "BackendData": {"VtepMAC": "02:00:00:00:00:01"}},
     "lease: BackendData.VNI is missing"),
    ({"PublicIP": "1.2.3.4", "BackendType": "vxlan", "BackendData": {"VNI": 1}},
     "lease: BackendData.VtepMAC is missing"),
    ({"PublicIP": "1.2.3.4", "BackendType": "vxlan", "BackendData": {"VNI": 1, "VtepMAC": "zz"}},
     'lease: BackendData.VtepMAC: "zz" is not a MAC address'),
    ({"PublicIP": "1.2.3.4", "BackendType": "vxlan",
      "BackendData": {"VNI": 1, "VtepMAC": "01:00:5e:00:00:01"}}, "is a multicast MAC address"),
    ({"PublicIP": "1.2.3.4", "BackendType": "vxlan",
      "BackendData": {"VNI": -1, "VtepMAC": "02:00:00:00:00:01"}}, "VNI -1 out of range"),
])
def test_lease_errors(value: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LeaseAttrs.parse(json.dumps(value))


def test_subnet_keys() -> None:
    assert parse_subnet_key(SUBNETS + "10.5.52.0-24") == N("10.5.52.0/24")
    assert parse_subnet_key("10.244.52.0-24&2001:cafe:42:2::-64") == N("10.244.52.0/24")
    assert subnet_key(N("10.5.52.0/24")) == "10.5.52.0-24"
    with pytest.raises(ValueError, match="lease key 'foo': not A.B.C.D-N"):
        parse_subnet_key("foo")
    with pytest.raises(ValueError, match="lease key '10.5.52.1-24': not a subnet"):
        parse_subnet_key("10.5.52.1-24")


# -- subnet.env and CNI -----------------------------------------------------------------------

def test_subnet_env_fixture_and_render() -> None:
    text = fixture("subnet.env").decode()
    env = SubnetEnv.parse(text)
    assert env == SubnetEnv(N("10.244.0.0/16"), N("10.244.52.0/24"), 1450, True)
    assert env.render() == text                       # flanneld's exact format
    assert SubnetEnv.previous_subnet(text) == N("10.244.52.0/24")
    assert SubnetEnv.previous_subnet("FLANNEL_SUBNET=bogus\n") is None
    assert SubnetEnv.previous_subnet("") is None
    with pytest.raises(ValueError, match="subnet.env: FLANNEL_MTU is missing"):
        SubnetEnv.parse("FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.1.1/24\n")


def test_cni_config_is_bridge_over_host_local() -> None:
    env = SubnetEnv(N("10.5.0.0/16"), N("10.5.52.0/24"), 1450)
    c = cni_config(env)
    assert (c["type"], c["bridge"], c["isGateway"], c["mtu"]) == ("bridge", "cni0", True, 1450)
    assert c["ipam"] == {"type": "host-local",
                         "ranges": [[{"subnet": "10.5.52.0/24", "gateway": "10.5.52.1"}]],
                         "routes": [{"dst": "10.5.0.0/16"}]}


# -- allocation -------------------------------------------------------------------------------

def test_allocation_skips_leased_subnets() -> None:
    c = cfg(Network="10.5.0.0/22")                    # subnets .1, .2, .3 (.0 is never used)
    assert free_subnets(c, []) == [N("10.5.1.0/24"), N("10.5.2.0/24"), N("10.5.3.0/24")]
    assert free_subnets(c, [N("10.5.2.0/24")]) == [N("10.5.1.0/24"), N("10.5.3.0/24")]
    assert free_subnets(c, [N("10.5.0.0/23")]) == [N("10.5.2.0/24"), N("10.5.3.0/24")]  # overlap
    with pytest.raises(ValueError, match="out of subnets"):
        pick_subnet(c, [N("10.5.0.0/22")])
    assert len(free_subnets(cfg(), [])) == 100                          # flannel's window
    picks = {pick_subnet(cfg(), [], random.Random(s)) for s in range(20)}
    assert len(picks) > 1 and all(p in free_subnets(cfg(), []) for p in picks)


# -- peers and ops ----------------------------------------------------------------------------

def lease(ip: str, mac: str, vni: int = 1, btype: str = "vxlan") -> bytes:
    return json.dumps({"PublicIP": ip, "PublicIPv6": None, "BackendType": btype,
                       "BackendData": {"VNI": vni, "VtepMAC": mac}}).encode()


def test_peers_skip_what_cannot_be_used() -> None:
    leases = {
        SUBNETS + "10.5.1.0-24": lease("192.168.100.1", "02:00:00:00:00:01"),       # ours
        SUBNETS + "10.5.2.0-24": lease("192.168.100.2", "02:00:00:00:00:02"),       # good
        SUBNETS + "10.5.3.0-24": b"{not json",
        SUBNETS + "10.5.4.0-24": lease("192.168.100.4", "02:00:00:00:00:04", btype="udp"),
        SUBNETS + "10.5.5.0-24": lease("192.168.100.5", "02:00:00:00:00:05", vni=2),
        SUBNETS + "10.5.1.0-25": lease("192.168.100.6", "02:00:00:00:00:06"),       # overlaps ours
        SUBNETS + "10.5.2.128-25": lease("192.168.100.7", "02:00:00:00:00:07"),     # overlaps .2
        SUBNETS + "10.5.8.0-24": lease("192.168.100.8", "02:00:00:00:00:02"),       # dup MAC
        SUBNETS + "10.5.9.0-24": lease("192.168.100.1", "02:00:00:00:00:09"),       # our IP
        SUBNETS + "10.6.0.0-24": lease("192.168.100.10", "02:00:00:00:00:0a"),      # outside
        SUBNETS + "junk": lease("192.168.100.11", "02:00:00:00:00:0b"),
    }
    ps = peers_from_leases(cfg(), leases, own_subnet=N("10.5.1.0/24"),
                           own_public_ip="192.168.100.1", subnets_prefix=SUBNETS)
    assert ps.peers == {"10.5.2.0-24": Peer(N("10.5.2.0/24"), "192.168.100.2",
                                            "02:00:00:00:00:02")}
    reasons = {k[len(SUBNETS):]: v for k, v in ps.skipped.items()}
    assert reasons["10.5.3.0-24"].startswith("lease 10.5.3.0-24: not JSON")
    assert reasons["10.5.4.0-24"] == 'lease 10.5.4.0-24: BackendType "udp" is not vxlan'
    assert reasons["10.5.5.0-24"] == "lease 10.5.5.0-24: VNI 2 is not the network's VNI 1"
    assert "overlaps this node's subnet 10.5.1.0/24" in reasons["10.5.1.0-25"]
    assert "overlaps lease 10.5.2.0-24" in reasons["10.5.2.128-25"]
    assert "VtepMAC 02:00:00:00:00:02 is already used by lease 10.5.2.0-24" in reasons["10.5.8.0-24"]
    assert "PublicIP 192.168.100.1 is this node's" in reasons["10.5.9.0-24"]
    assert "outside the Network 10.5.0.0/16" in reasons["10.6.0.0-24"]
    assert reasons["junk"] == "lease key 'junk': not A.B.C.D-N"
    assert len(ps.skipped) == 9


def test_peer_ops_order_and_changes() -> None:
    a = Peer(N("10.5.2.0/24"), "192.168.100.2", "02:00:00:00:00:02")
    add = peer_ops({}, {"10.5.2.0-24": a}, 1, 8472)
    assert add == [Op("fdb_add", (1, "02:00:00:00:00:02", "192.168.100.2", 8472)),
                   Op("neigh_add", (1, "10.5.2.0", "02:00:00:00:00:02")),
                   Op("kernel_neigh_add", ("10.5.2.0", "02:00:00:00:00:02")),
                   Op("route_add", ("10.5.2.0/24", "10.5.2.0"))]
    assert peer_ops({"10.5.2.0-24": a}, {"10.5.2.0-24": a}, 1, 8472) == []
    gone = peer_ops({"10.5.2.0-24": a}, {}, 1, 8472)
    assert [o.name for o in gone] == ["route_del", "kernel_neigh_del", "neigh_del", "fdb_del"]
    b = Peer(a.subnet, a.public_ip, "02:00:00:00:00:22")          # restarted: new VtepMAC
    moved = peer_ops({"10.5.2.0-24": a}, {"10.5.2.0-24": b}, 1, 8472)
    assert moved[:4] == gone and moved[4:] == peer_ops({}, {"10.5.2.0-24": b}, 1, 8472)


def test_ip_masq_is_refused_not_ignored() -> None:
    """--ip-masq installed no rules: the agent refuses it before touching anything."""
    from dataplane import cli
    with pytest.raises(SystemExit, match=r"--ip-masq is not supported.*MASQUERADE"):
        cli.main(["agent", "--flannel", "--etcd", "http://127.0.0.1:9", "--local", "10.0.0.1",
                  "--ip-masq"])
