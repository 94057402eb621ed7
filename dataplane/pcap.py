"""A small writer of classic libpcap files (nanosecond variant), read by tcpdump/tshark/scapy.

File layout (https://www.tcpdump.org/manpages/pcap-savefile.5.html, little endian here):
  global header (24 bytes): magic 0xa1b23c4d (nanosecond timestamps), version 2.4,
  thiszone 0, sigfigs 0, snaplen, linktype;
  per packet (16 bytes + caplen): ts_sec, ts_nsec, caplen, orig_len, data.

Append-safe: opening an existing file with `append=True` checks its header (magic, linktype)
and continues after the last whole packet record, cutting a torn one left by a crash.
`flush()` pushes what was written to the OS; the tracer calls it once per drain cycle.
"""
from __future__ import annotations

import os
import struct
from typing import BinaryIO, Self

# Spec constants (pcap-savefile(5), linktypes: https://www.tcpdump.org/linktypes.html)
MAGIC_NS = 0xA1B23C4D
MAGIC_US = 0xA1B2C3D4
VERSION = (2, 4)
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101          # raw IPv4/IPv6, version from the first nibble
LINKTYPE_IPV4 = 228
GLOBAL_HDR = struct.Struct("<IHHiIII")
PKT_HDR = struct.Struct("<IIII")


class PcapWriter:
    """One pcap file. Not thread-safe: one writer thread (dataplane/trace.py owns it)."""

    def __init__(self, path: str, linktype: int, snaplen: int = 65535,
                 append: bool = False) -> None:
        if not 1 <= snaplen <= 0x3FFFFFF:
            raise ValueError(f"pcap snaplen must be in 1..{0x3FFFFFF}, got {snaplen}")
        self.path = path
        self.linktype = linktype
        self.snaplen = snaplen
        self.packets = 0
        self.bytes = 0
        self._f: BinaryIO
        if append and os.path.exists(path) and os.path.getsize(path) > 0:
            self._f = self._open_existing(path)
        else:
            self._f = open(path, "wb")  # noqa: SIM115 -- kept open for the writer's life
            self._f.write(GLOBAL_HDR.pack(MAGIC_NS, *VERSION, 0, 0, snaplen, linktype))
            self._f.flush()

    def _open_existing(self, path: str) -> BinaryIO:
        f = open(path, "r+b")  # noqa: SIM115
        try:
            hdr = f.read(GLOBAL_HDR.size)
            if len(hdr) < GLOBAL_HDR.size:
                raise ValueError(f"{path}: not a pcap file (header truncated, "
                                 f"{len(hdr)} bytes < {GLOBAL_HDR.size})")
            magic, _maj, _min, _tz, _sf, _snaplen, linktype = GLOBAL_HDR.unpack(hdr)
            if magic != MAGIC_NS:
                raise ValueError(f"{path}: cannot append: magic {magic:#010x} is not the "
                                 f"little-endian nanosecond pcap magic {MAGIC_NS:#010x}")
            if linktype != self.linktype:
                raise ValueError(f"{path}: cannot append: linktype {linktype} in the file, "
                                 f"{self.linktype} wanted")
            # walk the records; stop at the first torn one and cut it off
            end = GLOBAL_HDR.size
            size = os.fstat(f.fileno()).st_size
            while end + PKT_HDR.size <= size:
                f.seek(end)
                _s, _ns, caplen, _ol = PKT_HDR.unpack(f.read(PKT_HDR.size))
                if end + PKT_HDR.size + caplen > size:
                    break
                end += PKT_HDR.size + caplen
                self.packets += 1
            f.truncate(end)
            f.seek(end)
            return f
        except BaseException:
            f.close()
            raise

    def write(self, ts_ns: int, data: bytes, orig_len: int | None = None) -> None:
        """Append one packet (cut at snaplen); orig_len defaults to len(data)."""
        cap = data[:self.snaplen]
        olen = len(data) if orig_len is None else max(orig_len, len(cap))
        self._f.write(PKT_HDR.pack(ts_ns // 1_000_000_000, ts_ns % 1_000_000_000,
                                   len(cap), olen))
        self._f.write(cap)
        self.packets += 1
        self.bytes += len(cap)

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        if not self._f.closed:
            self._f.flush()
            self._f.close()

    @property
    def closed(self) -> bool:
        return self._f.closed

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_pcap(path: str) -> tuple[int, list[tuple[int, int, bytes]]]:
    """(linktype, [(ts_ns, orig_len, data)]) of a file this module wrote (tests, tools)."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < GLOBAL_HDR.size:
        raise ValueError(f"{path}: header truncated ({len(blob)} bytes < {GLOBAL_HDR.size})")
    magic, _a, _b, _tz, _sf, _snap, linktype = GLOBAL_HDR.unpack_from(blob)
    if magic not in (MAGIC_NS, MAGIC_US):
        raise ValueError(f"{path}: bad magic {magic:#010x}")
    scale = 1 if magic == MAGIC_NS else 1000
    out = []
    off = GLOBAL_HDR.size
    while off + PKT_HDR.size <= len(blob):
        s, frac, caplen, olen = PKT_HDR.unpack_from(blob, off)
        off += PKT_HDR.size
        if off + caplen > len(blob):
            raise ValueError(f"{path}: packet record truncated at offset {off - PKT_HDR.size}")
        out.append((s * 1_000_000_000 + frac * scale, olen, blob[off:off + caplen]))
        off += caplen
    return linktype, out
