#!/usr/bin/env python3
"""vxtap demo: a local etcd, two emulated nodes, pods joined through the CNI plugin, ping and
transfer across; then the same traffic on kernel VXLAN for comparison.

    sudo python3 demo/demo.py [--mtu 1500] [--seconds 5] [--only vxtap|kernel] [--static]
                              [--json FILE] [--quiet] [--keep]

Default (etcd control plane):
1. starts a local etcd on 127.0.0.1 (free ports, temporary data dir; tests/etcd_server.py);
2. `vxtap network set vxnet --vni 42 --subnet 10.244.0.0/16 --etcd URL`, shows the keys;
3. builds two node namespaces joined by a veth underlay (192.168.100.1-2/24), bridge br0 in
   each (tests/topo.py), and starts one `vxtap agent --etcd URL --network vxnet --node nodeN
   --netns <node>` per node (the agent process stays in the root namespace, where etcd is);
4. adds one pod per node through `vxtap-cni` (CNI ADD, run inside the node namespace, delegating
   to the standard bridge + host-local plugins), shows the endpoint records in etcd and the
   tables each agent learnt from etcd;
5. pings pod to pod, sends 20 MB over TCP and compares SHA-256, runs iperf3;
6. tears the vxtap part down (CNI DEL, agents and etcd stopped by PID, namespaces deleted);
7. measures kernel VXLAN (nolearning + static bridge fdb) on the same kind of topology;
8. prints both side by side.

--keep: stop after step 5 with everything running, print the commands to try (the README's
Debugging section, with this run's sockets and addresses) and how to tear down (Ctrl-C, or
kill PID); the teardown of step 6 runs then. No kernel comparison.

--static: the vxtap part without etcd (agents get static --fdb/--neigh entries, pods are made by
tests/topo.py), as the demo did before the control plane existed.

Everything is torn down also on Ctrl-C or failure. Exit code 1 if a ping or the transfer failed.
Needs root, iproute2, iperf3, /dev/net/tun, etcd + etcdctl and /usr/lib/cni (bridge, host-local).
Creates nothing in the root network namespace except etcd's loopback listeners; traffic only
goes to loopback and to the namespaces created here.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import topo
from etcd_server import ETCD_BIN, ETCDCTL_BIN, EtcdServer

MB = 1024 * 1024
NETWORK = "vxnet"
SUBNET = "10.244.0.0/16"
PREFIX = "/vxtap"
CNI_BIN = "/usr/lib/cni"


# What this run created, to check at the end that none of it is left.
CREATED_NETNS: set[str] = set()
STARTED_PIDS: set[int] = set()


def leftovers() -> list[str]:
    """Namespaces or processes of this run that still exist (should be none)."""
    cp = topo.run(["ip", "-j", "netns", "list"], check=False)
    try:
        live = {e["name"] for e in json.loads(cp.stdout or "[]")}
    except (json.JSONDecodeError, KeyError, TypeError):
        live = set()
    left = [f"netns {ns}" for ns in sorted(CREATED_NETNS & live)]
    left += [f"pid {pid}" for pid in sorted(STARTED_PIDS) if topo._proc_start(pid) is not None]
    return left


class DemoError(RuntimeError):
    """A step of the demo failed (the message says which and why)."""


class Out:
    """Numbered steps with short explanations; everything goes to stdout unless --quiet."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.n = 0
        self.t0 = time.monotonic()

    def step(self, title: str, *explain: str) -> None:
        self.n += 1
        self.say(f"\n[{self.n}] {title}   (t+{time.monotonic() - self.t0:.1f}s)")
        for line in explain:
            self.say(f"    {line}")

    def say(self, msg: str = "") -> None:
        if not self.quiet:
            print(msg, flush=True)

    def cmd(self, argv: list[str], output: str = "", env: str = "") -> None:
        """Show a command as a user would type it, then its output, indented."""
        self.say(f"    $ {env}{' '.join(argv)}")
        for line in output.rstrip("\n").splitlines():
            self.say(f"      {line}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (children excluded)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(t: topo.Topology, a: topo.Pod, b: topo.Pod, mode: str, seconds: float,
            out: Out) -> dict[str, Any]:
    """Ping, 20 MB TCP transfer with SHA-256 on both ends, iperf3; from pod a to pod b."""
    res: dict[str, Any] = {"mode": mode}
    a.ping(b, count=2, interval=0.05)  # resolve neighbours, warm up
    st = a.ping(b, count=50, interval=0.01)
    out.say(f"    ping {a.ip} -> {b.ip}: {st}")
    res.update(ping_received=st.received, ping_sent=st.transmitted, rtt_min_ms=st.rtt_min_ms,
               rtt_avg_ms=st.rtt_avg_ms, rtt_max_ms=st.rtt_max_ms, rtt_mdev_ms=st.rtt_mdev_ms)

    tr = t.tcp_transfer(a, b, size=20 * MB)
    out.say(f"    TCP 20 MB {a.ip} -> {b.ip}: {'intact' if tr.intact else 'CORRUPTED'} "
            f"(sha256 sent {tr.sent_sha256[:16]}..., received {tr.received_sha256[:16]}...), "
            f"{tr.mbit_per_s:.0f} Mbit/s")
    res.update(transfer_intact=tr.intact, transfer_mbit_s=tr.mbit_per_s)

    cpu0 = {ag.proc.pid: cpu_seconds(ag.proc.pid) for ag in t.agents if ag.proc.alive}
    t0 = time.monotonic()
    ip3 = t.iperf3(a, b, seconds=seconds)
    wall = time.monotonic() - t0
    agent_cpu = sum(cpu_seconds(pid) - c for pid, c in cpu0.items()) / wall * 100 if cpu0 else None
    out.say(f"    iperf3 -t {seconds:g} {a.ip} -> {b.ip}: {ip3.gbit_per_s:.2f} Gbit/s, "
            f"retransmits {ip3.retransmits}"
            + (f", agents' CPU {agent_cpu:.0f}% of one core" if agent_cpu is not None else ""))
    res.update(iperf3_gbit_s=ip3.gbit_per_s, iperf3_retransmits=ip3.retransmits,
               agent_cpu_percent=agent_cpu)
    return res


def wait_for(what: str, pred: Callable[[], bool], timeout: float = 15.0) -> float:
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise DemoError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - t0


# --------------------------------------------------------------------------------------------
# The vxtap part with etcd (default)
# --------------------------------------------------------------------------------------------


class NodesOnly(topo.Topology):
    """Nodes (underlay, bridge br0) without the topology's own pods: here pods join through
    the CNI plugin, which creates their interface and takes their address from the node block."""

    def _add_pod(self, node: topo.Node, host: int) -> topo.Pod:  # type: ignore[override]
        return None  # type: ignore[return-value]


class EtcdDemo:
    """Steps 1-6 of the default demo. Every resource is registered on `stack` as soon as it
    exists, so that an exception or Ctrl-C anywhere undoes exactly what was done."""

    def __init__(self, args: argparse.Namespace, out: Out, vxtap: list[str], cni_exe: str,
                 stack: contextlib.ExitStack) -> None:
        self.args, self.out, self.vxtap, self.cni_exe, self.stack = args, out, vxtap, cni_exe, stack
        self.etcd: EtcdServer | None = None
        self.t: topo.Topology | None = None
        self.agents: list[topo.Agent] = []
        self.pods: list[topo.Pod] = []
        self.cni_added: dict[str, tuple[topo.Node, str, dict[str, Any], Any]] = {}

    # -- helpers ---------------------------------------------------------------------------

    def etcdctl_show(self, prefix: str, note: str = "") -> str:
        assert self.etcd is not None
        text = self.etcd.etcdctl("get", "--prefix", prefix)
        lines = text.rstrip("\n").splitlines()
        shown = [ln if i % 2 == 0 else f"    {ln}" for i, ln in enumerate(lines)]
        self.out.cmd([Path(ETCDCTL_BIN).name, "--endpoints", self.etcd.url, "get", "--prefix", prefix],
                     "\n".join(shown) if shown else "(no keys)" + note, env="ETCDCTL_API=3 ")
        return text

    def run(self, argv: list[str], ns: str | None = None, timeout: float = 30) -> str:
        try:
            return topo.run(argv, ns, timeout=timeout).stdout
        except topo.TopoError as e:
            raise DemoError(str(e)) from None

    def cni(self, cmd: str, node: topo.Node, pod_ns: str, cid: str, config: dict[str, Any]) -> Any:
        """Run vxtap-cni like a container runtime does: inside the node's namespace, the
        network config on stdin, the request in CNI_* variables."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": cmd,
               "CNI_CONTAINERID": cid, "CNI_NETNS": f"/var/run/netns/{pod_ns}",
               "CNI_IFNAME": "eth0", "CNI_PATH": CNI_BIN}
        r = subprocess.run(["ip", "netns", "exec", node.ns, self.cni_exe],
                           input=json.dumps(config).encode(), env=env, capture_output=True,
                           timeout=60, check=False)
        text = r.stdout.decode(errors="replace")
        if r.returncode != 0:
            raise DemoError(f"vxtap-cni {cmd} {cid} on {node.ns} failed (exit {r.returncode}): "
                            f"{text.strip()} {r.stderr.decode(errors='replace').strip()}")
        return json.loads(text) if text.strip() else None

    def cni_del(self, cid: str) -> None:
        """CNI DEL (idempotent here: runs once per pod, on the normal path or at cleanup)."""
        entry = self.cni_added.pop(cid, None)
        if entry is None:
            return
        node, pod_ns, config, prev = entry
        self.cni("DEL", node, pod_ns, cid, dict(config, prevResult=prev))

    def _cleanup_cni(self) -> None:
        for cid in list(self.cni_added):
            try:
                self.cni_del(cid)
            except (DemoError, OSError, subprocess.SubprocessError) as e:
                # e.g. etcd already gone after Ctrl-C; the namespaces are deleted anyway
                print(f"demo: cleanup: CNI DEL {cid}: {e}", file=sys.stderr)

    def agent_tables(self, agent: topo.Agent) -> tuple[list[Any], list[Any]]:
        return (agent.request("show", what="fdb")["rows"],
                agent.request("show", what="neigh")["rows"])

    # -- steps -----------------------------------------------------------------------------

    def start_etcd(self) -> None:
        self.out.step("Start a local etcd",
                      "etcd holds the overlay's state: network config, nodes, address blocks, "
                      "one record per pod.",
                      "This one listens on 127.0.0.1 only (free ports, temporary data dir) and "
                      "is stopped at the end.")
        if not (os.access(ETCD_BIN, os.X_OK) and os.access(ETCDCTL_BIN, os.X_OK)):
            raise DemoError(f"needs {ETCD_BIN} and {ETCDCTL_BIN} (apt install etcd-server "
                            "etcd-client, or bash scripts/install.sh)")
        etcd = EtcdServer(name="vxtap-demo")
        self.stack.callback(etcd.cleanup)       # stop by PID, remove the data dir
        atexit.register(etcd.cleanup)           # also if the interpreter exits some other way
        try:
            etcd.start()
        except RuntimeError as e:
            raise DemoError(f"etcd did not start: {e}") from None
        self.etcd = etcd
        assert etcd.proc is not None
        STARTED_PIDS.add(etcd.proc.pid)
        self.out.say(f"    etcd pid {etcd.proc.pid}, client URL {etcd.url}, data dir {etcd.data_dir}")

    def network_set(self) -> None:
        assert self.etcd is not None
        self.out.step("Create the overlay network in etcd",
                      f"Network {NETWORK!r}: VNI {self.args.vni}, pod subnet {SUBNET} "
                      "(each node will take a /24 block of it).")
        argv = [*self.vxtap, "network", "set", NETWORK, "--vni", str(self.args.vni),
                "--subnet", SUBNET, "--etcd", self.etcd.url]
        text = self.run(argv)
        self.out.cmd(["vxtap", *argv[len(self.vxtap):]], text)
        self.out.say("    All keys of a network live under one prefix; each agent lists it "
                     "once, then follows one watch:")
        self.etcdctl_show(f"{PREFIX}/networks/{NETWORK}/")

    def nodes_and_agents(self) -> None:
        assert self.etcd is not None
        self.out.step("Build two nodes and start one vxtap agent per node",
                      "Each node is a network namespace with an underlay link "
                      "(192.168.100.1 <-> 192.168.100.2)",
                      "and a bridge br0 for its pods. The agent process runs in the root "
                      "namespace (where etcd is);",
                      "its TAP vxtap0 (on br0) and its UDP socket live in the node (--netns).")
        t = NodesOnly(nodes=2, pods=1, mtu=self.args.mtu)
        self.stack.callback(t.close)            # agents (by PID), namespaces, work dir
        t.build()
        self.t = t
        self.out.say(f"    nodes: {', '.join(f'{n.ns} ({n.ip})' for n in t.nodes)}, "
                     f"underlay MTU {self.args.mtu}")
        for n in t.nodes:
            sock = t.workdir / f"agent-{n.index}.sock"
            argv = [*self.vxtap, "agent", "--etcd", self.etcd.url, "--network", NETWORK,
                    "--node", f"node{n.index}", "--netns", n.ns, "--tap", topo.AGENT_TAP,
                    "--bridge", n.bridge, "--local", n.ip, "--sock", str(sock)]
            proc = topo.BgProcess(argv, None, name=f"agent-{n.index}", logdir=t.workdir,
                                  cwd=str(REPO))
            agent = topo.Agent(n, argv, sock, proc, self.args.vni, topo.VXLAN_PORT, topo.AGENT_TAP)
            t.agents.append(agent)              # from here on close() stops it by PID
            STARTED_PIDS.add(proc.pid)
            n.vtep = "vxtap"
            self.out.cmd(["vxtap", *argv[len(self.vxtap):]])
            try:
                agent.wait_ready(20)
            except topo.TopoError as e:
                raise DemoError(str(e)) from None
            info = agent.request("node_info")
            self.out.say(f"      -> pid {proc.pid}: node{n.index} registered, address block "
                         f"{info['block']} (gateway {info['gateway']}), TAP MTU {info['mtu']}")
            self.agents.append(agent)
        self.out.say("    Each agent wrote its node record (on a lease it keeps refreshing) and "
                     "took a block by transaction:")
        self.etcdctl_show(f"{PREFIX}/networks/{NETWORK}/nodes/")
        self.etcdctl_show(f"{PREFIX}/networks/{NETWORK}/blocks/")

    def add_pods(self) -> None:
        assert self.t is not None and self.etcd is not None
        t = self.t
        self.out.step("Add one pod per node through the CNI plugin",
                      "A container runtime runs `vxtap-cni` in the node namespace with "
                      "CNI_COMMAND=ADD; so does this demo.",
                      "The plugin asks the local agent for the node's block, lets the standard "
                      "bridge + host-local",
                      "plugins create the pod's veth and address, then the agent writes the "
                      "pod's endpoint record to etcd.")
        self.stack.callback(self._cleanup_cni)  # runs before the agents and etcd stop
        for n, agent in zip(t.nodes, self.agents, strict=True):
            pod_ns = t._add_ns(f"{t.prefix}n{n.index}pod")   # deleted by t.close()
            cid = f"pod{n.index}"
            config = {"cniVersion": "1.0.0", "name": NETWORK, "type": "vxtap-cni",
                      "agentSocket": str(agent.sock),
                      "dataDir": str(t.workdir / f"cni-node{n.index}")}
            self.out.say(f"    node{n.index} network config (stdin): {json.dumps(config)}")
            self.out.say(f"    $ CNI_COMMAND=ADD CNI_CONTAINERID={cid} "
                         f"CNI_NETNS=/var/run/netns/{pod_ns} CNI_IFNAME=eth0 CNI_PATH={CNI_BIN} "
                         f"ip netns exec {n.ns} vxtap-cni < config")
            res = self.cni("ADD", n, pod_ns, cid, config)
            self.cni_added[cid] = (n, pod_ns, config, res)
            ip_cidr = res["ips"][0]["address"]
            mac = next(i["mac"] for i in res["interfaces"] if i.get("sandbox"))
            mtu = int(agent.request("node_info")["mtu"])
            pod = topo.Pod(ns=pod_ns, node=n, host=int(ip_cidr.split("/")[0].rsplit(".", 1)[1]),
                           ip=ip_cidr.split("/")[0], mac=mac, mtu=mtu)
            n.pods.append(pod)
            self.pods.append(pod)
            self.out.say(f"      -> pod {pod_ns}: eth0 {ip_cidr} mac {mac} "
                         f"(gateway {res['ips'][0].get('gateway')})")
        self.out.say("    The endpoint records, one per pod interface:")
        self.etcdctl_show(f"{PREFIX}/networks/{NETWORK}/endpoints/")
        # Each agent follows the prefix watch: wait until it holds the other node's pod.
        for agent in self.agents:
            remote = [p for p in self.pods if p.node is not agent.node]

            def learnt(agent: topo.Agent = agent, remote: list[topo.Pod] = remote) -> bool:
                fdb, neigh = self.agent_tables(agent)
                return (all(any(r[0] == p.mac for r in fdb) for p in remote)
                        and all(any(r[0] == p.ip for r in neigh) for p in remote))
            wait_for(f"node{agent.node.index}'s agent to learn the remote pods", learnt)
            self.out.say(f"    node{agent.node.index}'s agent learnt the remote pod from its etcd "
                         "watch; its tables now:")
            for what in ("fdb", "neigh"):
                text = self.run([*self.vxtap, "show", what, "--sock", str(agent.sock)])
                self.out.cmd(["vxtap", "show", what, "--sock", str(agent.sock)], text)
        self.out.say("    fdb: remote pod MAC -> the VTEP (node underlay IP) to send it to; "
                     "neigh: the agent answers ARP for it locally.")

    def traffic(self) -> dict[str, Any]:
        assert self.t is not None
        a, b = self.pods
        self.out.step("Traffic between the pods, across the overlay",
                      f"{a.ns} ({a.ip}, node 1) -> {b.ns} ({b.ip}, node 2);",
                      "every frame is VXLAN-encapsulated and decapsulated in user space by the "
                      "agents.")
        try:
            res = measure(self.t, a, b, "vxtap", self.args.seconds, self.out)
        except topo.TopoError as e:
            raise DemoError(f"traffic over vxtap failed: {e}") from None
        st = self.agents[0].stats()
        ctl = st.get("control", {})
        self.out.say(f"    node1's control plane: connected={ctl.get('connected')}, "
                     f"synced={ctl.get('synced')}, revision {ctl.get('last_revision_applied')}, "
                     f"bad_records={ctl.get('bad_records')}")
        return res

    def keep(self) -> None:
        """--keep: leave everything running, print what to try and how to stop; wait for
        Ctrl-C or SIGTERM (then the normal teardown runs)."""
        assert self.t is not None and self.etcd is not None
        a, b = self.pods
        s1, s2 = (str(ag.sock) for ag in self.agents)
        cap = self.t.workdir / "cap"
        self.out.step("Kept running (--keep): try the Debugging section of the README on it",
                      "The namespaces, both agents and etcd stay up until you stop this demo.")
        lines = [
            "# the tables and counters of node 1's agent",
            f"vxtap show fdb --sock {s1}",
            f"vxtap show neigh --sock {s1}",
            f"vxtap show stats --sock {s1}",
            "# a decision trace and a pcap capture of pod1 -> pod2",
            f"vxtap trace add 20 --ip {b.ip} --sock {s1}",
            f"vxtap trace pcap start {cap} --count 100 --ip {b.ip} --sock {s1}",
            f"ip netns exec {a.ns} ping -c 2 {b.ip}",
            f"vxtap trace show --sock {s1}",
            f"vxtap trace pcap stop --sock {s1}",
            f"tshark -r {cap}/ul_out.pcap -V | grep -A3 'Virtual eXtensible'",
            f"tcpdump -nr {cap}/tap_out.pcap",
            "# the peer's view, and etcd's",
            f"vxtap show stats --sock {s2}",
            f"ETCDCTL_API=3 etcdctl --endpoints {self.etcd.url} get --prefix "
            f"{PREFIX}/networks/{NETWORK}/",
            "# a shell in a pod",
            f"ip netns exec {a.ns} bash",
        ]
        for ln in lines:
            self.out.say(f"    {'' if ln.startswith('#') else '$ '}{ln}")
        self.out.say(f"    To tear it all down: Ctrl-C here, or from another terminal: "
                     f"kill {os.getpid()}")
        print(f"demo: kept running (pid {os.getpid()}); Ctrl-C or kill {os.getpid()} tears it "
              "down", file=sys.stderr, flush=True)
        try:
            while all(ag.proc.alive for ag in self.agents) and self.etcd.running:
                time.sleep(0.5)
            raise DemoError("an agent or etcd exited while the demo was kept running")
        except KeyboardInterrupt:
            self.out.say("\n    interrupted: tearing down")

    def teardown(self) -> None:
        assert self.t is not None and self.etcd is not None
        self.out.step("Tear the vxtap part down",
                      "CNI DEL removes each pod: its endpoint record goes, the other agent drops "
                      "it from its tables.",
                      "Then the agents and etcd are stopped (by PID) and the namespaces deleted.")
        for cid in list(self.cni_added):
            node = self.cni_added[cid][0]
            self.cni_del(cid)
            self.out.say(f"    CNI DEL {cid} on {node.ns}: ok")
        for agent in self.agents:
            def empty(agent: topo.Agent = agent) -> bool:
                return self.agent_tables(agent) == ([], [])
            wait_for(f"node{agent.node.index}'s agent to drop the pods", empty)
        self.etcdctl_show(f"{PREFIX}/networks/{NETWORK}/endpoints/")
        self.out.say("    both agents' fdb and neigh tables are empty again")
        pids = [a.proc.pid for a in self.agents]
        rcs = [a.stop() for a in self.agents]
        self.out.say(f"    agents {', '.join(map(str, pids))} stopped (exit codes "
                     f"{', '.join(map(str, rcs))}); they revoked their node leases:")
        self.etcdctl_show(f"{PREFIX}/networks/{NETWORK}/nodes/")
        ns = list(self.t.namespaces)
        self.t.close()
        assert self.etcd.proc is not None
        pid = self.etcd.proc.pid
        self.etcd.cleanup()
        self.out.say(f"    namespaces {', '.join(ns)} deleted; etcd {pid} stopped, data dir removed")


def run_etcd_mode(args: argparse.Namespace, out: Out, vxtap: list[str]) -> dict[str, Any]:
    cni_exe = shutil.which("vxtap-cni")
    beside = Path(sys.executable).parent / "vxtap-cni"      # .venv/bin/python -> .venv/bin
    if cni_exe is None and os.access(beside, os.X_OK):
        cni_exe = str(beside)
    if cni_exe is None:
        raise DemoError("vxtap-cni is not on PATH (bash scripts/install.sh; "
                        "PATH=$PWD/.venv/bin:$PATH)")
    for plugin in ("bridge", "host-local"):
        if not os.access(os.path.join(CNI_BIN, plugin), os.X_OK):
            raise DemoError(f"needs {CNI_BIN}/{plugin} (apt install containernetworking-plugins)")
    with contextlib.ExitStack() as stack:
        d = EtcdDemo(args, out, vxtap, cni_exe, stack)
        try:
            d.start_etcd()
            d.network_set()
            d.nodes_and_agents()
            d.add_pods()
            res = d.traffic()
            if args.keep:
                d.keep()
            d.teardown()
            return res
        except (DemoError, topo.TopoError, topo.AgentError, OSError) as e:
            if d.t is not None and d.t.agents:
                print(f"\n--- agent logs ---\n{d.t.agent_logs()}", file=sys.stderr)
            if d.etcd is not None and d.etcd.proc is not None and not d.etcd.running:
                print(f"--- etcd log (tail) ---\n{d.etcd.log_tail(15)}", file=sys.stderr)
            raise DemoError(str(e)) from None
        finally:
            if d.t is not None:
                CREATED_NETNS.update(d.t.namespaces)
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------------
# Static vxtap (--static) and the kernel reference
# --------------------------------------------------------------------------------------------


def run_topology_modes(modes: list[str], args: argparse.Namespace, out: Out) -> list[dict[str, Any]]:
    """Static vxtap and/or kernel VXLAN on one topology with pods made by tests/topo.py."""
    results = []
    with topo.Topology(nodes=2, pods=1, mtu=args.mtu) as t:
        CREATED_NETNS.update(t.namespaces)
        a, b = t.pod(1), t.pod(2)
        for i, mode in enumerate(modes):
            if mode == "vxtap":
                out.step("vxtap with static tables (--static: no etcd, no CNI)",
                         "Two nodes with one pod each (made by tests/topo.py); each agent gets "
                         "the remote pod's",
                         "MAC -> VTEP (--fdb) and IP -> MAC (--neigh) on its command line.")
            else:
                out.step("For comparison: the Linux kernel's VXLAN on the same kind of topology",
                         ("Fresh namespaces: two nodes, one pod each (made by tests/topo.py),"
                          if i == 0 else "The same namespaces, agents stopped;"),
                         f"a kernel vx{args.vni} device on each br0 (nolearning, static "
                         "bridge fdb) instead of the agent.")
            if i == 0:
                out.say(f"    nodes {', '.join(f'{n.ns} ({n.ip})' for n in t.nodes)}; "
                        f"pods {a.ns} ({a.ip}) and {b.ns} ({b.ip}), pod MTU {a.mtu}")
            try:
                if mode == "vxtap":
                    for n in t.nodes:
                        ag = t.add_vxtap_agent(n, vni=args.vni)
                        STARTED_PIDS.add(ag.proc.pid)
                        out.say(f"    agent pid {ag.proc.pid}: vxtap "
                                f"{' '.join(ag.argv[ag.argv.index('agent'):])}")
                else:
                    for n in t.nodes:
                        dev = t.add_kernel_vxlan(n, vni=args.vni)
                        out.say(f"    {n.ns}: ip link add {dev} type vxlan id {args.vni} "
                                f"local {n.ip} dstport {n.vxlan_port} nolearning; "
                                f"bridge fdb: remote pod MAC -> remote node")
                results.append(measure(t, a, b, mode, args.seconds, out))
            except topo.TopoError as e:
                if t.agents:
                    print(f"\n--- agent logs ---\n{t.agent_logs()}", file=sys.stderr)
                raise DemoError(f"{mode} failed: {e}") from None
            finally:
                if mode == "vxtap":
                    for ag in list(t.agents):
                        t.remove_agent(ag)
                else:
                    for n in t.nodes:
                        t.remove_kernel_vxlan(n, vni=args.vni)
        ns = list(t.namespaces)
    out.say(f"    torn down: namespaces {', '.join(ns)} deleted")
    return results


# --------------------------------------------------------------------------------------------


def summary(results: list[dict[str, Any]], out: Out) -> None:
    out.step("Summary", "Pod to pod across two nodes: latency (50 pings), a 20 MB TCP "
             "transfer (SHA-256 checked),",
             "iperf3 throughput. Numbers depend on this machine and on what else runs on it.")
    print(f"\n{'mode':<14} {'ping rtt min/avg/max ms':>24} {'TCP 20MB':>16} {'iperf3':>14} "
          f"{'agent CPU':>10}")
    for r in results:
        cpu = f"{r['agent_cpu_percent']:.0f}%" if r["agent_cpu_percent"] is not None else "-"
        rtt = (f"{r['rtt_min_ms']:.3f}/{r['rtt_avg_ms']:.3f}/{r['rtt_max_ms']:.3f}"
               if r["rtt_avg_ms"] is not None else "-")
        tcp = f"{r['transfer_mbit_s']:.0f} Mbit/s" + ("" if r["transfer_intact"] else " BAD")
        print(f"{r['label']:<14} {rtt:>24} {tcp:>16} {r['iperf3_gbit_s']:>7.2f} Gbit/s {cpu:>10}",
              flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mtu", type=int, default=1500, help="underlay MTU (pods get MTU-50)")
    ap.add_argument("--seconds", type=float, default=5, help="iperf3 duration per mode")
    ap.add_argument("--only", choices=("vxtap", "kernel"), help="measure one mode only")
    ap.add_argument("--static", action="store_true",
                    help="vxtap with static tables on the command line, no etcd / CNI")
    ap.add_argument("--vni", type=int, default=42)
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--quiet", action="store_true", help="print only the summary")
    ap.add_argument("--keep", action="store_true",
                    help="keep etcd, the nodes, agents and pods running after the traffic (no "
                         "kernel comparison) and print commands to try; Ctrl-C tears down")
    args = ap.parse_args()
    if args.keep and (args.static or args.only == "kernel"):
        ap.error("--keep keeps the etcd + CNI topology: not with --static or --only kernel")

    reason = topo.missing_privileges()
    if reason:
        print(f"demo: {reason}", file=sys.stderr)
        return 2
    topo.install_sigterm_handler()          # SIGTERM -> KeyboardInterrupt -> normal cleanup
    out = Out(args.quiet)
    modes = [args.only] if args.only else (["vxtap"] if args.keep else ["vxtap", "kernel"])
    vxtap = topo.vxtap_command()
    if "vxtap" in modes and vxtap is None:
        print("demo: vxtap is not installed (bash scripts/install.sh, or pip install -e .)",
              file=sys.stderr)
        return 2
    if not args.quiet:
        what = ("vxtap with static tables" if args.static else
                "etcd + two nodes with a vxtap agent each + pods joined through CNI")
        out.say("vxtap demo: " + (what if "vxtap" in modes else "kernel VXLAN only")
                + (", then kernel VXLAN for comparison" if len(modes) == 2 else "") + ".")
        out.say("Everything runs in network namespaces created (and removed) by this demo.")

    results: list[dict[str, Any]] = []
    try:
        if "vxtap" in modes and not args.static:
            r = run_etcd_mode(args, out, vxtap or [])
            r["label"] = "vxtap (etcd)"
            results.append(r)
            topo_modes = [m for m in modes if m != "vxtap"]
        else:
            topo_modes = modes
        if topo_modes:
            for r in run_topology_modes(topo_modes, args, out):
                r["label"] = "vxtap (static)" if r["mode"] == "vxtap" else "kernel"
                results.append(r)
    except DemoError as e:
        print(f"\ndemo: FAILED: {e}", file=sys.stderr)
        return 1 if report_leftovers("everything created so far has been removed") else 3
    except KeyboardInterrupt:
        print("\ndemo: interrupted", file=sys.stderr)
        report_leftovers("everything created so far has been removed")
        return 130

    summary(results, out)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    bad = [r["label"] for r in results
           if not (r["transfer_intact"] and r["ping_received"] == r["ping_sent"])]
    clean = report_leftovers("")
    if bad:
        print(f"\ndemo: FAILED: lost pings or a corrupted transfer with {', '.join(bad)}",
              file=sys.stderr)
        return 1
    if not clean:
        return 3
    out.say(f"\nOK: every ping answered, every transfer intact; everything the demo created is "
            f"gone. Total {time.monotonic() - out.t0:.0f} s.")
    return 0


def report_leftovers(ok_msg: str) -> bool:
    """Check that this run left nothing behind; say so on stderr. True if clean."""
    left = leftovers()
    if left:
        print(f"demo: left behind: {', '.join(left)}", file=sys.stderr)
        return False
    if ok_msg:
        print(f"demo: {ok_msg}.", file=sys.stderr)
    return True


if __name__ == "__main__":
    sys.exit(main())
