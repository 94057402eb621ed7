# cython: language_level=3, boundscheck=False, wraparound=False
"""C hash tables of the fast path (see tables.pxd), and a Python wrapper for tests."""
from libc.stdlib cimport free
from libc.stdint cimport uint64_t

cdef int u64map_init(u64map *m, size_t cap) except -1 nogil:
    cdef size_t c = table_capacity(cap)
    m.slots = <u64map_slot *>table_slots(c, sizeof(u64map_slot))
    m.cap = c
    m.used = 0
    m.filled = 0
    return 0

cdef void u64map_free(u64map *m) noexcept nogil:
    free(m.slots)
    m.slots = NULL
    m.cap = m.used = m.filled = 0

cdef int _rehash(u64map *m, size_t newcap) except -1 nogil:
    cdef u64map old = m[0]
    cdef size_t i
    u64map_init(m, newcap)
    for i in range(old.cap):
        if old.slots[i].state == SLOT_USED:
            _insert_new(m, old.slots[i].key, old.slots[i].value)
    free(old.slots)
    return 0

cdef inline void _insert_new(u64map *m, uint64_t key, uint64_t value) noexcept nogil:
    # key is known absent and a free slot is known to exist
    cdef size_t mask = m.cap - 1
    cdef size_t i = mix64(key) & mask
    while m.slots[i].state == SLOT_USED:
        i = (i + 1) & mask
    if m.slots[i].state == SLOT_EMPTY:
        m.filled += 1
    m.slots[i].key = key
    m.slots[i].value = value
    m.slots[i].state = SLOT_USED
    m.used += 1

cdef int u64map_put(u64map *m, uint64_t key, uint64_t value) except -1 nogil:
    cdef u64map_slot *s = u64map_find(m, key)
    if s != NULL:
        s.value = value
        return 0
    cdef size_t newcap = table_rehash_capacity(m.cap, m.used, m.filled)
    if newcap:
        _rehash(m, newcap)
    _insert_new(m, key, value)
    return 0

cdef bint u64map_del(u64map *m, uint64_t key) noexcept nogil:
    cdef u64map_slot *s = u64map_find(m, key)
    if s == NULL:
        return False
    s.state = SLOT_DELETED
    m.used -= 1
    return True


cdef class U64Map:
    """Python view of one C table, for tests and benchmarks (same API as tables_ref.U64Map)."""
    cdef u64map m

    def __cinit__(self, size_t capacity=8):
        u64map_init(&self.m, capacity)

    def __dealloc__(self):
        u64map_free(&self.m)

    def put(self, uint64_t key, uint64_t value):
        u64map_put(&self.m, key, value)

    def get(self, uint64_t key, default=None):
        cdef u64map_slot *s = u64map_find(&self.m, key)
        return default if s == NULL else s.value

    def delete(self, uint64_t key) -> bool:
        return u64map_del(&self.m, key)

    def __len__(self):
        return self.m.used

    def items(self):
        cdef size_t i
        return sorted((self.m.slots[i].key, self.m.slots[i].value)
                      for i in range(self.m.cap) if self.m.slots[i].state == SLOT_USED)

    @property
    def capacity(self):
        return self.m.cap

    def lookup_many(self, uint64_t[::1] keys, uint64_t[::1] out) -> int:
        """Batch lookup (benchmarks): out[i] = value or 2**64-1; returns hits."""
        cdef size_t i, hits = 0
        cdef u64map_slot *s
        with nogil:
            for i in range(keys.shape[0]):
                s = u64map_find(&self.m, keys[i])
                if s != NULL:
                    out[i] = s.value
                    hits += 1
                else:
                    out[i] = 0xffffffffffffffffULL
        return hits
