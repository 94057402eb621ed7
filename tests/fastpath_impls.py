"""The two implementations of the fast path, for one test suite run against both.

``impl`` is a pytest fixture parametrized over ``REF`` (the pure-Python ``*_ref`` modules) and
``CYTHON`` (the compiled modules). Test modules import it (``from tests.fastpath_impls import
impl``) and use only the API the two share. Also here: frame builders (plain ``struct``, fast
enough for hypothesis; tests that check bytes against scapy build their own), and
``tx_groups`` which splits ``process_tap`` outputs per frame so flood copies can be compared as
multisets (the Cython switch replicates in VTEP-slot order, the reference in insertion order).
"""
from __future__ import annotations

import importlib
import ipaddress
import os
import struct
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest

from fastpath import arp_ref, headers_ref, nd_ref, switch_ref, tables_ref

# the compiled modules (built in place by setup.py build_ext --inplace; no stubs for mypy)
headers = importlib.import_module("fastpath.headers")
tables = importlib.import_module("fastpath.tables")
switch = importlib.import_module("fastpath.switch")

FUZZ_SCALE = max(1, int(os.environ.get("VXTAP_FUZZ_SCALE", "1")))


def examples(n: int) -> int:
    """Hypothesis example budget: n by default (suite < 60 s); VXTAP_FUZZ_SCALE=50 to hunt."""
    return n * FUZZ_SCALE


# ---- the implementations ------------------------------------------------------------------------


@dataclass(frozen=True)
class Impl:
    name: str
    headers: ModuleType
    tables: ModuleType
    switch: ModuleType

    @property
    def is_ref(self) -> bool:
        return self.name == "ref"

    def __getattr__(self, module: str) -> ModuleType:
        """Any other fast-path module by name: impl.csum is fastpath.csum_ref for the
        reference, fastpath.csum for Cython (vnet, gso, gro, ... the same way)."""
        if module.startswith("_"):
            raise AttributeError(module)
        suffix = "_ref" if self.name == "ref" else ""
        try:
            return importlib.import_module(f"fastpath.{module}{suffix}")
        except ModuleNotFoundError as e:
            raise AttributeError(f"no fast-path module {module!r} ({e})") from None

    def Switch(self, local_ip: str = "192.168.100.1", **kw: Any) -> Any:
        return self.switch.Switch(local_ip, **kw)

    def arp_reduce(self, frame: bytes, neigh: Mapping[int, int]) -> tuple[int, bytes | None]:
        """arp_ref.arp_reduce for the reference; for Cython the same verdict through a switch.

        The C ARP responder is an inline function only reachable from the switch's TX path:
        a switch with flood off and no FDB maps ANSWERED -> verdict "arp_reply" (the reply is
        the "tap" output), MISS -> drop "arp_miss", anything else (not a request) -> another
        drop (bum, unknown_unicast, tx_short).
        """
        if self.is_ref:
            return arp_ref.arp_reduce(frame, neigh)
        reason, reply = self._through_switch(
            frame, [(int_to_ip(ip), mac) for ip, mac in neigh.items()], "arp_reply")
        if reply is not None:
            return arp_ref.ARP_ANSWERED, reply
        return (arp_ref.ARP_MISS if reason == "arp_miss" else arp_ref.ARP_NOT_REQUEST), None

    def nd_reduce(self, frame: bytes, neigh6: Mapping[int, int]) -> tuple[int, bytes | None]:
        """nd_ref.nd_reduce for the reference; for Cython the same verdict through a switch
        (like arp_reduce): "nd_reply" -> ANSWERED, drop nd_miss -> MISS, drop nd_<reason> ->
        that verdict, anything else -> NOT_NS."""
        if self.is_ref:
            return nd_ref.nd_reduce(frame, neigh6)
        reason, reply = self._through_switch(
            frame, [(str(ipaddress.IPv6Address(ip)), mac) for ip, mac in neigh6.items()],
            "nd_reply")
        if reply is not None:
            return nd_ref.ND_ANSWERED, reply
        by_reason = {r: v for v, r in nd_ref.DROP_REASONS.items()}
        by_reason["nd_miss"] = nd_ref.ND_MISS
        return by_reason.get(str(reason), nd_ref.ND_NOT_NS), None

    def _through_switch(self, frame: bytes, neigh: list[tuple[str, int]],
                        reply_verdict: str) -> tuple[str | None, bytes | None]:
        """One frame through a Cython switch with flood off and no FDB: (None, reply) if it
        was answered with `reply_verdict`, else (drop reason, None)."""
        sw = self.switch.Switch("192.0.2.1", underlay_mtu=65535)
        sw.add_network(1)
        for ip, mac in neigh:
            sw.neigh_add(1, ip, int_to_mac(mac))
        out, (dec,) = sw.process_tap(1, [frame])
        if dec["verdict"] == reply_verdict:
            ((kind, vni, reply),) = out
            assert (kind, vni) == ("tap", 1)
            return None, reply
        assert out == [] and dec["verdict"] == "drop", dec
        return dec["reason"], None


REF = Impl("ref", headers_ref, tables_ref, switch_ref)
CYTHON = Impl("cython", headers, tables, switch)
IMPLS = (REF, CYTHON)


@pytest.fixture(params=IMPLS, ids=[i.name for i in IMPLS])
def impl(request: pytest.FixtureRequest) -> Impl:
    """The module set under test: reference or Cython."""
    return request.param  # type: ignore[no-any-return]


def known_bug(request: pytest.FixtureRequest, impl: Impl, bug: str) -> None:
    """Mark the Cython run of this test as a known bug (tests/FASTPATH_BUGS.md, id ``bug``).

    strict=True: once the bug is fixed the test XPASSes, fails, and the marker must go.
    """
    if not impl.is_ref:
        reason = f"{bug}: see tests/FASTPATH_BUGS.md"
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


# ---- addresses ----------------------------------------------------------------------------------


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def int_to_mac(v: int) -> str:
    return ":".join(f"{(v >> s) & 0xff:02x}" for s in range(40, -8, -8))


def ip_bytes(ip: str) -> bytes:
    return bytes(int(x) for x in ip.split("."))


def ip_int(ip: str) -> int:
    return int.from_bytes(ip_bytes(ip), "big")


def int_to_ip(v: int) -> str:
    return ".".join(str((v >> s) & 0xff) for s in (24, 16, 8, 0))


BROADCAST = "ff:ff:ff:ff:ff:ff"

# ---- frame builders (struct; no scapy, so they are cheap inside hypothesis) -------------------


def ipv4_checksum(hdr: bytes) -> int:
    s = sum(struct.unpack(f"!{len(hdr) // 2}H", hdr))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def eth(dst: str, src: str, ethertype: int, payload: bytes = b"") -> bytes:
    return mac_bytes(dst) + mac_bytes(src) + struct.pack("!H", ethertype) + payload


def ipv4(src: str, dst: str, proto: int, payload: bytes, *, ident: int = 1, ttl: int = 64,
         frag: int = 0) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, frag, ttl, proto, 0,
                      ip_bytes(src), ip_bytes(dst))
    return hdr[:10] + struct.pack("!H", ipv4_checksum(hdr)) + hdr[12:] + payload


def l4(sport: int, dport: int, payload: bytes = b"") -> bytes:
    """The first bytes of a TCP/UDP header (ports first in both), then the payload."""
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def ip_frame(dst_mac: str, src_mac: str, src_ip: str = "10.244.1.2", dst_ip: str = "10.244.2.2",
             proto: int = 17, sport: int = 40000, dport: int = 80, payload: bytes = b"hello",
             **ipkw: Any) -> bytes:
    return eth(dst_mac, src_mac, 0x0800, ipv4(src_ip, dst_ip, proto, l4(sport, dport, payload),
                                              **ipkw))


def arp(op: int, sha: str, spa: str, tha: str, tpa: str, *, htype: int = 1, ptype: int = 0x0800,
        hlen: int = 6, plen: int = 4) -> bytes:
    return struct.pack("!HHBBH6s4s6s4s", htype, ptype, hlen, plen, op, mac_bytes(sha),
                       ip_bytes(spa), mac_bytes(tha), ip_bytes(tpa))


def arp_request(sha: str, spa: str, tpa: str, *, dst: str = BROADCAST, **kw: Any) -> bytes:
    return eth(dst, sha, 0x0806, arp(1, sha, spa, "00:00:00:00:00:00", tpa, **kw))


def vxlan(vni: int, inner: bytes = b"", *, flags: int = 0x08, rsv1: int = 0,
          rsv2: int = 0) -> bytes:
    """RFC 7348 header: flags, 24 reserved bits (rsv1), VNI, 8 reserved bits (rsv2)."""
    return struct.pack("!B3sI", flags, rsv1.to_bytes(3, "big"), (vni << 8) | rsv2) + inner


# ---- comparing outputs --------------------------------------------------------------------------


def tx_groups(outputs: Sequence[tuple[Any, ...]], decisions: Sequence[dict[str, Any]],
              batch: int) -> list[list[tuple[Any, ...]]]:
    """Split process_tap outputs into one list per frame, flood copies sorted.

    Emission order (both implementations): per batch, the datagrams of each frame in frame order
    ("encap": 1, "flood": `copies`), then the ARP replies of the batch in frame order.
    Raises AssertionError if the outputs do not have that shape.
    """
    groups: list[list[tuple[Any, ...]]] = [[] for _ in decisions]
    pos = 0
    for start in range(0, len(decisions), batch):
        idx = range(start, min(start + batch, len(decisions)))
        for i in idx:
            if decisions[i]["verdict"] in ("encap", "flood"):
                groups[i] = sorted(outputs[pos:pos + decisions[i]["copies"]])
                assert all(o[0] == "udp" for o in groups[i]), groups[i]
                pos += decisions[i]["copies"]
        for i in idx:
            if decisions[i]["verdict"] in ("arp_reply", "nd_reply"):
                groups[i] = [outputs[pos]]
                assert outputs[pos][0] == "tap", outputs[pos]
                pos += 1
    assert pos == len(outputs), f"{len(outputs) - pos} outputs not accounted for by decisions"
    return groups


def multiset(items: Iterable[Any]) -> Counter[Any]:
    return Counter(items)


def state(sw: Any) -> dict[str, Any]:
    """Everything a switch shows: networks, tables, VTEPs, counters (global and per network)."""
    nets = sw.networks()
    return {"networks": nets, "global": sw.counters(),
            **{f"{v}": {"fdb": sw.fdb(v), "neigh": sw.neigh(v), "vteps": sw.vteps(v),
                        "counters": sw.counters(v)} for v in nets}}
