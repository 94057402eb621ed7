"""Scale harness: N simulated agents (the real control/ sync code) on one real etcd, M endpoints.

    python -m benchmarks.scale                              # N in {50, 500}, M in {10k, 100k}
    python -m benchmarks.scale --agents 50 --endpoints 10000 --probes 10     # one small run
    bash benchmarks/run.sh scale [ARGS...]                  # the same, with the repo's venv

No root needed. The flow, for each M (fresh etcd) and each N (fresh fleet):

1. Start a real etcd on loopback (tests/etcd_server.py: free ports, private data dir) and, with
   --agents-per-proxy K (default 250, 0 = none), one `etcd grpc-proxy start` per K agents;
   agents are pointed at their proxy, the driver writes to etcd itself.
2. Seed the network: config, S = M/100 "seed" nodes (node keys on one lease the driver keeps
   alive, blocks), M endpoints written with their MAC/IP index keys in transactions of 42
   endpoints (126 ops, under etcd's 128-op limit).
3. Agents: a "solo" process holding ONE agent is started first and alone (its cold start, VmRSS
   and CPU per change are the per-agent bar numbers, on a process that holds nothing else),
   then P worker processes (default 2: both cores) hold the other N-1 agents, started with a
   bounded pool per process (--start-concurrency). Each agent is a real `ControlPlane`
   (bootstrap: config + block; start: lease, paged list, one watch) driving a counting sink
   that keeps no tables and timestamps the probe MACs. Before the fleet starts, the solo
   agent's RSS tells how many agents fit in memory; N is capped there (and the cap reported).
4. Idle window (--idle seconds): etcd request counters and agent CPU with nothing changing:
   no polling means ~0 requests apart from lease keepalive stream messages.
5. Probes: one endpoint add, wait until every agent has it, then its delete, --probes times.
   Propagation = arrival (CLOCK_MONOTONIC in the agent's process, system-wide on Linux) minus
   the moment before the driver's transaction. Reported per agent (p50/p99/max over all
   (agent, probe) pairs) and per probe "all agents" (the slowest agent of each probe).
6. Burst: --burst endpoint adds as fast as one client writes them, then the deletes; worker
   CPU divided by (changes x agents in the process) = per-agent CPU per change.
7. etcd's own /metrics around phases 4-6: gRPC requests by method and mvcc puts/deletes/txns
   per change, watchers and watch streams (one per agent, or one per proxy upstream), slow
   watchers; etcd and proxies' CPU and RSS from /proc. Lease health: node registrations after
   the first (each one is a lease that expired while its agent lived) and node keys alive.
8. Stop: agents revoke their leases; every process this harness started is stopped by PID,
   data dirs removed, also on error and on SIGINT/SIGTERM.

At the end: a table, benchmarks/results/scale-<time>.json and scale-<time>.png (propagation vs
N). The machine is shared: the load average is recorded with every row.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import re
import signal
import sys
import threading
import time
import traceback
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
NETWORK = "scale"
VNI = 42
SUBNET = "10.0.0.0/8"
ENDPOINTS_PER_SEED_NODE = 100
TXN_ENDPOINTS = 42                     # 3 puts each: 126 ops <= etcd's --max-txn-ops 128
PROBE_MAC_PREFIX = "06"
BURST_MAC_PREFIX = "0a"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _mac(prefix: str, i: int) -> str:
    return f"{prefix}:" + ":".join(f"{(i >> s) & 255:02x}" for s in (32, 24, 16, 8, 0))


def progress(text: str) -> None:
    sys.stderr.write(f"\r\033[K[scale] {text}")
    sys.stderr.flush()


def say(text: str) -> None:
    sys.stderr.write(f"\r\033[K[scale] {text}\n")
    sys.stderr.flush()


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def proc_stat(pid: int) -> dict[str, float]:
    """CPU seconds (user+system) and VmRSS (MB) of one process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
        rss = 0.0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) / 1024
        return {"cpu_s": cpu, "rss_mb": rss}
    except (OSError, IndexError, ValueError):
        return {"cpu_s": 0.0, "rss_mb": 0.0}


def mem_available_mb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return 0.0


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


# -- etcd metrics ----------------------------------------------------------------------------

_METRIC_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for line in text.splitlines():
        m = _METRIC_RE.match(line)
        if m:
            labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', m.group(2) or "")))
            out[(m.group(1), labels)] = float(m.group(3))
    return out


def msum(metrics: dict[Any, float], name: str, **want: str) -> float:
    return sum(v for (n, labels), v in metrics.items()
               if n == name and all(dict(labels).get(k) == x for k, x in want.items()))


UNARY = ("Range", "Put", "DeleteRange", "Txn", "Compact", "LeaseGrant", "LeaseRevoke",
         "LeaseTimeToLive")


def requests_delta(before: dict[Any, float], after: dict[Any, float]) -> dict[str, float]:
    """Requests etcd handled between two scrapes, by gRPC method, plus mvcc counters.
    Streams (Watch, LeaseKeepAlive) are counted by messages received."""
    out: dict[str, float] = {}
    for m in UNARY:
        out[m] = (msum(after, "grpc_server_handled_total", grpc_method=m)
                  - msum(before, "grpc_server_handled_total", grpc_method=m))
    for m in ("Watch", "LeaseKeepAlive"):
        out[f"{m}_msgs"] = (msum(after, "grpc_server_msg_received_total", grpc_method=m)
                            - msum(before, "grpc_server_msg_received_total", grpc_method=m))
    for name in ("put", "delete", "txn", "range"):
        key = f"etcd_debugging_mvcc_{name}_total"
        out[f"mvcc_{name}"] = msum(after, key) - msum(before, key)
    return out


def watch_gauges(metrics: dict[Any, float]) -> dict[str, float]:
    return {"watchers": msum(metrics, "etcd_debugging_mvcc_watcher_total"),
            "watch_streams": msum(metrics, "etcd_debugging_mvcc_watch_stream_total"),
            "slow_watchers": msum(metrics, "etcd_debugging_mvcc_slow_watcher_total"),
            "keys": msum(metrics, "etcd_debugging_mvcc_keys_total")}


# -- the agents' side (worker processes) -------------------------------------------------------

class Recorder:
    """Arrival times of watched MACs and counts of burst MACs, shared by a process's agents."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.watch: set[str] = set()
        self.times: dict[tuple[str, str], list[float]] = {}     # (mac, "add"|"del") -> times
        self.burst_adds = 0
        self.burst_dels = 0


def make_sink(rec: Recorder) -> Any:
    """control.testing.CountingSink (keeps no tables) that also notes probe and burst MACs;
    the probe's arrival time is the agent's "event applied" timestamp (sync.Applied.t, right
    after the last sink call of the watch response), recorded by `sink.on_applied`."""
    from control.testing import CountingSink

    class ProbeSink(CountingSink):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.pending: list[tuple[str, str]] = []
            self.responses = 0

        def _seen(self, mac: str, what: str) -> None:
            if mac.startswith(PROBE_MAC_PREFIX):
                if mac in rec.watch:
                    self.pending.append((mac, what))
            elif mac.startswith(BURST_MAC_PREFIX):
                with rec.lock:
                    if what == "add":
                        rec.burst_adds += 1
                    else:
                        rec.burst_dels += 1

        def fdb_add(self, vni: int, mac: str, vtep: str, port: int) -> None:
            super().fdb_add(vni, mac, vtep, port)
            self._seen(mac, "add")

        def fdb_del(self, vni: int, mac: str) -> None:
            super().fdb_del(vni, mac)
            self._seen(mac, "del")

        def on_applied(self, applied: Any) -> None:
            self.responses += 1
            if self.pending:
                with rec.lock:
                    for item in self.pending:
                        rec.times.setdefault(item, []).append(applied.t)
                self.pending.clear()

        @property
        def calls(self) -> int:
            return self.fdb_adds + self.fdb_dels + self.neigh_adds + self.neigh_dels

    return ProbeSink()


def _rss_mb() -> float:
    return proc_stat(os.getpid())["rss_mb"]


def worker_main(conn: Any, log_path: str, grpc_wait: float, hub_workers: int = 0,
                mem_floor_mb: float = 0.0) -> None:
    """A process holding many agents; commands arrive on `conn` (see Worker).

    hub_workers > 0 (fleet processes): the agents of this process that use the same etcd URL
    (etcd, or their grpc-proxy) share one `control.hub.Hub`: one gRPC channel, one watch
    stream carrying each agent's own watch, one keepalive stream carrying each agent's own
    lease, `hub_workers` threads running the agents' lists one at a time (staggered cold
    start), immutable parsed records shared (control/hub.py says exactly what is shared). 0
    (the solo process): a plain ControlPlane, exactly a real agent.

    `grpc_wait`: grpcio's blocking waits wake every `grpc._common.MAXIMUM_WAIT_TIMEOUT` (0.1 s)
    so that signal handlers run; kept at grpcio's default unless asked (with hubs a process
    has a handful of waiting threads, not ~3 per agent). `mem_floor_mb`: an agent is not
    started while MemAvailable is below it (reported as not started, not hidden)."""
    import grpc._common  # type: ignore[import-untyped]
    grpc._common.MAXIMUM_WAIT_TIMEOUT = grpc_wait
    import logging
    logging.basicConfig(filename=log_path, level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)        # the driver stops us, by PID if need be
    from control.etcd import EtcdSettings
    from control.hub import Hub
    from control.sync import ControlPlane
    rec = Recorder()
    hubs: dict[str, Any] = {}
    agents: list[Any] = []
    sinks: list[Any] = []
    lock = threading.Lock()
    accepting = [True]
    baseline_rss = _rss_mb()

    def start_one(spec: dict[str, Any]) -> dict[str, Any]:
        t0 = time.monotonic()
        try:
            if mem_floor_mb and mem_available_mb() < mem_floor_mb:
                return {"ok": False, "error": f"not started: MemAvailable below the "
                        f"{mem_floor_mb:.0f} MB floor"}
            sink = make_sink(rec)
            settings = EtcdSettings.from_text(spec["url"], timeout=30)
            hub = None
            if hub_workers:
                with lock:
                    hub = hubs.get(spec["url"])
                    if hub is None:
                        hub = hubs[spec["url"]] = Hub(settings, name=f"p{os.getpid()}-"
                                                      f"{len(hubs)}", workers=hub_workers)
            cp = ControlPlane(settings, NETWORK, spec["node"], ttl=spec["ttl"],
                              on_applied=sink.on_applied, hub=hub)
            cp.bootstrap(timeout=120)
            t1 = time.monotonic()
            i = spec["index"]
            cp.start(sink, underlay=f"127.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255 or 1}",
                     port=4789, tap_mac=_mac("02", 0xfe00000000 + i))
            if not cp.wait_synced(600):
                raise TimeoutError("not synced within 600 s")
            t2 = time.monotonic()
            with lock:
                late = not accepting[0]
                if not late:
                    agents.append(cp)
                    sinks.append(sink)
            if late:                  # the driver gave up on this one: do not count it
                cp.stop(timeout=20)
                return {"ok": False, "error": "synced after the start deadline"}
            return {"ok": True, "bootstrap_s": t1 - t0, "sync_s": t2 - t1, "cold_s": t2 - t0}
        except Exception as e:  # noqa: BLE001 -- reported to the driver
            return {"ok": False, "error": f"{type(e).__name__}: {e}"}

    while True:
        cmd, arg = conn.recv()
        try:
            if cmd == "start":
                specs, concurrency, limit = arg
                accepting[0] = True
                pool = ThreadPoolExecutor(max_workers=concurrency)
                futures = [pool.submit(start_one, sp) for sp in specs]
                deadline = time.monotonic() + limit
                finished = 0
                for fut in futures:
                    left = deadline - time.monotonic()
                    try:
                        fut.result(timeout=max(0.0, left))
                    except FuturesTimeout:
                        break
                    finished += 1
                    conn.send(("progress", finished))
                with lock:
                    accepting[0] = False
                results = [f.result() if f.done() else
                           {"ok": False, "error": f"not synced within {limit:g}s"}
                           for f in futures]
                pool.shutdown(wait=False, cancel_futures=True)
                conn.send(("done", results))
            elif cmd == "watch":
                with rec.lock:
                    rec.watch = set(arg)
                    rec.times.clear()
                conn.send(("done", None))
            elif cmd == "arrivals":
                with rec.lock:
                    conn.send(("done", {f"{m}|{w}": list(ts) for (m, w), ts in rec.times.items()}))
            elif cmd == "burst_counts":
                with rec.lock:
                    conn.send(("done", (rec.burst_adds, rec.burst_dels)))
            elif cmd == "stats":
                st = [cp.status() for cp in list(agents)]
                hs = [h.stats() for h in hubs.values()]
                conn.send(("done", {
                    "hubs": len(hs),
                    "hub": {k: sum(h[k] for h in hs) for k in (hs[0] if hs else {})},
                    "lease_expiries": sum(int(s.get("lease_expiries", 0)) for s in st),
                    "rev_min": min((int(s.get("last_revision_applied", 0)) for s in st),
                                   default=0),
                    "agents": len(st), "pid": os.getpid(), "cpu_s": time.process_time(),
                    "rss_mb": _rss_mb(), "baseline_rss_mb": baseline_rss,
                    "threads": threading.active_count(),
                    "registrations": sum(int(s.get("registrations", 0)) for s in st),
                    "connected": sum(bool(s.get("connected")) for s in st),
                    "fdb_min": min((int(s.get("fdb_entries", 0)) for s in st), default=0),
                    "fdb_max": max((int(s.get("fdb_entries", 0)) for s in st), default=0),
                    "sink_calls": sum(s.calls for s in sinks),
                    "responses": sum(s.responses for s in sinks),
                    "status_keys": sorted(st[0]) if st else []}))
            elif cmd == "stop":
                with ThreadPoolExecutor(max_workers=16) as pool:
                    list(pool.map(lambda cp: cp.stop(timeout=20), list(agents)))
                for h in hubs.values():
                    h.close()
                conn.send(("done", None))
                return
            else:
                conn.send(("error", f"unknown command {cmd!r}"))
        except Exception:  # noqa: BLE001 -- the driver reports it
            conn.send(("error", traceback.format_exc()))


class Worker:
    """The driver's handle on one worker process."""

    def __init__(self, ctx: Any, name: str, log_path: str, grpc_wait: float = 0.1,
                 hub_workers: int = 0, mem_floor_mb: float = 0.0) -> None:
        self.name = name
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=worker_main, name=name, daemon=True,
                                args=(child, log_path, grpc_wait, hub_workers, mem_floor_mb))
        self.proc.start()
        child.close()
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return int(self.proc.pid or 0)

    def call(self, cmd: str, arg: Any = None, timeout: float = 600.0,
             on_progress: Any = None) -> Any:
        self.conn.send((cmd, arg))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.conn.poll(left):
                raise TimeoutError(f"worker {self.name}: {cmd} took more than {timeout:g}s")
            kind, val = self.conn.recv()
            if kind == "progress":
                if on_progress:
                    on_progress(val)
                continue
            if kind == "error":
                raise RuntimeError(f"worker {self.name}: {cmd}: {val}")
            return val

    def send(self, cmd: str, arg: Any = None) -> None:
        self.conn.send((cmd, arg))

    def wait(self, timeout: float) -> Any:
        if not self.conn.poll(timeout):
            raise TimeoutError(f"worker {self.name}: no answer within {timeout:g}s")
        while True:
            kind, val = self.conn.recv()
            if kind == "progress":
                continue
            if kind == "error":
                raise RuntimeError(f"worker {self.name}: {val}")
            return val

    def kill(self) -> None:
        """Stop the process by PID: SIGTERM, then SIGKILL."""
        if self.proc.is_alive():
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            self.proc.join(5)
        if self.proc.is_alive():
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.join(5)


# -- proxies -------------------------------------------------------------------------------------

def free_port() -> int:
    from tests.etcd_server import free_port as fp
    return fp()


def Proxy(upstream: str, workdir: str, name: str) -> Any:
    """`etcd grpc-proxy start` in front of etcd, stopped by PID (tests/etcd_server.GrpcProxy)."""
    from tests.etcd_server import GrpcProxy
    return GrpcProxy(upstream, workdir, name)


# -- the driver ------------------------------------------------------------------------------------

class Seeder:
    """Writes the seed network (config, seed nodes on one lease, blocks, M endpoints)."""

    def __init__(self, url: str, m: int) -> None:
        from control.etcd import EtcdSettings, connect
        from control.keys import Layout
        from control.records import NetworkConfig
        self.settings = EtcdSettings.from_text(url, timeout=30)
        self.connect = connect
        self.layout = Layout("/vxtap", NETWORK)
        self.cfg = NetworkConfig(vni=VNI, subnet=SUBNET, block_prefix=24)
        self.m = m
        self.seeds = max(1, math.ceil(m / ENDPOINTS_PER_SEED_NODE))
        self.client, _ = connect(self.settings, "/")
        self.lease: Any = None
        self._stop = threading.Event()
        self._keeper: threading.Thread | None = None

    def seed_endpoint(self, i: int) -> tuple[str, str, Any]:
        """(container id, key, record) of seed endpoint i: node seed-(i // 100), in its block."""
        from control.ipam import nth_block
        from control.records import EndpointRecord
        n = i // ENDPOINTS_PER_SEED_NODE
        ip = nth_block(self.cfg, n).network_address + 2 + i % ENDPOINTS_PER_SEED_NODE
        rec = EndpointRecord(mac=_mac("02", i), ip=f"{ip}/8", node=f"seed-{n}", vni=VNI)
        return f"s{i}", self.layout.endpoint(f"s{i}", "eth0"), rec

    def write(self, on_progress: Any) -> None:
        from control import endpoints as eps
        from control.records import BlockRecord, NodeRecord
        c = self.client
        c.put(self.layout.config, self.cfg.to_json())
        self.lease = c.lease(60)
        self._keeper = threading.Thread(target=self._keepalive, daemon=True, name="seed-lease")
        self._keeper.start()
        tx = c.transactions
        ops = []
        from control.ipam import nth_block, node_block_key
        for n in range(self.seeds):
            node = f"seed-{n}"
            rec = NodeRecord(underlay=f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}",
                             port=4789, tap_mac=_mac("0e", n))
            block = nth_block(self.cfg, n)
            ops += [tx.put(self.layout.node(node), rec.to_json(), lease=self.lease.id),
                    tx.put(self.layout.block(block), BlockRecord(node).to_json()),
                    tx.put(node_block_key(self.layout, node), str(block).replace("/", "-"))]
        for k in range(0, len(ops), 126):
            c.transaction(compare=[], success=ops[k:k + 126], failure=[])

        def batch(start: int) -> int:
            client, _ = self.connect(self.settings, "/")
            try:
                txo = client.transactions
                puts = []
                for i in range(start, min(self.m, start + TXN_ENDPOINTS)):
                    cid, key, rec = self.seed_endpoint(i)
                    name = key[len(self.layout.endpoints):]
                    puts += [txo.put(key, rec.to_json()),
                             txo.put(eps.mac_index_key(self.layout, rec.mac), name),
                             txo.put(eps.ip_index_key(self.layout, rec.ip), name)]
                client.transaction(compare=[], success=puts, failure=[])
                return len(puts) // 3
            finally:
                client.close()

        done = 0
        starts = list(range(0, self.m, TXN_ENDPOINTS * 20))
        with ThreadPoolExecutor(max_workers=4) as pool:
            def chunk(s: int) -> int:
                return sum(batch(b) for b in range(s, min(self.m, s + TXN_ENDPOINTS * 20),
                                                   TXN_ENDPOINTS))
            for n in pool.map(chunk, starts):
                done += n
                on_progress(done)

    def _keepalive(self) -> None:
        while not self._stop.wait(15):
            try:
                list(self.client.refresh_lease(self.lease.id))
            except Exception as e:  # noqa: BLE001 -- reported, the run goes on
                say(f"seed lease keepalive failed: {e}")

    def close(self) -> None:
        self._stop.set()
        try:
            self.client.close()
        except Exception:  # noqa: BLE001, S110
            pass


def run_case(args: argparse.Namespace, etcd: Any, seeder: Seeder, n: int, m: int,
             workdir: str, ctx: Any, cleanup: list[Any]) -> dict[str, Any]:
    from control import endpoints as eps
    from control.records import EndpointRecord
    row: dict[str, Any] = {"agents_requested": n, "endpoints": m, "load_start": loadavg(),
                           "notes": []}
    label = f"N={n} M={m}"
    per_proxy = args.agents_per_proxy
    proxies: list[Any] = []
    if per_proxy > 0:
        for i in range(math.ceil(n / per_proxy)):
            p = Proxy(etcd.url, workdir, f"proxy{i}-{n}-{m}")
            proxies.append(p)
            cleanup.append(p)
    row["proxies"] = len(proxies)

    def url_for(i: int) -> str:
        return proxies[i // per_proxy].url if proxies else etcd.url

    workers: list[Worker] = []

    def new_worker(name: str, grpc_wait: float = 0.1, hub_workers: int = 0) -> Worker:
        w = Worker(ctx, name, os.path.join(workdir, f"{name}-{n}-{m}.log"), grpc_wait,
                   hub_workers, args.mem_floor_mb)
        workers.append(w)
        cleanup.append(w)
        return w

    try:
        # 3. the solo agent, alone
        solo = new_worker("solo")
        spec0 = {"index": 0, "node": "sim-0", "url": url_for(0), "ttl": args.ttl}
        progress(f"{label}: solo agent cold start")
        solo_base = solo.call("stats")
        t0 = time.monotonic()
        res0 = solo.call("start", ([spec0], 1, 600.0), timeout=900)[0]
        if not res0["ok"]:
            raise RuntimeError(f"solo agent failed: {res0['error']}")
        st0 = solo.call("stats")
        row["solo"] = {**res0, "rss_mb": st0["rss_mb"], "baseline_rss_mb": solo_base["rss_mb"],
                       "fdb_entries": st0["fdb_max"], "wall_s": time.monotonic() - t0}
        say(f"{label}: solo agent synced in {res0['cold_s']:.2f} s (list+apply "
            f"{res0['sync_s']:.2f} s), VmRSS {st0['rss_mb']:.0f} MB, "
            f"{st0['fdb_max']} fdb entries")
        # the fleet (memory: agents stop being started below --mem-floor-mb, reported)
        fleet_n = n - 1
        procs = max(1, min(args.procs, fleet_n)) if fleet_n else 0
        fleet = [new_worker(f"w{j}", args.grpc_wait, 0 if args.no_hub else args.hub_workers)
                 for j in range(procs)]
        for w in fleet:
            w.call("stats")                                   # wait until imported
        specs: list[list[dict[str, Any]]] = [[] for _ in fleet]
        for i in range(1, fleet_n + 1):
            specs[(i - 1) % procs].append({"index": i, "node": f"sim-{i}", "url": url_for(i),
                                           "ttl": args.ttl})
        bases = {w.name: w.call("stats") for w in fleet}
        started = {w.name: 0 for w in fleet}
        t0 = time.monotonic()
        for w, sp in zip(fleet, specs):
            w.send("start", (sp, args.start_concurrency, args.max_start_seconds))
        results: list[dict[str, Any]] = []
        pending = set(w.name for w in fleet)
        deadline = time.monotonic() + args.max_start_seconds
        while pending:
            for w in fleet:
                if w.name not in pending:
                    continue
                while w.conn.poll(0.1):
                    kind, val = w.conn.recv()
                    if kind == "progress":
                        started[w.name] = val
                    elif kind == "done":
                        results += val
                        pending.discard(w.name)
                        break
                    else:
                        raise RuntimeError(f"worker {w.name}: {val}")
            progress(f"{label}: agents started {1 + sum(started.values())}/{1 + fleet_n}, "
                     f"{time.monotonic() - t0:.0f}s, load {loadavg()}")
            if time.monotonic() > deadline + 120:
                raise TimeoutError(f"fleet workers did not answer {args.max_start_seconds:g}s "
                                   f"+ 120 s after the start ({sum(started.values())} of "
                                   f"{fleet_n} agents up)")
        fleet_wall = time.monotonic() - t0
        ok = [r for r in results if r["ok"]]
        failed = [r for r in results if not r["ok"]]
        if failed:
            row["notes"].append(f"{len(failed)} of {fleet_n} fleet agents not up: "
                                f"{sorted({r['error'] for r in failed})[:3]}")
        row["agents"] = 1 + len(ok)
        row["fleet_start"] = {"wall_s": fleet_wall, "failed": len(failed),
                              "errors": sorted({r["error"] for r in failed})[:5],
                              "cold_p50_s": pct([r["cold_s"] for r in ok], 50),
                              "cold_max_s": max((r["cold_s"] for r in ok), default=0.0),
                              "concurrency": args.start_concurrency * procs}
        say(f"{label}: fleet of {len(ok)} agents in {procs} processes up in {fleet_wall:.1f} s"
            f"{f', {len(failed)} FAILED: ' + failed[0]['error'] if failed else ''}")
        everyone = [solo, *fleet]

        def stats() -> dict[str, dict[str, Any]]:
            return {w.name: w.call("stats") for w in everyone}

        st = stats()
        row["rss_per_agent_mb"] = (sum(st[w.name]["rss_mb"] - bases[w.name]["rss_mb"]
                                       for w in fleet) / max(1, len(ok)))
        row["threads_per_process"] = max(s["threads"] for s in st.values())
        expected_fdb = m
        short = {k: s for k, s in st.items() if s["agents"] and s["fdb_min"] < expected_fdb}
        if short:
            row["notes"].append(f"agents with fewer than {expected_fdb} fdb entries: "
                                f"{ {k: s['fdb_min'] for k, s in short.items()} }")

        # 4. idle window
        progress(f"{label}: idle {args.idle:g}s")
        m0 = scrape(etcd.url)
        e0 = proc_stat(etcd.proc.pid)
        c0 = {k: s["cpu_s"] for k, s in st.items()}
        time.sleep(args.idle)
        m1 = scrape(etcd.url)
        st = stats()
        idle = requests_delta(m0, m1)
        row["idle"] = {"seconds": args.idle,
                       "requests": {k: v for k, v in idle.items() if v},
                       "unary_requests_per_s": sum(idle[k] for k in UNARY) / args.idle,
                       "agent_cpu_ms_per_s": 1000 * sum(st[k]["cpu_s"] - c0[k] for k in st)
                       / args.idle / row["agents"],
                       "solo_agent_cpu_ms_per_s": 1000 * (st["solo"]["cpu_s"] - c0["solo"])
                       / args.idle,
                       "etcd_cpu_pct": 100 * (proc_stat(etcd.proc.pid)["cpu_s"] - e0["cpu_s"])
                       / args.idle}
        row["watch"] = watch_gauges(m1)

        # 5. probes
        client = seeder.client
        probe_macs = [_mac(PROBE_MAC_PREFIX, k) for k in range(args.probes)]
        for w in everyone:
            w.call("watch", probe_macs)
        add_t: dict[str, float] = {}
        del_t: dict[str, float] = {}
        m_probe0 = scrape(etcd.url)
        e_probe0 = proc_stat(etcd.proc.pid)
        st = stats()
        cpu0 = {k: s["cpu_s"] for k, s in st.items()}
        resp0 = {k: s["responses"] for k, s in st.items()}
        lost_probes = 0
        for k, mac in enumerate(probe_macs):
            progress(f"{label}: probe {k + 1}/{args.probes}")
            node = f"seed-{k % seeder.seeds}"
            ip = f"10.255.{k // 250}.{k % 250 + 2}/8"
            rec = EndpointRecord(mac=mac, ip=ip, node=node, vni=VNI)
            for what, stamp in (("add", add_t), ("del", del_t)):
                stamp[mac] = time.monotonic()
                if what == "add":
                    eps.put_endpoint(client, seeder.layout, f"probe{k}", "eth0", rec)
                else:
                    eps.delete_endpoint(client, seeder.layout, f"probe{k}", "eth0")
                want = row["agents"]
                deadline = time.monotonic() + args.probe_timeout
                while True:
                    got = sum(len(v) for w in everyone
                              for key, v in w.call("arrivals").items() if key == f"{mac}|{what}")
                    if got >= want or time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
                if got < want:
                    lost_probes += 1
                    row["notes"].append(f"probe {k} {what}: {got}/{want} agents within "
                                        f"{args.probe_timeout:g}s")
            time.sleep(args.probe_gap)
        m_probe1 = scrape(etcd.url)
        st = stats()
        arrivals: dict[str, list[float]] = {}
        for w in everyone:
            for key, ts in w.call("arrivals").items():
                arrivals.setdefault(key, []).extend(ts)
        lat_add = [t - add_t[mac] for mac in probe_macs for t in arrivals.get(f"{mac}|add", [])]
        lat_del = [t - del_t[mac] for mac in probe_macs for t in arrivals.get(f"{mac}|del", [])]
        all_add = [max(arrivals[f"{mac}|add"]) - add_t[mac] for mac in probe_macs
                   if len(arrivals.get(f"{mac}|add", [])) >= row["agents"]]
        changes = 2 * args.probes
        req = requests_delta(m_probe0, m_probe1)
        row["propagation"] = {
            "probes": args.probes, "lost": lost_probes,
            "add_p50_ms": 1000 * pct(lat_add, 50), "add_p99_ms": 1000 * pct(lat_add, 99),
            "add_max_ms": 1000 * max(lat_add, default=float("nan")),
            "del_p50_ms": 1000 * pct(lat_del, 50), "del_p99_ms": 1000 * pct(lat_del, 99),
            "all_agents_min_ms": 1000 * min(all_add, default=float("nan")),
            "all_agents_p50_ms": 1000 * pct(all_add, 50),
            "all_agents_p99_ms": 1000 * pct(all_add, 99),
            "all_agents_max_ms": 1000 * max(all_add, default=float("nan"))}
        row["probe_requests"] = {k: v for k, v in req.items() if v}
        row["writes_per_change"] = (req["Put"] + req["Txn"] + req["DeleteRange"]) / changes
        row["requests_per_change"] = sum(req[k] for k in UNARY) / changes
        row["mvcc_txn_per_change"] = req["mvcc_txn"] / changes
        row["probe_etcd_cpu_s"] = proc_stat(etcd.proc.pid)["cpu_s"] - e_probe0["cpu_s"]
        row["probe_agent_cpu_ms_per_change"] = 1000 * (
            sum(st[k]["cpu_s"] - cpu0[k] for k in st) / changes / row["agents"])
        row["probe_watch_responses_per_agent"] = (
            sum(st[k]["responses"] - resp0[k] for k in st) / row["agents"])

        # 6. burst
        b = args.burst
        if b:
            progress(f"{label}: burst of {b} adds")
            cpu0 = {k: s["cpu_s"] for k, s in stats().items()}
            e_b0 = proc_stat(etcd.proc.pid)
            m_b0 = scrape(etcd.url)
            rss_b0 = {k: s["rss_mb"] for k, s in stats().items()}
            kb = max(1, args.burst_batch)
            t0 = time.monotonic()
            recs = [(seeder.layout.endpoint(f"burst{i}", "eth0"),
                     EndpointRecord(mac=_mac(BURST_MAC_PREFIX, i),
                                    ip=f"10.254.{i // 250}.{i % 250 + 2}/8",
                                    node=f"seed-{i % seeder.seeds}", vni=VNI)) for i in range(b)]
            tx = client.transactions
            if kb == 1:                  # the CNI path: one endpoint transaction per change
                for i, (_, rec) in enumerate(recs):
                    eps.put_endpoint(client, seeder.layout, f"burst{i}", "eth0", rec)
            else:                        # as fast as etcd takes it: kb records per transaction
                for k in range(0, b, kb):
                    client.transaction(compare=[], failure=[], success=[
                        tx.put(key, rec.to_json()) for key, rec in recs[k:k + kb]])
            write_s = time.monotonic() - t0
            progress(f"{label}: burst of {b} deletes")
            if kb == 1:
                for i in range(b):
                    eps.delete_endpoint(client, seeder.layout, f"burst{i}", "eth0")
            else:
                for k in range(0, b, kb):
                    client.transaction(compare=[], failure=[], success=[
                        tx.delete(key) for key, _ in recs[k:k + kb]])
            all_written_s = time.monotonic() - t0
            want = row["agents"] * b
            # absorbed = every agent applied etcd's revision after the burst (an agent that
            # gets an add and its delete in one watch response rightly sends the sink nothing,
            # so sink counts are only a floor when transactions are batched)
            final_rev = int(client.get_response(seeder.layout.config).header.revision)
            deadline = time.monotonic() + args.probe_timeout * 10
            while time.monotonic() < deadline:
                if all(w.call("stats")["rev_min"] >= final_rev for w in everyone):
                    break
                time.sleep(0.2)
            absorbed_s = time.monotonic() - t0
            st = stats()
            m_b1 = scrape(etcd.url)
            req = requests_delta(m_b0, m_b1)
            counts = [w.call("burst_counts") for w in everyone]
            solo_cpu = st["solo"]["cpu_s"] - cpu0["solo"]
            fleet_cpu = sum(st[k]["cpu_s"] - cpu0[k] for k in st if k != "solo")
            row["burst"] = {
                "changes": 2 * b, "per_txn": kb,
                "all_at_final_revision": all(st[k]["rev_min"] >= final_rev for k in st), "adds_written_per_s": b / write_s,
                "written_s": all_written_s, "absorbed_s": absorbed_s,
                "rss_growth_mb": {k: round(st[k]["rss_mb"] - rss_b0[k], 1) for k in st},
                "lease_expiries_during": sum(st[k]["lease_expiries"] for k in st),
                "applied": [sum(c[0] for c in counts), sum(c[1] for c in counts)],
                "expected_each": want,
                "solo_cpu_ms_per_change": 1000 * solo_cpu / (2 * b),
                "fleet_cpu_ms_per_change_per_agent":
                    1000 * fleet_cpu / (2 * b) / max(1, row["agents"] - 1),
                "etcd_cpu_s": proc_stat(etcd.proc.pid)["cpu_s"] - e_b0["cpu_s"],
                "writes_per_change": (req["Put"] + req["Txn"] + req["DeleteRange"]) / (2 * b),
                "slow_watchers": watch_gauges(m_b1)["slow_watchers"]}

        # 7. lease health, etcd and proxies
        st = stats()
        regs = sum(s["registrations"] for s in st.values())
        nodes_alive = sum(1 for _ in client.get_prefix(seeder.layout.nodes, keys_only=True))
        row["processes"] = {k: {"agents": s["agents"], "cpu_s": round(s["cpu_s"], 1),
                                "rss_mb": round(s["rss_mb"]), "threads": s["threads"],
                                "hub": s["hub"]} for k, s in st.items()}
        row["lease"] = {"expiries": regs - row["agents"], "registrations": regs,
                        "lease_expiries_counted": sum(s["lease_expiries"] for s in st.values()),
                        "node_keys_alive": nodes_alive, "expected": seeder.seeds + row["agents"],
                        "connected": sum(s["connected"] for s in st.values())}
        row["pids"] = [w.pid for w in workers] + [p.proc.pid for p in proxies]
        row["etcd"] = proc_stat(etcd.proc.pid)
        row["proxies_stat"] = [proc_stat(p.proc.pid) for p in proxies]
        row["load_end"] = loadavg()
        say(f"{label}: add->all agents p50 {row['propagation']['all_agents_p50_ms']:.0f} ms "
            f"p99 {row['propagation']['all_agents_p99_ms']:.0f} ms, lease expiries "
            f"{row['lease']['expiries']}, writes/change {row['writes_per_change']:.2f}, "
            f"load {row['load_end']}")
    except BaseException as e:
        graceful = not isinstance(e, KeyboardInterrupt)    # interrupted: no waiting
        raise
    else:
        graceful = True
    finally:
        # 8. stop this case's agents (leases revoked), then the processes by PID
        progress(f"{label}: stopping agents")
        for w in workers if graceful else ():
            try:
                if w.proc.is_alive():
                    w.send("stop")
            except (OSError, ValueError):
                pass
        for w in workers:
            try:
                if graceful and w.proc.is_alive():
                    w.wait(120)
            except (TimeoutError, RuntimeError, EOFError, OSError) as e:
                say(f"{w.name}: {e}")
            w.kill()
            cleanup.remove(w)
        for p in proxies:
            p.stop()
            cleanup.remove(p)
    return row


# -- output --------------------------------------------------------------------------------------

def fmt(v: Any, nd: int = 0) -> str:
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:.{nd}f}"
    return str(v)


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| N agents | M endpoints | proxies | solo cold start s | solo VmRSS MB | "
            "RSS/agent MB | CPU/change/agent ms (solo; fleet) | add->agent p50/p99 ms | "
            "add->all agents p50/p99/max ms | lease expiries | etcd writes/change | "
            "etcd req/change | idle req/s | watchers | etcd CPU s (probes) / RSS MB | load |")
    lines = [head, "|" + "|".join("---" for _ in range(head.count("|") - 1)) + "|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['agents_requested']} | {r['endpoints']} | – | {r['error'][:120]} |")
            continue
        p, b = r["propagation"], r.get("burst", {})
        lines.append(
            f"| {r['agents']}{'' if r['agents'] == r['agents_requested'] else ' of ' + str(r['agents_requested'])} "
            f"| {r['endpoints']} | {r['proxies']} | {fmt(r['solo']['cold_s'], 2)} "
            f"| {fmt(r['solo']['rss_mb'])} | {fmt(r['rss_per_agent_mb'], 1)} "
            f"| {fmt(b.get('solo_cpu_ms_per_change', float('nan')), 3)}; "
            f"{fmt(b.get('fleet_cpu_ms_per_change_per_agent', float('nan')), 3)} "
            f"| {fmt(p['add_p50_ms'])}/{fmt(p['add_p99_ms'])} "
            f"| {fmt(p['all_agents_p50_ms'])}/{fmt(p['all_agents_p99_ms'])}/{fmt(p['all_agents_max_ms'])} "
            f"| {r['lease']['expiries']} | {fmt(r['writes_per_change'], 2)} "
            f"| {fmt(r['requests_per_change'], 2)} | {fmt(r['idle']['unary_requests_per_s'], 2)} "
            f"| {fmt(r['watch']['watchers'])} "
            f"| {fmt(r['probe_etcd_cpu_s'], 1)} / {fmt(r['etcd']['rss_mb'])} "
            f"| {r['load_start']} -> {r['load_end']} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if not any("propagation" in r for r in rows):
        return False
    for m in sorted({r["endpoints"] for r in rows if "propagation" in r}):
        rs = sorted((r for r in rows if r["endpoints"] == m and "propagation" in r),
                    key=lambda r: r["agents"])
        xs = [r["agents"] for r in rs]
        for key, style in (("all_agents_p50_ms", "o-"), ("all_agents_p99_ms", "s--"),
                           ("all_agents_max_ms", "^:")):
            ax.plot(xs, [r["propagation"][key] for r in rs], style,
                    label=f"M={m:,} {key.split('_')[2]}")
    ax.axhline(1000, color="red", linewidth=0.8, label="bar: 1 s")
    ax.set_xscale("log")
    ax.set_xlabel("simulated agents N")
    ax.set_ylabel("one endpoint add -> all agents (ms)")
    ax.set_title(f"vxtap control plane propagation (load {loadavg()}, 2 cores, shared)")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# -- main ------------------------------------------------------------------------------------------

def parse_list(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        part = part.strip().lower().replace("_", "")
        mult = 1000 if part.endswith("k") else 1
        out.append(int(part.rstrip("k")) * mult)
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", default="50,500", help="N values (default 50,500; add 5000 "
                    "where the machine holds it)")
    ap.add_argument("--endpoints", default="10k,100k", help="M values (default 10k,100k)")
    ap.add_argument("--agents-per-proxy", type=int, default=250,
                    help="one grpc-proxy per this many agents; 0 = agents on etcd directly")
    ap.add_argument("--procs", type=int, default=2,
                    help="fleet worker processes (default 2, one per core)")
    ap.add_argument("--hub-workers", type=int, default=1,
                    help="list/start threads per hub (default 1: cold starts staggered)")
    ap.add_argument("--no-hub", action="store_true",
                    help="fleet agents each with their own client/streams/threads (the old "
                    "harness; ~5 threads per agent)")
    ap.add_argument("--mem-floor-mb", type=float, default=3000.0,
                    help="no agent is started while MemAvailable is below this (default 3000)")
    ap.add_argument("--start-concurrency", type=int, default=8,
                    help="agents starting at once per process (default 2)")
    ap.add_argument("--grpc-wait", type=float, default=0.1,
                    help="grpcio's wake-up interval of blocking waits in fleet workers (default "
                    "0.1 s = grpcio's own): see worker_main")
    ap.add_argument("--ttl", type=int, default=10, help="node lease TTL (default 10)")
    ap.add_argument("--probes", type=int, default=20, help="probe add+delete pairs (default 20)")
    ap.add_argument("--probe-gap", type=float, default=0.1, help="seconds between probes")
    ap.add_argument("--probe-timeout", type=float, default=30.0)
    ap.add_argument("--burst", type=int, default=500, help="burst adds (+ as many deletes)")
    ap.add_argument("--burst-batch", type=int, default=1,
                    help="burst endpoints per etcd transaction (default 1 = the CNI path, one "
                    "transaction per change; e.g. 128 to write 10,000 changes in ~1 s)")
    ap.add_argument("--idle", type=float, default=10.0, help="idle window seconds (default 10)")
    ap.add_argument("--max-start-seconds", type=float, default=1200.0)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--no-plot", action="store_true")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ns = parse_list(args.agents)
    ms = parse_list(args.endpoints)
    from tests.etcd_server import EtcdServer
    stamp = time.strftime("%Y%m%d-%H%M%S")
    workdir = str(args.out / f"scale-{stamp}-logs")      # worker and proxy logs, kept
    os.makedirs(workdir, exist_ok=True)
    cleanup: list[Any] = []
    ctx = mp.get_context("spawn")

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "argv": sys.argv[1:],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "mem_available_mb": mem_available_mb(), "load_start": loadavg(),
                    "python": platform.python_version()},
        "rows": []}
    rc = 0
    etcd = None
    seeder = None
    try:
        for m in ms:
            etcd = EtcdServer(name="vxtap-scale", extra_args=[
                "--quota-backend-bytes", str(8 * 1024 ** 3), "--max-request-bytes",
                str(8 * 1024 * 1024), "--snapshot-count", "100000"])
            etcd.start()
            seeder = Seeder(etcd.url, m)
            t0 = time.monotonic()
            seeder.write(lambda d: progress(f"M={m}: seeding {d}/{m} endpoints"))
            say(f"M={m}: seeded {m} endpoints on {seeder.seeds} seed nodes in "
                f"{time.monotonic() - t0:.1f} s (etcd {etcd.url})")
            for n in ns:
                try:
                    row = run_case(args, etcd, seeder, n, m, workdir, ctx, cleanup)
                except KeyboardInterrupt:
                    raise
                except Exception as e:  # noqa: BLE001 -- recorded, the next case runs
                    say(f"N={n} M={m}: FAILED: {type(e).__name__}: {e}")
                    row = {"agents_requested": n, "endpoints": m,
                           "error": f"{type(e).__name__}: {e}", "load_end": loadavg()}
                    rc = 1
                results["rows"].append(row)
            seeder.close()
            seeder = None
            etcd.cleanup()
            etcd = None
    except KeyboardInterrupt:
        say("interrupted: stopping everything")
        rc = 130
    finally:
        for obj in reversed(cleanup):
            try:
                obj.kill() if isinstance(obj, Worker) else obj.stop()
            except Exception as e:  # noqa: BLE001 -- keep cleaning
                say(f"cleanup: {e}")
        if seeder is not None:
            seeder.close()
        if etcd is not None:
            etcd.cleanup()
    results["machine"]["load_end"] = loadavg()
    if results["rows"]:
        args.out.mkdir(parents=True, exist_ok=True)
        jpath = args.out / f"scale-{stamp}.json"
        jpath.write_text(json.dumps(results, indent=2, default=str))
        print()
        print(table(results["rows"]))
        notes = [f"N={r['agents_requested']} M={r['endpoints']}: {note}"
                 for r in results["rows"] for note in r.get("notes", [])]
        for note in notes:
            print(f"- {note}")
        print(f"\nJSON: {jpath}\nlogs: {workdir}")
        if not args.no_plot:
            ppath = args.out / f"scale-{stamp}.png"
            if plot(results["rows"], ppath):
                print(f"plot: {ppath}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
