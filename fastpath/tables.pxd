# C hash tables owned by the fast path. Reference implementation: tables_ref.py.
#
# One structure serves every table: an open-addressing map from a 64-bit key to a 64-bit value
# (linear probing, tombstones, power-of-two capacity, load kept under 1/2).
#   FDB     MAC (48-bit integer)   -> VTEP index
#   neigh   IPv4 address (host order) -> MAC (48-bit integer)
#   (VTEPs: 128-bit keys in a u128map, map128.pxd / vtep.pxd)
# Lookups are inline and allocation-free; inserts/deletes may reallocate and are only called
# by the owner of the switch lock (see switch.pyx: "Locking").
from libc.stdint cimport uint8_t, uint64_t

cdef enum:
    SLOT_EMPTY = 0
    SLOT_USED = 1
    SLOT_DELETED = 2

cdef struct u64map_slot:
    uint64_t key
    uint64_t value
    uint8_t state

cdef struct u64map:
    u64map_slot *slots
    size_t cap          # power of two
    size_t used         # live entries
    size_t filled       # live entries + tombstones

cdef inline uint64_t mix64(uint64_t k) noexcept nogil:
    """splitmix64 finalizer: spreads MAC/IP bits over the index."""
    k ^= k >> 30
    k *= 0xbf58476d1ce4e5b9ULL
    k ^= k >> 27
    k *= 0x94d049bb133111ebULL
    k ^= k >> 31
    return k

cdef inline u64map_slot *u64map_find(const u64map *m, uint64_t key) noexcept nogil:
    cdef size_t mask = m.cap - 1
    cdef size_t i = mix64(key) & mask
    cdef u64map_slot *s
    while True:
        s = &m.slots[i]
        if s.state == SLOT_EMPTY:
            return NULL
        if s.state == SLOT_USED and s.key == key:
            return s
        i = (i + 1) & mask

cdef int u64map_init(u64map *m, size_t cap) except -1 nogil
cdef void u64map_free(u64map *m) noexcept nogil
cdef int u64map_put(u64map *m, uint64_t key, uint64_t value) except -1 nogil
cdef bint u64map_del(u64map *m, uint64_t key) noexcept nogil
