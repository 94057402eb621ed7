"""Wiring the control plane into `vxtap agent`: command-line options and control socket ops.

The agent (dataplane/agent.py) calls, when started with --etcd:

    cfg.control = control.agent.control_config_from_args(args)     # dict, or None without --etcd
    ...
    self.control_plane = control.agent.start_control_plane(self, cfg.control)

start_control_plane() connects (blocking up to `bootstrap_timeout`), reads or creates the
network config, takes this node's address block, registers the ops below on `agent.ctl`, and
starts the sync thread driving `agent.fwd.switch`. The returned ControlPlane has stop() and
status().

Control socket ops: node_info, endpoint_add, endpoint_del, endpoint_get, endpoint_list,
control_status (see control/README.md).
"""

from __future__ import annotations

import argparse
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
    g.add_argument("--etcd-cafile", metavar="FILE", help="CA bundle for https:// URLs")
    g.add_argument("--etcd-certfile", metavar="FILE", help="client certificate (TLS)")
    g.add_argument("--etcd-keyfile", metavar="FILE", help="client key (TLS)")
    g.add_argument("--etcd-username", metavar="USER", help="etcd user (password from "
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
    g.add_argument("--node-ttl", type=int, default=DEFAULT_NODE_TTL, metavar="SECONDS",
                   help=f"lease TTL of the node record (default {DEFAULT_NODE_TTL})")
    g.add_argument("--subnet", metavar="CIDR",
                   help="create the network config with this subnet if etcd has none")
    g.add_argument("--block-prefix", type=int, default=24, metavar="N",
                   help="per-node block size when creating the network config (default 24)")


def settings_from_args(args: argparse.Namespace) -> EtcdSettings:
    """EtcdSettings from add_etcd_args() options."""
    if not args.etcd:
        raise ValueError("--etcd is required")
    return settings_from_control({
        "etcd": args.etcd, "cafile": args.etcd_cafile, "certfile": args.etcd_certfile,
        "keyfile": args.etcd_keyfile, "username": args.etcd_username,
        "password_file": args.etcd_password_file, "timeout": args.etcd_timeout})


# -- control socket ops ------------------------------------------------------------------------

def _str(args: dict[str, Any], name: str, default: str | None = None) -> str:
    value = args.get(name, default)
    if value is None:
        raise ValueError(f"missing argument {name!r}")
    if not isinstance(value, str):
        raise ValueError(f"argument {name!r} must be a string, not {type(value).__name__}")
    return value


def _opt_str(args: dict[str, Any], name: str) -> str | None:
    value = args.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
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
        return cp.endpoint_add(_str(args, "container_id"), _str(args, "ifname", "eth0"),
                               _str(args, "mac"), _str(args, "ip"), _opt_str(args, "gateway"))

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

CONTROL_KEYS = {"etcd", "network", "node", "prefix", "cafile", "certfile", "keyfile", "username",
                "password", "password_file", "timeout", "node_ttl", "subnet", "block_prefix",
                "bootstrap_timeout"}


def control_config_from_args(args: argparse.Namespace) -> dict[str, Any] | None:
    """The `AgentConfig.control` dict from add_agent_args() options; None without --etcd.
    Raises ValueError for inconsistent options (checked now, before any device is touched)."""
    if not getattr(args, "etcd", None):
        return None
    if not args.network or not args.node:
        raise ValueError("--etcd needs --network and --node")
    conf: dict[str, Any] = {
        "etcd": args.etcd, "network": args.network, "node": args.node,
        "prefix": args.etcd_prefix, "cafile": args.etcd_cafile, "certfile": args.etcd_certfile,
        "keyfile": args.etcd_keyfile, "username": args.etcd_username,
        "password_file": args.etcd_password_file, "timeout": args.etcd_timeout,
        "node_ttl": args.node_ttl, "subnet": args.subnet, "block_prefix": args.block_prefix,
    }
    settings_from_control(conf)          # validate now
    return conf


def settings_from_control(conf: dict[str, Any]) -> EtcdSettings:
    unknown = set(conf) - CONTROL_KEYS
    if unknown:
        raise ValueError(f"unknown control settings: {', '.join(sorted(unknown))}")
    if not conf.get("etcd"):
        raise ValueError("control settings: 'etcd' (URLs) is required")
    password = conf.get("password")
    if conf.get("username") and password is None:
        if conf.get("password_file"):
            with open(conf["password_file"], encoding="utf-8") as f:
                password = f.read().rstrip("\n")
        else:
            password = os.environ.get(PASSWORD_ENV)
        if password is None:
            raise ValueError(f"etcd username needs a password file or ${PASSWORD_ENV}")
    return EtcdSettings(urls=tuple(parse_urls(str(conf["etcd"]))), cafile=conf.get("cafile"),
                        certfile=conf.get("certfile"), keyfile=conf.get("keyfile"),
                        username=conf.get("username") or None, password=password,
                        timeout=float(conf.get("timeout") or 5.0))


def control_plane_from_control(conf: dict[str, Any], *, vni: int, port: int) -> ControlPlane:
    if not conf.get("network") or not conf.get("node"):
        raise ValueError("control settings: 'network' and 'node' are required")
    init = None
    if conf.get("subnet"):
        init = NetworkConfig(vni=vni, subnet=conf["subnet"],
                             block_prefix=int(conf.get("block_prefix") or 24), port=port)
    return ControlPlane(settings_from_control(conf), conf["network"], conf["node"],
                        prefix=conf.get("prefix") or DEFAULT_PREFIX,
                        ttl=int(conf.get("node_ttl") or DEFAULT_NODE_TTL), init_config=init)


def start_control_plane(agent: Any, conf: dict[str, Any]) -> ControlPlane:
    """Hook for dataplane.agent.Agent.start(): after the forwarding threads, before the control
    socket starts serving. Uses agent.cfg (vni, port, local, bridge), agent.fwd (switch = the
    table sink, TAP MAC and MTU) and agent.ctl (ops are registered there)."""
    cfg = agent.cfg
    cp = control_plane_from_control(conf, vni=cfg.vni, port=cfg.port)
    net = cp.bootstrap(timeout=float(conf.get("bootstrap_timeout") or 30.0))
    if net.vni != cfg.vni:
        cp.stop()
        raise ValueError(f"network {conf['network']!r} has VNI {net.vni} in etcd but the agent "
                         f"runs with --vni {cfg.vni}")
    tap = agent.fwd.taps[cfg.vni]
    install(agent.ctl, cp, bridge=cfg.bridge or "", mtu=int(tap.mtu))
    cp.start(agent.fwd.switch, underlay=cfg.local, port=cfg.port, tap_mac=tap.mac)
    return cp
