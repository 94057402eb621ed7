"""The switch's classification (process_tap / process_udp), tables and counters, on both
implementations: unicast, flood, MTU, every inbound drop reason, VTEP refcounting, input errors.
"""
from __future__ import annotations

from typing import Any

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from fastpath import counters, spec
from tests.fastpath_impls import (
    BROADCAST,
    Impl,
    arp_request,
    eth,
    impl,
    ip_frame,
    multiset,
    state,
    tx_groups,
    vxlan,
)

__all__ = ["impl"]

LOCAL = "192.168.100.1"
VNI = 42
A_MAC, B_MAC, C_MAC = "02:00:00:00:02:02", "02:00:00:00:03:02", "02:00:00:00:04:02"
A_VTEP, B_VTEP, C_VTEP = "192.168.100.2", "192.168.100.3", "192.168.100.4"
POD_MAC = "02:00:00:00:01:02"                       # the local pod behind the TAP
DEC_KEYS = {"vni", "verdict", "reason", "vtep", "copies"}


def make(impl: Impl, **kw: Any) -> Any:
    sw = impl.Switch(LOCAL, **kw)
    sw.add_network(VNI)
    return sw


def to(mac: str, payload: bytes = b"hello", **kw: Any) -> bytes:
    return ip_frame(mac, POD_MAC, payload=payload, **kw)


def inner_from(src_mac: str = A_MAC, dst_mac: str = POD_MAC, n: int = 60) -> bytes:
    f = ip_frame(dst_mac, src_mac, src_ip="10.244.2.2", dst_ip="10.244.1.2")
    return f + bytes(max(0, n - len(f)))


def nonzero(c: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in c.items() if v}


# ---- construction and validation ---------------------------------------------------------------


@pytest.mark.parametrize("kw,msg", [
    ({"srcport": (0, 10)}, "bad source port range 0-10: want 1 <= min < max <= 65536"),
    ({"srcport": (10, 10)}, "bad source port range 10-10: want 1 <= min < max <= 65536"),
    ({"srcport": (61000, 32768)},
     "bad source port range 61000-32768: want 1 <= min < max <= 65536"),
    ({"srcport": (1, 65537)}, "bad source port range 1-65537: want 1 <= min < max <= 65536"),
    ({"batch": 0}, "batch must be in 1..1024, got 0"),
    ({"batch": 1025}, "batch must be in 1..1024, got 1025"),
    ({"ttl": 0}, "ttl must be in 1..255, got 0"),
    ({"ttl": 256}, "ttl must be in 1..255, got 256"),
    ({"underlay_mtu": 575}, "underlay MTU must be in 576..65535, got 575"),
    ({"underlay_mtu": 65536}, "underlay MTU must be in 576..65535, got 65536"),
    ({"port": 0}, "UDP port must be in 1..65535, got 0"),
    ({"port": 65536}, "UDP port must be in 1..65535, got 65536"),
    ({"busy_poll_us": -1}, "busy_poll_us must be in 0..1000000, got -1"),
    ({"busy_poll_us": 1000001}, "busy_poll_us must be in 0..1000000, got 1000001"),
])
def test_bad_switch_arguments(impl: Impl, kw: dict[str, Any], msg: str) -> None:
    with pytest.raises(ValueError) as e:
        impl.Switch(LOCAL, **kw)
    assert str(e.value) == msg


@pytest.mark.parametrize("kw,msg", [
    ({"ttl": 2**40}, "ttl must be in 1..255, got 1099511627776"),
    ({"port": 2**40}, "UDP port must be in 1..65535, got 1099511627776"),
    ({"batch": 2**40}, "batch must be in 1..1024, got 1099511627776"),
    ({"underlay_mtu": 2**40}, "underlay MTU must be in 576..65535, got 1099511627776"),
    ({"busy_poll_us": 2**40}, "busy_poll_us must be in 0..1000000, got 1099511627776"),
    ({"ttl": -2**40}, "ttl must be in 1..255, got -1099511627776"),
])
def test_huge_switch_arguments_are_value_errors(request: pytest.FixtureRequest, impl: Impl,
                                                kw: dict[str, Any], msg: str) -> None:
    """Out of C range is still a bad value: ValueError with the message, not OverflowError."""
    with pytest.raises(ValueError) as e:
        impl.Switch(LOCAL, **kw)
    assert str(e.value) == msg


@pytest.mark.parametrize("ip", ["10.0.0", "10.0.0.256", "", "host"])
def test_bad_local_ip(impl: Impl, ip: str) -> None:
    with pytest.raises(ValueError) as e:
        impl.Switch(ip)
    assert str(e.value) == f"not an IPv4 or IPv6 address: {ip!r}"


def test_networks(impl: Impl) -> None:
    sw = impl.Switch(LOCAL)
    assert sw.networks() == []
    for v in (7, 1, spec.VNI_MAX):
        sw.add_network(v)
    assert sw.networks() == [1, 7, spec.VNI_MAX]
    with pytest.raises(ValueError) as e:
        sw.add_network(7)
    assert str(e.value) == "network with VNI 7 exists"
    sw.remove_network(7)
    assert sw.networks() == [1, spec.VNI_MAX]
    with pytest.raises(KeyError) as k:
        sw.remove_network(7)
    assert k.value.args == ("no network with VNI 7",)
    sw.add_network(7)
    assert sw.networks() == [1, 7, spec.VNI_MAX]
    assert sw.fdb(7) == [] and sw.neigh(7) == [] and sw.vteps(7) == []


@pytest.mark.parametrize("vni", [0, -1, 1 << 24, (1 << 24) + 5])
def test_bad_vni(impl: Impl, vni: int) -> None:
    sw = make(impl)
    msg = f"VNI must be an integer in 1..16777215, got {vni}"
    calls = [lambda: sw.add_network(vni), lambda: sw.remove_network(vni),
             lambda: sw.fdb_add(vni, A_MAC, A_VTEP), lambda: sw.fdb_del(vni, A_MAC),
             lambda: sw.neigh_add(vni, "10.0.0.1", A_MAC), lambda: sw.neigh_del(vni, "10.0.0.1"),
             lambda: sw.fdb(vni), lambda: sw.neigh(vni), lambda: sw.vteps(vni),
             lambda: sw.counters(vni), lambda: sw.process_tap(vni, [to(A_MAC)])]
    for call in calls:
        with pytest.raises(ValueError) as e:
            call()
        assert str(e.value) == msg


def test_unknown_vni_is_key_error(impl: Impl) -> None:
    sw = make(impl)
    calls = [lambda: sw.remove_network(43), lambda: sw.fdb_add(43, A_MAC, A_VTEP),
             lambda: sw.fdb_del(43, A_MAC), lambda: sw.neigh_add(43, "10.0.0.1", A_MAC),
             lambda: sw.neigh_del(43, "10.0.0.1"), lambda: sw.fdb(43), lambda: sw.neigh(43),
             lambda: sw.vteps(43), lambda: sw.counters(43),
             lambda: sw.process_tap(43, [to(A_MAC)])]
    for call in calls:
        with pytest.raises(KeyError) as e:
            call()
        assert e.value.args == ("no network with VNI 43",)
    assert nonzero(sw.counters(VNI)) == {} and nonzero(sw.counters()) == {}


def test_process_tap_unknown_vni_without_frames(impl: Impl) -> None:
    sw = make(impl)
    with pytest.raises(KeyError):
        sw.process_tap(43, [])


@pytest.mark.parametrize("vni", [True, 2**32, "42", 4.0])
def test_non_int_vni_is_value_error(impl: Impl,
                                    vni: Any) -> None:
    sw = impl.Switch(LOCAL)
    with pytest.raises(ValueError) as e:
        sw.add_network(vni)
    assert str(e.value) == f"VNI must be an integer in 1..16777215, got {vni!r}"


@pytest.mark.parametrize("mac,msg", [
    ("zz:00:00:00:00:01", "not a MAC address: 'zz:00:00:00:00:01' (want aa:bb:cc:dd:ee:ff)"),
    ("02:00:00:00:01", "not a MAC address: '02:00:00:00:01' (want aa:bb:cc:dd:ee:ff)"),
    ("02:00:00:00:00:01:03", "not a MAC address: '02:00:00:00:00:01:03' (want aa:bb:cc:dd:ee:ff)"),
    ("02:00-00:00:00:01", "not a MAC address: '02:00-00:00:00:01' (want aa:bb:cc:dd:ee:ff)"),
    ("", "not a MAC address: '' (want aa:bb:cc:dd:ee:ff)"),
    ("01:00:5e:00:00:01", "01:00:5e:00:00:01 is a multicast/broadcast MAC, not a station address"),
    ("ff:ff:ff:ff:ff:ff", "ff:ff:ff:ff:ff:ff is a multicast/broadcast MAC, not a station address"),
    ("33:33:00:00:00:01", "33:33:00:00:00:01 is a multicast/broadcast MAC, not a station address"),
])
def test_bad_mac(impl: Impl, mac: str, msg: str) -> None:
    sw = make(impl)
    for call in (lambda: sw.fdb_add(VNI, mac, A_VTEP), lambda: sw.neigh_add(VNI, "10.0.0.1", mac),
                 lambda: sw.fdb_add(43, mac, A_VTEP)):           # checked before the VNI
        with pytest.raises(ValueError) as e:
            call()
        assert str(e.value) == msg
    assert sw.fdb(VNI) == [] and sw.neigh(VNI) == [] and sw.vteps(VNI) == []


def test_fdb_del_takes_any_mac_but_checks_syntax(impl: Impl) -> None:
    sw = make(impl)
    assert sw.fdb_del(VNI, BROADCAST) is False
    with pytest.raises(ValueError) as e:
        sw.fdb_del(VNI, "nope")
    assert str(e.value) == "not a MAC address: 'nope' (want aa:bb:cc:dd:ee:ff)"


def test_mac_spellings(impl: Impl) -> None:
    sw = make(impl)
    sw.fdb_add(VNI, "02-AA-bb-00-00-01", A_VTEP)
    assert sw.fdb(VNI) == [("02:aa:bb:00:00:01", A_VTEP, 4789)]
    assert sw.fdb_del(VNI, "02:aa:BB:00:00:01") is True


@pytest.mark.parametrize("ip", ["10.0.0.300", "10.0.0", "a.b.c.d", " 10.0.0.1"])
def test_bad_ip(impl: Impl, ip: str) -> None:
    sw = make(impl)
    msg = f"not an IPv4 address: {ip!r}"
    for call in (lambda: sw.fdb_add(VNI, A_MAC, ip), lambda: sw.process_udp([(ip, vxlan(VNI))])):
        with pytest.raises(ValueError) as e:
            call()
        assert str(e.value) == msg
    if ":" in ip:                       # the neighbour table takes IPv6 too
        sw.neigh_add(VNI, ip, A_MAC)
        assert sw.neigh(VNI) == [(ip, A_MAC)] and sw.neigh_del(VNI, ip) is True
        return
    for call in (lambda: sw.neigh_add(VNI, ip, A_MAC), lambda: sw.neigh_del(VNI, ip)):
        with pytest.raises(ValueError) as e:
            call()
        assert str(e.value) == f"not an IPv4 or IPv6 address: {ip!r}"


@pytest.mark.parametrize("port", [0, 65536, -1])
def test_bad_fdb_port(impl: Impl, port: int) -> None:
    sw = make(impl)
    with pytest.raises(ValueError) as e:
        sw.fdb_add(VNI, A_MAC, A_VTEP, port)
    assert str(e.value) == f"UDP port must be in 1..65535, got {port}"
    assert sw.fdb(VNI) == [] and sw.vteps(VNI) == []


def test_counter_names_and_zero_start(impl: Impl) -> None:
    sw = make(impl)
    assert list(sw.counters()) == list(counters.NAMES)
    assert list(sw.counters(VNI)) == list(counters.NAMES)
    assert nonzero(sw.counters()) == {} and nonzero(sw.counters(VNI)) == {}
    assert all(n.startswith("drop_") for n in counters.DROPS) and len(counters.DROPS) == 36


# ---- outbound: unicast --------------------------------------------------------------------------


@pytest.mark.parametrize("port", [None, 4789, 8472])
def test_unicast_hit(impl: Impl, port: int | None) -> None:
    sw = make(impl, ttl=17, srcport=(40000, 40100))
    sw.fdb_add(VNI, A_MAC, A_VTEP, port)
    f = to(A_MAC)
    out, decs = sw.process_tap(VNI, [f])
    want_port = 4789 if port is None else port
    assert decs == [{"vni": VNI, "verdict": "encap", "reason": None, "vtep": A_VTEP, "copies": 1}]
    ((kind, dst, dport, d),) = out
    assert (kind, dst, dport) == ("udp", A_VTEP, want_port)
    p = IP(d)
    assert (p.src, p.dst, p.ttl, p.flags, p.len) == (LOCAL, A_VTEP, 17, "DF", len(f) + 36)
    assert 40000 <= p[UDP].sport < 40100 and p[UDP].dport == want_port
    v = VXLAN(bytes(p[UDP].payload))
    assert (v.flags, v.vni, bytes(v.payload)) == (0x08, VNI, f)
    assert nonzero(sw.counters(VNI)) == {"tap_rx_packets": 1, "tap_rx_bytes": len(f),
                                         "udp_tx_packets": 1, "udp_tx_bytes": len(d)}
    assert sw.vteps(VNI) == [{"vtep": A_VTEP, "port": want_port, "fdb_entries": 1,
                              "tx_packets": 1, "tx_bytes": len(d), "rx_packets": 0,
                              "rx_bytes": 0}]
    assert nonzero(sw.counters()) == {}


def test_unicast_source_port_per_flow(impl: Impl) -> None:
    sw = make(impl)
    sw.fdb_add(VNI, A_MAC, A_VTEP)
    out, _ = sw.process_tap(VNI, [to(A_MAC, sport=s) for s in range(100)]
                            + [to(A_MAC, sport=5, payload=b"other payload", ident=99)])
    ports = [IP(o[3])[UDP].sport for o in out]
    assert all(32768 <= p < 61000 for p in ports)
    assert len(set(ports[:100])) > 95
    assert ports[100] == ports[5]                      # same flow, same port


@pytest.mark.parametrize("srcport", [(1, 2), (4789, 4791), (49152, 65535), (1, 65535)])
def test_unicast_source_port_in_configured_range(impl: Impl, srcport: tuple[int, int]) -> None:
    sw = make(impl, srcport=srcport, flood=True)
    sw.fdb_add(VNI, A_MAC, A_VTEP)
    sw.fdb_add(VNI, B_MAC, B_VTEP)
    out, _ = sw.process_tap(VNI, [to(m, sport=s) for s in range(200) for m in (A_MAC, BROADCAST)])
    ports = {int.from_bytes(o[3][20:22], "big") for o in out}
    assert all(srcport[0] <= p < srcport[1] for p in ports), sorted(ports)[:5]
    assert (len(ports) == min(srcport[1] - srcport[0], len(ports)) and len(ports) > 1) or \
        srcport == (1, 2)


def test_switch_source_port_range_up_to_65536(impl: Impl) -> None:
    sw = make(impl, srcport=(60000, 65536))
    sw.fdb_add(VNI, A_MAC, A_VTEP)
    out, _ = sw.process_tap(VNI, [to(A_MAC, sport=s) for s in range(200)])
    ports = [int.from_bytes(o[3][20:22], "big") for o in out]
    assert all(60000 <= p <= 65535 for p in ports), sorted(ports)[:5]


def test_unicast_to_two_vteps(impl: Impl) -> None:
    sw = make(impl)
    sw.fdb_add(VNI, A_MAC, A_VTEP)
    sw.fdb_add(VNI, B_MAC, B_VTEP, 8472)
    out, decs = sw.process_tap(VNI, [to(A_MAC), to(B_MAC), to(A_MAC)])
    assert [(o[1], o[2]) for o in out] == [(A_VTEP, 4789), (B_VTEP, 8472), (A_VTEP, 4789)]
    assert [d["vtep"] for d in decs] == [A_VTEP, B_VTEP, A_VTEP]
    assert [(v["vtep"], v["tx_packets"]) for v in sw.vteps(VNI)] == [(A_VTEP, 2), (B_VTEP, 1)]


@pytest.mark.parametrize("flood", [False, True])
def test_unicast_miss(impl: Impl, flood: bool) -> None:
    sw = make(impl, flood=flood)
    sw.fdb_add(VNI, A_MAC, A_VTEP)
    sw.fdb_add(VNI, B_MAC, B_VTEP)
    f = to(C_MAC)
    out, (dec,) = sw.process_tap(VNI, [f])
    if not flood:
        assert out == []
        assert dec == {"vni": VNI, "verdict": "drop", "reason": "unknown_unicast", "vtep": None,
                       "copies": 0}
        assert sw.counters(VNI)["drop_unknown_unicast"] == 1
    else:
        assert dec == {"vni": VNI, "verdict": "flood", "reason": None, "vtep": None, "copies": 2}
        assert sorted(o[1] for o in out) == [A_VTEP, B_VTEP]
        assert all(o[3][36:] == f for o in out)
        c = sw.counters(VNI)
        assert (c["flooded"], c["udp_tx_packets"], c["drop_unknown_unicast"]) == (1, 2, 0)


# ---- outbound: broadcast / multicast ------------------------------------------------------------

BUM = [BROADCAST, "01:00:5e:00:00:fb", "33:33:00:00:00:01", "03:00:00:00:00:00"]


@pytest.mark.parametrize("dst", BUM)
def test_bum_dropped_when_flood_off(impl: Impl, dst: str) -> None:
    sw = make(impl, flood=False)
    sw.fdb_add(VNI, A_MAC, A_VTEP)
    out, (dec,) = sw.process_tap(VNI, [to(dst)])
    assert out == [] and (dec["verdict"], dec["reason"]) == ("drop", "bum")
    assert nonzero(sw.counters(VNI)) == {"tap_rx_packets": 1, "tap_rx_bytes": len(to(dst)),
                                         "drop_bum": 1}


@pytest.mark.parametrize("dst", BUM)
def test_bum_flooded_to_every_vtep(impl: Impl, dst: str) -> None:
    sw = make(impl, flood=True, ttl=9)
    vteps = {f"192.168.101.{i}": 4789 + i % 3 for i in range(1, 9)}
    for i, (ip, port) in enumerate(vteps.items()):
        sw.fdb_add(VNI, f"02:00:00:00:99:{i:02x}", ip, port)
        sw.fdb_add(VNI, f"02:00:00:00:98:{i:02x}", ip, port)       # two MACs, one VTEP
    f = to(dst)
    out, (dec,) = sw.process_tap(VNI, [f])
    assert dec == {"vni": VNI, "verdict": "flood", "reason": None, "vtep": None, "copies": 8}
    assert sorted((o[1], o[2]) for o in out) == sorted(vteps.items())    # one copy per VTEP
    sports = set()
    for _, ip, port, d in out:
        p = IP(d)
        assert (p.src, p.dst, p.ttl, p.flags, p[UDP].dport) == (LOCAL, ip, 9, "DF", port)
        v = VXLAN(bytes(p[UDP].payload))
        assert (v.flags, v.vni, bytes(v.payload)) == (0x08, VNI, f)
        sports.add(p[UDP].sport)
    assert len(sports) == 1                              # one flow, one source port
    c = sw.counters(VNI)
    assert (c["flooded"], c["udp_tx_packets"], c["udp_tx_bytes"]) == (1, 8, 8 * (len(f) + 36))
    assert all((v["tx_packets"], v["tx_bytes"]) == (1, len(f) + 36) for v in sw.vteps(VNI))


def test_bum_without_vteps_dropped_even_with_flood(impl: Impl) -> None:
    sw = make(impl, flood=True)
    out, decs = sw.process_tap(VNI, [to(BROADCAST), to(A_MAC)])
    assert out == [] and [d["reason"] for d in decs] == ["bum", "unknown_unicast"]
    c = sw.counters(VNI)
    assert (c["drop_bum"], c["drop_unknown_unicast"], c["flooded"]) == (1, 1, 0)


def test_flood_many_vteps_large_batch(impl: Impl) -> None:
    """64 frames x 40 VTEPs in one batch: 2560 copies (the C side grows its message array)."""
    sw = make(impl, flood=True, batch=64)
    for i in range(40):
        sw.fdb_add(VNI, f"02:00:00:00:77:{i:02x}", f"10.1.0.{i + 1}")
    frames = [to(BROADCAST, sport=i) for i in range(64)]
    out, decs = sw.process_tap(VNI, frames)
    assert len(out) == 2560 and all(d["copies"] == 40 for d in decs)
    groups = tx_groups(out, decs, 64)
    for f, g in zip(frames, groups, strict=True):
        assert sorted(o[1] for o in g) == sorted(f"10.1.0.{i + 1}" for i in range(40))
        assert all(o[3][36:] == f for o in g)
    assert sw.counters(VNI)["udp_tx_packets"] == 2560


def test_flood_after_vtep_slot_reuse(impl: Impl) -> None:
    """Remove a VTEP, add another: the flood reaches exactly the current VTEPs (any order)."""
    sw = make(impl, flood=True)
    sw.fdb_add(VNI, A_MAC, A_VTEP)
    sw.fdb_add(VNI, B_MAC, B_VTEP)
    sw.fdb_add(VNI, C_MAC, C_VTEP)
    sw.process_tap(VNI, [to(BROADCAST)])
    assert sw.fdb_del(VNI, A_MAC)
    sw.fdb_add(VNI, "02:00:00:00:05:02", "192.168.100.5", 9999)
    f = to(BROADCAST, sport=7)
    out, (dec,) = sw.process_tap(VNI, [f])
    assert dec["copies"] == 3
    assert multiset((o[1], o[2]) for o in out) == multiset(
        [(B_VTEP, 4789), (C_VTEP, 4789), ("192.168.100.5", 9999)])
    new = next(v for v in sw.vteps(VNI) if v["vtep"] == "192.168.100.5")
    assert (new["tx_packets"], new["fdb_entries"]) == (1, 1)   # a reused slot starts from zero
    assert [v["tx_packets"] for v in sw.vteps(VNI)] == [2, 2, 1]


# ---- MTU ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mtu", [576, 1500, 9000])
def test_mtu_boundary(impl: Impl, mtu: int) -> None:
    sw = make(impl, underlay_mtu=mtu, flood=True)
    sw.fdb_add(VNI, A_MAC, A_VTEP)
    sw.fdb_add(VNI, B_MAC, B_VTEP)
    fits = to(A_MAC, payload=bytes(mtu - 36 - 42))
    assert len(fits) == mtu - 36
    big = fits + b"\0"
    out, decs = sw.process_tap(VNI, [fits, big, to(BROADCAST, payload=bytes(mtu - 36 - 41))])
    assert [(d["verdict"], d["reason"]) for d in decs] == [("encap", None),
                                                            ("drop", "tx_too_big"),
                                                            ("drop", "tx_too_big")]
    ((_, _, _, d),) = out
    p = IP(d)
    assert p.len == len(d) == mtu and p.flags == "DF" and p.frag == 0    # never fragmented
    c = sw.counters(VNI)
    assert (c["drop_tx_too_big"], c["udp_tx_packets"], c["flooded"]) == (2, 1, 0)


def test_oversized_frame_counted_as_read_length(impl: Impl) -> None:
    """A frame far over the MTU counts the bytes a read() into the slot returns: max_inner+1."""
    sw = make(impl, underlay_mtu=1500)
    sw.fdb_add(VNI, A_MAC, A_VTEP)
    out, (dec,) = sw.process_tap(VNI, [to(A_MAC, payload=bytes(9000))])
    assert out == [] and dec["reason"] == "tx_too_big"
    assert nonzero(sw.counters(VNI)) == {"tap_rx_packets": 1, "tap_rx_bytes": 1465,
                                         "drop_tx_too_big": 1}


@pytest.mark.parametrize("n", range(14))
def test_tx_short(impl: Impl, n: int) -> None:
    sw = make(impl, flood=True)
    sw.fdb_add(VNI, A_MAC, A_VTEP)
    out, (dec,) = sw.process_tap(VNI, [to(A_MAC)[:n]])
    assert out == [] and dec == {"vni": VNI, "verdict": "drop", "reason": "tx_short",
                                 "vtep": None, "copies": 0}
    assert nonzero(sw.counters(VNI)) == {"tap_rx_packets": 1, "drop_tx_short": 1,
                                         **({"tap_rx_bytes": n} if n else {})}


def test_minimal_frame_is_forwarded(impl: Impl) -> None:
    sw = make(impl)
    sw.fdb_add(VNI, A_MAC, A_VTEP)
    f = to(A_MAC)[:14]
    out, (dec,) = sw.process_tap(VNI, [f])
    assert dec["verdict"] == "encap" and out[0][3][36:] == f


# ---- inbound ------------------------------------------------------------------------------------


def rx(sw: Any, src: str, payload: bytes) -> tuple[list[Any], dict[str, Any]]:
    out, (dec,) = sw.process_udp([(src, payload)])
    assert set(dec) == DEC_KEYS
    return out, dec


def test_deliver(impl: Impl) -> None:
    sw = make(impl)
    sw.fdb_add(VNI, A_MAC, A_VTEP)
    inner = inner_from()
    payload = bytes(VXLAN(flags=0x08, vni=VNI) / Ether(inner))
    out, dec = rx(sw, A_VTEP, payload)
    assert out == [("tap", VNI, inner)]
    assert dec == {"vni": VNI, "verdict": "deliver", "reason": None, "vtep": A_VTEP, "copies": 1}
    assert nonzero(sw.counters(VNI)) == {"udp_rx_packets": 1, "udp_rx_bytes": len(payload),
                                         "tap_tx_packets": 1, "tap_tx_bytes": len(inner)}
    assert nonzero(sw.counters()) == {}
    (v,) = sw.vteps(VNI)
    assert (v["rx_packets"], v["rx_bytes"], v["tx_packets"]) == (1, len(payload), 0)


def test_deliver_to_the_right_network(impl: Impl) -> None:
    sw = make(impl)
    sw.add_network(7)
    sw.fdb_add(VNI, A_MAC, A_VTEP)
    sw.fdb_add(7, B_MAC, A_VTEP)
    out, decs = sw.process_udp([(A_VTEP, vxlan(7, inner_from(B_MAC))),
                                (A_VTEP, vxlan(VNI, inner_from(A_MAC)))])
    assert [(o[1], o[2]) for o in out] == [(7, inner_from(B_MAC)), (VNI, inner_from(A_MAC))]
    assert [d["vni"] for d in decs] == [7, VNI]
    assert sw.counters(7)["udp_rx_packets"] == sw.counters(VNI)["udp_rx_packets"] == 1


def test_deliver_any_inner_destination(impl: Impl) -> None:
    """The TAP side (the bridge) filters destinations: broadcast inner frames are delivered."""
    sw = make(impl)
    sw.fdb_add(VNI, A_MAC, A_VTEP)
    out, dec = rx(sw, A_VTEP, vxlan(VNI, inner_from(dst_mac=BROADCAST)))
    assert dec["verdict"] == "deliver" and len(out) == 1


@pytest.mark.parametrize("n", range(8))
def test_rx_truncated(impl: Impl, n: int) -> None:
    sw = make(impl)
    sw.fdb_add(VNI, A_MAC, A_VTEP)
    out, dec = rx(sw, A_VTEP, vxlan(VNI, inner_from())[:n])
    assert out == [] and dec == {"vni": 0, "verdict": "drop", "reason": "truncated",
                                 "vtep": A_VTEP, "copies": 0}
    assert nonzero(sw.counters()) == {"drop_truncated": 1}
    assert nonzero(sw.counters(VNI)) == {}


@pytest.mark.parametrize("strict", [True, False])
def test_rx_no_i_flag(impl: Impl, strict: bool) -> None:
    sw = make(impl, strict=strict)
    sw.fdb_add(VNI, A_MAC, A_VTEP)
    out, dec = rx(sw, A_VTEP, vxlan(VNI, inner_from(), flags=0x00))
    assert out == [] and (dec["vni"], dec["reason"], dec["vtep"]) == (0, "no_i_flag", A_VTEP)
    assert nonzero(sw.counters()) == {"drop_no_i_flag": 1}


@pytest.mark.parametrize("kw", [{"flags": 0x0C}, {"rsv1": 1}, {"rsv2": 0x80}])
def test_rx_reserved_strict_vs_lenient(impl: Impl, kw: dict[str, int]) -> None:
    payload = vxlan(VNI, inner_from(), **kw)
    sw = make(impl, strict=True)
    sw.fdb_add(VNI, A_MAC, A_VTEP)
    out, dec = rx(sw, A_VTEP, payload)
    assert out == [] and (dec["vni"], dec["reason"]) == (0, "reserved")
    assert nonzero(sw.counters()) == {"drop_reserved": 1}
    sw = make(impl, strict=False)
    sw.fdb_add(VNI, A_MAC, A_VTEP)
    out, dec = rx(sw, A_VTEP, payload)
    assert out == [("tap", VNI, inner_from())] and dec["verdict"] == "deliver"
    assert nonzero(sw.counters()) == {}


def test_rx_unknown_vni(impl: Impl) -> None:
    sw = make(impl)
    sw.fdb_add(VNI, A_MAC, A_VTEP)
    for vni in (43, 0, spec.VNI_MAX):
        out, dec = rx(sw, A_VTEP, vxlan(vni, inner_from()))
        assert out == [] and dec == {"vni": vni, "verdict": "drop", "reason": "unknown_vni",
                                     "vtep": A_VTEP, "copies": 0}
    assert nonzero(sw.counters()) == {"drop_unknown_vni": 3}
    assert nonzero(sw.counters(VNI)) == {}


def test_rx_removed_network_is_unknown(impl: Impl) -> None:
    sw = make(impl)
    sw.add_network(7)
    sw.fdb_add(7, A_MAC, A_VTEP)
    sw.remove_network(7)
    _, dec = rx(sw, A_VTEP, vxlan(7, inner_from()))
    assert dec["reason"] == "unknown_vni"


@pytest.mark.parametrize("mtu", [576, 1500])
def test_rx_too_big(impl: Impl, mtu: int) -> None:
    sw = make(impl, underlay_mtu=mtu)
    sw.fdb_add(VNI, A_MAC, A_VTEP)
    fits = vxlan(VNI, inner_from(n=mtu - 36))
    assert len(fits) == mtu - 28
    out, dec = rx(sw, A_VTEP, fits)
    assert dec["verdict"] == "deliver" and out[0][2] == fits[8:]
    for extra in (1, 2, 64, 100, 65000 - mtu):          # over the slot: MSG_TRUNC in C
        out, dec = rx(sw, A_VTEP, fits + bytes(extra))
        assert out == [] and dec == {"vni": 0, "verdict": "drop", "reason": "rx_too_big",
                                     "vtep": A_VTEP, "copies": 0}
    assert nonzero(sw.counters()) == {"drop_rx_too_big": 5}
    assert sw.counters(VNI)["udp_rx_packets"] == 1


def test_rx_too_big_before_header_checks(impl: Impl) -> None:
    sw = make(impl, underlay_mtu=576)
    _, dec = rx(sw, A_VTEP, bytes(600))                  # no I flag, but too big first
    assert dec["reason"] == "rx_too_big"


@pytest.mark.parametrize("n", range(14))
def test_rx_inner_short(impl: Impl, n: int) -> None:
    sw = make(impl)
    sw.fdb_add(VNI, A_MAC, A_VTEP)
    out, dec = rx(sw, A_VTEP, vxlan(VNI, inner_from()[:n]))
    assert out == [] and dec == {"vni": VNI, "verdict": "drop", "reason": "inner_short",
                                 "vtep": A_VTEP, "copies": 0}
    assert nonzero(sw.counters(VNI)) == {"drop_inner_short": 1}
    assert nonzero(sw.counters()) == {}


def test_rx_spoofed_strict_vs_lenient(impl: Impl) -> None:
    for strict in (True, False):
        sw = make(impl, strict=strict)
        sw.add_network(7)
        sw.fdb_add(VNI, A_MAC, A_VTEP)
        sw.fdb_add(7, B_MAC, B_VTEP)                     # B is a VTEP of VNI 7 only
        payloads = [("10.9.9.9", vxlan(VNI, inner_from())), (B_VTEP, vxlan(VNI, inner_from())),
                    (LOCAL, vxlan(VNI, inner_from()))]
        out, decs = sw.process_udp(payloads)
        if strict:
            assert out == []
            assert [(d["verdict"], d["reason"], d["vtep"]) for d in decs] == [
                ("drop", "spoofed", "10.9.9.9"), ("drop", "spoofed", B_VTEP),
                ("drop", "spoofed", LOCAL)]
            assert nonzero(sw.counters(VNI)) == {"drop_spoofed": 3}
        else:
            assert out == [("tap", VNI, inner_from())] * 3
            assert [d["verdict"] for d in decs] == ["deliver"] * 3
            c = sw.counters(VNI)
            assert (c["udp_rx_packets"], c["drop_spoofed"]) == (3, 0)
            # an unknown source has no per-VTEP counters to bump
            assert [(v["vtep"], v["rx_packets"]) for v in sw.vteps(VNI)] == [(A_VTEP, 0)]
            assert sw.vteps(7)[0]["rx_packets"] == 0
        assert nonzero(sw.counters()) == {}


def test_rx_spoofed_after_fdb_del(impl: Impl) -> None:
    sw = make(impl)
    sw.fdb_add(VNI, A_MAC, A_VTEP)
    assert rx(sw, A_VTEP, vxlan(VNI, inner_from()))[1]["verdict"] == "deliver"
    sw.fdb_del(VNI, A_MAC)
    assert rx(sw, A_VTEP, vxlan(VNI, inner_from()))[1]["reason"] == "spoofed"


@pytest.mark.parametrize("src_mac", ["00:00:00:00:00:00", BROADCAST, "01:00:5e:00:00:01",
                                     "33:33:00:00:00:01", "03:00:00:00:00:01"])
@pytest.mark.parametrize("strict", [True, False])
def test_rx_bad_inner_src(impl: Impl, src_mac: str, strict: bool) -> None:
    sw = make(impl, strict=strict)
    sw.fdb_add(VNI, A_MAC, A_VTEP)
    out, dec = rx(sw, A_VTEP, vxlan(VNI, inner_from(src_mac)))
    assert out == [] and dec == {"vni": VNI, "verdict": "drop", "reason": "bad_inner_src",
                                 "vtep": A_VTEP, "copies": 0}
    assert nonzero(sw.counters(VNI)) == {"drop_bad_inner_src": 1}


def test_rx_spoofed_before_bad_inner_src(impl: Impl) -> None:
    sw = make(impl)
    _, dec = rx(sw, "10.9.9.9", vxlan(VNI, inner_from(BROADCAST)))
    assert dec["reason"] == "spoofed"


def test_rx_counters_accumulate(impl: Impl) -> None:
    sw = make(impl, underlay_mtu=576)
    sw.fdb_add(VNI, A_MAC, A_VTEP)
    good = vxlan(VNI, inner_from())
    batch = [(A_VTEP, good), (A_VTEP, b"\x08"), (A_VTEP, vxlan(VNI, flags=0)),
             (A_VTEP, vxlan(VNI, rsv2=1)), (A_VTEP, vxlan(99, inner_from())),
             (A_VTEP, bytes(700)), (A_VTEP, vxlan(VNI, b"short")), ("10.0.0.9", good),
             (A_VTEP, vxlan(VNI, inner_from("00:00:00:00:00:00"))), (A_VTEP, good)]
    out, decs = sw.process_udp(batch * 3)
    assert len(out) == 6 and len(decs) == 30
    assert nonzero(sw.counters()) == {"drop_truncated": 3, "drop_no_i_flag": 3,
                                      "drop_reserved": 3, "drop_unknown_vni": 3,
                                      "drop_rx_too_big": 3}
    assert nonzero(sw.counters(VNI)) == {
        "udp_rx_packets": 6, "udp_rx_bytes": 6 * len(good), "tap_tx_packets": 6,
        "tap_tx_bytes": 6 * (len(good) - 8), "drop_inner_short": 3, "drop_spoofed": 3,
        "drop_bad_inner_src": 3}
    (v,) = sw.vteps(VNI)
    assert (v["rx_packets"], v["rx_bytes"]) == (6, 6 * len(good))


# ---- tables: FDB / VTEP refcounting, neighbours --------------------------------------------------


def test_fdb_listing_sorted(impl: Impl) -> None:
    sw = make(impl)
    sw.fdb_add(VNI, C_MAC, C_VTEP, 1000)
    sw.fdb_add(VNI, A_MAC, B_VTEP)
    sw.fdb_add(VNI, B_MAC, A_VTEP)
    assert sw.fdb(VNI) == [(A_MAC, B_VTEP, 4789), (B_MAC, A_VTEP, 4789), (C_MAC, C_VTEP, 1000)]


def test_vtep_refcount(impl: Impl) -> None:
    sw = make(impl)

    def refs() -> list[tuple[str, int, int]]:
        return [(v["vtep"], v["port"], v["fdb_entries"]) for v in sw.vteps(VNI)]

    sw.fdb_add(VNI, A_MAC, A_VTEP)
    sw.fdb_add(VNI, B_MAC, A_VTEP)
    assert refs() == [(A_VTEP, 4789, 2)]
    sw.fdb_add(VNI, A_MAC, A_VTEP)                      # same entry again: no extra ref
    assert refs() == [(A_VTEP, 4789, 2)]
    sw.fdb_add(VNI, B_MAC, B_VTEP)                      # move B: A 1, B 1
    assert refs() == [(A_VTEP, 4789, 1), (B_VTEP, 4789, 1)]
    sw.fdb_add(VNI, C_MAC, B_VTEP, 8472)                # port is per VTEP: updates B's
    assert refs() == [(A_VTEP, 4789, 1), (B_VTEP, 8472, 2)]
    assert sw.fdb(VNI) == [(A_MAC, A_VTEP, 4789), (B_MAC, B_VTEP, 8472), (C_MAC, B_VTEP, 8472)]
    sw.fdb_add(VNI, A_MAC, B_VTEP, 8472)                # move the last entry off A: A is gone
    assert refs() == [(B_VTEP, 8472, 3)]
    assert sw.fdb_del(VNI, B_MAC) is True
    assert sw.fdb_del(VNI, B_MAC) is False
    assert sw.fdb_del(VNI, "02:00:00:00:ee:ee") is False
    assert refs() == [(B_VTEP, 8472, 2)]
    assert sw.fdb_del(VNI, A_MAC) and sw.fdb_del(VNI, C_MAC)
    assert refs() == [] and sw.fdb(VNI) == []


def test_table_sizes_follow_the_tables(impl: Impl) -> None:
    sw = make(impl)
    assert sw.table_sizes(VNI) == {"fdb": 0, "neigh": 0, "vteps": 0}
    sw.fdb_add(VNI, A_MAC, A_VTEP)
    sw.fdb_add(VNI, B_MAC, A_VTEP)
    sw.fdb_add(VNI, C_MAC, B_VTEP)
    sw.neigh_add(VNI, "10.244.2.2", A_MAC)
    assert sw.table_sizes(VNI) == {"fdb": 3, "neigh": 1, "vteps": 2}
    sw.fdb_del(VNI, C_MAC)
    sw.neigh_del(VNI, "10.244.2.2")
    assert sw.table_sizes(VNI) == {"fdb": len(sw.fdb(VNI)), "neigh": len(sw.neigh(VNI)),
                                   "vteps": len(sw.vteps(VNI))} == {"fdb": 2, "neigh": 0,
                                                                    "vteps": 1}
    with pytest.raises(KeyError, match="no network with VNI 7"):
        sw.table_sizes(7)


def test_vtep_counters_reset_when_vtep_goes_away(impl: Impl) -> None:
    sw = make(impl)
    sw.fdb_add(VNI, A_MAC, A_VTEP)
    sw.process_tap(VNI, [to(A_MAC)] * 3)
    sw.process_udp([(A_VTEP, vxlan(VNI, inner_from()))])
    assert (sw.vteps(VNI)[0]["tx_packets"], sw.vteps(VNI)[0]["rx_packets"]) == (3, 1)
    sw.fdb_add(VNI, B_MAC, A_VTEP)                      # more refs keep the counters
    sw.fdb_del(VNI, A_MAC)
    assert sw.vteps(VNI)[0]["tx_packets"] == 3
    sw.fdb_del(VNI, B_MAC)
    sw.fdb_add(VNI, A_MAC, A_VTEP)
    assert sw.vteps(VNI) == [{"vtep": A_VTEP, "port": 4789, "fdb_entries": 1, "tx_packets": 0,
                              "tx_bytes": 0, "rx_packets": 0, "rx_bytes": 0}]
    assert sw.counters(VNI)["udp_tx_packets"] == 3      # network counters are kept


def test_vteps_are_per_network(impl: Impl) -> None:
    sw = make(impl, flood=True)
    sw.add_network(7)
    sw.fdb_add(VNI, A_MAC, A_VTEP)
    sw.fdb_add(7, A_MAC, B_VTEP)                        # same MAC, other network
    assert sw.fdb(VNI) == [(A_MAC, A_VTEP, 4789)] and sw.fdb(7) == [(A_MAC, B_VTEP, 4789)]
    out, _ = sw.process_tap(7, [to(BROADCAST)])
    assert [o[1] for o in out] == [B_VTEP]
    assert VXLAN(out[0][3][28:]).vni == 7


def test_many_vteps_and_entries(impl: Impl) -> None:
    """Grow the VTEP array and the tables well past their initial sizes, then shrink."""
    sw = make(impl)
    for i in range(300):
        sw.fdb_add(VNI, f"02:00:00:00:{i // 256:02x}:{i % 256:02x}",
                   f"10.2.{i // 200}.{i % 200 + 1}")
    assert len(sw.fdb(VNI)) == 300 and len(sw.vteps(VNI)) == 300
    for i in range(0, 300, 2):
        assert sw.fdb_del(VNI, f"02:00:00:00:{i // 256:02x}:{i % 256:02x}")
    assert len(sw.vteps(VNI)) == 150
    out, decs = sw.process_tap(VNI, [to(f"02:00:00:00:{i // 256:02x}:{i % 256:02x}")
                                     for i in range(300)])
    assert [d["verdict"] for d in decs] == ["encap" if i % 2 else "drop" for i in range(300)]
    assert [o[1] for o in out] == [f"10.2.{i // 200}.{i % 200 + 1}" for i in range(1, 300, 2)]


def test_neigh_table(impl: Impl) -> None:
    sw = make(impl)
    sw.neigh_add(VNI, "10.244.2.2", A_MAC)
    sw.neigh_add(VNI, "10.244.1.10", B_MAC)
    sw.neigh_add(VNI, "10.244.10.1", C_MAC)
    sw.neigh_add(VNI, "10.244.2.2", C_MAC)               # replace
    assert sw.neigh(VNI) == [("10.244.1.10", B_MAC), ("10.244.2.2", C_MAC),
                             ("10.244.10.1", C_MAC)]
    assert sw.neigh_del(VNI, "10.244.1.10") is True and sw.neigh_del(VNI, "10.244.1.10") is False
    assert sw.neigh(VNI) == [("10.244.2.2", C_MAC), ("10.244.10.1", C_MAC)]


def test_remove_network_forgets_tables(impl: Impl) -> None:
    sw = make(impl)
    sw.fdb_add(VNI, A_MAC, A_VTEP)
    sw.neigh_add(VNI, "10.244.2.2", A_MAC)
    sw.remove_network(VNI)
    sw.add_network(VNI)
    assert (sw.fdb(VNI), sw.neigh(VNI), sw.vteps(VNI)) == ([], [], [])
    _, (dec,) = sw.process_tap(VNI, [to(A_MAC)])
    assert dec["reason"] == "unknown_unicast"


def test_remove_network_resets_counters(impl: Impl) -> None:
    sw = make(impl)
    sw.fdb_add(VNI, A_MAC, A_VTEP)
    sw.process_tap(VNI, [to(A_MAC)])
    sw.remove_network(VNI)
    sw.add_network(VNI)
    assert nonzero(sw.counters(VNI)) == {}


def test_max_networks(impl: Impl) -> None:
    sw = impl.Switch(LOCAL)
    for v in range(1, 257):
        sw.add_network(v)
    with pytest.raises(ValueError) as e:
        sw.add_network(1000)
    assert str(e.value) == "at most 256 networks per switch"
    sw.remove_network(7)
    sw.add_network(7)                                   # the same VNI back: fine in both
    assert len(sw.networks()) == 256


def test_max_networks_counts_active_only(impl: Impl) -> None:
    sw = impl.Switch(LOCAL)
    for v in range(1, 257):
        sw.add_network(v)
    sw.remove_network(7)
    sw.add_network(1000)
    assert 1000 in sw.networks() and 7 not in sw.networks()


# ---- batching and decisions ---------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 3, 64])
def test_batches_do_not_change_results(impl: Impl, batch: int) -> None:
    sw = make(impl, batch=batch, flood=True)
    sw.fdb_add(VNI, A_MAC, A_VTEP)
    sw.fdb_add(VNI, B_MAC, B_VTEP)
    sw.neigh_add(VNI, "10.244.2.2", A_MAC)
    frames = [to(A_MAC), arp_request(POD_MAC, "10.244.1.2", "10.244.2.2"), to(BROADCAST),
              b"\x02", to(C_MAC), to(B_MAC), arp_request(POD_MAC, "10.244.1.2", "10.244.2.2")] * 3
    out, decs = sw.process_tap(VNI, frames)
    assert [d["verdict"] for d in decs] == ["encap", "arp_reply", "flood", "drop", "flood",
                                            "encap", "arp_reply"] * 3
    groups = tx_groups(out, decs, batch)
    assert [len(g) for g in groups] == [1, 1, 2, 0, 2, 1, 1] * 3
    assert all(set(d) == DEC_KEYS for d in decs)
    c = sw.counters(VNI)
    assert (c["tap_rx_packets"], c["udp_tx_packets"], c["arp_replied"], c["flooded"],
            c["drop_tx_short"]) == (21, 18, 6, 6, 3)


def test_empty_inputs(impl: Impl) -> None:
    sw = make(impl)
    assert sw.process_tap(VNI, []) == ([], [])
    assert sw.process_udp([]) == ([], [])
    assert nonzero(sw.counters(VNI)) == {}


def test_accepts_bytearray_and_memoryview(impl: Impl) -> None:
    sw = make(impl)
    sw.fdb_add(VNI, A_MAC, A_VTEP)
    out, _ = sw.process_tap(VNI, [bytearray(to(A_MAC)), memoryview(to(A_MAC))])
    assert [o[3][36:] for o in out] == [to(A_MAC)] * 2
    out, _ = sw.process_udp([(A_VTEP, bytearray(vxlan(VNI, inner_from())))])
    assert out == [("tap", VNI, inner_from())]


def test_state_snapshot(impl: Impl) -> None:
    sw = make(impl)
    sw.fdb_add(VNI, A_MAC, A_VTEP)
    s = state(sw)
    assert s["networks"] == [VNI] and s[str(VNI)]["fdb"] == [(A_MAC, A_VTEP, 4789)]


def test_non_ip_unicast_is_forwarded(impl: Impl) -> None:
    sw = make(impl)
    sw.fdb_add(VNI, A_MAC, A_VTEP)
    frames = [eth(A_MAC, POD_MAC, 0x86DD, bytes(40)), eth(A_MAC, POD_MAC, 0x8100, bytes(50)),
              eth(A_MAC, POD_MAC, 0x0806, bytes(28))]       # an ARP that is not a request
    out, decs = sw.process_tap(VNI, frames)
    assert [d["verdict"] for d in decs] == ["encap"] * 3
    assert [o[3][36:] for o in out] == frames


def test_flood_copies_past_65535(impl: Impl) -> None:
    sw = make(impl, flood=True)
    n = 65537
    for i in range(n):
        sw.fdb_add(VNI, f"02:00:00:{i >> 16:02x}:{i >> 8 & 255:02x}:{i & 255:02x}",
                   f"10.{i >> 16}.{i >> 8 & 255}.{i & 255}")
    out, (dec,) = sw.process_tap(VNI, [to(BROADCAST)])
    assert len(out) == n and sw.counters(VNI)["udp_tx_packets"] == n
    assert (dec["verdict"], dec["copies"]) == ("flood", n)


# ---- tenant isolation: two networks with the same addresses -------------------------------------


def test_two_networks_with_identical_tables_never_mix(impl: Impl) -> None:
    """VNIs 42 and 43 hold the same MAC/IP entries (pointing at different VTEPs): a frame is
    classified against its own network's tables only, sent with its own VNI, and a datagram
    is delivered only to the network of the VNI in its header."""
    sw = impl.Switch()
    for vni, vtep in ((42, "192.168.100.2"), (43, "192.168.100.3")):
        sw.add_network(vni)
        sw.fdb_add(vni, A_MAC, vtep)
        sw.neigh_add(vni, "10.244.2.2", A_MAC)
    for vni, vtep in ((42, "192.168.100.2"), (43, "192.168.100.3")):
        out, (dec,) = sw.process_tap(vni, [to(A_MAC)])
        ((kind, dst, _port, dgram),) = out
        assert (kind, dst, dec["vni"], dec["vtep"]) == ("udp", vtep, vni, vtep)
        assert int.from_bytes(dgram[32:35], "big") == vni          # VXLAN VNI field
    sw.remove_network(43)                                          # 42 keeps its tables
    assert sw.fdb(42) == [(A_MAC, "192.168.100.2", 4789)]
    out, (dec,) = sw.process_udp([("192.168.100.3", vxlan(43, inner_from()))])
    assert out == [] and dec["reason"] == "unknown_vni"
    out, (dec,) = sw.process_udp([("192.168.100.3", vxlan(42, inner_from()))])
    assert out == [] and dec["reason"] == "spoofed"                # 43's VTEP is not 42's


# ---- the forwarding loop (Cython only: the reference has no loops) -----------------------------


@pytest.mark.parametrize("offload", [False, True])
def test_failed_arp_reply_write_is_counted(offload: bool) -> None:
    """The loop writes ARP replies back into the TAP; a failed write was not counted. Here a
    SOCK_SEQPACKET socketpair stands for the TAP (one frame per read/write, like a TAP): after
    the far end stops reading, the loop's write fails (EPIPE) and drop_reply_write_error moves.
    """
    import socket
    import threading

    from fastpath import switch
    tap, far = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    pool = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    try:
        tap.setblocking(False)
        far.settimeout(5)
        sw = switch.Switch("127.0.0.1", offload=offload)
        sw.add_network(VNI, tap.fileno())
        if offload:
            for s in pool:
                s.bind(("127.0.0.1", 0))
            sw.set_udp_pool([s.fileno() for s in pool], [s.getsockname()[1] for s in pool])
        sw.neigh_add(VNI, "10.244.2.2", A_MAC)
        hdr = bytes(10) if offload else b""
        request = hdr + arp_request(POD_MAC, "10.244.1.2", "10.244.2.2")
        loop = threading.Thread(target=sw.run_tx, args=(VNI, udp.fileno()), daemon=True)
        loop.start()
        far.send(request)
        assert len(far.recv(2048)) == len(hdr) + 42          # a reply: writes work
        far.shutdown(socket.SHUT_RD)
        far.send(request)
        for _ in range(500):
            c = sw.counters(VNI)
            if c["arp_replied"] == 2 and c["drop_reply_write_error"]:
                break
            threading.Event().wait(0.01)
        sw.stop()
        loop.join(5)
        c = nonzero(sw.counters(VNI))
        assert c["arp_replied"] == 2 and c["drop_reply_write_error"] == 1, c
        assert not loop.is_alive()
    finally:
        for s in (tap, far, udp, *pool):
            s.close()
