"""Python mirror of the trace ring's record layout (trace.pxd `rec_hdr`), and its parser."""
from __future__ import annotations

import struct
from dataclasses import dataclass

from fastpath import counters

POINTS = ("tap_in", "ul_out", "ul_in", "tap_out", "decision")
MAC_ANY = 1 << 63
REC_PAD = 0xFF
REC_INBOUND = 1
REC_PEER6 = 2      # the data starts with the peer's IPv6 address (16 bytes), `peer` is 0
# rec_len, point, verdict, reason, flags, ts_ns, seq, vni, peer, orig_len, caplen, peer_port
RECORD = struct.Struct("<IBBBBQQIIIHH")
assert RECORD.size == 40


@dataclass(frozen=True)
class Record:
    point: str
    verdict: str
    reason: str | None
    ts_ns: int
    seq: int
    vni: int
    peer: int          # VTEP IPv4 (host order int), 0 if none
    peer_port: int     # source port (ul_in, inbound decision) or copies (outbound decision)
    orig_len: int
    data: bytes
    inbound: bool | None = None   # flags bit 0: underlay -> TAP (None: not recorded)
    peer6: bytes | None = None    # the IPv6 VTEP (REC_PEER6), None: IPv4 or none


def parse_records(blob: bytes) -> list[Record]:
    """Split what Switch.trace_read() returned into records; raises ValueError if malformed."""
    out = []
    off = 0
    while off < len(blob):
        if len(blob) - off < RECORD.size:
            raise ValueError(f"trace record truncated at offset {off}: "
                             f"{len(blob) - off} bytes < header {RECORD.size}")
        (rec_len, point, verdict, reason, flags, ts, seq, vni, peer, orig_len, caplen,
         port) = RECORD.unpack_from(blob, off)
        if rec_len < RECORD.size + caplen or off + rec_len > len(blob):
            raise ValueError(f"bad trace record length {rec_len} at offset {off}")
        if point != REC_PAD:
            if point >= len(POINTS):
                raise ValueError(f"bad trace point {point} at offset {off}")
            v = counters.VERDICTS[verdict] if verdict < len(counters.VERDICTS) else "?"
            data = blob[off + RECORD.size:off + RECORD.size + caplen]
            peer6 = None
            if flags & REC_PEER6:
                if caplen < 16:
                    raise ValueError(f"trace record at offset {off}: IPv6 peer flag with only "
                                     f"{caplen} bytes of data")
                peer6, data = data[:16], data[16:]
            out.append(Record(POINTS[point], v,
                              counters.NAMES[reason][5:] if v == "drop" else None,
                              ts, seq, vni, peer, port, orig_len, data,
                              bool(flags & REC_INBOUND), peer6))
        off += rec_len
    return out
