"""`vxtap endpoint ...` and `vxtap network ...`: endpoints without CNI, network config by hand.

    vxtap endpoint add NAME --mac MAC --ip IP/PREFIX [--gateway IP] [--ifname eth0]
                            (--sock PATH | --etcd URLS --network NET --node NODE)
    vxtap endpoint del NAME [--ifname eth0] (--sock PATH | --etcd URLS --network NET)
    vxtap endpoint list     (--sock PATH | --etcd URLS --network NET)
    vxtap endpoint gc --node NODE [--force] [--dry-run] --etcd URLS --network NET
    vxtap network set NET --vni N --subnet CIDR [--block-size 24] [--port 4789] --etcd URLS
    vxtap network show NET --etcd URLS

With --sock (default: the only socket in /run/vxtap) the agent on that control socket does the
etcd write (and the node is the agent's);
with --etcd the command writes to etcd itself. `gc` removes every endpoint of a node whose agent is
gone for good (its pods' CNI DEL could not reach it), with their MAC/IP index keys; it refuses a
node whose key is alive unless --force. Output is JSON on stdout; errors go to stderr with
exit code 1 (2 for usage errors).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from . import ctlclient
from . import endpoints as eps
from .agent import add_etcd_args, settings_from_args
from .etcd import ETCD_ERRORS, close_quietly, connect, describe
from .keys import Layout
from .records import NetworkConfig

DEFAULT_SOCK = "/run/vxtap/vxtap0.sock"


def _print(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _report(what: str, run: Callable[[], Any]) -> int:
    """Run a command's action and report it as every command here does: its result as JSON on
    stdout and exit code 0, or "WHAT: error" on stderr ("WHAT: etcd: ..." when etcd failed)
    and exit code 1. The agent's errors can only come from an `endpoint` command's --sock."""
    try:
        res = run()
    except (ValueError, OSError, ctlclient.AgentError, ctlclient.AgentUnreachable) as e:
        print(f"{what}: {e}", file=sys.stderr)
        return 1
    except ETCD_ERRORS as e:
        print(f"{what}: etcd: {describe(e)}", file=sys.stderr)
        return 1
    _print(res)
    return 0


def _etcd_run(args: argparse.Namespace, fn: Any) -> Any:
    settings = settings_from_args(args)
    layout = Layout(args.etcd_prefix, args.network)
    client, _ = connect(settings, layout.config)
    try:
        return fn(client, layout)
    finally:
        close_quietly(client)


def _only_socket(p: argparse.ArgumentParser) -> str:
    """The agent socket when exactly one agent runs here (like the other `vxtap` commands)."""
    try:
        socks = sorted(f for f in os.listdir(ctlclient.DEFAULT_SOCK_DIR) if f.endswith(".sock"))
    except OSError:
        socks = []
    if len(socks) != 1:
        p.error(f"{'no agent' if not socks else 'several agents'} in {ctlclient.DEFAULT_SOCK_DIR}; "
                "give --sock PATH or --etcd URLS")
    return os.path.join(ctlclient.DEFAULT_SOCK_DIR, socks[0])


def endpoint_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="vxtap endpoint", description="Add, delete or list endpoints.")
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--sock", help=f"agent control socket (e.g. {DEFAULT_SOCK})")
        add_etcd_args(sp)
        sp.add_argument("--network", help="network name (with --etcd; with --sock: which of "
                        "the agent's networks, when it serves several)")

    a = sub.add_parser("add", help="register an endpoint")
    a.add_argument("name", help="endpoint name (container id)")
    a.add_argument("--ifname", default="eth0")
    a.add_argument("--mac", required=True)
    a.add_argument("--ip", help="IPv4 address with prefix, e.g. 10.244.1.5/16")
    a.add_argument("--gateway", help="IPv4 gateway")
    a.add_argument("--ip6", help="IPv6 address with prefix, e.g. fd00:10:244:1::5/48")
    a.add_argument("--gateway6", help="IPv6 gateway")
    a.add_argument("--node", help="owning node (with --etcd)")
    common(a)
    d = sub.add_parser("del", help="remove an endpoint")
    d.add_argument("name")
    d.add_argument("--ifname", default="eth0")
    common(d)
    ls = sub.add_parser("list", help="list the network's endpoints")
    common(ls)
    g = sub.add_parser("gc", help="remove the endpoints of a node whose agent is gone for good")
    g.add_argument("--node", required=True, help="the dead node")
    g.add_argument("--force", action="store_true", help="even if the node's key is alive")
    g.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    common(g)
    args = p.parse_args(list(argv))
    if args.cmd == "gc" and (args.sock or not args.etcd):
        p.error("endpoint gc works on etcd directly: give --etcd URLS --network NET")

    if args.sock and args.etcd:
        p.error("give --sock or --etcd, not both")
    if not args.sock and not args.etcd:
        args.sock = _only_socket(p)
    if args.etcd and not args.network:
        p.error("--etcd needs --network")
    if args.cmd == "add" and not args.ip and not args.ip6:
        p.error("endpoint add needs --ip and/or --ip6")
    if args.etcd and args.cmd == "add" and not args.node:
        p.error("endpoint add with --etcd needs --node")

    def run() -> Any:
        if args.sock:
            net = {"network": args.network} if args.network else {}
            if args.cmd == "add":
                res = ctlclient.call(args.sock, "endpoint_add", container_id=args.name,
                                     ifname=args.ifname, mac=args.mac, ip=args.ip,
                                     gateway=args.gateway, ip6=args.ip6,
                                     gateway6=args.gateway6, **net)
            elif args.cmd == "del":
                res = ctlclient.call(args.sock, "endpoint_del", container_id=args.name,
                                     ifname=args.ifname, **net)
            else:
                res = ctlclient.call(args.sock, "endpoint_list", **net)
        else:
            if args.cmd == "add":
                def fn(client: Any, layout: Layout) -> Any:
                    rec = eps.make_endpoint(eps.read_config(client, layout), args.node, args.mac,
                                            args.ip, args.gateway, args.ip6, args.gateway6)
                    return eps.put_endpoint(client, layout, args.name, args.ifname, rec)
            elif args.cmd == "del":
                def fn(client: Any, layout: Layout) -> Any:
                    return eps.delete_endpoint(client, layout, args.name, args.ifname)
            elif args.cmd == "gc":
                def fn(client: Any, layout: Layout) -> Any:
                    return eps.gc_node(client, layout, args.node, force=args.force,
                                       dry_run=args.dry_run)
            else:
                def fn(client: Any, layout: Layout) -> Any:
                    return eps.list_endpoints(client, layout)
            res = _etcd_run(args, fn)
        return res

    return _report(f"vxtap endpoint {args.cmd}", run)


def network_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="vxtap network", description="Set or show a network's config.")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("set", help="create or replace the network config")
    s.add_argument("network")
    s.add_argument("--vni", type=int, required=True)
    s.add_argument("--subnet", required=True)
    s.add_argument("--block-size", type=int, default=24)
    s.add_argument("--port", type=int, default=4789)
    s.add_argument("--subnet6", help="IPv6 subnet (dual stack), e.g. fd00:10:244::/48")
    s.add_argument("--block-size6", type=int, default=64,
                   help="per-node IPv6 block prefix length (default 64)")
    add_etcd_args(s, required=True)
    sh = sub.add_parser("show", help="print the network config")
    sh.add_argument("network")
    add_etcd_args(sh, required=True)
    args = p.parse_args(list(argv))

    def run() -> Any:
        if args.cmd == "set":
            cfg = NetworkConfig(vni=args.vni, subnet=args.subnet, block_prefix=args.block_size,
                                port=args.port, subnet6=args.subnet6,
                                block_prefix6=args.block_size6)

            def fn(client: Any, layout: Layout) -> Any:
                client.put(layout.config, cfg.to_json())
                return {"key": layout.config, **cfg.to_dict()}
        else:
            def fn(client: Any, layout: Layout) -> Any:
                return {"key": layout.config, **eps.read_config(client, layout).to_dict()}
        return _etcd_run(args, fn)

    return _report(f"vxtap network {args.cmd}", run)


if __name__ == "__main__":
    sys.exit(endpoint_main(sys.argv[1:]))
