# cython: language_level=3, boundscheck=False, wraparound=False
"""128-bit-keyed C hash map (see map128.pxd), and a Python wrapper for tests."""
from libc.stdlib cimport free
from libc.stdint cimport uint64_t


cdef int u128map_init(u128map *m, size_t cap) except -1 nogil:
    cdef size_t c = table_capacity(cap)
    m.slots = <u128map_slot *>table_slots(c, sizeof(u128map_slot))
    m.cap = c
    m.used = 0
    m.filled = 0
    return 0


cdef void u128map_free(u128map *m) noexcept nogil:
    free(m.slots)
    m.slots = NULL
    m.cap = m.used = m.filled = 0


cdef inline void _insert_new(u128map *m, uint64_t hi, uint64_t lo, uint64_t value) noexcept nogil:
    # key is known absent and a free slot is known to exist
    cdef size_t mask = m.cap - 1
    cdef size_t i = mix128(hi, lo) & mask
    while m.slots[i].state == SLOT_USED:
        i = (i + 1) & mask
    if m.slots[i].state == SLOT_EMPTY:
        m.filled += 1
    m.slots[i].hi = hi
    m.slots[i].lo = lo
    m.slots[i].value = value
    m.slots[i].state = SLOT_USED
    m.used += 1


cdef int _rehash(u128map *m, size_t newcap) except -1 nogil:
    cdef u128map old = m[0]
    cdef size_t i
    u128map_init(m, newcap)
    for i in range(old.cap):
        if old.slots[i].state == SLOT_USED:
            _insert_new(m, old.slots[i].hi, old.slots[i].lo, old.slots[i].value)
    free(old.slots)
    return 0


cdef int u128map_put(u128map *m, uint64_t hi, uint64_t lo, uint64_t value) except -1 nogil:
    cdef u128map_slot *s = u128map_find(m, hi, lo)
    if s != NULL:
        s.value = value
        return 0
    cdef size_t newcap = table_rehash_capacity(m.cap, m.used, m.filled)
    if newcap:
        _rehash(m, newcap)
    _insert_new(m, hi, lo, value)
    return 0


cdef bint u128map_del(u128map *m, uint64_t hi, uint64_t lo) noexcept nogil:
    cdef u128map_slot *s = u128map_find(m, hi, lo)
    if s == NULL:
        return False
    s.state = SLOT_DELETED
    m.used -= 1
    return True


cdef class U128Map:
    """Python view of one C table, for tests (same API as map128_ref.U128Map): keys are
    128-bit integers (an IPv6 address as int), values 64-bit."""
    cdef u128map m

    def __cinit__(self, size_t capacity=8):
        u128map_init(&self.m, capacity)

    def __dealloc__(self):
        u128map_free(&self.m)

    @staticmethod
    def _split(key):
        if not 0 <= key < 1 << 128:
            raise OverflowError("key must fit in 128 bits")
        return key >> 64, key & 0xFFFFFFFFFFFFFFFF

    def put(self, key, uint64_t value):
        hi, lo = U128Map._split(key)
        u128map_put(&self.m, hi, lo, value)

    def get(self, key, default=None):
        hi, lo = U128Map._split(key)
        cdef u128map_slot *s = u128map_find(&self.m, hi, lo)
        return default if s == NULL else s.value

    def delete(self, key) -> bool:
        hi, lo = U128Map._split(key)
        return u128map_del(&self.m, hi, lo)

    def __len__(self):
        return self.m.used

    def items(self):
        cdef size_t i
        return sorted(((<object>self.m.slots[i].hi << 64) | self.m.slots[i].lo,
                       self.m.slots[i].value)
                      for i in range(self.m.cap) if self.m.slots[i].state == SLOT_USED)

    @property
    def capacity(self):
        return self.m.cap
