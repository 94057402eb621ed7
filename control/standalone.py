"""The control plane without a data plane: prints the table commands it would apply.

    python -m control.standalone --etcd URLS --network NET --node NODE \\
        --underlay 192.168.100.1 --tap-mac 02:00:00:00:00:01 [--port 4789] [--lease-ttl 10]

One JSON line per sink call on stdout (["fdb_add", 42, "02:..", "192.168.100.2", 4789]), and
{"event": "synced"} once the first list is applied. For debugging a network from any host that
reaches etcd, and for tests that need a real agent process to kill.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from .agent import add_agent_args, control_config_from_args, control_plane_from_control


class PrintSink:
    def __init__(self) -> None:
        self._lock = threading.Lock()

    def _out(self, *call: Any) -> None:
        with self._lock:
            sys.stdout.write(json.dumps(list(call)) + "\n")
            sys.stdout.flush()

    def event(self, obj: dict[str, Any]) -> None:
        with self._lock:
            sys.stdout.write(json.dumps(obj) + "\n")
            sys.stdout.flush()

    def fdb_add(self, vni: int, mac: str, vtep: str, port: int) -> None:
        self._out("fdb_add", vni, mac, vtep, port)

    def fdb_del(self, vni: int, mac: str) -> None:
        self._out("fdb_del", vni, mac)

    def neigh_add(self, vni: int, ip: str, mac: str) -> None:
        self._out("neigh_add", vni, ip, mac)

    def neigh_del(self, vni: int, ip: str) -> None:
        self._out("neigh_del", vni, ip)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m control.standalone", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_agent_args(p)
    p.add_argument("--underlay", required=True, help="this node's VTEP address")
    p.add_argument("--port", type=int, default=4789)
    p.add_argument("--vni", type=int, default=None, help="with --subnet: VNI of a new network")
    p.add_argument("--tap-mac", required=True)
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        conf = control_config_from_args(args)
        if conf is None:
            p.error("--etcd is required")
        conf.update(vni=args.vni, port=args.port)
        cp = control_plane_from_control(conf)
        cp.bootstrap(timeout=30)
    except (ValueError, TimeoutError, OSError) as e:
        print(f"control.standalone: {e}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda *_: stop.set())
    sink = PrintSink()
    cp.start(sink, underlay=args.underlay, port=args.port, tap_mac=args.tap_mac)
    if cp.wait_synced(30):
        sink.event({"event": "synced", "block": str(cp.block)})
    stop.wait()
    cp.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
