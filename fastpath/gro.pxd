# Inbound TCP coalescing (GRO) and completion of partial inner checksums, C only (no GIL, no
# Python object). Rules, flow and byte layout: gro_ref.py (the reference; tests run both).
#
# API (the receive loop, per batch of validated inner Ethernet frames after VXLAN decap):
#
#   gro_seg segs[n]            in: .p (frame, writable: headers are rewritten in place) and
#                              .len; the other fields are gro_coalesce's scratch, except
#                              .hlen/.pay which gro_iovec reads
#   gro_run runs[n]; uint32_t order[n]
#   nruns = gro_coalesce(segs, n, runs, order, max_frame, &stats)
#       -> number of runs, in the order of their first segment (per-flow order is kept).
#          Run r covers segments order[runs[r].start .. runs[r].start + runs[r].nseg), in
#          sequence order; runs[r].vh is its virtio_net_hdr (all zero for a single: nseg 1),
#          runs[r].len the bytes it puts on the TAP (without the virtio header). stats is
#          added to (the caller zeroes it when it wants per-batch numbers).
#   niov = gro_iovec(segs, &runs[r], order, vh_buf, iov, max_iov)
#       -> writes the 10-byte header into vh_buf and fills iov: [vnet header, first segment
#          (headers + payload), payload of each following segment]; -1 if max_iov is too
#          small (a run has at most nseg + 1 entries). One writev() per run.
#   status = csum_rx_fix(frame, len, verify)
#       -> CSUM_*: classify a frame's TCP/UDP checksum and complete a partial one in place
#          (what the loop calls on each frame when coalescing is off; gro_coalesce calls it
#          itself: verify=1 for coalescing candidates, 0 for everything else).
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t, uint64_t

from fastpath.includes.sys cimport iovec
from fastpath.vnet cimport vnet_hdr

# implementation constants
cdef enum:
    GRO_MAX_FRAME = 65535    # default cap on a coalesced Ethernet frame (bytes)
    GRO_MAX_OPEN = 32        # open runs tracked per batch; the oldest is closed beyond

# csum_rx_fix results (gro_ref.CSUM_*)
cdef enum:
    CSUM_NONE = 0            # not a TCP/UDP checksum we look at
    CSUM_UNCHECKED = 1       # field differs from the pseudo-header sum: left to the receiver
    CSUM_VALID = 2           # verified correct, untouched
    CSUM_COMPLETED = 3       # was partial: completed in place
    CSUM_BAD = 4             # verified wrong and not partial: left as it is

ctypedef struct gro_seg:
    uint8_t *p               # in: inner Ethernet frame
    uint32_t len             # in: its length
    uint32_t pay             # payload bytes (candidates)
    uint32_t seq             # TCP sequence number (candidates)
    uint32_t ack             # TCP acknowledgment number (candidates)
    int32_t next             # next segment of its run, -1 at the end
    uint16_t hlen            # Ethernet + IP + TCP header bytes (candidates)
    uint16_t l4              # TCP header offset (kind >= 2)
    uint8_t kind             # 0 other, 1 IP without a readable 5-tuple, 2 TCP, 3 candidate
    uint8_t v6
    uint8_t flags            # TCP flags (candidates)

ctypedef struct gro_run:
    vnet_hdr vh              # virtio_net_hdr to write in front of the run
    uint32_t first           # index of the first segment (its headers head the frame)
    uint32_t start           # position of the run in order[]
    uint32_t nseg            # segments in the run
    uint32_t len             # bytes on the TAP, without the virtio header
    uint32_t last            # scratch: last segment
    uint32_t mss             # scratch: first segment's payload
    uint32_t paysum          # scratch: payload bytes so far
    uint32_t next_seq        # scratch: sequence number the next segment must have
    uint8_t id_mode          # scratch: 0 undecided, 1 incrementing IP ID, 2 fixed (DF)

ctypedef struct gro_stats:
    uint64_t gro_frames      # coalesced frames built (runs of >= 2 segments)
    uint64_t gro_segs        # segments that went into them
    uint64_t csum_completed  # partial inner checksums completed
    uint64_t csum_bad        # candidates whose checksum was wrong (went out singly)

cdef int csum_rx_fix(uint8_t *f, uint32_t n, bint verify) noexcept nogil
cdef int gro_coalesce(gro_seg *segs, int n, gro_run *runs, uint32_t *order, uint32_t max_frame,
                      gro_stats *st) noexcept nogil
cdef int gro_iovec(const gro_seg *segs, const gro_run *run, const uint32_t *order,
                   uint8_t *vh_buf, iovec *iov, int max_iov) noexcept nogil
