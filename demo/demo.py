#!/usr/bin/env python3
"""vxtap demo: two emulated nodes, pods ping and transfer across, vxtap vs kernel VXLAN.

    sudo python3 demo/demo.py [--mtu 1500] [--seconds 5] [--only vxtap|kernel] [--json FILE]

1. Builds two node namespaces joined by a veth underlay (192.168.100.1-2/24), a bridge br0 in
   each node and one pod namespace per node (10.244.1.2 and 10.244.2.2); see tests/topo.py.
2. vxtap: starts `vxtap agent --netns <node>` for both nodes (static fdb + neigh entries), pings
   pod to pod, sends 20 MB over TCP and compares SHA-256, measures iperf3 throughput.
3. kernel: the same with the Linux vxlan driver (nolearning + static bridge fdb) on the same
   topology, as the reference.
4. Prints both side by side and tears everything down (also on Ctrl-C or failure).

Needs root, iproute2, iperf3 and /dev/net/tun. Creates nothing in the root network namespace.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import topo

MB = 1024 * 1024


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (children excluded)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(t: topo.Topology, mode: str, seconds: float,
            log: Callable[[str], None]) -> dict[str, Any]:
    a, b = t.pod(1), t.pod(2)
    res: dict[str, Any] = {"mode": mode}
    a.ping(b, count=2, interval=0.05)  # resolve neighbours, warm up
    st = a.ping(b, count=50, interval=0.01)
    log(f"  ping {a.ip} -> {b.ip}: {st}")
    res.update(ping_received=st.received, ping_sent=st.transmitted, rtt_min_ms=st.rtt_min_ms,
               rtt_avg_ms=st.rtt_avg_ms, rtt_max_ms=st.rtt_max_ms, rtt_mdev_ms=st.rtt_mdev_ms)

    tr = t.tcp_transfer(a, b, size=20 * MB)
    log(f"  TCP 20 MB {a.ip} -> {b.ip}: {'intact' if tr.intact else 'CORRUPTED'} "
        f"(sha256 {tr.sent_sha256[:16]}...), {tr.mbit_per_s:.0f} Mbit/s")
    res.update(transfer_intact=tr.intact, transfer_mbit_s=tr.mbit_per_s)

    cpu0 = {ag.proc.pid: cpu_seconds(ag.proc.pid) for ag in t.agents if ag.proc.alive}
    t0 = time.monotonic()
    ip3 = t.iperf3(a, b, seconds=seconds)
    wall = time.monotonic() - t0
    agent_cpu = sum(cpu_seconds(pid) - c for pid, c in cpu0.items()) / wall * 100 if cpu0 else None
    log(f"  iperf3 -t {seconds:g} {a.ip} -> {b.ip}: {ip3.gbit_per_s:.2f} Gbit/s, "
        f"retransmits {ip3.retransmits}"
        + (f", agents' CPU {agent_cpu:.0f}% of one core" if agent_cpu is not None else ""))
    res.update(iperf3_gbit_s=ip3.gbit_per_s, iperf3_retransmits=ip3.retransmits,
               agent_cpu_percent=agent_cpu)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mtu", type=int, default=1500, help="underlay MTU (pods get MTU-50)")
    ap.add_argument("--seconds", type=float, default=5, help="iperf3 duration per mode")
    ap.add_argument("--only", choices=("vxtap", "kernel"), help="measure one mode only")
    ap.add_argument("--vni", type=int, default=42)
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()

    reason = topo.missing_privileges()
    if reason:
        print(f"demo: {reason}", file=sys.stderr)
        return 2
    topo.install_sigterm_handler()
    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, flush=True)


    modes = [args.only] if args.only else ["vxtap", "kernel"]
    if "vxtap" in modes and topo.vxtap_command() is None:
        print("demo: vxtap is not installed (pip install -e .)", file=sys.stderr)
        return 2

    results = []
    with topo.Topology(nodes=2, pods=1, mtu=args.mtu) as t:
        log(f"topology {t.prefix}: nodes {', '.join(n.ns for n in t.nodes)} "
            f"(underlay {t.node(1).ip} <-> {t.node(2).ip}, MTU {args.mtu}), "
            f"pods {t.pod(1).ip} and {t.pod(2).ip} (MTU {t.pod(1).mtu})")
        for mode in modes:
            log(f"\n[{mode}]")
            if mode == "vxtap":
                agents = [t.add_vxtap_agent(n, vni=args.vni) for n in t.nodes]
                for ag in agents:
                    log(f"  agent pid {ag.proc.pid}: {' '.join(ag.argv)}")
            else:
                for n in t.nodes:
                    dev = t.add_kernel_vxlan(n, vni=args.vni)
                    log(f"  {n.ns}: kernel {dev} (nolearning, static fdb)")
            try:
                results.append(measure(t, mode, args.seconds, log))
            except topo.TopoError as e:
                print(f"demo: {mode} failed: {e}", file=sys.stderr)
                if t.agents:
                    print(t.agent_logs(), file=sys.stderr)
                return 1
            finally:
                if mode == "vxtap":
                    for ag in list(t.agents):
                        t.remove_agent(ag)
                else:
                    for n in t.nodes:
                        t.remove_kernel_vxlan(n, vni=args.vni)

    print(f"\n{'mode':<8} {'ping rtt min/avg/max ms':>24} {'TCP 20MB':>16} {'iperf3':>14} "
          f"{'agent CPU':>10}")
    for r in results:
        cpu = f"{r['agent_cpu_percent']:.0f}%" if r["agent_cpu_percent"] is not None else "-"
        rtt = f"{r['rtt_min_ms']:.3f}/{r['rtt_avg_ms']:.3f}/{r['rtt_max_ms']:.3f}"
        tcp = f"{r['transfer_mbit_s']:.0f} Mbit/s" + ("" if r["transfer_intact"] else " BAD")
        print(f"{r['mode']:<8} {rtt:>24} {tcp:>16} {r['iperf3_gbit_s']:>7.2f} Gbit/s {cpu:>10}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    ok = all(r["transfer_intact"] and r["ping_received"] == r["ping_sent"] for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
