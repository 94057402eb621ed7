"""The vxtap agent: one per node. Owns the TAP of each network, the underlay sockets, the
forwarding threads and the control socket; with --etcd, one control-plane sync per network.

An agent serves one or more networks (VNI + TAP + bridge; dataplane/networks.py). All share
the underlay sockets and the forwarding threads; each has its own tables and counters in the
switch (a frame read from a network's TAP is classified against that network's tables only,
and a datagram is delivered only to the TAP of the VNI in its header).

Start-up order (reverse on shutdown):
  0. check every network spec and static entry (nothing is created before that); with etcd,
     read each network's config (VNI, port) and take this node's block in it;
  1. open the underlay sockets (UDP receive socket bound to local:port, raw send socket(s);
     IPv6 and dual stack: see dataplane/underlay.py);
  2. per network: create or adopt the TAP, set its MAC and MTU (underlay MTU - 50, or - 70
     with an IPv6 local address), attach it to its bridge;
  3. build the fast-path switch and load the static table (flags, --table file);
  4. start the forwarding threads, then the control socket (the agent is "ready" when the
     socket answers), then the control planes (etcd) if configured;
  5. wait for SIGINT/SIGTERM or a forwarding thread failure; tear down what was created.
Networks are added and removed at run time (`net_add`/`net_del` on the control socket,
`vxtap net add|del`) without touching the others.
"""
from __future__ import annotations

import dataclasses
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from dataplane import ctlsock, devices, networks, tablefile, underlay
from dataplane.devices import Tap
from dataplane.forwarder import Forwarder, plan_threads
from dataplane.networks import NetSpec
from dataplane.tablefile import FdbEntry, NeighEntry
from fastpath import addr, spec
from fastpath.switch import Switch

log = logging.getLogger("vxtap.agent")


@dataclass
class AgentConfig:
    tap: str = "vxtap0"
    vni: int = 42
    local: str = ""                         # one address, or "v4,v6" (dual stack)
    port: int = spec.VXLAN_PORT
    bridge: str | None = None
    mtu: int | None = None                  # TAP MTU; default underlay MTU - 50
    force_mtu: bool = False                 # accept mtu + 50 > underlay MTU (with a warning)
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
    queues: int = 0                         # --threads multi: forwarding threads (0: per CPU)
    offload: str = "auto"                   # auto: virtio-net header + UDP GSO/GRO if accepted
    nice: int | None = -10
    udp6zerocsumtx: bool = False            # IPv6: send UDP checksum 0 (kernel vxlan's flag)
    udp6zerocsumrx: bool = False            # IPv6: accept UDP checksum 0
    entries: list[FdbEntry | NeighEntry] = field(default_factory=list)
    nets: list[NetSpec] = field(default_factory=list)   # empty: one network from tap/vni/...
    control: dict[str, Any] | None = None   # etcd settings (control/), None = static table only
    observe: dict[str, Any] | None = None   # dataplane.observe options (pcap, trace, metrics)


@dataclass
class Network:
    """One network the agent serves: its spec, its TAP, its etcd sync (if any)."""
    spec: NetSpec
    tap: Tap
    control: Any = None          # control.sync.ControlPlane with --etcd


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        addr.check_locals(cfg.local)
        addr.check_port(cfg.port)
        # flannel mode (dataplane/flannel_agent.py): one routed network, its VNI already
        # resolved from flannel's config; no per-network etcd syncs, no networks added later
        self._flannel = bool(cfg.control) and cfg.control.get("mode") == "flannel"
        self._etcd = bool(cfg.control) and not self._flannel
        if not cfg.nets:                        # the one-network shorthand
            name = (cfg.control or {}).get("network") or cfg.tap
            cfg = dataclasses.replace(cfg, nets=[networks.check(
                name, cfg.vni, cfg.tap, cfg.bridge, cfg.mac, vni_optional=self._etcd)])
        self.specs = networks.check_unique(cfg.nets)
        if not self._etcd:
            for s in self.specs:
                addr.check_vni(s.vni)
        first = self.specs[0]
        self.cfg = dataclasses.replace(cfg, tap=first.tap, vni=first.vni, bridge=first.bridge)
        # by VNI, in the order they were added; replaced, never mutated (copy on write), so
        # readers (stats, show, ops) iterate a stable snapshot without taking _nets_lock
        self.nets: dict[int, Network] = {}
        self._nets_lock = threading.RLock()     # add/remove of networks (not the tables)
        self.fwd: Forwarder | None = None
        self.ctl: ctlsock.ControlServer | None = None
        self.control_plane: Any = None          # the first network's, for stats()["control"]
        self._pending_cp: dict[str, Any] = {}   # bootstrapped before the devices exist
        self.observe_handle: Any = None
        self.stopping = threading.Event()
        self.failure: str | None = None
        self.started_at = time.time()
        self.tap_mtu = 0
        self.offload_on = False
        self.thread_mode = "single"
        self.queues = 1

    # ---- start / stop ---------------------------------------------------------------------------
    def _check_entries(self) -> None:
        vnis = [s.vni for s in self.specs]
        for e in self.cfg.entries:
            if e.vni is None and len(vnis) > 1:
                raise ValueError(f"table entry {e}: this agent serves several networks "
                                 f"(VNIs {', '.join(map(str, vnis))}): give its vni")
            if e.vni is not None and e.vni not in vnis:
                raise ValueError(f"table entry {e}: no network with VNI {e.vni} "
                                 f"(this agent serves VNI {', '.join(map(str, vnis))})")

    def _bootstrap_etcd(self) -> None:
        """With etcd: every network's VNI and port from its config (and our block in it),
        before any device exists. An explicit --port wins; otherwise all networks must agree
        on one port (one underlay socket serves them all)."""
        from dataplane import etcdnets
        conf = dict(self.cfg.control or {})
        specs, ports = [], {}
        try:
            for s in self.specs:
                cp = etcdnets.bootstrap(conf, s, several=len(self.specs) > 1)
                self._pending_cp[s.name] = cp
                specs.append(dataclasses.replace(s, vni=cp.config.vni))
                ports[s.name] = cp.config.port
            self.specs = networks.check_unique(specs)
        except BaseException:
            for cp in self._pending_cp.values():
                cp.stop()
            self._pending_cp.clear()
            raise
        port = conf.get("port") or ports[self.specs[0].name]
        if not conf.get("port") and len(set(ports.values())) > 1:
            for cp in self._pending_cp.values():
                cp.stop()
            raise ValueError("networks use different UDP ports in etcd ("
                             + ", ".join(f"{n} {p}" for n, p in ports.items())
                             + "): one agent has one underlay port; give --port")
        self.cfg = dataclasses.replace(self.cfg, vni=self.specs[0].vni, port=int(port))

    def start(self) -> None:
        cfg = self.cfg
        if self._etcd:
            self._bootstrap_etcd()
            cfg = self.cfg
        self._check_entries()
        v4, v6 = addr.check_locals(cfg.local)
        ul_mtu = cfg.underlay_mtu
        for a in ([] if ul_mtu else [x for x in (v4, v6) if x]):
            m = devices.link_mtu(cfg.netns, a)
            if m is None:
                raise ValueError(f"no interface has the address {a}"
                                 f"{' in netns ' + cfg.netns if cfg.netns else ''}: "
                                 "give --local an address of this node (or --underlay-mtu)")
            ul_mtu = m if ul_mtu is None else min(ul_mtu, m)
        assert ul_mtu is not None
        # an IPv6 outer header is 20 bytes longer: 70 bytes of overhead (for every peer of a
        # dual-stack agent: one TAP MTU serves both families)
        ovh = spec.VXLAN6_OVERHEAD if v6 else spec.VXLAN_OVERHEAD
        tap_mtu = cfg.mtu or ul_mtu - ovh
        if tap_mtu + ovh > ul_mtu:
            fit = ul_mtu - ovh
            if not cfg.force_mtu:
                raise ValueError(
                    f"--mtu {tap_mtu} does not fit the underlay: {tap_mtu} + "
                    f"{ovh} bytes of VXLAN headers > underlay MTU {ul_mtu}, so "
                    f"every frame over {fit} bytes would be dropped (drop_tx_too_big); use "
                    f"--mtu {fit} or less (or --force-mtu if that is meant)")
            log.warning("--force-mtu: TAP MTU %d + %d > underlay MTU %d: frames over %d bytes "
                        "will be dropped (drop_tx_too_big), never fragmented", tap_mtu,
                        ovh, ul_mtu, fit)
        self.tap_mtu = tap_mtu
        if cfg.offload not in ("auto", "off"):
            raise ValueError(f"offload must be 'auto' or 'off', got {cfg.offload!r}")
        self.offload_on = cfg.offload == "auto"
        self.thread_mode, self.queues = plan_threads(cfg.threads, cfg.queues)
        # the TAPs first: whether they take the virtio-net header decides the switch's mode
        opened: dict[str, Tap] = {}
        try:
            for s in self.specs:
                opened[s.name] = self._open_tap(s)
            refused = [t.name for t in opened.values() if not t.vnet_hdr]
            if self.offload_on and refused:
                # --offload auto: a TAP without the header means no offloads for this agent
                # (the switch has one mode); reopen the others plain and say what is on
                self.offload_on = False
                for name in list(opened):
                    if opened[name].vnet_hdr:
                        opened[name].close()
                        del opened[name]
                for s in self.specs:
                    if s.name not in opened:
                        opened[s.name] = self._open_tap(s)
                log.warning("offloads off: TAP %s refused the virtio-net header "
                            "(IFF_VNET_HDR); running without offloads (TAP checksum/TSO/USO "
                            "off, UDP GSO off, UDP_GRO off: plain TAP, raw-socket sends)",
                            ",".join(refused))
        except Exception:
            for t in opened.values():
                t.close()
            raise
        try:
            self._start_forwarding(cfg, ul_mtu, opened)
        except Exception:
            for t in opened.values():
                if not t.closed:
                    t.close()
            raise

    def _open_tap(self, s: NetSpec) -> Tap:
        return devices.open_tap(s.tap, s.vni, mtu=self.tap_mtu, mac=s.mac, bridge=s.bridge,
                                ns=self.cfg.netns, offload=self.offload_on,
                                queues=self.queues if self.thread_mode == "multi" else 1)

    def _start_forwarding(self, cfg: AgentConfig, ul_mtu: int, opened: dict[str, Tap]) -> None:
        v4, v6 = addr.check_locals(cfg.local)
        sw = Switch(cfg.local, cfg.port, strict=cfg.strict, flood=cfg.flood,
                    srcport=cfg.srcport, ttl=cfg.ttl, batch=cfg.batch, underlay_mtu=ul_mtu,
                    busy_poll_us=cfg.busy_poll_us, offload=self.offload_on,
                    udp6zerocsumtx=cfg.udp6zerocsumtx)
        if self.thread_mode == "multi":
            sw.set_queues(self.queues)
        ul = underlay.open_underlay(cfg.local, cfg.port, cfg.netns,
                                    zerocsumrx=cfg.udp6zerocsumrx,
                                    queues=self.queues if self.thread_mode == "multi" else 1)
        try:
            if ul.raw6 is not None:
                sw.set_raw6(ul.raw6.fileno())
            if self.offload_on:
                if v4:
                    ul.pool = underlay.open_pool(v4, cfg.srcport, cfg.ttl, ns=cfg.netns)
                    sw.set_udp_pool([s.fileno() for s in ul.pool], ul.pool_ports)
                if v6:
                    ul.pool6 = underlay.open_pool(v6, cfg.srcport, cfg.ttl, ns=cfg.netns,
                                                  zerocsumtx=cfg.udp6zerocsumtx)
                    ul.flowinfo6 = underlay.enable_flowinfo(ul.pool6)
                    sw.set_udp_pool([s.fileno() for s in ul.pool6], ul.pool_ports6, family=6,
                                    flowinfo=ul.flowinfo6)
                ul.gro = all([underlay.enable_gro(u) for u in ul.receivers])
        except Exception:
            ul.close()
            raise
        self.fwd = Forwarder(sw, ul, cfg.nice)
        self.fwd.on_failure = self._failed
        try:
            for s in self.specs:
                self._open_network(s, opened.pop(s.name))
        except Exception:
            self.fwd.close()
            self.fwd = None
            raise
        for e in cfg.entries:
            vni = e.vni or self.specs[0].vni
            if isinstance(e, FdbEntry):
                sw.fdb_add(vni, e.mac, e.vtep, e.port)
            else:
                sw.neigh_add(vni, e.ip, e.mac)
        self.fwd.start(self.thread_mode)
        self.ctl = ctlsock.ControlServer(cfg.sock or ctlsock.default_path(cfg.tap, cfg.netns))
        self._register_ops(self.ctl)
        from dataplane import observe
        self.observe_handle = observe.attach(self, cfg.observe or {})
        if self._flannel:
            from dataplane import flannel_agent             # L3 VTEP of a flannel network
            self.control_plane = flannel_agent.start(self, cfg.control)
        elif cfg.control:
            from dataplane import etcdnets                  # one ControlPlane per network
            etcdnets.register_ops(self.ctl, self)
            for s in self.specs:
                self._start_control(self.nets[s.vni], self._pending_cp.pop(s.name))
        self.ctl.start()
        log.info("forwarding: %s, local %s underlay mtu %d, %d static entries, "
                 "control socket %s",
                 ", ".join(f"{s.name} (vni {s.vni} tap {s.tap})" for s in self.specs),
                 " and ".join(addr.join_host_port(a, cfg.port) for a in cfg.local.split(",")),
                 ul_mtu, len(cfg.entries), self.ctl.path)

    def _open_network(self, s: NetSpec, tap: Tap | None = None) -> Network:
        assert self.fwd is not None
        if tap is None:
            tap = self._open_tap(s)
        if self.offload_on and not tap.vnet_hdr:
            tap.close()
            raise OSError(f"TAP {s.tap} refused the virtio-net header (IFF_VNET_HDR) while "
                          "this agent runs with offloads (its other networks have them): "
                          "run the agent with --offload off")
        if self.thread_mode == "multi" and tap.queues < self.queues:
            log.warning("TAP %s has %d of %d queues: forwarding threads %d.. do not read it",
                        s.tap, tap.queues, self.queues, tap.queues)
        if self.offload_on:
            log.info("offloads on: TAP %s %s (virtio-net header), UDP GSO on %d send sockets "
                     "(source ports %s), UDP_GRO %s", s.tap, ",".join(tap.offload_names)
                     or "none (kernel refused TUNSETOFFLOAD)",
                     len(self.fwd.underlay.pool) + len(self.fwd.underlay.pool6),
                     ",".join(map(str, sorted(set(self.fwd.underlay.pool_ports
                                                  + self.fwd.underlay.pool_ports6)))),
                     "on" if self.fwd.underlay.gro else "refused")
        else:
            log.info("offloads off (%s): TAP %s plain, raw-socket sends",
                     "--offload off" if self.cfg.offload == "off"
                     else "a TAP refused the virtio-net header", s.tap)
        try:
            self.fwd.add_tap(tap)
        except Exception:
            tap.close()
            raise
        net = Network(s, tap)
        self.nets = {**self.nets, s.vni: net}
        return net

    def _start_control(self, net: Network, cp: Any) -> None:
        net.control = cp
        cp.start(self.fwd.switch if self.fwd else None, underlay=self.primary_local(),
                 port=self.cfg.port, tap_mac=net.tap.mac)
        if self.control_plane is None:
            self.control_plane = cp

    def primary_local(self) -> str:
        """The underlay address registered in etcd: the first --local given."""
        return self.cfg.local.split(",")[0].strip()

    # ---- networks at run time ---------------------------------------------------------------------
    def add_network(self, s: NetSpec) -> dict[str, Any]:
        """Serve one more network now (no restart; the others are not touched)."""
        with self._nets_lock:
            if self.fwd is None:
                raise ValueError("agent not running")
            if self._flannel:
                raise ValueError("a flannel-mode agent serves flannel's one network")
            cp = None
            if self._etcd:
                from dataplane import etcdnets
                networks.check_unique([n.spec for n in self.nets.values()]
                                      + [dataclasses.replace(s, vni=0)])
                cp = etcdnets.bootstrap(dict(self.cfg.control), s, several=True)
                if cp.config.port != self.cfg.port:
                    cp.stop()
                    raise ValueError(f"network {s.name} uses UDP port {cp.config.port} in "
                                     f"etcd, this agent's underlay port is {self.cfg.port}")
                s = dataclasses.replace(s, vni=cp.config.vni)
            try:
                networks.check_unique([n.spec for n in self.nets.values()] + [s])
                net = self._open_network(s)
            except BaseException:
                if cp is not None:
                    cp.stop()
                raise
            if cp is not None:
                self._start_control(net, cp)
            log.info("network %s added: vni %d tap %s%s", s.name, s.vni, s.tap,
                     f" bridge {s.bridge}" if s.bridge else "")
            return self._net_info(net)

    def remove_network(self, key: str | int) -> dict[str, Any]:
        """Stop serving a network (by name or VNI): its sync stops (lease revoked), its tables
        and counters go, its TAP (and a bridge we created) are removed."""
        with self._nets_lock:
            if self.fwd is None:
                raise ValueError("agent not running")
            net = self._find_net(key)
            if len(self.nets) == 1:
                raise ValueError(f"{net.spec.name} is the agent's last network; stop the "
                                 "agent instead")
            if net.control is not None:
                try:
                    net.control.stop()
                except Exception as e:  # noqa: BLE001 -- the network goes anyway
                    log.warning("stopping the control plane of %s: %s", net.spec.name, e)
                if self.control_plane is net.control:
                    others = [n.control for n in self.nets.values() if n is not net]
                    self.control_plane = others[0]
            info = self._net_info(net)
            self.nets = {v: n for v, n in self.nets.items() if n is not net}
            self.fwd.remove_tap(net.spec.vni)
            if net.spec.vni == self.cfg.vni:          # the "first" network moves on
                first = next(iter(self.nets.values())).spec
                self.cfg = dataclasses.replace(self.cfg, vni=first.vni, tap=first.tap,
                                               bridge=first.bridge)
            log.info("network %s removed (vni %d, tap %s)", net.spec.name, net.spec.vni,
                     net.spec.tap)
            return info

    def _find_net(self, key: Any) -> Network:
        for n in self.nets.values():
            if key == n.spec.name or (isinstance(key, int) and not isinstance(key, bool)
                                      and key == n.spec.vni):
                return n
        raise KeyError(f"no network {key!r} (this agent serves "
                       f"{', '.join(n.spec.name for n in self.nets.values())})")

    def _net_info(self, net: Network) -> dict[str, Any]:
        return {**net.spec.to_dict(), "mac": net.tap.mac, "mtu": net.tap.mtu,
                "etcd": net.control is not None}

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
        cps = [n.control for n in self.nets.values() if n.control is not None] + list(
            self._pending_cp.values())
        if self.control_plane is not None and self.control_plane not in cps:
            cps.append(self.control_plane)           # flannel mode's
        for cp in cps:
            try:
                cp.stop()
            except Exception as e:
                log.warning("stopping the control plane: %s", e)
        self._pending_cp.clear()
        for n in self.nets.values():
            n.control = None
        self.control_plane = None
        if self.ctl:
            self.ctl.close()
            self.ctl = None
        if self.fwd:
            self.fwd.close()
            self.fwd = None

    # ---- control socket ops --------------------------------------------------------------------
    def _vni(self, req: dict[str, Any]) -> int:
        """The network a request is about: "vni" or "net" (name); the only network if neither."""
        if req.get("net") is not None:
            n = self._find_net(req["net"])
            if req.get("vni") is not None and req["vni"] != n.spec.vni:
                raise ValueError(f"network {n.spec.name} has VNI {n.spec.vni}, not "
                                 f"{req['vni']}")
            return n.spec.vni
        if req.get("vni") is not None:
            return addr.check_vni(req["vni"])
        if len(self.nets) > 1:
            raise ValueError("this agent serves several networks ("
                             + ", ".join(f"{n.spec.name} vni {n.spec.vni}"
                                         for n in self.nets.values())
                             + "): give vni or net")
        return self.cfg.vni

    def _selected(self, q: dict[str, Any]) -> list[Network]:
        """show: the network selected by vni/net, or all of them."""
        if q.get("vni") is None and q.get("net") is None:
            return list(self.nets.values())
        vni = self._vni(q)
        if vni not in self.nets:
            raise KeyError(f"no network with VNI {vni}")
        return [self.nets[vni]]

    def _register_ops(self, srv: ctlsock.ControlServer) -> None:
        assert self.fwd is not None
        sw = self.fwd.switch
        r = srv.register
        a = ctlsock.arg
        r("fdb_add", self._op_fdb_add)
        r("fdb_del", lambda q: sw.fdb_del(self._vni(q), a(q, "mac")))
        r("neigh_add", lambda q: sw.neigh_add(self._vni(q), a(q, "ip"), a(q, "mac")))
        r("neigh_del", lambda q: sw.neigh_del(self._vni(q), a(q, "ip")))
        r("show", self._show)
        r("info", lambda q: self.info())
        r("net_add", self._op_net_add)
        r("net_del", lambda q: self.remove_network(a(q, "net")))
        r("net_list", lambda q: [self._net_info(n) for n in self.nets.values()])

    def _op_fdb_add(self, q: dict[str, Any]) -> None:
        """vtep: an address of either family, or VTEP:PORT / [IPv6]:PORT (port may also be
        given as "port"; both must then agree)."""
        assert self.fwd is not None
        host, port = tablefile.parse_vtep(ctlsock.arg(q, "vtep"))
        if port is not None and q.get("port") is not None and q["port"] != port:
            raise ValueError(f"vtep {q['vtep']} and port {q['port']} disagree")
        self.fwd.switch.fdb_add(self._vni(q), ctlsock.arg(q, "mac"), host,
                                q.get("port") if q.get("port") is not None else port)

    def _op_net_add(self, q: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(q) - {"op", "net", "vni", "tap", "bridge", "mac"})
        if unknown:
            raise ValueError(f"net_add: unknown argument(s) {', '.join(unknown)}")
        s = networks.check(ctlsock.arg(q, "net"), q.get("vni"), ctlsock.arg(q, "tap"),
                           q.get("bridge"), q.get("mac"), vni_optional=self._etcd)
        return self.add_network(s)

    def info(self) -> dict[str, Any]:
        assert self.fwd is not None
        first = self.nets.get(self.cfg.vni)
        return {"tap": self.cfg.tap, "vni": self.cfg.vni, "local": self.cfg.local,
                "port": self.cfg.port, "netns": self.cfg.netns, "bridge": self.cfg.bridge,
                "mac": first.tap.mac if first else None, "mtu": self.tap_mtu,
                "networks": [self._net_info(n) for n in self.nets.values()],
                "underlay_mtu": self.fwd.switch.underlay_mtu,
                "threads": self.fwd.thread_ids(), "thread_mode": self.fwd.mode,
                "busy_poll_us": self.cfg.busy_poll_us, "offload": offload_state(self),
                "uptime": time.time() - self.started_at}

    def offload_state(self) -> dict[str, Any]:
        return offload_state(self)

    def stats(self, selected: list[Network] | None = None) -> dict[str, Any]:
        assert self.fwd is not None
        sw = self.fwd.switch
        nets = []
        for n in (list(self.nets.values()) if selected is None else selected):
            vni, tap = n.spec.vni, n.tap
            sizes = sw.table_sizes(vni)
            entry = {"net": n.spec.name, "tap": tap.name, "vni": vni, "mac": tap.mac,
                     "mtu": tap.mtu, "bridge": n.spec.bridge,
                     "counters": sw.counters(vni), "vteps": sw.vteps(vni),
                     "fdb_size": sizes["fdb"], "neigh_size": sizes["neigh"],
                     "kernel": {"tap_queue_dropped": devices.link_drops(
                         tap.netns, tap.name).get("tx_dropped", 0)}}
            if n.control is not None and hasattr(n.control, "status"):
                entry["control"] = n.control.status()
            nets.append(entry)
        kernel: dict[str, Any] = {"udp_socket_dropped": self.fwd.underlay.kernel_drops()}
        if sw.has6:                     # IPv6 underlay: what the kernel dropped before us
            kernel["ip6"] = underlay.kernel_ip6_drops(self.cfg.netns)
        out: dict[str, Any] = {"networks": nets, "global": sw.counters(),
                               "kernel": kernel,
                               "loops": sw.loop_stats(), "trace": sw.trace_status(),
                               "offload": offload_state(self)}
        if self.control_plane is not None and hasattr(self.control_plane, "status"):
            out["control"] = self.control_plane.status()
        return out

    def _show(self, q: dict[str, Any]) -> Any:
        assert self.fwd is not None
        what = q.get("what", "stats")
        sw = self.fwd.switch
        nets = self._selected(q)
        if what in ("fdb", "neigh"):
            tables = [{"net": n.spec.name, "tap": n.spec.tap, "vni": n.spec.vni,
                       "rows": sw.fdb(n.spec.vni) if what == "fdb" else sw.neigh(n.spec.vni)}
                      for n in nets]
            if len(tables) == 1:                      # one network: the historical shape
                return tables[0]
            return {"networks": tables}
        if what == "stats":
            return self.stats(nets)
        raise ValueError(f"show what? fdb, neigh or stats (got {what!r})")


def offload_state(agent: Any) -> dict[str, Any]:
    """What is on: the TAP's offloads, UDP GSO (send pool), UDP_GRO (receive)."""
    fwd = agent.fwd
    taps = list(fwd.taps.values())
    st = fwd.switch.offload_state()
    ul = getattr(fwd, "underlay", None)
    return {"mode": getattr(agent.cfg, "offload", "off"), "active": st["offload"],
            "tap": getattr(taps[0], "offload_names", []) if taps else [],
            "udp_gso": st["udp_gso"], "udp_gro": bool(getattr(ul, "gro", False)),
            "pool_ports": st["pool_ports"],
            **({"udp_gso6": st["udp_gso6"], "pool_ports6": st["pool_ports6"],
                "flowinfo6": bool(getattr(ul, "flowinfo6", False))} if "udp_gso6" in st else {})}
