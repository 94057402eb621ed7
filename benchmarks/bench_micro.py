"""Micro benchmarks of the fast path: the Cython modules next to their pure-Python references.

    python -m pytest benchmarks/bench_micro.py                    # all, ~1-2 min
    python -m pytest benchmarks/bench_micro.py -k "switch and 64" --benchmark-json=out.json

Every benchmark reports nanoseconds per packet (see conftest.py for the summary table).

What each one times:

1. headers.encap / headers.parse_vxlan: one call per packet of py_encap (build IPv4+UDP+VXLAN in
   front of a 106-byte frame) and py_parse_vxlan (validate the header, return the VNI). These are
   thin Python wrappers around the C inline functions the loops use; call overhead dominates.
2. switch.encap / switch.decap / switch.arp_reply: Switch(batch=N).process_tap / process_udp
   with N packets, i.e. the real classification of one batch without syscalls. The Cython
   numbers include copying Python bytes into the slab, building the output tuples and one
   decision dict per packet: Python-side work that the forwarding loops (run_tx/run_rx) don't do.
3. tables.lookup_many: U64Map.lookup_many over N keys (MAC-sized, 1000 entries in the table),
   which in Cython is one nogil loop; this is the closest to the per-packet cost in the loops.
4. (process_*) addr.*: the address conversions process_tap/process_udp do per packet in Python
   (encap: 2x int_to_ip; decap: ip_to_int + int_to_ip), to subtract from the switch.* rows.
"""
from __future__ import annotations

import array
import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

from benchmarks import frames as F
from fastpath import headers_ref, switch_ref, tables_ref

# the compiled modules (built in place by setup.py build_ext --inplace; no stubs for mypy)
headers = importlib.import_module("fastpath.headers")
tables = importlib.import_module("fastpath.tables")
switch = importlib.import_module("fastpath.switch")

BATCHES = (1, 8, 32, 64)
IMPLS = {
    "cython": {"headers": headers, "switch": switch, "tables": tables},
    "ref": {"headers": headers_ref, "switch": switch_ref, "tables": tables_ref},
}


def _mod(impl: str, name: str) -> ModuleType:
    return IMPLS[impl][name]


def _switch(impl: str, batch: int) -> Any:
    sw = _mod(impl, "switch").Switch(F.LOCAL_VTEP, batch=batch)
    sw.add_network(F.VNI)
    sw.fdb_add(F.VNI, F.POD2_MAC, F.REMOTE_VTEP)
    sw.neigh_add(F.VNI, F.POD2_IP, F.POD2_MAC)
    return sw


impl_param = pytest.mark.parametrize("impl", ["cython", "ref"])
batch_param = pytest.mark.parametrize("batch", BATCHES)


# ---- 1. headers: one packet per call ------------------------------------------------------------

@impl_param
@pytest.mark.parametrize("size", [F.SMALL_FRAME, F.LARGE_FRAME])
def test_headers_encap(per_packet: Callable[..., Any], impl: str, size: int) -> None:
    h = _mod(impl, "headers")
    frame = F.udp_frame(size)
    src, dst = F.ip_int(F.LOCAL_VTEP), F.ip_int(F.REMOTE_VTEP)
    out = h.py_encap(frame, src, dst, 50000, 4789, F.VNI, 64)
    assert len(out) == 36 + size and out[36:] == frame
    per_packet(lambda: h.py_encap(frame, src, dst, 50000, 4789, F.VNI, 64),
               packets=1, op="headers.encap", variant=f"{size}B", impl=impl, batch=1)


@impl_param
def test_headers_parse_vxlan(per_packet: Callable[..., Any], impl: str) -> None:
    h = _mod(impl, "headers")
    payload = F.vxlan_payload(F.udp_frame())
    assert h.py_parse_vxlan(payload, True) == F.VNI
    per_packet(lambda: h.py_parse_vxlan(payload, True),
               packets=1, op="headers.parse_vxlan", impl=impl, batch=1)


# ---- 2. switch: one batch of N packets per call --------------------------------------------------

@impl_param
@batch_param
@pytest.mark.parametrize("size", [F.SMALL_FRAME, F.LARGE_FRAME])
def test_switch_encap(per_packet: Callable[..., Any], impl: str, batch: int, size: int) -> None:
    sw = _switch(impl, batch)
    frames = F.udp_frames(batch, size)
    out, decs = sw.process_tap(F.VNI, frames)
    assert [d["verdict"] for d in decs] == ["encap"] * batch and len(out) == batch
    per_packet(lambda: sw.process_tap(F.VNI, frames),
               packets=batch, op="switch.encap", variant=f"{size}B", impl=impl, batch=batch)


@impl_param
@batch_param
@pytest.mark.parametrize("size", [F.SMALL_FRAME, F.LARGE_FRAME])
def test_switch_decap(per_packet: Callable[..., Any], impl: str, batch: int, size: int) -> None:
    sw = _switch(impl, batch)
    dgrams = [(F.REMOTE_VTEP, F.vxlan_payload(F.reverse_frame(f)))
              for f in F.udp_frames(batch, size)]
    out, decs = sw.process_udp(dgrams)
    assert [d["verdict"] for d in decs] == ["deliver"] * batch and len(out) == batch
    per_packet(lambda: sw.process_udp(dgrams),
               packets=batch, op="switch.decap", variant=f"{size}B", impl=impl, batch=batch)


@impl_param
@batch_param
def test_switch_arp_reply(per_packet: Callable[..., Any], impl: str, batch: int) -> None:
    sw = _switch(impl, batch)
    reqs = [F.arp_request()] * batch
    out, decs = sw.process_tap(F.VNI, reqs)
    assert [d["verdict"] for d in decs] == ["arp_reply"] * batch and len(out) == batch
    per_packet(lambda: sw.process_tap(F.VNI, reqs),
               packets=batch, op="switch.arp_reply", impl=impl, batch=batch)


# ---- 3. tables: one lookup_many over N keys -----------------------------------------------------

TABLE_ENTRIES = 1000


@impl_param
@pytest.mark.parametrize("batch", [*BATCHES, 1024])
def test_tables_lookup_many(per_packet: Callable[..., Any], impl: str, batch: int) -> None:
    m = _mod(impl, "tables").U64Map()
    base = 0x020000000000                       # locally administered MACs as 48-bit keys
    for i in range(TABLE_ENTRIES):
        m.put(base + i, i + 1)
    keys = array.array("Q", [base + (i * 7919) % TABLE_ENTRIES for i in range(batch)])
    out = array.array("Q", bytes(8 * batch))
    assert m.lookup_many(keys, out) == batch
    assert out[0] == keys[0] - base + 1
    per_packet(lambda: m.lookup_many(keys, out),
               packets=batch, op="tables.lookup_many", impl=impl, batch=batch)


# ---- 4. the Python-side conversions inside process_tap / process_udp ----------------------------
#
# process_tap turns every destination VTEP into a string twice (output tuple, decision dict);
# process_udp parses every source address string once and formats it once (decision dict).
# Both use fastpath.addr (the ipaddress module). Timed alone here so that the switch.* rows can
# be read with this part subtracted; the forwarding loops never call them.

@pytest.mark.parametrize("fn", ["int_to_ip", "ip_to_int"])
def test_overhead_addr(per_packet: Callable[..., Any], fn: str) -> None:
    from fastpath import addr
    if fn == "int_to_ip":
        v = F.ip_int(F.REMOTE_VTEP)
        assert addr.int_to_ip(v) == F.REMOTE_VTEP
        per_packet(lambda: addr.int_to_ip(v), packets=1, op="(process_*) addr.int_to_ip",
                   impl="cython", batch=1)
    else:
        assert addr.ip_to_int(F.REMOTE_VTEP) == F.ip_int(F.REMOTE_VTEP)
        per_packet(lambda: addr.ip_to_int(F.REMOTE_VTEP), packets=1,
                   op="(process_*) addr.ip_to_int", impl="cython", batch=1)


# ---- 5. csum: the inner checksum pass of offloads (one call per buffer) -------------------------
#
# The segmentation of a 64 KB TSO frame and the check of the segments a GRO run coalesces each
# make one pass over every payload byte; `bulk` is the loop csum_add uses: scalar, AVX2 (where
# the CPU has it) or auto (what the loops run). Reported per buffer; GB/s = size / ns.

@pytest.mark.parametrize("size", [1448, 65536])
@pytest.mark.parametrize("bulk", ["scalar", "avx2", "auto"])
def test_csum_bulk(per_packet: Callable[..., Any], bulk: str, size: int) -> None:
    csum = importlib.import_module("fastpath.csum")
    code = {"scalar": 0, "avx2": 1, "auto": -1}[bulk]
    if code == 1 and not csum.py_have_avx2():
        pytest.skip("this CPU has no AVX2")
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert csum.py_csum_fold(csum.py_csum_add_bulk(data, 0, code)) == csum.py_csum_fold(
        csum.py_csum_add(data, 0))
    per_packet(lambda: csum.py_csum_add_bulk(data, 0, code), packets=1,
               op="csum.add", variant=f"{size}B {bulk}", impl="cython", batch=1)
