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


# ---- VTEP addresses of either family ------------------------------------------------------------
# The fast path keys VTEPs by 128 bits: an IPv6 address as is, an IPv4 address in its
# IPv4-mapped form ::ffff:a.b.c.d (RFC 4291 2.5.5.2), which is also how a dual-stack socket
# reports an IPv4 source. An IPv4-mapped address given as an IPv6 VTEP is refused (it would be
# the IPv4 VTEP), so a key's family is never ambiguous.
V4MAPPED = 0xFFFF << 32


def vtep_key(ip: str) -> int:
    """A VTEP address (IPv4 or IPv6, unicast) as its 128-bit key."""
    if isinstance(ip, str) and ":" in ip:
        v = ip6_to_int(ip)
        a = ipaddress.IPv6Address(v)
        if a.ipv4_mapped is not None:
            raise ValueError(f"{ip} is an IPv4-mapped address: give the VTEP as "
                             f"{a.ipv4_mapped}")
        if a.is_unspecified or a.is_multicast:
            raise ValueError(f"{ip} is not a unicast IPv6 address, cannot be a VTEP")
        return v
    return V4MAPPED | check_vtep_ip(ip)


def key_is_v4(k: int) -> bool:
    return k >> 32 == 0xFFFF


def key_to_ip(k: int) -> str:
    """The address of a VTEP key, in its family's usual form."""
    return int_to_ip(k & 0xFFFFFFFF) if key_is_v4(k) else int_to_ip6(k)


def ip_family(ip: str) -> int:
    """4 or 6 for an address string (ValueError if it is neither)."""
    if isinstance(ip, str) and ":" in ip:
        ip6_to_int(ip)
        return 6
    try:
        ip_to_int(ip)
    except ValueError:
        raise ValueError(f"not an IPv4 or IPv6 address: {ip!r}") from None
    return 4


def split_host_port(s: str) -> tuple[str, int | None]:
    """'1.2.3.4', '1.2.3.4:4789', 'fd00::1', '[fd00::1]' or '[fd00::1]:4789' -> (host, port).
    A bare IPv6 address has no port (its colons are the address's): brackets give one."""
    if not isinstance(s, str) or not s:
        raise ValueError(f"not an address: {s!r}")
    if s.startswith("["):
        end = s.find("]")
        if end < 0:
            raise ValueError(f"{s!r}: '[' without ']' (want [IPv6]:PORT)")
        host, rest = s[1:end], s[end + 1:]
        if rest and not rest.startswith(":"):
            raise ValueError(f"{s!r}: want [IPv6]:PORT")
        ip6_to_int(host)
        port = rest[1:] if rest else None
    elif s.count(":") == 1:
        host, port = s.split(":")
    else:
        host, port = s, None
    if port is None:
        return host, None
    if not port.isdigit():
        raise ValueError(f"bad VTEP port in {s!r}")
    return host, check_port(int(port))


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_locals(local: str | list[str] | tuple[str, ...]) -> tuple[str | None, str | None]:
    """The local underlay address(es): one IPv4, one IPv6, or one of each (dual stack), given
    as one string, a comma-separated string, or a list. Returns (ipv4 or None, ipv6 or None),
    each normalised."""
    items = local.split(",") if isinstance(local, str) else list(local)
    v4: str | None = None
    v6: str | None = None
    if not items or not all(isinstance(x, str) for x in items):
        raise ValueError(f"not an IPv4 or IPv6 address: {local!r}")
    for x in items:
        x = x.strip()
        if ":" in x:
            k = vtep_key(x)
            if v6 is not None:
                raise ValueError(f"two IPv6 local addresses ({v6}, {x}): give one of each "
                                 "family at most")
            v6 = int_to_ip6(k)
        else:
            try:
                v = ip_to_int(x)
            except ValueError:
                raise ValueError(f"not an IPv4 or IPv6 address: {x!r}") from None
            if v4 is not None:
                raise ValueError(f"two IPv4 local addresses ({v4}, {x}): give one of each "
                                 "family at most")
            v4 = int_to_ip(v)
    return v4, v6


def src_key(ip: str) -> int:
    """Any source address (a datagram's, unchecked) as a VTEP key (see vtep_key)."""
    if isinstance(ip, str) and ":" in ip:
        return ip6_to_int(ip)
    return V4MAPPED | ip_to_int(ip)
