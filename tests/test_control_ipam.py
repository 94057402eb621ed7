"""Address blocks and endpoint writes against a real etcd (tests/etcd_server.py).

Blocks: the first choice is spread by a hash of the node name, so 50 agents taking blocks at
once rarely race (transaction conflicts counted); a restarted node finds its block through its
owner index key; blocks written before the index existed are adopted.
Endpoints: one transaction per add and per delete (counted with etcd's own /metrics), with MAC
and IP index keys that refuse a duplicate in the same transaction.
"""

from __future__ import annotations

import ipaddress
import json
import re
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from control import cli
from control import endpoints as eps
from control import ipam
from control.etcd import EtcdSettings, connect
from control.ipam import (block_count, first_choice, find_block, node_block_key, nth_block,
                          probe_order, take_block)
from control.keys import Layout
from control.records import NetworkConfig
from tests.etcd_server import EtcdServer, etcd_client

CFG = NetworkConfig(vni=42, subnet="10.244.0.0/16", block_prefix=24)



def layout() -> Layout:
    return Layout("/vxtap", "i" + uuid.uuid4().hex[:8])


@pytest.fixture
def client(etcd: EtcdServer) -> Iterator[Any]:
    c = etcd_client(etcd)
    try:
        yield c
    finally:
        c.close()


def metric(server: EtcdServer, name: str, **labels: str) -> float:
    """Sum of one counter family from etcd's /metrics, filtered by labels."""
    with urllib.request.urlopen(server.url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", line)
        if not m:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total


def all_kvs(client: Any, lay: Layout) -> list[Any]:
    """The network's keys and its index keys."""
    from control.ipam import index_root
    return [*client.get_prefix(lay.root), *client.get_prefix(index_root(lay))]


def rpcs(server: EtcdServer) -> dict[str, float]:
    return {m: metric(server, "grpc_server_handled_total", grpc_method=m)
            for m in ("Txn", "Put", "DeleteRange", "Range")}


# -- pure ------------------------------------------------------------------------------------

def test_probe_order_is_stable_and_covers_every_block_once() -> None:
    order = [str(b) for b in probe_order(CFG, "node-17")]
    assert len(order) == block_count(CFG) == 256 and len(set(order)) == 256
    assert order[0] == str(nth_block(CFG, first_choice("node-17", 256)))
    assert order == [str(b) for b in probe_order(CFG, "node-17")]
    # first choices of different names spread over the blocks
    firsts = {first_choice(f"node-{i}", 256) for i in range(50)}
    assert len(firsts) > 40, firsts


# -- blocks ----------------------------------------------------------------------------------

@pytest.mark.etcd
def test_fifty_agents_take_blocks_at_once_with_few_conflicts(etcd: EtcdServer) -> None:
    lay = layout()
    n = 50
    settings = EtcdSettings.from_text(etcd.url)
    c0, _ = connect(settings, "/")
    c0.put(lay.config, CFG.to_json())
    c0.close()
    clients = [connect(settings, "/")[0] for _ in range(n)]
    barrier = threading.Barrier(n)
    results: dict[str, str] = {}
    stats = {f"n{i}": {} for i in range(n)}     # type: dict[str, dict[str, int]]
    errors: list[BaseException] = []

    def node(i: int) -> None:
        try:
            barrier.wait()
            results[f"n{i}"] = str(take_block(clients[i], lay, CFG, f"n{i}", stats[f"n{i}"]))
        except BaseException as e:  # noqa: BLE001 -- reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=node, args=(i,)) for i in range(n)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        for c in clients:
            c.close()
    assert not errors, errors
    assert len(results) == n and len(set(results.values())) == n      # all distinct
    conflicts = sum(s["conflicts"] for s in stats.values())
    txns = sum(s["txns"] for s in stats.values())
    print(f"\n[measure] 50 agents at once: {txns} block transactions, {conflicts} conflicts")
    # everyone racing for the lowest free block would cost up to n*(n-1)/2 = 1225 conflicts
    assert conflicts <= 15, stats
    assert txns == n + conflicts


@pytest.mark.etcd
def test_restart_finds_block_by_index_and_adopts_pre_index_blocks(etcd: EtcdServer,
                                                                  client: Any) -> None:
    lay = layout()
    client.put(lay.config, CFG.to_json())
    b1 = take_block(client, lay, CFG, "n1")
    assert find_block(client, lay, "n1") == b1
    assert client.get(node_block_key(lay, "n1"))[0] == str(b1).replace("/", "-").encode()
    st: dict[str, int] = {}
    assert take_block(client, lay, CFG, "n1", st) == b1 and st["txns"] == 0   # no write
    # a block written by hand (or before the index): adopted, index written
    client.put(lay.block("10.244.77.0/24"), json.dumps({"node": "old"}))
    assert find_block(client, lay, "old") is None
    assert str(take_block(client, lay, CFG, "old")) == "10.244.77.0/24"
    assert str(find_block(client, lay, "old")) == "10.244.77.0/24"
    # a stale index (its block now names another node) is replaced by a new block
    client.put(lay.block(b1), json.dumps({"node": "thief"}))
    b1b = take_block(client, lay, CFG, "n1")
    assert b1b != b1 and find_block(client, lay, "n1") == b1b
    # a full subnet: clear error
    small = NetworkConfig(vni=1, subnet="10.9.0.0/29", block_prefix=30)
    lay2 = layout()
    take_block(client, lay2, small, "a")
    take_block(client, lay2, small, "b")
    with pytest.raises(ValueError, match="no free /30 block left in 10.9.0.0/29"):
        take_block(client, lay2, small, "c")


# -- endpoints -------------------------------------------------------------------------------

def _rec(node: str, mac: str, ip: str) -> Any:
    return eps.make_endpoint(CFG, node, mac, ip, None)


@pytest.mark.etcd
def test_endpoint_add_and_del_are_one_transaction_each(etcd: EtcdServer, client: Any) -> None:
    lay = layout()
    rev0 = client.get_response(lay.config).header.revision
    before = rpcs(etcd)
    eps.put_endpoint(client, lay, "p1", "eth0", _rec("n1", "02:00:00:00:01:02", "10.244.1.2/16"))
    after = rpcs(etcd)
    assert after["Txn"] - before["Txn"] == 1
    assert after["Put"] == before["Put"] and after["Range"] == before["Range"]
    # the record and its two index keys, all at one revision
    kvs = {m.key.decode(): (v, m.mod_revision) for v, m in all_kvs(client, lay)}
    assert kvs.keys() == {lay.endpoint("p1", "eth0"), eps.mac_index_key(lay, "02:00:00:00:01:02"),
                          eps.ip_index_key(lay, "10.244.1.2")}
    assert {rev for _, rev in kvs.values()} == {rev0 + 1}
    assert kvs[eps.ip_index_key(lay, "10.244.1.2")][0] == b"p1/eth0"
    # agents list and watch only the record: the index is outside their prefix
    assert [m.key.decode() for _, m in client.get_prefix(lay.root)] == [lay.endpoint("p1", "eth0")]
    # delete: one read, one transaction, all three keys gone
    before = rpcs(etcd)
    assert eps.delete_endpoint(client, lay, "p1", "eth0")["deleted"] is True
    after = rpcs(etcd)
    assert after["Txn"] - before["Txn"] == 1 and after["DeleteRange"] == before["DeleteRange"]
    assert list(all_kvs(client, lay)) == []
    # deleting a missing endpoint writes nothing
    before = rpcs(etcd)
    assert eps.delete_endpoint(client, lay, "p1", "eth0")["deleted"] is False
    assert rpcs(etcd)["Txn"] == before["Txn"]


@pytest.mark.etcd
def test_duplicate_mac_or_ip_is_refused_in_the_transaction(etcd: EtcdServer, client: Any,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    lay = layout()
    client.put(lay.config, CFG.to_json())
    eps.put_endpoint(client, lay, "p1", "eth0", _rec("n1", "02:00:00:00:01:02", "10.244.1.2/16"))
    rev = client.get_response(lay.config).header.revision
    with pytest.raises(eps.DuplicateEndpoint, match=r"MAC 02:00:00:00:01:02 is already "
                       r"registered to endpoint p1/eth0"):
        eps.put_endpoint(client, lay, "bogus", "eth0",
                         _rec("n2", "02:00:00:00:01:02", "10.244.2.9/16"))
    with pytest.raises(eps.DuplicateEndpoint, match=r"IP 10.244.1.2 is already registered"):
        eps.put_endpoint(client, lay, "aaa-dupip", "eth0",
                         _rec("n2", "02:00:00:00:02:09", "10.244.1.2/16"))
    assert client.get_response(lay.config).header.revision == rev       # nothing written
    # the same add again (CNI ADD retried): nothing written
    eps.put_endpoint(client, lay, "p1", "eth0", _rec("n1", "02:00:00:00:01:02", "10.244.1.2/16"))
    assert client.get_response(lay.config).header.revision == rev
    # the same endpoint re-registered with a new MAC and IP: its old index keys go
    eps.put_endpoint(client, lay, "p1", "eth0", _rec("n1", "02:00:00:00:01:03", "10.244.1.3/16"))
    keys = {m.key.decode() for _, m in all_kvs(client, lay)}
    assert keys == {lay.config, lay.endpoint("p1", "eth0"), eps.mac_index_key(lay, "02:00:00:00:01:03"),
                    eps.ip_index_key(lay, "10.244.1.3")}
    # and the freed MAC is usable by another endpoint
    eps.put_endpoint(client, lay, "p2", "eth0", _rec("n1", "02:00:00:00:01:02", "10.244.1.2/16"))
    # the CLI reports a duplicate as a clear error
    assert cli.endpoint_main(["add", "dup", "--mac", "02:00:00:00:01:02", "--ip", "10.244.9.9/16",
                              "--etcd", etcd.url, "--network", lay.network, "--node", "n1"]) == 1
    assert "MAC 02:00:00:00:01:02 is already registered to endpoint p2/eth0" in capsys.readouterr().err


@pytest.mark.etcd
def test_records_without_index_keys_can_still_be_deleted(client: Any) -> None:
    lay = layout()
    client.put(lay.endpoint("hand", "eth0"), _rec("n1", "02:00:00:00:05:05", "10.244.5.5/16").to_json())
    # a foreign index key naming another endpoint is left alone
    client.put(eps.ip_index_key(lay, "10.244.5.5"), b"other/eth0")
    assert eps.delete_endpoint(client, lay, "hand", "eth0")["deleted"] is True
    assert {m.key.decode() for _, m in all_kvs(client, lay)} == \
        {eps.ip_index_key(lay, "10.244.5.5")}


@pytest.mark.etcd
def test_endpoint_gc_removes_a_dead_nodes_endpoints(etcd: EtcdServer, client: Any,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    lay = layout()
    client.put(lay.config, CFG.to_json())
    for i in range(3):
        eps.put_endpoint(client, lay, f"d{i}", "eth0",
                         _rec("dead", f"02:00:00:00:0d:0{i}", f"10.244.13.{i + 2}/16"))
    eps.put_endpoint(client, lay, "live1", "eth0", _rec("live", "02:00:00:00:0a:01", "10.244.10.2/16"))
    lease = client.lease(30)
    client.put(lay.node("live"), b'{"underlay": "192.168.1.1", "port": 4789, '
               b'"tap_mac": "02:00:00:00:00:01"}', lease=lease.id)
    args = ["gc", "--node", "dead", "--etcd", etcd.url, "--network", lay.network]
    assert cli.endpoint_main([*args, "--dry-run"]) == 0
    assert len(json.loads(capsys.readouterr().out)["removed"]) == 3
    assert len(list(client.get_prefix(lay.endpoints))) == 4           # dry run: nothing gone
    assert cli.endpoint_main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert sorted(out["removed"]) == [lay.endpoint(f"d{i}", "eth0") for i in range(3)]
    left = {m.key.decode() for _, m in all_kvs(client, lay)}
    assert left == {lay.config, lay.node("live"), lay.endpoint("live1", "eth0"),
                    eps.mac_index_key(lay, "02:00:00:00:0a:01"), eps.ip_index_key(lay, "10.244.10.2")}
    # a live node is refused without --force
    assert cli.endpoint_main(["gc", "--node", "live", "--etcd", etcd.url,
                              "--network", lay.network]) == 1
    assert "is alive" in capsys.readouterr().err
    assert cli.endpoint_main(["gc", "--node", "live", "--force", "--etcd", etcd.url,
                              "--network", lay.network]) == 0
    client.revoke_lease(lease.id)


CFG6 = NetworkConfig(vni=42, subnet="10.244.0.0/16", block_prefix=24, subnet6="fd00:10:244::/48")


def test_ipv6_block_pairs_with_the_ipv4_block() -> None:
    assert ipam.block6_of(CFG6, ipaddress.IPv4Network("10.244.0.0/24")) == \
        ipaddress.IPv6Network("fd00:10:244::/64")
    assert ipam.block6_of(CFG6, ipaddress.IPv4Network("10.244.255.0/24")) == \
        ipaddress.IPv6Network("fd00:10:244:ff::/64")
    assert ipam.block6_of(CFG, ipaddress.IPv4Network("10.244.1.0/24")) is None
    plan = ipam.BlockPlan.of(ipaddress.IPv4Network("10.244.7.0/24"), CFG6).to_dict()
    assert (plan["block6"], plan["subnet6"], plan["gateway6"], plan["range6_start"],
            plan["range6_end"]) == ("fd00:10:244:7::/64", "fd00:10:244::/48", "fd00:10:244:7::1",
                                    "fd00:10:244:7::2", "fd00:10:244:7:ffff:ffff:ffff:fffe")
    assert "block6" not in ipam.BlockPlan.of(ipaddress.IPv4Network("10.244.7.0/24"), CFG).to_dict()
    # every distinct IPv4 block gets a distinct IPv6 block
    six = {ipam.block6_of(CFG6, b) for b in ipam.iter_blocks(CFG6)}
    assert len(six) == ipam.block_count(CFG6)
    with pytest.raises(ValueError, match=r"block_prefix6: 60 is out of range 64..126"):
        NetworkConfig(vni=1, subnet="10.0.0.0/16", block_prefix=24, subnet6="fd00::/56",
                      block_prefix6=60)
    with pytest.raises(ValueError, match="outside the network subnet6"):
        eps.make_endpoint(CFG6, "n1", "02:00:00:00:01:02", "10.244.1.2/16", None, "fd01::2/48")
    with pytest.raises(ValueError, match="the network has no IPv6 subnet"):
        eps.make_endpoint(CFG, "n1", "02:00:00:00:01:02", "10.244.1.2/16", None, "fd00::2/48")


@pytest.mark.etcd
def test_ipv6_index_keys_refuse_duplicates_in_any_spelling(etcd: EtcdServer, client: Any) -> None:
    """One transaction writes the record, its MAC index and an index key per address; an IPv6
    address registered as fd00:10:244:1::2 is refused as FD00:10:244:1:0::2 too."""
    lay = layout()
    client.put(lay.config, CFG6.to_json())
    rec = eps.make_endpoint(CFG6, "n1", "02:00:00:00:01:02", "10.244.1.2/16", "10.244.1.1",
                            "fd00:10:244:1::2/48", "fd00:10:244:1::1")
    before = rpcs(etcd)
    eps.put_endpoint(client, lay, "p1", "eth0", rec)
    assert rpcs(etcd)["Txn"] - before["Txn"] == 1
    keys = {m.key.decode() for _, m in all_kvs(client, lay)}
    assert keys == {lay.config, lay.endpoint("p1", "eth0"),
                    eps.mac_index_key(lay, "02:00:00:00:01:02"),
                    f"{ipam.index_root(lay)}ip/10.244.1.2", f"{ipam.index_root(lay)}ip/fd00:10:244:1::2"}
    rev = client.get_response(lay.config).header.revision
    with pytest.raises(eps.DuplicateEndpoint, match=r"IP fd00:10:244:1::2 is already registered "
                       r"to endpoint p1/eth0"):
        eps.put_endpoint(client, lay, "bogus", "eth0", eps.make_endpoint(
            CFG6, "n2", "02:00:00:00:02:09", None, None, "FD00:10:244:1:0::2/48"))
    assert client.get_response(lay.config).header.revision == rev       # nothing written
    # re-registered IPv4-only: its IPv6 index key goes in the same transaction
    eps.put_endpoint(client, lay, "p1", "eth0", _rec("n1", "02:00:00:00:01:02", "10.244.1.2/16"))
    assert f"{ipam.index_root(lay)}ip/fd00:10:244:1::2" not in \
        {m.key.decode() for _, m in all_kvs(client, lay)}
    eps.put_endpoint(client, lay, "p2", "eth0", eps.make_endpoint(
        CFG6, "n2", "02:00:00:00:02:09", None, None, "fd00:10:244:1::2/48"))
    assert eps.delete_endpoint(client, lay, "p2", "eth0")["deleted"] is True
    assert eps.delete_endpoint(client, lay, "p1", "eth0")["deleted"] is True
    assert {m.key.decode() for _, m in all_kvs(client, lay)} == {lay.config}
