# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The switch: per-VNI tables, batch classification, and the forwarding loops.

Outbound (TAP -> underlay): one thread per network runs `Switch.run_tx(vni, raw_fd)`.
  1. poll() the TAP fd and the stop eventfd; on wake-up, drain the TAP in batches:
  2. read() up to `batch` frames into a preallocated slab, each at offset HEADROOM (room for
     the 56 bytes of an outer IPv6 header), so the outer headers can be written in place in
     front of it;
  3. lock the tables and classify the batch (tx_classify): an ARP request for a known IP is
     rewritten in place into the reply; a unicast frame with an FDB hit gets its outer
     IPv4/UDP/VXLAN header written into its headroom; broadcast, multicast, unknown unicast
     and ARP misses are replicated to every VTEP of the network (flood on) or dropped; every
     decision is counted; unlock;
  4. one sendmmsg() for the whole batch on the raw IPv4 socket (the kernel adds Ethernet),
     then write() the ARP replies back into the TAP.
  IPv6 underlay (a local IPv6 address; dual stack with both): a VTEP is keyed by 128 bits
  (vtep.pxd); a frame to an IPv6 VTEP gets an outer IPv6 header (outer6.pxd: UDP checksum
  unless udp6zerocsumtx, flow label from the inner flow hash) and leaves on the raw IPv6
  socket (set_raw6), with offloads on the flow's socket of the IPv6 UDP pool.
  With offloads (offload=True): every read carries a virtio-net header; GSO frames are cut
  into segments (gso.pxd), NEEDS_CSUM checksums completed, and the datagrams leave on the
  flow's socket of the UDP pool (set_udp_pool), GSO frames as UDP_SEGMENT sends.
Inbound (underlay -> TAP): one thread runs `Switch.run_rx(udp_fd)`.
  1. poll() the UDP socket and the stop eventfd;
  2. recvmmsg() up to `batch` datagrams with their source addresses into a preallocated slab;
  3. lock and classify (rx_classify): VXLAN header valid, VNI configured, inner frame long
     enough, source a known VTEP of that VNI (strict mode), inner source MAC a station; unlock;
  4. write() every accepted inner frame into its network's TAP.
  With offloads: UDP_GRO buffers are split into datagrams first (rx_split), and the accepted
  frames of a network are coalesced (gro.pxd) and written with writev, one per run.

Locking: one pthread mutex guards all tables. A forwarding thread holds it only across the
classification of one batch (pure computation, no syscalls, no Python); control calls
(fdb_add, ...) hold it for one table edit. So a control change waits at most one batch's
classification (a few µs), and a lookup never sees a half-edited table.
Counters: plain uint64 in C memory; every field has exactly one writer thread (outbound
fields: that network's TX thread; inbound fields: the RX thread), so no atomics are needed.
Python reads them at any time without stopping forwarding (aligned 64-bit loads).
Multi-queue (set_queues(n), n run_all threads, `--threads multi`): thread q reads queue q of
every multi-queue TAP and its own SO_REUSEPORT underlay socket (fastpath/queues.pxd); the
tables are shared under the same lock (classification holds it, as above), counters written
inside the lock stay plain, the few written outside it (TAP write and send results, loop
statistics) are relaxed atomic adds (queues.pxd cadd) whenever n > 1.
Nothing in the loops touches a Python object; run_tx/run_rx/run_all release the GIL for their
whole duration. Reference implementation of the classification: switch_ref.py.
The switch's other modules: net.pxd (a network, the life of its tables and VTEP slots, a
decision, counter indices), buffers.pxd (the batch buffers), send.pxd (step 4 outbound: the
sendmmsg stage), tracepoints.pyx (what a batch records while tracing is on), sim.pyx
(process_tap/process_udp: the same classification and delivery over Python buffers).

Design history (why raw sockets, batching, run_all, busy polling, offloads): docs/architecture.md,
"Fast path design history".
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memset, memcpy
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING

from fastpath.includes.sys cimport (
    iovec, mmsghdr, recvmmsg, sendmmsg, sockaddr_in, sockaddr_in6, pollfd, poll, read, write, close,
    writev, cmsghdr, CMSG_DATA, CMSG_SPACE, CMSG_LEN, SOL_UDP,
    UDP_SEGMENT, UDP_GRO, EIO, EINVAL, EOPNOTSUPP,
    eventfd, errno, pthread_mutex_t, timespec, clock_gettime, CLOCK_MONOTONIC, sched_yield, pthread_mutex_init, pthread_mutex_destroy,
    pthread_mutex_lock, pthread_mutex_unlock, htons, ntohs, htonl, ntohl,
    MSG_DONTWAIT, MSG_TRUNC, POLLIN, POLLERR, POLLHUP, POLLNVAL,
    EAGAIN, EINTR, EFD_NONBLOCK, EFD_CLOEXEC,
)
from fastpath.headers cimport (
    ETH_HLEN, OUTER_HLEN, VXLAN_HLEN, IPV4_HLEN, UDP_HLEN, ld_mac, flow_hash, source_port,
    write_outer, write_vxlan, parse_vxlan, VX_TRUNCATED, VX_NO_I_FLAG, VX_RESERVED,
)
from fastpath.outer6 cimport write_outer6, flow_label, OUTER6_HLEN, IPV6_HLEN
from fastpath.vtep cimport (
    vtep_t, vtep_sockaddr, sockaddr_set_src, key_is_v4,
)
from fastpath.vnet cimport (
    vnet_hdr, vnet_parse, vnet_build, vnet_check, vnet_zero, VNET_HLEN, VNET_GSO_NONE, VNET_F_NEEDS_CSUM,
)
from fastpath.gso cimport (
    gso_info, gso_prepare, gso_seg_header, csum_complete, gso_rx_super, GSO_MAX_SEGS,
    GSO_MAX_FRAME,
)
from fastpath.gro cimport (
    gro_run, gro_stats, gro_coalesce, gro_iovec, csum_rx_fix, GRO_MAX_FRAME,
    CSUM_COMPLETED,
)
from fastpath.tables cimport (
    u64map_slot, u64map_find, u64map_put, u64map_del,
)
from fastpath.arp cimport arp_reduce, ARP_NOT_REQUEST, ARP_ANSWERED, ARP_MISS, ARP_FRAME_LEN
from fastpath.map128 cimport (
    u128map_slot, u128map_put, u128map_del, u128map_find,
)
from fastpath.nd cimport (
    nd_reduce, nd_ld64, ND_ANSWERED, ND_MISS, ND_TRUNCATED, ND_BAD_CHECKSUM, ND_BAD_HOP_LIMIT,
    ND_BAD_OPTION, ND_INVALID, ND_NA_FRAME_LEN,
)
from fastpath.trace cimport (
    trace_t, trace_init, trace_free, trace_configure, trace_stop, trace_read_records, trace_state,
)
from fastpath.send cimport send_raw, send_pool
from fastpath.sim cimport (
    sink, sink_put, sink_take, tx_load, tx_collect, rx_items, rx_load, decision_dicts,
)
from fastpath.tracepoints cimport (
    trace_tx_pre, trace_tx_post, trace_rx_pre, trace_rx_post, trace_run,
)
from fastpath.queues cimport MAX_QUEUES, q_reads, q_fd, cadd
from fastpath.net cimport *    # net_t, decision, counter indices, verdicts, table life cycle
from fastpath.buffers cimport (
    txbuf, rxbuf, txbuf_init, txbuf_free, txbuf_reserve, rxbuf_init, rxbuf_free, rxbuf_rearm,
    rx_cmsgs, rx_split, HEADROOM, SEGH, CMSG_STRIDE, HDRS_STRIDE, RX_GRO_SLOT,
)

from fastpath import addr as _addr
from fastpath import counters as _counters

# ---- implementation constants -------------------------------------------------------------
cdef enum:
    MAX_NETS = 256
    MAX_BATCH = 1024
    TRACE_RING = 8 << 20     # bytes
    MAX_POOL = 64            # UDP send sockets (offloads on): distinct outer source ports
    UDP_GSO_MAX_SEGS = 64    # segments per UDP_SEGMENT send (the kernel's UDP_MAX_SEGMENTS)
    UDP_GSO_MAX_BYTES = 65507   # UDP payload of one send: 64 KB IP packet - 20 - 8

# What a forwarding loop does after a drain (Switch._idle).
cdef enum:
    IDLE_AGAIN = 0
    IDLE_WOKE = 1
    IDLE_STOP = 2

assert N_COUNTERS == len(_counters.NAMES), "counters.py and net.pxd disagree"

cdef inline int _off_reason(int r) noexcept nogil:
    """vnet_check()/gso_prepare() result -> drop counter."""
    if r == -1: return D_VNET_BAD_FLAGS
    if r == -2: return D_GSO_BAD_TYPE
    if r == -3: return D_GSO_ECN
    if r == -4: return D_GSO_BAD_SIZE
    if r == -5: return D_VNET_BAD_HDR_LEN
    if r == -6: return D_VNET_BAD_CSUM
    if r == -7: return D_GSO_NO_CSUM
    if r == -10: return D_GSO_NOT_TCP_UDP
    if r == -11: return D_GSO_IP_OPTIONS
    if r == -13: return D_GSO_TOO_BIG
    if r == -14: return D_GSO_TOO_MANY_SEGS
    return D_GSO_BAD_HEADERS


cdef class Switch:
    """A userspace VXLAN switch: networks (VNI -> TAP), their tables, and the forwarding loops.

    Same Python API as switch_ref.Switch, which documents the behaviour in plain Python.
    """
    cdef pthread_mutex_t lock
    cdef net_t *nets[MAX_NETS]
    cdef int nnets
    cdef uint64_t g[N_COUNTERS]          # drops before a network is known (inbound)
    cdef uint64_t rx_wakeups, rx_batches # loop statistics of the RX loop
    cdef readonly uint32_t local_ip      # IPv4 local address, host order (0: none)
    cdef uint8_t local6[16]              # IPv6 local address (if has6)
    cdef readonly bint has4, has6        # local addresses: IPv4, IPv6, or both (dual stack)
    cdef readonly object local_ip6       # the IPv6 one as a string (None: none)
    cdef readonly bint udp6zerocsumtx    # IPv6: send UDP checksum 0 (kernel's udp6zerocsumtx)
    cdef readonly bint flowinfo6         # IPv6 pool sockets take the flow label (FLOWINFO_SEND)
    cdef int raw6_fd                     # raw IPv6 socket (offloads off), -1: none
    cdef readonly int port, sport_lo, sport_hi, ttl, batch, underlay_mtu
    cdef readonly bint strict, flood
    cdef readonly size_t max_inner       # largest inner frame that fits the underlay MTU
                                         # (with an IPv6 local address: the IPv6 headers')
    cdef size_t rx_max_inner             # largest one an IPv4 datagram of that MTU carries
    cdef int stop_fd
    cdef int kick_fd                     # eventfd: networks changed (wakes run_all)
    cdef int kick_q[MAX_QUEUES]          # ... one per forwarding thread (kick_q[0] = kick_fd)
    cdef readonly int nqueues            # forwarding threads of run_all (set_queues)
    cdef bint mt                         # several threads: counters outside the lock atomic
    cdef volatile uint64_t gen           # bumped by every add/remove_network
    cdef volatile int stopping
    cdef uint32_t failed_vni             # network whose TAP failed (single-thread mode)
    cdef readonly uint64_t busy_poll_ns  # keep polling this long after the last packet
    cdef trace_t tr
    cdef txbuf sim_tx
    cdef rxbuf sim_rx
    cdef readonly bint offload           # TAP with virtio-net header, UDP socket pool, GRO
    cdef int npool                       # IPv4 pool sockets (npool6: IPv6)
    cdef int pool_fd[MAX_POOL]
    cdef uint16_t pool_port[MAX_POOL]
    cdef int npool6
    cdef int pool_fd6[MAX_POOL]
    cdef uint16_t pool_port6[MAX_POOL]
    cdef int udp_gso                     # UDP_SEGMENT works (cleared on the first refusal)
    cdef int udp_gso6                    # ... on the IPv6 sockets

    def __cinit__(self):
        cdef int i
        pthread_mutex_init(&self.lock, NULL)
        self.stop_fd = -1
        self.kick_fd = -1
        for i in range(MAX_QUEUES):
            self.kick_q[i] = -1
        self.nqueues = 1
        self.raw6_fd = -1
        trace_init(&self.tr, TRACE_RING)

    def __init__(self, local_ip, port=4789, *, bint strict=True, bint flood=False,
                 srcport=(32768, 61000), ttl=64, batch=64, underlay_mtu=1500,
                 busy_poll_us=0, bint offload=False, bint udp6zerocsumtx=False):
        lo, hi = srcport
        if not (_is_int(lo) and _is_int(hi) and 0 < lo < hi <= 65536):
            raise ValueError(f"bad source port range {lo}-{hi}: want 1 <= min < max <= 65536")
        _int_in("batch", batch, 1, MAX_BATCH)
        _int_in("ttl", ttl, 1, 255)
        _int_in("underlay MTU", underlay_mtu, 576, 65535)
        _int_in("busy_poll_us", busy_poll_us, 0, 1000000)
        v4, v6 = _addr.check_locals(local_ip)
        self.has4, self.has6 = v4 is not None, v6 is not None
        self.local_ip = _addr.ip_to_int(v4) if v4 is not None else 0
        self.local_ip6 = v6
        if v6 is not None:
            a6 = _addr.ip6_to_int(v6).to_bytes(16, "big")
            memcpy(self.local6, <char *>a6, 16)
        self.udp6zerocsumtx = udp6zerocsumtx
        self.port = _addr.check_port(port)
        self.sport_lo, self.sport_hi = lo, hi
        self.ttl, self.batch, self.strict, self.flood = ttl, batch, strict, flood
        self.underlay_mtu = underlay_mtu
        self.rx_max_inner = underlay_mtu - OUTER_HLEN
        self.max_inner = underlay_mtu - (OUTER6_HLEN if self.has6 else OUTER_HLEN)
        self.busy_poll_ns = busy_poll_us * 1000
        self.offload = offload
        self.udp_gso = 1
        self.udp_gso6 = 1
        self.npool = 0
        self.npool6 = 0
        self.stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        self.kick_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if self.stop_fd < 0 or self.kick_fd < 0:
            raise OSError(errno, "eventfd failed")
        self.kick_q[0] = self.kick_fd
        if (txbuf_init(&self.sim_tx, self.batch, self._tx_slot(), offload) < 0
                or rxbuf_init(&self.sim_rx, self.batch, self._rx_slot(), offload) < 0):
            raise MemoryError()

    def set_udp_pool(self, fds, ports, int family=4, bint flowinfo=False):
        """Offloads on: the UDP sockets datagrams leave from (one per outer source port), for
        VTEPs of `family` (4 or 6). The inner flow hash picks one, so a flow keeps its port.
        fds may be -1 (simulation). flowinfo (IPv6): the sockets have IPV6_FLOWINFO_SEND, so
        each datagram carries the inner flow's label (as the kernel's vxlan does)."""
        if not self.offload:
            raise ValueError("a UDP socket pool needs offload=True")
        if family not in (4, 6):
            raise ValueError(f"family must be 4 or 6, got {family!r}")
        if not (self.has6 if family == 6 else self.has4):
            raise ValueError(f"an IPv{family} pool needs an IPv{family} local address")
        fds, ports = list(fds), list(ports)
        if not 1 <= len(ports) <= MAX_POOL or len(fds) != len(ports):
            raise ValueError(f"want 1..{MAX_POOL} sockets with one port each")
        for i in range(len(ports)):
            _addr.check_port(ports[i])
        for i in range(len(ports)):
            if family == 4:
                self.pool_fd[i] = fds[i]
                self.pool_port[i] = ports[i]
            else:
                self.pool_fd6[i] = fds[i]
                self.pool_port6[i] = ports[i]
        if family == 4:
            self.npool = len(ports)
        else:
            self.npool6 = len(ports)
            self.flowinfo6 = flowinfo

    def set_queues(self, int n):
        """Multi-queue mode: n run_all threads (queue 0..n-1), each reading its own queue of
        every TAP and its own underlay socket (fastpath/queues.pxd). Call before forwarding."""
        cdef int i
        if not 1 <= n <= MAX_QUEUES:
            raise ValueError(f"queues must be in 1..{MAX_QUEUES}, got {n!r}")
        for i in range(1, n):
            if self.kick_q[i] < 0:
                self.kick_q[i] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
                if self.kick_q[i] < 0:
                    raise OSError(errno, "eventfd failed")
        self.nqueues = n
        self.mt = n > 1

    def set_raw6(self, int fd):
        """Offloads off: the raw IPv6 socket (IPPROTO_RAW, header included) that datagrams
        to IPv6 VTEPs leave on (the raw IPv4 socket is the loops' raw_fd)."""
        if not self.has6:
            raise ValueError("a raw IPv6 socket needs an IPv6 local address")
        self.raw6_fd = fd

    def udp_pool(self, int family=4):
        if family == 6:
            return [self.pool_port6[i] for i in range(self.npool6)]
        return [self.pool_port[i] for i in range(self.npool)]

    def offload_state(self):
        """What the data path does with offloads (for stats)."""
        st = {"offload": bool(self.offload), "udp_gso": bool(self.offload and self.udp_gso),
              "pool_ports": self.udp_pool()}
        if self.has6:
            st["udp_gso6"] = bool(self.offload and self.udp_gso6)
            st["pool_ports6"] = self.udp_pool(6)
        return st

    def locals(self):
        """The local underlay addresses: [IPv4?, IPv6?]."""
        return ([_addr.int_to_ip(self.local_ip)] if self.has4 else []) + (
            [self.local_ip6] if self.has6 else [])

    def __dealloc__(self):
        cdef int i
        for i in range(self.nnets):
            net_free(self.nets[i])
            self.nets[i] = NULL
        txbuf_free(&self.sim_tx)
        rxbuf_free(&self.sim_rx)
        if self.stop_fd >= 0:
            close(self.stop_fd)
        for i in range(MAX_QUEUES):
            if self.kick_q[i] >= 0:
                close(self.kick_q[i])
        trace_free(&self.tr)
        pthread_mutex_destroy(&self.lock)

    cdef size_t _tx_slot(self):
        if self.offload:        # frame at HEADROOM, its virtio-net header just before it
            return (HEADROOM + GSO_MAX_FRAME + 1 + 63) & ~(<size_t>63)
        return (HEADROOM + self.max_inner + 1 + 63) & ~(<size_t>63)

    cdef size_t _rx_slot(self):
        # a kernel sender's tunnel GSO packet arrives whole over a veth: room for 64 KB
        # (offloads off too, where it is cut into segments here)
        return RX_GRO_SLOT

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

    cdef net_t *_lock_net(self, vni) except NULL:
        """Take the table lock (without the GIL: a forwarding thread may hold it) and find
        network vni; the caller unlocks. KeyError/ValueError (unlocked) as _net."""
        with nogil:
            pthread_mutex_lock(&self.lock)
        try:
            return self._net(vni)
        except BaseException:
            pthread_mutex_unlock(&self.lock)
            raise

    def add_network(self, vni, int tap_fd=-1, queue_fds=()):
        """Add the network `vni`, whose frames come from / go to `tap_fd`; a multi-queue
        TAP's other queues in queue_fds (queue 1, 2, ...)."""
        cdef uint32_t v = _addr.check_vni(vni)
        cdef net_t *n = NULL
        cdef int i
        cdef uint64_t drain
        queue_fds = [int(x) for x in queue_fds]
        if len(queue_fds) + 1 > MAX_QUEUES:
            raise ValueError(f"at most {MAX_QUEUES} TAP queues")
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
                net_tables_init(n)
                n.wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
                if n.wake_fd < 0:
                    net_free(n)
                    raise OSError(errno, "eventfd failed")
                self.nets[self.nnets] = n
                self.nnets += 1
            memset(n.c, 0, sizeof(n.c))
            n.tx_wakeups = n.tx_batches = 0
            read(n.wake_fd, &drain, 8)           # a reused slot: forget its removal wake-up
            n.vni = v
            n.tap_fd = tap_fd
            n.qfd[0] = tap_fd
            for i in range(len(queue_fds)):
                n.qfd[i + 1] = queue_fds[i]
            n.nq = 1 + len(queue_fds)
            n.active = 1
            self._networks_changed(NULL)
        finally:
            pthread_mutex_unlock(&self.lock)

    cdef void _networks_changed(self, net_t *removed) noexcept nogil:
        """Caller holds the lock. run_all re-reads the network set when gen moves (kick_fd
        wakes it from poll); a removed network's run_tx loop wakes on its wake_fd and ends."""
        cdef uint64_t one = 1
        cdef int i
        self.gen += 1
        for i in range(self.nqueues):
            write(self.kick_q[i], &one, 8)
        if removed != NULL:
            write(removed.wake_fd, &one, 8)

    def remove_network(self, vni):
        """Deactivate a network and empty its tables (its memory is kept: threads may hold it)."""
        cdef net_t *n = self._lock_net(vni)
        try:
            n.active = 0
            n.tap_fd = -1
            n.nq = 0
            net_clear(n)
            self._networks_changed(n)
        finally:
            pthread_mutex_unlock(&self.lock)

    def networks(self):
        return sorted(self.nets[i].vni for i in range(self.nnets) if self.nets[i].active)

    # ---- tables (control side; each call is one edit under the lock) ------------------------
    def _vtep_key(self, str vtep):
        """The 128-bit key of a VTEP address; refused if this switch has no local address
        of its family (it could never be reached)."""
        k = _addr.vtep_key(vtep)
        if _addr.key_is_v4(k) and not self.has4:
            raise ValueError(f"VTEP {vtep} is IPv4 but this agent has no IPv4 local address "
                             f"(--local {self.local_ip6}); give --local an IPv4 address too")
        if not _addr.key_is_v4(k) and not self.has6:
            raise ValueError(f"VTEP {vtep} is IPv6 but this agent has no IPv6 local address "
                             f"(--local {_addr.int_to_ip(self.local_ip)}); give --local an "
                             "IPv6 address too")
        return k

    def fdb_add(self, vni, str mac, str vtep, port=None):
        """MAC -> remote VTEP (replaces an existing entry). port: the VTEP's UDP port."""
        cdef uint64_t m = _addr.check_unicast_mac(mac)
        k = self._vtep_key(vtep)
        cdef uint64_t hi = k >> 64, lo = k & 0xFFFFFFFFFFFFFFFF
        cdef uint16_t p = _addr.check_port(self.port if port is None else port)
        cdef u64map_slot *s
        cdef size_t idx
        n = self._lock_net(vni)
        try:
            s = u64map_find(&n.fdb, m)
            idx = vtep_ref(n, hi, lo, p)
            if s != NULL:
                vtep_unref(n, s.value)
            u64map_put(&n.fdb, m, idx)
        finally:
            pthread_mutex_unlock(&self.lock)

    def fdb_del(self, vni, str mac) -> bool:
        cdef uint64_t m = _addr.mac_to_int(mac)
        cdef u64map_slot *s
        n = self._lock_net(vni)
        try:
            s = u64map_find(&n.fdb, m)
            if s == NULL:
                return False
            vtep_unref(n, s.value)
            u64map_del(&n.fdb, m)
            return True
        finally:
            pthread_mutex_unlock(&self.lock)

    def neigh_add(self, vni, str ip, str mac):
        """IPv4 or IPv6 -> MAC, for ARP / neighbour suppression (replaces an existing entry)."""
        cdef uint64_t m = _addr.check_unicast_mac(mac)
        fam, a = _addr.neigh_ip(ip)
        cdef uint64_t hi = a >> 64, lo = a & 0xFFFFFFFFFFFFFFFF
        cdef net_t *n = self._lock_net(vni)
        try:
            if fam == 4:
                u64map_put(&n.neigh, lo, m)
            else:
                u128map_put(&n.neigh6, hi, lo, m)
        finally:
            pthread_mutex_unlock(&self.lock)

    def neigh_del(self, vni, str ip) -> bool:
        fam, a = _addr.neigh_ip(ip)
        cdef uint64_t hi = a >> 64, lo = a & 0xFFFFFFFFFFFFFFFF
        cdef net_t *n = self._lock_net(vni)
        try:
            if fam == 4:
                return u64map_del(&n.neigh, lo)
            return u128map_del(&n.neigh6, hi, lo)
        finally:
            pthread_mutex_unlock(&self.lock)

    def fdb(self, vni):
        """[(mac, vtep, port)] sorted by MAC."""
        cdef size_t i
        out = []
        n = self._lock_net(vni)
        try:
            for i in range(n.fdb.cap):
                if n.fdb.slots[i].state == 1:
                    v = &n.vteps[n.fdb.slots[i].value]
                    out.append((n.fdb.slots[i].key, v.hi, v.lo, v.port))
        finally:
            pthread_mutex_unlock(&self.lock)
        return [(_addr.int_to_mac(m), _addr.key_to_ip((hi << 64) | lo), p)
                for m, hi, lo, p in sorted(out)]

    def neigh(self, vni):
        """[(ip, mac)]: IPv4 sorted by address, then IPv6 sorted by address."""
        cdef size_t i
        out, out6 = [], []
        n = self._lock_net(vni)
        try:
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
        cdef net_t *n = self._lock_net(vni)
        try:
            return {"fdb": n.fdb.used, "neigh": n.neigh.used + n.neigh6.used,
                    "vteps": n.nvteps}
        finally:
            pthread_mutex_unlock(&self.lock)

    def vteps(self, vni):
        """Per remote VTEP: address, port, FDB entries using it, and traffic counters."""
        cdef size_t i
        out = []
        n = self._lock_net(vni)
        try:
            for i in range(n.nvslots):
                v = &n.vteps[i]
                if v.refcnt:
                    out.append({"vtep": _addr.key_to_ip((<object>v.hi << 64) | v.lo),
                                "port": v.port,
                                "fdb_entries": v.refcnt,
                                "tx_packets": v.tx_packets, "tx_bytes": v.tx_bytes,
                                "rx_packets": v.rx_packets, "rx_bytes": v.rx_bytes})
        finally:
            pthread_mutex_unlock(&self.lock)
        return sorted(out, key=lambda d: _addr.vtep_key(d["vtep"]))

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
        cdef uint32_t h, hl
        cdef int reason
        cdef vnet_hdr vh
        cdef gso_info g
        cdef bint isgso
        b.nmsg = 0
        b.ntapw = 0
        for i in range(b.n):
            base = b.slab + i * b.slot
            f = base + HEADROOM
            len_ = b.lens[i]
            d = &b.dec[i]
            d.vni = n.vni
            d.vtep = 0
            d.vhi = d.vlo = 0
            d.copies = 0
            d.reason = 0
            n.c[C_TAP_RX_PKTS] += 1
            n.c[C_TAP_RX_BYTES] += len_
            if len_ < ETH_HLEN:
                drop(n.c, d, D_TX_SHORT)
                continue
            isgso = 0
            if self.offload:
                # the virtio-net header sits in front of the frame (read with it); parse it
                # before the VXLAN header overwrites it
                vnet_parse(f - VNET_HLEN, &vh)
                r = vnet_check(&vh, len_)
                if r < 0:
                    drop(n.c, d, _off_reason(r))
                    continue
                if vh.gso_type != VNET_GSO_NONE:
                    if len_ > GSO_MAX_FRAME:
                        drop(n.c, d, D_TX_TOO_BIG)
                        continue
                    r = gso_prepare(&vh, f, len_, <uint32_t>self.max_inner, &g)
                    if r < 0:
                        drop(n.c, d, _off_reason(r))
                        continue
                    isgso = 1
            if not isgso and len_ > self.max_inner:
                drop(n.c, d, D_TX_TOO_BIG)
                continue
            if self.offload and not isgso and vh.flags & VNET_F_NEEDS_CSUM:
                csum_complete(f, len_, &vh)
                n.c[C_CSUM_COMPLETED] += 1
            r = ARP_NOT_REQUEST                        # a GSO frame is never ARP or ND
            if not isgso:
                r = arp_reduce(f, len_, &n.neigh)
                if r == ARP_NOT_REQUEST:
                    r = nd_reduce(f, len_, &n.neigh6)  # IPv6 NS: answered, miss, or a drop
                if r == ARP_ANSWERED or r == ND_ANSWERED:
                    b.lens[i] = ARP_FRAME_LEN if r == ARP_ANSWERED else ND_NA_FRAME_LEN
                    b.tapw[b.ntapw] = i
                    b.ntapw += 1
                    n.c[C_ARP_REPLIED if r == ARP_ANSWERED else C_ND_REPLIED] += 1
                    d.verdict = V_ARP_REPLY if r == ARP_ANSWERED else V_ND_REPLY
                    continue
                if r > ND_MISS:
                    drop(n.c, d, D_ND_TRUNCATED + (r - ND_TRUNCATED))   # same order as nd.pxd
                    continue
            if r == ARP_MISS or r == ND_MISS:
                reason = D_ARP_MISS if r == ARP_MISS else D_ND_MISS
            elif f[0] & 1:
                reason = D_BUM
            else:
                s = u64map_find(&n.fdb, ld_mac(f))
                if s != NULL:
                    v = &n.vteps[s.value]
                    d.verdict = V_ENCAP
                    d.vtep = v.ip
                    d.vhi = v.hi
                    d.vlo = v.lo
                    if self.offload:
                        self._off_frame(n, b, i, f, len_, isgso, &g)
                        self._off_send_to(b, i, f, len_, isgso, &g, v, d)
                        continue
                    h = flow_hash(f, len_)
                    hl = OUTER6_HLEN if v.v6 else OUTER_HLEN
                    self._write_outer(f - hl, v, n.vni, f, len_, h)
                    b.iov[2 * b.nmsg].iov_base = f - hl
                    b.iov[2 * b.nmsg].iov_len = hl + len_
                    b.msgs[b.nmsg].msg_hdr.msg_iovlen = 1
                    b.msg_pkt[b.nmsg] = i
                    self._raw_dst(b, b.nmsg, v)
                    b.nmsg += 1
                    v.tx_packets += 1
                    v.tx_bytes += hl + len_
                    d.copies = 1
                    continue
                reason = D_UNKNOWN_UNICAST
            if self.flood and n.nvteps:
                if self.offload:
                    self._off_frame(n, b, i, f, len_, isgso, &g)
                    for r in range(<int>n.nvslots):
                        if n.vteps[r].refcnt:
                            self._off_send_to(b, i, f, len_, isgso, &g, &n.vteps[r], d)
                    n.c[C_FLOODED] += 1
                    d.verdict = V_FLOOD
                else:
                    self._flood(n, b, i, f, len_, d)
            else:
                drop(n.c, d, reason)

    cdef inline void _write_outer(self, uint8_t *hdr, vtep_t *v, uint32_t vni, uint8_t *f,
                                  uint32_t len_, uint32_t h) noexcept nogil:
        """The outer headers of frame f to VTEP v at hdr: IPv4 (36 bytes, headers.pxd) or
        IPv6 (56, outer6.pxd); source port and flow label from the inner flow hash h."""
        cdef uint16_t sport = source_port(h, self.sport_lo, self.sport_hi)
        if v.v6:
            write_outer6(hdr, self.local6, v.a6, sport, v.port, vni, f, len_, self.ttl,
                         flow_label(h), self.udp6zerocsumtx)
        else:
            write_outer(hdr, self.local_ip, v.ip, sport, v.port, vni, len_, self.ttl)

    cdef inline void _raw_dst(self, txbuf *b, size_t m, vtep_t *v) noexcept nogil:
        """Message m goes to v on the raw socket of v's family (port 0: raw sockets)."""
        b.msgs[m].msg_hdr.msg_namelen = vtep_sockaddr(v, &b.addrs[m], 0, 0)
        b.msg_v6[m] = v.v6

    cdef void _off_frame(self, net_t *n, txbuf *b, int i, uint8_t *f, uint32_t len_,
                         bint isgso, gso_info *g) noexcept nogil:
        """Offloads on: the UDP payloads of frame i, once for all its destinations. A plain
        frame gets its VXLAN header in the headroom; a GSO frame is cut into segments, each
        [VXLAN][inner headers] in the segment area + its payload where it is in the slab."""
        cdef uint32_t k
        cdef uint8_t *h
        cdef iovec *io
        if not isgso:
            write_vxlan(f - VXLAN_HLEN, n.vni)
            return
        for k in range(g.nseg):
            h = b.seghdr + (<size_t>i * GSO_MAX_SEGS + k) * SEGH
            io = b.segiov + 2 * (<size_t>i * GSO_MAX_SEGS + k)
            write_vxlan(h, n.vni)
            io[1].iov_len = gso_seg_header(f, g, k, h + VXLAN_HLEN)
            io[1].iov_base = f + g.hlen + k * g.mss
            io[0].iov_base = h
            io[0].iov_len = VXLAN_HLEN + g.hlen
        n.c[C_GSO_FRAMES] += 1
        n.c[C_GSO_SEGMENTS] += g.nseg

    cdef void _off_send_to(self, txbuf *b, int i, uint8_t *f, uint32_t len_, bint isgso,
                           gso_info *g, vtep_t *v, decision *d) noexcept nogil:
        """Offloads on: the messages that carry frame i (prepared by _off_frame) to VTEP v,
        on the flow's pool socket: one plain datagram, or the segments in UDP_SEGMENT sends
        of at most UDP_GSO_MAX_SEGS equal-size datagrams (64 KB per send)."""
        cdef int sock = 0
        cdef uint32_t k = 0, cnt, per, dgram, j, wire
        cdef uint32_t h = flow_hash(f, len_)
        cdef uint32_t iph = IPV6_HLEN if v.v6 else IPV4_HLEN
        cdef int npool = self.npool6 if v.v6 else self.npool
        cdef size_t m
        cdef cmsghdr *cm
        cdef uint16_t gs
        if npool > 1:
            sock = <int>(((<uint64_t>h) * <uint32_t>npool) >> 32)
        if not isgso:
            if b.nmsg == b.cap:
                return
            m = b.nmsg
            b.iov[2 * m].iov_base = f - VXLAN_HLEN
            b.iov[2 * m].iov_len = VXLAN_HLEN + len_
            self._off_msg(b, m, &b.iov[2 * m], 1, 0, i, sock, v, h)
            b.msg_segs[m] = 1
            b.msg_wire[m] = iph + UDP_HLEN + VXLAN_HLEN + len_
            v.tx_packets += 1
            v.tx_bytes += b.msg_wire[m]
            d.copies += 1
            b.nmsg += 1
            return
        dgram = VXLAN_HLEN + g.hlen + g.mss
        per = UDP_GSO_MAX_BYTES // dgram
        if per > UDP_GSO_MAX_SEGS:
            per = UDP_GSO_MAX_SEGS
        if not (self.udp_gso6 if v.v6 else self.udp_gso) or per < 1:
            per = 1
        while k < g.nseg:
            if b.nmsg == b.cap:
                return
            cnt = g.nseg - k if g.nseg - k < per else per
            m = b.nmsg
            self._off_msg(b, m, b.segiov + 2 * (<size_t>i * GSO_MAX_SEGS + k), 2 * cnt,
                          dgram if cnt > 1 else 0, i, sock, v, h)
            wire = 0
            for j in range(cnt):
                wire += (iph + UDP_HLEN + VXLAN_HLEN + g.hlen
                         + b.segiov[2 * (<size_t>i * GSO_MAX_SEGS + k + j) + 1].iov_len)
            b.msg_segs[m] = cnt
            b.msg_wire[m] = wire
            v.tx_packets += cnt
            v.tx_bytes += wire
            d.copies += cnt
            b.nmsg += 1
            k += cnt

    cdef inline void _off_msg(self, txbuf *b, size_t m, iovec *iov, size_t niov, uint32_t gso,
                              int i, int sock, vtep_t *v, uint32_t h) noexcept nogil:
        cdef cmsghdr *cm
        cdef uint16_t gs = <uint16_t>gso
        b.msgs[m].msg_hdr.msg_iov = iov
        b.msgs[m].msg_hdr.msg_iovlen = niov
        if gso:
            cm = <cmsghdr *>(b.cmsg + m * CMSG_STRIDE)
            cm.cmsg_level = SOL_UDP
            cm.cmsg_type = UDP_SEGMENT
            cm.cmsg_len = CMSG_LEN(sizeof(uint16_t))
            memcpy(CMSG_DATA(cm), &gs, sizeof(uint16_t))
            b.msgs[m].msg_hdr.msg_control = cm
            b.msgs[m].msg_hdr.msg_controllen = CMSG_SPACE(sizeof(uint16_t))
        else:
            b.msgs[m].msg_hdr.msg_control = NULL
            b.msgs[m].msg_hdr.msg_controllen = 0
        b.msg_pkt[m] = i
        b.msg_sock[m] = sock
        b.msg_v6[m] = v.v6
        b.msgs[m].msg_hdr.msg_namelen = vtep_sockaddr(
            v, &b.addrs[m], v.port, flow_label(h) if v.v6 and self.flowinfo6 else 0)

    cdef void _flood(self, net_t *n, txbuf *b, int i, uint8_t *f, uint32_t len_,
                     decision *d) noexcept nogil:
        """Head-end replication: one datagram per VTEP, header from b.hdrs + the same frame."""
        cdef size_t j
        cdef vtep_t *v
        cdef uint8_t *hdr
        cdef uint32_t h = flow_hash(f, len_)
        cdef uint32_t hl
        for j in range(n.nvslots):
            v = &n.vteps[j]
            if v.refcnt == 0 or b.nmsg == b.cap:
                continue
            hdr = b.hdrs + b.nmsg * HDRS_STRIDE
            hl = OUTER6_HLEN if v.v6 else OUTER_HLEN
            self._write_outer(hdr, v, n.vni, f, len_, h)
            b.iov[2 * b.nmsg].iov_base = hdr
            b.iov[2 * b.nmsg].iov_len = hl
            b.iov[2 * b.nmsg + 1].iov_base = f
            b.iov[2 * b.nmsg + 1].iov_len = len_
            b.msgs[b.nmsg].msg_hdr.msg_iovlen = 2
            b.msg_pkt[b.nmsg] = i
            self._raw_dst(b, b.nmsg, v)
            b.nmsg += 1
            v.tx_packets += 1
            v.tx_bytes += hl + len_
            d.copies += 1
        n.c[C_FLOODED] += 1
        d.verdict = V_FLOOD

    cdef void rx_classify(self, rxbuf *b) noexcept nogil:
        """Classify the b.nd datagrams (see rx_split) one by one, each as without offloads."""
        cdef int i
        cdef long vni
        cdef uint8_t *p
        cdef uint8_t *inner
        cdef uint32_t len_, src
        cdef decision *d
        cdef net_t *n
        cdef u128map_slot *s
        for i in range(b.nd):
            p = b.dp[i]
            len_ = b.dlen[i]
            src = b.dsrc[i]
            d = &b.dec[i]
            d.vni = 0
            d.vtep = src
            d.vhi = b.dsrc_hi[i]
            d.vlo = b.dsrc_lo[i]
            d.copies = 0
            d.reason = 0
            b.out_fd[i] = -1
            b.out_net[i] = NULL
            b.dsuper[i] = 0
            if b.dext[i]:       # IPv6 with extension headers / from fragments (rx_cmsgs)
                drop(self.g, d, D_IP6_EXT_HDR if b.dext[i] == 1 else D_IP6_FRAGMENT)
                continue
            if b.dtrunc[i] or len_ > VXLAN_HLEN + self.rx_max_inner:
                # offloads: a kernel sender's tunnel GSO packet arrives whole (no UDP_GRO
                # message): an inner TCP super-frame goes to the TAP as one GSO frame
                if (not b.dtrunc[i]
                        and gso_rx_super(p + VXLAN_HLEN, len_ - VXLAN_HLEN,
                                         <uint32_t>self.max_inner, &b.dvh[i]) == 0):
                    b.dsuper[i] = 1
                else:
                    drop(self.g, d, D_RX_TOO_BIG)
                    continue
            vni = parse_vxlan(p, len_, self.strict)
            if vni < 0:
                drop(self.g, d, D_TRUNCATED if vni == VX_TRUNCATED else
                      (D_NO_I_FLAG if vni == VX_NO_I_FLAG else D_RESERVED))
                continue
            d.vni = <uint32_t>vni
            n = self._find(<uint32_t>vni)
            if n == NULL:
                drop(self.g, d, D_UNKNOWN_VNI)
                continue
            if len_ < VXLAN_HLEN + ETH_HLEN:
                drop(n.c, d, D_INNER_SHORT)
                continue
            s = u128map_find(&n.vtep_by_ip, b.dsrc_hi[i], b.dsrc_lo[i])
            if s == NULL and self.strict:
                drop(n.c, d, D_SPOOFED)
                continue
            inner = p + VXLAN_HLEN
            if inner[6] & 1 or ld_mac(inner + 6) == 0:
                drop(n.c, d, D_BAD_INNER_SRC)
                continue
            n.c[C_UDP_RX_PKTS] += 1
            n.c[C_UDP_RX_BYTES] += len_
            if s != NULL:
                n.vteps[s.value].rx_packets += 1
                n.vteps[s.value].rx_bytes += len_
            b.out_fd[i] = q_fd(n.qfd, n.nq, b.q)
            b.out_net[i] = n
            d.verdict = V_DELIVER
            d.copies = 1


    def trace_arm(self, dict points, vni=0, mac=None, ip=None, int snaplen=65535):
        """Start recording: points = {name: count} with names from fastpath.trace.POINTS
        (count -1 = unlimited). Filter: vni (0 = any), inner MAC (src or dst), inner IPv4
        address (IPv4 src/dst or ARP sender/target). Replaces the previous arming."""
        trace_configure(&self.tr, points, vni, mac, ip, snaplen)

    def trace_disarm(self):
        with nogil:
            trace_stop(&self.tr)

    def trace_read(self, size_t max_bytes=1 << 20) -> bytes:
        """Take whole records out of the ring (up to max_bytes; at least one record fits, as a
        record is at most 40 + 65535 bytes). The GIL is not held while the ring is locked."""
        return trace_read_records(&self.tr, max_bytes)

    def trace_status(self):
        return trace_state(&self.tr)

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
        if self.offload:        # a GSO frame: up to 3 UDP_SEGMENT sends per destination
            need *= 4 if (self.udp_gso and self.udp_gso6) else GSO_MAX_SEGS
        if txbuf_reserve(b, need) < 0:
            pthread_mutex_unlock(&self.lock)
            return -1
        tracing = self.tr.active
        if tracing:
            trace_tx_pre(&self.tr, n.vni, b)
        self.tx_classify(n, b)
        if tracing:
            trace_tx_post(&self.tr, n.vni, b, self.offload, self.local_ip, self.local6, self.ttl,
                          self.udp6zerocsumtx, self.pool_port, self.pool_port6)
        pthread_mutex_unlock(&self.lock)
        return 0

    cdef int _rx_group(self, rxbuf *b, int i, int *end, gro_stats *st) noexcept nogil:
        """Offloads on: the datagrams from i on delivered to the same network as datagram i
        (up to the first for another network; *end: where the group ends), coalesced
        (gro.pxd). Returns the number of runs in b.gruns; each is one TAP write."""
        cdef net_t *net = b.out_net[i]
        cdef int j = i, k = 0
        while j < b.nd and (b.out_net[j] == NULL or (b.out_net[j] == net and not b.dsuper[j])):
            if b.out_net[j] == net:
                b.gsegs[k].p = b.dp[j] + VXLAN_HLEN
                b.gsegs[k].len = b.dlen[j] - VXLAN_HLEN
                b.gidx[k] = j
                k += 1
            j += 1
        end[0] = j
        memset(st, 0, sizeof(gro_stats))
        return gro_coalesce(b.gsegs, k, b.gruns, b.gorder, GRO_MAX_FRAME, st)

    cdef ssize_t _rx_super(self, rxbuf *b, int i, sink *sk) noexcept nogil:
        """Write datagram i's inner super-frame (dsuper) with its GSO header (_tap_write).
        Counts it as a GRO frame of its segments."""
        cdef net_t *net = b.out_net[i]
        cdef uint32_t ilen = b.dlen[i] - VXLAN_HLEN
        cdef ssize_t w
        vnet_build(b.vh, &b.dvh[i])
        b.giov[0].iov_base = b.vh
        b.giov[0].iov_len = VNET_HLEN
        b.giov[1].iov_base = b.dp[i] + VXLAN_HLEN
        b.giov[1].iov_len = ilen
        w = _tap_write(sk, b.out_fd[i], b.giov, 2, net.vni)
        if w < 0:
            cadd(&net.c[D_TAP_WRITE_ERROR], 1, self.mt)
            return w
        cadd(&net.c[C_TAP_TX_PKTS], 1, self.mt)
        cadd(&net.c[C_TAP_TX_BYTES], ilen, self.mt)
        cadd(&net.c[C_GRO_FRAMES], 1, self.mt)
        cadd(&net.c[C_GRO_SEGMENTS], (ilen - b.dvh[i].hdr_len + b.dvh[i].gso_size - 1)
             // b.dvh[i].gso_size, self.mt)
        return w

    cdef uint32_t _plain_prepare(self, rxbuf *b, int i) noexcept nogil:
        """Offloads off: datagram i is written without a virtio-net header. A partial inner
        checksum (kernel sender over a veth) is completed (counted); an inner super-frame
        (dsuper) will be cut into segments (gso.pxd). Returns the number of TAP writes."""
        cdef uint8_t *f = b.dp[i] + VXLAN_HLEN
        cdef uint32_t ilen = b.dlen[i] - VXLAN_HLEN
        if b.dsuper[i]:
            gso_prepare(&b.dvh[i], f, ilen, <uint32_t>self.max_inner, &b.sg)
            return b.sg.nseg
        if csum_rx_fix(f, ilen, 0) == CSUM_COMPLETED:
            cadd(&b.out_net[i].c[C_CSUM_COMPLETED], 1, self.mt)
        return 1

    cdef int _plain_piece(self, rxbuf *b, int i, uint32_t k) noexcept nogil:
        """Write k of datagram i (after _plain_prepare) into b.giov; returns its iov count."""
        cdef uint8_t *f = b.dp[i] + VXLAN_HLEN
        if not b.dsuper[i]:
            b.giov[0].iov_base = f
            b.giov[0].iov_len = b.dlen[i] - VXLAN_HLEN
            return 1
        b.giov[1].iov_len = gso_seg_header(f, &b.sg, k, b.shdr)
        b.giov[1].iov_base = f + b.sg.hlen + k * b.sg.mss
        b.giov[0].iov_base = b.shdr
        b.giov[0].iov_len = b.sg.hlen
        return 2

    cdef inline void _gro_count(self, net_t *net, gro_stats *st) noexcept nogil:
        cadd(&net.c[C_GRO_FRAMES], st.gro_frames, self.mt)
        cadd(&net.c[C_GRO_SEGMENTS], st.gro_segs, self.mt)
        cadd(&net.c[C_CSUM_COMPLETED], st.csum_completed, self.mt)

    cdef void _rx_batch(self, rxbuf *b) noexcept nogil:
        """Classify the b.n buffers received (split into datagrams first): under the table
        lock, with the trace hooks."""
        cdef int tracing
        rx_split(b)
        pthread_mutex_lock(&self.lock)
        tracing = self.tr.active
        b.traced = tracing
        if tracing:
            trace_rx_pre(&self.tr, b)
        self.rx_classify(b)
        if tracing:
            trace_rx_post(&self.tr, b, self.offload)
        pthread_mutex_unlock(&self.lock)

    # ---- simulation: the loops' classification and delivery over Python buffers (sim.pyx) ---
    def process_tap(self, vni, frames):
        """Classify frames as if read from the TAP of `vni`.

        Returns (outputs, decisions): outputs in emission order, each
        ("udp", dst_ip, dst_port, datagram_bytes) with the full outer IPv4 packet, or
        ("tap", vni, frame_bytes) for an ARP reply; decisions: one dict per frame.
        With offloads each frame starts with its 10-byte virtio-net header (what read() on
        the TAP returns); outputs: ("udp", dst_ip, dst_port, src_port, udp_payload) per wire
        datagram (a UDP_SEGMENT send cut at its segment size, as the kernel does), ("tap",
        vni, virtio_header + frame) per ARP reply.
        """
        cdef txbuf *b = &self.sim_tx
        cdef net_t *n = self._net(vni)   # unknown VNI: KeyError even with no frames; a network
        cdef int r                       # is never freed, so n is safe to hold outside the lock
        frames = [bytes(x) for x in frames]
        if self.offload and ((self.has4 and self.npool == 0) or (self.has6 and self.npool6 == 0)):
            raise ValueError("offloads on: set_udp_pool() first")
        out, decs = [], []
        for start in range(0, len(frames), self.batch):
            tx_load(b, frames[start:start + self.batch], self.offload, self.max_inner)
            with nogil:
                r = self._tx_batch(n, b)
            if r < 0:
                raise MemoryError()
            tx_collect(b, n, vni, self.offload, self.pool_port, self.pool_port6, out)
            decs.extend(decision_dicts(b.dec, b.n))
        return out, decs

    def process_udp(self, datagrams):
        """Classify UDP payloads as if received: datagrams = [(src_ip, payload_bytes)], with
        offloads also (src_ip, payload, gso_size): a UDP_GRO buffer of gso_size datagrams.

        Returns (outputs, decisions: one per datagram); outputs are ("tap", vni, bytes): the
        inner frame, with offloads the virtio-net header + frame of each TAP write.
        """
        cdef rxbuf *b = &self.sim_rx
        cdef sink sk
        items = rx_items(datagrams, self.offload)
        out, decs = [], []
        memset(&sk, 0, sizeof(sink))
        try:
            for start in range(0, len(items), self.batch):
                rx_load(b, items[start:start + self.batch], self.offload)
                with nogil:
                    self._rx_batch(b)
                    self._rx_deliver(b, &sk)
                if sk.failed:
                    raise MemoryError()
                sink_take(&sk, out)
                decs.extend(decision_dicts(b.dec, b.nd))
        finally:
            free(sk.buf)
        return out, decs

    # ---- the forwarding loops -----------------------------------------------------------------
    def stop(self):
        """Wake and end every forwarding loop of this switch (they return to their callers)."""
        cdef uint64_t one = 1
        self.stopping = 1
        write(self.stop_fd, &one, 8)

    def _check_pool(self):
        if self.offload and ((self.has4 and self.npool == 0)
                             or (self.has6 and self.npool6 == 0)):
            raise ValueError("offloads on: set_udp_pool() before forwarding (once per "
                             "local address family)")

    def run_tx(self, vni, int raw_fd):
        """Forward TAP -> underlay for `vni` until stop(). Releases the GIL throughout.

        raw_fd: a SOCK_RAW/IPPROTO_RAW IPv4 socket (blocking). The network's TAP fd must be
        non-blocking. Returns 0 on stop; raises OSError if the TAP fails.
        """
        cdef net_t *n = self._net(vni)
        cdef txbuf b
        cdef int rc
        self._check_pool()
        if txbuf_init(&b, self.batch, self._tx_slot(), self.offload) < 0:
            txbuf_free(&b)
            raise MemoryError()
        with nogil:
            rc = self._tx_loop(n, raw_fd, &b)
        txbuf_free(&b)
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
        cdef size_t at = HEADROOM
        cdef long total = 0
        cdef iovec wv[2]
        if self.offload:                  # the virtio-net header lands in front of the frame
            readlen = VNET_HLEN + GSO_MAX_FRAME + 1
            at = HEADROOM - VNET_HLEN
        while True:
            tap_fd = q_fd(n.qfd, n.nq, b.q)
            i = 0
            while i < self.batch:
                got = read(tap_fd, b.slab + i * b.slot + at, readlen)
                if got < 0:
                    break
                if self.offload:
                    got = got - VNET_HLEN if got >= VNET_HLEN else 0
                b.lens[i] = <uint32_t>got
                i += 1
            if i == 0:
                if errno != EAGAIN and errno != EINTR:
                    return -errno
                return total
            total += i
            b.n = i
            cadd(&n.tx_batches, 1, self.mt)
            if self._tx_batch(n, b) < 0:
                return -12   # ENOMEM
            if self.offload:
                send_pool(b, n.c, self.npool, self.pool_fd, self.npool6, self.pool_fd6,
                          &self.udp_gso, &self.udp_gso6, self.mt)
                for k in range(b.ntapw):
                    r = b.tapw[k]
                    wv[0].iov_base = b.vh_zero
                    wv[0].iov_len = VNET_HLEN
                    wv[1].iov_base = b.slab + r * b.slot + HEADROOM
                    wv[1].iov_len = b.lens[r]
                    if writev(tap_fd, wv, 2) < 0:
                        cadd(&n.c[D_REPLY_WRITE_ERROR], 1, self.mt)
                if i < self.batch:
                    return total
                max_batches -= 1
                if max_batches == 0:
                    return total
                continue
            send_raw(b, n.c, raw_fd, self.raw6_fd, self.mt)
            for k in range(b.ntapw):
                r = b.tapw[k]
                if write(tap_fd, b.slab + r * b.slot + HEADROOM, b.lens[r]) < 0:
                    cadd(&n.c[D_REPLY_WRITE_ERROR], 1, self.mt)
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
                cadd(&n.tx_wakeups, 1, self.mt)
        return 0

    def run_rx(self, int udp_fd):
        """Forward underlay -> TAPs until stop(). Releases the GIL throughout."""
        cdef rxbuf b
        cdef int rc
        if rxbuf_init(&b, self.batch, self._rx_slot(), self.offload) < 0:
            rxbuf_free(&b)
            raise MemoryError()
        with nogil:
            rc = self._rx_loop(udp_fd, &b)
        rxbuf_free(&b)
        if rc > 0:
            raise OSError(rc, "underlay receive failed")
        return 0

    cdef long _rx_drain(self, int udp_fd, rxbuf *b, int max_batches) noexcept nogil:
        """Receive/classify/deliver batches until the socket is empty; returns datagrams."""
        cdef int i, r
        cdef long total = 0
        while True:
            rxbuf_rearm(b, self.batch, self.offload)
            r = recvmmsg(udp_fd, b.msgs, self.batch, MSG_DONTWAIT, NULL)
            if r <= 0:
                return total
            b.n = r
            for i in range(r):
                b.gso[i] = rx_cmsgs(&b.msgs[i].msg_hdr, &b.mext[i])
            cadd(&self.rx_batches, 1, self.mt)
            self._rx_batch(b)
            total += b.nd
            self._rx_deliver(b, NULL)
            if r < self.batch:
                return total
            max_batches -= 1
            if max_batches == 0:
                return total

    cdef void _rx_deliver(self, rxbuf *b, sink *sk) noexcept nogil:
        """Write the accepted datagrams' inner frames into their networks' TAPs (b.out_fd):
        offloads off, each frame (a super-frame cut into segments); on, a super-frame as it is
        and the rest of a network's run of datagrams coalesced (gro.pxd), one writev per
        frame. sk: process_udp's sink instead of the TAPs (_tap_write)."""
        cdef int i = 0, nr, end, nio, q
        cdef ssize_t w
        cdef gro_stats st
        cdef net_t *net
        while i < b.nd:
            net = b.out_net[i]
            if net == NULL:
                i += 1
                continue
            if not self.offload:
                for q in range(<int>self._plain_prepare(b, i)):
                    nio = self._plain_piece(b, i, q)
                    w = _tap_write(sk, b.out_fd[i], b.giov, nio, net.vni)
                    if w < 0:
                        cadd(&net.c[D_TAP_WRITE_ERROR], 1, self.mt)
                    else:
                        cadd(&net.c[C_TAP_TX_PKTS], 1, self.mt)
                        cadd(&net.c[C_TAP_TX_BYTES], w, self.mt)
                i += 1
                continue
            if b.dsuper[i]:
                self._rx_super(b, i, sk)
                i += 1
                continue
            nr = self._rx_group(b, i, &end, &st)
            self._gro_count(net, &st)
            for q in range(nr):
                nio = gro_iovec(b.gsegs, &b.gruns[q], b.gorder, b.vh, b.giov, b.dcap + 1)
                w = _tap_write(sk, b.out_fd[i], b.giov, nio, net.vni) if nio > 0 else -1
                if w < 0:
                    cadd(&net.c[D_TAP_WRITE_ERROR], 1, self.mt)
                else:
                    cadd(&net.c[C_TAP_TX_PKTS], 1, self.mt)
                    cadd(&net.c[C_TAP_TX_BYTES], b.gruns[q].len, self.mt)
                    if b.traced:
                        trace_run(&self.tr, &self.lock, b, &b.gruns[q], nio)
            i = end

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
                cadd(&self.rx_wakeups, 1, self.mt)
        return 0

    def run_all(self, int raw_fd, int udp_fd, int queue=0):
        """Forward both directions of every network from one thread until stop().

        queue: in multi-queue mode (set_queues(n)), thread `queue` of n: it reads queue
        `queue` of every TAP that has it and the underlay socket udp_fd (its own SO_REUSEPORT
        socket), and writes inbound frames to that queue (fastpath/queues.pxd).

        For small machines: one thread per agent instead of one per direction means fewer
        context switches, and with busy polling no thread hand-off on the latency path.
        Networks added or removed while it runs are picked up between drains (generation
        counter + kick_fd). Releases the GIL throughout.
        """
        cdef txbuf tb
        cdef rxbuf rb
        cdef int rc
        self._check_pool()
        if not 0 <= queue < self.nqueues:
            raise ValueError(f"queue must be in 0..{self.nqueues - 1} (set_queues), got {queue}")
        if (txbuf_init(&tb, self.batch, self._tx_slot(), self.offload) < 0
                or rxbuf_init(&rb, self.batch, self._rx_slot(), self.offload) < 0):
            txbuf_free(&tb)
            rxbuf_free(&rb)
            raise MemoryError()
        tb.q = rb.q = queue
        with nogil:
            rc = self._all_loop(raw_fd, udp_fd, &tb, &rb)
        txbuf_free(&tb)
        rxbuf_free(&rb)
        if rc > 0:
            if self.failed_vni:
                raise OSError(rc, f"TAP read failed on VNI {self.failed_vni}: "
                                  f"{_strerror(rc)} (TAP deleted or down?)")
            raise OSError(rc, f"forwarding failed: {_strerror(rc)}")
        if rc < 0:
            raise MemoryError()
        return 0

    cdef int _all_nets(self, net_t **nets, pollfd *pfd, uint64_t *gen, int q) noexcept nogil:
        """Re-read the active networks whose TAP has queue q (under the lock) into nets[] and
        those queues' fds into pfd[3:]; returns how many. Called when self.gen moved since
        *gen."""
        cdef int i, nn = 0
        cdef uint64_t drain
        read(self.kick_q[q], &drain, 8)
        pthread_mutex_lock(&self.lock)
        gen[0] = self.gen
        for i in range(self.nnets):
            if self.nets[i].active and q_reads(self.nets[i].nq, q):
                nets[nn] = self.nets[i]
                pfd[3 + nn].fd = q_fd(self.nets[i].qfd, self.nets[i].nq, q)
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
        pfd[2].fd = self.kick_q[tb.q]
        pfd[2].events = POLLIN
        nn = self._all_nets(nets, pfd, &gen, tb.q)
        while not self.stopping:
            if gen != self.gen:
                nn = self._all_nets(nets, pfd, &gen, tb.q)
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
                    nn = self._all_nets(nets, pfd, &gen, tb.q)
                    continue
                for i in range(nn):
                    if pfd[3 + i].revents & (POLLERR | POLLNVAL):
                        self.failed_vni = nets[i].vni
                        return 5   # EIO
                cadd(&self.rx_wakeups, 1, self.mt)
        return 0


cdef inline ssize_t _tap_write(sink *sk, int fd, iovec *iov, int nio,
                              uint32_t vni) noexcept nogil:
    """One inbound TAP write: writev on fd, or (simulation, sk not NULL) into the sink."""
    if sk == NULL:
        return writev(fd, iov, nio)
    return sink_put(sk, vni, iov, nio)


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
