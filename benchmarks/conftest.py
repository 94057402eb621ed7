"""pytest-benchmark glue for benchmarks/: per-packet reporting.

A benchmark that processes N packets per call registers itself with the ``per_packet`` fixture;
at the end of the session a table of nanoseconds per packet (median and min over rounds) is
printed, the Cython fast path next to its pure-Python reference, and the same numbers are put
into ``extra_info`` so that ``--benchmark-json`` carries them.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

# (op, variant, batch) -> {"impl": ..., "ns_median": ..., "ns_min": ...}
_ROWS: list[dict[str, Any]] = []


@pytest.fixture
def per_packet(benchmark: Any) -> Callable[..., Any]:
    """``per_packet(fn, packets=N, op="encap", impl="cython", batch=N, note="")``: run ``fn``
    under pytest-benchmark and record ns/packet."""
    def run(fn: Callable[[], Any], *, packets: int, op: str, impl: str, batch: int,
            variant: str = "") -> Any:
        result = benchmark(fn)
        benchmark.extra_info.update(packets=packets, op=op, impl=impl, batch=batch, variant=variant)
        st = getattr(benchmark, "stats", None)
        if st is not None and getattr(st, "stats", None) is not None:
            med = st.stats.median * 1e9 / packets
            mn = st.stats.min * 1e9 / packets
            benchmark.extra_info.update(ns_per_packet_median=med, ns_per_packet_min=mn)
            _ROWS.append({"op": op, "variant": variant, "batch": batch, "impl": impl,
                          "ns_median": med, "ns_min": mn})
        return result
    return run


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _ROWS:
        return
    keys: dict[tuple[str, str, int], dict[str, dict[str, Any]]] = {}
    for r in _ROWS:
        keys.setdefault((r["op"], r["variant"], r["batch"]), {})[r["impl"]] = r
    tr = terminalreporter
    tr.section("ns per packet (median of rounds; min in brackets)")
    head = f"{'operation':<34} {'batch':>5} {'cython':>18} {'python ref':>20} {'ref/cython':>10}"
    tr.write_line(head)
    tr.write_line("-" * len(head))
    for (op, variant, batch), impls in keys.items():
        name = f"{op} {variant}".strip()
        cells = []
        for impl in ("cython", "ref"):
            got = impls.get(impl)
            cells.append(f"{got['ns_median']:9.1f} [{got['ns_min']:7.1f}]" if got else "-")
        c, p = impls.get("cython"), impls.get("ref")
        ratio = f"{p['ns_median'] / c['ns_median']:9.1f}x" if c and p else "-"
        tr.write_line(f"{name:<34} {batch:>5} {cells[0]:>18} {cells[1]:>20} {ratio:>10}")
    tr.write_line("switch.* rows include the Python-side conversion of process_tap/process_udp "
                  "(bytes in, output tuples and one decision dict per packet out, and the "
                  "(process_*) addr.* calls: 2x int_to_ip per encap, ip_to_int + int_to_ip per "
                  "decap); tables.lookup_many is the nogil loop alone.")


def pytest_benchmark_update_json(config: Any, benchmarks: Any, output_json: dict[str, Any]) -> None:
    """Keep the JSON small: summary statistics only, not every timed round (~100 MB)."""
    for b in output_json.get("benchmarks", []):
        b.get("stats", {}).pop("data", None)
