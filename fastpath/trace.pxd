# Packet capture and decision trace of the fast path: a byte ring in C memory.
#
# Producers: the forwarding threads, only while tracing is on (the loops test `active` once
# per batch). Consumer: a Python thread (dataplane/trace.py) that drains the ring into pcap
# files and the decision log, so a slow disk never stalls forwarding. When the ring is full, a
# record is dropped and counted (`dropped`); the packet itself is never affected.
#
# Record layout (little endian), see trace_ref.py RECORD for the Python mirror:
#   rec_hdr (40 bytes) + caplen bytes of data, padded to 8 bytes. The data is the packet, or
#   with REC_PEER6 the IPv6 peer (16 bytes) and then the packet (snaplen counts the packet).
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from fastpath.includes.sys cimport pthread_mutex_t

cdef enum:
    # capture points (bit i of `points`)
    TP_TAP_IN = 0        # inner frame read from the TAP (Ethernet)
    TP_UL_OUT = 1        # outer packet sent on the underlay (IPv4/UDP/VXLAN/Ethernet)
    TP_UL_IN = 2         # UDP payload received on the underlay (VXLAN/Ethernet) + source
    TP_TAP_OUT = 3       # inner frame written to the TAP (Ethernet)
    TP_DECISION = 4      # a decision record (verdict, reason, VTEP) + the frame's first bytes
    N_TRACE_POINTS = 5
    REC_PAD = 0xff       # filler at the end of the ring, skipped by the reader
    REC_INBOUND = 1      # rec_hdr.flags bit
    REC_PEER6 = 2        # rec_hdr.flags bit: the data starts with the peer's 16-byte IPv6
                         # address (network order), then the packet; `peer` is 0

cdef packed struct rec_hdr:
    uint32_t rec_len     # whole record incl. header and padding
    uint8_t point
    uint8_t verdict
    uint8_t reason
    uint8_t flags        # bit 0: inbound (underlay -> TAP) packet
    uint64_t ts_ns       # CLOCK_REALTIME
    uint64_t seq         # packet sequence number (per switch)
    uint32_t vni
    uint32_t peer        # VTEP address (host order): destination out, source in
    uint32_t orig_len    # packet length on the wire
    uint16_t caplen
    uint16_t peer_port

cdef struct trace_t:
    pthread_mutex_t lock
    uint8_t *buf
    size_t size
    size_t head          # next write offset
    size_t tail          # next read offset
    size_t used          # bytes in the ring
    int active           # any point armed (read without the lock, once per batch)
    uint64_t left[N_TRACE_POINTS]   # records still wanted per point (0 = point off)
    uint32_t f_vni       # filter: 0 = any
    uint64_t f_mac       # filter: inner src or dst MAC, 2**63 = any
    uint32_t f_ip        # filter: inner IPv4 src/dst or ARP sender/target, 0 = any
    uint16_t snaplen
    uint64_t recorded
    uint64_t dropped
    uint64_t seq

cdef int trace_init(trace_t *t, size_t size) except -1
cdef void trace_free(trace_t *t) noexcept nogil
cdef bint trace_match(trace_t *t, uint32_t vni, const uint8_t *frame, size_t n) noexcept nogil
cdef void trace_put(trace_t *t, int point, uint32_t vni, uint32_t peer, uint16_t peer_port,
                    uint8_t verdict, uint8_t reason, uint64_t seq,
                    const uint8_t *a, size_t alen, const uint8_t *b, size_t blen,
                    size_t orig_len, uint8_t flags) noexcept nogil
cdef size_t trace_take(trace_t *t, uint8_t *out, size_t max_bytes) noexcept nogil

# the Python side of the ring (Switch.trace_arm, trace_disarm, trace_read, trace_status)
cdef trace_configure(trace_t *t, dict points, vni, mac, ip, int snaplen)
cdef void trace_stop(trace_t *t) noexcept nogil
cdef bytes trace_read_records(trace_t *t, size_t max_bytes)
cdef dict trace_state(trace_t *t)
