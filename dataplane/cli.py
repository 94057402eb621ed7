"""`vxtap`: the agent and the commands that talk to it over its control socket."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, Sequence

from dataplane import ctlsock, networks, show, tablefile
from fastpath import spec

log = logging.getLogger("vxtap")


def _srcport(s: str) -> tuple[int, int]:
    lo, sep, hi = s.partition("-")
    if not sep or not lo.isdigit() or not hi.isdigit():
        raise argparse.ArgumentTypeError(f"want MIN-MAX, got {s!r}")
    a, b = int(lo), int(hi)
    if not 0 < a < b <= 65536:
        raise argparse.ArgumentTypeError(f"want 1 <= MIN < MAX <= 65536, got {s!r}")
    return a, b


def _flag(parser_fn: Any) -> Any:
    def f(s: str) -> Any:
        try:
            return parser_fn(s)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return f


def _agent_parser(sub: Any) -> None:
    p = sub.add_parser("agent", help="run the data plane agent (foreground)",
                       description="Run the vxtap agent: TAP <-> VXLAN forwarding in user space.")
    p.add_argument("--net", action="append", default=[], metavar="NAME:VNI:TAP[:BRIDGE]",
                   help="a network this agent serves (repeatable: one TAP and bridge per "
                        "VNI); with --etcd, NAME is the etcd network and VNI may be empty "
                        "(NAME::TAP:BRIDGE, taken from etcd). Without --net, --tap/--vni/"
                        "--bridge describe the agent's one network")
    p.add_argument("--tap", default=None, help="TAP device name, created or adopted (default "
                   "vxtap0; flannel.<VNI> with --flannel)")
    p.add_argument("--bridge", help="attach the TAP to this Linux bridge (created if missing)")
    p.add_argument("--vni", type=int, default=None, help="VXLAN network identifier (1..2^24-1)")
    p.add_argument("--local", action="append", default=None, metavar="ADDR",
                   help="underlay address of this node (VTEP): IPv4 or IPv6; give it twice, "
                        "once per family, for dual stack (IPv4 and IPv6 VTEPs at once; with "
                        "etcd the first one is registered); a later one of the same family "
                        "replaces the earlier")
    p.add_argument("--port", type=int, default=None, help=f"UDP port (default {spec.VXLAN_PORT})")
    p.add_argument("--fdb", action="append", default=[], type=_flag(tablefile.parse_fdb_flag),
                   metavar="MAC,VTEP[:PORT]", help="static remote MAC (repeatable)")
    p.add_argument("--neigh", action="append", default=[],
                   type=_flag(tablefile.parse_neigh_flag), metavar="IP,MAC",
                   help="static IP->MAC for ARP suppression (repeatable)")
    p.add_argument("--table", help="file of 'fdb MAC VTEP[:PORT]' / 'neigh IP MAC' lines")
    p.add_argument("--mtu", type=int, help="TAP MTU (default: underlay MTU - 50, - 70 with an "
                                           "IPv6 --local; more is refused unless --force-mtu)")
    p.add_argument("--force-mtu", action="store_true",
                   help="accept --mtu over underlay MTU - 50 (larger frames are dropped)")
    p.add_argument("--underlay-mtu", type=int, help="underlay MTU (default: from the interface)")
    p.add_argument("--mac", help="TAP MAC address (default: random, locally administered)")
    p.add_argument("--netns", help="create the TAP and sockets in this network namespace")
    p.add_argument("--sock", help="control socket path (default /run/vxtap/TAP.sock in the "
                   "host's network namespace, /run/vxtap/netns-<inode>/TAP.sock in any other; "
                   "TAP = the first network's)")
    p.add_argument("--flood", action="store_true",
                   help="replicate broadcast/multicast/unknown unicast to every VTEP "
                        "(default: drop and count)")
    p.add_argument("--lenient", action="store_true",
                   help="accept VXLAN from unknown sources and with reserved bits set "
                        "(default strict: drop and count)")
    p.add_argument("--srcport", type=_srcport, default=(spec.SRCPORT_MIN, spec.SRCPORT_MAX),
                   metavar="MIN-MAX", help="outer UDP source port range (default 32768-61000)")
    p.add_argument("--ttl", type=int, default=spec.DEFAULT_TTL, help="outer TTL")
    p.add_argument("--batch", type=int, default=64, help="packets per batch (1..1024)")
    p.add_argument("--busy-poll", type=int, default=50, metavar="USEC",
                   help="keep polling this many microseconds after the last packet before "
                        "sleeping (default 50: a request/response exchange finds the agent "
                        "awake instead of paying a wake-up; an idle agent still sleeps); "
                        "0 sleeps at once")
    p.add_argument("--threads", choices=["auto", "split", "single", "multi"], default="auto",
                   help="split: a thread per direction; single: one thread for both "
                        "directions; multi: --queues threads, each forwarding both directions "
                        "for its queue of a multi-queue TAP and its SO_REUSEPORT underlay "
                        "socket (flows spread by hash); auto (default): single on machines "
                        "with <= 2 CPUs, else split")
    p.add_argument("--queues", type=int, default=0, metavar="N",
                   help="--threads multi: forwarding threads / TAP queues (default 0: one per "
                        "CPU, at least 2)")
    p.add_argument("--nice", type=int, default=-10,
                   help="nice value of the forwarding threads (default -10, like "
                        "ovs-vswitchd); give 0 to leave them at normal priority")
    p.add_argument("--offload", choices=["auto", "off"], default="auto",
                   help="auto (default): TAP with virtio-net header (checksum/TSO/USO), UDP GSO "
                        "sends and UDP_GRO receive where the kernel accepts them; off: plain "
                        "TAP and raw-socket sends")
    p.add_argument("--udp6zerocsumtx", action="store_true",
                   help="IPv6 underlay: send VXLAN with UDP checksum 0 (as `ip link ... type "
                        "vxlan udp6zerocsumtx`; default: compute it, RFC 8200 requires it)")
    p.add_argument("--udp6zerocsumrx", action="store_true",
                   help="IPv6 underlay: accept VXLAN with UDP checksum 0 (as `ip link ... type "
                        "vxlan udp6zerocsumrx`; default: the kernel drops them)")
    p.add_argument("-v", "--verbose", action="store_true")
    from dataplane import observe
    observe.add_agent_flags(p.add_argument_group("observability (pcap, decision trace, metrics)"))
    g = p.add_argument_group("control plane (etcd)")
    g.add_argument("--etcd", help="etcd endpoints, comma separated (http[s]://host:port)")
    g.add_argument("--network", action="append", default=[],
                   help="overlay network name in etcd (repeatable; several networks need a "
                        "--net NAME::TAP[:BRIDGE] each)")
    g.add_argument("--node", help="this node's name (default: hostname)")
    g.add_argument("--etcd-prefix", default=None,
                   help="key prefix (default /vxtap; /coreos.com/network with --flannel)")
    g.add_argument("--etcd-cacert", help="CA certificate for etcd TLS")
    g.add_argument("--etcd-cert", help="client certificate for etcd TLS")
    g.add_argument("--etcd-key", help="client key for etcd TLS")
    g.add_argument("--etcd-user", help="etcd user name")
    g.add_argument("--etcd-password-file", help="file holding the etcd password")
    g.add_argument("--lease-ttl", type=int, default=10, help="node lease TTL in seconds")
    g.add_argument("--subnet", help="network subnet, to create the network config if absent")
    g.add_argument("--block-size", type=int, default=24, help="per-node block prefix length")
    g.add_argument("--subnet6", help="with --subnet: the IPv6 subnet of a dual-stack network")
    g.add_argument("--block-size6", type=int, default=64,
                   help="per-node IPv6 block prefix length (default 64)")
    from dataplane import flannel_agent
    flannel_agent.add_flannel_args(p)


def _table_parsers(sub: Any) -> None:
    fdb = sub.add_parser("fdb", help="change the MAC -> VTEP table of a running agent")
    fdb.add_argument("action", choices=["add", "del"])
    fdb.add_argument("mac")
    fdb.add_argument("vtep", nargs="?", help="VTEP[:PORT] (add only)")
    neigh = sub.add_parser("neigh", help="change the IP -> MAC table of a running agent")
    neigh.add_argument("action", choices=["add", "del"])
    neigh.add_argument("ip")
    neigh.add_argument("mac", nargs="?", help="MAC (add only)")
    sh = sub.add_parser("show", help="show a running agent's tables and counters")
    sh.add_argument("what", choices=["fdb", "neigh", "stats"])
    sh.add_argument("--json", action="store_true", help="machine-readable output")
    net = sub.add_parser("net", help="add/remove/list the networks of a running agent")
    net.add_argument("action", choices=["add", "del", "list"])
    net.add_argument("spec", nargs="?", help="add: NAME:VNI:TAP[:BRIDGE] (with etcd: "
                     "NAME::TAP[:BRIDGE]); del: NAME")
    net.add_argument("--json", action="store_true", help="machine-readable output (list)")
    net.add_argument("--sock", default=None, help="control socket (default: the agent of "
                     "this network namespace)")
    net.set_defaults(vni=None, net=None)
    for p in (fdb, neigh, sh):
        p.add_argument("--vni", type=int, help="network by VNI (default: the agent's only "
                       "one; show: all)")
        p.add_argument("--net", help="network by name")
        p.add_argument("--sock", default=None,
                       help="control socket (default: the agent of this network namespace)")


def _find_sock(path: str | None) -> str:
    """--sock, or the only agent socket of this network namespace (ctlsock.socket_dir)."""
    if path:
        return path
    d = ctlsock.socket_dir()
    try:
        socks = sorted(f for f in os.listdir(d) if f.endswith(".sock"))
    except FileNotFoundError:
        socks = []
    if len(socks) != 1:
        raise SystemExit(f"vxtap: {'no agent' if not socks else 'several agents'} in "
                         f"{d} (this network namespace's socket directory); "
                         "give --sock PATH")
    return os.path.join(d, socks[0])


def _call(args: argparse.Namespace, req: dict[str, Any], timeout: float = 10.0) -> Any:
    if args.vni is not None:
        req["vni"] = args.vni
    if getattr(args, "net", None) is not None:
        req["net"] = args.net
    path = _find_sock(args.sock)
    try:
        return ctlsock.call(path, req, timeout=timeout)
    except ctlsock.ControlError as e:
        raise SystemExit(f"vxtap: {e}") from None
    except OSError as e:
        raise SystemExit(f"vxtap: cannot reach the agent at {path}: {e}") from None


def _run_agent(args: argparse.Namespace) -> int:
    from dataplane import observe
    from dataplane.agent import Agent, AgentConfig   # imports the Cython switch
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    flannel_conf = None
    nets: list[networks.NetSpec] = []
    if args.local is not None:        # repeatable: one address per family (dual stack)
        from fastpath import addr
        locals_: list[str] = []
        try:
            for a in args.local:          # a later one of the same family replaces it in place
                fam = addr.ip_family(a)
                same = [i for i, x in enumerate(locals_) if addr.ip_family(x) == fam]
                if same:
                    locals_[same[0]] = a
                else:
                    locals_.append(a)
            addr.check_locals(locals_)
        except ValueError as e:
            raise SystemExit(f"vxtap agent: {e}") from None
        if args.flannel and len(locals_) > 1:
            raise SystemExit("vxtap agent: --flannel takes one --local (flannel's PublicIP)")
        args.local = ",".join(locals_)
    if args.flannel:
        from dataplane import flannel_agent
        if args.net:
            raise SystemExit("vxtap agent: --net is not supported with --flannel (one network)")
        try:
            flannel_conf = flannel_agent.flannel_control(args)
        except (ValueError, OSError) as e:
            raise SystemExit(f"vxtap agent: {e}") from None
    else:
        try:
            nets = _agent_networks(args)
        except ValueError as e:
            raise SystemExit(f"vxtap agent: {e}") from None
        if not args.etcd and args.local is None:
            raise SystemExit("vxtap agent: --local is required without --etcd")
    entries: list[Any] = list(args.fdb) + list(args.neigh)
    if args.table:
        try:
            with open(args.table, "rb") as f:        # bytes: errors carry a line number
                entries += tablefile.parse_table(f.read(), args.table)
        except (OSError, ValueError) as e:
            raise SystemExit(f"vxtap agent: --table: {e}") from None
    control = flannel_conf
    if args.etcd and flannel_conf is None:
        password = None
        if args.etcd_password_file:
            with open(args.etcd_password_file) as f:
                password = f.read().strip()
        control = {"endpoints": args.etcd, "network": nets[0].name,
                   "node": args.node or os.uname().nodename, "prefix": args.etcd_prefix or "/vxtap",
                   "cacert": args.etcd_cacert, "cert": args.etcd_cert, "key": args.etcd_key,
                   "user": args.etcd_user, "password": password, "lease_ttl": args.lease_ttl,
                   "subnet": args.subnet, "block_size": args.block_size,
                   "subnet6": args.subnet6, "block_size6": args.block_size6,
                   "vni": args.vni, "port": args.port}
    cfg = AgentConfig(tap=nets[0].tap if nets else args.tap or "vxtap0",
                      vni=nets[0].vni if nets else args.vni or 0, nets=nets,
                      local=args.local or "",
                      port=spec.VXLAN_PORT if args.port is None else args.port, bridge=args.bridge, mtu=args.mtu,
                      force_mtu=args.force_mtu,
                      underlay_mtu=args.underlay_mtu, mac=args.mac, netns=args.netns,
                      sock=args.sock, flood=args.flood, strict=not args.lenient,
                      srcport=args.srcport, ttl=args.ttl, batch=args.batch,
                      busy_poll_us=args.busy_poll, threads=args.threads, queues=args.queues,
                      nice=args.nice,
                      offload=args.offload, udp6zerocsumtx=args.udp6zerocsumtx,
                      udp6zerocsumrx=args.udp6zerocsumrx,
                      entries=entries, control=control,
                      observe=observe.opts_from_args(args))
    if flannel_conf is not None:
        from dataplane.flannel_agent import resolve   # VNI, port, TAP from flannel's config
        try:
            cfg = resolve(cfg)
        except (ValueError, TimeoutError, OSError) as e:
            raise SystemExit(f"vxtap agent: {e}") from None
    elif control is not None and not cfg.local:
        raise SystemExit("vxtap agent: --local (this node's underlay address) is required")
    try:
        agent = Agent(cfg)
    except ValueError as e:
        raise SystemExit(f"vxtap agent: {e}") from None
    from pyroute2.netlink.exceptions import NetlinkError
    try:
        return agent.run()
    except (ValueError, OSError, KeyError, NetlinkError) as e:
        log.error("%s", e.args[0] if isinstance(e, KeyError) and e.args else e)
        return 1


def _agent_networks(args: argparse.Namespace) -> list[networks.NetSpec]:
    """The networks of `vxtap agent` from --net (repeatable) or the one-network shorthand
    --tap/--vni/--bridge (with etcd: --network). Raises ValueError before anything exists."""
    etcd = bool(args.etcd)
    if args.net:
        if args.vni is not None or args.tap is not None or args.bridge or args.mac:
            raise ValueError("give the networks either as --net NAME:VNI:TAP[:BRIDGE] or as "
                             "--tap/--vni/--bridge/--mac (one network), not both")
        specs = [networks.parse(n, vni_optional=etcd) for n in args.net]
        if etcd:
            named = {s.name for s in specs}
            extra = [n for n in args.network if n not in named]
            if extra:
                raise ValueError(f"--network {extra[0]} has no --net {extra[0]}::TAP[:BRIDGE]")
        elif args.network:
            raise ValueError("--network needs --etcd")
        return networks.check_unique(specs)
    tap = args.tap or "vxtap0"
    if etcd:
        if not args.network:
            raise ValueError("--etcd needs --network (or --net NAME::TAP[:BRIDGE])")
        if len(args.network) > 1:
            raise ValueError("several --network need a --net NAME::TAP[:BRIDGE] each (one "
                             "TAP and bridge per network)")
        return [networks.check(args.network[0], args.vni, tap, args.bridge, args.mac,
                               vni_optional=True)]
    if args.vni is None:
        raise ValueError("--vni (or --net NAME:VNI:TAP[:BRIDGE]) is required without --etcd")
    if args.network:
        raise ValueError("--network needs --etcd")
    return [networks.check(tap, args.vni, tap, args.bridge, args.mac)]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vxtap", description="Userspace VXLAN dataplane.")
    sub = p.add_subparsers(dest="cmd", required=True)
    _agent_parser(sub)
    _table_parsers(sub)
    sub.add_parser("endpoint", help="add/del an endpoint record (control plane)",
                   add_help=False)
    sub.add_parser("network", help="create/show a network's config in etcd", add_help=False)
    sub.add_parser("trace", help="packet capture and decision trace", add_help=False)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "endpoint":
        from control.cli import endpoint_main
        return endpoint_main(argv[1:])
    if argv and argv[0] == "network":
        from control.cli import network_main
        return network_main(argv[1:])
    if argv and argv[0] == "trace":
        from dataplane.tracecli import trace_main
        return trace_main(argv[1:])
    args = p.parse_args(argv)
    if args.cmd == "agent":
        return _run_agent(args)
    if args.cmd == "fdb":
        req: dict[str, Any] = {"op": f"fdb_{args.action}", "mac": args.mac}
        if args.action == "add":
            if not args.vtep:
                raise SystemExit("vxtap fdb add: need VTEP[:PORT]")
            try:
                req["vtep"], port = tablefile.parse_vtep(args.vtep)
            except ValueError as e:
                raise SystemExit(f"vxtap fdb add: {e}") from None
            if port:
                req["port"] = port
        _call(args, req)
        return 0
    if args.cmd == "neigh":
        req = {"op": f"neigh_{args.action}", "ip": args.ip}
        if args.action == "add":
            if not args.mac:
                raise SystemExit("vxtap neigh add: need MAC")
            req["mac"] = args.mac
        _call(args, req)
        return 0
    if args.cmd == "show":
        res = _call(args, {"op": "show", "what": args.what})
        if args.json:
            print(json.dumps(res, indent=2))
        elif args.what in ("fdb", "neigh"):
            for t in res.get("networks", [res]):
                if args.what == "fdb":
                    sys.stdout.write(show.format_fdb(t["tap"], t["vni"], t["rows"]))
                else:
                    sys.stdout.write(show.format_neigh(t["tap"], t["rows"]))
        else:
            sys.stdout.write(show.format_stats(res))
        return 0
    if args.cmd == "net":
        return _net_cmd(args)
    return 2


def _net_cmd(args: argparse.Namespace) -> int:
    if args.action == "list":
        rows = _call(args, {"op": "net_list"})
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            sys.stdout.write(show.format_nets(rows))
        return 0
    if not args.spec:
        raise SystemExit(f"vxtap net {args.action}: need "
                         f"{'NAME:VNI:TAP[:BRIDGE]' if args.action == 'add' else 'NAME'}")
    if args.action == "del":
        _call(args, {"op": "net_del", "net": args.spec})
        return 0
    try:
        s = networks.parse(args.spec, vni_optional=True)
    except ValueError as e:
        raise SystemExit(f"vxtap net add: {e}") from None
    req: dict[str, Any] = {"op": "net_add", "net": s.name, "tap": s.tap}
    if s.vni:
        req["vni"] = s.vni
    if s.bridge:
        req["bridge"] = s.bridge
    res = _call(args, req, timeout=60.0)        # with etcd: the network's bootstrap first
    sys.stdout.write(show.format_nets([res]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
