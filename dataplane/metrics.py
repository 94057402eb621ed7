"""Prometheus exporter of the agent's counters (off by default; `--metrics ADDR:PORT`).

A custom collector reads `agent.stats()` (and the tracer's status) on every scrape, so nothing
is updated on the fast path: the C counters are plain uint64 read without stopping forwarding.
The HTTP server runs in a thread of the agent's process, in the namespace the agent runs in
(the root namespace with --netns: only the TAP and sockets live in the node's namespace).

Metrics (counters end in _total):
  vxtap_packets_total{vni,direction,point}   point tap_in|ul_out (direction out),
  vxtap_bytes_total{vni,direction,point}           ul_in|tap_out (direction in)
  vxtap_drops_total{vni,reason}              every drop reason; vni="global" for the drops
                                             before a datagram's VNI is known
  vxtap_arp_replied_total{vni}, vxtap_nd_replied_total{vni}, vxtap_flooded_total{vni}
  vxtap_peer_packets_total{vni,vtep,direction}, vxtap_peer_bytes_total{...}
  vxtap_table_entries{vni,table}             table fdb|neigh|vteps
  vxtap_offload_total{vni,stat}              stat gso_frames|gso_segments|gro_frames|
                                             gro_segments|csum_completed
  vxtap_offload_enabled{feature}             1/0: tap, udp_gso, udp_gro, and each TAP
                                             offload (csum, tso4, tso6, uso4, uso6)
  vxtap_kernel_drops_total{vni,where}        drops the kernel counted before the agent read:
                                             where="tap_queue" (vni) | "udp_socket" (global)
  vxtap_control_etcd_connected, vxtap_control_last_revision_applied, vxtap_control_synced
  vxtap_control_<field>_total                cumulative counts of the control plane (resyncs,
                                             reconnects, registrations, bad_records, ...)
  vxtap_control_<field>                      its other numeric fields, as gauges
  vxtap_trace_records_total, vxtap_trace_ring_dropped_total, vxtap_trace_active
  vxtap_info{tap,vni,local,port}, vxtap_uptime_seconds
"""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("vxtap.metrics")

OFFLOAD_STATS = ("gso_frames", "gso_segments", "gro_frames", "gro_segments", "csum_completed")

# (counter packets, counter bytes, point, direction), in the order a packet meets them
POINTS = (("tap_rx_packets", "tap_rx_bytes", "tap_in", "out"),
          ("udp_tx_packets", "udp_tx_bytes", "ul_out", "out"),
          ("udp_rx_packets", "udp_rx_bytes", "ul_in", "in"),
          ("tap_tx_packets", "tap_tx_bytes", "tap_out", "in"))
# Control-plane metrics: one prefix, vxtap_control_ (until issue 12 the names mixed
# vxtap_etcd_* and vxtap_control_*, and cumulative counts were gauges without _total; the old
# names are not kept: nothing outside this repository scraped them yet).
CONTROL_NAMED = {"connected": ("vxtap_control_etcd_connected", "gauge",
                               "1 if connected to etcd"),
                 "last_revision_applied": ("vxtap_control_last_revision_applied", "gauge",
                                           "etcd revision of the last change applied"),
                 "resyncs": ("vxtap_control_resyncs", "counter",
                             "re-lists of the whole state after the first (compaction, etcd "
                             "data restored)")}
# Which fields of a control plane's status() count events since the agent started (Prometheus
# counters, `_total`) is said in ONE place: control.sync.STATUS_COUNTERS, which a control plane
# publishes as its `status_counters` attribute (flannel mode: its own set); every other numeric
# field is a gauge, and a field whose name ends in _total is a counter too.


def control_counters(cp: Any) -> frozenset[str]:
    """The cumulative status() fields of control plane `cp` (control.sync.STATUS_COUNTERS when
    it names none; imported here, not at the top: a standalone agent loads no etcd code)."""
    named = getattr(cp, "status_counters", None)
    if named is not None:
        return frozenset(named)
    from control.sync import STATUS_COUNTERS
    return STATUS_COUNTERS


def parse_addr(s: str) -> tuple[str, int]:
    """Parse 127.0.0.1:9464, :9464 (all addresses) or [::1]:9464 into (host, port); port 0 = any
    free port (see MetricsServer.port)."""
    m = re.fullmatch(r"(?:\[([0-9a-fA-F:.]+)\]|([^:\[\]]*)):(\d{1,5})", s or "")
    if not m or not 0 <= int(m.group(3)) < 65536:
        raise ValueError(f"metrics address must be ADDR:PORT (e.g. 127.0.0.1:9464), got {s!r}")
    host = m.group(1) or m.group(2) or "0.0.0.0"
    return host, int(m.group(3))


class AgentCollector(Collector):
    def __init__(self, agent: Any, trace_status: Callable[[], dict[str, Any]] | None = None
                 ) -> None:
        self.agent = agent
        self.trace_status = trace_status

    def collect(self) -> Iterator[Metric]:
        try:
            st = self.agent.stats()
        except Exception as e:  # noqa: BLE001 -- a scrape during shutdown: export nothing
            log.debug("stats unavailable: %s", e)
            return
        yield from stats_metrics(st, self.agent)
        if self.trace_status is not None:
            try:
                fp = self.trace_status()["fastpath"]
            except Exception as e:  # noqa: BLE001 -- export/stop what works, log the rest
                log.debug("trace status unavailable: %s", e)
            else:
                yield CounterMetricFamily("vxtap_trace_records",
                                          "trace records written into the ring",
                                          value=fp["recorded"])
                yield CounterMetricFamily("vxtap_trace_ring_dropped",
                                          "trace records dropped because the ring was full "
                                          "(packets are never dropped for tracing)",
                                          value=fp["dropped"])
                yield GaugeMetricFamily("vxtap_trace_active", "1 while tracing is armed",
                                        value=int(fp["active"]))


def stats_metrics(st: dict[str, Any], agent: Any = None) -> list[Metric]:
    """The metric families of one `agent.stats()` document (pure; unit tested)."""
    pk = CounterMetricFamily("vxtap_packets", "packets per VNI and capture point",
                             labels=["vni", "direction", "point"])
    by = CounterMetricFamily("vxtap_bytes", "bytes per VNI and capture point",
                             labels=["vni", "direction", "point"])
    dr = CounterMetricFamily("vxtap_drops", "packets dropped, per reason",
                             labels=["vni", "reason"])
    arp = CounterMetricFamily("vxtap_arp_replied", "ARP requests answered locally",
                              labels=["vni"])
    nd = CounterMetricFamily("vxtap_nd_replied", "IPv6 neighbour solicitations answered "
                             "locally", labels=["vni"])
    fl = CounterMetricFamily("vxtap_flooded", "frames replicated to every VTEP",
                             labels=["vni"])
    ppk = CounterMetricFamily("vxtap_peer_packets", "datagrams per remote VTEP",
                              labels=["vni", "vtep", "direction"])
    pby = CounterMetricFamily("vxtap_peer_bytes", "datagram bytes per remote VTEP",
                              labels=["vni", "vtep", "direction"])
    tab = GaugeMetricFamily("vxtap_table_entries", "entries per table",
                            labels=["vni", "table"])
    off = CounterMetricFamily("vxtap_offload", "offload work: GSO frames split, segments "
                              "produced, GRO frames built, segments coalesced, checksums "
                              "completed", labels=["vni", "stat"])
    for net in st.get("networks", []):
        vni = str(net["vni"])
        c = net["counters"]
        for cp, cb, point, dirn in POINTS:
            pk.add_metric([vni, dirn, point], c[cp])
            by.add_metric([vni, dirn, point], c[cb])
        for k, v in c.items():
            if k.startswith("drop_"):
                dr.add_metric([vni, k[5:]], v)
        arp.add_metric([vni], c["arp_replied"])
        nd.add_metric([vni], c.get("nd_replied", 0))
        for k in OFFLOAD_STATS:
            off.add_metric([vni, k], c.get(k, 0))
        fl.add_metric([vni], c["flooded"])
        for v in net.get("vteps", []):
            for dirn, pre in (("out", "tx"), ("in", "rx")):
                ppk.add_metric([vni, v["vtep"], dirn], v[f"{pre}_packets"])
                pby.add_metric([vni, v["vtep"], dirn], v[f"{pre}_bytes"])
        tab.add_metric([vni, "fdb"], net.get("fdb_size", 0))
        tab.add_metric([vni, "neigh"], net.get("neigh_size", 0))
        tab.add_metric([vni, "vteps"], len(net.get("vteps", [])))
    for k, v in st.get("global", {}).items():
        if k.startswith("drop_"):
            dr.add_metric(["global", k[5:]], v)
    kd = CounterMetricFamily("vxtap_kernel_drops", "packets the kernel dropped before the "
                             "agent read them (TAP queue full, underlay socket buffer full)",
                             labels=["vni", "where"])
    for net in st.get("networks", []):
        if "kernel" in net:
            kd.add_metric([str(net["vni"]), "tap_queue"], net["kernel"].get("tap_queue_dropped", 0))
    if "kernel" in st:
        kd.add_metric(["global", "udp_socket"], st["kernel"].get("udp_socket_dropped", 0))
        for k, v in st["kernel"].get("ip6", {}).items():     # IPv6 underlay (snmp6)
            kd.add_metric(["global", k], v)
    out: list[Metric] = [pk, by, dr, arp, nd, fl, ppk, pby, tab, off, kd]
    ost = st.get("offload")
    if isinstance(ost, dict):
        en = GaugeMetricFamily("vxtap_offload_enabled", "1 if the offload is on",
                               labels=["feature"])
        en.add_metric(["tap"], int(bool(ost.get("active"))))
        en.add_metric(["udp_gso"], int(bool(ost.get("udp_gso"))))
        en.add_metric(["udp_gro"], int(bool(ost.get("udp_gro"))))
        for f in ("csum", "tso4", "tso6", "uso4", "uso6"):
            en.add_metric([f], int(f in ost.get("tap", [])))
        out.append(en)
    ctl = st.get("control")
    if isinstance(ctl, dict):
        counters = control_counters(getattr(agent, "control_plane", None))
        for k, v in sorted(ctl.items()):
            if isinstance(v, bool):
                v = int(v)
            if not isinstance(v, (int, float)):
                continue
            field = re.sub(r"[^a-zA-Z0-9_]", "_", k)
            if field.endswith("_total"):
                field = field[:-len("_total")]
            kind = "counter" if k in counters or k.endswith("_total") else "gauge"
            name, kind, doc = CONTROL_NAMED.get(k, (f"vxtap_control_{field}", kind,
                                                    f"control plane: {k}"))
            fam = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            out.append(fam(name, doc, value=v))
    if agent is not None and hasattr(agent, "cfg"):
        info = GaugeMetricFamily("vxtap_info", "agent identity", labels=["tap", "vni", "local",
                                                                         "port"])
        info.add_metric([str(agent.cfg.tap), str(agent.cfg.vni), str(agent.cfg.local),
                         str(agent.cfg.port)], 1)
        out.append(info)
        if hasattr(agent, "started_at"):
            out.append(GaugeMetricFamily("vxtap_uptime_seconds", "seconds since the agent "
                                         "started", value=time.time() - agent.started_at))
    return out


class MetricsServer:
    """The /metrics HTTP endpoint; `close()` stops it."""

    def __init__(self, agent: Any, address: str,
                 trace_status: Callable[[], dict[str, Any]] | None = None) -> None:
        host, port = parse_addr(address)
        self.registry = CollectorRegistry()
        self.registry.register(AgentCollector(agent, trace_status))
        try:
            self._server, self._thread = start_http_server(port, host, registry=self.registry)
        except OSError as e:
            raise OSError(e.errno, f"cannot serve metrics on {address}: {e.strerror}") from None
        bound = self._server.server_address
        self.host: str = str(bound[0])
        self.port: int = int(bound[1])
        log.info("metrics on http://%s:%d/metrics", host, self.port)

    @property
    def url(self) -> str:
        h = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{h}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
