"""System benchmark: Linux kernel VXLAN vs vxtap, pod to pod across two emulated nodes.

    python -m benchmarks.system            # full: 10 s per measurement, 3 repetitions (~8 min)
    python -m benchmarks.system --quick    # 3 s, 3 repetitions (~3 min)
    bash benchmarks/run.sh [--quick]       # the same, with the repo's virtualenv

Root only. The flow:

1. Build the same topology twice with tests/topo.py (unique namespace prefixes vxbk<pid>,
   vxbv<pid>): two nodes joined by a veth underlay (MTU 1500), a bridge br0 and one pod per node,
   pods at MTU 1450. In the first, each node gets a kernel VXLAN device (nolearning, static
   FDB); in the second, each node gets a `vxtap agent --netns NODE` (static FDB and ARP table).
   The underlay veths keep their default offloads (checksum, TSO), as a real NIC would do them
   in hardware; --wire-checksums turns TX checksum offload off, as the integration tests do
   (that roughly halves the kernel's TCP numbers here).
2. Check both: ping both ways, and a full-size ping with DF set.
3. For each repetition, for each test, run the test on both topologies back to back; the order
   alternates (kernel first on even repetitions, vxtap first on odd ones), so slow drift of the
   machine's load hits both columns alike.
   Tests: iperf3 TCP 1 stream and N streams; iperf3 UDP 64-byte payload at -b 0 (delivered
   packets per second and loss); sockperf UDP ping-pong (full RTT p50/p99) with client and
   server on different CPUs (like pods on two machines), and again on one CPU; ping (p50/avg).
   Around every vxtap traffic run, /proc/<agent>/task/<tid>/{stat,schedstat} of every agent
   thread and `vxtap show stats --json` are read before and after: CPU time per packet.
   IPv6 underlay (issue 10): two more topologies, the same but over an IPv6-only underlay
   (fd00:100::n, pods at MTU 1430: 70 bytes of overhead), kernel VXLAN with `local <v6>` and
   vxtap with `--local <v6>` (prefixes vxbk6<pid>, vxbv6<pid>); the tests of --ipv6-tests
   (default tcp1, sockperf, ping) also run on them, interleaved with the IPv4 ones.
4. Print a table (min / median / max per column, vxtap / kernel of the medians, the target
   ratios of issue 5), and the IPv6-underlay table (its kernel and vxtap columns), write JSON
   (summary, summary_ipv6) and a PNG chart to benchmarks/results/.
5. Tear everything down: the topologies stop their processes by PID and delete their namespaces
   (try/finally, plus topo's atexit hook; SIGTERM and SIGINT unwind the same way).

Every subprocess has a timeout; a failed measurement is recorded with its error and the run
goes on, so one bad iperf3 never loses the other numbers.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks import machine_split
from tests import topo

HERE = Path(__file__).resolve().parent
VARIANTS = ("kernel", "vxtap")
VARIANTS6 = ("kernel6", "vxtap6")       # the same over an IPv6-only underlay
TESTS = ("tcp1", "tcpN", "udp64", "sockperf", "sockperf_same", "ping")
IPV6_TESTS = ("tcp1", "sockperf", "ping")
IPERF_PORT = 5301
SOCKPERF_PORT = 11311
CLK_TCK = os.sysconf("SC_CLK_TCK")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclasses.dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    bar: float | None = None            # issue 5/8 target for vxtap / kernel (median ratio)
    fmt: str = "{:.2f}"
    diff: bool = False                  # compare as vxtap - kernel (percentages), not a ratio


def metrics(streams: int) -> list[Metric]:
    return [
        Metric("tcp1_gbps", "TCP 1 stream", "Gbit/s", True, 0.5),
        Metric("tcpN_gbps", f"TCP {streams} streams", "Gbit/s", True, 0.5),
        Metric("udp64_kpps", "UDP 64 B delivered", "kpps", True, 0.45, "{:.1f}"),
        Metric("udp64_offered_kpps", "UDP 64 B offered", "kpps", True, None, "{:.1f}"),
        Metric("udp64_at_pod_kpps", "UDP 64 B to pod sock", "kpps", True, None, "{:.1f}"),
        Metric("udp64_loss_pct", "UDP 64 B loss", "%", False, None, "{:.1f}", diff=True),
        Metric("sockperf_p50_us", "sockperf RTT p50", "us", False, 1.4, "{:.1f}"),
        Metric("sockperf_p99_us", "sockperf RTT p99", "us", False, None, "{:.1f}"),
        Metric("sockperf_same_p50_us", "sockperf p50 1 CPU", "us", False, None, "{:.1f}"),
        Metric("sockperf_same_p99_us", "sockperf p99 1 CPU", "us", False, None, "{:.1f}"),
        Metric("ping_p50_us", "ping RTT p50", "us", False, None, "{:.0f}"),
        Metric("ping_avg_us", "ping RTT avg", "us", False, None, "{:.0f}"),
    ]


class MeasureError(RuntimeError):
    """A measurement failed; recorded in the results, the run goes on."""


# ------------------------------------------------------------------------------------------------
# Measurements (each returns a flat dict of numbers plus "raw" details)
# ------------------------------------------------------------------------------------------------


def _iperf3(t: topo.Topology, seconds: float, extra: Sequence[str]) -> dict[str, Any]:
    """One iperf3 run pod(1) -> pod(2); the server is a one-off process stopped by PID."""
    src, dst = t.pod(1), t.pod(2)
    server = t.start(["iperf3", "-s", "-1", "--forceflush", "-B", dst.ip, "-p", IPERF_PORT],
                     dst.ns, name=f"iperf3-s-{len(t.procs)}")
    try:
        server.wait_output(r"Server listening", timeout=10)
        cp = topo.run(["iperf3", "-c", dst.ip, "-p", IPERF_PORT, "-t", f"{seconds:g}", "-J",
                       "--connect-timeout", "5000", *extra], src.ns,
                      timeout=seconds + 30, check=False)
    except topo.TopoError as e:
        raise MeasureError(str(e).splitlines()[0]) from None
    finally:
        server.stop(timeout=3)
    try:
        data = json.loads(cp.stdout)
    except json.JSONDecodeError:
        raise MeasureError(f"iperf3 output is not JSON (exit {cp.returncode}): "
                           f"{cp.stdout[-300:]!r} {cp.stderr[-300:]!r}") from None
    if "error" in data:
        raise MeasureError(f"iperf3: {data['error']}")
    return data["end"]


def measure_tcp(t: topo.Topology, seconds: float, streams: int) -> dict[str, Any]:
    end = _iperf3(t, seconds, ["-P", str(streams)] if streams > 1 else [])
    key = "tcp1_gbps" if streams == 1 else "tcpN_gbps"
    rx = end["sum_received"]
    return {key: rx["bits_per_second"] / 1e9,
            "raw": {"retransmits": end.get("sum_sent", {}).get("retransmits"),
                    "seconds": rx.get("seconds"), "bytes": rx.get("bytes"),
                    "cpu": end.get("cpu_utilization_percent")},
            "_packets_hint": None}


def measure_udp64(t: topo.Topology, seconds: float) -> dict[str, Any]:
    end = _iperf3(t, seconds, ["-u", "-l", "64", "-b", "0"])
    rx = end.get("sum_received") or end["sum"]   # 3.12: sum_received; older: sum
    secs = rx["seconds"] or seconds
    delivered = rx["packets"] - rx["lost_packets"]
    return {"udp64_kpps": delivered / secs / 1e3,
            "udp64_loss_pct": float(rx["lost_percent"]),
            "udp64_offered_kpps": rx["packets"] / secs / 1e3,
            "raw": {"sent_packets": rx["packets"], "lost_packets": rx["lost_packets"],
                    "delivered_packets": delivered, "seconds": secs,
                    "offered_kpps": rx["packets"] / secs / 1e3,
                    "cpu": end.get("cpu_utilization_percent")}}


def parse_sockperf(text: str) -> dict[str, float]:
    """Percentiles (usec) from `sockperf ping-pong --full-rtt` output."""
    text = ANSI.sub("", text)
    out: dict[str, float] = {}
    for pct, key in (("50.000", "p50"), ("99.000", "p99"), ("99.900", "p99.9")):
        m = re.search(rf"percentile {re.escape(pct)} =\s*([\d.]+)", text)
        if m:
            out[key] = float(m.group(1))
    m = re.search(r"avg-rtt=([\d.]+)", text) or re.search(r"avg-lat=([\d.]+)", text)
    if m:
        out["avg"] = float(m.group(1))
    m = re.search(r"<MIN> observation =\s*([\d.]+)", text)
    if m:
        out["min"] = float(m.group(1))
    m = re.search(r"\[Valid Duration\].*?SentMessages=(\d+); ReceivedMessages=(\d+)", text)
    if m:
        out["sent"], out["received"] = float(m.group(1)), float(m.group(2))
    return out


def pin_prefixes(pin: str) -> tuple[list[str], list[str]]:
    """taskset prefixes (server, client) for a latency test.

    "split": server and client on different CPUs, like two pods on two machines: every
    message wakes a process on another CPU. "same": both on one CPU (only possible because the
    two "nodes" share a machine; the kernel path then hands over without a cross-CPU wakeup,
    which on this VM class is ~3x faster). "none": the scheduler decides, and the kernel
    column's p50 flips between the two from run to run.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if pin == "none" or not cpus:
        return [], []
    server_cpu = cpus[0]
    client_cpu = cpus[1] if pin == "split" and len(cpus) > 1 else cpus[0]
    return (["taskset", "-c", str(server_cpu)], ["taskset", "-c", str(client_cpu)])


def measure_sockperf(t: topo.Topology, seconds: float, pin: str = "split",
                     key: str = "sockperf") -> dict[str, Any]:
    src, dst = t.pod(1), t.pod(2)
    pre_s, pre_c = pin_prefixes(pin)
    server = t.start([*pre_s, "stdbuf", "-oL", "-eL", "sockperf", "server", "-i", dst.ip,
                      "-p", SOCKPERF_PORT], dst.ns, name=f"sockperf-s-{len(t.procs)}")
    try:
        try:
            server.wait_output(r"listen on|IP = ", timeout=5)
        except topo.TopoError:
            if not server.alive:
                raise
        time.sleep(0.2)
        cp = topo.run([*pre_c, "sockperf", "ping-pong", "-i", dst.ip, "-p", SOCKPERF_PORT,
                       "-t", max(1, round(seconds)), "-m", 64, "--full-rtt"], src.ns,
                      timeout=seconds + 30, check=False)
    except topo.TopoError as e:
        raise MeasureError(str(e).splitlines()[0]) from None
    finally:
        server.stop(timeout=3)
    st = parse_sockperf(cp.stdout + cp.stderr)
    if "p50" not in st or "p99" not in st:
        raise MeasureError(f"sockperf printed no percentiles (exit {cp.returncode}): "
                           f"{ANSI.sub('', cp.stdout + cp.stderr)[-400:]!r}")
    return {f"{key}_p50_us": st["p50"], f"{key}_p99_us": st["p99"],
            "raw": {**st, "pin": pin}}


def measure_ping(t: topo.Topology, seconds: float) -> dict[str, Any]:
    src, dst = t.pod(1), t.pod(2)
    count = max(20, int(seconds * 20))
    cp = topo.run(["ping", "-n", "-c", count, "-i", "0.05", "-W", "1", dst.ip], src.ns,
                  timeout=count * 0.05 + 20, check=False)
    rtts = sorted(float(x) * 1e3 for x in re.findall(r"time=([\d.]+) ms", cp.stdout))
    if not rtts:
        raise MeasureError(f"ping: no replies (exit {cp.returncode}): {cp.stdout[-300:]!r}")
    return {"ping_p50_us": statistics.median(rtts), "ping_avg_us": statistics.fmean(rtts),
            "raw": {"sent": count, "received": len(rtts), "min_us": rtts[0],
                    "p99_us": rtts[min(len(rtts) - 1, math.ceil(0.99 * len(rtts)) - 1)],
                    "max_us": rtts[-1]}}


# ------------------------------------------------------------------------------------------------
# Agent CPU per packet
# ------------------------------------------------------------------------------------------------


def _thread_cpu(pid: int, tid: int) -> dict[str, int] | None:
    """user/system ns (from stat, clock-tick resolution) and run time ns (schedstat)."""
    base = Path(f"/proc/{pid}/task/{tid}")
    try:
        fields = (base / "stat").read_text().rsplit(")", 1)[1].split()
        sched = (base / "schedstat").read_text().split()
    except OSError:
        return None
    # after the comm: fields[0] is stat field 3 (state); utime = 14, stime = 15
    tick_ns = 1_000_000_000 // CLK_TCK
    return {"user_ns": int(fields[11]) * tick_ns, "sys_ns": int(fields[12]) * tick_ns,
            "run_ns": int(sched[0])}


def _agent_threads(agent: topo.Agent) -> dict[str, int]:
    """{thread name: native id} from the agent's `info` op; else every task by comm."""
    try:
        threads = agent.request("info", timeout=5).get("threads") or {}
        if threads:
            return {str(k): int(v) for k, v in threads.items() if v}
    except (OSError, topo.AgentError, AttributeError):
        pass
    out = {}
    for task in Path(f"/proc/{agent.proc.pid}/task").iterdir():
        comm = (task / "comm").read_text().strip()
        out[f"{comm}/{task.name}"] = int(task.name)
    return out


def _agent_counters(agent: topo.Agent) -> dict[str, int]:
    """Counters of the agent's network plus its global drops, from `vxtap show stats --json`."""
    st = agent.stats()
    net = next((n for n in st["networks"] if n["vni"] == agent.vni), st["networks"][0])
    c = dict(net["counters"])
    for k, v in st.get("global", {}).items():
        c[f"global_{k}"] = v
    return c


class AgentCpu:
    """Snapshot of every agent's forwarding threads and counters around one traffic run."""

    def __init__(self, t: topo.Topology) -> None:
        self.t = t
        self.threads = {a.node.index: _agent_threads(a) for a in t.agents}

    def snapshot(self) -> dict[int, dict[str, Any]]:
        snap = {}
        for a in self.t.agents:
            snap[a.node.index] = {
                "threads": {name: _thread_cpu(a.proc.pid, tid)
                            for name, tid in self.threads[a.node.index].items()},
                "process": _proc_cpu(a.proc.pid),
            }
        return snap

    def counters(self) -> dict[int, dict[str, int]]:
        return {a.node.index: _agent_counters(a) for a in self.t.agents}

    @staticmethod
    def diff(cpu0: dict[int, Any], cpu1: dict[int, Any], c0: dict[int, Any],
             c1: dict[int, Any]) -> dict[str, Any]:
        """Per node, per thread: user/sys/run ns per packet of the packets that thread moved.

        A TX thread (vxtap-tx-<vni>) moves frames read from the TAP (tap_rx_packets); the RX
        thread (vxtap-rx) moves datagrams read from the underlay socket (udp_rx_packets + inbound
        drops); any other thread (vxtap-fwd of the single-thread mode) is counted for both.
        """
        out: dict[str, Any] = {}
        for node, snap in cpu1.items():
            dc = {k: c1[node].get(k, 0) - c0[node].get(k, 0) for k in c1[node]}
            rx_pkts = dc.get("udp_rx_packets", 0) + sum(
                v for k, v in dc.items() if k.startswith("global_drop_")
                or k in ("drop_inner_short", "drop_spoofed", "drop_bad_inner_src"))
            tx_pkts = dc.get("tap_rx_packets", 0)
            rx_bytes = dc.get("udp_rx_bytes", 0)
            tx_bytes = dc.get("tap_rx_bytes", 0)
            threads = {}
            for name, after in snap["threads"].items():
                before = cpu0[node]["threads"].get(name)
                if not after or not before:
                    continue
                d = {k: after[k] - before[k] for k in after}
                way = thread_direction(name)
                pk = {"tx": tx_pkts, "rx": rx_pkts}.get(way, tx_pkts + rx_pkts)
                nb = {"tx": tx_bytes, "rx": rx_bytes}.get(way, tx_bytes + rx_bytes)
                threads[name] = {
                    **d, "direction": way, "packets": pk, "bytes": nb,
                    # with offloads one "packet" is up to 64 KB: per KB is the comparable cost
                    "run_ns_per_kb": d["run_ns"] * 1024 / nb if nb else None,
                    "user_ns_per_pkt": d["user_ns"] / pk if pk else None,
                    "sys_ns_per_pkt": d["sys_ns"] / pk if pk else None,
                    "run_ns_per_pkt": d["run_ns"] / pk if pk else None,
                }
            drops = {k: v for k, v in dc.items() if "drop" in k and v}
            p0, p1 = cpu0[node].get("process"), snap.get("process")
            proc = {k: p1[k] - p0[k] for k in p1} if p0 and p1 else None
            out[f"node{node}"] = {"threads": threads, "process": proc, "tx_packets": tx_pkts,
                                  "rx_packets": rx_pkts, "drops": drops}
        return out


def _proc_cpu(pid: int) -> dict[str, int] | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    tick_ns = 1_000_000_000 // CLK_TCK
    return {"user_ns": int(fields[11]) * tick_ns, "sys_ns": int(fields[12]) * tick_ns}


def thread_direction(name: str) -> str:
    """"tx" (TAP -> underlay), "rx" (underlay -> TAP) or "both", from the thread's name."""
    parts = re.split(r"[-_.]", name)
    return "tx" if "tx" in parts else "rx" if "rx" in parts else "both"


DIRECTION_LABEL = {"tx": "TAP->UDP", "rx": "UDP->TAP", "both": "both ways"}


def cpu_summary(cpu: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{"n1 vxtap-tx-42": {direction, packets, user_ns, sys_ns, run_ns} per packet} for every
    forwarding thread that moved packets in this run."""
    out: dict[str, dict[str, Any]] = {}
    for node, info in sorted(cpu.items()):
        for name, th in info.get("threads", {}).items():
            if th.get("run_ns_per_pkt") is None:
                continue
            out[f"n{node.removeprefix('node')} {name}"] = {
                "direction": th["direction"], "packets": th["packets"],
                "user_ns": th["user_ns_per_pkt"], "sys_ns": th["sys_ns_per_pkt"],
                "run_ns": th["run_ns_per_pkt"], "run_ns_per_kb": th.get("run_ns_per_kb")}
    return out


# ------------------------------------------------------------------------------------------------
# Topologies
# ------------------------------------------------------------------------------------------------


def build(variant: str, args: argparse.Namespace) -> topo.Topology:
    v6 = variant.endswith("6")
    prefix = f"vxb{variant[0]}{'6' if v6 else ''}{os.getpid() % 100000:05d}"
    kw: dict[str, Any] = {}
    if "wire_checksums" in inspect.signature(topo.Topology).parameters:
        kw["wire_checksums"] = args.wire_checksums
    elif args.wire_checksums:
        raise topo.TopoError("this tests/topo.py has no wire_checksums option")
    if v6:
        kw["underlay"] = "ipv6"
    t = topo.Topology(nodes=2, pods=1, mtu=args.mtu, prefix=prefix, **kw)
    t.build()
    if variant.startswith("kernel"):
        t.kernel_vxlan_mesh()
    else:
        for node in t.nodes:
            t.add_vxtap_agent(node, extra=args.agent_arg)
    p1, p2 = t.pod(1), t.pod(2)
    for a, b in ((p1, p2), (p2, p1)):
        a.ping(b, count=3, interval=0.1)
    full = p1.mtu - 28                                   # IPv4 20 + ICMP 8
    st = p1.ping(p2, count=2, interval=0.1, size=full, dont_fragment=True, check=False)
    if st.received == 0:
        raise topo.TopoError(f"{variant}: full-size ping ({full} B payload, DF) failed:\n"
                             f"{st.output}" + (f"\n{t.agent_logs()}" if t.agents else ""))
    return t


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------


def _stats(vals: list[float]) -> tuple[float, float, float] | None:
    return (min(vals), statistics.median(vals), max(vals)) if vals else None


def summarize(results: dict[str, Any], mets: list[Metric],
              variants: tuple[str, str] = VARIANTS) -> list[dict[str, Any]]:
    """One row per metric: "kernel"/"vxtap" cells of `variants` (the IPv4 pair, or the IPv6
    pair VARIANTS6 under the same keys), their ratio and the bar."""
    rows = []
    for m in mets:
        row: dict[str, Any] = {"metric": m.key, "label": m.label, "unit": m.unit,
                               "higher_is_better": m.higher_is_better, "bar": m.bar}
        for key, v in zip(VARIANTS, variants):
            vals = [r[m.key] for r in results["runs"]
                    if r["variant"] == v and r.get(m.key) is not None]
            st = _stats(vals)
            row[key] = dict(zip(("min", "median", "max"), st)) if st else None
            row[f"{key}_n"] = len(vals)
        k, x = row["kernel"], row["vxtap"]
        row["ratio"] = (x["median"] / k["median"]) if k and x and k["median"] else None
        row["diff"] = (x["median"] - k["median"]) if k and x else None
        row["compare"] = "diff" if m.diff else "ratio"
        if m.bar is not None and row["ratio"] is not None:
            r = row["ratio"]
            row["bar_met"] = r >= m.bar if m.higher_is_better else r <= m.bar
        rows.append(row)
    return rows


def cpu_rows(results: dict[str, Any], variant: str = "vxtap") -> list[dict[str, Any]]:
    rows = []
    for test in ("tcp1", "tcpN", "udp64"):
        runs = [r for r in results["runs"] if r["variant"] == variant and r["test"] == test
                and r.get("cpu_summary")]
        threads: dict[str, str] = {}
        for r in runs:
            for key, th in r["cpu_summary"].items():
                if isinstance(th, dict):          # (JSON of older harness versions: skip)
                    threads.setdefault(key, th["direction"])
        for key, way in threads.items():
            row: dict[str, Any] = {"test": test, "thread": key, "direction": way}
            for part in ("user", "sys", "run", "run_per_kb"):
                field = "run_ns_per_kb" if part == "run_per_kb" else f"{part}_ns"
                vals = [r["cpu_summary"][key][field] for r in runs
                        if isinstance(r["cpu_summary"].get(key), dict)
                        and r["cpu_summary"][key].get(field) is not None]
                st = _stats(vals)
                row[part] = dict(zip(("min", "median", "max"), st)) if st else None
            rows.append(row)
    return rows


def _cell(st: dict[str, float] | None, fmt: str) -> str:
    if not st:
        return "n/a"
    return f"{fmt.format(st['min'])} / {fmt.format(st['median'])} / {fmt.format(st['max'])}"


def format_table(rows: list[dict[str, Any]], mets: list[Metric],
                 crows: list[dict[str, Any]]) -> str:
    fmts = {m.key: m.fmt for m in mets}
    lines = []
    head = (f"{'metric':<22} {'unit':<7} {'kernel min / med / max':>26} "
            f"{'vxtap min / med / max':>26} {'vxtap/kernel':>12}  target")
    lines += [head, "-" * len(head)]
    for r in rows:
        f = fmts[r["metric"]]
        if r["compare"] == "diff":
            ratio = f"{r['diff']:+.1f} pp" if r["diff"] is not None else "n/a"
        else:
            ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "n/a"
        target = ""
        if r["bar"] is not None:
            op = ">=" if r["higher_is_better"] else "<="
            verdict = {True: "met", False: "NOT met", None: "?"}[r.get("bar_met")]
            target = f"{op}{r['bar']:.2f}x {verdict}"
            if r["ratio"] is not None and f"{r['ratio']:.2f}" == f"{r['bar']:.2f}":
                target += f" ({r['ratio']:.3f}x)"
        lines.append(f"{r['label']:<22} {r['unit']:<7} {_cell(r['kernel'], f):>26} "
                     f"{_cell(r['vxtap'], f):>26} {ratio:>12}  {target}")
    if crows:
        lines += ["", "vxtap agent CPU time per packet, ns (min / median / max over repetitions)",
                  (f"{'test':<7} {'thread':<30} {'user':>22} {'system':>22} "
                   f"{'on-CPU (schedstat)':>22} {'on-CPU ns per KB':>22}")]
        for c in crows:
            cells = [f"{_cell(c.get(k), '{:.0f}'):>22}" for k in ("user", "sys", "run",
                                                                    "run_per_kb")]
            name = f"{c['thread']} ({DIRECTION_LABEL[c['direction']]})"
            lines.append(f"{c['test']:<7} {name:<30} {' '.join(cells)}")
        lines.append("Packets: frames read from the TAP (TAP->UDP), datagrams read from the "
                     "underlay (UDP->TAP), or both. user/system from /proc/<pid>/task/<tid>/stat "
                     "(10 ms ticks); on-CPU from schedstat (ns); per KB: on-CPU time per 1024 "
                     "bytes moved (TAP frames read / datagrams received; with offloads a TAP "
                     "frame is up to 64 KB, so per KB is the comparable number). Kernel VXLAN "
                     "works in softirq: no per-thread number.")
    return "\n".join(lines)


def chart(path: Path, rows: list[dict[str, Any]], title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["kernel"] or r["vxtap"]]
    n = len(rows)
    cols = 4
    nrows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3.4 * nrows), squeeze=False)
    colors = {"kernel": "#4c72b0", "vxtap": "#dd8452"}
    for ax, r in zip(axes.flat, rows):
        for i, v in enumerate(VARIANTS):
            st = r[v]
            if not st:
                continue
            ax.bar(i, st["median"], color=colors[v], width=0.6)
            err = [[st["median"] - st["min"]], [st["max"] - st["median"]]]
            ax.errorbar(i, st["median"], yerr=err, color="black", capsize=4)
        ax.set_xticks(range(len(VARIANTS)), VARIANTS)
        if r["compare"] == "diff":
            sub = f"vxtap - kernel = {r['diff']:+.1f} pp" if r["diff"] is not None else ""
        else:
            sub = f"vxtap/kernel = {r['ratio']:.2f}x" if r["ratio"] is not None else ""
        if r["bar"] is not None and r["ratio"] is not None:
            sub += f" (target {'>=' if r['higher_is_better'] else '<='}{r['bar']}x)"
        ax.set_title(f"{r['label']} [{r['unit']}]\n{sub}", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    model = ""
    try:
        m = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
        model = m.group(1).strip() if m else ""
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "hostname": platform.node(), "python": platform.python_version(),
            "loadavg_start": os.getloadavg()}


def code_info() -> dict[str, Any]:
    """What was measured: git HEAD, uncommitted files, and the fast-path modules' hashes."""
    root = topo.REPO_ROOT
    out: dict[str, Any] = {}
    try:
        out["git_head"] = topo.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                                   timeout=10, check=False).stdout.strip()
        out["uncommitted"] = topo.run(["git", "-C", root, "status", "--porcelain", "--",
                                       "fastpath", "dataplane"], timeout=10,
                                      check=False).stdout.split("\n")[:50]
        out["uncommitted"] = [x for x in out["uncommitted"] if x.strip()]
    except topo.TopoError:
        pass
    out["fastpath_modules"] = {p.name: topo.sha256_file(p)[:16]
                               for p in sorted((root / "fastpath").glob("*.so"))}
    return out


def tool_versions() -> dict[str, str]:
    out = {}
    for tool, argv in (("iperf3", ["iperf3", "--version"]), ("sockperf", ["sockperf", "--version"]),
                       ("ping", ["ping", "-V"])):
        try:
            cp = topo.run(argv, timeout=10, check=False)
            out[tool] = ANSI.sub("", (cp.stdout or cp.stderr)).strip().splitlines()[0]
        except (topo.TopoError, IndexError):
            out[tool] = "?"
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.system",
                                 description=(__doc__ or "").split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 s per measurement, 3 repetitions")
    ap.add_argument("--duration", type=float,
                    help="seconds per measurement (default 10; 3 with --quick)")
    ap.add_argument("--reps", type=int, help="repetitions per variant and test (default 3)")
    ap.add_argument("--streams", type=int, default=4, help="TCP streams of the multi-stream test")
    ap.add_argument("--tests", default=",".join(TESTS),
                    help=f"comma-separated subset of {','.join(TESTS)}")
    ap.add_argument("--ipv6-tests", default=",".join(IPV6_TESTS),
                    help="tests that also run over an IPv6-only underlay (kernel VXLAN and "
                         f"vxtap columns of their own; default {','.join(IPV6_TESTS)}; '' = "
                         "no IPv6 topologies)")
    ap.add_argument("--warmup", type=float, default=2,
                    help="seconds of unrecorded TCP traffic per topology before measuring")
    ap.add_argument("--pin-latency", choices=["split", "same", "none"], default="split",
                    help="CPU placement of the sockperf client and server of the `sockperf` "
                         "test: different CPUs (default, like pods on two machines), one CPU, "
                         "or unpinned; `sockperf_same` always uses one CPU")
    ap.add_argument("--wire-checksums", action="store_true",
                    help="turn TX checksum offload off on the underlay veths (what the "
                         "integration tests do for mixed kernel/vxtap peers); default: veth "
                         "defaults, offloads on, as a NIC would do them")
    ap.add_argument("--mtu", type=int, default=1500, help="underlay MTU (pods get MTU-50)")
    ap.add_argument("--agent-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for `vxtap agent` (repeatable), "
                         "e.g. --agent-arg=--batch=32")
    ap.add_argument("--out", type=Path, default=HERE / "results",
                    help="directory for JSON and PNG (git-ignored)")
    ap.add_argument("--perf", action="store_true",
                    help="perf-record the agents' forwarding threads during the first vxtap "
                         "repetition of each traffic test (reports in --out), and every CPU "
                         "during the first kernel and vxtap repetition: where the machine's "
                         "time goes, by category, in % and ns per KB (machine_split.py)")
    ap.add_argument("--no-chart", action="store_true", help="skip the PNG")
    a = ap.parse_args(argv)
    a.duration = a.duration or (3.0 if a.quick else 10.0)
    a.reps = a.reps or 3
    a.tests = [x.strip() for x in a.tests.split(",") if x.strip()]
    a.ipv6_tests = [x.strip() for x in a.ipv6_tests.split(",") if x.strip()]
    bad = [x for x in a.tests + a.ipv6_tests if x not in TESTS]
    if bad:
        ap.error(f"unknown tests {bad}; choose from {TESTS}")
    if a.reps < 1 or a.duration < 1:
        ap.error("--reps >= 1 and --duration >= 1")
    if a.perf and shutil.which("perf") is None:
        ap.error("--perf needs the perf tool (Debian: apt-get install linux-perf)")
    return a


def run_test(test: str, t: topo.Topology, args: argparse.Namespace,
             perf_tag: str | None = None) -> dict[str, Any]:
    fns: dict[str, Callable[[], dict[str, Any]]] = {
        "tcp1": lambda: measure_tcp(t, args.duration, 1),
        "tcpN": lambda: measure_tcp(t, args.duration, args.streams),
        "udp64": lambda: measure_udp64(t, args.duration),
        "sockperf": lambda: measure_sockperf(t, args.duration, args.pin_latency),
        "sockperf_same": lambda: measure_sockperf(t, args.duration, "same", "sockperf_same"),
        "ping": lambda: measure_ping(t, args.duration),
    }
    fn = fns[test]
    if test not in ("tcp1", "tcpN", "udp64"):
        return fn()
    d0 = drop_snapshot(t)
    machine = start_machine_perf(t, args, perf_tag) if perf_tag else None
    if not t.agents:
        try:
            res = fn()
        finally:
            split = finish_machine_perf(t, machine)
        res["drops"] = drop_diff(d0, drop_snapshot(t))
        _udp_at_pod(t, res)
        _add_machine_split(res, split, args)
        return res
    cpu = AgentCpu(t)
    c0 = cpu.counters()
    perf = start_perf(t, cpu, args, perf_tag) if perf_tag else []
    s0 = cpu.snapshot()
    try:
        res = fn()
    finally:
        s1 = cpu.snapshot()
        perf_out = finish_perf(perf)
        split = finish_machine_perf(t, machine)
    c1 = cpu.counters()
    res["drops"] = drop_diff(d0, drop_snapshot(t))
    _udp_at_pod(t, res)
    res["cpu"] = AgentCpu.diff(s0, s1, c0, c1)
    res["cpu_summary"] = cpu_summary(res["cpu"])
    if perf_out:
        res["perf"] = perf_out
    _add_machine_split(res, split, args)
    return res


def _udp_at_pod(t: topo.Topology, res: dict[str, Any]) -> None:
    """UDP test: packets the VTEP got into the receiving pod's socket = what iperf3 read plus
    what the socket dropped because iperf3 did not keep up (RcvbufErrors in the pod's netns).
    Tells VTEP loss apart from receiver-application loss."""
    if "udp64_kpps" not in res:
        return
    dst = t.pod(2)
    overflow = res.get("drops", {}).get(f"n{dst.node.index}p{dst.host}:udp.RcvbufErrors", 0)
    raw = res["raw"]
    raw["pod_socket_overflow"] = overflow
    res["udp64_at_pod_kpps"] = (raw["delivered_packets"] + overflow) / raw["seconds"] / 1e3


# ------------------------------------------------------------------------------------------------
# Where packets are lost: device and UDP counters of every namespace, before/after a run
# ------------------------------------------------------------------------------------------------


def _ns_counters(ns: str) -> dict[str, int]:
    out: dict[str, int] = {}
    cp = topo.run(["ip", "-s", "-j", "link", "show"], ns, timeout=10, check=False)
    try:
        for link in json.loads(cp.stdout or "[]"):
            st = link.get("stats64", {})
            for d in ("rx", "tx"):
                for k in ("packets", "dropped", "errors"):
                    out[f"{link['ifname']}.{d}_{k}"] = int(st.get(d, {}).get(k, 0))
    except (json.JSONDecodeError, KeyError, TypeError):
        pass
    cp = topo.run(["cat", "/proc/net/snmp"], ns, timeout=10, check=False)
    lines = [ln.split() for ln in cp.stdout.splitlines() if ln.startswith("Udp:")]
    if len(lines) == 2:
        for k, v in zip(lines[0][1:], lines[1][1:]):
            if k in ("InErrors", "RcvbufErrors", "SndbufErrors", "NoPorts"):
                out[f"udp.{k}"] = int(v)
    return out


def drop_snapshot(t: topo.Topology) -> dict[str, dict[str, int]]:
    names = {n.ns: f"n{n.index}" for n in t.nodes}
    names.update({p.ns: f"n{p.node.index}p{p.host}" for p in t.pods})
    return {short: _ns_counters(ns) for ns, short in names.items()}


def drop_diff(a: dict[str, dict[str, int]], b: dict[str, dict[str, int]]) -> dict[str, int]:
    """Nonzero increases of drop/error counters, as {"n1:vxtap0.tx_dropped": 123}."""
    out = {}
    for ns, after in b.items():
        for k, v in after.items():
            if ("drop" in k or "rror" in k) and v - a.get(ns, {}).get(k, 0) > 0:
                out[f"{ns}:{k}"] = v - a.get(ns, {}).get(k, 0)
    return out


# ------------------------------------------------------------------------------------------------
# Optional: perf profile of the agent's forwarding threads (--perf)
# ------------------------------------------------------------------------------------------------


def start_perf(t: topo.Topology, cpu: AgentCpu, args: argparse.Namespace,
               tag: str) -> list[tuple[topo.BgProcess, Path]]:
    procs = []
    for a in t.agents:
        tids = ",".join(str(x) for x in cpu.threads[a.node.index].values())
        data = args.out / f"{tag}-node{a.node.index}.perf.data"
        p = t.start(["perf", "record", "-q", "-F", "999", "-g", "-t", tids, "-o", data,
                     "--", "sleep", f"{args.duration + 1:g}"], None,
                    name=f"perf-{a.node.index}-{len(t.procs)}")
        procs.append((p, data))
    return procs


def finish_perf(procs: list[tuple[topo.BgProcess, Path]]) -> dict[str, str]:
    out = {}
    for p, data in procs:
        _end_perf(p)
        cp = topo.run(["perf", "report", "-i", data, "--stdio", "--no-children", "-g", "none",
                       "--sort", "sym", "--percent-limit", "1"], timeout=120, check=False)
        txt = data.with_suffix(".txt")
        txt.write_text(cp.stdout + cp.stderr)
        top = [ln for ln in cp.stdout.splitlines() if ln.strip() and not ln.startswith("#")]
        out[data.stem] = "\n".join(top[:15])
    return out


def _end_perf(p: topo.BgProcess) -> None:
    """Let a perf record (`-- sleep`) finish; if it hangs, SIGINT makes it write its file."""
    try:
        p.wait(timeout=30)
    except topo.TopoError:
        p.stop(timeout=5, sig=signal.SIGINT)


def start_machine_perf(t: topo.Topology, args: argparse.Namespace,
                       tag: str) -> tuple[topo.BgProcess, Path]:
    """perf record of every CPU for the test (benchmarks/machine_split.py)."""
    data = args.out / f"{tag}-machine.perf.data"
    p = t.start(machine_split.record_argv(data, args.duration), None,
                name=f"perf-machine-{len(t.procs)}")
    return p, data


def finish_machine_perf(t: topo.Topology,
                        rec: tuple[topo.BgProcess, Path] | None) -> dict[str, float] | None:
    if rec is None:
        return None
    p, data = rec
    _end_perf(p)
    return machine_split.split_file(data, {a.proc.pid for a in t.agents})


def _add_machine_split(res: dict[str, Any], split: dict[str, float] | None,
                       args: argparse.Namespace) -> None:
    if split is None:
        return
    nbytes = (res.get("raw") or {}).get("bytes")
    res["machine_split"] = {
        "fractions": split, "seconds": args.duration, "bytes": nbytes,
        "ns_per_kb": (machine_split.ns_per_kb(split, args.duration, nbytes) if nbytes else {})}


def machine_split_tables(results: dict[str, Any]) -> str:
    """One table per test that has --perf machine splits: kernel and vxtap side by side."""
    out = []
    for test in TESTS:
        runs = {r["variant"]: r["machine_split"] for r in results["runs"]
                if r.get("test") == test and "machine_split" in r}
        if len(runs) < 2:
            continue
        rates = ", ".join(f"{v} {m['bytes'] * 8 / m['seconds'] / 1e9:.2f} Gbit/s"
                          for v, m in runs.items() if m.get("bytes") and m.get("seconds"))
        out.append(f"Where the machine's time goes, {test} (perf record -a, first repetition; "
                   "benchmarks/machine_split.py)"
                   + (f"\nmeasured while recording: {rates} (perf's sampling slows the kernel "
                      "path, which runs in softirq, more than vxtap)" if rates else "") + "\n"
                   + machine_split.format_table({v: m["fractions"] for v, m in runs.items()},
                                                {v: m["ns_per_kb"] for v, m in runs.items()}))
    return "\n\n".join(out)


def _agents_cpu_ns(*ts: topo.Topology | None) -> int:
    """user + system time of all agent processes of the topologies ``ts`` so far (ns)."""
    total = 0
    for a in [a for t in ts if t for a in t.agents]:
        c = _proc_cpu(a.proc.pid)
        total += (c["user_ns"] + c["sys_ns"]) if c else 0
    return total


def _short(test: str, res: dict[str, Any]) -> str:
    if "error" in res:
        return "FAILED: " + res["error"][:200]
    if test in ("tcp1", "tcpN"):
        s = f"{res.get('tcp1_gbps', res.get('tcpN_gbps')):.2f} Gbit/s"
    elif test == "udp64":
        s = f"{res['udp64_kpps']:.1f} kpps delivered, loss {res['udp64_loss_pct']:.1f} %"
    elif test in ("sockperf", "sockperf_same"):
        s = f"p50 {res[test + '_p50_us']:.1f} us, p99 {res[test + '_p99_us']:.1f} us"
    else:
        s = f"p50 {res['ping_p50_us']:.0f} us, avg {res['ping_avg_us']:.0f} us"
    if res.get("drops"):
        top = sorted(res["drops"].items(), key=lambda kv: -kv[1])[:3]
        s += "; drops " + ", ".join(f"{k}={v}" for k, v in top)
    cs = res.get("cpu_summary") or {}
    if cs:
        s += "; agent on-CPU/pkt " + ", ".join(f"{k} {v['run_ns']:.0f} ns" for k, v in cs.items()
                                                if v["packets"] > 1000)
    return s


def _fmt_dur(s: float) -> str:
    return f"{int(s // 60)}m{int(s % 60):02d}s"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    why = topo.missing_requirements(("iperf3", "sockperf", "ping", "stdbuf"))
    if why:
        print(f"benchmarks.system: {why}", file=sys.stderr)
        return 2
    if topo.vxtap_command() is None:
        print("benchmarks.system: vxtap is not installed (run scripts/install.sh)", file=sys.stderr)
        return 2
    topo.install_sigterm_handler()
    mets = metrics(args.streams)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    args.out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = args.out / f"system-{stamp}.json", args.out / f"system-{stamp}.png"

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    results: dict[str, Any] = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "command": " ".join(shlex.quote(x) for x in [sys.executable, "-m", "benchmarks.system",
                                                     *(sys.argv[1:] if argv is None else argv)]),
        "config": {"warmup_s": args.warmup, "duration_s": args.duration, "reps": args.reps,
                   "streams": args.streams, "tests": args.tests, "underlay_mtu": args.mtu,
                   "pod_mtu": args.mtu - 50,
                   "underlay_tx_checksum_offload": not args.wire_checksums,
                   "agent_args": args.agent_arg, "vxtap": topo.vxtap_command(),
                   "pin_latency": args.pin_latency, "ipv6_tests": args.ipv6_tests,
                   "pod_mtu_ipv6": args.mtu - 70},
        "machine": machine_info(), "tools": tool_versions(), "code": code_info(),
        "runs": [], "complete": False,
    }
    if shutil.which("ovs-vsctl") is None:
        results["notes"] = [("Open vSwitch userspace column skipped: "
                             "openvswitch-switch not installed")]
        log("note: openvswitch-switch is not installed; no OVS column")
    else:
        results["notes"] = ["Open vSwitch is installed but the OVS column is not implemented"]

    topos: dict[str, topo.Topology] = {}
    t_start = time.monotonic()
    try:
        variants = VARIANTS + (VARIANTS6 if args.ipv6_tests else ())
        for v in variants:
            log(f"== building the {v} topology")
            topos[v] = build(v, args)
            if topos[v].agents:
                try:
                    info = topos[v].agents[0].request("info", timeout=5)
                    results["agent_info"] = {k: info.get(k) for k in
                                             ("threads", "thread_mode", "busy_poll_us", "mtu",
                                              "underlay_mtu")}
                    log(f"   agent: {results['agent_info']}")
                except (OSError, topo.AgentError) as e:
                    results["agent_info"] = repr(e)
            log(f"   {v}: namespaces {', '.join(topos[v].namespaces)}"
                + (f"; agents pid {', '.join(str(a.proc.pid) for a in topos[v].agents)}"
                   if topos[v].agents else ""))
        if args.warmup > 0:
            for v, t in topos.items():
                log(f"== warm-up: {args.warmup:g} s of TCP on {v} (not recorded)")
                try:
                    measure_tcp(t, args.warmup, 1)
                except (MeasureError, topo.TopoError) as e:
                    log(f"   warm-up failed: {e}")
        tests = args.tests + [x for x in args.ipv6_tests if x not in args.tests]
        steps = [(rep, test, v) for rep in range(args.reps) for test in tests
                 for v in (variants if rep % 2 == 0 else variants[::-1])
                 if (test in args.tests if v in VARIANTS else test in args.ipv6_tests)]
        t_meas = time.monotonic()
        for i, (rep, test, v) in enumerate(steps, 1):
            elapsed = time.monotonic() - t_meas
            eta = elapsed / (i - 1) * (len(steps) - i + 1) if i > 1 else None
            log(f"[{i:>2}/{len(steps)} {_fmt_dur(time.monotonic() - t_start)}"
                f"{', ~' + _fmt_dur(eta) + ' left' if eta is not None else ''}] "
                f"rep {rep + 1}/{args.reps} {test:<8} {v:<6} ...")
            t0 = time.monotonic()
            vx = [t for k, t in topos.items() if k.startswith("vxtap")]
            idle0 = _agents_cpu_ns(*vx) if v.startswith("kernel") else None
            try:
                tag = (f"perf-{stamp}-{test}-{v}" if args.perf and rep == 0
                       and v in ("vxtap", "kernel") else None)
                res = run_test(test, topos[v], args, tag)
            except (MeasureError, topo.TopoError, topo.AgentError, OSError, KeyError,
                    ValueError) as e:
                res = {"error": f"{type(e).__name__}: {e}"}
                if topos[v].agents and any(not a.proc.alive for a in topos[v].agents):
                    res["error"] += "\n" + topos[v].agent_logs()[-2000:]
            res.update(variant=v, test=test, rep=rep, seconds_taken=time.monotonic() - t0,
                       loadavg=os.getloadavg())
            if idle0 is not None:
                # the idle vxtap agents must not take CPU from the kernel runs (busy polling)
                idle = (_agents_cpu_ns(*vx) - idle0) / 1e9
                res["idle_vxtap_agents_cpu_s"] = idle
                if idle > 0.05 * res["seconds_taken"]:
                    log(f"        WARNING: the idle vxtap agents used {idle:.2f} s of CPU during "
                        "this kernel run")
            results["runs"].append(res)
            log(f"        {_short(test, res)}")
            if v.startswith("vxtap") and any(not a.proc.alive for a in topos[v].agents):
                raise topo.TopoError("a vxtap agent died:\n" + topos[v].agent_logs()[-3000:])
        results["complete"] = True
    except KeyboardInterrupt:
        log("interrupted: cleaning up, writing what was measured")
    finally:
        for v, t in topos.items():
            if t.agents:
                results.setdefault("agent_final_stats", {})
                for a in t.agents:
                    try:
                        results["agent_final_stats"][f"node{a.node.index}"] = a.stats()
                    except Exception as e:  # noqa: BLE001 -- diagnostics only
                        results["agent_final_stats"][f"node{a.node.index}"] = repr(e)
            t.close()
        results["machine"]["loadavg_end"] = os.getloadavg()
        end_mods = code_info()["fastpath_modules"]
        if end_mods != results["code"]["fastpath_modules"]:
            results["notes"].append("fastpath modules changed on disk during the run: "
                                    f"{end_mods}")
            log("WARNING: the fast-path modules were rebuilt during the run")
        results["wall_seconds"] = time.monotonic() - t_start
        rows = summarize(results, mets)
        crows = cpu_rows(results)
        results["summary"] = rows
        results["cpu_per_packet"] = crows
        rows6: list[dict[str, Any]] = []
        if args.ipv6_tests:
            rows6 = [r for r in summarize(results, mets, VARIANTS6) if r["kernel"] or r["vxtap"]]
            results["summary_ipv6"] = rows6
            results["cpu_per_packet_ipv6"] = cpu_rows(results, "vxtap6")
        json_path.write_text(json.dumps(results, indent=1, default=str))
        table = format_table(rows, mets, crows)
        if rows6:
            table += ("\n\nIPv6 underlay (fd00:100::/64, pods at MTU "
                      f"{args.mtu - 70}: kernel VXLAN `local <v6>` vs vxtap `--local <v6>`)\n"
                      + format_table(rows6, mets, results["cpu_per_packet_ipv6"]))
        m = results["machine"]
        title = (f"vxtap vs kernel VXLAN, {results['date_utc']} UTC, {m['cores']} cores, "
                 f"kernel {m['kernel']}, {args.duration:g} s x {args.reps} reps, "
                 f"load {m['loadavg_start'][0]:.1f}/{m['loadavg_end'][0]:.1f}")
        splits = machine_split_tables(results)
        if splits:
            table += "\n\n" + splits
        print(f"\n{title}\n{table}\n")
        failed = [r for r in results["runs"] if "error" in r]
        if failed:
            print(f"{len(failed)} measurement(s) failed:")
            for r in failed:
                first = r["error"].splitlines()[0]
                print(f"  rep {r['rep'] + 1} {r['test']} {r['variant']}: {first}")
        if not args.no_chart and results["runs"]:
            try:
                chart(png_path, rows, title)
                print(f"chart: {png_path}")
            except Exception as e:  # noqa: BLE001 -- the numbers matter more than the picture
                print(f"chart failed: {e}", file=sys.stderr)
        print(f"json:  {json_path}")
    return 0 if results["complete"] and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
