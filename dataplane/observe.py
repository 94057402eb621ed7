"""Observability of a running agent: trace ops on the control socket, start-up flags, metrics.

Wiring (three calls, by the agent and its CLI):
  cli.py      `observe.add_agent_flags(parser.add_argument_group("observability"))`, then
              `AgentConfig(..., observe=observe.opts_from_args(args))`;
  agent.py    in start(), right after `self.ctl` is created:
              `self.observe_handle = observe.attach(self, self.cfg.observe or {})`;
              in close(), first: `self.observe_handle.stop()` (final drain while the switch
              still exists, pcap files closed, metrics server stopped).

Control-socket ops registered here (arguments as in docs/architecture.md):
  trace_pcap_start {dir, points?[], count?, duration?, vni?, mac?, ip?, snaplen?, append?}
  trace_pcap_stop {}      trace_add {count, vni?, mac?, ip?}      trace_show {max?}
  trace_clear {}          trace_status {}
"""
from __future__ import annotations

import argparse
import logging
from typing import Any

from dataplane.trace import CAPTURE_POINTS, Tracer

log = logging.getLogger("vxtap.observe")


def _points(s: str) -> list[str]:
    pts = [p.strip() for p in s.split(",") if p.strip()]
    if pts == ["all"]:
        return list(CAPTURE_POINTS)
    bad = [p for p in pts if p not in CAPTURE_POINTS]
    if bad or not pts:
        raise argparse.ArgumentTypeError(f"capture points: comma-separated list of "
                                         f"{', '.join(CAPTURE_POINTS)} (or all), got {s!r}")
    return pts


def _positive(kind: type) -> Any:
    def f(s: str) -> Any:
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {s!r}") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {s!r}")
        return v
    return f


def add_agent_flags(g: Any) -> None:
    """Flags of `vxtap agent` (g: a parser or an argument group)."""
    g.add_argument("--pcap", metavar="DIR",
                   help="capture from the start into DIR/<point>.pcap (stop: vxtap trace pcap "
                        "stop)")
    g.add_argument("--pcap-points", type=_points, default=list(CAPTURE_POINTS),
                   metavar="P[,P...]",
                   help=f"capture points: {', '.join(CAPTURE_POINTS)} or all (default all)")
    g.add_argument("--pcap-count", type=_positive(int), metavar="N",
                   help="stop after N packets per point")
    g.add_argument("--pcap-duration", type=_positive(float), metavar="SECONDS",
                   help="stop after this many seconds")
    g.add_argument("--pcap-vni", type=int, metavar="VNI", help="capture only this VNI")
    g.add_argument("--pcap-mac", metavar="MAC", help="capture only frames from/to this MAC")
    g.add_argument("--pcap-ip", metavar="IP",
                   help="capture only frames from/to this IPv4 (IPv4 or ARP)")
    g.add_argument("--pcap-snaplen", type=int, default=65535, metavar="BYTES",
                   help="bytes kept per packet (14..65535, default 65535)")
    g.add_argument("--trace", type=_positive(int), metavar="N",
                   help="decision trace of the first N packets (see vxtap trace show)")
    g.add_argument("--metrics", metavar="ADDR:PORT",
                   help="serve Prometheus metrics on ADDR:PORT (default off), e.g. "
                        "127.0.0.1:9464")


def opts_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The `observe` options of AgentConfig from parsed flags (JSON-able, empty = defaults)."""
    opts: dict[str, Any] = {}
    if getattr(args, "pcap", None):
        opts["pcap"] = {"dir": args.pcap, "points": list(args.pcap_points),
                        "count": args.pcap_count, "duration": args.pcap_duration,
                        "vni": args.pcap_vni, "mac": args.pcap_mac, "ip": args.pcap_ip,
                        "snaplen": args.pcap_snaplen}
    if getattr(args, "trace", None):
        opts["trace"] = {"count": args.trace}
    if getattr(args, "metrics", None):
        opts["metrics"] = args.metrics
    return opts


class ObserveHandle:
    def __init__(self, tracer: Tracer, metrics: Any = None) -> None:
        self.tracer = tracer
        self.metrics = metrics

    def apply(self, agent: Any, opts: dict[str, Any]) -> None:
        """Start what opts asks for: {"pcap": {...}, "trace": {...}, "metrics": "ADDR:PORT"}."""
        if opts.get("pcap"):
            p = {k: v for k, v in opts["pcap"].items() if v is not None}
            st = self.tracer.pcap_start(**p)
            log.info("pcap capture into %s: %s", st["pcap"]["dir"],
                     ", ".join(st["pcap"]["files"]))
        if opts.get("trace"):
            self.tracer.add(**{k: v for k, v in opts["trace"].items() if v is not None})
        if opts.get("metrics") and self.metrics is None:
            from dataplane.metrics import MetricsServer  # prometheus_client only when asked
            self.metrics = MetricsServer(agent, opts["metrics"], self.tracer.status)

    def stop(self) -> None:
        """Idempotent; never raises (called from the agent's shutdown)."""
        if self.metrics is not None:
            try:
                self.metrics.close()
            except Exception as e:  # noqa: BLE001 -- shutdown goes on, the rest is stopped
                log.warning("stopping the metrics server: %s", e)
            self.metrics = None
        try:
            self.tracer.close()
        except Exception as e:  # noqa: BLE001 -- shutdown goes on, the rest is stopped
            log.warning("stopping the tracer: %s", e)


def _args(q: dict[str, Any], allowed: tuple[str, ...]) -> dict[str, Any]:
    unknown = sorted(set(q) - {"op", *allowed})
    if unknown:
        raise ValueError(f"unknown argument(s) {', '.join(unknown)}; known: "
                         f"{', '.join(allowed) or 'none'}")
    return {k: q[k] for k in allowed if q.get(k) is not None}


def register_ops(srv: Any, tracer: Tracer) -> None:
    r = srv.register
    r("trace_pcap_start", lambda q: tracer.pcap_start(**_args(q, (
        "dir", "points", "count", "duration", "vni", "mac", "ip", "snaplen", "append"))))
    r("trace_pcap_stop", lambda q: tracer.pcap_stop(**_args(q, ())))
    r("trace_add", lambda q: tracer.add(**_args(q, ("count", "vni", "mac", "ip"))))
    r("trace_show", lambda q: tracer.show(**_args(q, ("max",))))
    r("trace_clear", lambda q: tracer.clear(**_args(q, ())))
    r("trace_status", lambda q: tracer.status(**_args(q, ())))


def attach(agent: Any, opts: dict[str, Any] | None = None) -> ObserveHandle:
    """Register the trace ops on agent.ctl, start what `opts` asks for; returns the handle.

    A second call for the same agent reuses the first handle and applies its own `opts` (so a
    test can attach to an agent that already attached itself). Raises ValueError/OSError for
    bad options (a pcap dir that cannot be written, a metrics port in use); the agent then
    stops (handle.stop() in its close()).
    """
    handle = getattr(agent, "observe_handle", None)
    if not isinstance(handle, ObserveHandle):
        assert agent.fwd is not None and agent.ctl is not None, "attach after switch and ctl"
        tracer = Tracer(agent.fwd.switch)
        handle = ObserveHandle(tracer)
        register_ops(agent.ctl, tracer)
        tracer.start()
        agent.observe_handle = handle
    handle.apply(agent, opts or {})
    return handle
