"""vxtap-cni: error contract (no privileges needed) and ADD/CHECK/DEL for real (root): the plugin
runs inside a node network namespace created here, delegates to Debian's bridge + host-local
plugins (/usr/lib/cni), and talks to an in-process agent control socket (dataplane.ctlsock with
control/ handlers) backed by a real etcd. A second in-process agent must see the pod come and go.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from control import cli
from control.agent import install
from control.cni import SUPPORTED_VERSIONS, PodAddrs, run
from control.etcd import EtcdSettings
from control.keys import Layout
from control.records import NetworkConfig
from control.sync import ControlPlane
from control.testing import FakeSink
from tests import topo
from tests.etcd_server import EtcdServer, wait_until

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CNI_BIN = "/usr/lib/cni"
CFG = NetworkConfig(vni=42, subnet="10.244.0.0/16", block_prefix=24)



def conf(**extra: Any) -> bytes:
    return json.dumps({"cniVersion": "1.0.0", "name": "vxnet", "type": "vxtap-cni", **extra}).encode()


ENV = {"CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_NETNS": "/var/run/netns/x",
       "CNI_PATH": CNI_BIN}


# -- error contract (pure, no root) ------------------------------------------------------------

def test_version() -> None:
    code, out = run(b"", {"CNI_COMMAND": "VERSION"})
    assert code == 0 and out == {"cniVersion": "1.0.0", "supportedVersions": SUPPORTED_VERSIONS}


@pytest.mark.parametrize("stdin,env,want_code,want_msg", [
    (b"{nope", dict(ENV, CNI_COMMAND="ADD"), 6, "network config is not valid JSON"),
    (b"[]", dict(ENV, CNI_COMMAND="ADD"), 6, "network config is not a JSON object"),
    (json.dumps({"cniVersion": "9.9.9", "name": "x"}).encode(), dict(ENV, CNI_COMMAND="ADD"), 1,
     "unsupported cniVersion '9.9.9'"),
    (json.dumps({"cniVersion": "1.0.0"}).encode(), dict(ENV, CNI_COMMAND="ADD"), 7,
     "network config: missing field 'name'"),
    (conf(), dict(ENV, CNI_COMMAND="FROB"), 4, "unknown CNI_COMMAND 'FROB'"),
    (conf(agentSocket="/nonexistent/vxtap.sock"), dict(ENV, CNI_COMMAND="ADD"), 11,
     "vxtap agent not reachable"),
    (conf(agentSocket="/nonexistent/vxtap.sock"), dict(ENV, CNI_COMMAND="ADD", CNI_CONTAINERID=""),
     4, "missing environment variable CNI_CONTAINERID"),
    (conf(agentSocket="/x.sock"), dict(ENV, CNI_COMMAND="ADD", CNI_IFNAME="way-too-long-ifname0"),
     4, "CNI_IFNAME"),
    (conf(etcd={"endpoints": "http://127.0.0.1:1"}), dict(ENV, CNI_COMMAND="ADD"), 7,
     "etcd section: missing field 'network'"),
    (conf(agentSocket="/x.sock"), dict(ENV, CNI_COMMAND="CHECK"), 7, "CHECK needs prevResult"),
])
def test_errors_are_cni_error_json(stdin: bytes, env: dict[str, str], want_code: int,
                                   want_msg: str) -> None:
    code, out = run(stdin, env)
    assert code == 1 and out is not None
    assert out["code"] == want_code, out
    assert want_msg in out["msg"] + out.get("details", ""), out
    assert out["cniVersion"] in SUPPORTED_VERSIONS


def test_plugin_as_a_process_prints_error_json() -> None:
    r = subprocess.run([sys.executable, "-m", "control.cni"], input=b"{", cwd=REPO,
                       env=dict(os.environ, **ENV, CNI_COMMAND="ADD"), capture_output=True,
                       check=False)
    assert r.returncode == 1
    assert json.loads(r.stdout)["code"] == 6


# -- ADD / CHECK / DEL for real ----------------------------------------------------------------

def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if not shutil.which("ip"):
        return "needs iproute2"
    for p in ("bridge", "host-local"):
        if not os.access(os.path.join(CNI_BIN, p), os.X_OK):
            return f"needs {CNI_BIN}/{p} (containernetworking-plugins)"
    return None


def sh(*args: str) -> str:
    return subprocess.run(list(args), check=True, capture_output=True, text=True).stdout


@pytest.fixture
def netns() -> Iterator[dict[str, str]]:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    prefix = "vxc" + uuid.uuid4().hex[:6]
    names = {"node": prefix + "n1", "pod": prefix + "p1", "pod2": prefix + "p2"}
    created: list[str] = []
    try:
        for n in names.values():
            sh("ip", "netns", "add", n)
            created.append(n)
        sh("ip", "-n", names["node"], "link", "set", "lo", "up")
        yield names
    finally:
        for n in created:
            subprocess.run(["ip", "netns", "del", n], capture_output=True, check=False)


class Node:
    """An in-process 'agent' for CNI: ControlPlane + the real control socket server."""

    def __init__(self, url: str, network: str, node: str, sock: str | None,
                 cfg: NetworkConfig = CFG) -> None:
        from dataplane.ctlsock import ControlServer
        self.sink = FakeSink()
        self.cp = ControlPlane(EtcdSettings.from_text(url, timeout=2), network, node, ttl=3,
                               init_config=cfg)
        self.cp.bootstrap(timeout=10)
        self.cp.start(self.sink, underlay="192.168.100.1", port=4789, tap_mac="02:00:00:00:00:01")
        assert self.cp.wait_synced(10)
        self.server = None if sock is None else ControlServer(sock)   # None: the test routes ops
        if self.server is not None:
            install(self.server, self.cp, bridge="br0", mtu=1450)
            self.server.start()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        self.cp.stop()


def cni(cmd: str, netns_node: str, pod_ns: str, cid: str, config: dict[str, Any],
        stderr: list[str] | None = None) -> tuple[int, Any]:
    rc, out, err = topo.run_vxtap_cni(cmd, netns_node, pod_ns, cid, config)
    if stderr is not None:
        stderr.append(err)
    return rc, out


@pytest.mark.etcd
@pytest.mark.integration
def test_add_check_del_through_the_agent(etcd: EtcdServer, netns: dict[str, str]) -> None:
    network = "cni" + uuid.uuid4().hex[:6]
    tmp = tempfile.mkdtemp(prefix="vxtap-cni-")
    sock = os.path.join(tmp, "agent.sock")
    n1 = Node(etcd.url, network, "n1", sock)
    n2 = Node(etcd.url, network, "n2", os.path.join(tmp, "agent2.sock"))
    try:
        config = json.loads(conf(agentSocket=sock, dataDir=os.path.join(tmp, "data")))
        code, res = cni("ADD", netns["node"], netns["pod"], "pod1", config)
        assert code == 0, res
        iface = next(i for i in res["interfaces"] if i.get("sandbox"))
        ip = res["ips"][0]["address"]
        block = n1.cp.block                     # spread by a hash of the node name
        assert block is not None
        assert ip == f"{block[2]}/16" and res["ips"][0]["gateway"] == str(block[1])
        assert res["cniVersion"] == "1.0.0"
        # the pod is up and reaches its gateway on the node bridge (inside our namespaces only)
        sh("ip", "netns", "exec", netns["pod"], "ping", "-c", "1", "-W", "2", str(block[1]))
        # the record reached etcd, and the other node's tables
        key = Layout("/vxtap", network).endpoint("pod1", "eth0")
        rec = json.loads(etcd.etcdctl("get", key, "--print-value-only"))
        assert rec == {"mac": iface["mac"], "ip": ip, "gateway": str(block[1]), "node": "n1",
                       "vni": 42}
        wait_until(lambda: n2.sink.fdb == {(42, iface["mac"]): ("192.168.100.1", 4789)})
        assert n2.sink.neigh == {(42, str(block[2])): iface["mac"]}
        # CHECK
        code, out = cni("CHECK", netns["node"], netns["pod"], "pod1", dict(config, prevResult=res))
        assert code == 0, out
        # a second pod gets the next address of the block
        code, res2 = cni("ADD", netns["node"], netns["pod2"], "pod2", config)
        assert code == 0 and res2["ips"][0]["address"] == f"{block[3]}/16", res2
        # CHECK fails when the record is gone
        etcd.etcdctl("del", key)
        code, out = cni("CHECK", netns["node"], netns["pod"], "pod1", dict(config, prevResult=res))
        assert code == 1 and "is not registered in etcd" in out["msg"]
        etcd.etcdctl("put", key, json.dumps(rec))
        # DEL removes it everywhere; a second DEL is fine
        code, out = cni("DEL", netns["node"], netns["pod"], "pod1", dict(config, prevResult=res))
        assert code == 0, out
        assert etcd.etcdctl("get", key) == ""
        wait_until(lambda: (42, iface["mac"]) not in n2.sink.fdb)
        code, out = cni("DEL", netns["node"], netns["pod"], "pod1", config)
        assert code == 0, out
        assert "eth0" not in sh("ip", "-n", netns["pod"], "link")
        # the plain CLI through the agent socket
        assert cli.endpoint_main(["add", "manual", "--mac", "02:00:00:00:00:99",
                                  "--ip", f"{block[99]}/16", "--sock", sock]) == 0
        wait_until(lambda: (42, "02:00:00:00:00:99") in n2.sink.fdb)
        assert cli.endpoint_main(["del", "manual", "--sock", sock]) == 0
        wait_until(lambda: (42, "02:00:00:00:00:99") not in n2.sink.fdb)
        code, out = cni("DEL", netns["node"], netns["pod2"], "pod2", config)
        assert code == 0, out
    finally:
        n2.close()
        n1.close()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.integration
def test_add_with_agent_down_fails_cleanly(netns: dict[str, str]) -> None:
    tmp = tempfile.mkdtemp(prefix="vxtap-cni-")
    try:
        config = json.loads(conf(agentSocket=os.path.join(tmp, "none.sock"),
                                 dataDir=os.path.join(tmp, "data")))
        code, out = cni("ADD", netns["node"], netns["pod"], "podx", config)
        assert code == 1 and out["code"] == 11
        assert "eth0" not in sh("ip", "-n", netns["pod"], "link")     # nothing half-done
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.etcd
def test_etcd_backend_without_agent(etcd: EtcdServer) -> None:
    """The optional "etcd" section: node_info and endpoint records straight from/to etcd (run
    in-process: a plugin in a node namespace cannot reach etcd on loopback)."""
    from control.cni import CniError, EtcdBackend
    network = "cnd" + uuid.uuid4().hex[:6]
    tmp = tempfile.mkdtemp(prefix="vxtap-cni-")
    n1 = Node(etcd.url, network, "n1", os.path.join(tmp, "a.sock"))      # owns block .0/24
    try:
        be = EtcdBackend({"endpoints": etcd.url, "network": network, "node": "n1", "bridge": "br0",
                          "mtu": 1400})
        info = be.node_info()
        assert info["block"] == str(n1.cp.block) and info["mtu"] == 1400 and info["vni"] == 42
        be.endpoint_add("d1", "eth0", PodAddrs("02:00:00:00:0d:01", "10.244.0.7/16", "10.244.0.1",
                                                None, None))
        with pytest.raises(CniError, match="vxtap agent refused|already registered") as dup:
            be.endpoint_add("d2", "eth0", PodAddrs("02:00:00:00:0d:01", "10.244.0.8/16", None, None,
                                                    None))
        assert dup.value.code == 100 and "MAC 02:00:00:00:0d:01" in dup.value.msg
        assert be.endpoint_get("d1", "eth0")["node"] == "n1"
        assert be.endpoint_del("d1", "eth0")["deleted"] is True
        with pytest.raises(CniError, match="no address block"):
            EtcdBackend({"endpoints": etcd.url, "network": network, "node": "n9"}).node_info()
        with pytest.raises(CniError) as ei:
            be.endpoint_add("d1", "eth0", PodAddrs("02:00:00:00:0d:01", "10.99.0.7/16", None, None,
                                                    None))
        assert "outside the network subnet" in ei.value.msg
    finally:
        n1.close()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.integration
def test_add_rolls_back_when_the_record_cannot_be_written(netns: dict[str, str]) -> None:
    """The agent answers node_info but cannot write to etcd: ADD undoes the bridge/host-local
    work (no interface, address released) and says "try again later" (code 11)."""
    from dataplane.ctlsock import ControlServer
    tmp = tempfile.mkdtemp(prefix="vxtap-cni-")
    server = ControlServer(os.path.join(tmp, "agent.sock"))
    info = {"network": "rb", "node": "n1", "vni": 42, "port": 4789, "mtu": 1450, "bridge": "br0",
            "block": "10.244.5.0/24", "subnet": "10.244.0.0/16", "gateway": "10.244.5.1",
            "range_start": "10.244.5.2", "range_end": "10.244.5.254"}

    def refuse(args: dict[str, Any]) -> Any:
        raise ValueError("etcd unavailable (agent is reconnecting); try again later")

    server.register("node_info", lambda args: info)
    server.register("endpoint_add", refuse)
    server.start()
    try:
        data = os.path.join(tmp, "data")
        config = json.loads(conf(agentSocket=server.path, dataDir=data))
        code, out = cni("ADD", netns["node"], netns["pod"], "rb1", config)
        assert code == 1 and out["code"] == 11, out
        assert "etcd unavailable" in out["details"]
        assert "eth0" not in sh("ip", "-n", netns["pod"], "link")
        ipam_dir = os.path.join(data, "ipam", "n1", "vxnet")
        assert not [f for f in os.listdir(ipam_dir) if f.startswith("10.244.")], os.listdir(ipam_dir)
        assert not os.path.exists(os.path.join(data, "rb1-eth0.json"))
    finally:
        server.close()
        shutil.rmtree(tmp, ignore_errors=True)


class FakeAgent:
    """A control socket answering node_info with a fixed block and recording endpoint calls
    (the CNI plugin's contract with the agent, without etcd)."""

    INFO = {"network": "fk", "node": "n1", "vni": 42, "port": 4789, "mtu": 1450, "bridge": "br0",
            "block": "10.244.6.0/24", "subnet": "10.244.0.0/16", "gateway": "10.244.6.1",
            "range_start": "10.244.6.2", "range_end": "10.244.6.254"}

    def __init__(self, path: str) -> None:
        from dataplane.ctlsock import ControlServer
        self.calls: list[tuple[str, str]] = []
        self.server = ControlServer(path)
        self.server.register("node_info", lambda args: self.INFO)
        self.server.register("endpoint_add", lambda a: self.calls.append(("add", a["container_id"])))
        self.server.register("endpoint_del", lambda a: self.calls.append(("del", a["container_id"])))
        self.server.start()

    def close(self) -> None:
        self.server.close()


@pytest.mark.integration
def test_delegate_error_is_wrapped_and_a_failed_add_leaves_nothing(netns: dict[str, str]) -> None:
    tmp = tempfile.mkdtemp(prefix="vxtap-cni-")
    agent = FakeAgent(os.path.join(tmp, "agent.sock"))
    try:
        data = os.path.join(tmp, "data")
        # a bridge name the kernel refuses (> 15 bytes): the bridge plugin fails (its code 999)
        config = json.loads(conf(agentSocket=agent.server.path, dataDir=data,
                                 delegate={"bridge": "b" * 20}))
        code, out = cni("ADD", netns["node"], netns["pod"], "bad1", config)
        assert code == 1, out
        assert set(out) == {"cniVersion", "code", "msg", "details"} and out["cniVersion"] == "1.0.0"
        assert out["code"] == 101 and out["msg"].startswith("delegate bridge ADD: "), out
        assert "delegate error code" in out["details"], out
        assert not os.path.exists(os.path.join(data, "bad1-eth0.json"))       # no cache left
        assert "eth0" not in sh("ip", "-n", netns["pod"], "link")
        ipam_dir = os.path.join(data, "ipam", "n1", "vxnet")
        assert not os.path.isdir(ipam_dir) or \
            not [f for f in os.listdir(ipam_dir) if f.startswith("10.244.")]
        assert ("add", "bad1") not in agent.calls
    finally:
        agent.close()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.integration
def test_del_succeeds_when_the_agent_is_gone_and_the_next_add_cleans_up(
        netns: dict[str, str]) -> None:
    tmp = tempfile.mkdtemp(prefix="vxtap-cni-")
    sock = os.path.join(tmp, "agent.sock")
    agent = FakeAgent(sock)
    try:
        data = os.path.join(tmp, "data")
        config = json.loads(conf(agentSocket=sock, dataDir=data))
        code, res = cni("ADD", netns["node"], netns["pod"], "gone1", config)
        assert code == 0 and agent.calls == [("add", "gone1")], res
        agent.close()                                 # the agent is gone
        assert not os.path.exists(sock)
        env_err: list[str] = []
        code, out = cni("DEL", netns["node"], netns["pod"], "gone1", dict(config, prevResult=res),
                        stderr=env_err)
        assert code == 0 and out is None, out
        assert "vxtap endpoint gc --node NODE" in env_err[0]
        assert "eth0" not in sh("ip", "-n", netns["pod"], "link")             # torn down
        assert os.listdir(os.path.join(data, "pending-del")) == ["gone1-eth0.json"]
        # a second DEL (the runtime retries) is fine too
        code, out = cni("DEL", netns["node"], netns["pod"], "gone1", config)
        assert code == 0, out
        # the agent is back: the next ADD deletes the leftover record first
        agent = FakeAgent(sock)
        code, res2 = cni("ADD", netns["node"], netns["pod2"], "next1", config)
        assert code == 0, res2
        assert agent.calls == [("del", "gone1"), ("add", "next1")]
        assert os.listdir(os.path.join(data, "pending-del")) == []
        code, out = cni("DEL", netns["node"], netns["pod2"], "next1", config)
        assert code == 0, out
    finally:
        agent.close()
        shutil.rmtree(tmp, ignore_errors=True)


CFG6 = NetworkConfig(vni=43, subnet="10.245.0.0/16", block_prefix=24,
                     subnet6="fd00:10:245::/48", block_prefix6=64)


@pytest.mark.etcd
@pytest.mark.integration
def test_dual_stack_add_and_the_network_named_on_a_two_network_agent(
        etcd: EtcdServer, netns: dict[str, str]) -> None:
    """One control socket serving two etcd networks (the agent's router, dataplane/etcdnets.py):
    an IPv4-only one and a dual-stack one. The plugin names its network ("network" in the CNI
    config); host-local hands out an IPv4 and an IPv6 address from the node's two blocks, both
    are configured in the pod, and the dual-stack record reaches etcd and another node's
    tables (ARP and ND entries)."""
    from types import SimpleNamespace

    from dataplane import etcdnets
    from dataplane.ctlsock import ControlServer
    tag = uuid.uuid4().hex[:6]
    net4, net6 = "cn4" + tag, "cn6" + tag
    tmp = tempfile.mkdtemp(prefix="vxtap-cni-")
    sock = os.path.join(tmp, "agent.sock")
    a4 = Node(etcd.url, net4, "n1", None)
    a6 = Node(etcd.url, net6, "n1", None, cfg=CFG6)
    other = Node(etcd.url, net6, "n2", None, cfg=CFG6)
    nets = {n.cp.config.vni: SimpleNamespace(control=n.cp, spec=SimpleNamespace(  # type: ignore[union-attr]
        name=n.cp.layout.network, vni=n.cp.config.vni, bridge=b),  # type: ignore[union-attr]
        tap=SimpleNamespace(mtu=1450)) for n, b in ((a4, "br4"), (a6, "br6"))}
    server = ControlServer(sock)
    etcdnets.register_ops(server, SimpleNamespace(nets=nets))
    server.start()
    try:
        data = os.path.join(tmp, "data")
        base = json.loads(conf(agentSocket=sock, dataDir=data))
        # no network named: the agent cannot tell which one, and says so
        code, out = cni("ADD", netns["node"], netns["pod"], "p0", base)
        assert code == 1 and out["code"] == 100 and "give 'network'" in out["details"], out
        assert "eth0" not in sh("ip", "-n", netns["pod"], "link")
        # the dual-stack network
        config = dict(base, network=net6, name="vxnet6")
        code, res = cni("ADD", netns["node"], netns["pod"], "pod6", config)
        assert code == 0, res
        block, block6 = a6.cp.block, a6.cp.plan().block6
        assert block is not None and block6 is not None
        assert block6.prefixlen == 64 and block6.subnet_of(CFG6.network6)  # type: ignore[arg-type]
        by_family = {":" in ip["address"]: ip for ip in res["ips"]}
        assert by_family[False]["address"] == f"{block[2]}/16"
        assert by_family[True] == {"interface": by_family[True]["interface"],
                                   "address": f"{block6[2]}/48", "gateway": str(block6[1])}
        iface = next(i for i in res["interfaces"] if i.get("sandbox"))
        addrs = sh("ip", "-n", netns["pod"], "-o", "addr", "show", "dev", "eth0")
        assert f"{block[2]}/16" in addrs and f"{block6[2]}/48" in addrs, addrs
        assert "br6" in sh("ip", "-n", netns["node"], "link")               # its own bridge
        # IPv6 between the pod and its gateway on the node bridge (after DAD)
        wait_until(lambda: subprocess.run(
            ["ip", "netns", "exec", netns["pod"], "ping", "-6", "-c", "1", "-W", "1",
             str(block6[1])], capture_output=True, check=False).returncode == 0, timeout=15)
        key = Layout("/vxtap", net6).endpoint("pod6", "eth0")
        rec = json.loads(etcd.etcdctl("get", key, "--print-value-only"))
        assert rec == {"mac": iface["mac"], "ip": f"{block[2]}/16", "gateway": str(block[1]),
                       "ip6": f"{block6[2]}/48", "gateway6": str(block6[1]), "node": "n1",
                       "vni": 43}
        assert etcd.etcdctl("get", f"/vxtap/index/{net6}/ip/{block6[2]}", "--print-value-only") \
            .strip() == "pod6/eth0"
        wait_until(lambda: other.sink.neigh == {(43, str(block[2])): iface["mac"],
                                                (43, str(block6[2])): iface["mac"]})
        code, out = cni("CHECK", netns["node"], netns["pod"], "pod6", dict(config, prevResult=res))
        assert code == 0, out
        # the IPv4-only network of the same agent, named: one IPv4 address, its own block
        code, res4 = cni("ADD", netns["node"], netns["pod2"], "pod4", dict(base, network=net4))
        assert code == 0, res4
        assert [ip["address"] for ip in res4["ips"]] == [f"{a4.cp.block[2]}/16"]  # type: ignore[index]
        assert etcd.etcdctl("get", Layout("/vxtap", net6).endpoint("pod4", "eth0")) == ""
        # DEL removes the record with all three index keys
        code, out = cni("DEL", netns["node"], netns["pod"], "pod6", dict(config, prevResult=res))
        assert code == 0, out
        assert etcd.etcdctl("get", "--prefix", f"/vxtap/index/{net6}/ip/") == ""
        wait_until(lambda: other.sink.neigh == {})
        code, out = cni("DEL", netns["node"], netns["pod2"], "pod4", dict(base, network=net4))
        assert code == 0, out
    finally:
        server.close()
        for n in (other, a6, a4):
            n.close()
        shutil.rmtree(tmp, ignore_errors=True)
