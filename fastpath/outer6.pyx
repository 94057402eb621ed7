# cython: language_level=3, boundscheck=False, wraparound=False
"""Python wrappers over the inline IPv6 outer-header writer (outer6.pxd), for tests and
benchmarks. Same API as outer6_ref.py."""
from libc.stdint cimport uint8_t
from libc.string cimport memcpy
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING

from fastpath.headers cimport flow_hash
from fastpath.outer6_ref import check_encap6_args

C_CONSTANTS = {"IPV6_HLEN": IPV6_HLEN, "OUTER6_HLEN": OUTER6_HLEN}


def py_flow_label(const uint8_t[::1] frame) -> int:
    return flow_label(flow_hash(&frame[0] if frame.shape[0] else NULL, frame.shape[0]))


def py_encap6(const uint8_t[::1] frame, bytes src, bytes dst, sport, dport, vni, hop_limit,
              flowlabel, bint zero_csum=False) -> bytes:
    cdef size_t n = frame.shape[0]
    check_encap6_args(n, src, dst, sport, dport, vni, hop_limit, flowlabel)
    out = PyBytes_FromStringAndSize(NULL, OUTER6_HLEN + n)
    cdef uint8_t *p = <uint8_t *>PyBytes_AS_STRING(out)
    if n:
        memcpy(p + OUTER6_HLEN, &frame[0], n)
    write_outer6(p, <const uint8_t *><char *>src, <const uint8_t *><char *>dst, sport, dport,
                 vni, p + OUTER6_HLEN, n, hop_limit, flowlabel, zero_csum)
    return out
