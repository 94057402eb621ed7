# cython: language_level=3, boundscheck=False, wraparound=False
"""Python wrappers over the inline C header functions (headers.pxd), for tests and benchmarks.

Same API as headers_ref.py.
"""
from libc.stdint cimport uint8_t, uint32_t
from libc.string cimport memcpy
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING

from fastpath.headers_ref import check_encap_args

C_CONSTANTS = {
    "ETH_HLEN": ETH_HLEN, "ETH_P_IP": ETH_P_IP, "ETH_P_ARP": ETH_P_ARP, "IPV4_HLEN": IPV4_HLEN,
    "UDP_HLEN": UDP_HLEN, "VXLAN_HLEN": VXLAN_HLEN, "OUTER_HLEN": OUTER_HLEN,
    "VXLAN_FLAG_I": VXLAN_FLAG_I, "IPPROTO_TCP": IPPROTO_TCP, "IPPROTO_UDP": IPPROTO_UDP,
}
VX_ERRORS = {VX_TRUNCATED: "truncated", VX_NO_I_FLAG: "no_i_flag", VX_RESERVED: "reserved"}


def py_flow_hash(const uint8_t[::1] frame) -> int:
    return flow_hash(&frame[0] if frame.shape[0] else NULL, frame.shape[0])


def py_source_port(const uint8_t[::1] frame, int lo, int hi) -> int:
    if not (0 < lo < hi <= 65536):
        raise ValueError(f"bad source port range {lo}-{hi}")
    return source_port(flow_hash(&frame[0] if frame.shape[0] else NULL, frame.shape[0]), lo, hi)


def py_encap(const uint8_t[::1] frame, src_ip, dst_ip, sport, dport, vni, ttl) -> bytes:
    cdef size_t n = frame.shape[0]
    check_encap_args(n, src_ip, dst_ip, sport, dport, vni, ttl)
    out = PyBytes_FromStringAndSize(NULL, OUTER_HLEN + n)
    cdef uint8_t *p = <uint8_t *>PyBytes_AS_STRING(out)
    write_outer(p, src_ip, dst_ip, sport, dport, vni, n, ttl)
    if n:
        memcpy(p + OUTER_HLEN, &frame[0], n)
    return out


def py_parse_vxlan(const uint8_t[::1] payload, bint strict=True) -> int:
    return parse_vxlan(&payload[0] if payload.shape[0] else NULL, payload.shape[0], strict)


def py_ipv4_checksum(const uint8_t[::1] hdr) -> int:
    if hdr.shape[0] < IPV4_HLEN:
        raise ValueError(f"IPv4 header needs {IPV4_HLEN} bytes, got {hdr.shape[0]}")
    return ipv4_checksum(&hdr[0])
