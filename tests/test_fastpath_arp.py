"""ARP suppression (RFC 826): replies checked by scapy, the requests that must not be answered,
and what the switch does on a miss (drop_arp_miss, or flood).

``impl.arp_reduce`` is arp_ref.arp_reduce for the reference and, for Cython, the same verdict
taken through a switch (the C responder is only reachable from the TX path).
"""
from __future__ import annotations

from typing import Any

import pytest
from scapy.layers.l2 import ARP, Ether

from fastpath.arp_ref import ARP_ANSWERED, ARP_MISS, ARP_NOT_REQUEST
from tests.fastpath_impls import (
    BROADCAST,
    Impl,
    arp,
    arp_request,
    eth,
    impl,
    ip_frame,
    ip_int,
    mac_bytes,
)

__all__ = ["impl"]

ME_MAC, ME_IP = "02:00:00:00:01:02", "10.244.1.2"          # the pod asking
PEER_MAC, PEER_IP = "02:00:00:00:02:02", "10.244.2.2"      # the remote pod in the table
NEIGH = {ip_int(PEER_IP): int.from_bytes(mac_bytes(PEER_MAC), "big")}


def check_reply(reply: bytes | None, *, requester_mac: str = ME_MAC, requester_ip: str = ME_IP,
                target_mac: str = PEER_MAC, target_ip: str = PEER_IP) -> None:
    assert reply is not None and len(reply) == 42
    e = Ether(reply)
    assert (e.dst, e.src, e.type) == (requester_mac, target_mac, 0x0806)
    a = e[ARP]
    assert (a.hwtype, a.ptype, a.hwlen, a.plen, a.op) == (1, 0x0800, 6, 4, 2)
    assert (a.hwsrc, a.psrc) == (target_mac, target_ip)
    assert (a.hwdst, a.pdst) == (requester_mac, requester_ip)


def test_reply_to_scapy_request(impl: Impl) -> None:
    req = bytes(Ether(dst=BROADCAST, src=ME_MAC)
                / ARP(op=1, hwsrc=ME_MAC, psrc=ME_IP, hwdst="00:00:00:00:00:00", pdst=PEER_IP))
    verdict, reply = impl.arp_reduce(req, NEIGH)
    assert verdict == ARP_ANSWERED
    check_reply(reply)


def test_reply_to_padded_request(impl: Impl) -> None:
    """A 60-byte request (padded to the Ethernet minimum) gets a 42-byte reply."""
    req = arp_request(ME_MAC, ME_IP, PEER_IP) + b"\xaa" * 18
    verdict, reply = impl.arp_reduce(req, NEIGH)
    assert verdict == ARP_ANSWERED
    check_reply(reply)


def test_reply_to_unicast_request(impl: Impl) -> None:
    """A unicast request (cache refresh, RFC 1122) is answered as well; tha is ignored."""
    req = eth(PEER_MAC, ME_MAC, 0x0806, arp(1, ME_MAC, ME_IP, PEER_MAC, PEER_IP))
    verdict, reply = impl.arp_reduce(req, NEIGH)
    assert verdict == ARP_ANSWERED
    check_reply(reply)


def test_reply_uses_arp_sender_not_ethernet_source(impl: Impl) -> None:
    """Proxy-style request: the Ethernet source differs from sha; the reply goes to sha."""
    other = "02:00:00:00:09:09"
    req = eth(BROADCAST, other, 0x0806, arp(1, ME_MAC, ME_IP, "00:00:00:00:00:00", PEER_IP))
    verdict, reply = impl.arp_reduce(req, NEIGH)
    assert verdict == ARP_ANSWERED
    check_reply(reply)


def test_reply_from_many_entries(impl: Impl) -> None:
    neigh = {ip_int(f"10.244.{i}.{j}"): 0x020000000000 | (i << 8) | j
             for i in range(1, 5) for j in range(1, 60)}
    for i, j in ((1, 1), (4, 59), (2, 30)):
        verdict, reply = impl.arp_reduce(arp_request(ME_MAC, ME_IP, f"10.244.{i}.{j}"), neigh)
        assert verdict == ARP_ANSWERED
        check_reply(reply, target_mac=f"02:00:00:00:{i:02x}:{j:02x}", target_ip=f"10.244.{i}.{j}")


@pytest.mark.parametrize("frame", [
    pytest.param(arp_request(ME_MAC, PEER_IP, PEER_IP), id="gratuitous-request"),
    pytest.param(arp_request(ME_MAC, "10.9.9.9", "10.9.9.9"), id="gratuitous-unknown-ip"),
    pytest.param(arp_request(PEER_MAC, "10.244.2.99", PEER_IP), id="asks-about-itself"),
    pytest.param(eth(BROADCAST, PEER_MAC, 0x0806,
                     arp(2, PEER_MAC, PEER_IP, BROADCAST, PEER_IP)), id="gratuitous-reply"),
    pytest.param(eth(ME_MAC, PEER_MAC, 0x0806,
                     arp(2, PEER_MAC, PEER_IP, ME_MAC, ME_IP)), id="reply"),
    pytest.param(arp_request(ME_MAC, ME_IP, PEER_IP, ptype=0x86DD), id="ptype-ipv6"),
    pytest.param(arp_request(ME_MAC, ME_IP, PEER_IP, htype=6), id="htype-ieee802"),
    pytest.param(arp_request(ME_MAC, ME_IP, PEER_IP, hlen=8), id="hlen-8"),
    pytest.param(arp_request(ME_MAC, ME_IP, PEER_IP, plen=16), id="plen-16"),
    pytest.param(eth(BROADCAST, ME_MAC, 0x0806, arp(3, ME_MAC, ME_IP, BROADCAST, PEER_IP)),
                 id="rarp-op3"),
    pytest.param(eth(BROADCAST, ME_MAC, 0x8035, arp(1, ME_MAC, ME_IP, BROADCAST, PEER_IP)),
                 id="ethertype-rarp"),
    pytest.param(arp_request(ME_MAC, ME_IP, PEER_IP)[:41], id="truncated-41"),
    pytest.param(arp_request(ME_MAC, ME_IP, PEER_IP)[:14], id="truncated-14"),
    pytest.param(ip_frame(BROADCAST, ME_MAC), id="ipv4-broadcast"),
])
def test_not_answered(impl: Impl, frame: bytes) -> None:
    assert impl.arp_reduce(frame, NEIGH) == (ARP_NOT_REQUEST, None)


def test_miss(impl: Impl) -> None:
    assert impl.arp_reduce(arp_request(ME_MAC, ME_IP, "10.244.3.3"), NEIGH) == (ARP_MISS, None)
    assert impl.arp_reduce(arp_request(ME_MAC, ME_IP, PEER_IP), {}) == (ARP_MISS, None)


@pytest.mark.parametrize("n", range(42))
def test_truncated_request_at_every_length(impl: Impl, n: int) -> None:
    assert impl.arp_reduce(arp_request(ME_MAC, ME_IP, PEER_IP)[:n], NEIGH) == (ARP_NOT_REQUEST,
                                                                              None)


# ---- through the switch -------------------------------------------------------------------------


def _switch(impl: Impl, **kw: Any) -> Any:
    sw = impl.Switch("192.168.100.1", **kw)
    sw.add_network(42)
    sw.neigh_add(42, PEER_IP, PEER_MAC)
    return sw


def test_switch_answers_into_the_tap(impl: Impl) -> None:
    sw = _switch(impl)
    out, (dec,) = sw.process_tap(42, [arp_request(ME_MAC, ME_IP, PEER_IP)])
    assert dec == {"vni": 42, "verdict": "arp_reply", "reason": None, "vtep": None, "copies": 0}
    ((kind, vni, reply),) = out
    assert (kind, vni) == ("tap", 42)
    check_reply(reply)
    c = sw.counters(42)
    assert (c["arp_replied"], c["tap_rx_packets"], c["udp_tx_packets"]) == (1, 1, 0)
    assert c["tap_rx_bytes"] == 42


def test_switch_miss_is_counted_drop(impl: Impl) -> None:
    sw = _switch(impl, flood=False)
    sw.fdb_add(42, PEER_MAC, "192.168.100.2")
    out, (dec,) = sw.process_tap(42, [arp_request(ME_MAC, ME_IP, "10.244.3.3")])
    assert out == []
    assert dec == {"vni": 42, "verdict": "drop", "reason": "arp_miss", "vtep": None, "copies": 0}
    c = sw.counters(42)
    assert (c["drop_arp_miss"], c["drop_bum"], c["flooded"], c["arp_replied"]) == (1, 0, 0, 0)


def test_switch_miss_is_flooded_when_flood_on(impl: Impl) -> None:
    sw = _switch(impl, flood=True)
    sw.fdb_add(42, PEER_MAC, "192.168.100.2")
    sw.fdb_add(42, "02:00:00:00:03:02", "192.168.100.3", 8472)
    req = arp_request(ME_MAC, ME_IP, "10.244.3.3")
    out, (dec,) = sw.process_tap(42, [req])
    assert dec == {"vni": 42, "verdict": "flood", "reason": None, "vtep": None, "copies": 2}
    assert sorted((o[0], o[1], o[2], o[3][36:]) for o in out) == [
        ("udp", "192.168.100.2", 4789, req), ("udp", "192.168.100.3", 8472, req)]
    c = sw.counters(42)
    assert (c["flooded"], c["drop_arp_miss"], c["udp_tx_packets"]) == (1, 0, 2)


def test_switch_miss_without_vteps_is_dropped_even_with_flood(impl: Impl) -> None:
    sw = _switch(impl, flood=True)
    out, (dec,) = sw.process_tap(42, [arp_request(ME_MAC, ME_IP, "10.244.3.3")])
    assert (out, dec["verdict"], dec["reason"]) == ([], "drop", "arp_miss")
    assert sw.counters(42)["drop_arp_miss"] == 1


def test_switch_not_answered_goes_the_broadcast_way(impl: Impl) -> None:
    sw = _switch(impl, flood=False)
    out, decs = sw.process_tap(42, [arp_request(ME_MAC, PEER_IP, PEER_IP),          # gratuitous
                                    arp_request(PEER_MAC, "10.244.2.99", PEER_IP)])  # itself
    assert out == [] and [d["reason"] for d in decs] == ["bum", "bum"]
    assert sw.counters(42)["drop_bum"] == 2


def test_switch_neigh_del_and_replace(impl: Impl) -> None:
    sw = _switch(impl)
    sw.neigh_add(42, PEER_IP, "02:00:00:00:0a:0a")          # replace
    out, _ = sw.process_tap(42, [arp_request(ME_MAC, ME_IP, PEER_IP)])
    check_reply(out[0][2], target_mac="02:00:00:00:0a:0a")
    assert sw.neigh_del(42, PEER_IP) is True
    assert sw.neigh_del(42, PEER_IP) is False
    _, (dec,) = sw.process_tap(42, [arp_request(ME_MAC, ME_IP, PEER_IP)])
    assert dec["reason"] == "arp_miss"


def test_switch_arp_replies_follow_the_batch_sends(impl: Impl) -> None:
    """Replies are written back after the batch's sendmmsg(), per batch."""
    sw = _switch(impl, batch=2)
    sw.fdb_add(42, PEER_MAC, "192.168.100.2")
    req = arp_request(ME_MAC, ME_IP, PEER_IP)
    data = ip_frame(PEER_MAC, ME_MAC)
    out, decs = sw.process_tap(42, [req, data, data, req, req])
    assert [d["verdict"] for d in decs] == ["arp_reply", "encap", "encap", "arp_reply",
                                            "arp_reply"]
    assert [o[0] for o in out] == ["udp", "tap", "udp", "tap", "tap"]
