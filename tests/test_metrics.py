"""Prometheus exporter: metric families from agent.stats(), and the HTTP endpoint (loopback)
whose counters move with traffic through the simulated switch."""
from __future__ import annotations

import re
import urllib.request
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from dataplane import metrics
from dataplane.agent import Agent
from dataplane.networks import NetSpec
from dataplane.trace import Tracer
from tests.test_trace_common import B_VTEP, VNI, make_switch, ping_back, ping_out, vxlan


class FakeAgent:
    """What the exporter reads of an Agent: stats() (the real method), cfg, started_at."""

    def __init__(self, control: dict[str, Any] | None = None) -> None:
        self.switch = make_switch()
        tap = SimpleNamespace(name="vxtap0", mac="02:00:00:00:01:01", mtu=1450,
                              netns="vxtap-test-no-such-netns")
        self.fwd = SimpleNamespace(switch=self.switch, taps={VNI: tap},
                                   underlay=SimpleNamespace(kernel_drops=lambda: 6))
        self.nets = {VNI: SimpleNamespace(spec=NetSpec("vxnet", VNI, "vxtap0"), tap=tap,
                                          control=None)}
        self.control_plane = (SimpleNamespace(status=lambda: control) if control is not None
                              else None)
        self.cfg = SimpleNamespace(tap="vxtap0", vni=VNI, local="192.168.100.1", port=4789)
        self.started_at = 0.0

    stats = Agent.stats


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in exposition text; fails if absent."""
    for line in text.splitlines():
        m = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(m.group(3))
    raise AssertionError(f"no sample {name}{labels}")


def scrape(agent: Any) -> str:
    reg = CollectorRegistry()
    reg.register(metrics.AgentCollector(agent, Tracer(agent.switch).status))
    return generate_latest(reg).decode()


def test_families_from_stats() -> None:
    a = FakeAgent(control={"connected": True, "last_revision_applied": 1234, "resyncs": 2,
                           "etcd_url": "http://x:2379", "last_error": None, "bad_keys": 1,
                           "reconnects": 3, "registrations": 1, "bad_records": 4,
                           "sink_errors": 0, "fdb_entries": 7, "repairs_total": 5,
                           "keepalives_sent": 9, "keepalives_acked": 8,
                           "keepalive_stream_restarts": 1, "last_keepalive_age_s": 0.5})
    a.switch.process_tap(VNI, [ping_out(1), ping_out(2), b"\x01"])
    a.switch.process_udp([(B_VTEP, vxlan(VNI, ping_back(1))), (B_VTEP, b"\x08")])
    text = scrape(a)
    assert sample(text, "vxtap_packets_total", vni="42", point="tap_in", direction="out") == 3
    assert sample(text, "vxtap_packets_total", vni="42", point="ul_out", direction="out") == 2
    assert sample(text, "vxtap_packets_total", vni="42", point="ul_in", direction="in") == 1
    assert sample(text, "vxtap_packets_total", vni="42", point="tap_out", direction="in") == 1
    assert sample(text, "vxtap_bytes_total", vni="42", point="ul_out") == 2 * (len(ping_out()) + 36)
    assert sample(text, "vxtap_drops_total", vni="42", reason="tx_short") == 1
    assert sample(text, "vxtap_drops_total", vni="global", reason="truncated") == 1
    assert sample(text, "vxtap_drops_total", vni="42", reason="spoofed") == 0
    assert sample(text, "vxtap_peer_packets_total", vni="42", vtep=B_VTEP, direction="out") == 2
    assert sample(text, "vxtap_peer_packets_total", vni="42", vtep=B_VTEP, direction="in") == 1
    assert sample(text, "vxtap_table_entries", vni="42", table="fdb") == 2
    assert sample(text, "vxtap_table_entries", vni="42", table="neigh") == 2
    assert sample(text, "vxtap_kernel_drops_total", vni="global", where="udp_socket") == 6
    assert sample(text, "vxtap_kernel_drops_total", vni="42", where="tap_queue") == 0
    # issue 12: one prefix for the control plane, cumulative counts are counters (_total)
    assert sample(text, "vxtap_control_etcd_connected") == 1
    assert sample(text, "vxtap_control_last_revision_applied") == 1234
    assert sample(text, "vxtap_control_resyncs_total") == 2
    for field, value in (("reconnects", 3), ("registrations", 1), ("bad_records", 4),
                         ("sink_errors", 0), ("repairs", 5), ("keepalives_sent", 9),
                         ("keepalives_acked", 8), ("keepalive_stream_restarts", 1)):
        assert sample(text, f"vxtap_control_{field}_total") == value
        assert re.search(rf"^# TYPE vxtap_control_{field}(_total)? counter$", text, re.M), field
    assert sample(text, "vxtap_control_bad_keys") == 1          # a level, not a count
    assert "# TYPE vxtap_control_bad_keys gauge" in text
    assert sample(text, "vxtap_control_fdb_entries") == 7
    assert "# TYPE vxtap_control_last_keepalive_age_s gauge" in text
    assert "vxtap_etcd_" not in text
    assert all(m.startswith(("vxtap_control_", "vxtap_packets", "vxtap_bytes", "vxtap_drops",
                             "vxtap_arp", "vxtap_nd", "vxtap_flooded", "vxtap_peer", "vxtap_table",
                             "vxtap_kernel", "vxtap_info", "vxtap_uptime", "vxtap_trace",
                             "vxtap_offload"))
               for m in re.findall(r"^# TYPE (\w+) ", text, re.M)), text
    assert sample(text, "vxtap_info", tap="vxtap0", vni="42") == 1
    assert sample(text, "vxtap_trace_ring_dropped_total") == 0
    assert "etcd_url" not in text and "last_error" not in text


def test_no_control_plane_no_etcd_metrics() -> None:
    text = scrape(FakeAgent())
    assert "vxtap_control" not in text and sample(text, "vxtap_trace_active") == 0


@pytest.mark.parametrize("s,want", [("127.0.0.1:9464", ("127.0.0.1", 9464)),
                                    (":9464", ("0.0.0.0", 9464)),
                                    ("[::1]:9", ("::1", 9))])
def test_parse_addr(s: str, want: tuple[str, int]) -> None:
    assert metrics.parse_addr(s) == want


@pytest.mark.parametrize("s", ["9464", "host", "1.2.3.4:x", "1.2.3.4:70000", ""])
def test_parse_addr_bad(s: str) -> None:
    with pytest.raises(ValueError) as e:
        metrics.parse_addr(s)
    assert str(e.value) == f"metrics address must be ADDR:PORT (e.g. 127.0.0.1:9464), got {s!r}"


def test_endpoint_counters_move_with_traffic() -> None:
    a = FakeAgent()
    srv = metrics.MetricsServer(a, "127.0.0.1:0")
    try:
        assert srv.port > 0
        def get() -> str:
            with urllib.request.urlopen(srv.url, timeout=5) as r:
                assert r.status == 200
                return r.read().decode()
        before = sample(get(), "vxtap_packets_total", vni="42", point="ul_out")
        a.switch.process_tap(VNI, [ping_out(i) for i in range(5)])
        after = sample(get(), "vxtap_packets_total", vni="42", point="ul_out")
        assert after - before == 5
    finally:
        srv.close()


def test_endpoint_port_in_use() -> None:
    a = FakeAgent()
    srv = metrics.MetricsServer(a, "127.0.0.1:0")
    try:
        with pytest.raises(OSError, match=f"cannot serve metrics on 127.0.0.1:{srv.port}"):
            metrics.MetricsServer(a, f"127.0.0.1:{srv.port}")
    finally:
        srv.close()


def test_every_cumulative_control_field_is_a_counter() -> None:
    """control/sync.py and control/flannel_sync.py mark cumulative state fields with a
    `# cumulative` comment; each must be in the STATUS_COUNTERS the control plane publishes
    (exported as a Prometheus counter, issue 12 item 5), the others not."""
    import inspect

    from control import flannel_sync, lease, sync
    for state, cp in ((sync.SyncState, sync.ControlPlane),
                      (flannel_sync.FlannelState, flannel_sync.FlannelControl)):
        src = inspect.getsource(state)
        cumulative = set(re.findall(r"^\s+(\w+): .*#\s*cumulative", src, re.M))
        assert {"resyncs", "reconnects"} <= cumulative, cumulative
        counters = metrics.control_counters(cp)
        assert cumulative <= counters, cumulative - counters
        numeric = {k for k, v in state().__dict__.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        assert not (numeric - cumulative) & counters, numeric - cumulative
    assert metrics.control_counters(None) is sync.STATUS_COUNTERS
    # the lease's counters (merged into status()): every one a counter, its age a gauge
    nl = lease.NodeLease("/k", b"v", 10, name="n1")
    nl.keepalives_sent = nl.keepalives_acked = 1
    nl.last_ack = 1.0
    got = {k for k, v in nl.counters().items() if isinstance(v, (int, float))}
    assert got - sync.STATUS_COUNTERS == {"last_keepalive_age_s"}, got
