"""Text output of `vxtap show`, in the habits of `bridge fdb show`, `ip neigh`, `ip -s link`."""
from __future__ import annotations

from typing import Any


def format_fdb(tap: str, vni: int, rows: list[list[Any]]) -> str:
    return "".join(f"{mac} dev {tap} dst {vtep} port {port} vni {vni} self permanent\n"
                   for mac, vtep, port in rows)


def format_neigh(tap: str, rows: list[list[Any]]) -> str:
    return "".join(f"{ip} dev {tap} lladdr {mac} PERMANENT\n" for ip, mac in rows)


def _table(header: list[str], rows: list[list[Any]], indent: str = "    ") -> str:
    cols = [header] + [[str(c) for c in r] for r in rows]
    w = [max(len(r[i]) for r in cols) for i in range(len(header))]
    return "".join(indent + "  ".join(c.rjust(w[i]) if i else c.ljust(w[i])
                                      for i, c in enumerate(r)).rstrip() + "\n" for r in cols)


def format_stats(stats: dict[str, Any]) -> str:
    """stats: {"networks": [{"tap", "vni", "mac", "mtu", "counters", "vteps"}], "global": {}}"""
    out = []
    for net in stats["networks"]:
        c = net["counters"]
        name = f"net {net['net']}  " if net.get("net") else ""
        out.append(f"{net['tap']}: {name}vni {net['vni']} mtu {net['mtu']} "
                   f"link/ether {net['mac']}\n")
        out.append(_table(["", "bytes", "packets"], [
            ["TAP in (from bridge)", c["tap_rx_bytes"], c["tap_rx_packets"]],
            ["underlay out", c["udp_tx_bytes"], c["udp_tx_packets"]],
            ["underlay in", c["udp_rx_bytes"], c["udp_rx_packets"]],
            ["TAP out (to bridge)", c["tap_tx_bytes"], c["tap_tx_packets"]],
        ]))
        out.append(f"    arp replied {c['arp_replied']}  nd replied {c.get('nd_replied', 0)}  "
                   f"flooded {c['flooded']}\n")
        if any(c.get(k) for k in ("gso_frames", "gro_frames", "csum_completed")):
            out.append(f"    offload: gso frames {c['gso_frames']} -> segments "
                       f"{c['gso_segments']}, gro frames {c['gro_frames']} <- segments "
                       f"{c['gro_segments']}, checksums completed {c['csum_completed']}\n")
        drops = {k[5:]: v for k, v in c.items() if k.startswith("drop_") and v}
        out.append("    drops: " + (", ".join(f"{k} {v}" for k, v in drops.items()) or "none")
                   + "\n")
        if net.get("kernel", {}).get("tap_queue_dropped"):
            out.append(f"    kernel: TAP queue full, {net['kernel']['tap_queue_dropped']} frames "
                       "from the bridge dropped before the agent read them\n")
        if net.get("vteps"):
            out.append("    peers:\n")
            out.append(_table(["vtep", "port", "fdb", "tx_pkts", "tx_bytes", "rx_pkts",
                               "rx_bytes"],
                              [[v["vtep"], v["port"], v["fdb_entries"], v["tx_packets"],
                                v["tx_bytes"], v["rx_packets"], v["rx_bytes"]]
                               for v in net["vteps"]], indent="      "))
    o = stats.get("offload")
    if o:
        if o.get("active"):
            out.append(f"offloads on: tap {','.join(o.get('tap', [])) or 'none'}, udp gso "
                       f"{'on' if o.get('udp_gso') else 'off'} ({len(o.get('pool_ports', []))}"
                       f" source ports), udp gro {'on' if o.get('udp_gro') else 'off'}\n")
            if "udp_gso6" in o:
                out.append(f"  over IPv6: udp gso {'on' if o['udp_gso6'] else 'off'} "
                           f"({len(o.get('pool_ports6', []))} source ports), flow label per "
                           f"{'flow' if o.get('flowinfo6') else 'socket'}\n")
        else:
            out.append(f"offloads off ({'--offload off' if o.get('mode') == 'off' else 'refused by the kernel'})\n")
    g = {k[5:]: v for k, v in stats["global"].items() if k.startswith("drop_") and v}
    out.append("underlay (before a VNI is known) drops: "
               + (", ".join(f"{k} {v}" for k, v in g.items()) or "none") + "\n")
    if stats.get("kernel", {}).get("udp_socket_dropped"):
        out.append(f"kernel: underlay socket buffer full, {stats['kernel']['udp_socket_dropped']} "
                   "datagrams dropped before the agent read them\n")
    ip6 = {k: v for k, v in stats.get("kernel", {}).get("ip6", {}).items() if v}
    if ip6:
        out.append("kernel (IPv6 underlay, node-wide, dropped before the agent): "
                   + ", ".join(f"{k} {v}" for k, v in ip6.items()) + "\n")
    for k, v in stats.get("control", {}).items():
        out.append(f"control {k}: {v}\n")
    return "".join(out)


def format_nets(rows: list[dict[str, Any]]) -> str:
    """`vxtap net list`: one line per network."""
    return "".join(f"{r['name']}: vni {r['vni']} tap {r['tap']} "
                   f"bridge {r.get('bridge') or '-'} mac {r.get('mac')} mtu {r.get('mtu')}"
                   f"{' etcd' if r.get('etcd') else ''}\n" for r in rows)
