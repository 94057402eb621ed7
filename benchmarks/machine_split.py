"""Where the whole machine's time goes during one traffic test (`benchmarks.system --perf`).

The agent-thread profile (`--perf`'s per-node reports) shows what the agents do; it cannot
show how that compares with the kernel VXLAN path, which has no thread of its own. This
module records every CPU (`perf record -a -g`) during the same test on both topologies and
puts every sample into one category:

  idle                          no task on the CPU
  apps: copy / stack / rest     the pods' processes (iperf3, sockperf): copying to/from their
                                sockets, network-stack work run in their context (softirq,
                                e.g. the kernel VXLAN path), the rest of their syscalls
  agent TAP read / UDP send / UDP recv / TAP write: copy / stack / rest
                                the vxtap agents' four data syscalls, each split into the
                                copy of the payload, the network stack work it runs (softirq:
                                the bridge, veth, the other node's UDP input, the pod's TCP)
                                and the rest (skb allocation, socket and TUN code)
  agent fast path: checksum / rest   samples inside vxtap's compiled code: the checksum
                                functions (csum_add and its AVX2 loop vx_csum_bulk_avx2,
                                gro's check) and the rest (gro, gso, switch, and the libc
                                memcmp/memcpy they call)
  agent other                   the agents' other syscalls (poll, sched_yield) and threads
  other                         everything else (perf itself, kernel threads, ...)

Fractions are of all samples (2 CPUs: 100 % = both CPUs for the whole test). With the bytes the
test moved they become machine time per KB (`ns_per_kb`), comparable between the kernel path
and vxtap: the difference is what vxtap costs beyond the kernel's own work.
"""
from __future__ import annotations

import collections
import os
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path

# outermost user-space frame of an agent syscall -> the data path step it is
AGENT_SYSCALLS = (
    ("read", "TAP read"),            # one frame (up to 64 KB with offloads) from the TAP
    ("__GI___writev", "TAP write"),  # a frame or a coalesced GRO frame into the TAP
    ("__writev", "TAP write"),
    ("writev", "TAP write"),
    ("write", "TAP write"),          # ARP/ND replies (rare)
    ("__sendmmsg", "UDP send"),
    ("sendmmsg", "UDP send"),
    ("__recvmmsg", "UDP recv"),
    ("recvmmsg", "UDP recv"),
)
COPY_LEAVES = ("_copy_from_iter", "_copy_to_iter", "copy_user_generic", "rep_movs_alternative",
               "copy_page_from_iter", "copy_page_to_iter", "__copy_user_nocache")
SOFTIRQ_FRAMES = ("handle_softirqs", "net_rx_action", "__do_softirq")
IDLE_FRAMES = ("pv_native_safe_halt", "default_idle", "cpu_idle_poll", "acpi_idle_do_entry",
               "intel_idle", "mwait_idle")

# vxtap's compiled code: Cython functions and the C helpers of its .pxd files (vx_*)
FASTPATH_PREFIXES = ("__pyx_", "vx_")
# libc routines the fast path calls (header compares, copies of headers)
LIBC_HELPERS = ("__memcmp", "__memmove", "__memcpy", "__memset", "memcmp", "memcpy", "memmove")

CATEGORIES = (
    "idle",
    "apps: copy", "apps: stack", "apps: rest",
    "agent TAP read: copy", "agent TAP read: stack", "agent TAP read: rest",
    "agent UDP send: copy", "agent UDP send: stack", "agent UDP send: rest",
    "agent UDP recv: copy", "agent UDP recv: stack", "agent UDP recv: rest",
    "agent TAP write: copy", "agent TAP write: stack", "agent TAP write: rest",
    "agent fast path: checksum", "agent fast path: rest",
    "agent other",
    "other",
)
APPS = ("iperf3", "sockperf", "ping")


def samples(lines: Iterable[str]) -> Iterator[tuple[str, int, list[str]]]:
    """(comm, pid, stack leaf first) of every sample in `perf script -F comm,pid,ip,sym`."""
    head: tuple[str, int] | None = None
    stack: list[str] = []
    for raw in lines:
        line = raw.rstrip("\n")
        if not line.strip():
            if head is not None:
                yield head[0], head[1], stack
            head, stack = None, []
            continue
        if head is None:
            parts = line.split()
            try:
                head = (" ".join(parts[:-1]) or "?", int(parts[-1]))
            except (ValueError, IndexError):
                head = (line.strip(), -1)
            continue
        parts = line.split(None, 1)
        sym = parts[1] if len(parts) > 1 else parts[0]
        stack.append(sym.split("+", 1)[0])
    if head is not None:
        yield head[0], head[1], stack


def _where(stack: list[str]) -> str:
    leaf = stack[0] if stack else ""
    if leaf in COPY_LEAVES:
        return "copy"
    if any(s in SOFTIRQ_FRAMES for s in stack):
        return "stack"
    return "rest"


def categorize(comm: str, pid: int, stack: list[str], agent_pids: set[int]) -> str:
    """The category (one of CATEGORIES) of one sample."""
    if pid == 0 or comm == "swapper" or (stack and stack[0] in IDLE_FRAMES):
        return "idle"
    if pid in agent_pids:
        for frame in reversed(stack):           # outermost first
            for name, step in AGENT_SYSCALLS:
                if frame == name:
                    return f"agent {step}: {_where(stack)}"
        if stack and (stack[0].startswith(FASTPATH_PREFIXES) or (
                stack[0].startswith(LIBC_HELPERS)
                and any(f.startswith(FASTPATH_PREFIXES) for f in stack))):
            return ("agent fast path: checksum" if "csum" in stack[0]
                    else "agent fast path: rest")
        return "agent other"
    if comm in APPS:
        return f"apps: {_where(stack)}"
    return "other"


def split(lines: Iterable[str], agent_pids: set[int]) -> dict[str, float]:
    """Fraction of all samples per category (every category present, summing to 1)."""
    counts: collections.Counter[str] = collections.Counter()
    for comm, pid, stack in samples(lines):
        counts[categorize(comm, pid, stack, agent_pids)] += 1
    total = sum(counts.values())
    return {c: (counts[c] / total if total else 0.0) for c in CATEGORIES} | {"_samples": total}


def record_argv(data: Path, seconds: float) -> list[str]:
    """`perf record` of every CPU with call graphs for `seconds` (499 Hz: ~10k samples/10 s)."""
    return ["perf", "record", "-q", "-a", "-g", "-F", "499", "-o", str(data), "--",
            "sleep", f"{seconds:g}"]


def split_file(data: Path, agent_pids: set[int], timeout: float = 300) -> dict[str, float]:
    """Run `perf script` on a recording and split it."""
    with subprocess.Popen(["perf", "script", "-i", str(data), "-F", "comm,pid,ip,sym"],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                          errors="replace") as p:
        assert p.stdout is not None
        out = split(p.stdout, agent_pids)
        p.wait(timeout=timeout)
    return out


def ns_per_kb(fractions: dict[str, float], seconds: float, nbytes: int,
              cpus: int | None = None) -> dict[str, float]:
    """Machine time per KB moved for every category: fraction x CPUs x seconds / KB."""
    cpus = cpus or os.cpu_count() or 1
    kb = nbytes / 1024
    return {c: fractions.get(c, 0.0) * cpus * seconds * 1e9 / kb for c in CATEGORIES} if kb else {}


def format_table(rows: dict[str, dict[str, float]], per_kb: dict[str, dict[str, float]]) -> str:
    """Category x variant: % of the machine and machine ns per KB moved."""
    variants = list(rows)
    head = f"{'category':28s}" + "".join(f"{v + ' %':>12s}{v + ' ns/KB':>15s}" for v in variants)
    out = [head, "-" * len(head)]
    for c in CATEGORIES:
        if not any(rows[v].get(c) for v in variants):
            continue
        cells = "".join(f"{100 * rows[v].get(c, 0):12.1f}"
                        f"{per_kb.get(v, {}).get(c, float('nan')):15.0f}" for v in variants)
        out.append(f"{c:28s}{cells}")
    busy = "".join(f"{100 * (1 - rows[v].get('idle', 0)):12.1f}"
                   f"{sum(x for k, x in per_kb.get(v, {}).items() if k != 'idle'):15.0f}"
                   for v in variants)
    out.append(f"{'busy (all but idle)':28s}{busy}")
    return "\n".join(out)
