# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Python wrapper over the inline offload functions (gso.pxd), for tests and benchmarks.

Same API as gso_ref.py.
"""
from libc.stdint cimport uint8_t, uint32_t
from libc.string cimport memcpy
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING

from fastpath.vnet cimport vnet_hdr, vnet_check, VNET_GSO_NONE, VNET_F_NEEDS_CSUM
from fastpath.vnet_ref import VnetHdr
from fastpath.gso_ref import REASONS

C_CONSTANTS = {"GSO_MAX_SEGS": GSO_MAX_SEGS, "GSO_MAX_FRAME": GSO_MAX_FRAME,
               "GSO_HDR_MAX": GSO_HDR_MAX}
C_REASONS = {GS_NOT_TCP_UDP: "gso_not_tcp_udp", GS_IP_OPTIONS: "gso_ip_options",
             GS_BAD_HEADERS: "gso_bad_headers", GS_TOO_BIG: "gso_too_big",
             GS_TOO_MANY: "gso_too_many_segs"}
assert all(REASONS[k] == v for k, v in C_REASONS.items()), "gso.pxd and gso_ref.py disagree"


def py_offload(hdr, frame, uint32_t max_inner):
    cdef vnet_hdr h
    cdef gso_info g
    cdef bytes f = bytes(frame)
    cdef uint32_t n = len(f), i, pay
    cdef int r
    cdef uint8_t *out
    h.flags, h.gso_type, h.hdr_len, h.gso_size, h.csum_start, h.csum_offset = VnetHdr(*hdr).checked()
    r = vnet_check(&h, n)
    if r < 0:
        return r, []
    if h.gso_type == VNET_GSO_NONE:
        if h.flags & VNET_F_NEEDS_CSUM:
            f = PyBytes_FromStringAndSize(<char *>f, n)      # a private copy, changed in place
            csum_complete(<uint8_t *>PyBytes_AS_STRING(f), n, &h)
        return 0, [f]
    r = gso_prepare(&h, <const uint8_t *>PyBytes_AS_STRING(f), n, max_inner, &g)
    if r < 0:
        return r, []
    segs = []
    for i in range(g.nseg):
        seg = PyBytes_FromStringAndSize(NULL, g.hlen + (g.mss if i + 1 < g.nseg else
                                                         g.plen - i * g.mss))
        out = <uint8_t *>PyBytes_AS_STRING(seg)
        pay = gso_seg_header(<const uint8_t *>PyBytes_AS_STRING(f), &g, i, out)
        memcpy(out + g.hlen, <const uint8_t *>PyBytes_AS_STRING(f) + g.hlen + i * g.mss, pay)
        segs.append(seg)
    return 0, segs


def py_rx_super(frame, uint32_t max_inner):
    """The virtio-net header to write an oversized inbound TCP super-frame with, or None."""
    cdef vnet_hdr h
    cdef bytes f = bytes(frame)
    if gso_rx_super(<const uint8_t *>PyBytes_AS_STRING(f), len(f), max_inner, &h) < 0:
        return None
    return VnetHdr(h.flags, h.gso_type, h.hdr_len, h.gso_size, h.csum_start, h.csum_offset)
