"""The TAP device of a network: create or adopt it, set MAC/MTU, attach it to the bridge.

The TAP sits on the node's bridge exactly where a kernel vxlan device would. Frames the bridge
sends to it are read by the fast path; frames the fast path writes to it enter the bridge.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import pytun
from pyroute2 import IPRoute

from dataplane.netns import netns
from fastpath import addr

log = logging.getLogger("vxtap.devices")


@dataclass
class Tap:
    name: str
    vni: int
    netns: str | None
    dev: pytun.TunTapDevice
    created: bool
    bridge: str | None = None
    bridge_created: bool = False
    mac: str = ""
    mtu: int = 0
    closed: bool = field(default=False)

    def fileno(self) -> int:
        return self.dev.fileno()

    def close(self) -> None:
        """Detach and remove what we created; an adopted TAP is left as it was found."""
        if self.closed:
            return
        self.closed = True
        try:
            self.dev.close()       # a non-persistent TAP disappears with its last fd
        except OSError as e:
            log.warning("closing TAP %s: %s", self.name, e)
        if self.bridge_created and self.bridge:
            with netns(self.netns), IPRoute() as ipr:
                idx = ipr.link_lookup(ifname=self.bridge)
                if idx:
                    ipr.link("del", index=idx[0])


def _random_mac() -> str:
    b = bytearray(os.urandom(6))
    b[0] = (b[0] & 0xFE) | 0x02        # unicast, locally administered
    return addr.int_to_mac(int.from_bytes(b, "big"))


def open_tap(name: str, vni: int, *, mtu: int, mac: str | None = None,
             bridge: str | None = None, ns: str | None = None) -> Tap:
    """Create (or adopt an existing persistent) TAP `name` in namespace `ns`, bring it up."""
    if not name or len(name) > 15:
        raise ValueError(f"bad interface name {name!r} (1..15 characters)")
    with netns(ns), IPRoute() as ipr:
        existed = bool(ipr.link_lookup(ifname=name))
        if existed:
            kind = ipr.get_links(ipr.link_lookup(ifname=name)[0])[0].get_nested(
                "IFLA_LINKINFO", "IFLA_INFO_KIND")
            if kind not in (None, "tun"):
                raise ValueError(f"{name} exists and is a {kind} device, not a TAP")
        dev = pytun.TunTapDevice(name=name, flags=pytun.IFF_TAP | pytun.IFF_NO_PI)
        os.set_blocking(dev.fileno(), False)
        tap = Tap(name=name, vni=vni, netns=ns, dev=dev, created=not existed)
        try:
            idx = ipr.link_lookup(ifname=name)[0]
            tap.mac = mac or _random_mac()
            addr.check_unicast_mac(tap.mac)
            ipr.link("set", index=idx, address=tap.mac, mtu=mtu)
            tap.mtu = mtu
            if bridge:
                br = ipr.link_lookup(ifname=bridge)
                if not br:
                    ipr.link("add", ifname=bridge, kind="bridge")
                    br = ipr.link_lookup(ifname=bridge)
                    ipr.link("set", index=br[0], state="up")
                    tap.bridge_created = True
                    log.info("created bridge %s", bridge)
                ipr.link("set", index=idx, master=br[0])
                tap.bridge = bridge
            ipr.link("set", index=idx, state="up")
        except Exception:
            tap.close()
            raise
    log.info("%s TAP %s (vni %d, mac %s, mtu %d)%s%s", "created" if tap.created else "adopted",
             name, vni, tap.mac, mtu, f" on bridge {bridge}" if bridge else "",
             f" in netns {ns}" if ns else "")
    return tap


def link_mtu(ns: str | None, local_ip: str) -> int | None:
    """MTU of the interface that holds `local_ip` in namespace ns (None if not found)."""
    with netns(ns), IPRoute() as ipr:
        for a in ipr.get_addr(family=2):
            if a.get_attr("IFA_ADDRESS") == local_ip:
                return ipr.get_links(a["index"])[0].get_attr("IFLA_MTU")
    return None
