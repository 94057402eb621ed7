"""Pure-Python reference for arp.pxd: ARP suppression (RFC 826)."""
from __future__ import annotations

import struct
from typing import Mapping

from fastpath import spec

ARP_NOT_REQUEST = 0
ARP_ANSWERED = 1
ARP_MISS = 2

_ARP = struct.Struct("!HHBBH6s4s6s4s")


def arp_reduce(frame: bytes, neigh: Mapping[int, int]) -> tuple[int, bytes | None]:
    """Return (verdict, reply). neigh maps an IPv4 address (int) to a MAC (48-bit int)."""
    if len(frame) < spec.ETH_HLEN + spec.ARP_LEN:
        return ARP_NOT_REQUEST, None
    if struct.unpack_from("!H", frame, 12)[0] != spec.ETH_P_ARP:
        return ARP_NOT_REQUEST, None
    htype, ptype, hlen, plen, op, sha, spa, _tha, tpa = _ARP.unpack_from(frame, spec.ETH_HLEN)
    if (htype, ptype, hlen, plen, op) != (spec.ARP_HTYPE_ETHER, spec.ETH_P_IP, 6, 4,
                                          spec.ARP_OP_REQUEST):
        return ARP_NOT_REQUEST, None
    if spa == tpa:                                   # gratuitous
        return ARP_NOT_REQUEST, None
    mac = neigh.get(int.from_bytes(tpa, "big"))
    if mac is None:
        return ARP_MISS, None
    tmac = mac.to_bytes(6, "big")
    if tmac == sha:                                  # asks about itself
        return ARP_NOT_REQUEST, None
    reply = (sha + tmac + struct.pack("!H", spec.ETH_P_ARP)
             + _ARP.pack(spec.ARP_HTYPE_ETHER, spec.ETH_P_IP, 6, 4, spec.ARP_OP_REPLY,
                         tmac, tpa, sha, spa))
    return ARP_ANSWERED, reply
