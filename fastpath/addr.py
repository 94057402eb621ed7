"""Address parsing shared by the Python faces of the fast path (strict, precise errors)."""
from __future__ import annotations

import ipaddress
import re

_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}([:-])[0-9a-fA-F]{2}(\1[0-9a-fA-F]{2}){4}$")


def mac_to_int(mac: str) -> int:
    if not isinstance(mac, str) or not _MAC_RE.match(mac):
        raise ValueError(f"not a MAC address: {mac!r} (want aa:bb:cc:dd:ee:ff)")
    return int(mac.replace("-", "").replace(":", ""), 16)


def int_to_mac(v: int) -> str:
    return ":".join(f"{(v >> s) & 0xff:02x}" for s in range(40, -8, -8))


def ip_to_int(ip: str) -> int:
    try:
        return int(ipaddress.IPv4Address(ip))
    except (ipaddress.AddressValueError, ValueError, TypeError):
        raise ValueError(f"not an IPv4 address: {ip!r}") from None


def int_to_ip(v: int) -> str:
    return str(ipaddress.IPv4Address(v))


def check_unicast_mac(mac: str) -> int:
    v = mac_to_int(mac)
    if v >> 40 & 1:
        raise ValueError(f"{mac} is a multicast/broadcast MAC, not a station address")
    return v


def check_vni(vni: int) -> int:
    if not isinstance(vni, int) or isinstance(vni, bool) or not 0 < vni < 1 << 24:
        raise ValueError(f"VNI must be an integer in 1..16777215, got {vni!r}")
    return vni


def check_port(port: int) -> int:
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise ValueError(f"UDP port must be in 1..65535, got {port!r}")
    return port


def check_vtep_ip(ip: str) -> int:
    """A VTEP must be a unicast IPv4 address (not 0.0.0.0, broadcast, multicast, reserved)."""
    v = ip_to_int(ip)
    a = ipaddress.IPv4Address(v)
    if a.is_unspecified or a.is_multicast or a.is_reserved or v == 0xFFFFFFFF:
        raise ValueError(f"{ip} is not a unicast IPv4 address, cannot be a VTEP")
    return v


def ip6_to_int(ip: str) -> int:
    try:
        return int(ipaddress.IPv6Address(ip))
    except (ipaddress.AddressValueError, ValueError, TypeError):
        raise ValueError(f"not an IPv6 address: {ip!r}") from None


def int_to_ip6(v: int) -> str:
    return str(ipaddress.IPv6Address(v))


def neigh_ip(ip: str) -> tuple[int, int]:
    """A neighbour-table address: (4, IPv4 as int) or (6, IPv6 as int). An IPv6 neighbour
    must be a unicast address (not ::, not multicast): only those are ever solicited."""
    if isinstance(ip, str) and ":" in ip:
        v = ip6_to_int(ip)
        a = ipaddress.IPv6Address(v)
        if a.is_unspecified or a.is_multicast:
            raise ValueError(f"{ip} is not a unicast IPv6 address, cannot be a neighbour")
        return 6, v
    try:
        return 4, ip_to_int(ip)
    except ValueError:
        raise ValueError(f"not an IPv4 or IPv6 address: {ip!r}") from None
