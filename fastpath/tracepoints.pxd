# The trace points of the forwarding loops (tracepoints.pyx): called by the switch under its
# table lock, once per batch and only while tracing is on.
from libc.stdint cimport uint8_t, uint16_t, uint32_t
from fastpath.includes.sys cimport pthread_mutex_t
from fastpath.trace cimport trace_t
from fastpath.gro cimport gro_run
from fastpath.buffers cimport txbuf, rxbuf

cdef void trace_tx_pre(trace_t *tr, uint32_t vni, txbuf *b) noexcept nogil
cdef void trace_tx_post(trace_t *tr, uint32_t vni, txbuf *b, bint offload, uint32_t local_ip,
                        uint8_t *local6, uint8_t ttl, bint zerocsum6, uint16_t *port4,
                        uint16_t *port6) noexcept nogil
cdef void trace_rx_pre(trace_t *tr, rxbuf *b) noexcept nogil
cdef void trace_rx_post(trace_t *tr, rxbuf *b, bint offload) noexcept nogil
cdef void trace_run(trace_t *tr, pthread_mutex_t *lock, rxbuf *b, gro_run *run,
                    int nio) noexcept nogil
