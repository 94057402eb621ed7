"""The TAP device of a network: create or adopt it, set MAC/MTU, attach it to the bridge.

The TAP sits on the node's bridge exactly where a kernel vxlan device would. Frames the bridge
sends to it are read by the fast path; frames the fast path writes to it enter the bridge.
"""
from __future__ import annotations

import fcntl
import logging
import os
import struct
from dataclasses import dataclass, field

import pytun
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from dataplane.netns import netns
from fastpath import addr

log = logging.getLogger("vxtap.devices")

# linux/if_tun.h
TUNSETIFF = 0x400454CA
TUNSETVNETHDRSZ = 0x400454D8
TUNSETOFFLOAD = 0x400454D0
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_MULTI_QUEUE = 0x0100
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN = 0x01, 0x02, 0x04, 0x08
TUN_F_USO4, TUN_F_USO6 = 0x20, 0x40
OFFLOAD_NAMES = {TUN_F_CSUM: "csum", TUN_F_TSO4: "tso4", TUN_F_TSO6: "tso6",
                 TUN_F_USO4: "uso4", TUN_F_USO6: "uso6"}
VNET_HDR_SIZE = 10          # struct virtio_net_hdr (fastpath/vnet.pxd)


def offload_names(flags: int) -> list[str]:
    return [name for bit, name in OFFLOAD_NAMES.items() if flags & bit]


class VnetTap:
    """A TAP opened on /dev/net/tun with IFF_VNET_HDR (pytun has no such flag): every read
    and write carries a 10-byte virtio-net header, and the kernel may hand us GSO frames
    and frames with checksums to finish (the offloads accepted by TUNSETOFFLOAD).

    queues > 1: IFF_MULTI_QUEUE, one fd per queue (the kernel puts each flow on one queue;
    forwarding thread q reads queue q). vnet=False: the same without the header (offloads
    off, multi-queue)."""

    def __init__(self, name: str, queues: int = 1, vnet: bool = True) -> None:
        flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if vnet else 0)
        if queues > 1:
            flags |= IFF_MULTI_QUEUE
        self.fds: list[int] = []
        try:
            for _ in range(queues):
                fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
                self.fds.append(fd)
                fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), flags))
                if vnet:
                    fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_SIZE))
        except OSError:
            for fd in self.fds:
                os.close(fd)
            raise
        self.fd = self.fds[0]
        self.vnet = vnet
        self.offloads = 0

    @property
    def queue_fds(self) -> list[int]:
        """The fds of queues 1.. (queue 0 is fileno())."""
        return self.fds[1:]

    def set_offload(self) -> int:
        """Ask for CSUM|TSO4|TSO6 and USO4|USO6 where the kernel accepts them; returns the
        flags in force (0 if even CSUM is refused: then frames come complete, as without)."""
        for flags in (TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_USO4 | TUN_F_USO6,
                      TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6, TUN_F_CSUM):
            try:
                fcntl.ioctl(self.fd, TUNSETOFFLOAD, flags)
            except OSError:
                continue
            self.offloads = flags
            return flags
        self.offloads = 0
        return 0

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            if self.vnet:
                try:
                    fcntl.ioctl(fd, TUNSETOFFLOAD, 0)     # an adopted persistent TAP keeps none
                except OSError:
                    pass
            for q in self.fds:
                os.close(q)
            self.fds = []


@dataclass
class Tap:
    name: str
    vni: int
    netns: str | None
    dev: pytun.TunTapDevice | VnetTap
    created: bool
    bridge: str | None = None
    bridge_created: bool = False
    mac: str = ""
    mtu: int = 0
    closed: bool = field(default=False)
    # state of an adopted TAP before we changed it: restored at close
    before: dict[str, object] = field(default_factory=dict)
    vnet_hdr: bool = False         # reads/writes carry a virtio-net header
    offloads: int = 0              # TUN_F_* accepted by the kernel

    @property
    def offload_names(self) -> list[str]:
        return offload_names(self.offloads)

    def fileno(self) -> int:
        return self.dev.fileno()

    @property
    def queue_fds(self) -> list[int]:
        """A multi-queue TAP's fds of queues 1.. ([] for a single-queue TAP)."""
        return list(getattr(self.dev, "queue_fds", []))

    @property
    def queues(self) -> int:
        return 1 + len(self.queue_fds)

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


def _open_queues(name: str, queues: int, vnet: bool) -> VnetTap | None:
    """A multi-queue (or, with queues 1, a virtio-net header) TAP; None if the kernel refuses
    it with EINVAL (an adopted persistent TAP created single-queue, or a kernel without the
    flag: the caller opens it plainer)."""
    try:
        return VnetTap(name, queues, vnet)
    except OSError as e:
        if e.errno == 16:      # EBUSY: in use; the plain open says so clearly
            return None
        if queues > 1:
            log.warning("TAP %s: no multi-queue (%s); one queue", name, e)
        else:
            log.warning("TAP %s: no virtio-net header (%s)", name, e)
        return None


def open_tap(name: str, vni: int, *, mtu: int, mac: str | None = None,
             bridge: str | None = None, ns: str | None = None, offload: bool = False,
             queues: int = 1) -> Tap:
    """Create (or adopt an existing persistent) TAP `name` in namespace `ns`, bring it up.

    offload: open it with a virtio-net header and ask for checksum/TSO/USO offloads. If the
    kernel refuses the header, the TAP is opened as without (tap.vnet_hdr False); if it
    accepts the header but no offload, tap.offloads is 0 (frames still carry a header).
    queues > 1: a multi-queue TAP with that many fds (tap.queues says how many it got: a TAP
    that refuses IFF_MULTI_QUEUE is opened with one)."""
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
        dev: pytun.TunTapDevice | VnetTap | None = None
        if queues > 1:
            dev = _open_queues(name, queues, offload)
            if dev is None and offload:
                dev = _open_queues(name, 1, True)
        elif offload:
            dev = _open_queues(name, 1, True)
        if dev is None:
            try:
                dev = pytun.TunTapDevice(name=name, flags=pytun.IFF_TAP | pytun.IFF_NO_PI)
            except (pytun.Error, OSError) as e:
                hint = " (in use by another agent?)" if "busy" in str(e).lower() else ""
                raise OSError(f"cannot open TAP {name}: {e}{hint}") from None
        os.set_blocking(dev.fileno(), False)
        for qfd in getattr(dev, "queue_fds", []):
            os.set_blocking(qfd, False)
        tap = Tap(name=name, vni=vni, netns=ns, dev=dev, created=not found, before=before)
        if isinstance(dev, VnetTap) and dev.vnet:
            tap.vnet_hdr = True
            tap.offloads = dev.set_offload()
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
    log.info("%s TAP %s (vni %d, mac %s, mtu %d)%s%s%s%s",
             "created" if tap.created else "adopted", name, vni, tap.mac, mtu,
             f" on bridge {bridge}" if bridge else "", f" in netns {ns}" if ns else "",
             (f", virtio-net header, offloads {','.join(tap.offload_names) or 'none'}"
              if tap.vnet_hdr else ""), f", {tap.queues} queues" if tap.queues > 1 else "")
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

