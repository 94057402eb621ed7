# The virtio-net header that a TAP opened with IFF_VNET_HDR puts in front of every frame
# (include/uapi/linux/virtio_net.h, struct virtio_net_hdr, 10 bytes):
#
#     0  flags        u8   VIRTIO_NET_HDR_F_NEEDS_CSUM (1): the L4 checksum is still to do:
#                          sum from csum_start to the end, store at csum_start + csum_offset
#                          (the field already holds the pseudo-header sum);
#                          F_DATA_VALID (2): checksum already verified (receive side)
#     1  gso_type     u8   GSO_NONE 0, TCPV4 1, UDP 3 (UFO, not offered), TCPV6 4,
#                          UDP_L4 5 (USO); | ECN 0x80 (the TCP flow uses ECN, CWR handling)
#     2  hdr_len      u16  length of the headers (Ethernet + IP + L4): a hint only
#     4  gso_size     u16  payload bytes per segment (MSS) of a GSO frame
#     6  csum_start   u16  offset of the L4 header from the start of the frame
#     8  csum_offset  u16  offset of the checksum field from csum_start (TCP 16, UDP 6)
#
# Byte order: a legacy (pre-virtio-1.0) header is in the host's order; the tun driver uses
# little-endian when TUNSETVNETLE is set or the host is little-endian (tun_is_little_endian),
# so on x86 it is little-endian either way. We read and write it as little-endian explicitly.
# Reference implementation: vnet_ref.py.
from libc.stdint cimport uint8_t, uint16_t, uint32_t

cdef enum:
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

# Implementation limit: the smallest csum_start of a real L4 checksum (Ethernet 14 + IPv4 20).
# The kernel never writes less (its own virtio_net_hdr_to_skb refuses a transport offset below
# an IP header); completing such a checksum would overwrite the MACs the FDB lookup then uses.
cdef enum:
    VNET_CSUM_START_MIN = 34

# Results of vnet_check(): 0 = plausible; negative = why the header lies (a drop reason each;
# fastpath/counters.py names them drop_vnet_*/drop_gso_*).
cdef enum:
    VN_OK = 0
    VN_BAD_FLAGS = -1       # flags other than NEEDS_CSUM / DATA_VALID
    VN_BAD_GSO_TYPE = -2    # gso_type not NONE/TCPV4/TCPV6/UDP_L4 (UFO is never offered)
    VN_ECN = -3             # ECN bit: not offered (no TUN_F_TSO_ECN), so a lie
    VN_GSO_SIZE = -4        # GSO frame with gso_size 0 or gso_size >= frame length
    VN_HDR_LEN = -5         # hdr_len beyond the frame
    VN_CSUM_RANGE = -6      # NEEDS_CSUM with csum_start/csum_offset beyond the frame, or
                            # csum_start inside the Ethernet + minimal IPv4 header
    VN_GSO_NO_CSUM = -7     # GSO frame without NEEDS_CSUM (the kernel always sets it)

cdef struct vnet_hdr:
    uint8_t flags
    uint8_t gso_type
    uint16_t hdr_len
    uint16_t gso_size
    uint16_t csum_start
    uint16_t csum_offset


cdef inline uint16_t _le16(const uint8_t *p) noexcept nogil:
    return <uint16_t>(p[0] | (<uint16_t>p[1] << 8))


cdef inline void _st_le16(uint8_t *p, uint16_t v) noexcept nogil:
    p[0] = v & 0xff
    p[1] = v >> 8


cdef inline void vnet_parse(const uint8_t *p, vnet_hdr *h) noexcept nogil:
    """Read the 10-byte header at p into h."""
    h.flags = p[0]
    h.gso_type = p[1]
    h.hdr_len = _le16(p + 2)
    h.gso_size = _le16(p + 4)
    h.csum_start = _le16(p + 6)
    h.csum_offset = _le16(p + 8)


cdef inline void vnet_build(uint8_t *p, const vnet_hdr *h) noexcept nogil:
    """Write h as the 10-byte header at p."""
    p[0] = h.flags
    p[1] = h.gso_type
    _st_le16(p + 2, h.hdr_len)
    _st_le16(p + 4, h.gso_size)
    _st_le16(p + 6, h.csum_start)
    _st_le16(p + 8, h.csum_offset)


cdef inline void vnet_zero(uint8_t *p) noexcept nogil:
    """A header that says nothing: no GSO, checksum complete (what a plain frame carries)."""
    cdef int i
    for i in range(VNET_HLEN):
        p[i] = 0


cdef inline int vnet_check(const vnet_hdr *h, uint32_t frame_len) noexcept nogil:
    """Is the header consistent with a frame of frame_len bytes (after the header)?

    Structural checks only; gso.pxd checks the header against the frame's own headers.
    The order fixes which reason a header with several lies is counted under.
    """
    cdef uint8_t t
    if h.flags & ~(VNET_F_NEEDS_CSUM | VNET_F_DATA_VALID):
        return VN_BAD_FLAGS
    if h.gso_type & VNET_GSO_ECN:
        return VN_ECN
    t = h.gso_type
    if t != VNET_GSO_NONE and t != VNET_GSO_TCPV4 and t != VNET_GSO_TCPV6 and t != VNET_GSO_UDP_L4:
        return VN_BAD_GSO_TYPE
    if h.hdr_len > frame_len:
        return VN_HDR_LEN
    if h.flags & VNET_F_NEEDS_CSUM:
        if (<uint32_t>h.csum_start + h.csum_offset + 2 > frame_len
                or h.csum_start < VNET_CSUM_START_MIN):
            return VN_CSUM_RANGE
    if t != VNET_GSO_NONE:
        if h.gso_size == 0 or h.gso_size >= frame_len:
            return VN_GSO_SIZE
        if not (h.flags & VNET_F_NEEDS_CSUM):
            return VN_GSO_NO_CSUM
    return VN_OK
