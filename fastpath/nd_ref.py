"""Pure-Python reference for nd.pxd: IPv6 neighbour suppression (RFC 4861).

A neighbour solicitation (ICMPv6 135) from a pod for an IPv6 address in the table is answered
with a neighbour advertisement (ICMPv6 136) the way the kernel's vxlan proxy mode does:

- validation first (RFC 4861 7.1.1); a solicitation that fails it is dropped with a reason:
  truncated (payload length < 24 or past the frame), bad_hop_limit (not 255),
  bad_checksum, bad_option (length 0, past the end, an SLLA option that is not 8 bytes),
  invalid (code != 0, multicast target, a DAD probe with an SLLA option or not sent to a
  solicited-node multicast address);
- not answered, the normal path: not NS (other ICMPv6, extension headers), DAD probes
  (source ::), and a solicitation whose table MAC is the sender's own;
- miss: a valid solicitation for a target not in the table (the switch applies the BUM policy);
- the reply: Ethernet to the SLLA option's MAC (else the frame's source) from the target's MAC;
  IPv6 target -> solicitor, hop limit 255; NA flags Solicited + Override (Router clear), the
  target, a target link-layer address option; checksum over the pseudo-header.
"""
from __future__ import annotations

import struct
from typing import Mapping

from fastpath import spec

ND_NOT_NS = 0
ND_ANSWERED = 11
ND_MISS = 12
ND_TRUNCATED = 13
ND_BAD_CHECKSUM = 14
ND_BAD_HOP_LIMIT = 15
ND_BAD_OPTION = 16
ND_INVALID = 17

# verdict -> drop reason (counter drop_<reason>) of the switch
DROP_REASONS = {ND_TRUNCATED: "nd_truncated", ND_BAD_CHECKSUM: "nd_bad_checksum",
                ND_BAD_HOP_LIMIT: "nd_bad_hop_limit", ND_BAD_OPTION: "nd_bad_option",
                ND_INVALID: "nd_invalid"}

IPV6_HLEN = 40
IPPROTO_ICMPV6 = 58
HOP_LIMIT = 255
TYPE_NS, TYPE_NA = 135, 136
MSG_LEN = 24
OPT_SLLA, OPT_TLLA = 1, 2
NA_FLAGS = 0x60000000            # S | O
SOLICITED_NODE_PREFIX = bytes.fromhex("ff02" + "00" * 9 + "01ff")   # ff02::1:ff00:0/104
NA_FRAME_LEN = spec.ETH_HLEN + IPV6_HLEN + MSG_LEN + 8     # 86


def icmp6_sum(src: bytes, dst: bytes, msg: bytes) -> int:
    """Folded one's complement sum of the pseudo-header and msg (0xffff when msg's checksum
    is right)."""
    data = src + dst + struct.pack("!IxxxB", len(msg), IPPROTO_ICMPV6) + msg
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def nd_reduce(frame: bytes, neigh6: Mapping[int, int]) -> tuple[int, bytes | None]:
    """Return (verdict, reply). neigh6 maps an IPv6 address (int) to a MAC (48-bit int)."""
    eh, ih = spec.ETH_HLEN, spec.ETH_HLEN + IPV6_HLEN
    if len(frame) < ih + 1 or struct.unpack_from("!H", frame, 12)[0] != spec.ETH_P_IPV6:
        return ND_NOT_NS, None
    if frame[eh] >> 4 != 6 or frame[eh + 6] != IPPROTO_ICMPV6 or frame[ih] != TYPE_NS:
        return ND_NOT_NS, None
    plen = struct.unpack_from("!H", frame, eh + 4)[0]
    if plen < MSG_LEN or len(frame) < ih + plen:
        return ND_TRUNCATED, None
    if frame[eh + 7] != HOP_LIMIT:
        return ND_BAD_HOP_LIMIT, None
    src, dst = frame[eh + 8:eh + 24], frame[eh + 24:eh + 40]
    msg = frame[ih:ih + plen]
    if icmp6_sum(src, dst, msg) != 0xFFFF:
        return ND_BAD_CHECKSUM, None
    target = msg[8:24]
    if msg[1] != 0 or target[0] == 0xFF:
        return ND_INVALID, None
    slla = None
    i = MSG_LEN
    while i < plen:
        if i + 2 > plen:
            return ND_BAD_OPTION, None
        olen = msg[i + 1] * 8
        if olen == 0 or i + olen > plen:
            return ND_BAD_OPTION, None
        if msg[i] == OPT_SLLA:
            if olen != 8:
                return ND_BAD_OPTION, None
            if slla is None:
                slla = msg[i + 2:i + 8]
        i += olen
    if src == bytes(16):                                   # duplicate address detection
        solicited_node = dst[:13] == SOLICITED_NODE_PREFIX
        if slla is not None or not solicited_node:
            return ND_INVALID, None
        return ND_NOT_NS, None
    mac = neigh6.get(int.from_bytes(target, "big"))
    if mac is None:
        return ND_MISS, None
    tmac = mac.to_bytes(6, "big")
    if tmac == frame[6:12]:                                # asks about itself
        return ND_NOT_NS, None
    dmac = slla if slla is not None else frame[6:12]
    body = struct.pack("!BBHI16sBB6s", TYPE_NA, 0, 0, NA_FLAGS, target, OPT_TLLA, 1, tmac)
    csum = ~icmp6_sum(target, src, body) & 0xFFFF
    body = body[:2] + struct.pack("!H", csum) + body[4:]
    ip6 = struct.pack("!IHBB16s16s", 6 << 28, len(body), IPPROTO_ICMPV6, HOP_LIMIT, target, src)
    return ND_ANSWERED, dmac + tmac + struct.pack("!H", spec.ETH_P_IPV6) + ip6 + body
