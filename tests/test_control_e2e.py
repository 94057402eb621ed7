"""End to end: three `vxtap agent --etcd` processes (one per node namespace, tests/topo.py), a
real etcd on loopback, pods registered with `vxtap endpoint add` and one pod joined through
vxtap-cni (bridge + host-local delegates). Pods ping across nodes on tables that came only from
etcd; a SIGKILLed agent's pods vanish from the others after the lease TTL; a restarted agent
holds exactly etcd's state. Needs root, /dev/net/tun, iproute2, /usr/lib/cni.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests import topo
from tests.etcd_server import (EtcdServer, agent_tables, etcd_desired,
                               etcd_fresh_network, wait_until)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TTL = 3
NETWORK = "e2e"
CNI_BIN = "/usr/lib/cni"

pytestmark = [pytest.mark.integration, pytest.mark.etcd]


def converged(agent: topo.Agent, server: EtcdServer, node: str) -> None:
    wait_until(lambda: agent_tables(agent) == etcd_desired(server, NETWORK, node))


def start_agent(t: topo.Topology, node: topo.Node, server: EtcdServer) -> topo.Agent:
    return t.add_vxtap_agent(node, fdb=[], neigh=[], extra=[
        "--etcd", server.url, "--network", NETWORK, "--node", f"node{node.index}",
        "--subnet", "10.244.0.0/16", "--lease-ttl", TTL])


def cni(cmd: str, node: topo.Node, pod_ns: str, cid: str, config: dict[str, Any]) -> Any:
    rc, out, err = topo.run_vxtap_cni(cmd, node.ns, pod_ns, cid, config)
    assert rc == 0, (out, err)
    return out


def test_three_nodes_pods_and_agents(etcd: EtcdServer,
                                     make_topology: Callable[..., topo.Topology]) -> None:
    if not os.access(os.path.join(CNI_BIN, "bridge"), os.X_OK):
        pytest.skip(f"needs {CNI_BIN}/bridge (containernetworking-plugins)")
    t = make_topology(nodes=3, pods=1)
    etcd_fresh_network(etcd, NETWORK, [n.index for n in t.nodes])    # blocks clear of the pods
    agents = [start_agent(t, n, etcd) for n in t.nodes]
    assert agents[2].request("node_info")["block"] == "10.244.30.0/24"
    cni_ns = f"{t.prefix}cni"
    subprocess.run(["ip", "netns", "add", cni_ns], check=True)
    try:
        # 1. pods made by the topology join with the plain CLI through their agent
        for pod in t.pods:
            agents[pod.node.index - 1].cli("endpoint", "add", pod.ns, "--mac", pod.mac,
                                           "--ip", f"{pod.ip}/16")
        # 2. one pod joins node 3 through the CNI plugin
        n3 = t.node(3)
        sock3 = str(agents[2].sock)
        config = {"cniVersion": "1.0.0", "name": "vxnet", "type": "vxtap-cni",
                  "agentSocket": sock3, "dataDir": str(t.workdir / "cni")}
        res = cni("ADD", n3, cni_ns, "cnipod", config)
        cni_ip = res["ips"][0]["address"].split("/")[0]
        cni_mac = next(i["mac"] for i in res["interfaces"] if i.get("sandbox"))
        block = ipaddress.ip_network(agents[2].request("node_info")["block"])
        assert ipaddress.ip_address(cni_ip) in block            # from node 3's block
        # 3. every agent converges to etcd's state; pods talk across nodes
        for i, a in enumerate(agents, 1):
            converged(a, etcd, f"node{i}")
        assert len(agent_tables(agents[0]).fdb) == 3           # 2 remote topo pods + CNI pod
        t.pod(1).ping(t.pod(2), count=2)
        t.pod(1).ping(t.pod(3), count=2)
        topo.ping(cni_ns, t.pod(1).ip, count=2)                # CNI pod on node 3 -> node 1
        # 3b. how long an endpoint add takes to reach every other agent's fast-path table:
        # the op on node 1's control socket writes etcd; nodes 2 and 3 get it through their
        # watch. Polled through their control sockets every 1 ms (the poll adds <= ~1 ms).
        lat = []
        for k in range(20):
            probe = f"02:00:00:00:0a:{k:02x}"
            t0 = time.monotonic()
            agents[0].request("endpoint_add", container_id=f"probe{k}", mac=probe,
                              ip=f"10.244.10.{100 + k}/16")

            def seen(p: str = probe) -> bool:
                return all(any(r[0] == p for r in a.request("show", what="fdb")["rows"])
                           for a in agents[1:])
            wait_until(seen, step=0.001)
            lat.append(time.monotonic() - t0)
            agents[0].request("endpoint_del", container_id=f"probe{k}")
        for i, a in enumerate(agents, 1):
            converged(a, etcd, f"node{i}")
        lat.sort()
        print(f"\n[measure] e2e: endpoint add -> both other agents' tables: p50 "
              f"{lat[len(lat) // 2] * 1000:.1f} ms, max {lat[-1] * 1000:.1f} ms (20 adds)")
        assert lat[len(lat) // 2] < 2.0
        # 4. SIGKILL node 3's agent: its pods vanish from the others after the lease TTL
        t0 = time.monotonic()
        agents[2].proc.stop(sig=signal.SIGKILL)
        wait_until(lambda: all((42, cni_mac) not in agent_tables(a).fdb for a in agents[:2]),
                   timeout=TTL + 5)
        gone = time.monotonic() - t0
        for i in (1, 2):
            assert agent_tables(agents[i - 1]) == etcd_desired(etcd, NETWORK, f"node{i}")
        assert (42, t.pod(3).mac) not in agent_tables(agents[0]).fdb
        print(f"\n[measure] e2e: agent SIGKILL -> peers dropped its pods: {gone:.2f} s (TTL {TTL} s)")
        # 5. restart it: tables equal etcd's state everywhere, traffic flows again
        t.remove_agent(agents[2])
        t.agents.remove(agents[2])
        agents[2] = start_agent(t, n3, etcd)
        for i, a in enumerate(agents, 1):
            converged(a, etcd, f"node{i}")
        assert (42, cni_mac) in agent_tables(agents[0]).fdb
        t.pod(1).ping(t.pod(3), count=2)
        # 6. CNI DEL removes the pod everywhere
        cni("DEL", n3, cni_ns, "cnipod", dict(config, prevResult=res))
        for a in agents[:2]:
            converged(a, etcd, f"node{a.node.index}")
            assert (42, cni_mac) not in agent_tables(a).fdb
        st = agents[0].stats()["control"]
        assert st["connected"] and st["bad_records"] == 0
    finally:
        subprocess.run(["ip", "netns", "del", cni_ns], capture_output=True, check=False)
