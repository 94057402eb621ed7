"""`vxtap trace ...`: packet capture and decision trace of a running agent.

  vxtap trace pcap start DIR [--points P,..] [--count N] [--duration S]
                             [--vni N] [--mac MAC] [--ip IP] [--snaplen B] [--append]
  vxtap trace pcap stop
  vxtap trace add N [--vni N] [--mac MAC] [--ip IP]       decision trace of the next N packets
  vxtap trace show [--max N] [--json]
  vxtap trace clear
  vxtap trace status [--json]
Every command takes --sock PATH (default: the only agent in /run/vxtap).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from dataplane.cli import _call
from dataplane.observe import _points, _positive
from dataplane.trace import CAPTURE_POINTS, format_pcap, format_status, format_trace


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vxtap trace",
                                description="Packet capture (pcap) at the four points of the "
                                            "data path, and per-packet decision traces.")
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp: argparse.ArgumentParser, filters: bool = False) -> None:
        sp.add_argument("--sock", default=None,
                        help="control socket (default: the only one in /run/vxtap)")
        if filters:
            sp.add_argument("--vni", type=int, help="only this VNI")
            sp.add_argument("--mac", help="only frames from or to this MAC")
            sp.add_argument("--ip", help="only frames from or to this IPv4 (IPv4 or ARP)")
        else:
            sp.set_defaults(vni=None)

    pc = sub.add_parser("pcap", help="pcap capture at tap_in, ul_out, ul_in, tap_out")
    psub = pc.add_subparsers(dest="action", required=True)
    st = psub.add_parser("start", help="start capturing into DIR/<point>.pcap")
    st.add_argument("dir", help="directory for the files (created; on the agent's host)")
    st.add_argument("--points", type=_points, default=list(CAPTURE_POINTS),
                    help=f"comma-separated: {', '.join(CAPTURE_POINTS)} or all (default all)")
    st.add_argument("--count", type=_positive(int), help="stop after N packets per point")
    st.add_argument("--duration", type=_positive(float), help="stop after S seconds")
    st.add_argument("--snaplen", type=int, help="bytes kept per packet (default 65535)")
    st.add_argument("--append", action="store_true", help="append to existing files")
    common(st, filters=True)
    common(psub.add_parser("stop", help="stop the capture, close the files"))

    add = sub.add_parser("add", help="decision trace of the next N packets")
    add.add_argument("count", type=_positive(int))
    common(add, filters=True)
    sh = sub.add_parser("show", help="print the decision trace, one block per packet")
    sh.add_argument("--max", type=_positive(int), help="only the last N packets")
    sh.add_argument("--json", action="store_true")
    common(sh)
    common(sub.add_parser("clear", help="forget the decision trace (and stop it)"))
    ss = sub.add_parser("status", help="what is being traced, files, packets, ring drops")
    ss.add_argument("--json", action="store_true")
    common(ss)
    return p


def _filters(args: argparse.Namespace, req: dict[str, Any]) -> dict[str, Any]:
    for k in ("mac", "ip"):
        if getattr(args, k, None):
            req[k] = getattr(args, k)
    return req          # vni: added by cli._call


def trace_main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    if args.cmd == "pcap":
        if args.action == "start":
            req: dict[str, Any] = {"op": "trace_pcap_start", "dir": os.path.abspath(args.dir),
                                   "points": args.points}
            for k in ("count", "duration", "snaplen"):
                if getattr(args, k) is not None:
                    req[k] = getattr(args, k)
            if args.append:
                req["append"] = True
            st = _call(args, _filters(args, req))
            sys.stdout.write(format_status(st))
        else:
            sys.stdout.write(format_pcap(_call(args, {"op": "trace_pcap_stop"})))
        return 0
    if args.cmd == "add":
        st = _call(args, _filters(args, {"op": "trace_add", "count": args.count}))
        sys.stdout.write(format_status(st))
        return 0
    if args.cmd == "show":
        req = {"op": "trace_show"}
        if args.max:
            req["max"] = args.max
        recs = _call(args, req)
        if args.json:
            print(json.dumps(recs, indent=2))
        else:
            sys.stdout.write(format_trace(recs))
        return 0
    if args.cmd == "clear":
        _call(args, {"op": "trace_clear"})
        return 0
    st = _call(args, {"op": "trace_status"})
    if args.json:
        print(json.dumps(st, indent=2))
    else:
        sys.stdout.write(format_status(st))
    return 0
