"""The sync engine at scale, against a real etcd (tests/etcd_server.py): paged lists at one
revision, incremental apply == a full re-list, a re-list interrupted mid-page (etcd restart,
compaction), own node key repair, a 10,000-change burst under a short lease, and agents behind
`etcd grpc-proxy`. Bounded: the whole module runs in well under a minute.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from control import sync
from control.etcd import EtcdSettings
from control.keys import Layout
from control.records import NetworkConfig, NodeRecord
from control.sync import Applied, ControlPlane
from control.tables import Snapshot, Tables, desired
from control.testing import FakeSink
from tests.etcd_server import EtcdServer, GrpcProxy, etcd_client, wait_until

TTL = 2
CFG = NetworkConfig(vni=42, subnet="10.244.0.0/16", block_prefix=24)

pytestmark = pytest.mark.etcd


def netname() -> str:
    return "s" + uuid.uuid4().hex[:8]


def mac(n: int, h: int) -> str:
    return f"02:00:00:00:{n:02x}:{h:02x}"


def truth(url: str, network: str, node: str, bad: list[int] | None = None) -> Tables:
    """desired() of etcd's content right now, with the keys' create revisions (oldest wins).
    `bad`, if given, gets the number of values that do not parse appended."""
    from control.etcd import connect
    layout = Layout("/vxtap", network)
    client, _ = connect(EtcdSettings.from_text(url), "/")
    try:
        kvs = [(m.key.decode(), v, m.create_revision) for v, m in client.get_prefix(layout.root)]
    finally:
        client.close()
    snap = Snapshot.from_kvs(layout, kvs)
    if bad is not None:
        bad.append(len(snap.bad))
    return desired(snap, node)


class Agent:
    def __init__(self, url: str, network: str, i: int, ttl: int = TTL, **kw: Any) -> None:
        self.sink = FakeSink()
        self.cp = ControlPlane(EtcdSettings.from_text(url, timeout=2), network, f"n{i}", ttl=ttl,
                               init_config=CFG, **kw)
        self.cp.bootstrap(timeout=10)
        self.cp.start(self.sink, underlay=f"192.168.100.{i}", port=4789, tap_mac=mac(0, i))
        assert self.cp.wait_synced(15)

    def stop(self) -> None:
        self.cp.stop()


def ep_value(node: int, host: int, m: str | None = None) -> bytes:
    return json.dumps({"mac": m or mac(node, host), "ip": f"10.244.{node}.{host}/16",
                       "node": f"n{node}", "vni": 42}).encode()


def put_many(client: Any, kvs: list[tuple[str, bytes]]) -> None:
    """Write with transactions of 128 puts (etcd's default --max-txn-ops)."""
    for i in range(0, len(kvs), 128):
        client.transaction(compare=[], success=[client.transactions.put(k, v)
                                                for k, v in kvs[i:i + 128]], failure=[])


def test_paged_list_and_random_events_equal_a_full_relist(etcd: EtcdServer) -> None:
    """Small pages (7 keys): the first list takes many pages at one revision; then random
    puts/deletes/duplicates/node changes; the incremental tables always end equal to desired()
    of etcd's content, and to what a fresh agent (a full re-list) builds."""
    net = netname()
    layout = Layout("/vxtap", net)
    client = etcd_client(etcd)
    rng = random.Random(9)
    try:
        client.put(layout.config, CFG.to_json())
        for n in (2, 3):
            client.put(layout.block(f"10.244.{n}.0/24"), json.dumps({"node": f"n{n}"}).encode())
            client.put(layout.node(f"n{n}"), NodeRecord(f"192.168.100.{n}", 4789, mac(0, n)).to_json())
        put_many(client, [(layout.endpoint(f"p{n}x{h}", "eth0"), ep_value(n, h))
                          for n in (2, 3) for h in range(2, 40)])
        a = Agent(etcd.url, net, 1, page_size=7)
        try:
            assert a.cp.status()["list_pages"] >= 76 // 7
            assert a.sink.tables() == truth(etcd.url, net, "n1")
            assert len(a.sink.fdb) == 76
            for _ in range(6):
                for _ in range(25):
                    n, h = rng.choice((2, 3)), rng.randint(2, 60)
                    key = layout.endpoint(f"p{n}x{h}", "eth0")
                    r = rng.random()
                    if r < 0.35:
                        client.delete(key)
                    elif r < 0.5:                # a duplicate MAC of some other pod
                        client.put(layout.endpoint(f"dup{h}", "eth0"),
                                   ep_value(5 - n, h + 100, mac(n, rng.randint(2, 40))))
                    elif r < 0.62:               # dual stack / IPv6 only, IPv6 duplicates in
                        obj = json.loads(ep_value(n, h))  # another spelling, bad IPv6 data
                        obj["ip6"] = rng.choice([f"fd00::{h % 7 + 2:x}/64",
                                                 f"FD00:0::{h % 7 + 2:x}/64", "fe80::1/64"])
                        if rng.random() < 0.3:
                            del obj["ip"]
                        client.put(key, json.dumps(obj).encode())
                    elif r < 0.67:               # a node moves its VTEP
                        client.put(layout.node(f"n{n}"), NodeRecord(
                            f"192.168.101.{rng.randint(1, 9)}", 4789, mac(0, n)).to_json())
                    else:
                        client.put(key, ep_value(n, h))
                rev = client.get_response(layout.config).header.revision
                wait_until(lambda: a.cp.status()["last_revision_applied"] >= rev)
                unparsed: list[int] = []
                want = truth(etcd.url, net, "n1", unparsed)
                assert a.sink.tables() == want
                assert a.cp.status()["bad_keys"] == len(want.skipped) + unparsed[0]
            assert any(":" in ip for _, ip in want.neigh)      # IPv6 entries were in play
            fresh = Agent(etcd.url, net, 9, page_size=7)
            try:
                assert fresh.sink.tables() == truth(etcd.url, net, "n9")
                assert a.cp._live.tables() == truth(etcd.url, net, "n1")
            finally:
                fresh.stop()
        finally:
            a.stop()
    finally:
        client.close()


@pytest.mark.parametrize("fault", ["etcd_restart", "compaction"])
def test_relist_interrupted_mid_page_restarts_at_one_revision(
        etcd: EtcdServer, monkeypatch: pytest.MonkeyPatch, fault: str) -> None:
    """After the 3rd page the list is broken (etcd restarted, or its revision compacted while
    keys changed); the agent lists again from scratch at a new revision and ends exact."""
    net = netname()
    layout = Layout("/vxtap", net)
    client = etcd_client(etcd)
    put_many(client, [(layout.config, CFG.to_json()),
                      (layout.block("10.244.2.0/24"), json.dumps({"node": "n2"}).encode()),
                      (layout.node("n2"), NodeRecord("192.168.100.2", 4789, mac(0, 2)).to_json())])
    put_many(client, [(layout.endpoint(f"p{h}", "eth0"), ep_value(2, h)) for h in range(2, 60)])
    client.close()
    real = sync.list_prefix
    hit = threading.Event()

    def faulty(c: Any, ranges: Any, page_size: int, on_page: Any = None) -> Any:
        pages = [0]

        def count() -> None:
            if on_page is not None:
                on_page()
            pages[0] += 1
            if pages[0] == 3 and not hit.is_set():
                hit.set()
                if fault == "etcd_restart":
                    etcd.stop()
                    threading.Timer(0.3, etcd.start).start()
                else:
                    cl = etcd_client(etcd)
                    try:
                        cl.delete(layout.endpoint("p2", "eth0"))
                        cl.put(layout.endpoint("late", "eth0"), ep_value(2, 99))
                        cl.compact(cl.get_response(layout.config).header.revision, physical=True)
                    finally:
                        cl.close()
        return real(c, ranges, page_size, count)

    monkeypatch.setattr(sync, "list_prefix", faulty)
    a = Agent(etcd.url, net, 1, page_size=5, backoff_initial=0.05)
    try:
        assert hit.is_set()
        wait_until(lambda: a.sink.tables() == truth(etcd.url, net, "n1"), timeout=10)
        assert (42, mac(2, 2)) in a.sink.fdb if fault == "etcd_restart" else \
            (42, mac(2, 99)) in a.sink.fdb and (42, mac(2, 2)) not in a.sink.fdb
        # nothing half-applied: each MAC was added once (the broken list never reached the sink)
        adds = [c for c in a.sink.calls if c[0] == "fdb_add"]
        assert len(adds) == len({c[2] for c in adds}) == len(a.sink.fdb)
    finally:
        a.stop()
        etcd.start()


def test_own_node_key_repaired_when_deleted_or_overwritten(
        etcd: EtcdServer, caplog: pytest.LogCaptureFixture) -> None:
    """issue 12 item 2: delete, garbage, a valid-looking other record (a plain put, which also
    detaches the key from the lease): each time the agent restores its record on its lease,
    logs it and counts it; peers keep forwarding to it."""
    net = netname()
    caplog.set_level(logging.WARNING, logger="control.sync")
    a1, a2 = Agent(etcd.url, net, 1), Agent(etcd.url, net, 2)
    client = etcd_client(etcd)
    try:
        key = Layout("/vxtap", net).node("n2")
        ours = NodeRecord("192.168.100.2", 4789, mac(0, 2)).to_json()
        a2.cp.endpoint_add("pod", "eth0", mac(2, 2), "10.244.1.2/16", None)
        wait_until(lambda: (42, mac(2, 2)) in a1.sink.fdb)
        tampering = [
            ("deleted", lambda: client.delete(key)),
            ("bad record", lambda: client.put(key, b"garbage")),
            ("another record", lambda: client.put(key, NodeRecord("10.9.9.9", 4789, mac(0, 2)).to_json())),
        ]
        for n, (what, tamper) in enumerate(tampering, start=1):
            tamper()
            wait_until(lambda: a2.cp.status()["own_key_repairs"] == n)

            def restored() -> bool:
                value, meta = client.get(key)
                return value == ours and meta.lease_id == a2.cp._lease_id
            wait_until(restored)
            wait_until(lambda: a1.sink.fdb.get((42, mac(2, 2))) == ("192.168.100.2", 4789))
            assert any(what in r.getMessage() and "restoring our record" in r.getMessage()
                       for r in caplog.records), what
        st = a2.cp.status()
        assert st["registrations"] == 1 and st["lease_expiries"] == 0
        # the lease still carries the key: the agent's death would remove it
        info = client.get_lease_info(a2.cp._lease_id)
        assert key.encode() in list(info.keys)
    finally:
        client.close()
        a1.stop()
        a2.stop()


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def test_burst_of_10000_changes_keeps_the_lease(etcd: EtcdServer) -> None:
    """10,000 endpoint changes written within about a second, agents on a 2 s lease: no lease
    expires, keepalives keep being answered, the tables end exact, memory stays bounded (no
    queue grows: the watch is read as it is applied, gRPC flow control holds the rest)."""
    net = netname()
    layout = Layout("/vxtap", net)
    agents = [Agent(etcd.url, net, i) for i in (1, 2)]
    client = etcd_client(etcd)
    try:
        rss0 = _rss_mb()
        kvs = [(layout.endpoint(f"b{i}", "eth0"),
                json.dumps({"mac": f"02:00:00:01:{i >> 8:02x}:{i & 255:02x}",
                            "ip": f"10.244.{1 + (i >> 8) % 200}.{2 + i % 250}/16", "node": "n2",
                            "vni": 42}).encode()) for i in range(5000)]
        t0 = time.monotonic()
        put_many(client, kvs)                                   # 5,000 puts
        for i in range(0, 5000, 128):                           # and 5,000 deletes
            client.transaction(compare=[], success=[client.transactions.delete(k)
                                                    for k, _ in kvs[i:i + 128]], failure=[])
        written = time.monotonic() - t0
        rev = client.get_response(layout.config).header.revision
        wait_until(lambda: all(a.cp.status()["last_revision_applied"] >= rev for a in agents),
                   timeout=30)
        absorbed = time.monotonic() - t0
        for a in agents:
            st = a.cp.status()
            assert st["registrations"] == 1 and st["lease_expiries"] == 0, st
            assert st["last_keepalive_age_s"] is not None and st["last_keepalive_age_s"] < TTL
            assert st["watch_events"] >= 10000
            assert a.sink.tables() == truth(etcd.url, net, a.cp.node)
        grown = _rss_mb() - rss0
        print(f"\n[measure] 10,000 changes written in {written:.2f}s, absorbed by 2 agents in "
              f"{absorbed:.2f}s; RSS +{grown:.1f} MB; load {os.getloadavg()[0]:.1f}")
        assert grown < 60
    finally:
        client.close()
        for a in agents:
            a.stop()


@pytest.fixture
def grpc_proxy(etcd: EtcdServer) -> Iterator[GrpcProxy]:
    proxy = GrpcProxy(etcd.url)
    try:
        yield proxy
    finally:
        proxy.close()


def test_agents_behind_grpc_proxy(etcd: EtcdServer, grpc_proxy: GrpcProxy) -> None:
    """Two agents through one grpc-proxy (watches coalesced there), one direct: endpoint
    changes reach all; leases (keepalive stream) and transactions pass through the proxy;
    own-key repair works through it."""
    net = netname()
    applied: list[Applied] = []
    direct = Agent(etcd.url, net, 1)
    deadline = time.monotonic() + 10
    while True:                                      # the proxy needs a moment to listen
        try:
            behind = [Agent(grpc_proxy.url, net, 2, on_applied=applied.append),
                      Agent(grpc_proxy.url, net, 3)]
            break
        except (TimeoutError, AssertionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    client = etcd_client(etcd)
    try:
        direct.cp.endpoint_add("pod1", "eth0", mac(1, 2), "10.244.0.2/16", None)
        behind[0].cp.endpoint_add("pod2", "eth0", mac(2, 2), "10.244.1.2/16", None)
        wait_until(lambda: (42, mac(1, 2)) in behind[0].sink.fdb and
                   (42, mac(1, 2)) in behind[1].sink.fdb and (42, mac(2, 2)) in direct.sink.fdb)
        assert any(Layout("/vxtap", net).endpoint("pod1", "eth0") in a.keys for a in applied)
        time.sleep(TTL * 1.5)                        # keepalives through the proxy hold
        for a in behind:
            st = a.cp.status()
            assert st["registrations"] == 1 and st["lease_expiries"] == 0
            assert st["keepalives_acked"] >= 2
        client.delete(Layout("/vxtap", net).node("n3"))          # repaired through the proxy
        wait_until(lambda: behind[1].cp.status()["own_key_repairs"] == 1)
        wait_until(lambda: (42, mac(2, 2)) in behind[1].sink.fdb)
        for a in (direct, *behind):
            assert a.sink.tables() == truth(etcd.url, net, a.cp.node)
    finally:
        client.close()
        for a in (*behind, direct):
            a.stop()


def test_outage_reconnect_is_fast_and_clears_last_error(etcd: EtcdServer) -> None:
    """etcd down past the lease TTL: tables kept; once it answers again the agent is back
    within the backoff cap (1 s) plus a connect, `last_error` cleared, lease re-granted."""
    net = netname()
    a1, a2 = Agent(etcd.url, net, 1), Agent(etcd.url, net, 2)
    try:
        a2.cp.endpoint_add("pod", "eth0", mac(2, 2), "10.244.1.2/16", None)
        wait_until(lambda: (42, mac(2, 2)) in a1.sink.fdb)
        tables = a1.sink.tables()
        etcd.stop()
        wait_until(lambda: not a1.cp.status()["connected"])
        assert a1.cp.status()["last_error"]
        time.sleep(TTL + 1.5)
        assert a1.sink.tables() == tables
        t0 = time.monotonic()
        etcd.start()
        back = wait_until(lambda: a1.cp.status()["connected"] and a2.cp.status()["connected"],
                          timeout=10)
        print(f"\n[measure] etcd healthy -> both agents reconnected: {back:.2f} s "
              f"(load {os.getloadavg()[0]:.1f})")
        assert time.monotonic() - t0 < 8                     # generous: the machine is shared
        assert a1.cp.status()["last_error"] is None
        # etcd renews leases when it starts, so the old lease may survive; either way the node
        # key ends on the agent's current, live lease and the pod is back everywhere
        client = etcd_client(etcd)
        try:
            key = Layout("/vxtap", net).node("n2")
            wait_until(lambda: client.get(key)[1] is not None and
                       client.get(key)[1].lease_id == a2.cp._lease_id, timeout=10)
            assert client.get_lease_info(a2.cp._lease_id).TTL > 0
        finally:
            client.close()
        wait_until(lambda: a1.sink.tables() == truth(etcd.url, net, "n1"), timeout=10)
        assert (42, mac(2, 2)) in a1.sink.fdb
    finally:
        a1.stop()
        a2.stop()


@pytest.mark.parametrize("via", ["etcd", "grpc_proxy"])
def test_hub_many_agents_one_connection(etcd: EtcdServer, via: str) -> None:
    """control/hub.py: 4 agents share one client, one watch stream (one etcd watch each, by
    watch_id), one keepalive stream and the hub's threads; each still lists, applies, keeps
    its lease and repairs its own key itself. Exact tables after changes, an own-key delete
    and an etcd restart (every agent resumes its own watch); leases never expire."""
    from control.hub import Hub
    net = netname()
    layout = Layout("/vxtap", net)
    proxy = GrpcProxy(etcd.url) if via == "grpc_proxy" else None
    url = proxy.url if proxy is not None else etcd.url
    client = etcd_client(etcd)
    put_many(client, [(layout.config, CFG.to_json()),
                      (layout.block("10.244.9.0/24"), json.dumps({"node": "n9"}).encode()),
                      (layout.node("n9"), NodeRecord("192.168.100.9", 4789, mac(0, 9)).to_json())])
    put_many(client, [(layout.endpoint(f"p{h}", "eth0"), ep_value(9, h)) for h in range(2, 40)])
    threads0 = threading.active_count()
    hub = Hub(EtcdSettings.from_text(url, timeout=2), name="t")
    sinks = [FakeSink() for _ in range(4)]
    cps = [ControlPlane(EtcdSettings.from_text(url, timeout=2), net, f"n{i}", ttl=TTL,
                        init_config=CFG, hub=hub) for i in range(1, 5)]
    try:
        for i, (cp, sink) in enumerate(zip(cps, sinks), start=1):
            cp.bootstrap(timeout=10)
            cp.start(sink, underlay=f"192.168.100.{i}", port=4789, tap_mac=mac(0, i))
        assert all(cp.wait_synced(15) for cp in cps)

        def exact() -> bool:
            return all(s.tables() == truth(etcd.url, net, cp.node) for cp, s in zip(cps, sinks))
        wait_until(exact, timeout=10)
        st = hub.stats()
        assert st["streams"] == 1 and st["watches"] == 4 and st["keepalive_streams"] == 1
        assert st["records_shared"] >= 3 * 38            # one parse per record, not four
        assert threading.active_count() - threads0 <= 10       # not ~5 per agent
        cps[0].endpoint_add("a1", "eth0", mac(1, 2), "10.244.0.2/16", None)
        client.delete(layout.endpoint("p5", "eth0"))
        client.put(layout.endpoint("p6", "eth0"), ep_value(9, 6, mac(9, 66)))
        client.delete(layout.node("n3"))                 # n3's own key: n3 repairs it
        wait_until(lambda: cps[2].status()["own_key_repairs"] == 1, timeout=10)
        wait_until(exact, timeout=10)
        time.sleep(TTL * 1.5)                            # keepalives on the shared stream hold
        etcd.stop()
        time.sleep(0.5)
        etcd.start()
        wait_until(lambda: all(cp.status()["connected"] for cp in cps), timeout=15)
        client.close()
        client = etcd_client(etcd)
        client.put(layout.endpoint("late", "eth0"), ep_value(9, 99))
        wait_until(lambda: all((42, mac(9, 99)) in s.fdb for s in sinks), timeout=10)
        wait_until(exact, timeout=10)
        for cp in cps:
            s = cp.status()
            assert s["registrations"] == 1 and s["lease_expiries"] == 0, s
            assert s["keepalives_acked"] >= 3
        if proxy is None:                                 # a proxy keeps our stream open
            assert hub.stats()["streams"] >= 2
    finally:
        for cp in cps:
            cp.stop()
        hub.close()
        client.close()
        if proxy is not None:
            proxy.close()
    c2 = etcd_client(etcd)
    try:                                                  # leases revoked at stop
        assert not [k for _, k in c2.get_prefix(layout.nodes, keys_only=True)
                    if k.key.decode().endswith(("n1", "n2", "n3", "n4"))]
    finally:
        c2.close()
