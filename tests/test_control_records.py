"""Unit tests: record parsing and validation (control/records.py, control/keys.py). No etcd."""

from __future__ import annotations

import ipaddress
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control.keys import Layout, block_from_segment, block_key_segment
from control.records import (
    BlockRecord,
    EndpointRecord,
    NetworkConfig,
    NodeRecord,
    check_mac,
    check_name,
)
from control.tables import Snapshot, desired


def test_mac_normalised_and_checked() -> None:
    assert check_mac("02:AA:bb:00:00:01") == "02:aa:bb:00:00:01"
    for bad, msg in [("02:00:00:00:00", "is not a MAC address"),
                     ("zz:00:00:00:00:01", "is not a MAC address"),
                     ("02-00-00-00-00-01", "is not a MAC address"),
                     (42, "is not a MAC address"),
                     ("01:00:5e:00:00:01", "is a multicast MAC address"),
                     ("00:00:00:00:00:00", "is the all-zero MAC address")]:
        with pytest.raises(ValueError, match=msg):
            check_mac(bad)


def test_names() -> None:
    assert check_name("node-1.a_b", "node") == "node-1.a_b"
    for bad in ["", "-x", "a/b", "a b", "x" * 254, None]:
        with pytest.raises(ValueError, match="is not a valid name"):
            check_name(bad, "node")


def test_network_config_roundtrip_and_errors() -> None:
    cfg = NetworkConfig(vni=42, subnet="10.244.0.0/16", block_prefix=24)
    assert NetworkConfig.parse(cfg.to_json()) == cfg
    assert cfg.port == 4789
    cases = [
        (b'{"vni": 42}', "missing field 'subnet'"),
        (b'{"vni": "42", "subnet": "10.0.0.0/8"}', "vni: '42' is not an integer"),
        (b'{"vni": true, "subnet": "10.0.0.0/8"}', "vni: True is not an integer"),
        (b'{"vni": 16777216, "subnet": "10.0.0.0/8"}', r"vni: 16777216 is out of range 0..16777215"),
        (b'{"vni": 1, "subnet": "10.0.0.1/8"}', "subnet: '10.0.0.1/8' is not an IPv4 CIDR"),
        (b'{"vni": 1, "subnet": "10.0.0.0/16", "block_prefix": 8}', r"block_prefix: 8 is out of range 16..30"),
        (b'{"vni": 1, "subnet": "10.0.0.0/16", "port": 0}', r"port: 0 is out of range 1..65535"),
        (b'[1,2]', "JSON value is a list, not an object"),
        (b'{"vni": ', "malformed JSON"),
        (b'\xff\xfe', "malformed JSON"),
    ]
    for raw, msg in cases:
        with pytest.raises(ValueError, match=msg):
            NetworkConfig.parse(raw)


def test_node_record() -> None:
    rec = NodeRecord.parse(b'{"underlay":"192.168.100.1","port":4789,"tap_mac":"02:00:00:00:00:AA","x":1}')
    assert rec.tap_mac == "02:00:00:00:00:aa"
    assert NodeRecord.parse(rec.to_json()) == rec
    with pytest.raises(ValueError, match="underlay: '192.168.100' is not an IPv4 or IPv6 address"):
        NodeRecord.parse(b'{"underlay":"192.168.100","port":4789,"tap_mac":"02:00:00:00:00:01"}')
    # an IPv6 underlay (issue 10): the VTEP address may be IPv6, canonicalised
    v6 = NodeRecord.parse(b'{"underlay":"FD00:0::1","port":4789,"tap_mac":"02:00:00:00:00:01"}')
    assert v6.underlay == "fd00::1" and NodeRecord.parse(v6.to_json()) == v6
    for bad in ("ff02::1", "::", "::ffff:10.0.0.1", "fd00::zz"):
        with pytest.raises(ValueError, match="underlay: "):
            NodeRecord.parse(b'{"underlay":"%s","port":4789,"tap_mac":"02:00:00:00:00:01"}'
                             % bad.encode())
    with pytest.raises(ValueError, match="tap_mac: 'nope' is not a MAC address"):
        NodeRecord.parse(b'{"underlay":"192.168.100.1","port":4789,"tap_mac":"nope"}')


def test_endpoint_record() -> None:
    rec = EndpointRecord.parse(b'{"mac":"02:00:00:00:01:01","ip":"10.244.1.2/16",'
                               b'"gateway":"10.244.1.1","node":"n1","vni":42}')
    assert rec.address == "10.244.1.2"
    assert EndpointRecord.parse(rec.to_json()) == rec
    cases = [
        (b'{"mac":"02:00:00:00:01","ip":"10.244.1.2/16","node":"n1","vni":42}', "mac: .* is not a MAC"),
        (b'{"mac":"02:00:00:00:01:01","ip":"10.244.1.2","node":"n1","vni":42}', "ip: .* with prefix"),
        (b'{"mac":"02:00:00:00:01:01","ip":"10.244.0.0/16","node":"n1","vni":42}',
         "ip: 10.244.0.0/16 is the network or broadcast address"),
        (b'{"mac":"02:00:00:00:01:01","ip":"10.244.1.2/16","node":"n/1","vni":42}', "node: .* not a valid name"),
        (b'{"mac":"02:00:00:00:01:01","ip":"10.244.1.2/16","node":"n1"}', "missing field 'vni'"),
        (b'{"mac":"02:00:00:00:01:01","ip":"10.244.1.2/16","node":"n1","vni":1,"gateway":"x"}',
         "gateway: 'x' is not an IPv4 address"),
    ]
    for raw, msg in cases:
        with pytest.raises(ValueError, match=msg):
            EndpointRecord.parse(raw)


def test_block_record_and_segments() -> None:
    assert BlockRecord.parse(b'{"node":"n1"}').node == "n1"
    assert block_key_segment("10.244.1.0/24") == "10.244.1.0-24"
    assert block_from_segment("10.244.1.0-24") == ipaddress.IPv4Network("10.244.1.0/24")
    for bad in ["10.244.1.0", "10.244.1.0-x", "10.244.1.1-24", "x-24"]:
        with pytest.raises(ValueError, match="block key"):
            block_from_segment(bad)


def test_layout() -> None:
    lay = Layout("/vxtap", "net1")
    assert lay.root == "/vxtap/networks/net1/"
    assert lay.endpoint("cid", "eth0") == "/vxtap/networks/net1/endpoints/cid/eth0"
    assert lay.classify(lay.config) == ("config", "")
    assert lay.classify(lay.node("n1")) == ("node", "n1")
    assert lay.classify(lay.block("10.244.1.0/24")) == ("block", "10.244.1.0-24")
    assert lay.classify(lay.endpoint("c", "eth0")) == ("endpoint", "c/eth0")
    assert lay.classify("/vxtap/networks/net10/config") is None
    assert lay.classify(lay.root + "nodes/a/b") is None
    assert lay.classify(lay.root + "other/x") is None
    with pytest.raises(ValueError, match="must start with '/'"):
        Layout("vxtap", "n")
    with pytest.raises(ValueError, match="ifname"):
        lay.endpoint("c", "a/b")


# -- fuzz: every parser either returns a record or raises ValueError, nothing else -------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True)
    | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10),
                                                                      children, max_size=6),
    max_leaves=20)
_fields = st.sampled_from(["vni", "subnet", "block_prefix", "port", "underlay", "tap_mac", "node",
                           "mac", "ip", "gateway", "ip6", "gateway6", "subnet6", "block_prefix6"])
_plausible = st.dictionaries(_fields, st.one_of(
    _json_values, st.sampled_from(["02:00:00:00:00:01", "10.244.1.2/16", "10.0.0.0/8", "n1",
                                   "192.168.1.1", "01:00:5e:00:00:01", "::1", "10.0.0.1",
                                   "fd00::2/64", "fd00::/48", "fe80::1", "FD00:0::3/64",
                                   "fd00::1", "ff02::1/64", "fd00::2/129"]),
    st.integers(-1, 2**25)), max_size=10)
_raw = st.one_of(st.binary(max_size=200), _json_values.map(lambda v: json.dumps(v).encode()),
                 _plausible.map(lambda v: json.dumps(v).encode()))


@settings(max_examples=400, deadline=None)
@given(_raw)
def test_parsers_raise_only_value_error(raw: bytes) -> None:
    for cls in (NetworkConfig, NodeRecord, BlockRecord, EndpointRecord):
        try:
            rec = cls.parse(raw)  # type: ignore[attr-defined]
        except ValueError:
            continue
        assert cls.parse(rec.to_json()) == rec  # type: ignore[attr-defined]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="/abcn-.0123456789etdpoinsblkcfg", max_size=60), _raw)
def test_snapshot_put_never_raises(suffix: str, raw: bytes) -> None:
    lay = Layout("/vxtap", "net1")
    snap = Snapshot(lay)
    for key in (lay.root + suffix, lay.endpoints + suffix, lay.nodes + suffix, lay.blocks + suffix):
        reason = snap.put(key, raw)
        assert reason is None or key in snap.bad
        desired(snap, "n1")
        snap.delete(key)
    assert snap.bad == {} and snap.endpoints == {} and snap.nodes == {} and snap.blocks == {}


# -- the fast parse paths accept exactly what the precise (regex / ipaddress) checks accept -----

def _reference_endpoint(obj: dict[str, object]) -> tuple[str, str, str, int, str | None]:
    """EndpointRecord's validation as it was before the fast paths: regexes and ipaddress."""
    from control.records import check_int, check_ipv4_interface
    mac = check_mac(obj["mac"])
    ip = str(check_ipv4_interface(obj["ip"]))
    node = check_name(obj["node"], "node")
    vni = check_int(obj["vni"], "vni", 0, (1 << 24) - 1)
    gw = obj.get("gateway")
    if gw is not None:
        if not isinstance(gw, str):
            raise ValueError(f"gateway: {gw!r} is not an IPv4 address")
        try:
            gw = str(ipaddress.IPv4Address(gw))
        except ValueError:
            raise ValueError(f"gateway: {gw!r} is not an IPv4 address") from None
    return mac, ip, node, vni, gw  # type: ignore[return-value]


_octet = st.one_of(st.integers(0, 300).map(str), st.sampled_from(["01", "00", "", "a", " 1", "٣", "+1"]))
_ipv4ish = st.builds(lambda parts, sep: sep.join(parts), st.lists(_octet, min_size=3, max_size=5),
                     st.sampled_from([".", ".", ":"]))
_iface = st.one_of(st.builds(lambda a, p: f"{a}/{p}", _ipv4ish, st.one_of(
    st.integers(0, 40).map(str), st.sampled_from(["016", "", "x", "255.255.0.0", " 8", "+8"]))),
    _ipv4ish, st.integers(0, 5))
_macish = st.one_of(
    st.lists(st.sampled_from(["00", "02", "0A", "ff", "01", "Zz", "0", "123", "_1", " 2", "+1", "٣٣"]),
             min_size=5, max_size=7).map(":".join),
    st.text(alphabet="0123456789abcdefABCDEF:-", min_size=15, max_size=19), st.integers(0, 3))


@settings(max_examples=1500, deadline=None)
@given(_macish, _iface, st.sampled_from(["n1", "n-1.x", "-bad", "a/b", "", 7]),
       st.one_of(st.integers(-1, 1 << 25), st.just(True)), st.one_of(st.none(), _ipv4ish, st.just(3)))
def test_fast_endpoint_parse_matches_reference(mac: object, ip: object, node: object, vni: object,
                                               gw: object) -> None:
    obj = {"mac": mac, "ip": ip, "node": node, "vni": vni, "gateway": gw}
    try:
        want = _reference_endpoint(obj)
    except ValueError as e:
        with pytest.raises(ValueError) as got:
            EndpointRecord.parse(json.dumps(obj).encode())
        assert str(got.value) == str(e)            # the same precise message, naming the field
        return
    rec = EndpointRecord.parse(json.dumps(obj).encode())
    assert (rec.mac, rec.ip, rec.node, rec.vni, rec.gateway) == want


def test_endpoint_record_is_compact() -> None:
    rec = EndpointRecord.parse(b'{"mac":"02:00:00:00:01:01","ip":"10.244.1.2/16","node":"n1","vni":42}')
    assert not hasattr(rec, "__dict__")
    assert rec.mk == 42 << 48 | 0x020000000101 and rec.nk == 42 << 32 | 0x0AF40102
    assert rec == EndpointRecord("02:00:00:00:01:01", "10.244.1.2/16", "n1", 42)
    other = EndpointRecord("02:00:00:00:01:01", "10.244.1.2/16", "n1", 42)
    other.rev = 7                                   # metadata, not part of the value
    assert other == rec and hash(other) == hash(rec)


def _load_object_ref(raw: bytes) -> object:
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return ("error", f"malformed JSON: {e}")
    if type(obj) is not dict:
        return ("error", f"JSON value is a {type(obj).__name__}, not an object")
    return obj


@settings(max_examples=1500, deadline=None)
@given(st.one_of(
    st.binary(max_size=30).map(lambda b: b"{" + b + b"}"),
    st.text(alphabet='{}[]":,01a \\\t\xe9', max_size=30).map(str.encode),
    st.dictionaries(st.text(max_size=5), st.one_of(st.integers(), st.text(max_size=5),
                                                   st.none()), max_size=4)
    .map(lambda d: json.dumps(d).encode())))
def test_load_object_fast_path_matches_json_loads(raw: bytes) -> None:
    """load_object's C-scanner fast path accepts and rejects exactly what json.loads does."""
    from control.records import load_object
    want = _load_object_ref(raw)
    try:
        got: object = load_object(raw)
    except ValueError as e:
        got = ("error", str(e))
    assert got == want


# -- dual stack ----------------------------------------------------------------------------------

def test_dual_stack_endpoint_record() -> None:
    raw = (b'{"mac":"02:00:00:00:01:01","ip":"10.244.1.2/16","gateway":"10.244.1.1",'
           b'"ip6":"FD00:10:244:1:0:0:0:2/48","gateway6":"fe80::1","node":"n1","vni":42}')
    rec = EndpointRecord.parse(raw)
    assert (rec.ip, rec.gateway, rec.ip6, rec.gateway6, rec.address6) == (
        "10.244.1.2/16", "10.244.1.1", "fd00:10:244:1::2/48", "fe80::1", "fd00:10:244:1::2")
    assert len(rec.nks) == 2 and rec.nks[0] == rec.nk == 42 << 32 | 0x0AF40102
    assert EndpointRecord.parse(rec.to_json()) == rec
    assert json.loads(rec.to_json())["ip6"] == "fd00:10:244:1::2/48"      # written canonical
    # IPv6 only: no "ip" at all; its neighbour key is the first one
    only6 = EndpointRecord.parse(b'{"mac":"02:00:00:00:01:01","ip6":"fd00::2/64","node":"n1",'
                                 b'"vni":42}')
    assert (only6.ip, only6.address, only6.ip6, only6.nks) == (None, None, "fd00::2/64", (only6.nk,))
    assert "ip" not in json.loads(only6.to_json())
    assert EndpointRecord.parse(only6.to_json()) == only6
    # records of before dual stack read (and are written) exactly as they were
    old = b'{"gateway":"10.244.1.1","ip":"10.244.1.2/16","mac":"02:00:00:00:01:01","node":"n1","vni":42}'
    assert EndpointRecord.parse(old).to_json() == old
    base = '"mac":"02:00:00:00:01:01","node":"n1","vni":42'
    cases = [
        ('', "missing field 'ip'"),
        ('"ip":"fd00::2/64"', "ip: 'fd00::2/64' is an IPv6 address: give it as 'ip6'"),
        ('"ip6":"10.244.1.2/16"', "ip6: '10.244.1.2/16' is not an IPv6 address with prefix"),
        ('"ip6":"fd00::2"', "ip6: 'fd00::2' is not an IPv6 address with prefix"),
        ('"ip6":"fd00::2/0"', "ip6: 'fd00::2/0' is not an IPv6 address with prefix"),
        ('"ip6":"fd00::2/64%x"', "is not an IPv6 address with prefix"),
        ('"ip6":"fd00::/64"', "ip6: fd00::/64 is the subnet-router anycast address"),
        ('"ip6":"ff02::2/64"', "ip6: ff02::2/64 is a multicast address"),
        ('"ip6":"fe80::2/64"', "ip6: fe80::2/64 is a link-local address"),
        ('"ip6":"::/64"', "ip6: ::/64 is the unspecified address"),
        ('"ip6":"::ffff:10.0.0.1/96"', "is an IPv4-mapped address"),
        ('"ip6":7', "ip6: 7 is not an IPv6 address with prefix"),
        ('"ip6":"fd00::2/64","gateway6":"fd00::zz"', "gateway6: 'fd00::zz' is not an IPv6 address"),
        ('"ip6":"fd00::2/64","gateway6":"ff02::1"', "gateway6: ff02::1 is a multicast address"),
        ('"ip6":"fd00::2/64","gateway":"10.0.0.1"', "gateway: '10.0.0.1' is given without 'ip'"),
        ('"ip":"10.244.1.2/16","gateway6":"fd00::1"', "gateway6: 'fd00::1' is given without 'ip6'"),
    ]
    for extra, msg in cases:
        with pytest.raises(ValueError, match=msg):
            EndpointRecord.parse(("{" + base + ("," + extra if extra else "") + "}").encode())


def test_network_config_subnet6() -> None:
    cfg = NetworkConfig(vni=42, subnet="10.244.0.0/16", subnet6="FD00:10:244::/48")
    assert cfg.subnet6 == "fd00:10:244::/48" and cfg.block_prefix6 == 64
    assert NetworkConfig.parse(cfg.to_json()) == cfg
    assert "subnet6" not in NetworkConfig(vni=42, subnet="10.244.0.0/16").to_dict()
    base = '"vni":1,"subnet":"10.0.0.0/16","block_prefix":24'
    for extra, msg in [('"subnet6":"fd00::1/48"', "subnet6: 'fd00::1/48' is not an IPv6 CIDR"),
                       ('"subnet6":"10.0.0.0/8"', "is not an IPv6 CIDR"),
                       ('"subnet6":"ff00::/8"', "subnet6: ff00::/8 is not a unicast IPv6 prefix"),
                       ('"subnet6":"fd00::/120"', r"block_prefix6: 64 is out of range 128..126"),
                       ('"subnet6":"fd00::/48","block_prefix6":true', "block_prefix6: True is not"),
                       ('"subnet6":"fd00::/48","block_prefix6":127', "out of range 56..126")]:
        with pytest.raises(ValueError, match=msg):
            NetworkConfig.parse(("{" + base + "," + extra + "}").encode())


def test_ipv6_index_text_is_canonical() -> None:
    from control.records import normalize_ip
    assert normalize_ip("FD00:0:0::1/64") == normalize_ip("fd00::1") == "fd00::1"
    assert normalize_ip("10.244.1.2/16") == "10.244.1.2"
