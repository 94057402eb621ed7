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
from libc.stdlib cimport calloc

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

# -- sizing and growth, shared with u128map (map128.pxd) -------------------------------------
# Both tables keep the same header (slots, cap, used, filled) and the same policy; only the
# slot layout and the key compare differ, so only these policy pieces are shared. They run on
# insert and init (the control side, under the switch lock), never in a lookup.

cdef inline size_t table_capacity(size_t want) noexcept nogil:
    """The slot count of a table asked to hold `want`: a power of two, at least 8."""
    cdef size_t c = 8
    while c < want:
        c <<= 1
    return c

cdef inline void *table_slots(size_t cap, size_t slot_size) except NULL nogil:
    """`cap` zeroed slots of `slot_size` bytes (all SLOT_EMPTY); MemoryError if none."""
    cdef void *p = calloc(cap, slot_size)
    if p == NULL:
        with gil:
            raise MemoryError()
    return p

cdef inline size_t table_rehash_capacity(size_t cap, size_t used, size_t filled) noexcept nogil:
    """Before inserting a new key: 0 if there is room (live entries + tombstones stay under
    half the slots), else the capacity to rehash to: twice `cap` if the live entries would
    fill more than a quarter, else `cap` again (the rehash only drops the tombstones)."""
    if (filled + 1) * 2 <= cap:
        return 0
    return cap * 2 if (used + 1) * 4 > cap else cap

# -- u64map ------------------------------------------------------------------------------------

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
