"""A `TableSink` that keeps the tables in dicts and records every call (for tests)."""

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
