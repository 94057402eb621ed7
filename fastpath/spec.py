"""Wire constants from the specs (RFC 7348, RFC 826, RFC 791/768, IEEE 802.3).

Spec constants live here; implementation constants (batch sizes, slot sizes) live beside the
code that uses them. `headers.pxd` mirrors the ones the C fast path needs; a unit test checks
that both agree.
"""

# IEEE 802.3 / Ethernet II
ETH_HLEN = 14
ETH_ALEN = 6
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100

# RFC 791 / RFC 768
IPV4_HLEN = 20
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IP_DF = 0x4000
UDP_HLEN = 8

# RFC 7348 (VXLAN)
VXLAN_HLEN = 8
VXLAN_FLAG_I = 0x08          # "I" flag: VNI is valid; all other flag bits reserved (zero)
VXLAN_PORT = 4789            # IANA-assigned UDP destination port
VNI_MAX = (1 << 24) - 1

# Outer headers the fast path writes in front of an inner frame (the kernel adds Ethernet).
OUTER_HLEN = IPV4_HLEN + UDP_HLEN + VXLAN_HLEN    # 36
# Underlay MTU minus this is the inner (TAP) MTU, like the kernel's vxlan (50 for IPv4).
VXLAN_OVERHEAD = ETH_HLEN + OUTER_HLEN            # 50
# RFC 8200: the same over an IPv6 underlay (no extension headers): 40-byte IPv6 header.
IPV6_HLEN = 40
OUTER6_HLEN = IPV6_HLEN + UDP_HLEN + VXLAN_HLEN   # 56
VXLAN6_OVERHEAD = ETH_HLEN + OUTER6_HLEN          # 70

# RFC 826 (ARP over Ethernet for IPv4)
ARP_HTYPE_ETHER = 1
ARP_OP_REQUEST = 1
ARP_OP_REPLY = 2
ARP_LEN = 28

# Linux defaults (vxlan driver): source port range for ECMP entropy, outer TTL.
SRCPORT_MIN = 32768
SRCPORT_MAX = 61000
DEFAULT_TTL = 64
