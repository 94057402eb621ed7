"""Counter names of the fast path, in the order of the C enum in net.pxd.

Every drop has a reason; each is counted under `drop_<reason>`. Counters before the VNI of an
incoming datagram is known (truncated, no_i_flag, reserved, unknown_vni, rx_too_big) are kept
per switch ("global"); the rest per network (VNI).
"""

NAMES: tuple[str, ...] = (
    "tap_rx_packets", "tap_rx_bytes",        # frames read from the TAP
    "udp_tx_packets", "udp_tx_bytes",        # datagrams sent on the underlay (flood copies too)
    "arp_replied",                           # ARP requests answered locally
    "flooded",                               # BUM frames replicated to every VTEP
    "udp_rx_packets", "udp_rx_bytes",        # valid VXLAN datagrams accepted
    "tap_tx_packets", "tap_tx_bytes",        # frames written to the TAP
    # drops, outbound
    "drop_tx_short",                         # frame shorter than an Ethernet header
    "drop_tx_too_big",                       # frame + 36 (IPv6: 56) outer bytes > underlay MTU
    "drop_unknown_unicast",                  # no FDB entry (flood off)
    "drop_bum",                              # broadcast/multicast (flood off, or no VTEP)
    "drop_arp_miss",                         # ARP request for an IP not in the table (flood off)
    "drop_send_error",                       # the kernel refused the datagram
    # drops, inbound
    "drop_truncated",                        # shorter than a VXLAN header
    "drop_no_i_flag",                        # VXLAN I flag unset
    "drop_reserved",                         # reserved bits set (strict mode)
    "drop_unknown_vni",                      # no network with this VNI
    "drop_rx_too_big",                       # datagram larger than the receive slot
    "drop_inner_short",                      # inner frame shorter than an Ethernet header
    "drop_spoofed",                          # outer source is not a known VTEP (strict mode)
    "drop_bad_inner_src",                    # inner source MAC multicast or zero
    "drop_tap_write_error",                  # write to the TAP failed
    # IPv6 neighbour suppression (outbound; nd.pxd, nd_ref.py)
    "nd_replied",                            # neighbour solicitations answered locally
    "drop_nd_miss",                          # NS for a target not in the table (flood off)
    "drop_nd_truncated",                     # ICMPv6 NS shorter than its header / payload
    "drop_nd_bad_checksum",                  # ICMPv6 checksum wrong
    "drop_nd_bad_hop_limit",                 # hop limit != 255 (RFC 4861 7.1.1)
    "drop_nd_bad_option",                    # option of length 0 / past the end / bad SLLA
    "drop_nd_invalid",                       # code != 0, multicast target, malformed DAD
    # offloads (TAP with a virtio-net header, UDP GSO/GRO on the underlay)
    "gso_frames",                            # GSO super-frames read from the TAP and split
    "gso_segments",                          # segments they were split into
    "gro_frames",                            # coalesced frames written to the TAP
    "gro_segments",                          # datagrams that went into them
    "csum_completed",                        # checksums completed (NEEDS_CSUM out, partial in)
    # drops, outbound with offloads: a virtio-net header that lies (fastpath/gso_ref.py)
    "drop_vnet_bad_flags",                   # unknown flag bits
    "drop_gso_bad_type",                     # gso_type not TCPV4/TCPV6/UDP_L4
    "drop_gso_ecn",                          # ECN bit (TSO_ECN is not offered)
    "drop_gso_bad_size",                     # gso_size 0 or not smaller than the frame
    "drop_vnet_bad_hdr_len",                 # hdr_len beyond the frame
    "drop_vnet_bad_csum",                    # csum_start/csum_offset beyond the frame or
                                             # csum_start < 34 (inside Ethernet + IPv4)
    "drop_gso_no_csum",                      # GSO frame without NEEDS_CSUM
    "drop_gso_not_tcp_udp",                  # GSO frame whose IP protocol is not TCP/UDP
    "drop_gso_ip_options",                   # GSO frame with IPv4 options / IPv6 ext. headers
    "drop_gso_bad_headers",                  # GSO frame headers truncated or inconsistent
    "drop_gso_too_big",                      # its segments would not fit the underlay MTU
    "drop_gso_too_many_segs",                # more than 128 segments
    # drops, outbound, in the loop itself
    "drop_reply_write_error",                # an ARP/ND reply's write into the TAP failed
    # drops, inbound over an IPv6 underlay (what the receive socket reports; the kernel itself
    # drops bad/zero checksums, wrong lengths and truncated headers before they reach us)
    "drop_ip6_ext_hdr",                      # outer IPv6 with extension headers
    "drop_ip6_fragment",                     # outer IPv6 reassembled from fragments
)

OFFLOAD_STATS = ("gso_frames", "gso_segments", "gro_frames", "gro_segments", "csum_completed")

INDEX = {n: i for i, n in enumerate(NAMES)}
DROPS = tuple(n for n in NAMES if n.startswith("drop_"))

VERDICTS = ("none", "encap", "flood", "arp_reply", "deliver", "drop", "nd_reply")
