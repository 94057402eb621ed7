# A C hash map from a 128-bit key (two 64-bit words) to a 64-bit value, for IPv6 neighbours
# (address -> MAC). Same scheme as tables.pxd's u64map (linear probing, tombstones,
# power-of-two capacity, load kept under 1/2; the sizing and growth helpers are tables.pxd's);
# a separate type so the IPv4 tables keep their 16-byte slots. Reference: map128_ref.py.
#   neigh6   IPv6 address (hi = first 8 bytes, lo = last 8 bytes, big-endian) -> MAC
from libc.stdint cimport uint8_t, uint64_t
from fastpath.tables cimport (
    mix64, table_capacity, table_slots, table_rehash_capacity, SLOT_EMPTY, SLOT_USED, SLOT_DELETED,
)

cdef struct u128map_slot:
    uint64_t hi
    uint64_t lo
    uint64_t value
    uint8_t state

cdef struct u128map:
    u128map_slot *slots
    size_t cap          # power of two
    size_t used         # live entries
    size_t filled       # live entries + tombstones

cdef inline size_t mix128(uint64_t hi, uint64_t lo) noexcept nogil:
    return <size_t>mix64(hi ^ mix64(lo))

cdef inline u128map_slot *u128map_find(const u128map *m, uint64_t hi,
                                       uint64_t lo) noexcept nogil:
    cdef size_t mask = m.cap - 1
    cdef size_t i = mix128(hi, lo) & mask
    cdef u128map_slot *s
    while True:
        s = &m.slots[i]
        if s.state == SLOT_EMPTY:
            return NULL
        if s.state == SLOT_USED and s.hi == hi and s.lo == lo:
            return s
        i = (i + 1) & mask

cdef int u128map_init(u128map *m, size_t cap) except -1 nogil
cdef void u128map_free(u128map *m) noexcept nogil
cdef int u128map_put(u128map *m, uint64_t hi, uint64_t lo, uint64_t value) except -1 nogil
cdef bint u128map_del(u128map *m, uint64_t hi, uint64_t lo) noexcept nogil
