"""Cost of tracing on the fast path: tracing off vs armed vs on (a benchmark, not a test).

    python benchmarks/bench_trace.py [--reps 15] [--batches 200] [--size 98] [--loop-pkts 20000]

Two measurements, each in these modes:
  off              never armed: the loops test `tr.active` once per batch
  off (disarmed)   armed then disarmed: the same single branch
  armed, no match  armed at every point with a VNI filter nothing matches: per-packet filter test
  decision         decision trace of every packet, drained by the Tracer thread
  pcap 4 points    capture at the four points into files by the Tracer thread

1. classification (`process_tap` / `process_udp`, batches of 64): the same C classification and
   tracing hooks as the forwarding loops, called from Python without syscalls. CPU time
   of the calling thread per packet (waits for the GIL or the tracer lock, held by the drain
   threads, are not counted), median/min/max over the repetitions. The Python wrapper (copying frames in, building
   the outputs) is in every row and dominates; the differences between rows are the tracing cost.
2. forwarding loop (needs root): the real `Switch.run_tx` in its own thread (GIL released),
   reading frames from a datagram socketpair standing in for the TAP (filled before the thread
   starts, so it reads full batches of 64, as under load) and sending the VXLAN
   datagrams with sendmmsg() on a raw socket in a private network namespace created for the run,
   over a veth whose peer is down, so the kernel discards them at once: no traffic leaves
   the namespace, which is deleted after the run.
   CPU time of the forwarding thread per packet (`pthread_getcpuclockid`), median/min/max.
   The Tracer thread drains on the other core, as in the agent. This is the number that
   answers "what does tracing cost the fast path": the loop never waits for Python.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fastpath.switch import Switch

from dataplane.netns import netns
from dataplane.trace import Tracer
from tests.test_trace_common import B_MAC, B_VTEP, VNI, make_switch, ping_back, ping_out, vxlan

BATCH = 64
ALL_POINTS = ("tap_in", "ul_out", "ul_in", "tap_out", "decision")


def stats(per: list[float]) -> tuple[float, float, float]:
    return statistics.median(per), min(per), max(per)


# ---- the modes ----------------------------------------------------------------------------------
def _off(sw: Any, tr: Tracer, tmp: str) -> None:
    pass


def _disarmed(sw: Any, tr: Tracer, tmp: str) -> None:
    sw.trace_arm({"tap_in": -1})
    sw.trace_disarm()


def _no_match(sw: Any, tr: Tracer, tmp: str) -> None:
    sw.trace_arm(dict.fromkeys(ALL_POINTS, -1), vni=4242)


def _decision(sw: Any, tr: Tracer, tmp: str) -> None:
    tr.add(tr.keep)


def _pcap(sw: Any, tr: Tracer, tmp: str) -> None:
    tr.pcap_start(tempfile.mkdtemp(dir=tmp))


MODES: list[tuple[str, Callable[[Any, Tracer, str], None]]] = [
    ("off", _off), ("off (disarmed)", _disarmed), ("armed, no match", _no_match),
    ("decision", _decision), ("pcap 4 points", _pcap)]


# ---- 1. classification ----------------------------------------------------------------------------
def bench_classify(args: argparse.Namespace, tmp: str) -> list[tuple[Any, ...]]:
    pad = max(0, args.size - len(ping_out()))
    tx = [ping_out(i) + bytes(pad) for i in range(BATCH)]
    rx = [(B_VTEP, vxlan(VNI, ping_back(i) + bytes(pad))) for i in range(BATCH)]
    n = BATCH * args.batches
    combos: list[tuple[str, str, Any, Tracer, list[float]]] = []
    for name, setup in MODES:
        for direction in ("tx", "rx"):
            sw = make_switch()
            tr = Tracer(sw, keep=10**8)
            setup(sw, tr, tmp)
            tr.start()
            combos.append((name, direction, sw, tr, []))

    def fn(sw: Any, tr: Tracer, direction: str) -> None:
        for _ in range(args.batches):
            with tr.exclusive():          # tests/TRACE_NOTES.md T1: no drain mid-call
                if direction == "tx":
                    sw.process_tap(VNI, tx)
                else:
                    sw.process_udp(rx)

    for rep in range(args.reps + 1):      # the first round warms up
        for _name, direction, sw, tr, per in combos:   # interleaved: drift hits all alike
            t0 = time.thread_time_ns()
            fn(sw, tr, direction)
            if rep:
                per.append((time.thread_time_ns() - t0) / n)
    rows = []
    for name, direction, sw, tr, per in combos:
        st = sw.trace_status()
        tr.close()
        rows.append((name, direction, *stats(per), st["recorded"], st["dropped"]))
    return rows


# ---- 2. the forwarding loop ---------------------------------------------------------------------
def _ip(*a: str) -> None:
    subprocess.run(["ip", *a], check=True, capture_output=True, timeout=15)


def _loop_once(ns: str, frames: list[bytes], npkts: int,
               setup: Callable[[Any, Tracer, str], None], tmp: str) -> tuple[float, ...]:
    """Queue npkts frames, then let a fresh run_tx thread forward them in full batches;
    returns (CPU ns per packet of that thread, records, ring drops, sent, send errors)."""
    with netns(ns):
        raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        tap, feed = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        feed.setsockopt(socket.SOL_SOCKET, 32, 256 << 20)      # SO_SNDBUFFORCE
        tap.setblocking(False)
        feed.setblocking(False)
        for i in range(npkts):
            feed.send(frames[i & (BATCH - 1)])
        sw = Switch("10.99.0.1", underlay_mtu=1500)
        sw.add_network(VNI, tap.fileno())
        sw.fdb_add(VNI, B_MAC, "10.99.0.2")
        tr = Tracer(sw, keep=10**8)
        setup(sw, tr, tmp)
        tr.start()
        th = threading.Thread(target=sw.run_tx, args=(VNI, raw.fileno()), daemon=True)
        th.start()
        assert th.ident is not None
        clk = time.pthread_getcpuclockid(th.ident)
        deadline = time.monotonic() + 60
        while sw.counters(VNI)["tap_rx_packets"] < npkts:
            if time.monotonic() > deadline:
                raise RuntimeError("the forwarding loop stopped reading")
            time.sleep(0.002)
        cpu = time.clock_gettime_ns(clk)              # the thread now waits in poll()
        sw.stop()
        th.join(5)
        st = sw.trace_status()
        tr.close()
        c = sw.counters(VNI)
        return (cpu / npkts, st["recorded"], st["dropped"], c["udp_tx_packets"],
                c["drop_send_error"])
    finally:
        for s in (tap, feed, raw):
            s.close()


def bench_loop(args: argparse.Namespace, tmp: str) -> list[tuple[Any, ...]]:
    ns = f"vxtb{os.getpid() % 10000}{random.randrange(256):02x}"
    _ip("netns", "add", ns)
    try:
        _ip("-n", ns, "link", "set", "lo", "up")
        # v0 -> v1, v1 down: veth drops every frame at once (the cheapest sink at hand)
        _ip("-n", ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        _ip("-n", ns, "addr", "add", "10.99.0.1/24", "dev", "v0")
        _ip("-n", ns, "link", "set", "v0", "up")
        _ip("-n", ns, "neigh", "add", "10.99.0.2", "lladdr", "02:99:00:00:00:02", "dev", "v0",
            "nud", "permanent")
        # the socketpair standing in for the TAP lives in the namespace too: its queue limit
        # (net.unix.max_dgram_qlen, per namespace) is raised so a whole repetition fits
        subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw",
                        f"net.unix.max_dgram_qlen={args.loop_pkts + 1000}"], check=True,
                       timeout=15)
        pad = max(0, args.size - len(ping_out()))
        frames = [ping_out(i) + bytes(pad) for i in range(BATCH)]
        acc: dict[str, list[Any]] = {name: [[], 0, 0, 0, 0] for name, _ in MODES}
        for rep in range(args.reps + 1):              # the first round warms up
            for name, setup in MODES:                 # interleaved: drift hits every mode alike
                r = _loop_once(ns, frames, args.loop_pkts, setup, tmp)
                if rep:
                    a = acc[name]
                    a[0].append(r[0])
                    for k in range(1, 5):
                        a[k] += r[k]
        return [(name, "tx", *stats(a[0]), *a[1:]) for name, a in acc.items()]
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True, timeout=15)


def _print(rows: list[tuple[Any, ...]], unit: str) -> None:
    print(f"  {'mode':17} {'dir':3} {unit:>15} {'min':>8} {'max':>8} {'records':>9} "
          f"{'ring drops':>10}  vs off")
    base = {r[1]: r[2] for r in rows if r[0] == "off"}
    for name, d, med, lo, hi, rec, drop, *_ in rows:
        print(f"  {name:17} {d:3} {med:15.1f} {lo:8.1f} {hi:8.1f} {rec:9} {drop:10}  "
              f"{med - base[d]:+7.1f} ns ({(med / base[d] - 1) * 100:+5.1f}%)")


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--batches", type=int, default=200, help="batches of 64 per repetition")
    ap.add_argument("--size", type=int, default=98, help="frame size in bytes (ping: 98)")
    ap.add_argument("--loop-pkts", type=int, default=20000,
                    help="frames per repetition through the forwarding loop")
    ap.add_argument("--no-loop", action="store_true", help="skip the forwarding-loop part")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="vxtap-bench-")
    try:
        return _run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)        # the pcap files of the runs


def _run(args: argparse.Namespace, tmp: str) -> int:
    print(f"vxtap tracing cost: {args.size}-byte frames, {args.reps} reps, "
          f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print(f"\n1. classification (process_tap/process_udp, {args.batches} batches of {BATCH} "
          f"per rep): CPU ns per packet of the caller")
    rows = bench_classify(args, tmp)
    _print(rows, "median CPU ns")
    if any(r[6] for r in rows):
        print("  (ring drops here are an artifact: the caller holds the GIL and Tracer.exclusive()"
              "\n   for whole batches, tests/TRACE_NOTES.md T1, so the drain thread can fall "
              "behind;\n   the records are dropped and counted, the packets never)")
    if args.no_loop:
        return 0
    if os.geteuid() != 0:
        print("\n2. forwarding loop: skipped (needs root for the namespace and raw socket)")
        return 0
    print(f"\n2. forwarding loop (run_tx, socketpair -> sendmmsg, {args.loop_pkts} frames per "
          f"rep): CPU ns per packet of the forwarding thread")
    rows = bench_loop(args, tmp)
    _print(rows, "median CPU ns")
    sent = {r[0]: (r[7], r[8]) for r in rows}
    print("  datagrams sent / send errors per mode: "
          + ", ".join(f"{k} {v[0]}/{v[1]}" for k, v in sent.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
