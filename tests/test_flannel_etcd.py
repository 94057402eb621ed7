"""flannel mode's control thread (control/flannel_sync.py) against a real etcd, with a recording
sink instead of a data plane: lease acquisition next to flannel leases, re-take after a crash and
after a clean exit, renewal, release, the subnets watch (adds, changes, expiry), bad leases,
reconnect + re-list after compaction, our key deleted behind our back."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from control.etcd import EtcdSettings
from control.flannel import LeaseAttrs, SubnetEnv
from control.flannel_sync import FlannelControl
from tests.etcd_server import EtcdServer, TcpProxy, etcd_client, wait_until

pytestmark = pytest.mark.etcd

PREFIX = "/coreos.com/network"
SUBNETS = PREFIX + "/subnets/"
CONFIG = {"Network": "10.5.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan", "VNI": 1}}


class RecordingSink:
    """control.flannel_sync.FlannelSink keeping the state it was told to install."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.fdb: dict[str, tuple[str, int]] = {}
        self.neigh: dict[str, str] = {}
        self.kneigh: dict[str, str] = {}
        self.routes: dict[str, str] = {}
        self.addresses: set[str] = set()

    def fdb_add(self, vni: int, mac: str, vtep: str, port: int) -> None:
        assert vni == 1
        with self.lock:
            self.fdb[mac] = (vtep, port)

    def fdb_del(self, vni: int, mac: str) -> None:
        with self.lock:
            self.fdb.pop(mac, None)

    def neigh_add(self, vni: int, ip: str, mac: str) -> None:
        with self.lock:
            assert mac in self.fdb, "ARP answer for an unforwarded MAC"
            self.neigh[ip] = mac

    def neigh_del(self, vni: int, ip: str) -> None:
        with self.lock:
            self.neigh.pop(ip, None)

    def kernel_neigh_add(self, ip: str, mac: str) -> None:
        with self.lock:
            self.kneigh[ip] = mac

    def kernel_neigh_del(self, ip: str) -> None:
        with self.lock:
            self.kneigh.pop(ip, None)

    def route_add(self, dst: str, gateway: str) -> None:
        with self.lock:
            assert gateway in self.kneigh, "route before its neighbour"
            self.routes[dst] = gateway

    def route_del(self, dst: str, gateway: str) -> None:
        with self.lock:
            self.routes.pop(dst, None)

    def address_add(self, cidr: str) -> None:
        self.addresses.add(cidr)

    def address_del(self, cidr: str) -> None:
        self.addresses.discard(cidr)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {"fdb": dict(self.fdb), "neigh": dict(self.neigh),
                    "kneigh": dict(self.kneigh), "routes": dict(self.routes)}


def vxlan_lease(ip: str, mac: str, vni: int = 1) -> str:
    return LeaseAttrs(ipaddress.IPv4Address(ip), "vxlan", vni, mac).to_json()


@pytest.fixture
def client(etcd: EtcdServer) -> Iterator[Any]:
    c = etcd_client(etcd)
    c.delete_prefix(PREFIX + "/")
    c.put(PREFIX + "/config", json.dumps(CONFIG))
    yield c
    c.delete_prefix(PREFIX + "/")
    c.close()


@pytest.fixture
def controls() -> Iterator[list[FlannelControl]]:
    made: list[FlannelControl] = []
    yield made
    for fc in made:
        fc.stop()


def make(url: str, tmp_path: Path, controls: list[FlannelControl], ip: str = "192.168.100.9",
         **kw: Any) -> FlannelControl:
    fc = FlannelControl(EtcdSettings.from_text(url), public_ip=ip,
                        subnet_file=str(tmp_path / f"subnet-{ip}.env"), **kw)
    controls.append(fc)
    fc.load_config(timeout=10)
    return fc


def put_on_lease(client: Any, key: str, value: str, ttl: int) -> int:
    lease = client.lease(ttl)
    client.put(key, value, lease=lease.id)
    return int(lease.id)


def test_acquire_next_to_flannel_nodes_and_release(etcd: EtcdServer, client: Any,
                                                   tmp_path: Path,
                                                   controls: list[FlannelControl]) -> None:
    taken = [f"10.5.{i}.0/24" for i in range(1, 100)]            # all but 10.5.100..255
    for i, sn in enumerate(taken, 1):
        client.put(SUBNETS + sn.replace("/", "-"), vxlan_lease(f"192.168.1.{i}",
                                                               f"02:00:00:00:01:{i:02x}"))
    fc = make(etcd.url, tmp_path, controls)
    sn = fc.acquire("02:aa:00:00:00:01", 1450, timeout=10)
    assert not any(sn.overlaps(ipaddress.IPv4Network(t)) for t in taken)
    assert sn.prefixlen == 24 and sn.subnet_of(ipaddress.IPv4Network("10.5.0.0/16"))
    key = SUBNETS + f"{sn.network_address}-24"
    value, meta = client.get(key)
    assert value == vxlan_lease("192.168.100.9", "02:aa:00:00:00:01").encode()
    ttl = client.get_lease_info(meta.lease_id).TTL
    assert 86000 < ttl <= 86400                                 # flannel's 24 h
    env = SubnetEnv.parse(Path(fc.subnet_file).read_text())
    assert (env.subnet, env.mtu) == (sn, 1450)
    sink = RecordingSink()
    fc.start(sink)
    assert fc.wait_synced(10)
    assert sink.addresses == {f"{sn.network_address}/32"}
    wait_until(lambda: len(sink.snapshot()["routes"]) == 99)
    assert sink.snapshot()["routes"]["10.5.7.0/24"] == "10.5.7.0"
    assert sink.snapshot()["fdb"]["02:00:00:00:01:07"] == ("192.168.1.7", 8472)
    fc.stop()
    assert client.get(key)[0] is None                            # clean exit: key gone
    assert sink.snapshot() == {"fdb": {}, "neigh": {}, "kneigh": {}, "routes": {}}
    assert sink.addresses == set()


def test_retake_after_crash_and_after_clean_exit(etcd: EtcdServer, client: Any, tmp_path: Path,
                                                 controls: list[FlannelControl]) -> None:
    fc1 = make(etcd.url, tmp_path, controls)
    sn = fc1.acquire("02:aa:00:00:00:01", 1450, timeout=10)
    key = SUBNETS + f"{sn.network_address}-24"
    old_lease = client.get(key)[1].lease_id
    # crash: no release; the key is still there. Also forget subnet.env: the lease is found by
    # PublicIP, as flanneld does, and re-taken with the new VtepMAC on a fresh lease.
    Path(fc1.subnet_file).unlink()
    fc1._lease_id = None
    fc2 = make(etcd.url, tmp_path, controls)
    assert fc2.acquire("02:aa:00:00:00:02", 1450, timeout=10) == sn
    value, meta = client.get(key)
    assert value == vxlan_lease("192.168.100.9", "02:aa:00:00:00:02").encode()
    assert meta.lease_id != old_lease
    fc2.start(RecordingSink())
    fc2.stop()                                                  # clean exit: key deleted
    assert client.get(key)[0] is None
    # restart after a clean exit: the previous subnet comes from subnet.env
    fc3 = make(etcd.url, tmp_path, controls)
    assert fc3.acquire("02:aa:00:00:00:03", 1450, timeout=10) == sn
    fc3.stop()
    # ... unless another node took it meanwhile
    client.put(key, vxlan_lease("192.168.100.77", "02:00:00:00:00:77"))
    fc4 = make(etcd.url, tmp_path, controls)
    assert fc4.acquire("02:aa:00:00:00:04", 1450, timeout=10) != sn


def test_concurrent_acquisitions_get_distinct_subnets(etcd: EtcdServer, client: Any,
                                                      tmp_path: Path,
                                                      controls: list[FlannelControl]) -> None:
    client.put(PREFIX + "/config", json.dumps(dict(CONFIG, Network="10.5.0.0/22")))  # 3 subnets
    fcs = [make(etcd.url, tmp_path, controls, ip=f"192.168.100.{i}") for i in (1, 2, 3)]
    got: list[Any] = [None] * 3

    def go(i: int) -> None:
        got[i] = fcs[i].acquire(f"02:aa:00:00:00:1{i}", 1450, timeout=10)
    threads = [threading.Thread(target=go, args=(i,)) for i in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(20)
    assert sorted(map(str, got)) == ["10.5.1.0/24", "10.5.2.0/24", "10.5.3.0/24"]
    fc = make(etcd.url, tmp_path, controls, ip="192.168.100.4")
    with pytest.raises(ValueError, match="out of subnets"):
        fc.acquire("02:aa:00:00:00:14", 1450, timeout=5)


def test_watch_adds_changes_expiry_and_bad_leases(etcd: EtcdServer, client: Any,
                                                  tmp_path: Path,
                                                  controls: list[FlannelControl]) -> None:
    fc = make(etcd.url, tmp_path, controls)
    fc.acquire("02:aa:00:00:00:01", 1450, timeout=10)
    own = f"{fc.subnet.network_address}" if fc.subnet else ""
    sink = RecordingSink()
    fc.start(sink)
    assert fc.wait_synced(10)
    # a flannel node arrives on a short lease
    put_on_lease(client, SUBNETS + "10.5.201.0-24", vxlan_lease("192.168.100.1",
                                                                 "7e:70:00:1b:50:d7"), ttl=60)
    wait_until(lambda: "10.5.201.0/24" in sink.snapshot()["routes"])
    s = sink.snapshot()
    assert s["kneigh"]["10.5.201.0"] == s["neigh"]["10.5.201.0"] == "7e:70:00:1b:50:d7"
    assert s["fdb"]["7e:70:00:1b:50:d7"] == ("192.168.100.1", 8472)
    # bad leases: skipped, logged once, counted, never a crash
    bad = {"10.5.202.0-24": "{not json",
           "10.5.203.0-24": '{"PublicIP":"192.168.100.3","PublicIPv6":null,"BackendType":"udp"}',
           "10.5.204.0-24": vxlan_lease("192.168.100.4", "02:00:00:00:00:04", vni=2),
           "10.5.201.128-25": vxlan_lease("192.168.100.5", "02:00:00:00:00:05"),
           f"{own}-25": vxlan_lease("192.168.100.6", "02:00:00:00:00:06")}
    for k, v in bad.items():
        client.put(SUBNETS + k, v)
    wait_until(lambda: fc.status()["skipped_leases"] == 5)
    client.put(SUBNETS + "10.5.202.0-24", "[1]")             # another reason: +1
    client.put(SUBNETS + "10.5.203.0-24", bad["10.5.203.0-24"])        # same reason: +0
    wait_until(lambda: fc.status()["bad_leases"] == 6)
    st = fc.status()
    assert (st["peers"], st["skipped_leases"], st["connected"]) == (1, 5, True)
    # the flannel node restarts with a new VtepMAC: neighbour and FDB follow
    put_on_lease(client, SUBNETS + "10.5.201.0-24",
                 vxlan_lease("192.168.100.1", "7e:70:00:1b:50:d8"), ttl=60)
    wait_until(lambda: sink.snapshot()["kneigh"].get("10.5.201.0") == "7e:70:00:1b:50:d8")
    assert "7e:70:00:1b:50:d7" not in sink.snapshot()["fdb"]
    # its last renewal is onto a 2 s lease (same value: nothing changes) ...
    lease_id = put_on_lease(client, SUBNETS + "10.5.201.0-24",
                            vxlan_lease("192.168.100.1", "7e:70:00:1b:50:d8"), ttl=2)
    # ... and its lease expires (nobody renews it): everything of it goes; the /25 that
    # overlapped it is no longer in conflict and is programmed instead
    assert client.get_lease_info(lease_id).TTL <= 2                # nobody refreshes it
    after = {"fdb": {"02:00:00:00:00:05": ("192.168.100.5", 8472)},
             "neigh": {"10.5.201.128": "02:00:00:00:00:05"},
             "kneigh": {"10.5.201.128": "02:00:00:00:00:05"},
             "routes": {"10.5.201.128/25": "10.5.201.128"}}
    wait_until(lambda: sink.snapshot() == after, timeout=30)
    wait_until(lambda: (fc.status()["peers"], fc.status()["skipped_leases"]) == (1, 4))


def test_renewal_moves_our_key_to_a_fresh_lease(etcd: EtcdServer, client: Any, tmp_path: Path,
                                               controls: list[FlannelControl]) -> None:
    fc = make(etcd.url, tmp_path, controls, lease_ttl=6, renew_margin=5)   # renew every ~1 s
    sn = fc.acquire("02:aa:00:00:00:01", 1450, timeout=10)
    key = SUBNETS + f"{sn.network_address}-24"
    first = client.get(key)[1].lease_id
    fc.start(RecordingSink())
    wait_until(lambda: fc.status()["renewals"] >= 2, timeout=20)
    value, meta = client.get(key)
    assert meta.lease_id != first and value is not None
    assert client.get_lease_info(first).TTL == -1                # the old lease was revoked


def test_reconnect_relists_after_compaction_and_restores_our_key(
        etcd: EtcdServer, client: Any, tmp_path: Path, controls: list[FlannelControl]) -> None:
    proxy = TcpProxy(etcd.client_port)
    try:
        fc = make(proxy.url, tmp_path, controls, backoff_initial=0.05, backoff_max=0.3)
        sn = fc.acquire("02:aa:00:00:00:01", 1450, timeout=10)
        key = SUBNETS + f"{sn.network_address}-24"
        client.put(SUBNETS + "10.5.210.0-24", vxlan_lease("192.168.100.1", "02:00:00:00:02:10"))
        sink = RecordingSink()
        fc.start(sink)
        assert fc.wait_synced(10)                               # listed and watching
        wait_until(lambda: "10.5.210.0/24" in sink.snapshot()["routes"])
        proxy.cut()
        wait_until(lambda: not fc.status()["connected"] and fc.status()["last_error"])
        # while it is away: one node leaves, one arrives, history is compacted, and our own
        # key is deleted by hand
        client.delete(SUBNETS + "10.5.210.0-24")
        client.put(SUBNETS + "10.5.211.0-24", vxlan_lease("192.168.100.2", "02:00:00:00:02:11"))
        client.delete(key)
        rev = client.get_response(PREFIX + "/config").header.revision
        client.compact(rev)
        proxy.restore()
        wait_until(lambda: fc.status()["connected"] and fc.status()["resyncs"] >= 1, timeout=10)
        wait_until(lambda: set(sink.snapshot()["routes"]) == {"10.5.211.0/24"})
        wait_until(lambda: fc.status()["lease_restored"] == 1)
        assert client.get(key)[0] is not None and fc.status()["reconnects"] >= 1
        assert fc.status()["last_error"] is None       # no stale error once back (issue 12)
        # our key deleted while connected: put back at once through the watch
        client.delete(key)
        wait_until(lambda: fc.status()["lease_restored"] == 2)
        assert client.get(key)[0] is not None
    finally:
        proxy.close()


def run_agent(*args: str) -> subprocess.CompletedProcess[str]:
    repo = Path(__file__).resolve().parent.parent
    return subprocess.run([sys.executable, "-m", "dataplane", "agent", *args], cwd=repo,
                          capture_output=True, text=True, timeout=60, check=False)


def test_agent_refuses_what_it_does_not_support(etcd: EtcdServer, client: Any) -> None:
    """Checked before any device is created: these run without root."""
    r = run_agent("--flannel", "--local", "192.0.2.1")
    assert r.returncode != 0 and "--flannel needs --etcd URL" in r.stderr
    r = run_agent("--flannel", "--etcd", etcd.url, "--local", "192.0.2.1", "--bridge", "br0")
    assert r.returncode != 0 and "drop --network/--bridge/--vni/--port" in r.stderr
    client.put(PREFIX + "/config", json.dumps(dict(CONFIG, Backend={"Type": "udp"})))
    r = run_agent("--flannel", "--etcd", etcd.url, "--local", "192.0.2.1")
    assert r.returncode != 0
    assert 'Backend.Type "udp" is not supported (vxtap joins vxlan networks only)' in r.stderr
    client.put(PREFIX + "/config", json.dumps(dict(CONFIG, Backend={"Type": "vxlan",
                                                                      "DirectRouting": True})))
    r = run_agent("--flannel", "--etcd", etcd.url, "--local", "192.0.2.1")
    assert r.returncode != 0 and "Backend.DirectRouting true is not supported" in r.stderr
    client.delete(PREFIX + "/config")
    r = run_agent("--flannel", "--etcd", etcd.url, "--local", "192.0.2.1")
    assert r.returncode != 0
    assert f"flannel config not found at {PREFIX}/config" in r.stderr
    assert client.get_prefix_response(SUBNETS).count == 0        # no lease was taken
