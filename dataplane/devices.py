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
from pyroute2.netlink.exceptions import NetlinkError

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
    # state of an adopted TAP before we changed it: restored at close
    before: dict[str, object] = field(default_factory=dict)

    def fileno(self) -> int:
        return self.dev.fileno()

    def close(self) -> None:
        """Remove what we created; an adopted TAP gets its MAC, MTU, master, state back."""
        if self.closed:
            return
        self.closed = True
        if not self.created and self.before:
            try:
                with netns(self.netns), IPRoute() as ipr:
                    idx = ipr.link_lookup(ifname=self.name)
                    if idx:
                        b = self.before
                        ipr.link("set", index=idx[0], state="down")
                        ipr.link("set", index=idx[0], master=b["master"] or 0)
                        ipr.link("set", index=idx[0], address=b["address"], mtu=b["mtu"])
                        if b["up"]:
                            ipr.link("set", index=idx[0], state="up")
            except (OSError, NetlinkError) as e:
                log.warning("restoring adopted TAP %s: %s", self.name, e)
        try:
            self.dev.close()       # a non-persistent TAP disappears with its last fd
        except OSError as e:
            log.warning("closing TAP %s: %s", self.name, e)
        if self.bridge_created and self.bridge:
            with netns(self.netns), IPRoute() as ipr:
                idx = ipr.link_lookup(ifname=self.bridge)
                if idx:
                    ipr.link("del", index=idx[0])
                _forget_bridge(self.bridge)


# What an agent created survives a SIGKILL; a marker per bridge (namespace inode + ifindex)
# lets the next agent know that the bridge it finds is its predecessor's, not the operator's.
STATE_DIR = os.environ.get("VXTAP_STATE_DIR", "/run/vxtap/created")


def _bridge_marker(bridge: str) -> str:
    """Marker path for `bridge` in the current network namespace (call inside netns())."""
    ino = os.stat("/proc/thread-self/ns/net").st_ino
    return os.path.join(STATE_DIR, f"bridge-{ino}-{bridge}")


def _remember_bridge(bridge: str, ifindex: int) -> None:
    try:
        os.makedirs(STATE_DIR, mode=0o700, exist_ok=True)
        with open(_bridge_marker(bridge), "w") as f:
            f.write(f"{ifindex}\n")
    except OSError as e:
        log.warning("cannot record that bridge %s was created here (%s): after a crash the "
                    "next agent will leave it in place", bridge, e)


def _created_by_us(bridge: str, ifindex: int) -> bool:
    try:
        with open(_bridge_marker(bridge)) as f:
            return f.read().strip() == str(ifindex)
    except (OSError, ValueError):
        return False


def _forget_bridge(bridge: str) -> None:
    try:
        os.unlink(_bridge_marker(bridge))
    except OSError:
        pass


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
        before: dict[str, object] = {}
        found = ipr.link_lookup(ifname=name)
        if found:
            link = ipr.get_links(found[0])[0]
            kind = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
            if kind not in (None, "tun"):
                raise ValueError(f"{name} exists and is a {kind} device, not a TAP")
            tun_type = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA", "IFLA_TUN_TYPE")
            if tun_type == 1:                   # IFF_TUN
                raise ValueError(f"{name} exists and is a TUN device, not a TAP")
            before = {"address": link.get_attr("IFLA_ADDRESS"),
                      "mtu": link.get_attr("IFLA_MTU"),
                      "master": link.get_attr("IFLA_MASTER"),
                      "up": bool(link["flags"] & 1)}
        try:
            dev = pytun.TunTapDevice(name=name, flags=pytun.IFF_TAP | pytun.IFF_NO_PI)
        except (pytun.Error, OSError) as e:
            hint = " (in use by another agent?)" if "busy" in str(e).lower() else ""
            raise OSError(f"cannot open TAP {name}: {e}{hint}") from None
        os.set_blocking(dev.fileno(), False)
        tap = Tap(name=name, vni=vni, netns=ns, dev=dev, created=not found, before=before)
        try:
            idx = ipr.link_lookup(ifname=name)[0]
            tap.mac = mac or _random_mac()
            addr.check_unicast_mac(tap.mac)
            try:
                ipr.link("set", index=idx, address=tap.mac, mtu=mtu)
            except NetlinkError as e:
                raise OSError(f"cannot set MAC {tap.mac} / MTU {mtu} on {name}: "
                              f"{os.strerror(e.code)}") from None
            tap.mtu = mtu
            if bridge:
                br = ipr.link_lookup(ifname=bridge)
                if not br:
                    ipr.link("add", ifname=bridge, kind="bridge")
                    br = ipr.link_lookup(ifname=bridge)
                    ipr.link("set", index=br[0], state="up")
                    tap.bridge_created = True
                    _remember_bridge(bridge, br[0])
                    log.info("created bridge %s", bridge)
                else:
                    bkind = ipr.get_links(br[0])[0].get_nested("IFLA_LINKINFO",
                                                               "IFLA_INFO_KIND")
                    if bkind != "bridge":
                        raise ValueError(f"{bridge} is a {bkind or 'plain'} device, "
                                         "not a bridge")
                    if _created_by_us(bridge, br[0]):
                        tap.bridge_created = True      # a killed agent's: still ours to remove
                        log.info("adopted bridge %s, created by a previous agent here (it is "
                                 "removed at exit)", bridge)
                try:
                    ipr.link("set", index=idx, master=br[0])
                except NetlinkError as e:
                    raise OSError(f"cannot attach {name} to bridge {bridge}: "
                                  f"{os.strerror(e.code)}") from None
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


def link_drops(ns: str | None, name: str) -> dict[str, int]:
    """The kernel's drop counters of link `name` in namespace ns ({} if it is gone). For a TAP,
    tx_dropped counts frames the bridge sent that the agent did not read in time (the TAP's
    queue, 1000 frames by default, was full)."""
    try:
        with netns(ns), IPRoute() as ipr:
            idx = ipr.link_lookup(ifname=name)
            if not idx:
                return {}
            st = ipr.get_links(idx[0])[0].get_attr("IFLA_STATS64") or {}
    except (OSError, NetlinkError, ValueError):     # ValueError: the namespace is gone
        return {}
    return {"tx_dropped": int(st.get("tx_dropped", 0)), "rx_dropped": int(st.get("rx_dropped", 0))}

