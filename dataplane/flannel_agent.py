"""`vxtap agent --flannel`: the agent as a drop-in vxlan peer of flanneld nodes.

    vxtap agent --flannel --etcd URL [--etcd-prefix /coreos.com/network] --local IP [--iface DEV]

1. flannel_control(args) (dataplane/cli.py): the control dict, checked before any device exists.
2. resolve(cfg): connect, read `<prefix>/config`: VNI (default 1), port (default 8472), MTU;
   the TAP is `flannel.<VNI>` unless --tap says otherwise, on no bridge (it is routed, L3).
3. start(agent, conf) (Agent.start, after the forwarding threads): acquire the subnet lease
   with the TAP's MAC as VtepMAC, write subnet.env, put 10.5.X.0/32 on the TAP, follow
   `<prefix>/subnets/` (control/flannel_sync.py) programming the fast path and the kernel
   (dataplane/l3.py). Agent.close() calls stop(): lease key deleted, routes removed.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
from typing import Any

log = logging.getLogger("vxtap.flannel")


def add_flannel_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("flannel mode (join a flannel network as a vxlan peer)")
    g.add_argument("--flannel", action="store_true",
                   help="join the flannel network in etcd (--etcd; prefix default "
                        "/coreos.com/network): subnet lease, routes, subnet.env")
    g.add_argument("--iface", metavar="DEV",
                   help="underlay interface; its first IPv4 address is --local if not given")
    g.add_argument("--subnet-file", default=None, metavar="PATH",
                   help="where to write FLANNEL_* (default /run/flannel/subnet.env)")
    g.add_argument("--subnet-lease-renew-margin", type=float, default=60.0, metavar="MINUTES",
                   help="renew the subnet lease this long before it expires (default 60, "
                        "like flanneld)")
    g.add_argument("--subnet-lease-ttl", type=int, default=None, metavar="SECONDS",
                   help="TTL of the subnet lease (default 86400, flannel's)")
    g.add_argument("--ip-masq", action="store_true",
                   help="refused: vxtap installs no masquerade rules (flanneld's --ip-masq "
                        "does); kept so that the error says so instead of 'unrecognized'")


def _iface_ip(dev: str, ns: str | None) -> str:
    from pyroute2 import IPRoute

    from dataplane.netns import netns
    with netns(ns), IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=dev)
        if not idx:
            raise ValueError(f"--iface {dev}: no such interface")
        for a in ipr.get_addr(family=2, index=idx[0]):
            return str(a.get_attr("IFA_ADDRESS"))
    raise ValueError(f"--iface {dev}: the interface has no IPv4 address")


def flannel_control(args: argparse.Namespace) -> dict[str, Any]:
    """The AgentConfig.control dict of flannel mode. ValueError for bad options."""
    from control.flannel import DEFAULT_PREFIX, DEFAULT_SUBNET_FILE, LEASE_TTL
    if not args.etcd:
        raise ValueError("--flannel needs --etcd URL")
    if args.ip_masq:
        # flanneld's --ip-masq installs NAT rules (POSTROUTING: pod network -> outside is
        # MASQUERADEd); vxtap has none, and a flag that silently does nothing is worse than none
        raise ValueError("--ip-masq is not supported: vxtap installs no masquerade rules. "
                         "Drop the flag and masquerade pod traffic leaving the node yourself, "
                         "e.g. iptables -t nat -A POSTROUTING -s <FLANNEL_NETWORK> "
                         "! -d <FLANNEL_NETWORK> -j MASQUERADE")
    if args.network or args.bridge or args.vni is not None or args.port is not None:
        raise ValueError("--flannel takes the VNI and port from the flannel config and routes "
                         "instead of bridging: drop --network/--bridge/--vni/--port")
    if not args.local:
        if not args.iface:
            raise ValueError("--flannel needs --local IP or --iface DEV")
        args.local = _iface_ip(args.iface, args.netns)
    password = None
    if args.etcd_password_file:
        with open(args.etcd_password_file) as f:
            password = f.read().strip()
    return {"mode": "flannel", "endpoints": args.etcd,
            "prefix": args.etcd_prefix or DEFAULT_PREFIX,
            "cacert": args.etcd_cacert, "cert": args.etcd_cert, "key": args.etcd_key,
            "user": args.etcd_user, "password": password,
            "subnet_file": args.subnet_file or DEFAULT_SUBNET_FILE,
            "lease_ttl": args.subnet_lease_ttl or LEASE_TTL,
            "renew_margin": args.subnet_lease_renew_margin * 60.0,
            "ipmasq": bool(args.ip_masq), "tap_given": args.tap is not None}


def _settings(conf: dict[str, Any]) -> Any:
    from control.etcd import EtcdSettings, parse_urls
    return EtcdSettings(urls=tuple(parse_urls(str(conf["endpoints"]))), cafile=conf.get("cacert"),
                        certfile=conf.get("cert"), keyfile=conf.get("key"),
                        username=conf.get("user") or None,
                        password=conf.get("password") if conf.get("user") else None)


def resolve(cfg: Any) -> Any:
    """Before the data plane exists: read the flannel config; returns the AgentConfig with the
    network's VNI, port, TAP name and MTU. ValueError / TimeoutError as load_config()."""
    from control.flannel_sync import FlannelControl
    from fastpath import spec
    conf = dict(cfg.control)
    if not cfg.local:
        raise ValueError("--local (this node's PublicIP) is required")
    fc = FlannelControl(_settings(conf), public_ip=cfg.local, prefix=conf["prefix"],
                        subnet_file=conf["subnet_file"], lease_ttl=int(conf["lease_ttl"]),
                        renew_margin=float(conf["renew_margin"]), ipmasq=conf["ipmasq"])
    net = fc.load_config(timeout=float(conf.get("bootstrap_timeout") or 30.0))
    be = net.backend
    log.info("flannel network %s: SubnetLen %d, %s .. %s, vxlan VNI %d port %d", net.network,
             net.subnet_len, net.subnet_min, net.subnet_max, be.vni, be.port)
    conf["_plane"] = fc
    mtu = cfg.mtu or (be.mtu - spec.VXLAN_OVERHEAD if be.mtu else None)
    tap = cfg.tap if conf.get("tap_given") else f"flannel.{be.vni}"
    return dataclasses.replace(cfg, vni=be.vni, port=be.port, tap=tap, bridge=None, mtu=mtu,
                               control=conf)


def start(agent: Any, conf: dict[str, Any]) -> Any:
    """Agent.start() hook: lease, subnet.env, address, watch. Returns the FlannelControl
    (stop(), status()); registers `flannel_status` on the control socket."""
    from dataplane.l3 import FlannelDataplaneSink, L3Vtep
    fc = conf["_plane"]
    cfg = agent.cfg
    _warn_no_forwarding(cfg.netns)
    tap = agent.fwd.taps[cfg.vni]
    vtep = L3Vtep(tap.name, cfg.netns)
    fc.acquire(tap.mac, int(tap.mtu), timeout=float(conf.get("bootstrap_timeout") or 30.0))
    try:
        fc.start(FlannelDataplaneSink(agent.fwd.switch, vtep))
    except BaseException:
        fc.stop()
        vtep.close()
        raise
    agent.ctl.register("flannel_status", lambda q: fc.status())
    return _Plane(fc, vtep)


def _warn_no_forwarding(ns: str | None) -> None:
    """Pods reach other subnets only if the node routes between cni0 and the TAP."""
    from dataplane.netns import netns
    try:
        with netns(ns), open("/proc/sys/net/ipv4/ip_forward") as f:
            on = f.read().strip() == "1"
    except OSError:
        return
    if not on:
        log.warning("net.ipv4.ip_forward is 0%s: pods will not reach other nodes' subnets "
                    "(sysctl -w net.ipv4.ip_forward=1)", f" in netns {ns}" if ns else "")


class _Plane:
    """What the agent holds as its control plane: stop() and status()."""

    def __init__(self, fc: Any, vtep: Any) -> None:
        self.fc, self.vtep = fc, vtep

    def status(self) -> dict[str, Any]:
        return {"mode": "flannel", **self.fc.status()}

    def stop(self) -> None:
        try:
            self.fc.stop()
        finally:
            self.vtep.close()
