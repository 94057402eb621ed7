"""The data plane of one agent: the fast-path switch, its TAPs, sockets and threads.

Threads: one outbound thread per network (TAP -> underlay) and one inbound thread
(underlay -> every TAP) ("split"), or ("single") one thread for everything, or ("multi") N
threads that each do everything for one queue: queue q of every multi-queue TAP and the q-th
SO_REUSEPORT underlay socket (the kernel spreads flows over the queues and sockets by hash,
so each flow is forwarded by one thread, in order; fastpath/queues.pxd). Each spends its whole life inside a Cython loop with the GIL released;
they only come back to Python when `stop()` is called or a device fails.
Networks come and go while the threads run: `add_tap` adds the network to the switch (the
single thread picks it up between drains; in split mode it gets its own outbound thread);
`remove_tap` removes it from the switch (its outbound loop ends, the single thread forgets
it), waits a grace period for a batch that was classified just before (its frames may still
be on their way to the old TAP fd), then closes the TAP.
The table sink methods (fdb_add, ...) are what the control side calls; they are applied by the
switch under its table lock between batches (see fastpath/switch.pyx, "Locking").
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable

from dataplane.devices import Tap
from dataplane.underlay import Underlay
from fastpath.switch import Switch

log = logging.getLogger("vxtap.forwarder")


THREAD_MODES = ("auto", "single", "split", "multi")


def plan_threads(threads: str, queues: int) -> tuple[str, int]:
    """The thread mode and queue count an agent runs with: (mode, queues).

    threads "auto": single on <= 2 CPUs, else split (the modes' measurements are in
    benchmarks/RESULTS.md). "multi": `queues` forwarding threads (0: one per CPU, at least
    2, at most MAX_QUEUES)."""
    from fastpath.queues import C_CONSTANTS
    cpus = os.cpu_count() or 1
    if threads not in THREAD_MODES:
        raise ValueError(f"threads must be one of {', '.join(THREAD_MODES)}, got {threads!r}")
    if threads == "auto":
        threads = "single" if cpus <= 2 else "split"
    if threads != "multi":
        return threads, 1
    cap = C_CONSTANTS["MAX_QUEUES"]
    if queues == 0:
        queues = max(2, min(cpus, cap))
    if not 1 <= queues <= cap:
        raise ValueError(f"queues must be in 1..{cap} (0: one per CPU), got {queues}")
    return "multi", queues


class Forwarder:
    def __init__(self, switch: Switch, underlay: Underlay, nice: int | None = -10) -> None:
        self.switch = switch
        self.underlay = underlay
        self.taps: dict[int, Tap] = {}
        self._threads: list[threading.Thread] = []
        self._tx_threads: dict[int, threading.Thread] = {}     # split mode, by VNI
        self.nice = nice
        self.mode = "stopped"
        self.failed = threading.Event()
        self.on_failure: Callable[[str], None] | None = None

    # ---- table sink (docs/architecture.md) -----------------------------------------------------
    def fdb_add(self, vni: int, mac: str, vtep: str, port: int | None = None) -> None:
        self.switch.fdb_add(vni, mac, vtep, port)

    def fdb_del(self, vni: int, mac: str) -> None:
        self.switch.fdb_del(vni, mac)

    def neigh_add(self, vni: int, ip: str, mac: str) -> None:
        self.switch.neigh_add(vni, ip, mac)

    def neigh_del(self, vni: int, ip: str) -> None:
        self.switch.neigh_del(vni, ip)

    # ---- lifecycle ------------------------------------------------------------------------------
    GRACE = 0.1      # seconds: a batch classified before a removal has been written by then

    def add_tap(self, tap: Tap) -> None:
        self.switch.add_network(tap.vni, tap.fileno(), tap.queue_fds)
        self.taps[tap.vni] = tap
        if self.mode == "split":
            self._spawn_tx(tap.vni)

    def remove_tap(self, vni: int) -> None:
        tap = self.taps.pop(vni)
        self.switch.remove_network(vni)
        t = self._tx_threads.pop(vni, None)
        if t is not None:
            t.join(timeout=5)
            if t.is_alive():
                log.error("thread %s did not stop", t.name)
            self._threads.remove(t)
        time.sleep(self.GRACE)
        tap.close()

    def _spawn_tx(self, vni: int) -> None:
        self._tx_threads[vni] = self._spawn(f"vxtap-tx-{vni}", self.switch.run_tx, vni,
                                            self.underlay.raw_fd())

    def start(self, threads: str = "auto") -> None:
        """threads: "split" = one thread per direction (per network for TAP->underlay);
        "single" = one thread for everything (small machines: fewer context switches, and no
        thread hand-off on the latency path); "multi" = switch.nqueues threads, one per TAP
        queue / underlay socket (set up by the agent: set_queues, multi-queue TAPs,
        open_underlay(queues=)); "auto" = plan_threads' choice."""
        if threads == "auto":
            threads, _ = plan_threads("auto", 0)
        self.mode = threads
        if threads == "single":
            self._spawn("vxtap-fwd", self.switch.run_all, self.underlay.raw_fd(),
                        self.underlay.udp.fileno())
            return
        if threads == "multi":
            socks = self.underlay.receivers
            if len(socks) != self.switch.nqueues:
                raise ValueError(f"{self.switch.nqueues} queues but {len(socks)} underlay "
                                 "receive sockets")
            for q, sock in enumerate(socks):
                self._spawn("vxtap-fwd" if q == 0 else f"vxtap-fwd-{q}", self.switch.run_all,
                            self.underlay.raw_fd(), sock.fileno(), q)
            return
        if threads != "split":
            raise ValueError(f"threads must be 'split', 'single' or 'multi', got {threads!r}")
        for vni in self.taps:
            self._spawn_tx(vni)
        self._spawn("vxtap-rx", self.switch.run_rx, self.underlay.udp.fileno())

    def _spawn(self, name: str, fn: Callable[..., Any], *args: Any) -> threading.Thread:
        def body() -> None:
            if self.nice is not None:
                # Like ovs-vswitchd's default nice -10: forwarding must not starve behind the
                # workloads it serves (the kernel path runs in softirq, ahead of all of them).
                try:
                    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)
                except OSError as e:
                    log.warning("cannot set nice %d on %s: %s", self.nice, name, e)
            try:
                fn(*args)
            except BaseException as e:          # a dead forwarding thread must be reported
                log.error("forwarding thread %s failed: %s", name, e)
                self.failed.set()
                if self.on_failure:
                    self.on_failure(f"{name}: {e}")
        t = threading.Thread(target=body, name=name, daemon=True)
        t.start()
        self._threads.append(t)
        return t

    def thread_ids(self) -> dict[str, int | None]:
        return {t.name: t.native_id for t in self._threads}

    def stop(self) -> None:
        self.switch.stop()
        for t in self._threads:
            t.join(timeout=5)
            if t.is_alive():
                log.error("thread %s did not stop", t.name)
        self._threads.clear()
        self._tx_threads.clear()

    def close(self) -> None:
        self.stop()
        for tap in self.taps.values():
            tap.close()
        self.underlay.close()
