"""`--threads multi` end to end: N forwarding threads per agent, each with its own queue of a
multi-queue TAP and its own SO_REUSEPORT underlay socket (dataplane/forwarder.py,
fastpath/queues.pxd), in network namespaces.

Several concurrent TCP flows (so the kernel spreads them over the queues and sockets), each
checked by SHA-256 (tests/topo.py tcp_transfer), both directions, vxtap <-> vxtap and
vxtap <-> kernel VXLAN, with the underlay's TX checksum offload on (the default: a kernel
sender leaves inner checksums partial) and off. The TAP must really have the queues
(/sys/class/net/TAP/queues) and the agent the threads (`info`), and the counters, updated by
several threads, must add up (datagrams in == frames out on the TAP side for plain frames is
not checkable with GRO, so: bytes the pods moved <= bytes counted on the TAP).
"""
from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from fastpath.counters import OFFLOAD_STATS
from tests import topo
from tests.test_integration_dataplane import counters

pytestmark = pytest.mark.integration

MB = 1024 * 1024
VNI = 42
FLOWS = 6
SIZE = 16 * MB          # per flow and direction: ~100 MB each way in all
QUEUES = 2
CASES = [(pair, tx) for pair in ("vxtap-vxtap", "vxtap-kernel") for tx in (True, False)]


def _queues(ns: str, dev: str) -> int:
    out = topo.run(["ls", f"/sys/class/net/{dev}/queues"], ns).stdout.split()
    return sum(1 for q in out if q.startswith("tx-"))


@pytest.mark.parametrize("case", CASES, ids=[f"{p}-txcsum_{'on' if tx else 'off'}"
                                             for p, tx in CASES])
def test_multiqueue_tcp_flows_both_ways(make_topology: Callable[..., topo.Topology],
                                        case: tuple[str, bool]) -> None:
    pair, tx_csum = case
    t = make_topology(nodes=2, pods=1, mtu=1500, wire_checksums=not tx_csum)
    for node in t.nodes:
        topo.set_tx_checksum(node.ns, node.dev, tx_csum)
    kinds = ("vxtap", "vxtap") if pair == "vxtap-vxtap" else ("vxtap", "kernel")
    for node, kind in zip(t.nodes, kinds):
        if kind == "kernel":
            t.add_kernel_vxlan(node, vni=VNI)
        else:
            t.add_vxtap_agent(node, vni=VNI, extra=["--threads", "multi",
                                                    "--queues", str(QUEUES)])
    for agent in t.agents:
        info = agent.request("info", timeout=5)
        assert info["thread_mode"] == "multi", info
        assert sorted(info["threads"]) == ["vxtap-fwd", "vxtap-fwd-1"], info["threads"]
        assert _queues(agent.node.ns, topo.AGENT_TAP) == QUEUES
    a, b = t.pod(1), t.pod(2)
    st = a.ping(b, count=3, interval=0.05)
    assert st.received == st.transmitted, st.output
    before = {ag.node.ns: counters(ag.stats(), ["tap_tx_bytes", "tap_rx_bytes"])
              for ag in t.agents}
    for src, dst in ((a, b), (b, a)):
        with ThreadPoolExecutor(FLOWS) as ex:
            futs = [ex.submit(t.tcp_transfer, src, dst, size=SIZE, timeout=120,
                              port=5301 + i) for i in range(FLOWS)]
            results = [f.result() for f in futs]
        for i, res in enumerate(results):
            assert res.intact, f"{src.ns} -> {dst.ns} flow {i}: {res}"
    for agent in t.agents:
        assert agent.proc.alive, agent.stderr_text()
        c = counters(agent.stats(), ["tap_tx_bytes", "tap_rx_bytes", *OFFLOAD_STATS])
        b0 = before[agent.node.ns]
        # every byte the pods moved crossed this agent's TAP once each way, counted by two
        # threads (atomic counters outside the table lock: none may be lost)
        assert c["tap_rx_bytes"] - b0["tap_rx_bytes"] >= FLOWS * SIZE, c
        assert c["tap_tx_bytes"] - b0["tap_tx_bytes"] >= FLOWS * SIZE, c
        assert c["gso_frames"] > 0 and c["gro_frames"] > 0, c
        if pair == "vxtap-kernel" and tx_csum:
            assert c["csum_completed"] > 0, c
