"""Table sinks for tests and harnesses: `FakeSink` keeps the tables in dicts and records every
call; `CountingSink` only counts."""

from __future__ import annotations

import threading

from .tables import FdbKey, FdbValue, NeighKey, Tables


class FakeSink:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.fdb: dict[FdbKey, FdbValue] = {}
        self.neigh: dict[NeighKey, str] = {}
        self.calls: list[tuple[object, ...]] = []

    def fdb_add(self, vni: int, mac: str, vtep: str, port: int) -> None:
        with self.lock:
            self.calls.append(("fdb_add", vni, mac, vtep, port))
            self.fdb[(vni, mac)] = (vtep, port)

    def fdb_del(self, vni: int, mac: str) -> None:
        with self.lock:
            self.calls.append(("fdb_del", vni, mac))
            self.fdb.pop((vni, mac), None)

    def neigh_add(self, vni: int, ip: str, mac: str) -> None:
        with self.lock:
            self.calls.append(("neigh_add", vni, ip, mac))
            self.neigh[(vni, ip)] = mac

    def neigh_del(self, vni: int, ip: str) -> None:
        with self.lock:
            self.calls.append(("neigh_del", vni, ip))
            self.neigh.pop((vni, ip), None)

    def tables(self) -> Tables:
        with self.lock:
            return Tables(fdb=dict(self.fdb), neigh=dict(self.neigh))


class CountingSink:
    """A `TableSink` that only counts its calls (for the scale harness: the real sync code with
    the fast path's tables replaced). Thread-safe enough for one control thread per sink."""

    def __init__(self) -> None:
        self.fdb_adds = 0
        self.fdb_dels = 0
        self.neigh_adds = 0
        self.neigh_dels = 0

    def fdb_add(self, vni: int, mac: str, vtep: str, port: int) -> None:
        self.fdb_adds += 1

    def fdb_del(self, vni: int, mac: str) -> None:
        self.fdb_dels += 1

    def neigh_add(self, vni: int, ip: str, mac: str) -> None:
        self.neigh_adds += 1

    def neigh_del(self, vni: int, ip: str) -> None:
        self.neigh_dels += 1

    def entries(self) -> int:
        """fdb entries the sink would hold (adds of a moved MAC replace, so this is an upper
        bound only when the sync replaced entries; exact for adds and deletes)."""
        return self.fdb_adds - self.fdb_dels
