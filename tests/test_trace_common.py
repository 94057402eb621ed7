"""Shared builders for the trace and metrics tests (no tests here).

A simulated switch (fastpath.switch.Switch, no devices): node 1 at 192.168.100.1, VNI 42, the
local pod 10.244.1.2 (02:00:00:00:01:02) behind the TAP, remote pods 10.244.2.2 and 10.244.3.2
behind VTEPs 192.168.100.2 and .3 (FDB + neighbour entries).
"""
from __future__ import annotations

import shutil
import struct
import subprocess
from typing import Any

from fastpath.switch import Switch

from tests.fastpath_impls import arp_request, eth, ipv4, ipv4_checksum, vxlan

LOCAL = "192.168.100.1"
VNI = 42
POD = ("10.244.1.2", "02:00:00:00:01:02")
REMOTE = {"192.168.100.2": ("10.244.2.2", "02:00:00:00:02:02"),
          "192.168.100.3": ("10.244.3.2", "02:00:00:00:03:02")}
B_VTEP = "192.168.100.2"
B_IP, B_MAC = REMOTE[B_VTEP]

__all__ = ["arp_request", "vxlan"]


def make_switch(**kw: Any) -> Switch:
    sw = Switch(LOCAL, **kw)
    sw.add_network(VNI)
    for vtep, (ip, mac) in REMOTE.items():
        sw.fdb_add(VNI, mac, vtep)
        sw.neigh_add(VNI, ip, mac)
    return sw


def icmp_echo(dst_mac: str, src_mac: str, src_ip: str, dst_ip: str, seq: int = 1,
              reply: bool = False, ident: int = 0x1234, payload: bytes = b"ping" * 8) -> bytes:
    body = struct.pack("!BBHHH", 0 if reply else 8, 0, 0, ident, seq) + payload
    body = body[:2] + struct.pack("!H", ipv4_checksum(body + b"\0" * (len(body) % 2))) + body[4:]
    return eth(dst_mac, src_mac, 0x0800, ipv4(src_ip, dst_ip, 1, body))


def ping_out(seq: int = 1) -> bytes:
    """Echo request from the local pod to the pod behind 192.168.100.2."""
    return icmp_echo(B_MAC, POD[1], POD[0], B_IP, seq)


def ping_back(seq: int = 1) -> bytes:
    """The echo reply, as the inner frame of a datagram from 192.168.100.2."""
    return icmp_echo(POD[1], B_MAC, B_IP, POD[0], seq, reply=True)


def arp_for_b() -> bytes:
    return arp_request(POD[1], POD[0], B_IP)


def tshark(path: str, *fields: str, extra: tuple[str, ...] = ()) -> list[list[str]]:
    """`tshark -r path -T fields -e F...`: one list of field values per packet."""
    exe = shutil.which("tshark")
    assert exe, "tshark is not installed"
    argv = [exe, "-n", "-r", path, *extra]
    if fields:
        argv += ["-T", "fields", "-E", "separator=|", "-E", "occurrence=f"]
        for f in fields:
            argv += ["-e", f]
    cp = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert cp.returncode == 0, f"tshark failed on {path}: {cp.stderr}"
    return [ln.split("|") for ln in cp.stdout.splitlines() if ln.strip()]


def tcpdump_count(path: str) -> int:
    exe = shutil.which("tcpdump")
    assert exe, "tcpdump is not installed"
    cp = subprocess.run([exe, "-n", "-tt", "-r", path], capture_output=True, text=True,
                        timeout=30, check=False)
    assert cp.returncode == 0, f"tcpdump -r {path}: {cp.stderr}"
    # one line per packet starts with its timestamp; a decoded VXLAN inner packet adds a line
    return sum(1 for ln in cp.stdout.splitlines() if ln[:1].isdigit())
