# A network of the switch and what the loops decide per packet, as C declarations shared by
# the modules of the switch (switch.pyx, buffers.pxd, tracepoints.pyx, sim.pyx).
#
# - net_t: one overlay network (VNI): its TAP queue fds, its tables (FDB, IPv4/IPv6
#   neighbours, VTEPs), its counters and loop statistics. Guarded by the switch's table lock
#   (switch.pyx, "Locking"); never freed while the switch lives (threads may hold it).
# - decision: the verdict of one packet (trace records, process_tap/process_udp).
# - Counter indices and verdicts: the order of fastpath/counters.py NAMES and VERDICTS
#   (switch.pyx asserts the counts agree).
# Reference: switch_ref.py (the same counters and verdicts by name).
from libc.stdint cimport uint8_t, uint32_t, uint64_t

from fastpath.tables cimport u64map
from fastpath.map128 cimport u128map
from fastpath.vtep cimport vtep_t
from fastpath.queues cimport MAX_QUEUES

# Counter indices: the order of fastpath/counters.py NAMES.
cdef enum:
    C_TAP_RX_PKTS = 0
    C_TAP_RX_BYTES
    C_UDP_TX_PKTS
    C_UDP_TX_BYTES
    C_ARP_REPLIED
    C_FLOODED
    C_UDP_RX_PKTS
    C_UDP_RX_BYTES
    C_TAP_TX_PKTS
    C_TAP_TX_BYTES
    D_TX_SHORT
    D_TX_TOO_BIG
    D_UNKNOWN_UNICAST
    D_BUM
    D_ARP_MISS
    D_SEND_ERROR
    D_TRUNCATED
    D_NO_I_FLAG
    D_RESERVED
    D_UNKNOWN_VNI
    D_RX_TOO_BIG
    D_INNER_SHORT
    D_SPOOFED
    D_BAD_INNER_SRC
    D_TAP_WRITE_ERROR
    C_ND_REPLIED
    D_ND_MISS
    D_ND_TRUNCATED
    D_ND_BAD_CHECKSUM
    D_ND_BAD_HOP_LIMIT
    D_ND_BAD_OPTION
    D_ND_INVALID
    C_GSO_FRAMES
    C_GSO_SEGMENTS
    C_GRO_FRAMES
    C_GRO_SEGMENTS
    C_CSUM_COMPLETED
    D_VNET_BAD_FLAGS
    D_GSO_BAD_TYPE
    D_GSO_ECN
    D_GSO_BAD_SIZE
    D_VNET_BAD_HDR_LEN
    D_VNET_BAD_CSUM
    D_GSO_NO_CSUM
    D_GSO_NOT_TCP_UDP
    D_GSO_IP_OPTIONS
    D_GSO_BAD_HEADERS
    D_GSO_TOO_BIG
    D_GSO_TOO_MANY_SEGS
    D_REPLY_WRITE_ERROR
    D_IP6_EXT_HDR
    D_IP6_FRAGMENT
    N_COUNTERS

# Verdicts of one packet (fastpath/counters.py VERDICTS).
cdef enum:
    V_NONE = 0
    V_ENCAP
    V_FLOOD
    V_ARP_REPLY
    V_DELIVER
    V_DROP
    V_ND_REPLY


cdef struct net_t:
    uint32_t vni
    int active
    int tap_fd             # queue 0 (== qfd[0])
    int qfd[MAX_QUEUES]    # a multi-queue TAP's queue fds (fastpath/queues.pxd)
    int nq                 # how many
    u64map fdb             # MAC -> VTEP index
    u64map neigh           # IPv4 -> MAC
    u128map neigh6         # IPv6 -> MAC (fastpath/map128.pxd)
    int wake_fd            # eventfd: remove_network wakes this network's TX loop
    u128map vtep_by_ip     # VTEP key (vtep.pxd: IPv6, or IPv4-mapped) -> VTEP index
    vtep_t *vteps
    size_t nvslots         # slots in vteps[]
    size_t nvteps          # slots in use
    uint64_t c[N_COUNTERS]
    uint64_t tx_wakeups    # poll() returns of this network's TX loop (loop statistics)
    uint64_t tx_batches    # batches classified by it

cdef struct decision:
    uint32_t vni
    uint32_t vtep          # IPv4 VTEP chosen (outbound unicast) or outer source (inbound),
                           # host order; 0 for IPv6 (trace records carry 32 bits)
    uint64_t vhi           # the same VTEP as a key (either family; 0, 0: none)
    uint64_t vlo
    uint32_t copies        # datagrams emitted for this packet
    uint8_t verdict
    uint8_t reason         # counter index of the drop (0 if none)


cdef inline void drop(uint64_t *c, decision *d, int reason) noexcept nogil:
    """Count a drop under `reason` (a D_* index) and record it in the packet's decision."""
    c[reason] += 1
    d.verdict = V_DROP
    d.reason = reason
