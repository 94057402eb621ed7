"""Tracing a real agent in network namespaces (tests/topo.py): node 1 runs the vxtap agent
in this process (so that observe.attach can be called before the lead wires it into
Agent.start), node 2 the kernel's VXLAN. Pods ping across; captures at the four points are read
back with tshark, the decision trace through `vxtap trace show`, the counters through the
Prometheus endpoint on loopback.
"""
from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.utils import rdpcap

from dataplane import observe
from dataplane.agent import Agent, AgentConfig
from dataplane.tablefile import FdbEntry, NeighEntry
from tests import topo
from tests.test_metrics import sample
from tests.test_trace_common import tshark

pytestmark = pytest.mark.integration
VNI = 42


def vxtap(*argv: str) -> str:
    cp = subprocess.run([sys.executable, "-m", "dataplane", *argv], capture_output=True,
                        text=True, timeout=30, cwd=str(topo.REPO_ROOT), check=False)
    assert cp.returncode == 0, f"vxtap {' '.join(argv)}: {cp.stderr}"
    return cp.stdout


@pytest.fixture
def traced(topo2: topo.Topology, tmp_path: Path) -> Iterator[tuple[topo.Topology, Agent]]:
    t = topo2
    n1, n2 = t.node(1), t.node(2)
    p2 = t.pod(2)
    t.add_kernel_vxlan(n2, vni=VNI)
    cfg = AgentConfig(tap=topo.AGENT_TAP, vni=VNI, local=n1.ip, bridge=n1.bridge,
                      mtu=n1.overlay_mtu, underlay_mtu=n1.mtu, netns=n1.ns,
                      sock=str(tmp_path / "agent.sock"),
                      entries=[FdbEntry(p2.mac, n2.ip, topo.VXLAN_PORT),
                               NeighEntry(p2.ip, p2.mac)])
    agent = Agent(cfg)
    try:
        agent.start()
        n1.vtep = "vxtap"
        yield t, agent
    finally:
        h = getattr(agent, "observe_handle", None)
        if h is not None:
            h.stop()
        agent.close()


def _wait_drained(agent: Agent) -> None:
    time.sleep(0.1)
    agent.observe_handle.tracer.poll()


def test_capture_decisions_and_metrics_from_start_flags(traced: Any, tmp_path: Path) -> None:
    t, agent = traced
    n1, n2 = t.node(1), t.node(2)
    p1, p2 = t.pod(1), t.pod(2)
    capdir = tmp_path / "pcap"
    h = observe.attach(agent, {"pcap": {"dir": str(capdir)}, "trace": {"count": 100},
                               "metrics": "127.0.0.1:0"})

    def scrape() -> str:
        with urllib.request.urlopen(h.metrics.url, timeout=5) as r:
            return r.read().decode()
    before = scrape()
    st = p1.ping(p2, count=3, interval=0.05)
    assert st.received == 3, st.output

    # a malformed datagram (VXLAN I flag clear) from the peer node, straight at the agent
    bad = IP(src=n2.ip, dst=n1.ip) / UDP(sport=40000, dport=topo.VXLAN_PORT) / \
        VXLAN(flags=0, vni=VNI) / Ether(src=p2.mac, dst=p1.mac)
    assert topo.send_raw_ipv4(n2.ns, [bytes(bad)]) == 1
    _wait_drained(agent)
    after = scrape()
    out = vxtap("trace", "pcap", "stop", "--sock", agent.cfg.sock)
    assert "ended: stopped" in out

    # --- pcap, read back ---
    f = {p: str(capdir / f"{p}.pcap") for p in observe.CAPTURE_POINTS}
    ul_out = tshark(f["ul_out"], "ip.src", "ip.dst", "udp.dstport", "vxlan.vni")
    assert ul_out and all(r == [n1.ip, n2.ip, "4789", str(VNI)] for r in ul_out), ul_out
    echo_out = tshark(f["ul_out"], "icmp.seq", extra=("-Y", "icmp.type == 8"))
    assert [r[0] for r in echo_out] == ["1", "2", "3"]
    ul_in = tshark(f["ul_in"], "ip.src", "ip.dst", "vxlan.vni", "vxlan.flags")
    assert [n2.ip, n1.ip, str(VNI)] in [r[:3] for r in ul_in], ul_in
    echo_in = tshark(f["ul_in"], "icmp.seq", extra=("-Y", "icmp.type == 0"))
    assert [r[0] for r in echo_in] == ["1", "2", "3"]

    tap_in = [bytes(p) for p in rdpcap(f["tap_in"])]
    tap_out = [bytes(p) for p in rdpcap(f["tap_out"])]
    out_inner = [bytes(p[VXLAN].payload) for p in rdpcap(f["ul_out"])]
    in_inner = [bytes(p[VXLAN].payload) for p in rdpcap(f["ul_in"])]
    assert out_inner and all(fr in tap_in for fr in out_inner)       # encapsulated as read
    delivered = [fr for fr in tap_out if fr in in_inner]
    assert len(delivered) >= 3                                         # echo replies, intact
    assert any(fr[12:14] == b"\x08\x06" and fr[20:22] == b"\x00\x02" and fr[6:12] ==
               bytes.fromhex(p2.mac.replace(":", "")) for fr in tap_out)   # local ARP reply
    assert not any(fr[12:14] == b"\x08\x06" for fr in out_inner if fr[0] & 1)  # no ARP flood

    # --- decision trace, through the CLI ---
    text = vxtap("trace", "show", "--sock", agent.cfg.sock)
    assert f"fdb lookup: hit {p2.mac} -> VTEP {n2.ip}:4789" in text
    assert f"verdict: encap, 1 datagram to {n2.ip}" in text
    assert f"arp: neighbour hit, answered locally: {p2.ip} is-at {p2.mac}" in text
    assert "inbound: underlay -> TAP" in text and "verdict: deliver to the TAP" in text
    assert "VXLAN flags 0x00" in text and "verdict: drop, reason no_i_flag" in text

    # --- metrics moved with the traffic ---
    for point in ("tap_in", "ul_out", "ul_in", "tap_out"):
        d = sample(after, "vxtap_packets_total", vni="42", point=point) - \
            sample(before, "vxtap_packets_total", vni="42", point=point)
        assert d >= 3, (point, d)
    assert sample(after, "vxtap_drops_total", vni="global", reason="no_i_flag") == 1
    assert sample(after, "vxtap_peer_packets_total", vni="42", vtep=n2.ip, direction="out") >= 3
    assert sample(after, "vxtap_table_entries", vni="42", table="fdb") == 1


def test_runtime_capture_with_count_from_cli(traced: Any, tmp_path: Path) -> None:
    t, agent = traced
    observe.attach(agent, {})
    capdir = tmp_path / "rt"
    p1, p2 = t.pod(1), t.pod(2)
    p1.ping(p2, count=1)                          # ARP settled before the capture
    out = vxtap("trace", "pcap", "start", str(capdir), "--points", "ul_out,ul_in",
                "--count", "2", "--ip", p2.ip, "--sock", agent.cfg.sock)
    assert "capture: running" in out
    st = p1.ping(p2, count=4, interval=0.05)
    assert st.received == 4, st.output
    deadline = time.monotonic() + 5
    while "last capture: ended: count reached" not in (
            out := vxtap("trace", "status", "--sock", agent.cfg.sock)):
        assert time.monotonic() < deadline, out
        time.sleep(0.05)
    assert "fast path: not tracing" in out
    for p in ("ul_out", "ul_in"):
        rows = tshark(str(capdir / f"{p}.pcap"), "vxlan.vni", "icmp.type")
        assert len(rows) == 2 and all(r[0] == str(VNI) for r in rows), rows
