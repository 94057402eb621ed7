"""End to end, dual stack through etcd: two `vxtap agent --etcd` processes (tests/topo.py nodes,
over an IPv4 and over an IPv6-only underlay), a real etcd, a network config with `subnet6`. Pods join with `vxtap endpoint
add --ip --ip6` and through vxtap-cni (bridge + host-local with an IPv4 and an IPv6 range). The
agents' ARP and IPv6 neighbour tables come only from etcd's dual-stack endpoint records:

1. every agent's fdb and neighbour table equal `desired()` of etcd (both families);
2. ping and ping -6 between pods across the nodes, both ways; an underlay capture shows no
   neighbour solicitation crossing for a known target (the agents answered them: nd_replied);
3. a solicitation for an unknown target follows the BUM policy: node 1's agent runs with
   --flood (the NS crosses the underlay), node 2's without (dropped, counted nd_miss);
4. a DAD probe (source ::) for a known address is not answered, a normal NS for it is.
Needs root, /dev/net/tun, iproute2, tcpdump, /usr/lib/cni.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import pytest

from control.keys import Layout
from tests import topo
from tests.etcd_server import (EtcdServer, agent_tables, etcd_client, etcd_desired,
                               etcd_fresh_network, wait_until)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NETWORK = "e2e6"
CNI_BIN = "/usr/lib/cni"
CONFIG = {"vni": 42, "subnet": "10.244.0.0/16", "block_prefix": 24,
          "subnet6": "fd00:10:244::/48", "block_prefix6": 64}

pytestmark = [pytest.mark.integration, pytest.mark.etcd]


def counter(agent: topo.Agent, name: str) -> int:
    total = 0

    def walk(d: Any) -> None:
        nonlocal total
        if isinstance(d, list):
            for v in d:
                walk(v)
        elif isinstance(d, dict):
            for k, v in d.items():
                if k == name and isinstance(v, int):
                    total += v
                else:
                    walk(v)
    walk(agent.stats())
    return total


def cni(cmd: str, node: topo.Node, pod_ns: str, cid: str, config: dict[str, Any]) -> Any:
    rc, out, err = topo.run_vxtap_cni(cmd, node.ns, pod_ns, cid, config)
    assert rc == 0, (out, err)
    return out


# One NS from a pod (scapy, inside the pod's namespace); prints the targets of the neighbour
# advertisements that came back within the timeout.
_NS_PROBE = textwrap.dedent("""
    import json, sys
    from scapy.all import AsyncSniffer, Ether, IPv6, ICMPv6ND_NS, ICMPv6ND_NA, sendp
    from scapy.layers.inet6 import ICMPv6NDOptSrcLLAddr, in6_getnsma, in6_getnsmac, inet_pton
    import socket, time
    src, mac, target = sys.argv[1:4]
    dst = socket.inet_ntop(socket.AF_INET6, in6_getnsma(inet_pton(socket.AF_INET6, target)))
    pkt = Ether(src=mac, dst=in6_getnsmac(inet_pton(socket.AF_INET6, dst))) / \\
        IPv6(src=src, dst=dst, hlim=255) / ICMPv6ND_NS(tgt=target)
    if src != "::":
        pkt = pkt / ICMPv6NDOptSrcLLAddr(lladdr=mac)
    sn = AsyncSniffer(iface="eth0", filter="icmp6", store=True)
    sn.start()
    time.sleep(0.3)
    sendp(pkt, iface="eth0", verbose=False)
    time.sleep(1.0)
    got = sn.stop()
    print(json.dumps([p[ICMPv6ND_NA].tgt for p in got if ICMPv6ND_NA in p]))
""")


def ns_probe(pod: topo.Pod, src: str, target: str) -> list[str]:
    r = subprocess.run(["ip", "netns", "exec", pod.ns, sys.executable, "-c", _NS_PROBE, src,
                        pod.mac, target], capture_output=True, text=True, timeout=30, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def crossing_ns(cap: topo.Capture) -> tuple[int, list[tuple[str, str]]]:
    """(VXLAN datagrams, [(IPv6 source, target) of every neighbour solicitation inside one]) of
    a capture, over an IPv4 or an IPv6 underlay."""
    from scapy.layers.inet import UDP
    from scapy.layers.inet6 import ICMPv6ND_NS, IPv6
    from scapy.layers.l2 import Ether
    from scapy.utils import rdpcap
    n, out = 0, []
    for outer in rdpcap(str(cap.path)):
        if UDP not in outer or topo.VXLAN_PORT not in (outer[UDP].sport, outer[UDP].dport):
            continue
        n += 1
        pkt = Ether(bytes(outer[UDP].payload)[8:])
        if ICMPv6ND_NS in pkt:
            out.append((pkt[IPv6].src, pkt[ICMPv6ND_NS].tgt))
    return n, out


def ping6(ns: str, dst: str, count: int = 2) -> None:
    r = subprocess.run(["ip", "netns", "exec", ns, "ping", "-6", "-c", str(count), "-i", "0.2",
                        "-W", "2", dst], capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 0, f"ping -6 {dst} from {ns}:\n{r.stdout}{r.stderr}"


@pytest.mark.parametrize("underlay", ["ipv4", "ipv6"])
def test_dual_stack_pods_through_etcd_and_cni(etcd: EtcdServer, underlay: str,
                                              make_topology: Callable[..., topo.Topology]) -> None:
    if not os.access(os.path.join(CNI_BIN, "bridge"), os.X_OK):
        pytest.skip(f"needs {CNI_BIN}/bridge (containernetworking-plugins)")
    t = make_topology(nodes=2, pods=1, disable_ipv6=False, underlay=underlay)
    n1, n2 = t.node(1), t.node(2)
    a, b = t.pod(1), t.pod(2)
    a6, b6 = "fd00:10:244:1::2", "fd00:10:244:2::2"
    for pod, addr in ((a, a6), (b, b6)):
        topo.ip("addr", "add", f"{addr}/48", "dev", "eth0", "nodad", ns=pod.ns)
    net = f"{NETWORK}{underlay[-1]}"
    layout = Layout("/vxtap", net)
    etcd_fresh_network(etcd, net, [n.index for n in t.nodes])    # blocks clear of the pods
    agents = [t.add_vxtap_agent(n, fdb=[], neigh=[], extra=[
        "--etcd", etcd.url, "--network", net, "--node", f"node{n.index}", "--lease-ttl", 5,
        "--subnet", CONFIG["subnet"], "--subnet6", CONFIG["subnet6"],    # the first creates it
        *(["--flood"] if n is n1 else [])]) for n in t.nodes]
    client = etcd_client(etcd)
    try:
        assert json.loads(client.get(layout.config)[0]) == {**CONFIG, "port": 4789}
    finally:
        client.close()
    info2 = agents[1].request("node_info")
    assert info2["block6"] == "fd00:10:244:14::/64", info2          # pairs with 10.244.20.0/24
    cni_ns = f"{t.prefix}cni"
    subprocess.run(["ip", "netns", "add", cni_ns], check=True)
    try:
        # 1. two topology pods through the CLI, a third pod through CNI on node 2, a "ghost"
        #    endpoint (IPv6 only, no host behind it) on node 2 for the DAD check
        for agent, pod, addr in ((agents[0], a, a6), (agents[1], b, b6)):
            agent.cli("endpoint", "add", pod.ns, "--mac", pod.mac, "--ip", f"{pod.ip}/16",
                      "--ip6", f"{addr}/48")
        ghost6, ghost_mac = "fd00:10:244:2::99", "02:00:00:00:02:99"
        agents[1].cli("endpoint", "add", "ghost", "--mac", ghost_mac, "--ip6", f"{ghost6}/48")
        config = {"cniVersion": "1.0.0", "name": "vxnet", "type": "vxtap-cni",
                  "network": net, "agentSocket": str(agents[1].sock),
                  "dataDir": str(t.workdir / "cni")}
        res = cni("ADD", n2, cni_ns, "cnipod", config)
        ips = {":" in ip["address"]: ip["address"].split("/")[0] for ip in res["ips"]}
        c4, c6 = ips[False], ips[True]
        assert (c4, c6) == ("10.244.20.2", "fd00:10:244:14::2"), res
        c_mac = next(i["mac"] for i in res["interfaces"] if i.get("sandbox"))
        for i, agent in enumerate(agents, 1):
            wait_until(lambda agent=agent, i=i: agent_tables(agent) ==
                       etcd_desired(etcd, net, f"node{i}"), timeout=15)
        t1 = agent_tables(agents[0])
        assert t1.neigh[(42, c6)] == c_mac and t1.neigh[(42, c4)] == c_mac
        assert t1.neigh[(42, b6)] == b.mac and t1.neigh[(42, ghost6)] == ghost_mac
        assert (42, ghost_mac) in t1.fdb                            # IPv6-only records too
        # 2. traffic both families, both ways; the capture sees node 1's whole underlay
        replied = [counter(ag, "nd_replied") for ag in agents]
        cap = t.capture(n1, name="ul6")
        with cap:
            a.ping(b, count=2, interval=0.2)
            topo.ping(a.ns, c4, count=2)
            ping6(a.ns, b6)
            ping6(a.ns, c6)
            ping6(b.ns, a6)
            ping6(cni_ns, a6)
            # 3. unknown targets: node 1 floods (BUM policy --flood), node 2 drops
            miss2 = counter(agents[1], "drop_nd_miss")
            for ns, unknown in ((a.ns, "fd00:10:244:2::77"), (b.ns, "fd00:10:244:1::77")):
                subprocess.run(["ip", "netns", "exec", ns, "ping", "-6", "-c", "1", "-W", "1",
                                unknown], capture_output=True, check=False, timeout=10)
        assert a.neighbours()[b6][0] == b.mac and a.neighbours()[c6][0] == c_mac
        known = {a6, b6, c6, ghost6}
        datagrams, seen = crossing_ns(cap)
        assert datagrams >= 12, datagrams                # the pings crossed this underlay
        assert not [(s, tg) for s, tg in seen if tg in known], seen
        assert any(tg == "fd00:10:244:2::77" for _, tg in seen), seen   # flooded by node 1
        assert not any(tg == "fd00:10:244:1::77" for _, tg in seen), seen   # dropped at node 2
        assert counter(agents[1], "drop_nd_miss") > miss2
        assert all(counter(ag, "nd_replied") > r for ag, r in zip(agents, replied))
        # 4. DAD probe for the ghost's address: no answer; an ordinary NS: answered
        assert ns_probe(a, "::", ghost6) == []
        assert ns_probe(a, a6, ghost6) == [ghost6]
        # 5. CNI DEL: the record and both neighbour entries leave node 1's tables
        cni("DEL", n2, cni_ns, "cnipod", dict(config, prevResult=res))
        wait_until(lambda: (42, c6) not in agent_tables(agents[0]).neigh, timeout=10)
        assert (42, c4) not in agent_tables(agents[0]).neigh
        for i, agent in enumerate(agents, 1):
            st = agent.stats()["control"]
            assert st["connected"] and st["bad_records"] == 0, st
            assert agent_tables(agent) == etcd_desired(etcd, net, f"node{i}")
    finally:
        subprocess.run(["ip", "netns", "del", cni_ns], capture_output=True, check=False)
