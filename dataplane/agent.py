"""The vxtap agent: one per node. Owns the TAP of each network, the underlay sockets, the
forwarding threads and the control socket; with --etcd, also the control-plane sync.

Start-up order (reverse on shutdown):
  1. open the underlay sockets (UDP receive socket bound to local:port, raw send socket);
  2. create or adopt the TAP, set its MAC and MTU (underlay MTU - 50), attach it to the bridge;
  3. build the fast-path switch and load the static table (flags, --table file);
  4. start the forwarding threads, then the control socket (the agent is "ready" when the
     socket answers), then the control plane (etcd) if configured;
  5. wait for SIGINT/SIGTERM or a forwarding thread failure; tear down what was created.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from dataplane import ctlsock, devices, underlay
from dataplane.forwarder import Forwarder
from dataplane.tablefile import FdbEntry, NeighEntry
from fastpath import addr, spec
from fastpath.switch import Switch

log = logging.getLogger("vxtap.agent")


@dataclass
class AgentConfig:
    tap: str = "vxtap0"
    vni: int = 42
    local: str = ""
    port: int = spec.VXLAN_PORT
    bridge: str | None = None
    mtu: int | None = None                  # TAP MTU; default underlay MTU - 50
    underlay_mtu: int | None = None         # default: MTU of the interface holding `local`
    mac: str | None = None
    netns: str | None = None
    sock: str | None = None
    flood: bool = False
    strict: bool = True
    srcport: tuple[int, int] = (spec.SRCPORT_MIN, spec.SRCPORT_MAX)
    ttl: int = spec.DEFAULT_TTL
    batch: int = 64
    busy_poll_us: int = 50
    threads: str = "auto"
    offload: str = "auto"                   # auto: virtio-net header + UDP GSO/GRO if accepted
    nice: int | None = -10
    entries: list[FdbEntry | NeighEntry] = field(default_factory=list)
    control: dict[str, Any] | None = None   # etcd settings (control/), None = static table only
    observe: dict[str, Any] | None = None   # dataplane.observe options (pcap, trace, metrics)


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        addr.ip_to_int(cfg.local)
        addr.check_vni(cfg.vni)
        addr.check_port(cfg.port)
        self.cfg = cfg
        self.fwd: Forwarder | None = None
        self.ctl: ctlsock.ControlServer | None = None
        self.control_plane: Any = None
        self.observe_handle: Any = None
        self.stopping = threading.Event()
        self.failure: str | None = None
        self.started_at = time.time()

    # ---- start / stop ---------------------------------------------------------------------------
    def start(self) -> None:
        cfg = self.cfg
        for e in cfg.entries:
            if e.vni is not None and e.vni != cfg.vni:
                raise ValueError(f"table entry {e}: no network with VNI {e.vni} "
                                 f"(this agent serves VNI {cfg.vni})")
        ul_mtu = cfg.underlay_mtu or devices.link_mtu(cfg.netns, cfg.local)
        if ul_mtu is None:
            raise ValueError(f"no interface has the address {cfg.local}"
                             f"{' in netns ' + cfg.netns if cfg.netns else ''}: "
                             "give --local an address of this node (or --underlay-mtu)")
        tap_mtu = cfg.mtu or ul_mtu - spec.VXLAN_OVERHEAD
        if tap_mtu + spec.VXLAN_OVERHEAD > ul_mtu:
            log.warning("TAP MTU %d + %d > underlay MTU %d: larger frames will be dropped "
                        "(drop_tx_too_big), never fragmented", tap_mtu, spec.VXLAN_OVERHEAD,
                        ul_mtu)
        if cfg.offload not in ("auto", "off"):
            raise ValueError(f"offload must be 'auto' or 'off', got {cfg.offload!r}")
        ul = underlay.open_underlay(cfg.local, cfg.port, cfg.netns)
        try:
            tap = devices.open_tap(cfg.tap, cfg.vni, mtu=tap_mtu, mac=cfg.mac,
                                   bridge=cfg.bridge, ns=cfg.netns,
                                   offload=cfg.offload == "auto")
        except Exception:
            ul.close()
            raise
        try:
            sw = Switch(cfg.local, cfg.port, strict=cfg.strict, flood=cfg.flood,
                        srcport=cfg.srcport, ttl=cfg.ttl, batch=cfg.batch,
                        underlay_mtu=ul_mtu, busy_poll_us=cfg.busy_poll_us,
                        offload=tap.vnet_hdr)
            if tap.vnet_hdr:
                ul.pool = underlay.open_pool(cfg.local, cfg.srcport, cfg.ttl, ns=cfg.netns)
                ul.gro = underlay.enable_gro(ul.udp)
                sw.set_udp_pool([s.fileno() for s in ul.pool], ul.pool_ports)
        except Exception:
            tap.close()
            ul.close()
            raise
        if cfg.offload == "off":
            log.info("offloads off (--offload off): plain TAP, raw-socket sends")
        elif tap.vnet_hdr:
            log.info("offloads on: TAP %s (virtio-net header), UDP GSO on %d send sockets "
                     "(source ports %s), UDP_GRO %s", ",".join(tap.offload_names) or "none",
                     len(ul.pool), ",".join(map(str, ul.pool_ports)),
                     "on" if ul.gro else "refused")
        else:
            log.info("offloads off: the TAP refused the virtio-net header")
        self.fwd = Forwarder(sw, ul, cfg.nice)
        self.fwd.on_failure = self._failed
        self.fwd.add_tap(tap)
        for e in cfg.entries:
            vni = e.vni or cfg.vni
            if isinstance(e, FdbEntry):
                sw.fdb_add(vni, e.mac, e.vtep, e.port)
            else:
                sw.neigh_add(vni, e.ip, e.mac)
        self.fwd.start(cfg.threads)
        self.ctl = ctlsock.ControlServer(cfg.sock or ctlsock.default_path(cfg.tap))
        self._register_ops(self.ctl)
        from dataplane import observe
        self.observe_handle = observe.attach(self, cfg.observe or {})
        if cfg.control and cfg.control.get("mode") == "flannel":
            from dataplane import flannel_agent             # L3 VTEP of a flannel network
            self.control_plane = flannel_agent.start(self, cfg.control)
        elif cfg.control:
            from control.agent import start_control_plane   # control/ only when asked for
            self.control_plane = start_control_plane(self, cfg.control)
        self.ctl.start()
        log.info("forwarding: vni %d tap %s local %s:%d underlay mtu %d, %d static entries, "
                 "control socket %s", cfg.vni, cfg.tap, cfg.local, cfg.port, ul_mtu,
                 len(cfg.entries), self.ctl.path)

    def _failed(self, why: str) -> None:
        self.failure = why
        self.stopping.set()

    def run(self) -> int:
        """Serve until SIGINT/SIGTERM (or a forwarding failure); returns the exit status."""
        def on_signal(signum: int, _frame: Any) -> None:
            log.info("signal %d: stopping", signum)
            self.stopping.set()
        old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.start()
            while not self.stopping.wait(1.0):
                pass
        finally:
            self.close()
            for s, h in old.items():
                signal.signal(s, h)
        if self.failure:
            log.error("stopped after a failure: %s", self.failure)
            return 1
        return 0

    def close(self) -> None:
        if self.observe_handle is not None:       # final drain while the switch exists
            self.observe_handle.stop()
            self.observe_handle = None
        if self.control_plane is not None:
            try:
                self.control_plane.stop()
            except Exception as e:
                log.warning("stopping the control plane: %s", e)
            self.control_plane = None
        if self.ctl:
            self.ctl.close()
            self.ctl = None
        if self.fwd:
            self.fwd.close()
            self.fwd = None

    # ---- control socket ops --------------------------------------------------------------------
    def _vni(self, req: dict[str, Any]) -> int:
        vni = req.get("vni", self.cfg.vni)
        return addr.check_vni(vni)

    def _register_ops(self, srv: ctlsock.ControlServer) -> None:
        assert self.fwd is not None
        sw = self.fwd.switch
        r = srv.register
        a = ctlsock.arg
        r("fdb_add", lambda q: sw.fdb_add(self._vni(q), a(q, "mac"), a(q, "vtep"), q.get("port")))
        r("fdb_del", lambda q: sw.fdb_del(self._vni(q), a(q, "mac")))
        r("neigh_add", lambda q: sw.neigh_add(self._vni(q), a(q, "ip"), a(q, "mac")))
        r("neigh_del", lambda q: sw.neigh_del(self._vni(q), a(q, "ip")))
        r("show", self._show)
        r("info", lambda q: self.info())

    def info(self) -> dict[str, Any]:
        assert self.fwd is not None
        return {"tap": self.cfg.tap, "vni": self.cfg.vni, "local": self.cfg.local,
                "port": self.cfg.port, "netns": self.cfg.netns, "bridge": self.cfg.bridge,
                "mac": self.fwd.taps[self.cfg.vni].mac, "mtu": self.fwd.taps[self.cfg.vni].mtu,
                "underlay_mtu": self.fwd.switch.underlay_mtu,
                "threads": self.fwd.thread_ids(), "thread_mode": self.fwd.mode,
                "busy_poll_us": self.cfg.busy_poll_us, "offload": self.offload_state(),
                "uptime": time.time() - self.started_at}

    def offload_state(self) -> dict[str, Any]:
        """What is on: the TAP's offloads, UDP GSO (send pool), UDP_GRO (receive)."""
        assert self.fwd is not None
        tap = self.fwd.taps[self.cfg.vni]
        st = self.fwd.switch.offload_state()
        return {"mode": self.cfg.offload, "active": st["offload"], "tap": tap.offload_names,
                "udp_gso": st["udp_gso"], "udp_gro": self.fwd.underlay.gro,
                "pool_ports": st["pool_ports"]}

    def stats(self) -> dict[str, Any]:
        assert self.fwd is not None
        sw = self.fwd.switch
        nets = []
        for vni, tap in sorted(self.fwd.taps.items()):
            sizes = sw.table_sizes(vni)
            nets.append({"tap": tap.name, "vni": vni, "mac": tap.mac, "mtu": tap.mtu,
                         "counters": sw.counters(vni), "vteps": sw.vteps(vni),
                         "fdb_size": sizes["fdb"], "neigh_size": sizes["neigh"]})
        out: dict[str, Any] = {"networks": nets, "global": sw.counters(),
                               "loops": sw.loop_stats(), "trace": sw.trace_status(),
                               "offload": self.offload_state()}
        if self.control_plane is not None and hasattr(self.control_plane, "status"):
            out["control"] = self.control_plane.status()
        return out

    def _show(self, q: dict[str, Any]) -> Any:
        assert self.fwd is not None
        what = q.get("what", "stats")
        sw = self.fwd.switch
        if what == "fdb":
            return {"tap": self.cfg.tap, "vni": self._vni(q), "rows": sw.fdb(self._vni(q))}
        if what == "neigh":
            return {"tap": self.cfg.tap, "vni": self._vni(q), "rows": sw.neigh(self._vni(q))}
        if what == "stats":
            return self.stats()
        raise ValueError(f"show what? fdb, neigh or stats (got {what!r})")
