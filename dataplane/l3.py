"""The TAP as an L3 VTEP, programmed like flanneld programs `flannel.<VNI>` (pyroute2):

    address   10.5.X.0/32 on the TAP                         (this node's subnet, network address)
    per peer  route 10.5.Y.0/24 via 10.5.Y.0 dev TAP onlink  (scope universe)
              neigh 10.5.Y.0 lladdr <VtepMAC> dev TAP nud permanent

The host then routes pod traffic for a peer's subnet into the TAP with the peer's VtepMAC as
destination MAC; the fast path's FDB (VtepMAC -> PublicIP) encapsulates it. Every call is
idempotent (replace / delete-if-present) and runs in the node's network namespace. What was
installed is remembered; close() removes whatever is left (the TAP's own removal would take
routes and neighbours with it, but an adopted TAP stays).
"""
from __future__ import annotations

import errno
import ipaddress
import logging

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from dataplane.netns import netns

log = logging.getLogger("vxtap.l3")

RTNH_F_ONLINK = 4          # linux/rtnetlink.h
NUD_PERMANENT = 0x80       # linux/neighbour.h
_GONE = (errno.ESRCH, errno.ENOENT, errno.EADDRNOTAVAIL, errno.ENODEV)


class L3Vtep:
    def __init__(self, ifname: str, ns: str | None = None) -> None:
        self.ifname = ifname
        self.ns = ns
        self.routes: dict[str, str] = {}        # dst -> gateway
        self.neighs: dict[str, str] = {}        # ip -> mac
        self.addresses: set[str] = set()

    def _index(self, ipr: IPRoute) -> int:
        idx = ipr.link_lookup(ifname=self.ifname)
        if not idx:
            raise OSError(errno.ENODEV, f"no device {self.ifname}"
                          f"{' in netns ' + self.ns if self.ns else ''}")
        return int(idx[0])

    # -- address -----------------------------------------------------------------------------
    def address_add(self, cidr: str) -> None:
        """`cidr` on the TAP; other IPv4 addresses on it are removed (flannel's
        EnsureV4AddressOnLink: the VTEP holds exactly its subnet's address)."""
        want = ipaddress.IPv4Interface(cidr)
        with netns(self.ns), IPRoute() as ipr:
            idx = self._index(ipr)
            have = set()
            for a in ipr.get_addr(family=2, index=idx):
                have.add(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
            for other in have - {str(want)}:
                ip, _, plen = other.partition("/")
                ipr.addr("del", index=idx, address=ip, prefixlen=int(plen))
                log.info("%s: removed address %s", self.ifname, other)
            if str(want) not in have:
                ipr.addr("add", index=idx, address=str(want.ip), prefixlen=want.network.prefixlen)
        self.addresses.add(str(want))
        log.info("%s: address %s", self.ifname, want)

    def address_del(self, cidr: str) -> None:
        want = ipaddress.IPv4Interface(cidr)
        with netns(self.ns), IPRoute() as ipr:
            idx = ipr.link_lookup(ifname=self.ifname)
            if idx:
                try:
                    ipr.addr("del", index=idx[0], address=str(want.ip),
                             prefixlen=want.network.prefixlen)
                except NetlinkError as e:
                    if e.code not in _GONE:
                        raise
        self.addresses.discard(str(want))

    # -- routes ------------------------------------------------------------------------------
    def route_add(self, dst: str, gateway: str) -> None:
        with netns(self.ns), IPRoute() as ipr:
            ipr.route("replace", dst=dst, gateway=gateway, oif=self._index(ipr),
                      flags=RTNH_F_ONLINK, scope=0)
        self.routes[dst] = gateway

    def route_del(self, dst: str, gateway: str) -> None:
        with netns(self.ns), IPRoute() as ipr:
            idx = ipr.link_lookup(ifname=self.ifname)
            try:
                kw = {"oif": idx[0]} if idx else {}
                ipr.route("del", dst=dst, gateway=gateway, **kw)
            except NetlinkError as e:
                if e.code not in _GONE:
                    raise
        self.routes.pop(dst, None)

    # -- neighbours --------------------------------------------------------------------------
    def kernel_neigh_add(self, ip: str, mac: str) -> None:
        with netns(self.ns), IPRoute() as ipr:
            ipr.neigh("replace", dst=ip, lladdr=mac, ifindex=self._index(ipr),
                      state=NUD_PERMANENT)
        self.neighs[ip] = mac

    def kernel_neigh_del(self, ip: str) -> None:
        with netns(self.ns), IPRoute() as ipr:
            idx = ipr.link_lookup(ifname=self.ifname)
            if idx:
                try:
                    ipr.neigh("del", dst=ip, ifindex=idx[0])
                except NetlinkError as e:
                    if e.code not in _GONE:
                        raise
        self.neighs.pop(ip, None)

    def close(self) -> None:
        """Remove every route, neighbour and address still installed (best effort)."""
        for dst, gw in list(self.routes.items()):
            self._quietly(self.route_del, dst, gw)
        for ip in list(self.neighs):
            self._quietly(self.kernel_neigh_del, ip)
        for cidr in list(self.addresses):
            self._quietly(self.address_del, cidr)

    def _quietly(self, fn: object, *args: str) -> None:
        try:
            fn(*args)  # type: ignore[operator]
        except (OSError, NetlinkError, ValueError) as e:
            log.warning("%s: cleanup %s%r: %s", self.ifname, getattr(fn, "__name__", fn), args, e)


class FlannelDataplaneSink:
    """control.flannel_sync.FlannelSink over the fast path (fdb/neigh) and an L3Vtep."""

    def __init__(self, switch: object, vtep: L3Vtep) -> None:
        self.switch = switch
        self.vtep = vtep
        self.fdb_add = switch.fdb_add            # type: ignore[attr-defined]
        self.fdb_del = switch.fdb_del            # type: ignore[attr-defined]
        self.neigh_add = switch.neigh_add        # type: ignore[attr-defined]
        self.neigh_del = switch.neigh_del        # type: ignore[attr-defined]
        self.address_add = vtep.address_add
        self.address_del = vtep.address_del
        self.kernel_neigh_add = vtep.kernel_neigh_add
        self.kernel_neigh_del = vtep.kernel_neigh_del
        self.route_add = vtep.route_add
        self.route_del = vtep.route_del
