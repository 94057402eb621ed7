"""Namespace topologies of a flannel network: emulated flanneld nodes and vxtap --flannel nodes.

flanneld is not packaged for Debian and is never downloaded, so an emulated node is programmed
here exactly as flanneld's vxlan backend programs a node (pkg/backend/vxlan):

    flannel.1   ip link add flannel.1 type vxlan id 1 local <PublicIP> dev ul0 dstport 8472
                nolearning; MTU = underlay - 50; address <subnet.0>/32
    its lease   <prefix>/subnets/<A.B.C.D>-24 = {"PublicIP", "PublicIPv6": null, "BackendType":
                "vxlan", "BackendData": {"VNI", "VtepMAC"}} on an etcd lease (written by the test)
    per lease   ip neigh replace <subnet.0> lladdr <VtepMAC> dev flannel.1 nud permanent
    of another  bridge fdb replace <VtepMAC> dev flannel.1 dst <PublicIP> self permanent
    node        ip route replace <subnet> via <subnet.0> dev flannel.1 onlink
    pods        the standard bridge + host-local CNI plugins (cni0 holds <subnet.1>/24)

`EmulatedFlanneld.sync()` reads the leases from etcd and programs them, as flanneld does from
its watch. Nodes route (ip_forward=1). Pods get no VTEP of their own: they reach other
subnets through their node's cni0 gateway.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from control.flannel import LeaseAttrs, SubnetEnv, cni_config
from tests import topo

PREFIX = "/coreos.com/network"
CNI_BIN = "/usr/lib/cni"
FLANNEL_PORT = 8472


class FlannelTopology(topo.Topology):
    """topo.Topology's nodes and underlay, without its br0 pods: pods join through CNI."""

    def __init__(self, nodes: int = 3, **kw: Any) -> None:
        super().__init__(nodes=nodes, pods=1, **kw)
        self.cni_pods: list[topo.Pod] = []

    def _add_pod(self, node: topo.Node, host: int) -> topo.Pod:   # type: ignore[override]
        return None  # type: ignore[return-value]

    def _build(self) -> None:
        super()._build()
        for node in self.nodes:
            topo.ip("link", "del", topo.BRIDGE, ns=node.ns)
            topo.run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"], node.ns)

    def add_cni_pod(self, node: topo.Node, env: SubnetEnv, name: str) -> topo.Pod:
        """A pod namespace joined with `bridge` + `host-local` over FLANNEL_SUBNET."""
        ns = self._add_ns(f"{self.prefix}{name}")
        conf = cni_config(env, data_dir=str(self.workdir / f"ipam-{node.index}"))
        res = cni("ADD", node.ns, ns, name, conf)
        ip4 = res["ips"][0]["address"].split("/")[0]
        mac = next(i["mac"] for i in res["interfaces"] if i.get("sandbox"))
        pod = topo.Pod(ns=ns, node=node, host=int(ip4.rsplit(".", 1)[1]), ip=ip4, mac=mac,
                       mtu=env.mtu)
        node.pods.append(pod)
        self.cni_pods.append(pod)
        return pod


def cni(cmd: str, node_ns: str, pod_ns: str, cid: str, config: dict[str, Any]) -> Any:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": cmd,
           "CNI_CONTAINERID": cid, "CNI_NETNS": f"/var/run/netns/{pod_ns}",
           "CNI_IFNAME": "eth0", "CNI_PATH": CNI_BIN}
    r = subprocess.run(["ip", "netns", "exec", node_ns, f"{CNI_BIN}/{config['type']}"],
                       input=json.dumps(config).encode(), env=env, capture_output=True,
                       timeout=60, check=False)
    out = json.loads(r.stdout) if r.stdout.strip() else None
    if r.returncode != 0:
        raise topo.TopoError(f"CNI {cmd} {config['type']}: {out} {r.stderr.decode()}")
    return out


def put_config(client: Any, config: dict[str, Any] | str, prefix: str = PREFIX) -> None:
    client.put(prefix + "/config", config if isinstance(config, str) else json.dumps(config))


def leases(client: Any, prefix: str = PREFIX) -> dict[str, bytes]:
    return {m.key.decode(): v for v, m in client.get_prefix(prefix + "/subnets/")}


class EmulatedFlanneld:
    """One node programmed as flanneld programs it (see the module docstring)."""

    def __init__(self, t: FlannelTopology, node: topo.Node, client: Any, subnet: str,
                 ttl: int = 86400, prefix: str = PREFIX, vni: int = 1,
                 network: str = "10.5.0.0/16") -> None:
        self.t, self.node, self.client, self.prefix, self.vni = t, node, client, prefix, vni
        self.subnet = ipaddress.IPv4Network(subnet)
        self.key = f"{prefix}/subnets/{self.subnet.network_address}-{self.subnet.prefixlen}"
        self.dev = f"flannel.{vni}"
        ns = node.ns
        topo.ip("link", "add", self.dev, "mtu", node.mtu - 50, "type", "vxlan", "id", vni,
                "local", node.ip, "dev", node.dev, "dstport", FLANNEL_PORT, "nolearning", ns=ns)
        topo.ip("addr", "add", f"{self.subnet.network_address}/32", "dev", self.dev, ns=ns)
        topo.ip("link", "set", self.dev, "up", ns=ns)
        link = json.loads(topo.run(["ip", "-j", "link", "show", self.dev], ns).stdout)[0]
        self.mac = link["address"]
        self.env = SubnetEnv(ipaddress.IPv4Network(network), self.subnet, node.mtu - 50)
        self.programmed: dict[str, tuple[str, str]] = {}     # subnet -> (mac, public ip)
        self.write_lease(ttl)

    def lease_value(self) -> str:
        return LeaseAttrs(ipaddress.IPv4Address(self.node.ip), "vxlan", self.vni,
                          self.mac).to_json()

    def write_lease(self, ttl: int) -> None:
        """Put our lease on a fresh etcd lease of `ttl` seconds (flannel's updateSubnet)."""
        lease = self.client.lease(ttl)
        self.client.put(self.key, self.lease_value(), lease=lease.id)
        self.lease_id = lease.id

    def sync(self) -> dict[str, tuple[str, str]]:
        """Program every other vxlan lease in etcd, remove the ones gone (flanneld's watch)."""
        want: dict[str, tuple[str, str]] = {}
        for key, raw in leases(self.client, self.prefix).items():
            if key == self.key:
                continue
            try:
                a = LeaseAttrs.parse(raw)
            except ValueError:
                continue                                 # flanneld ignores these too
            sn = key.rsplit("/", 1)[1].replace("-", "/")
            want[sn] = (a.vtep_mac, str(a.public_ip))
        ns = self.node.ns
        for sn, (mac, pub) in self.programmed.items():
            if want.get(sn) != (mac, pub):
                gw = sn.split("/")[0]
                topo.run(["ip", "route", "del", sn, "via", gw, "dev", self.dev], ns, check=False)
                topo.run(["ip", "neigh", "del", gw, "dev", self.dev], ns, check=False)
                topo.run(["bridge", "fdb", "del", mac, "dev", self.dev, "dst", pub, "self"], ns,
                         check=False)
        for sn, (mac, pub) in want.items():
            gw = sn.split("/")[0]
            topo.run(["ip", "neigh", "replace", gw, "lladdr", mac, "dev", self.dev,
                      "nud", "permanent"], ns)
            topo.run(["bridge", "fdb", "replace", mac, "dev", self.dev, "dst", pub,
                      "self", "permanent"], ns)
            topo.run(["ip", "route", "replace", sn, "via", gw, "dev", self.dev, "onlink"], ns)
        self.programmed = want
        return want


class FlannelAgent(topo.Agent):
    """A `vxtap agent --flannel --netns NODE` process."""

    subnet_file: Path

    def subnet_env(self) -> SubnetEnv:
        return SubnetEnv.parse(self.subnet_file.read_text())

    def status(self) -> dict[str, Any]:
        return self.request("flannel_status", timeout=30)


def start_vxtap(t: FlannelTopology, node: topo.Node, etcd_url: str, *,
                extra: list[str] | None = None, nth: int = 0, iface: str | None = None,
                ready_timeout: float = 60) -> FlannelAgent:
    """`--local node.ip`, or `--iface DEV` (the agent finds the address) if `iface` is given."""
    cmd = topo.vxtap_command()
    if cmd is None:
        raise topo.TopoError("vxtap is not installed")
    sock = t.workdir / f"flannel-agent-{node.index}-{nth}.sock"
    subnet_file = t.workdir / f"subnet-{node.index}.env"
    argv = [*cmd, "agent", "--flannel", "--etcd", etcd_url, "--netns", node.ns,
            *(["--iface", iface] if iface else ["--local", node.ip]), "--sock", str(sock), "--subnet-file", str(subnet_file),
            *(extra or [])]
    proc = topo.BgProcess(argv, None, name=f"flannel-agent-{node.index}-{nth}",
                          logdir=t.workdir, cwd=str(topo.REPO_ROOT))
    agent = FlannelAgent(node, argv, sock, proc, 1, FLANNEL_PORT, "flannel.1")
    agent.subnet_file = subnet_file
    t.agents.append(agent)
    node.vtep = "vxtap"
    agent.wait_ready(ready_timeout)
    return agent


def kernel_state(node: topo.Node, dev: str) -> dict[str, Any]:
    """Routes, permanent neighbours and FDB entries on `dev` (what flanneld would program)."""
    ns = node.ns
    routes = json.loads(topo.run(["ip", "-j", "route", "show", "dev", dev], ns).stdout or "[]")
    neigh = json.loads(topo.run(["ip", "-j", "neigh", "show", "dev", dev], ns).stdout or "[]")
    return {"routes": sorted((r["dst"], r.get("gateway"), "onlink" in r.get("flags", []))
                             for r in routes if "gateway" in r),
            "neigh": sorted((n["dst"], n.get("lladdr"), ",".join(n.get("state", [])))
                            for n in neigh),
            "addr": sorted(f"{a['local']}/{a['prefixlen']}" for i in json.loads(
                topo.run(["ip", "-j", "addr", "show", "dev", dev], ns).stdout or "[]")
                for a in i.get("addr_info", []) if a.get("family") == "inet")}


if __name__ == "__main__":
    sys.exit("tests/flannel_topo.py is a library (see tests/test_flannel_integration.py)")
