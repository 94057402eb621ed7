"""Pure-Python reference for vnet.pxd: the virtio-net header of a TAP with IFF_VNET_HDR.

Layout (include/uapi/linux/virtio_net.h, struct virtio_net_hdr; little-endian on x86, see
vnet.pxd for why):

    0 flags u8 | 1 gso_type u8 | 2 hdr_len u16 | 4 gso_size u16 | 6 csum_start u16 |
    8 csum_offset u16
"""
from __future__ import annotations

import struct
from typing import NamedTuple

VNET_HLEN = 10
VNET_F_NEEDS_CSUM = 1
VNET_F_DATA_VALID = 2
VNET_F_RSC_INFO = 4
VNET_GSO_NONE = 0
VNET_GSO_TCPV4 = 1
VNET_GSO_UDP = 3
VNET_GSO_TCPV6 = 4
VNET_GSO_UDP_L4 = 5
VNET_GSO_ECN = 0x80

# smallest csum_start of a real L4 checksum: Ethernet 14 + IPv4 20 (see vnet.pxd)
VNET_CSUM_START_MIN = 34

VN_OK = 0
VN_BAD_FLAGS = -1
VN_BAD_GSO_TYPE = -2
VN_ECN = -3
VN_GSO_SIZE = -4
VN_HDR_LEN = -5
VN_CSUM_RANGE = -6
VN_GSO_NO_CSUM = -7
# negative result of py_check -> drop reason (counter drop_<reason>)
REASONS = {VN_BAD_FLAGS: "vnet_bad_flags", VN_BAD_GSO_TYPE: "gso_bad_type", VN_ECN: "gso_ecn",
           VN_GSO_SIZE: "gso_bad_size", VN_HDR_LEN: "vnet_bad_hdr_len",
           VN_CSUM_RANGE: "vnet_bad_csum", VN_GSO_NO_CSUM: "gso_no_csum"}

_FMT = "<BBHHHH"


class VnetHdr(NamedTuple):
    flags: int = 0
    gso_type: int = VNET_GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0

    def checked(self) -> VnetHdr:
        for name, v, bits in zip(self._fields, self, (8, 8, 16, 16, 16, 16)):
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 1 << bits:
                raise ValueError(f"virtio-net header field {name} must fit {bits} bits, got {v!r}")
        return self


def py_parse(data: bytes) -> VnetHdr:
    if len(data) < VNET_HLEN:
        raise ValueError(f"a virtio-net header is {VNET_HLEN} bytes, got {len(data)}")
    return VnetHdr(*struct.unpack_from(_FMT, bytes(data[:VNET_HLEN])))


def py_build(hdr: tuple[int, ...]) -> bytes:
    return struct.pack(_FMT, *VnetHdr(*hdr).checked())


def py_check(hdr: tuple[int, ...], frame_len: int) -> int:
    """0 if the header is consistent with a frame of frame_len bytes, else a VN_* reason."""
    h = VnetHdr(*hdr).checked()
    if not 0 <= frame_len <= 0xFFFFFFFF:
        raise ValueError(f"frame length out of range: {frame_len}")
    if h.flags & ~(VNET_F_NEEDS_CSUM | VNET_F_DATA_VALID):
        return VN_BAD_FLAGS
    if h.gso_type & VNET_GSO_ECN:
        return VN_ECN
    if h.gso_type not in (VNET_GSO_NONE, VNET_GSO_TCPV4, VNET_GSO_TCPV6, VNET_GSO_UDP_L4):
        return VN_BAD_GSO_TYPE
    if h.hdr_len > frame_len:
        return VN_HDR_LEN
    if h.flags & VNET_F_NEEDS_CSUM and (h.csum_start + h.csum_offset + 2 > frame_len
                                        or h.csum_start < VNET_CSUM_START_MIN):
        return VN_CSUM_RANGE
    if h.gso_type != VNET_GSO_NONE:
        if h.gso_size == 0 or h.gso_size >= frame_len:
            return VN_GSO_SIZE
        if not h.flags & VNET_F_NEEDS_CSUM:
            return VN_GSO_NO_CSUM
    return VN_OK
