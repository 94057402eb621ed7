"""Wiring the control plane into `vxtap agent`: options, the agent hooks, control socket ops.

dataplane/cli.py builds AgentConfig.control (a dict, see CONTROL_KEYS) from `--etcd ...`, then:

    cfg = control.agent.resolve_config(cfg)     # connect, network config (VNI, port), node block
    agent = Agent(cfg); agent.run()
      -> Agent.start(): self.control_plane = control.agent.start_control_plane(self, cfg.control)
      -> Agent.close(): self.control_plane.stop()          (revokes the node lease)

start_control_plane() registers the ops below on `agent.ctl` (before it serves) and starts the
sync thread driving `agent.fwd.switch`. The returned ControlPlane has stop() and status().

Control socket ops: node_info, endpoint_add, endpoint_del, endpoint_get, endpoint_list,
control_status (see control/README.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable
from typing import Any, Protocol

from .etcd import EtcdSettings, parse_urls
from .keys import DEFAULT_PREFIX
from .records import NetworkConfig
from .sync import DEFAULT_NODE_TTL, ControlPlane

PASSWORD_ENV = "VXTAP_ETCD_PASSWORD"


class HandlerServer(Protocol):
    def register(self, op: str, handler: Callable[[dict[str, Any]], Any]) -> None: ...


# -- command line ----------------------------------------------------------------------------

def add_etcd_args(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    g = parser.add_argument_group("etcd")
    g.add_argument("--etcd", metavar="URLS", required=required,
                   help="comma-separated etcd URLs, tried in order (http:// or https://)")
    g.add_argument("--etcd-prefix", default=DEFAULT_PREFIX, metavar="PREFIX",
                   help=f"key prefix (default {DEFAULT_PREFIX})")
    g.add_argument("--etcd-cacert", metavar="FILE", help="CA bundle for https:// URLs")
    g.add_argument("--etcd-cert", metavar="FILE", help="client certificate (TLS)")
    g.add_argument("--etcd-key", metavar="FILE", help="client key (TLS)")
    g.add_argument("--etcd-user", metavar="USER", help="etcd user (password from "
                   f"--etcd-password-file or ${PASSWORD_ENV})")
    g.add_argument("--etcd-password-file", metavar="FILE", help="file holding the etcd password")
    g.add_argument("--etcd-timeout", type=float, default=5.0, metavar="SECONDS",
                   help="per-request timeout (default 5)")


def add_agent_args(parser: argparse.ArgumentParser) -> None:
    """The agent's control-plane options (all optional: without --etcd there is no control plane)."""
    add_etcd_args(parser)
    g = parser.add_argument_group("control plane")
    g.add_argument("--network", metavar="NAME", help="network name in etcd")
    g.add_argument("--node", metavar="NODE", help="this node's name in etcd")
    g.add_argument("--lease-ttl", type=int, default=DEFAULT_NODE_TTL, metavar="SECONDS",
                   help=f"lease TTL of the node record (default {DEFAULT_NODE_TTL})")
    g.add_argument("--subnet", metavar="CIDR",
                   help="create the network config with this subnet if etcd has none")
    g.add_argument("--block-size", type=int, default=24, metavar="N",
                   help="per-node block size when creating the network config (default 24)")
    g.add_argument("--subnet6", metavar="CIDR6",
                   help="with --subnet: the IPv6 subnet of a dual-stack network config")
    g.add_argument("--block-size6", type=int, default=64, metavar="N",
                   help="per-node IPv6 block prefix length when creating it (default 64)")


def settings_from_args(args: argparse.Namespace) -> EtcdSettings:
    """EtcdSettings from add_etcd_args() options."""
    if not args.etcd:
        raise ValueError("--etcd is required")
    return settings_from_control({
        "endpoints": args.etcd, "cacert": args.etcd_cacert, "cert": args.etcd_cert,
        "key": args.etcd_key, "user": args.etcd_user,
        "password_file": args.etcd_password_file, "timeout": args.etcd_timeout})


# -- control socket ops ------------------------------------------------------------------------

def _str(args: dict[str, Any], name: str, default: str | None = None) -> str:
    value = args.get(name, default)
    if value is None:
        raise ValueError(f"missing argument {name!r}")
    if type(value) is not str:
        raise ValueError(f"argument {name!r} must be a string, not {type(value).__name__}")
    return value


def _opt_str(args: dict[str, Any], name: str) -> str | None:
    value = args.get(name)
    if value is None or value == "":
        return None
    if type(value) is not str:
        raise ValueError(f"argument {name!r} must be a string, not {type(value).__name__}")
    return value


def handlers(cp: ControlPlane, *, bridge: str, mtu: int) -> dict[str, Callable[[dict[str, Any]], Any]]:
    """op name -> handler(args) for the agent's control socket."""

    def node_info(args: dict[str, Any]) -> dict[str, Any]:
        plan = cp.plan()
        assert cp.config is not None
        return {"network": cp.layout.network, "node": cp.node, "vni": cp.config.vni,
                "port": cp.config.port, "mtu": mtu, "bridge": bridge, **plan.to_dict()}

    def endpoint_add(args: dict[str, Any]) -> dict[str, Any]:
        ip, ip6 = _opt_str(args, "ip"), _opt_str(args, "ip6")
        if ip is None and ip6 is None:
            raise ValueError("missing argument 'ip' (or 'ip6')")
        return cp.endpoint_add(_str(args, "container_id"), _str(args, "ifname", "eth0"),
                               _str(args, "mac"), ip, _opt_str(args, "gateway"), ip6,
                               _opt_str(args, "gateway6"))

    def endpoint_del(args: dict[str, Any]) -> dict[str, Any]:
        return cp.endpoint_del(_str(args, "container_id"), _str(args, "ifname", "eth0"))

    def endpoint_get(args: dict[str, Any]) -> dict[str, Any] | None:
        return cp.endpoint_get(_str(args, "container_id"), _str(args, "ifname", "eth0"))

    def endpoint_list(args: dict[str, Any]) -> list[dict[str, Any]]:
        return cp.endpoint_list()

    def control_status(args: dict[str, Any]) -> dict[str, Any]:
        return cp.status()

    return {"node_info": node_info, "endpoint_add": endpoint_add, "endpoint_del": endpoint_del,
            "endpoint_get": endpoint_get, "endpoint_list": endpoint_list,
            "control_status": control_status}


def install(server: HandlerServer, cp: ControlPlane, *, bridge: str, mtu: int) -> None:
    """Register the control-plane ops on the agent's control socket server."""
    for op, fn in handlers(cp, bridge=bridge, mtu=mtu).items():
        server.register(op, fn)


# -- the agent hook ------------------------------------------------------------------------------
#
# AgentConfig.control is the dict dataplane/cli.py builds from `vxtap agent --etcd ...`:
#   endpoints, network, node, prefix, cacert, cert, key, user, password, lease_ttl, subnet,
#   block_size, vni, port   (+ optional: password_file, timeout, bootstrap_timeout)

CONTROL_KEYS = {"endpoints", "network", "node", "prefix", "cacert", "cert", "key", "user",
                "password", "password_file", "lease_ttl", "subnet", "block_size", "vni", "port",
                "subnet6", "block_size6",
                "timeout", "bootstrap_timeout", "_plane"}


def control_config_from_args(args: argparse.Namespace) -> dict[str, Any] | None:
    """The control dict from add_agent_args() options (standalone runner); None without --etcd.
    Raises ValueError for inconsistent options (checked now, before any device is touched)."""
    if not getattr(args, "etcd", None):
        return None
    if not args.network or not args.node:
        raise ValueError("--etcd needs --network and --node")
    conf: dict[str, Any] = {
        "endpoints": args.etcd, "network": args.network, "node": args.node,
        "prefix": args.etcd_prefix, "cacert": args.etcd_cacert, "cert": args.etcd_cert,
        "key": args.etcd_key, "user": args.etcd_user,
        "password_file": args.etcd_password_file, "timeout": args.etcd_timeout,
        "lease_ttl": args.lease_ttl, "subnet": args.subnet, "block_size": args.block_size,
        "subnet6": args.subnet6, "block_size6": args.block_size6,
    }
    settings_from_control(conf)          # validate now
    return conf


def settings_from_control(conf: dict[str, Any]) -> EtcdSettings:
    unknown = set(conf) - CONTROL_KEYS
    if unknown:
        raise ValueError(f"unknown control settings: {', '.join(sorted(unknown))}")
    if not conf.get("endpoints"):
        raise ValueError("control settings: 'endpoints' (etcd URLs) is required")
    password = conf.get("password")
    if conf.get("user") and password is None:
        if conf.get("password_file"):
            with open(conf["password_file"], encoding="utf-8") as f:
                password = f.read().rstrip("\n")
        else:
            password = os.environ.get(PASSWORD_ENV)
        if password is None:
            raise ValueError(f"etcd user needs a password (file) or ${PASSWORD_ENV}")
    return EtcdSettings(urls=tuple(parse_urls(str(conf["endpoints"]))), cafile=conf.get("cacert"),
                        certfile=conf.get("cert"), keyfile=conf.get("key"),
                        username=conf.get("user") or None,
                        password=password if conf.get("user") else None,
                        timeout=float(conf.get("timeout") or 5.0))


def control_plane_from_control(conf: dict[str, Any]) -> ControlPlane:
    """An un-bootstrapped ControlPlane. With `subnet`, `vni` (and `port`) the network config is
    created in etcd if it has none."""
    if not conf.get("network") or not conf.get("node"):
        raise ValueError("control settings: 'network' and 'node' are required")
    init = None
    if conf.get("subnet"):
        if not conf.get("vni") and conf.get("vni") != 0:
            raise ValueError("--subnet needs --vni to create the network config")
        init = NetworkConfig(vni=int(conf["vni"]), subnet=conf["subnet"],
                             block_prefix=int(conf.get("block_size") or 24),
                             port=int(conf.get("port") or 4789),
                             subnet6=conf.get("subnet6") or None,
                             block_prefix6=int(conf.get("block_size6") or 64))
    elif conf.get("subnet6"):
        raise ValueError("--subnet6 needs --subnet (and --vni) to create the network config")
    return ControlPlane(settings_from_control(conf), conf["network"], conf["node"],
                        prefix=conf.get("prefix") or DEFAULT_PREFIX,
                        ttl=int(conf.get("lease_ttl") or DEFAULT_NODE_TTL), init_config=init)


def resolve_config(cfg: Any) -> Any:
    """Before the data plane exists: connect to etcd, read (or create) the network config, take
    this node's block. Returns a copy of the AgentConfig with vni/port from etcd (an explicit
    --vni must match, an explicit --port wins); the bootstrapped ControlPlane travels in
    control["_plane"] to start_control_plane(). Raises ValueError (bad settings, missing config,
    VNI mismatch) or TimeoutError (etcd unreachable for `bootstrap_timeout`, default 30 s)."""
    conf = dict(cfg.control)
    if not cfg.local:
        raise ValueError("--local (this node's underlay address) is required")
    cp = control_plane_from_control(conf)
    net = cp.bootstrap(timeout=float(conf.get("bootstrap_timeout") or 30.0))
    if conf.get("vni") and int(conf["vni"]) != net.vni:
        cp.stop()
        raise ValueError(f"network {conf['network']!r} has VNI {net.vni} in etcd but the agent "
                         f"was given --vni {conf['vni']}")
    conf["_plane"] = cp
    return dataclasses.replace(cfg, vni=net.vni, port=int(conf.get("port") or net.port),
                               control=conf)


def start_control_plane(agent: Any, conf: dict[str, Any]) -> ControlPlane:
    """Hook for dataplane.agent.Agent.start(): after the forwarding threads, before the control
    socket starts serving. Uses agent.cfg (vni, port, local, bridge), agent.fwd (switch = the
    table sink, TAP MAC and MTU) and agent.ctl (ops are registered there)."""
    cfg = agent.cfg
    cp = conf.get("_plane")
    if cp is None:
        cp = control_plane_from_control(dict(conf, vni=conf.get("vni") or cfg.vni,
                                             port=conf.get("port") or cfg.port))
        net = cp.bootstrap(timeout=float(conf.get("bootstrap_timeout") or 30.0))
        if net.vni != cfg.vni:
            cp.stop()
            raise ValueError(f"network {conf['network']!r} has VNI {net.vni} in etcd but the "
                             f"agent runs with VNI {cfg.vni}")
    tap = agent.fwd.taps[cfg.vni]
    install(agent.ctl, cp, bridge=cfg.bridge or "", mtu=int(tap.mtu))
    cp.start(agent.fwd.switch, underlay=cfg.local.split(",")[0].strip(), port=cfg.port,
             tap_mac=tap.mac)
    return cp
