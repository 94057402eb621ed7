# A network of the switch and what the loops decide per packet, as C declarations shared by
# the modules of the switch (switch.pyx, buffers.pxd, tracepoints.pyx, sim.pyx).
#
# - net_t: one overlay network (VNI): its TAP queue fds, its tables (FDB, IPv4/IPv6
#   neighbours, VTEPs), its counters and loop statistics. Guarded by the switch's table lock
#   (switch.pyx, "Locking"); never freed while the switch lives (threads may hold it).
# - decision: the verdict of one packet (trace records, process_tap/process_udp).
# - Counter indices and verdicts: the order of fastpath/counters.py NAMES and VERDICTS
#   (switch.pyx asserts the counts agree).
# - The life of a network's tables (control side, under the table lock): net_tables_init /
#   net_clear / net_free, and the VTEP slots that FDB entries share (vtep_ref / vtep_unref,
#   reference counted; a slot is reused once its last FDB entry is gone).
# Reference: switch_ref.py (the same counters and verdicts by name, the same tables).
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport realloc, free
from libc.string cimport memset

from fastpath.includes.sys cimport close
from fastpath.tables cimport u64map, u64map_init, u64map_free
from fastpath.map128 cimport u128map, u128map_slot, u128map_init, u128map_free, u128map_find
from fastpath.map128 cimport u128map_put, u128map_del
from fastpath.vtep cimport vtep_t, vtep_set_key
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


cdef inline int net_tables_init(net_t *n) except -1 nogil:
    u64map_init(&n.fdb, 64)
    u64map_init(&n.neigh, 64)
    u128map_init(&n.neigh6, 16)
    u128map_init(&n.vtep_by_ip, 16)
    return 0


cdef inline void net_tables_free(net_t *n) noexcept nogil:
    u64map_free(&n.fdb)
    u64map_free(&n.neigh)
    u128map_free(&n.neigh6)
    u128map_free(&n.vtep_by_ip)


cdef inline int net_clear(net_t *n) except -1 nogil:
    """Empty every table of n (remove_network: the memory stays, threads may hold it)."""
    net_tables_free(n)
    net_tables_init(n)
    memset(n.vteps, 0, n.nvslots * sizeof(vtep_t))
    n.nvteps = 0
    return 0


cdef inline void net_free(net_t *n) noexcept nogil:
    if n == NULL:
        return
    net_tables_free(n)
    if n.wake_fd >= 0:
        close(n.wake_fd)
    free(n.vteps)
    free(n)


cdef inline size_t vtep_ref(net_t *n, uint64_t hi, uint64_t lo,
                            uint16_t port) except? 0xffffffff:
    """The VTEP slot of key (hi, lo) for one more FDB entry (its port updated), a new slot
    if there is none."""
    cdef u128map_slot *s = u128map_find(&n.vtep_by_ip, hi, lo)
    cdef size_t i
    cdef vtep_t *grown
    if s != NULL:
        n.vteps[s.value].port = port
        n.vteps[s.value].refcnt += 1
        return s.value
    for i in range(n.nvslots):
        if n.vteps[i].refcnt == 0:
            break
    else:
        i = n.nvslots
        grown = <vtep_t *>realloc(n.vteps, (2 * n.nvslots + 4) * sizeof(vtep_t))
        if grown == NULL:
            raise MemoryError()
        memset(grown + n.nvslots, 0, (n.nvslots + 4) * sizeof(vtep_t))
        n.vteps = grown
        n.nvslots = 2 * n.nvslots + 4
    memset(&n.vteps[i], 0, sizeof(vtep_t))
    vtep_set_key(&n.vteps[i], hi, lo)
    n.vteps[i].port = port
    n.vteps[i].refcnt = 1
    n.nvteps += 1
    u128map_put(&n.vtep_by_ip, hi, lo, i)
    return i


cdef inline void vtep_unref(net_t *n, size_t i) noexcept nogil:
    """One FDB entry fewer on VTEP slot i; the slot is free when none is left."""
    n.vteps[i].refcnt -= 1
    if n.vteps[i].refcnt == 0:
        u128map_del(&n.vtep_by_ip, n.vteps[i].hi, n.vteps[i].lo)
        n.nvteps -= 1
