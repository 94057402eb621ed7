# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The switch: per-VNI tables, batch classification, and the forwarding loops.

Outbound (TAP -> underlay): one thread per network runs `Switch.run_tx(vni, raw_fd)`.
  1. poll() the TAP fd and the stop eventfd; on wake-up, drain the TAP in batches:
  2. read() up to `batch` frames into a preallocated slab, each at offset OUTER_HLEN, so the
     outer headers can be written in place in front of it (headroom);
  3. lock the tables and classify the batch (tx_classify): an ARP request for a known IP is
     rewritten in place into the reply; a unicast frame with an FDB hit gets its outer
     IPv4/UDP/VXLAN header written into its headroom; broadcast, multicast, unknown unicast
     and ARP misses are replicated to every VTEP of the network (flood on) or dropped; every
     decision is counted; unlock;
  4. one sendmmsg() for the whole batch on the raw IPv4 socket (the kernel adds Ethernet),
     then write() the ARP replies back into the TAP.
Inbound (underlay -> TAP): one thread runs `Switch.run_rx(udp_fd)`.
  1. poll() the UDP socket and the stop eventfd;
  2. recvmmsg() up to `batch` datagrams with their source addresses into a preallocated slab;
  3. lock and classify (rx_classify): VXLAN header valid, VNI configured, inner frame long
     enough, source a known VTEP of that VNI (strict mode), inner source MAC a station; unlock;
  4. write() every accepted inner frame into its network's TAP.

Locking: one pthread mutex guards all tables. A forwarding thread holds it only across the
classification of one batch (pure computation, no syscalls, no Python); control calls
(fdb_add, ...) hold it for one table edit. So a control change waits at most one batch's
classification (a few µs), and a lookup never sees a half-edited table.
Counters: plain uint64 in C memory; every field has exactly one writer thread (outbound
fields: that network's TX thread; inbound fields: the RX thread), so no atomics are needed.
Python reads them at any time without stopping forwarding (aligned 64-bit loads).
Nothing in the loops touches a Python object; run_tx/run_rx/run_all release the GIL for their
whole duration. Reference implementation of the classification: switch_ref.py.

Design history (measured with benchmarks/system.py on a 2-vCPU VM; see benchmarks/RESULTS.md):
- Outer headers are written by us and sent on a raw IPv4 socket, not a bound UDP socket, so the
  UDP source port can carry the inner-flow hash (ECMP entropy, as the kernel does) and DF is
  ours to set. Costs one route lookup per datagram in the kernel; measured as noise next to the
  TAP write.
- Batching works: under load a wake-up handles ~30 TAP frames and ~60 datagrams per recvmmsg.
  What remains is kernel time per packet (TAP read, raw send, UDP receive, TAP write running
  the bridge and the pod's stack), ~4-5 us; our code is ~0.1 us of it.
- One thread per direction (run_tx/run_rx) paid context switches and, on 2 CPUs, TAP queue
  overflows; run_all (one thread for both directions) is the default on <= 2 CPUs.
- Sleeping in poll() costs a wake-up per hop (~25 us across CPUs on a VM): sockperf p50 was
  1.7x the kernel's. Busy-polling for busy_poll_ns after the last packet made it 0.7x. The spin
  must yield (sched_yield): a pure spin starved the applications on the same CPU (6x worse).
- The TCP gap to the kernel (which moves 64 KB GSO packets) needs offloads on the TAP
  (IFF_VNET_HDR: TSO split on the way out, GRO coalescing on the way in): not done yet.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport malloc, calloc, realloc, free
from libc.string cimport memset, memcpy
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING

from fastpath.includes.sys cimport (
    iovec, msghdr, mmsghdr, recvmmsg, sendmmsg, sockaddr_in, pollfd, poll, read, write, close,
    eventfd, errno, pthread_mutex_t, timespec, clock_gettime, CLOCK_MONOTONIC, sched_yield, pthread_mutex_init, pthread_mutex_destroy,
    pthread_mutex_lock, pthread_mutex_unlock, htons, ntohs, htonl, ntohl,
    MSG_DONTWAIT, MSG_TRUNC, AF_INET, POLLIN, POLLERR, POLLHUP, POLLNVAL,
    EAGAIN, EINTR, EFD_NONBLOCK, EFD_CLOEXEC,
)
from fastpath.headers cimport (
    ETH_HLEN, OUTER_HLEN, VXLAN_HLEN, IPV4_HLEN, UDP_HLEN, ld_mac, flow_hash, source_port,
    write_outer, parse_vxlan, VX_TRUNCATED, VX_NO_I_FLAG, VX_RESERVED,
)
from fastpath.tables cimport (
    u64map, u64map_slot, u64map_find, u64map_init, u64map_free, u64map_put, u64map_del,
)
from fastpath.arp cimport arp_reduce, ARP_NOT_REQUEST, ARP_ANSWERED, ARP_MISS, ARP_FRAME_LEN
from fastpath.map128 cimport u128map, u128map_init, u128map_free, u128map_put, u128map_del
from fastpath.nd cimport (
    nd_reduce, nd_ld64, ND_ANSWERED, ND_MISS, ND_TRUNCATED, ND_BAD_CHECKSUM, ND_BAD_HOP_LIMIT,
    ND_BAD_OPTION, ND_INVALID, ND_NA_FRAME_LEN,
)
from fastpath.trace cimport (
    trace_t, trace_init, trace_free, trace_match, trace_put, TP_TAP_IN, TP_UL_OUT, TP_UL_IN,
    TP_TAP_OUT, TP_DECISION, N_TRACE_POINTS, REC_PAD, REC_INBOUND, rec_hdr, trace_take,
)
from fastpath import trace as _trace

cdef extern from *:
    uint64_t __atomic_fetch_add(uint64_t *p, uint64_t v, int order) nogil
    int __ATOMIC_RELAXED

from fastpath import addr as _addr
from fastpath import counters as _counters

# ---- implementation constants -------------------------------------------------------------
cdef enum:
    MAX_NETS = 256
    MAX_BATCH = 1024
    DECISION_SNAP = 128      # bytes of the frame kept with a decision record
    TRACE_RING = 8 << 20     # bytes

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
    N_COUNTERS

# What a forwarding loop does after a drain (Switch._idle).
cdef enum:
    IDLE_AGAIN = 0
    IDLE_WOKE = 1
    IDLE_STOP = 2

# Verdicts of one packet (fastpath/counters.py VERDICTS).
cdef enum:
    V_NONE = 0
    V_ENCAP
    V_FLOOD
    V_ARP_REPLY
    V_DELIVER
    V_DROP
    V_ND_REPLY

assert N_COUNTERS == len(_counters.NAMES), "counters.py and switch.pyx disagree"

cdef struct vtep_t:
    uint32_t ip            # host order
    uint16_t port
    uint32_t refcnt        # FDB entries that point here; 0 = free slot
    uint64_t tx_packets
    uint64_t tx_bytes
    uint64_t rx_packets
    uint64_t rx_bytes

cdef struct net_t:
    uint32_t vni
    int active
    int tap_fd
    u64map fdb             # MAC -> VTEP index
    u64map neigh           # IPv4 -> MAC
    u128map neigh6         # IPv6 -> MAC (fastpath/map128.pxd)
    int wake_fd            # eventfd: remove_network wakes this network's TX loop
    u64map vtep_by_ip      # IPv4 -> VTEP index
    vtep_t *vteps
    size_t nvslots         # slots in vteps[]
    size_t nvteps          # slots in use
    uint64_t c[N_COUNTERS]
    uint64_t tx_wakeups    # poll() returns of this network's TX loop (loop statistics)
    uint64_t tx_batches    # batches classified by it

cdef struct decision:
    uint32_t vni
    uint32_t vtep          # chosen VTEP (outbound unicast) or outer source (inbound), host order
    uint32_t copies        # datagrams emitted for this packet
    uint8_t verdict
    uint8_t reason         # counter index of the drop (0 if none)

cdef struct txbuf:
    uint8_t *slab          # batch slots; frame i at slab + i*slot + OUTER_HLEN
    size_t slot
    uint32_t *lens
    int n
    decision *dec
    # outgoing datagrams
    mmsghdr *msgs
    iovec *iov             # 2 per message
    sockaddr_in *addrs
    uint8_t *hdrs          # OUTER_HLEN per message (flood copies)
    size_t nmsg
    size_t cap
    int *msg_pkt           # per message: index of the packet it carries
    # ARP replies to write back into the TAP: slot indices
    int *tapw
    int ntapw
    # tracing (only touched while tracing is on)
    uint8_t *tmatch        # per packet: passes the trace filter
    uint8_t *snap          # per packet: first DECISION_SNAP bytes before classification
    uint64_t seq0          # sequence number of packet 0 of the batch

cdef struct rxbuf:
    uint8_t *slab
    size_t slot
    int n
    mmsghdr *msgs
    iovec *iov
    sockaddr_in *addrs
    decision *dec
    int *out_fd            # per datagram: TAP fd to write the inner frame to, or -1
    net_t **out_net
    uint8_t *tmatch
    uint64_t seq0


cdef inline void _drop(uint64_t *c, decision *d, int reason) noexcept nogil:
    c[reason] += 1
    d.verdict = V_DROP
    d.reason = reason


cdef int _txbuf_reserve(txbuf *b, size_t cap) noexcept nogil:
    """Make room for `cap` outgoing datagrams. Returns -1 on allocation failure."""
    cdef size_t i
    if cap <= b.cap:
        return 0
    cdef mmsghdr *m = <mmsghdr *>realloc(b.msgs, cap * sizeof(mmsghdr))
    if m == NULL:
        return -1
    b.msgs = m
    cdef iovec *v = <iovec *>realloc(b.iov, 2 * cap * sizeof(iovec))
    if v == NULL:
        return -1
    b.iov = v
    cdef sockaddr_in *a = <sockaddr_in *>realloc(b.addrs, cap * sizeof(sockaddr_in))
    if a == NULL:
        return -1
    b.addrs = a
    cdef uint8_t *h = <uint8_t *>realloc(b.hdrs, cap * OUTER_HLEN)
    if h == NULL:
        return -1
    b.hdrs = h
    cdef int *mp = <int *>realloc(b.msg_pkt, cap * sizeof(int))
    if mp == NULL:
        return -1
    b.msg_pkt = mp
    memset(b.msgs, 0, cap * sizeof(mmsghdr))
    memset(b.addrs, 0, cap * sizeof(sockaddr_in))
    for i in range(cap):
        b.msgs[i].msg_hdr.msg_name = &b.addrs[i]
        b.msgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_in)
        b.msgs[i].msg_hdr.msg_iov = &b.iov[2 * i]
        b.addrs[i].sin_family = AF_INET
    b.cap = cap
    return 0


cdef void _txbuf_free(txbuf *b) noexcept nogil:
    free(b.slab); free(b.lens); free(b.dec); free(b.msgs); free(b.iov); free(b.addrs)
    free(b.hdrs); free(b.tapw); free(b.msg_pkt); free(b.tmatch); free(b.snap)
    memset(b, 0, sizeof(txbuf))


cdef int _txbuf_init(txbuf *b, int batch, size_t slot) noexcept nogil:
    memset(b, 0, sizeof(txbuf))
    b.slot = slot
    b.slab = <uint8_t *>malloc(batch * slot)
    b.lens = <uint32_t *>calloc(batch, sizeof(uint32_t))
    b.dec = <decision *>calloc(batch, sizeof(decision))
    b.tapw = <int *>calloc(batch, sizeof(int))
    b.tmatch = <uint8_t *>calloc(batch, 1)
    b.snap = <uint8_t *>malloc(batch * DECISION_SNAP)
    if (b.slab == NULL or b.lens == NULL or b.dec == NULL or b.tapw == NULL or b.tmatch == NULL
            or b.snap == NULL):
        return -1
    return _txbuf_reserve(b, batch)


cdef void _rxbuf_free(rxbuf *b) noexcept nogil:
    free(b.slab); free(b.msgs); free(b.iov); free(b.addrs); free(b.dec); free(b.out_fd)
    free(b.out_net); free(b.tmatch)
    memset(b, 0, sizeof(rxbuf))


cdef int _rxbuf_init(rxbuf *b, int batch, size_t slot) noexcept nogil:
    cdef int i
    memset(b, 0, sizeof(rxbuf))
    b.slot = slot
    b.slab = <uint8_t *>malloc(batch * slot)
    b.msgs = <mmsghdr *>calloc(batch, sizeof(mmsghdr))
    b.iov = <iovec *>calloc(batch, sizeof(iovec))
    b.addrs = <sockaddr_in *>calloc(batch, sizeof(sockaddr_in))
    b.dec = <decision *>calloc(batch, sizeof(decision))
    b.out_fd = <int *>calloc(batch, sizeof(int))
    b.out_net = <net_t **>calloc(batch, sizeof(net_t *))
    b.tmatch = <uint8_t *>calloc(batch, 1)
    if (b.slab == NULL or b.msgs == NULL or b.iov == NULL or b.addrs == NULL or b.dec == NULL
            or b.out_fd == NULL or b.out_net == NULL or b.tmatch == NULL):
        return -1
    for i in range(batch):
        b.iov[i].iov_base = b.slab + i * slot
        b.iov[i].iov_len = slot
        b.msgs[i].msg_hdr.msg_iov = &b.iov[i]
        b.msgs[i].msg_hdr.msg_iovlen = 1
        b.msgs[i].msg_hdr.msg_name = &b.addrs[i]
    return 0


cdef inline void _rxbuf_rearm(rxbuf *b, int n) noexcept nogil:
    cdef int i
    for i in range(n):
        b.msgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_in)
        b.msgs[i].msg_hdr.msg_flags = 0
        b.msgs[i].msg_len = 0


cdef class Switch:
    """A userspace VXLAN switch: networks (VNI -> TAP), their tables, and the forwarding loops.

    Same Python API as switch_ref.Switch, which documents the behaviour in plain Python.
    """
    cdef pthread_mutex_t lock
    cdef net_t *nets[MAX_NETS]
    cdef int nnets
    cdef uint64_t g[N_COUNTERS]          # drops before a network is known (inbound)
    cdef uint64_t rx_wakeups, rx_batches # loop statistics of the RX loop
    cdef readonly uint32_t local_ip
    cdef readonly int port, sport_lo, sport_hi, ttl, batch, underlay_mtu
    cdef readonly bint strict, flood
    cdef readonly size_t max_inner       # largest inner frame that fits the underlay MTU
    cdef int stop_fd
    cdef int kick_fd                     # eventfd: networks changed (wakes run_all)
    cdef volatile uint64_t gen           # bumped by every add/remove_network
    cdef volatile int stopping
    cdef uint32_t failed_vni             # network whose TAP failed (single-thread mode)
    cdef readonly uint64_t busy_poll_ns  # keep polling this long after the last packet
    cdef trace_t tr
    cdef txbuf sim_tx
    cdef rxbuf sim_rx

    def __cinit__(self):
        pthread_mutex_init(&self.lock, NULL)
        self.stop_fd = -1
        self.kick_fd = -1
        trace_init(&self.tr, TRACE_RING)

    def __init__(self, str local_ip, port=4789, *, bint strict=True, bint flood=False,
                 srcport=(32768, 61000), ttl=64, batch=64, underlay_mtu=1500,
                 busy_poll_us=0):
        lo, hi = srcport
        if not (_is_int(lo) and _is_int(hi) and 0 < lo < hi <= 65536):
            raise ValueError(f"bad source port range {lo}-{hi}: want 1 <= min < max <= 65536")
        _int_in("batch", batch, 1, MAX_BATCH)
        _int_in("ttl", ttl, 1, 255)
        _int_in("underlay MTU", underlay_mtu, 576, 65535)
        _int_in("busy_poll_us", busy_poll_us, 0, 1000000)
        self.local_ip = _addr.ip_to_int(local_ip)
        self.port = _addr.check_port(port)
        self.sport_lo, self.sport_hi = lo, hi
        self.ttl, self.batch, self.strict, self.flood = ttl, batch, strict, flood
        self.underlay_mtu = underlay_mtu
        self.max_inner = underlay_mtu - OUTER_HLEN
        self.busy_poll_ns = busy_poll_us * 1000
        self.stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        self.kick_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if self.stop_fd < 0 or self.kick_fd < 0:
            raise OSError(errno, "eventfd failed")
        if (_txbuf_init(&self.sim_tx, self.batch, self._tx_slot()) < 0
                or _rxbuf_init(&self.sim_rx, self.batch, self._rx_slot()) < 0):
            raise MemoryError()

    def __dealloc__(self):
        cdef int i
        for i in range(self.nnets):
            self._free_net(self.nets[i])
            self.nets[i] = NULL
        _txbuf_free(&self.sim_tx)
        _rxbuf_free(&self.sim_rx)
        if self.stop_fd >= 0:
            close(self.stop_fd)
        if self.kick_fd >= 0:
            close(self.kick_fd)
        trace_free(&self.tr)
        pthread_mutex_destroy(&self.lock)

    cdef size_t _tx_slot(self):
        return (OUTER_HLEN + self.max_inner + 1 + 63) & ~(<size_t>63)

    cdef size_t _rx_slot(self):
        return (VXLAN_HLEN + self.max_inner + 1 + 63) & ~(<size_t>63)

    cdef void _free_net(self, net_t *n) noexcept nogil:
        if n == NULL:
            return
        u64map_free(&n.fdb)
        u64map_free(&n.neigh)
        u128map_free(&n.neigh6)
        u64map_free(&n.vtep_by_ip)
        if n.wake_fd >= 0:
            close(n.wake_fd)
        free(n.vteps)
        free(n)

    # ---- networks ---------------------------------------------------------------------------
    cdef net_t *_find(self, uint32_t vni) noexcept nogil:
        cdef int i
        for i in range(self.nnets):
            if self.nets[i].vni == vni and self.nets[i].active:
                return self.nets[i]
        return NULL

    cdef net_t *_net(self, vni) except NULL:
        cdef net_t *n = self._find(<uint32_t>_addr.check_vni(vni))
        if n == NULL:
            raise KeyError(f"no network with VNI {vni}")
        return n

    def add_network(self, vni, int tap_fd=-1):
        """Add the network `vni`, whose frames come from / go to `tap_fd`."""
        cdef uint32_t v = _addr.check_vni(vni)
        cdef net_t *n = NULL
        cdef int i
        cdef uint64_t drain
        with nogil:
            pthread_mutex_lock(&self.lock)
        try:
            if self._find(v) != NULL:
                raise ValueError(f"network with VNI {vni} exists")
            for i in range(self.nnets):        # reuse a removed network's memory: threads may
                if not self.nets[i].active:    # still hold its pointer, so it is never freed
                    n = self.nets[i]
                    break
            if n == NULL:
                if self.nnets == MAX_NETS:
                    raise ValueError(f"at most {MAX_NETS} networks per switch")
                n = <net_t *>calloc(1, sizeof(net_t))
                if n == NULL:
                    raise MemoryError()
                u64map_init(&n.fdb, 64)
                u64map_init(&n.neigh, 64)
                u128map_init(&n.neigh6, 16)
                u64map_init(&n.vtep_by_ip, 16)
                n.wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
                if n.wake_fd < 0:
                    self._free_net(n)
                    raise OSError(errno, "eventfd failed")
                self.nets[self.nnets] = n
                self.nnets += 1
            memset(n.c, 0, sizeof(n.c))
            n.tx_wakeups = n.tx_batches = 0
            read(n.wake_fd, &drain, 8)           # a reused slot: forget its removal wake-up
            n.vni = v
            n.tap_fd = tap_fd
            n.active = 1
            self._networks_changed(NULL)
        finally:
            pthread_mutex_unlock(&self.lock)

    cdef void _networks_changed(self, net_t *removed) noexcept nogil:
        """Caller holds the lock. run_all re-reads the network set when gen moves (kick_fd
        wakes it from poll); a removed network's run_tx loop wakes on its wake_fd and ends."""
        cdef uint64_t one = 1
        self.gen += 1
        write(self.kick_fd, &one, 8)
        if removed != NULL:
            write(removed.wake_fd, &one, 8)

    def remove_network(self, vni):
        """Deactivate a network and empty its tables (its memory is kept: threads may hold it)."""
        cdef net_t *n
        with nogil:
            pthread_mutex_lock(&self.lock)
        try:
            n = self._net(vni)
            n.active = 0
            n.tap_fd = -1
            u64map_free(&n.fdb); u64map_init(&n.fdb, 64)
            u64map_free(&n.neigh); u64map_init(&n.neigh, 64)
            u128map_free(&n.neigh6); u128map_init(&n.neigh6, 16)
            u64map_free(&n.vtep_by_ip); u64map_init(&n.vtep_by_ip, 16)
            memset(n.vteps, 0, n.nvslots * sizeof(vtep_t))
            n.nvteps = 0
            self._networks_changed(n)
        finally:
            pthread_mutex_unlock(&self.lock)

    def networks(self):
        return sorted(self.nets[i].vni for i in range(self.nnets) if self.nets[i].active)

    # ---- tables (control side; each call is one edit under the lock) ------------------------
    cdef size_t _vtep_ref(self, net_t *n, uint32_t ip, uint16_t port) except? 0xffffffff:
        cdef u64map_slot *s = u64map_find(&n.vtep_by_ip, ip)
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
        n.vteps[i].ip = ip
        n.vteps[i].port = port
        n.vteps[i].refcnt = 1
        n.nvteps += 1
        u64map_put(&n.vtep_by_ip, ip, i)
        return i

    cdef void _vtep_unref(self, net_t *n, size_t i) noexcept nogil:
        n.vteps[i].refcnt -= 1
        if n.vteps[i].refcnt == 0:
            u64map_del(&n.vtep_by_ip, n.vteps[i].ip)
            n.nvteps -= 1

    def fdb_add(self, vni, str mac, str vtep, port=None):
        """MAC -> remote VTEP (replaces an existing entry). port: the VTEP's UDP port."""
        cdef uint64_t m = _addr.check_unicast_mac(mac)
        cdef uint32_t ip = _addr.check_vtep_ip(vtep)
        cdef uint16_t p = _addr.check_port(self.port if port is None else port)
        cdef u64map_slot *s
        cdef size_t idx
        with nogil:
            pthread_mutex_lock(&self.lock)
        try:
            n = self._net(vni)
            s = u64map_find(&n.fdb, m)
            idx = self._vtep_ref(n, ip, p)
            if s != NULL:
                self._vtep_unref(n, s.value)
            u64map_put(&n.fdb, m, idx)
        finally:
            pthread_mutex_unlock(&self.lock)

    def fdb_del(self, vni, str mac) -> bool:
        cdef uint64_t m = _addr.mac_to_int(mac)
        cdef u64map_slot *s
        with nogil:
            pthread_mutex_lock(&self.lock)
        try:
            n = self._net(vni)
            s = u64map_find(&n.fdb, m)
            if s == NULL:
                return False
            self._vtep_unref(n, s.value)
            u64map_del(&n.fdb, m)
            return True
        finally:
            pthread_mutex_unlock(&self.lock)

    def neigh_add(self, vni, str ip, str mac):
        """IPv4 or IPv6 -> MAC, for ARP / neighbour suppression (replaces an existing entry)."""
        cdef uint64_t m = _addr.check_unicast_mac(mac)
        fam, a = _addr.neigh_ip(ip)
        cdef uint64_t hi = a >> 64, lo = a & 0xFFFFFFFFFFFFFFFF
        with nogil:
            pthread_mutex_lock(&self.lock)
        try:
            if fam == 4:
                u64map_put(&self._net(vni).neigh, lo, m)
            else:
                u128map_put(&self._net(vni).neigh6, hi, lo, m)
        finally:
            pthread_mutex_unlock(&self.lock)

    def neigh_del(self, vni, str ip) -> bool:
        fam, a = _addr.neigh_ip(ip)
        cdef uint64_t hi = a >> 64, lo = a & 0xFFFFFFFFFFFFFFFF
        with nogil:
            pthread_mutex_lock(&self.lock)
        try:
            if fam == 4:
                return u64map_del(&self._net(vni).neigh, lo)
            return u128map_del(&self._net(vni).neigh6, hi, lo)
        finally:
            pthread_mutex_unlock(&self.lock)

    def fdb(self, vni):
        """[(mac, vtep, port)] sorted by MAC."""
        cdef size_t i
        out = []
        with nogil:
            pthread_mutex_lock(&self.lock)
        try:
            n = self._net(vni)
            for i in range(n.fdb.cap):
                if n.fdb.slots[i].state == 1:
                    v = &n.vteps[n.fdb.slots[i].value]
                    out.append((n.fdb.slots[i].key, v.ip, v.port))
        finally:
            pthread_mutex_unlock(&self.lock)
        return [(_addr.int_to_mac(m), _addr.int_to_ip(ip), p) for m, ip, p in sorted(out)]

    def neigh(self, vni):
        """[(ip, mac)]: IPv4 sorted by address, then IPv6 sorted by address."""
        cdef size_t i
        out, out6 = [], []
        with nogil:
            pthread_mutex_lock(&self.lock)
        try:
            n = self._net(vni)
            for i in range(n.neigh.cap):
                if n.neigh.slots[i].state == 1:
                    out.append((n.neigh.slots[i].key, n.neigh.slots[i].value))
            for i in range(n.neigh6.cap):
                if n.neigh6.slots[i].state == 1:
                    out6.append(((<object>n.neigh6.slots[i].hi << 64) | n.neigh6.slots[i].lo,
                                 n.neigh6.slots[i].value))
        finally:
            pthread_mutex_unlock(&self.lock)
        return ([(_addr.int_to_ip(a), _addr.int_to_mac(m)) for a, m in sorted(out)]
                + [(_addr.int_to_ip6(a), _addr.int_to_mac(m)) for a, m in sorted(out6)])

    def table_sizes(self, vni):
        """{"fdb", "neigh", "vteps"}: entry counts, without building the tables (for stats
        and metrics scrapes, which must not cost O(table) conversions)."""
        cdef net_t *n
        with nogil:
            pthread_mutex_lock(&self.lock)
        try:
            n = self._net(vni)
            return {"fdb": n.fdb.used, "neigh": n.neigh.used + n.neigh6.used,
                    "vteps": n.nvteps}
        finally:
            pthread_mutex_unlock(&self.lock)

    def vteps(self, vni):
        """Per remote VTEP: address, port, FDB entries using it, and traffic counters."""
        cdef size_t i
        out = []
        with nogil:
            pthread_mutex_lock(&self.lock)
        try:
            n = self._net(vni)
            for i in range(n.nvslots):
                v = &n.vteps[i]
                if v.refcnt:
                    out.append({"vtep": _addr.int_to_ip(v.ip), "port": v.port,
                                "fdb_entries": v.refcnt,
                                "tx_packets": v.tx_packets, "tx_bytes": v.tx_bytes,
                                "rx_packets": v.rx_packets, "rx_bytes": v.rx_bytes})
        finally:
            pthread_mutex_unlock(&self.lock)
        return sorted(out, key=lambda d: _addr.ip_to_int(d["vtep"]))

    def loop_stats(self):
        """Wake-ups and batches of the forwarding loops: packets per wake-up is how well
        the loops amortize their syscalls and context switches."""
        cdef int i
        return {"rx_wakeups": self.rx_wakeups, "rx_batches": self.rx_batches,
                "tx": {self.nets[i].vni: {"wakeups": self.nets[i].tx_wakeups,
                                          "batches": self.nets[i].tx_batches}
                       for i in range(self.nnets) if self.nets[i].active}}

    def counters(self, vni=None):
        """{name: value}: for one network, or (vni=None) the switch-wide inbound drops."""
        cdef uint64_t *c
        if vni is None:
            c = self.g
        else:
            c = self._net(vni).c
        return {name: c[i] for i, name in enumerate(_counters.NAMES)}

    # ---- classification (pure: no syscalls; caller holds the lock) --------------------------
    cdef void tx_classify(self, net_t *n, txbuf *b) noexcept nogil:
        cdef int i, r
        cdef uint32_t len_
        cdef uint8_t *base
        cdef uint8_t *f
        cdef decision *d
        cdef u64map_slot *s
        cdef vtep_t *v
        cdef uint16_t sport
        cdef int reason
        b.nmsg = 0
        b.ntapw = 0
        for i in range(b.n):
            base = b.slab + i * b.slot
            f = base + OUTER_HLEN
            len_ = b.lens[i]
            d = &b.dec[i]
            d.vni = n.vni
            d.vtep = 0
            d.copies = 0
            d.reason = 0
            n.c[C_TAP_RX_PKTS] += 1
            n.c[C_TAP_RX_BYTES] += len_
            if len_ < ETH_HLEN:
                _drop(n.c, d, D_TX_SHORT)
                continue
            if len_ > self.max_inner:
                _drop(n.c, d, D_TX_TOO_BIG)
                continue
            r = arp_reduce(f, len_, &n.neigh)
            if r == ARP_NOT_REQUEST:
                r = nd_reduce(f, len_, &n.neigh6)      # IPv6 NS: answered, miss, or a drop
            if r == ARP_ANSWERED or r == ND_ANSWERED:
                b.lens[i] = ARP_FRAME_LEN if r == ARP_ANSWERED else ND_NA_FRAME_LEN
                b.tapw[b.ntapw] = i
                b.ntapw += 1
                n.c[C_ARP_REPLIED if r == ARP_ANSWERED else C_ND_REPLIED] += 1
                d.verdict = V_ARP_REPLY if r == ARP_ANSWERED else V_ND_REPLY
                continue
            if r > ND_MISS:
                _drop(n.c, d, D_ND_TRUNCATED + (r - ND_TRUNCATED))   # same order as nd.pxd
                continue
            if r == ARP_MISS or r == ND_MISS:
                reason = D_ARP_MISS if r == ARP_MISS else D_ND_MISS
            elif f[0] & 1:
                reason = D_BUM
            else:
                s = u64map_find(&n.fdb, ld_mac(f))
                if s != NULL:
                    v = &n.vteps[s.value]
                    sport = source_port(flow_hash(f, len_), self.sport_lo, self.sport_hi)
                    write_outer(base, self.local_ip, v.ip, sport, v.port, n.vni, len_,
                                self.ttl)
                    b.iov[2 * b.nmsg].iov_base = base
                    b.iov[2 * b.nmsg].iov_len = OUTER_HLEN + len_
                    b.msgs[b.nmsg].msg_hdr.msg_iovlen = 1
                    b.msg_pkt[b.nmsg] = i
                    b.addrs[b.nmsg].sin_addr.s_addr = htonl(v.ip)
                    b.nmsg += 1
                    v.tx_packets += 1
                    v.tx_bytes += OUTER_HLEN + len_
                    d.verdict = V_ENCAP
                    d.vtep = v.ip
                    d.copies = 1
                    continue
                reason = D_UNKNOWN_UNICAST
            if self.flood and n.nvteps:
                self._flood(n, b, i, f, len_, d)
            else:
                _drop(n.c, d, reason)

    cdef void _flood(self, net_t *n, txbuf *b, int i, uint8_t *f, uint32_t len_,
                     decision *d) noexcept nogil:
        """Head-end replication: one datagram per VTEP, header from b.hdrs + the same frame."""
        cdef size_t j
        cdef vtep_t *v
        cdef uint8_t *h
        cdef uint16_t sport = source_port(flow_hash(f, len_), self.sport_lo, self.sport_hi)
        for j in range(n.nvslots):
            v = &n.vteps[j]
            if v.refcnt == 0 or b.nmsg == b.cap:
                continue
            h = b.hdrs + b.nmsg * OUTER_HLEN
            write_outer(h, self.local_ip, v.ip, sport, v.port, n.vni, len_, self.ttl)
            b.iov[2 * b.nmsg].iov_base = h
            b.iov[2 * b.nmsg].iov_len = OUTER_HLEN
            b.iov[2 * b.nmsg + 1].iov_base = f
            b.iov[2 * b.nmsg + 1].iov_len = len_
            b.msgs[b.nmsg].msg_hdr.msg_iovlen = 2
            b.msg_pkt[b.nmsg] = i
            b.addrs[b.nmsg].sin_addr.s_addr = htonl(v.ip)
            b.nmsg += 1
            v.tx_packets += 1
            v.tx_bytes += OUTER_HLEN + len_
            d.copies += 1
        n.c[C_FLOODED] += 1
        d.verdict = V_FLOOD

    cdef void rx_classify(self, rxbuf *b) noexcept nogil:
        cdef int i
        cdef long vni
        cdef uint8_t *p
        cdef uint8_t *inner
        cdef uint32_t len_, src
        cdef decision *d
        cdef net_t *n
        cdef u64map_slot *s
        for i in range(b.n):
            p = b.slab + i * b.slot
            len_ = b.msgs[i].msg_len
            src = ntohl(b.addrs[i].sin_addr.s_addr)
            d = &b.dec[i]
            d.vni = 0
            d.vtep = src
            d.copies = 0
            d.reason = 0
            b.out_fd[i] = -1
            b.out_net[i] = NULL
            if b.msgs[i].msg_hdr.msg_flags & MSG_TRUNC or len_ > VXLAN_HLEN + self.max_inner:
                _drop(self.g, d, D_RX_TOO_BIG)
                continue
            vni = parse_vxlan(p, len_, self.strict)
            if vni < 0:
                _drop(self.g, d, D_TRUNCATED if vni == VX_TRUNCATED else
                      (D_NO_I_FLAG if vni == VX_NO_I_FLAG else D_RESERVED))
                continue
            d.vni = <uint32_t>vni
            n = self._find(<uint32_t>vni)
            if n == NULL:
                _drop(self.g, d, D_UNKNOWN_VNI)
                continue
            if len_ < VXLAN_HLEN + ETH_HLEN:
                _drop(n.c, d, D_INNER_SHORT)
                continue
            s = u64map_find(&n.vtep_by_ip, src)
            if s == NULL and self.strict:
                _drop(n.c, d, D_SPOOFED)
                continue
            inner = p + VXLAN_HLEN
            if inner[6] & 1 or ld_mac(inner + 6) == 0:
                _drop(n.c, d, D_BAD_INNER_SRC)
                continue
            n.c[C_UDP_RX_PKTS] += 1
            n.c[C_UDP_RX_BYTES] += len_
            if s != NULL:
                n.vteps[s.value].rx_packets += 1
                n.vteps[s.value].rx_bytes += len_
            b.out_fd[i] = n.tap_fd
            b.out_net[i] = n
            d.verdict = V_DELIVER
            d.copies = 1


    # ---- tracing (only runs while tracing is on; the loops test tr.active once per batch) -----
    cdef void _trace_tx_pre(self, net_t *n, txbuf *b) noexcept nogil:
        cdef int i
        cdef uint8_t *f
        cdef size_t k
        b.seq0 = __atomic_fetch_add(&self.tr.seq, <uint64_t>b.n, __ATOMIC_RELAXED)
        for i in range(b.n):
            f = b.slab + i * b.slot + OUTER_HLEN
            b.tmatch[i] = trace_match(&self.tr, n.vni, f, b.lens[i])
            if not b.tmatch[i]:
                continue
            if self.tr.left[TP_TAP_IN]:
                trace_put(&self.tr, TP_TAP_IN, n.vni, 0, 0, 0, 0, b.seq0 + i, f, b.lens[i],
                          NULL, 0, b.lens[i], 0)
            if self.tr.left[TP_DECISION]:
                k = b.lens[i] if b.lens[i] < DECISION_SNAP else DECISION_SNAP
                memcpy(b.snap + i * DECISION_SNAP, f, k)

    cdef void _trace_tx_post(self, net_t *n, txbuf *b) noexcept nogil:
        cdef int i, k
        cdef size_t m, j
        cdef decision *d
        cdef size_t olen
        for m in range(b.nmsg):
            i = b.msg_pkt[m]
            if b.tmatch[i] and self.tr.left[TP_UL_OUT]:
                olen = b.iov[2 * m].iov_len
                if b.msgs[m].msg_hdr.msg_iovlen == 2:
                    olen += b.iov[2 * m + 1].iov_len
                trace_put(&self.tr, TP_UL_OUT, n.vni, ntohl(b.addrs[m].sin_addr.s_addr),
                          0, V_ENCAP, 0, b.seq0 + i,
                          <uint8_t *>b.iov[2 * m].iov_base, b.iov[2 * m].iov_len,
                          <uint8_t *>b.iov[2 * m + 1].iov_base if b.msgs[m].msg_hdr.msg_iovlen == 2 else NULL,
                          b.iov[2 * m + 1].iov_len if b.msgs[m].msg_hdr.msg_iovlen == 2 else 0,
                          olen, 0)
        for k in range(b.ntapw):
            i = b.tapw[k]
            if b.tmatch[i] and self.tr.left[TP_TAP_OUT]:
                trace_put(&self.tr, TP_TAP_OUT, n.vni, 0, 0, b.dec[i].verdict, 0, b.seq0 + i,
                          b.slab + i * b.slot + OUTER_HLEN, b.lens[i], NULL, 0, b.lens[i], 0)
        if self.tr.left[TP_DECISION]:
            for i in range(b.n):
                if not b.tmatch[i]:
                    continue
                d = &b.dec[i]
                trace_put(&self.tr, TP_DECISION, n.vni, d.vtep, d.copies, d.verdict, d.reason,
                          b.seq0 + i, b.snap + i * DECISION_SNAP,
                          b.lens[i] if b.lens[i] < DECISION_SNAP else DECISION_SNAP, NULL, 0,
                          b.lens[i], 0)

    cdef void _trace_rx_pre(self, rxbuf *b) noexcept nogil:
        cdef int i
        cdef uint8_t *p
        cdef uint32_t len_, vni
        b.seq0 = __atomic_fetch_add(&self.tr.seq, <uint64_t>b.n, __ATOMIC_RELAXED)
        for i in range(b.n):
            p = b.slab + i * b.slot
            len_ = b.msgs[i].msg_len
            vni = ((<uint32_t>p[4] << 16) | (<uint32_t>p[5] << 8) | p[6]) if len_ >= 8 else 0
            b.tmatch[i] = trace_match(&self.tr, vni, p + 8, len_ - 8 if len_ >= 8 else 0)
            if b.tmatch[i] and self.tr.left[TP_UL_IN]:
                trace_put(&self.tr, TP_UL_IN, vni, ntohl(b.addrs[i].sin_addr.s_addr),
                          ntohs(b.addrs[i].sin_port), 0, 0, b.seq0 + i, p, len_, NULL, 0, len_, REC_INBOUND)

    cdef void _trace_rx_post(self, rxbuf *b) noexcept nogil:
        cdef int i
        cdef uint8_t *p
        cdef uint32_t len_
        cdef decision *d
        for i in range(b.n):
            if not b.tmatch[i]:
                continue
            p = b.slab + i * b.slot
            len_ = b.msgs[i].msg_len
            d = &b.dec[i]
            if b.out_net[i] != NULL and self.tr.left[TP_TAP_OUT]:
                trace_put(&self.tr, TP_TAP_OUT, d.vni, d.vtep, 0, V_DELIVER, 0, b.seq0 + i,
                          p + VXLAN_HLEN, len_ - VXLAN_HLEN, NULL, 0, len_ - VXLAN_HLEN, REC_INBOUND)
            if self.tr.left[TP_DECISION]:
                trace_put(&self.tr, TP_DECISION, d.vni, d.vtep, ntohs(b.addrs[i].sin_port),
                          d.verdict, d.reason, b.seq0 + i, p,
                          len_ if len_ < DECISION_SNAP else DECISION_SNAP, NULL, 0, len_, REC_INBOUND)

    def trace_arm(self, dict points, vni=0, mac=None, ip=None, int snaplen=65535):
        """Start recording: points = {name: count} with names from fastpath.trace.POINTS
        (count -1 = unlimited). Filter: vni (0 = any), inner MAC (src or dst), inner IPv4
        address (IPv4 src/dst or ARP sender/target). Replaces the previous arming."""
        cdef int i
        counts = [0] * N_TRACE_POINTS
        for name, cnt in points.items():
            if name not in _trace.POINTS:
                raise ValueError(f"unknown trace point {name!r}; known: {', '.join(_trace.POINTS)}")
            if not isinstance(cnt, int) or cnt < -1 or cnt == 0:
                raise ValueError(f"count for {name} must be a positive integer or -1, got {cnt!r}")
            counts[_trace.POINTS.index(name)] = 0xffffffffffffffff if cnt == -1 else cnt
        f_vni = 0 if not vni else _addr.check_vni(vni)
        f_mac = _trace.MAC_ANY if mac is None else _addr.mac_to_int(mac)
        f_ip = 0 if ip is None else _addr.ip_to_int(ip)
        if not 14 <= snaplen <= 65535:
            raise ValueError(f"snaplen must be in 14..65535, got {snaplen}")
        cdef uint32_t c_vni = f_vni, c_ip = f_ip
        cdef uint64_t c_mac = f_mac
        cdef uint16_t c_snap = snaplen
        cdef uint64_t c_left[N_TRACE_POINTS]
        cdef int c_active = 1 if any(counts) else 0
        for i in range(N_TRACE_POINTS):
            c_left[i] = counts[i]
        with nogil:
            pthread_mutex_lock(&self.tr.lock)
            self.tr.f_vni = c_vni
            self.tr.f_mac = c_mac
            self.tr.f_ip = c_ip
            self.tr.snaplen = c_snap
            for i in range(N_TRACE_POINTS):
                self.tr.left[i] = c_left[i]
            self.tr.active = c_active
            pthread_mutex_unlock(&self.tr.lock)

    def trace_disarm(self):
        cdef int i
        with nogil:
            pthread_mutex_lock(&self.tr.lock)
            for i in range(N_TRACE_POINTS):
                self.tr.left[i] = 0
            self.tr.active = 0
            pthread_mutex_unlock(&self.tr.lock)

    def trace_read(self, size_t max_bytes=1 << 20) -> bytes:
        """Take whole records out of the ring (up to max_bytes; at least one record fits, as a
        record is at most 40 + 65535 bytes). The GIL is not held while the ring is locked."""
        if max_bytes < 65536 + 64:
            max_bytes = 65536 + 64
        cdef uint8_t *buf = <uint8_t *>malloc(max_bytes)
        cdef size_t got
        if buf == NULL:
            raise MemoryError()
        try:
            with nogil:
                got = trace_take(&self.tr, buf, max_bytes)
            return PyBytes_FromStringAndSize(<char *>buf, got)
        finally:
            free(buf)

    def trace_status(self):
        return {"active": bool(self.tr.active), "recorded": self.tr.recorded,
                "dropped": self.tr.dropped, "ring_used": self.tr.used, "ring_size": self.tr.size,
                "left": {name: (-1 if self.tr.left[i] == 0xffffffffffffffff else self.tr.left[i])
                         for i, name in enumerate(_trace.POINTS)}}

    # ---- one batch under the table lock (shared by the loops and the simulation) -----------
    cdef int _tx_batch(self, net_t *n, txbuf *b) noexcept nogil:
        """Classify the b.n frames read from n's TAP: under the table lock, with the trace
        hooks around it (tr.active read once, so pre and post agree). -1 if the message arrays
        cannot grow for a flood."""
        cdef size_t need
        cdef int tracing
        pthread_mutex_lock(&self.lock)
        # one datagram per frame, or one per VTEP for a flooded frame (head-end replication);
        # without --flood the arrays never need more than b.n (20,000 VTEPs once made them
        # reserve 64 x 20,000 messages, 200 MB, found by benchmarks/chaos.py)
        need = <size_t>b.n * (n.nvteps if self.flood and n.nvteps > 1 else 1)
        if _txbuf_reserve(b, need) < 0:
            pthread_mutex_unlock(&self.lock)
            return -1
        tracing = self.tr.active
        if tracing:
            self._trace_tx_pre(n, b)
        self.tx_classify(n, b)
        if tracing:
            self._trace_tx_post(n, b)
        pthread_mutex_unlock(&self.lock)
        return 0

    cdef void _rx_batch(self, rxbuf *b) noexcept nogil:
        """Classify the b.n datagrams received: under the table lock, with the trace hooks."""
        cdef int tracing
        pthread_mutex_lock(&self.lock)
        tracing = self.tr.active
        if tracing:
            self._trace_rx_pre(b)
        self.rx_classify(b)
        if tracing:
            self._trace_rx_post(b)
        pthread_mutex_unlock(&self.lock)

    # ---- simulation: the same classification over Python buffers, no syscalls ---------------
    def process_tap(self, vni, frames):
        """Classify frames as if read from the TAP of `vni`.

        Returns (outputs, decisions): outputs in emission order, each
        ("udp", dst_ip, dst_port, datagram_bytes) with the full outer IPv4 packet, or
        ("tap", vni, frame_bytes) for an ARP reply; decisions: one dict per frame.
        """
        cdef txbuf *b = &self.sim_tx
        cdef net_t *n
        cdef int i, k, r
        cdef size_t m, j
        cdef bytes frame
        self._net(vni)                       # unknown VNI: KeyError even with no frames
        frames = [bytes(x) for x in frames]
        out, decs = [], []
        for start in range(0, len(frames), self.batch):
            chunk = frames[start:start + self.batch]
            b.n = len(chunk)
            for i in range(b.n):
                frame = chunk[i]
                k = min(len(frame), self.max_inner + 1)
                memcpy(b.slab + i * b.slot + OUTER_HLEN, <char *>frame, k)
                b.lens[i] = len(frame)            # the length the kernel read() would return
                if b.lens[i] > self.max_inner + 1:
                    b.lens[i] = self.max_inner + 1
            n = self._net(vni)          # never freed, so safe to hold outside the lock
            with nogil:
                r = self._tx_batch(n, b)
            if r < 0:
                raise MemoryError()
            for m in range(b.nmsg):
                parts = []
                for j in range(b.msgs[m].msg_hdr.msg_iovlen):
                    parts.append(PyBytes_FromStringAndSize(<char *>b.iov[2 * m + j].iov_base,
                                                           b.iov[2 * m + j].iov_len))
                datagram = b"".join(parts)
                n.c[C_UDP_TX_PKTS] += 1
                n.c[C_UDP_TX_BYTES] += len(datagram)
                out.append(("udp", _addr.int_to_ip(ntohl(b.addrs[m].sin_addr.s_addr)),
                            int.from_bytes(datagram[22:24], "big"), datagram))
            for k in range(b.ntapw):
                i = b.tapw[k]
                out.append(("tap", vni, PyBytes_FromStringAndSize(
                    <char *>(b.slab + i * b.slot + OUTER_HLEN), b.lens[i])))
            decs.extend(_decision_dict(&b.dec[i]) for i in range(b.n))
        return out, decs

    def process_udp(self, datagrams):
        """Classify UDP payloads as if received: datagrams = [(src_ip, payload_bytes)].

        Returns (outputs, decisions); outputs are ("tap", vni, inner_frame_bytes).
        """
        out, decs = [], []
        cdef rxbuf *b = &self.sim_rx
        cdef int i
        cdef bytes payload
        cdef size_t k
        items = [(_addr.ip_to_int(s), bytes(p)) for s, p in datagrams]
        for start in range(0, len(items), self.batch):
            chunk = items[start:start + self.batch]
            b.n = len(chunk)
            _rxbuf_rearm(b, b.n)
            for i in range(b.n):
                src, payload = chunk[i]
                k = min(<size_t>len(payload), b.slot)
                memcpy(b.slab + i * b.slot, <char *>payload, k)
                b.msgs[i].msg_len = <unsigned int>k
                if <size_t>len(payload) > b.slot:
                    b.msgs[i].msg_hdr.msg_flags = MSG_TRUNC
                b.addrs[i].sin_addr.s_addr = htonl(src)
            with nogil:
                self._rx_batch(b)
            for i in range(b.n):
                if b.out_net[i] != NULL:
                    b.out_net[i].c[C_TAP_TX_PKTS] += 1
                    b.out_net[i].c[C_TAP_TX_BYTES] += b.msgs[i].msg_len - VXLAN_HLEN
                    out.append(("tap", b.out_net[i].vni, PyBytes_FromStringAndSize(
                        <char *>(b.slab + i * b.slot + VXLAN_HLEN),
                        b.msgs[i].msg_len - VXLAN_HLEN)))
            decs.extend(_decision_dict(&b.dec[i]) for i in range(b.n))
        return out, decs

    # ---- the forwarding loops -----------------------------------------------------------------
    def stop(self):
        """Wake and end every forwarding loop of this switch (they return to their callers)."""
        cdef uint64_t one = 1
        self.stopping = 1
        write(self.stop_fd, &one, 8)

    def run_tx(self, vni, int raw_fd):
        """Forward TAP -> underlay for `vni` until stop(). Releases the GIL throughout.

        raw_fd: a SOCK_RAW/IPPROTO_RAW IPv4 socket (blocking). The network's TAP fd must be
        non-blocking. Returns 0 on stop; raises OSError if the TAP fails.
        """
        cdef net_t *n = self._net(vni)
        cdef txbuf b
        cdef int rc
        if _txbuf_init(&b, self.batch, self._tx_slot()) < 0:
            _txbuf_free(&b)
            raise MemoryError()
        with nogil:
            rc = self._tx_loop(n, raw_fd, &b)
        _txbuf_free(&b)
        if rc > 0:
            raise OSError(rc, f"TAP read failed on VNI {vni}: {_strerror(rc)} "
                              "(TAP deleted or down?)")
        if rc < 0:
            raise MemoryError()
        return 0

    cdef long _tx_drain(self, net_t *n, int raw_fd, txbuf *b, int max_batches) noexcept nogil:
        """Read/classify/send batches until the TAP is empty (or max_batches, if > 0).
        Returns packets handled, or -errno on a TAP failure, or -ENOMEM."""
        cdef int i, r, k, tap_fd
        cdef ssize_t got
        cdef size_t sent
        cdef size_t readlen = self.max_inner + 1
        cdef long total = 0
        while True:
            tap_fd = n.tap_fd
            i = 0
            while i < self.batch:
                got = read(tap_fd, b.slab + i * b.slot + OUTER_HLEN, readlen)
                if got < 0:
                    break
                b.lens[i] = <uint32_t>got
                i += 1
            if i == 0:
                if errno != EAGAIN and errno != EINTR:
                    return -errno
                return total
            total += i
            b.n = i
            n.tx_batches += 1
            if self._tx_batch(n, b) < 0:
                return -12   # ENOMEM
            sent = 0
            while sent < b.nmsg:
                r = sendmmsg(raw_fd, b.msgs + sent, b.nmsg - sent, 0)
                if r < 0:
                    if errno == EINTR:
                        continue
                    n.c[D_SEND_ERROR] += 1          # skip the datagram the kernel refused
                    sent += 1
                    continue
                for k in range(r):
                    n.c[C_UDP_TX_PKTS] += 1
                    n.c[C_UDP_TX_BYTES] += b.msgs[sent + k].msg_len
                sent += r
            for k in range(b.ntapw):
                r = b.tapw[k]
                write(tap_fd, b.slab + r * b.slot + OUTER_HLEN, b.lens[r])
            if i < self.batch:
                return total
            max_batches -= 1
            if max_batches == 0:
                return total

    cdef int _idle(self, long got, uint64_t *last, pollfd *pfd, int nfds) noexcept nogil:
        """What a loop does after a drain that handled `got` packets: drain again (IDLE_AGAIN),
        after a wake-up from poll() (IDLE_WOKE), stop (IDLE_STOP), or fail (-errno).

        Busy-polls for busy_poll_ns after the last packet (yielding to anything runnable),
        then sleeps in poll(). pfd[0] is the stop eventfd; the caller checks its own fds'
        revents after IDLE_WOKE.
        """
        cdef int r
        if got > 0:
            last[0] = _now_ns()
            return IDLE_AGAIN
        if self.busy_poll_ns and _now_ns() - last[0] < self.busy_poll_ns:
            sched_yield()
            return IDLE_AGAIN
        while True:
            r = poll(pfd, nfds, -1)
            if r >= 0:
                break
            if errno != EINTR:
                return -errno
        if pfd[0].revents or self.stopping:
            return IDLE_STOP
        return IDLE_WOKE

    cdef int _tx_loop(self, net_t *n, int raw_fd, txbuf *b) noexcept nogil:
        """Drain the TAP of one network; idle (busy-poll, then poll()) when it is empty.
        Ends (0) when the network is removed (remove_network writes its wake_fd)."""
        cdef pollfd pfd[3]
        cdef int r
        cdef long got
        cdef uint64_t last = _now_ns()
        pfd[0].fd = self.stop_fd
        pfd[0].events = POLLIN
        pfd[1].fd = n.tap_fd
        pfd[1].events = POLLIN
        pfd[2].fd = n.wake_fd
        pfd[2].events = POLLIN
        while not self.stopping and n.active:
            got = self._tx_drain(n, raw_fd, b, 0)
            if got < 0:
                return 0 if not n.active else <int>-got
            r = self._idle(got, &last, pfd, 3)
            if r == IDLE_STOP:
                return 0
            if r < 0:
                return -r
            if r == IDLE_WOKE:
                if pfd[2].revents or not n.active:
                    return 0
                if pfd[1].revents & (POLLERR | POLLNVAL):
                    return 5   # EIO
                n.tx_wakeups += 1
        return 0

    def run_rx(self, int udp_fd):
        """Forward underlay -> TAPs until stop(). Releases the GIL throughout."""
        cdef rxbuf b
        cdef int rc
        if _rxbuf_init(&b, self.batch, self._rx_slot()) < 0:
            _rxbuf_free(&b)
            raise MemoryError()
        with nogil:
            rc = self._rx_loop(udp_fd, &b)
        _rxbuf_free(&b)
        if rc > 0:
            raise OSError(rc, "underlay receive failed")
        return 0

    cdef long _rx_drain(self, int udp_fd, rxbuf *b, int max_batches) noexcept nogil:
        """Receive/classify/deliver batches until the socket is empty; returns datagrams."""
        cdef int i, r
        cdef ssize_t w
        cdef uint32_t ilen
        cdef long total = 0
        while True:
            _rxbuf_rearm(b, self.batch)
            r = recvmmsg(udp_fd, b.msgs, self.batch, MSG_DONTWAIT, NULL)
            if r <= 0:
                return total
            total += r
            b.n = r
            self.rx_batches += 1
            self._rx_batch(b)
            for i in range(r):
                if b.out_fd[i] < 0:
                    continue
                ilen = b.msgs[i].msg_len - VXLAN_HLEN
                w = write(b.out_fd[i], b.slab + i * b.slot + VXLAN_HLEN, ilen)
                if w < 0:
                    b.out_net[i].c[D_TAP_WRITE_ERROR] += 1
                else:
                    b.out_net[i].c[C_TAP_TX_PKTS] += 1
                    b.out_net[i].c[C_TAP_TX_BYTES] += ilen
            if r < self.batch:
                return total
            max_batches -= 1
            if max_batches == 0:
                return total

    cdef int _rx_loop(self, int udp_fd, rxbuf *b) noexcept nogil:
        """Drain the underlay socket; idle (busy-poll, then poll()) when it is empty."""
        cdef pollfd pfd[2]
        cdef int r
        cdef long got
        cdef uint64_t last = _now_ns()
        pfd[0].fd = self.stop_fd
        pfd[0].events = POLLIN
        pfd[1].fd = udp_fd
        pfd[1].events = POLLIN
        while not self.stopping:
            got = self._rx_drain(udp_fd, b, 0)
            r = self._idle(got, &last, pfd, 2)
            if r == IDLE_STOP:
                return 0
            if r < 0:
                return -r
            if r == IDLE_WOKE:
                self.rx_wakeups += 1
        return 0

    def run_all(self, int raw_fd, int udp_fd):
        """Forward both directions of every network from one thread until stop().

        For small machines: one thread per agent instead of one per direction means fewer
        context switches, and with busy polling no thread hand-off on the latency path.
        Networks added or removed while it runs are picked up between drains (generation
        counter + kick_fd). Releases the GIL throughout.
        """
        cdef txbuf tb
        cdef rxbuf rb
        cdef int rc
        if (_txbuf_init(&tb, self.batch, self._tx_slot()) < 0
                or _rxbuf_init(&rb, self.batch, self._rx_slot()) < 0):
            _txbuf_free(&tb)
            _rxbuf_free(&rb)
            raise MemoryError()
        with nogil:
            rc = self._all_loop(raw_fd, udp_fd, &tb, &rb)
        _txbuf_free(&tb)
        _rxbuf_free(&rb)
        if rc > 0:
            if self.failed_vni:
                raise OSError(rc, f"TAP read failed on VNI {self.failed_vni}: "
                                  f"{_strerror(rc)} (TAP deleted or down?)")
            raise OSError(rc, f"forwarding failed: {_strerror(rc)}")
        if rc < 0:
            raise MemoryError()
        return 0

    cdef int _all_nets(self, net_t **nets, pollfd *pfd, uint64_t *gen) noexcept nogil:
        """Re-read the active networks (under the lock) into nets[] and their TAPs into
        pfd[3:]; returns how many. Called when self.gen moved since *gen."""
        cdef int i, nn = 0
        cdef uint64_t drain
        read(self.kick_fd, &drain, 8)
        pthread_mutex_lock(&self.lock)
        gen[0] = self.gen
        for i in range(self.nnets):
            if self.nets[i].active:
                nets[nn] = self.nets[i]
                pfd[3 + nn].fd = self.nets[i].tap_fd
                pfd[3 + nn].events = POLLIN
                nn += 1
        pthread_mutex_unlock(&self.lock)
        return nn

    cdef int _all_loop(self, int raw_fd, int udp_fd, txbuf *tb, rxbuf *rb) noexcept nogil:
        cdef pollfd pfd[MAX_NETS + 3]
        cdef net_t *nets[MAX_NETS]
        cdef int r, i, nn
        cdef long got, g
        cdef uint64_t last = _now_ns()
        cdef uint64_t gen = 0
        pfd[0].fd = self.stop_fd
        pfd[0].events = POLLIN
        pfd[1].fd = udp_fd
        pfd[1].events = POLLIN
        pfd[2].fd = self.kick_fd
        pfd[2].events = POLLIN
        nn = self._all_nets(nets, pfd, &gen)
        while not self.stopping:
            if gen != self.gen:
                nn = self._all_nets(nets, pfd, &gen)
            got = self._rx_drain(udp_fd, rb, 4)
            for i in range(nn):
                g = self._tx_drain(nets[i], raw_fd, tb, 4)
                if g < 0:
                    if gen != self.gen:             # removed meanwhile: re-read, not a failure
                        break
                    self.failed_vni = nets[i].vni
                    return <int>-g
                got += g
            r = self._idle(got, &last, pfd, nn + 3)
            if r == IDLE_STOP:
                break
            if r < 0:
                return -r
            if r == IDLE_WOKE:
                if pfd[2].revents:                  # kicked: the network set changed
                    nn = self._all_nets(nets, pfd, &gen)
                    continue
                for i in range(nn):
                    if pfd[3 + i].revents & (POLLERR | POLLNVAL):
                        self.failed_vni = nets[i].vni
                        return 5   # EIO
                self.rx_wakeups += 1
        return 0


cdef inline uint64_t _now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * 1000000000ULL + ts.tv_nsec


def _strerror(int rc):
    import os
    return os.strerror(rc)


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _int_in(str what, v, lo, hi):
    """Validate an integer argument with the reference's ValueError (never OverflowError)."""
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ValueError(f"{what} must be in {lo}..{hi}, got {v!r}")
    return v


cdef dict _decision_dict(decision *d):
    return {"vni": d.vni, "verdict": _counters.VERDICTS[d.verdict],
            "reason": _counters.NAMES[d.reason][5:] if d.verdict == V_DROP else None,
            "vtep": _addr.int_to_ip(d.vtep) if d.vtep else None, "copies": d.copies}
