"""A mixed flannel cluster in namespaces over a real etcd: node 1 is an emulated flanneld node
(kernel vxlan `flannel.1`, tests/flannel_topo.py), nodes 2 and 3 run `vxtap agent --flannel`.
Pods join every node through the standard bridge + host-local CNI plugins over FLANNEL_SUBNET.

The tests share one cluster and run in order: all pairs ping and move a digest-checked TCP
transfer; the same with the underlay's TX checksum offload on; bad leases are skipped and
counted; a vxtap node restarts (clean exit, then a crash) and keeps its subnet; the flannel
node's lease expires and the vxtap nodes remove its routes, neighbours and FDB entries.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from control.flannel import LeaseAttrs
from tests import flannel_topo as ft
from tests import topo
from tests.etcd_server import EtcdServer, etcd_client, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.etcd]

CONFIG = {"Network": "10.5.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan"}}
FLANNEL_SUBNET = "10.5.7.0/24"
TRANSFER = 4 * 1024 * 1024


class Cluster:
    def __init__(self, t: ft.FlannelTopology, client: Any, etcd: EtcdServer) -> None:
        self.t, self.client, self.etcd = t, client, etcd
        self.flanneld = ft.EmulatedFlanneld(t, t.node(1), client, FLANNEL_SUBNET)
        self.agents = {2: ft.start_vxtap(t, t.node(2), etcd.url),
                       3: ft.start_vxtap(t, t.node(3), etcd.url, iface=t.node(3).dev)}
        self.flanneld.sync()
        self.pods = {1: t.add_cni_pod(t.node(1), self.flanneld.env, "p1")}
        for n, a in self.agents.items():
            self.pods[n] = t.add_cni_pod(t.node(n), a.subnet_env(), f"p{n}")

    def restart(self, n: int, sig: int = signal.SIGTERM) -> ft.FlannelAgent:
        old = self.agents[n]
        old.proc.stop(sig=sig)
        self.t.agents.remove(old)
        self.agents[n] = ft.start_vxtap(self.t, self.t.node(n), self.etcd.url,
                                        nth=len(self.t.agents) + 10)
        return self.agents[n]

    def subnet(self, n: int) -> str:
        return FLANNEL_SUBNET if n == 1 else str(self.agents[n].subnet_env().subnet)

    def converged(self) -> None:
        """Each vxtap node's kernel state is what flanneld would program from the leases."""
        for n, a in self.agents.items():
            wait_until(lambda a=a, n=n: a.status()["peers"] == 2, timeout=30)
            want = sorted((self.subnet(m), self.subnet(m).split("/")[0], True)
                          for m in (1, 2, 3) if m != n)
            wait_until(lambda n=n, want=want: ft.kernel_state(self.t.node(n), "flannel.1")
                       ["routes"] == want, timeout=30)


@pytest.fixture(scope="module")
def cluster(etcd_server: EtcdServer) -> Iterator[Cluster]:
    etcd = etcd_server
    reason = topo.missing_privileges()
    if reason:
        pytest.skip(reason)
    if not os.access(f"{ft.CNI_BIN}/bridge", os.X_OK):
        pytest.skip(f"needs {ft.CNI_BIN}/bridge and host-local (containernetworking-plugins)")
    client = etcd_client(etcd)
    ft.put_config(client, CONFIG)
    t = ft.FlannelTopology(nodes=3)
    ok = False
    try:
        t.build()
        yield Cluster(t, client, etcd)
        ok = True
    finally:
        if not ok:
            t.keep_workdir = True
            print(f"\n=== files kept in {t.workdir}\n{t.agent_logs()}", file=sys.stderr)
        t.close()
        client.close()


def report(*lines: str) -> None:
    for line in lines:
        print(f"[flannel-mixed] {line}")


def test_mixed_cluster_all_pairs(cluster: Cluster) -> None:
    c = cluster
    subnets = {n: ipaddress.IPv4Network(c.subnet(n)) for n in (1, 2, 3)}
    for a in (1, 2, 3):
        for b in (1, 2, 3):
            assert a == b or not subnets[a].overlaps(subnets[b]), subnets
    # the leases vxtap wrote are flannel's JSON, naming the TAP's MAC and the node's PublicIP
    leases = ft.leases(c.client)
    for n, agent in c.agents.items():
        sn = subnets[n]
        raw = leases[f"{ft.PREFIX}/subnets/{sn.network_address}-{sn.prefixlen}"]
        mac = agent.request("info")["mac"]
        assert raw == LeaseAttrs(ipaddress.IPv4Address(c.t.node(n).ip), "vxlan", 1,
                                 mac).to_json().encode()
        env = agent.subnet_env()
        assert (str(env.network), env.mtu) == ("10.5.0.0/16", 1450)
    c.converged()
    # vxtap node 2: exactly what flanneld programs on flannel.1, plus the fast path's tables
    st = ft.kernel_state(c.t.node(2), "flannel.1")
    assert st["addr"] == [f"{subnets[2].network_address}/32"]
    fl_mac = c.flanneld.mac
    assert (str(subnets[1].network_address), fl_mac, "PERMANENT") in st["neigh"]
    fdb = c.agents[2].request("show", what="fdb")["rows"]
    assert [fl_mac, c.t.node(1).ip, 8472] in fdb
    neigh = c.agents[2].request("show", what="neigh")["rows"]
    assert [str(subnets[1].network_address), fl_mac] in neigh
    report(f"subnets: flanneld node {subnets[1]}, vxtap node 2 {subnets[2]}, "
           f"vxtap node 3 {subnets[3]}")
    report(f"node 2 flannel.1: {json.dumps(st)}")
    # every ordered pair of pods
    pods = c.pods
    for a in (1, 2, 3):
        for b in (1, 2, 3):
            if a != b:
                p = pods[a].ping(pods[b], count=3)
                assert p.received >= 2, p.output          # one lost reply under heavy load
                report(f"ping {pods[a].ip} (node {a}) -> {pods[b].ip} (node {b}): {p}")
    for a, b in ((1, 2), (2, 1), (2, 3), (3, 1)):
        r = c.t.tcp_transfer(pods[a], pods[b], size=TRANSFER)
        assert r.intact, r
        report(f"tcp {pods[a].ip} -> {pods[b].ip}: {r.received_bytes} bytes, sha256 "
               f"{r.received_sha256[:16]}... matches, {r.mbit_per_s:.0f} Mbit/s "
               "(underlay TX checksum offload off)")


def test_transfer_with_tx_checksum_offload_on(cluster: Cluster) -> None:
    c = cluster
    nodes = [c.t.node(n) for n in (1, 2, 3)]
    for node in nodes:
        topo.set_tx_checksum(node.ns, node.dev, True)
    try:
        for a, b in ((2, 3), (3, 2), (2, 1), (1, 2)):  # TCP with the kernel peer is the xfail
            r = c.t.tcp_transfer(c.pods[a], c.pods[b], size=TRANSFER, timeout=8)
            assert r.intact, r
            report(f"tcp {c.pods[a].ip} -> {c.pods[b].ip}: intact with TX checksum offload on")
    finally:
        for node in nodes:
            topo.set_tx_checksum(node.ns, node.dev, False)


def test_bad_leases_are_skipped_and_counted(cluster: Cluster) -> None:
    c = cluster
    before = {n: a.status()["bad_leases"] for n, a in c.agents.items()}
    bad = {"10.5.200.0-24": "{bad json",
           "10.5.201.0-24": '{"PublicIP":"192.168.100.9","PublicIPv6":null,"BackendType":"udp"}',
           "10.5.202.0-24": LeaseAttrs(ipaddress.IPv4Address("192.168.100.9"), "vxlan", 2,
                                       "02:00:00:00:09:02").to_json(),
           "10.5.7.128-25": LeaseAttrs(ipaddress.IPv4Address("192.168.100.9"), "vxlan", 1,
                                       "02:00:00:00:09:03").to_json()}
    for k, v in bad.items():
        c.client.put(f"{ft.PREFIX}/subnets/{k}", v)
    try:
        for n, a in c.agents.items():
            wait_until(lambda a=a: a.status()["skipped_leases"] == 4, timeout=30)
            st = a.status()
            assert st["bad_leases"] == before[n] + 4 and st["peers"] == 2, st
            assert a.proc.alive
            text = a.stderr_text()
            for k in bad:
                assert text.count(f"skipping lease {ft.PREFIX}/subnets/{k}:") == 1, k
        report("bad leases (bad JSON, udp backend, VNI 2, overlapping) skipped: "
               f"{json.dumps({n: a.status()['skipped_leases'] for n, a in c.agents.items()})}")
        assert c.pods[2].ping(c.pods[1], count=2).received == 2
    finally:
        for k in bad:
            c.client.delete(f"{ft.PREFIX}/subnets/{k}")
    for a in c.agents.values():
        wait_until(lambda a=a: a.status()["skipped_leases"] == 0, timeout=30)


def test_vxtap_restart_keeps_its_subnet(cluster: Cluster) -> None:
    c = cluster
    sn = c.subnet(2)
    key = f"{ft.PREFIX}/subnets/{sn.replace('/', '-')}"
    # clean exit: lease key deleted, routes gone with the agent's TAP
    old = c.agents[2]
    old.proc.stop()
    assert old.proc.returncode == 0, old.stderr_text()
    assert c.client.get(key)[0] is None
    assert "lease 10.5" in old.stderr_text() and "released" in old.stderr_text()
    assert topo.run(["ip", "link", "show", "flannel.1"], c.t.node(2).ns, check=False).returncode
    wait_until(lambda: c.agents[3].status()["peers"] == 1, timeout=30)
    c.t.agents.remove(old)
    c.agents[2] = ft.start_vxtap(c.t, c.t.node(2), c.etcd.url, nth=1)
    assert c.subnet(2) == sn                              # from subnet.env, like flanneld
    c.flanneld.sync()                                     # new VtepMAC: flanneld re-programs
    c.converged()
    assert c.pods[1].ping(c.pods[2], count=2).received == 2
    assert c.pods[3].ping(c.pods[2], count=2).received == 2
    # crash: the key stays; the restarted agent finds it by PublicIP
    agent = c.restart(2, sig=signal.SIGKILL)
    assert c.subnet(2) == sn and c.client.get(key)[0] is not None
    c.flanneld.sync()
    c.converged()
    assert c.pods[2].ping(c.pods[1], count=2).received == 2
    report(f"vxtap node 2 restarted twice (clean exit, SIGKILL): subnet {sn} kept, "
           f"VtepMAC now {agent.request('info')['mac']}")


def test_flannel_node_lease_expiry_removes_it(cluster: Cluster) -> None:
    c = cluster
    gw = FLANNEL_SUBNET.split("/")[0]
    c.flanneld.write_lease(ttl=2)                        # flanneld dies: nobody renews this
    for n, a in c.agents.items():
        node = c.t.node(n)

        def gone(a: ft.FlannelAgent = a, node: topo.Node = node) -> bool:
            st = ft.kernel_state(node, "flannel.1")
            fdb = a.request("show", what="fdb")["rows"]
            neigh = a.request("show", what="neigh")["rows"]
            return (all(r[0] != FLANNEL_SUBNET for r in st["routes"])
                    and all(x[0] != gw for x in st["neigh"])
                    and all(r[0] != c.flanneld.mac for r in fdb)
                    and all(r[0] != gw for r in neigh))
        wait_until(gone, timeout=30)
        wait_until(lambda a=a: a.status()["peers"] == 1, timeout=30)
    assert c.pods[2].ping(c.pods[3], count=2).received == 2   # the vxtap pair still works
    report("flanneld node lease expired: its route, neighbour and FDB entry left both vxtap "
           "nodes")
