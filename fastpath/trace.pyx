# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The trace ring (see trace.pxd) and its Python side: arming, reading, status."""
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from fastpath.includes.sys cimport (pthread_mutex_init, pthread_mutex_destroy, pthread_mutex_lock,
                                    pthread_mutex_unlock, timespec, clock_gettime, CLOCK_REALTIME)
from fastpath.headers cimport ld16, ld32, ld_mac, ETH_P_IP, ETH_P_ARP
from cpython.bytes cimport PyBytes_FromStringAndSize

from fastpath import addr as _addr

REC_HDR_SIZE = sizeof(rec_hdr)
POINTS = ("tap_in", "ul_out", "ul_in", "tap_out", "decision")
MAC_ANY = 1 << 63
cdef uint64_t C_MAC_ANY = 1ULL << 63


cdef int trace_init(trace_t *t, size_t size) except -1:
    memset(t, 0, sizeof(trace_t))
    pthread_mutex_init(&t.lock, NULL)
    t.buf = <uint8_t *>malloc(size)
    if t.buf == NULL:
        raise MemoryError()
    t.size = size
    t.f_mac = C_MAC_ANY
    t.snaplen = 65535
    return 0


cdef void trace_free(trace_t *t) noexcept nogil:
    free(t.buf)
    t.buf = NULL
    pthread_mutex_destroy(&t.lock)


cdef bint trace_match(trace_t *t, uint32_t vni, const uint8_t *f, size_t n) noexcept nogil:
    """Does the inner frame f (n bytes) of network vni pass the filter?"""
    cdef uint16_t et
    cdef uint32_t a, b
    if t.f_vni and vni != t.f_vni:
        return False
    if t.f_mac != C_MAC_ANY:
        if n < 12 or (ld_mac(f) != t.f_mac and ld_mac(f + 6) != t.f_mac):
            return False
    if t.f_ip:
        if n < 14:
            return False
        et = ld16(f + 12)
        if et == ETH_P_IP and n >= 34:
            a = ld32(f + 26)
            b = ld32(f + 30)
        elif et == ETH_P_ARP and n >= 42:
            a = ld32(f + 28)
            b = ld32(f + 38)
        else:
            return False
        if a != t.f_ip and b != t.f_ip:
            return False
    return True


cdef void trace_put(trace_t *t, int point, uint32_t vni, uint32_t peer, uint16_t peer_port,
                    uint8_t verdict, uint8_t reason, uint64_t seq,
                    const uint8_t *a, size_t alen, const uint8_t *b, size_t blen,
                    size_t orig_len, uint8_t flags) noexcept nogil:
    """Append one record (data = a[:alen] + b[:blen], cut at snaplen). Never blocks on I/O."""
    cdef size_t cap = alen + blen
    cdef size_t lim = t.snaplen + (16 if flags & REC_PEER6 else 0)   # the address is extra
    cdef size_t need, room_end
    cdef rec_hdr *h
    cdef timespec ts
    if lim > 65535:
        lim = 65535
    if cap > lim:
        cap = lim
    need = (sizeof(rec_hdr) + cap + 7) & ~(<size_t>7)
    pthread_mutex_lock(&t.lock)
    if t.left[point] == 0:
        pthread_mutex_unlock(&t.lock)
        return
    room_end = t.size - t.head
    if room_end < need:
        # not enough contiguous room: pad to the end and wrap, if the reader has freed enough
        if t.used + room_end + need > t.size:
            t.dropped += 1
            pthread_mutex_unlock(&t.lock)
            return
        if room_end >= 4:
            (<uint32_t *>(t.buf + t.head))[0] = <uint32_t>room_end
            if room_end >= 5:
                t.buf[t.head + 4] = REC_PAD
        t.used += room_end
        t.head = 0
    if t.used + need > t.size:
        t.dropped += 1
        pthread_mutex_unlock(&t.lock)
        return
    h = <rec_hdr *>(t.buf + t.head)
    clock_gettime(CLOCK_REALTIME, &ts)
    h.rec_len = <uint32_t>need
    h.point = point
    h.verdict = verdict
    h.reason = reason
    h.flags = flags
    h.ts_ns = <uint64_t>ts.tv_sec * 1000000000ULL + ts.tv_nsec
    h.seq = seq
    h.vni = vni
    h.peer = peer
    h.orig_len = <uint32_t>orig_len
    h.caplen = <uint16_t>cap
    h.peer_port = peer_port
    if alen > cap:
        alen = cap
    memcpy(t.buf + t.head + sizeof(rec_hdr), a, alen)
    if cap > alen:
        memcpy(t.buf + t.head + sizeof(rec_hdr) + alen, b, cap - alen)
    t.head += need
    if t.head == t.size:
        t.head = 0
    t.used += need
    t.recorded += 1
    if t.left[point] != 0xffffffffffffffffULL:
        t.left[point] -= 1
        if t.left[point] == 0:
            _update_active(t)
    pthread_mutex_unlock(&t.lock)


cdef inline void _update_active(trace_t *t) noexcept nogil:
    """Tracing stays on while any point still wants records (caller holds the lock)."""
    cdef int i
    for i in range(N_TRACE_POINTS):
        if t.left[i]:
            t.active = 1
            return
    t.active = 0


cdef size_t trace_take(trace_t *t, uint8_t *out, size_t max_bytes) noexcept nogil:
    """Move whole records (up to max_bytes) out of the ring into out; padding is skipped.
    Holds the ring lock only for the memcpy: never waits for the GIL or the disk."""
    cdef size_t got = 0, rl
    cdef rec_hdr *h
    pthread_mutex_lock(&t.lock)
    while t.used:
        h = <rec_hdr *>(t.buf + t.tail)
        rl = h.rec_len
        if h.point != REC_PAD:
            if got + rl > max_bytes:
                break
            memcpy(out + got, t.buf + t.tail, rl)
            got += rl
        t.tail += rl
        if t.tail >= t.size:
            t.tail = 0
        t.used -= rl
    pthread_mutex_unlock(&t.lock)
    return got


# ---- the Python side (Switch.trace_arm/trace_disarm/trace_read/trace_status) -------------
cdef trace_configure(trace_t *t, dict points, vni, mac, ip, int snaplen):
    """Switch.trace_arm: check the points, counts and filter (ValueError), then arm the ring."""
    cdef int i
    counts = [0] * N_TRACE_POINTS
    for name, cnt in points.items():
        if name not in POINTS:
            raise ValueError(f"unknown trace point {name!r}; known: {', '.join(POINTS)}")
        if not isinstance(cnt, int) or cnt < -1 or cnt == 0:
            raise ValueError(f"count for {name} must be a positive integer or -1, got {cnt!r}")
        counts[POINTS.index(name)] = 0xffffffffffffffff if cnt == -1 else cnt
    f_vni = 0 if not vni else _addr.check_vni(vni)
    f_mac = MAC_ANY if mac is None else _addr.mac_to_int(mac)
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
        pthread_mutex_lock(&t.lock)
        t.f_vni = c_vni
        t.f_mac = c_mac
        t.f_ip = c_ip
        t.snaplen = c_snap
        for i in range(N_TRACE_POINTS):
            t.left[i] = c_left[i]
        t.active = c_active
        pthread_mutex_unlock(&t.lock)


cdef void trace_stop(trace_t *t) noexcept nogil:
    """Every point off: the loops stop recording at their next batch."""
    cdef int i
    pthread_mutex_lock(&t.lock)
    for i in range(N_TRACE_POINTS):
        t.left[i] = 0
    t.active = 0
    pthread_mutex_unlock(&t.lock)


cdef bytes trace_read_records(trace_t *t, size_t max_bytes):
    """Switch.trace_read: whole records, up to max_bytes (at least 64 KB + 64: one fits)."""
    if max_bytes < 65536 + 64:
        max_bytes = 65536 + 64
    cdef uint8_t *buf = <uint8_t *>malloc(max_bytes)
    cdef size_t got
    if buf == NULL:
        raise MemoryError()
    try:
        with nogil:
            got = trace_take(t, buf, max_bytes)
        return PyBytes_FromStringAndSize(<char *>buf, got)
    finally:
        free(buf)


cdef dict trace_state(trace_t *t):
    return {"active": bool(t.active), "recorded": t.recorded,
            "dropped": t.dropped, "ring_used": t.used, "ring_size": t.size,
            "left": {name: (-1 if t.left[i] == 0xffffffffffffffff else t.left[i])
                     for i, name in enumerate(POINTS)}}
