# The simulation side of the switch (Switch.process_tap / process_udp, for tests and
# benchmarks): Python frames and datagrams into the batch buffers, what the batch produced back
# out as Python objects. The classification and delivery in between are the loops' own
# (switch.pyx _tx_batch, _rx_batch, _rx_deliver), so the simulation cannot drift from them.
from libc.stdint cimport uint8_t, uint16_t, uint32_t
from fastpath.includes.sys cimport iovec
from fastpath.net cimport net_t, decision
from fastpath.buffers cimport txbuf, rxbuf

cdef struct sink:           # process_udp's TAP writes, in order: [vni u32][len u32][bytes] each
    uint8_t *buf
    size_t len
    size_t cap
    int failed              # a write could not be stored (process_udp raises MemoryError)

cdef ssize_t sink_put(sink *s, uint32_t vni, const iovec *iov, int nio) noexcept nogil
cdef sink_take(sink *s, list out)
cdef tx_load(txbuf *b, list frames, bint offload, size_t max_inner)
cdef tx_collect(txbuf *b, net_t *n, vni, bint offload, uint16_t *port4, uint16_t *port6,
                list out)
cdef list rx_items(datagrams, bint offload)
cdef rx_load(rxbuf *b, list items, bint offload)
cdef list decision_dicts(decision *d, int n)
