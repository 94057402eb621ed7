# cython: language_level=3, boundscheck=False, wraparound=False
"""Python wrappers over the inline virtio-net header functions (vnet.pxd), for tests.

Same API as vnet_ref.py.
"""
from libc.stdint cimport uint8_t
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING

from fastpath.vnet_ref import VnetHdr, REASONS

C_CONSTANTS = {
    "VNET_HLEN": VNET_HLEN, "VNET_F_NEEDS_CSUM": VNET_F_NEEDS_CSUM,
    "VNET_F_DATA_VALID": VNET_F_DATA_VALID, "VNET_GSO_NONE": VNET_GSO_NONE,
    "VNET_GSO_TCPV4": VNET_GSO_TCPV4, "VNET_GSO_UDP": VNET_GSO_UDP,
    "VNET_GSO_TCPV6": VNET_GSO_TCPV6, "VNET_GSO_UDP_L4": VNET_GSO_UDP_L4,
    "VNET_GSO_ECN": VNET_GSO_ECN,
}
C_REASONS = {VN_BAD_FLAGS: "vnet_bad_flags", VN_BAD_GSO_TYPE: "gso_bad_type", VN_ECN: "gso_ecn",
             VN_GSO_SIZE: "gso_bad_size", VN_HDR_LEN: "vnet_bad_hdr_len",
             VN_CSUM_RANGE: "vnet_bad_csum", VN_GSO_NO_CSUM: "gso_no_csum"}
assert C_REASONS == REASONS, "vnet.pxd and vnet_ref.py disagree on the reasons"


def py_parse(const uint8_t[::1] data) -> VnetHdr:
    cdef vnet_hdr h
    if data.shape[0] < VNET_HLEN:
        raise ValueError(f"a virtio-net header is {VNET_HLEN} bytes, got {data.shape[0]}")
    vnet_parse(&data[0], &h)
    return VnetHdr(h.flags, h.gso_type, h.hdr_len, h.gso_size, h.csum_start, h.csum_offset)


def py_build(hdr) -> bytes:
    cdef vnet_hdr h
    h.flags, h.gso_type, h.hdr_len, h.gso_size, h.csum_start, h.csum_offset = VnetHdr(*hdr).checked()
    out = PyBytes_FromStringAndSize(NULL, VNET_HLEN)
    vnet_build(<uint8_t *>PyBytes_AS_STRING(out), &h)
    return out


def py_check(hdr, frame_len) -> int:
    cdef vnet_hdr h
    h.flags, h.gso_type, h.hdr_len, h.gso_size, h.csum_start, h.csum_offset = VnetHdr(*hdr).checked()
    if not 0 <= frame_len <= 0xffffffff:
        raise ValueError(f"frame length out of range: {frame_len}")
    return vnet_check(&h, frame_len)
