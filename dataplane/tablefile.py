"""Static table entries: the `--fdb`/`--neigh` flag syntax and the `--table FILE` format.

File format, one entry per line, `#` starts a comment:

    fdb   02:00:00:00:02:02  192.168.100.2[:4789]  [vni 42]
    fdb   02:00:00:00:03:02  [fd00::3]:4789        [vni 42]     (IPv6 VTEP; or just fd00::3)
    neigh 10.244.2.2         02:00:00:00:02:02     [vni 42]
    neigh fd00:244::2:2      02:00:00:00:02:02     [vni 42]     (IPv6: NS answered locally)
"""
from __future__ import annotations

from dataclasses import dataclass

from fastpath import addr


@dataclass(frozen=True)
class FdbEntry:
    mac: str
    vtep: str
    port: int | None = None
    vni: int | None = None


@dataclass(frozen=True)
class NeighEntry:
    ip: str
    mac: str
    vni: int | None = None


def parse_vtep(s: str) -> tuple[str, int | None]:
    """VTEP[:PORT]: 192.168.100.2, 192.168.100.2:4789, fd00::2, [fd00::2] or [fd00::2]:4789
    (an IPv6 address takes brackets when a port follows, as in URLs)."""
    host, port = addr.split_host_port(s)
    addr.vtep_key(host)
    return host, port


def parse_fdb_flag(s: str) -> FdbEntry:
    parts = s.split(",")
    if len(parts) != 2:
        raise ValueError(f"--fdb wants MAC,VTEP[:PORT], got {s!r}")
    addr.check_unicast_mac(parts[0])
    vtep, port = parse_vtep(parts[1])
    return FdbEntry(parts[0].lower(), vtep, port)


def parse_neigh_flag(s: str) -> NeighEntry:
    parts = s.split(",")
    if len(parts) != 2:
        raise ValueError(f"--neigh wants IP,MAC, got {s!r}")
    addr.neigh_ip(parts[0])                   # IPv4 (ARP) or IPv6 (neighbour discovery)
    addr.check_unicast_mac(parts[1])
    return NeighEntry(parts[0], parts[1].lower())


def _text_lines(data: str | bytes, source: str) -> list[str]:
    """The file's lines; bytes are decoded line by line so that a binary file's error names
    the line (and column) where the first byte that is not UTF-8 text is."""
    if isinstance(data, str):
        return data.splitlines()
    out = []
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{source}:{lineno}: not a text file (byte {raw[e.start]:#04x} at "
                             f"column {e.start + 1} is not UTF-8)") from None
        if "\0" in line:
            raise ValueError(f"{source}:{lineno}: not a text file (NUL byte at column "
                             f"{line.index(chr(0)) + 1})")
        out.append(line.rstrip("\r"))
    return out


def parse_table(text: str | bytes, source: str = "<table>") -> list[FdbEntry | NeighEntry]:
    out: list[FdbEntry | NeighEntry] = []
    for lineno, raw in enumerate(_text_lines(text, source), 1):
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        where = f"{source}:{lineno}"
        vni = None
        try:
            if len(words) >= 5 and words[-2] == "vni":
                if not words[-1].isdigit():
                    raise ValueError(f"bad VNI {words[-1]!r}")
                vni = addr.check_vni(int(words[-1]))
                words = words[:-2]
            if words[0] == "fdb" and len(words) == 3:
                e = parse_fdb_flag(f"{words[1]},{words[2]}")
                out.append(FdbEntry(e.mac, e.vtep, e.port, vni))
            elif words[0] == "neigh" and len(words) == 3:
                n = parse_neigh_flag(f"{words[1]},{words[2]}")
                out.append(NeighEntry(n.ip, n.mac, vni))
            else:
                raise ValueError(f"want 'fdb MAC VTEP[:PORT]' or 'neigh IP MAC', got {raw.strip()!r}")
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
    return out
