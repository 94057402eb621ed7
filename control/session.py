"""The etcd session skeleton both control threads share (control/sync.py: vxtap's own records;
control/flannel_sync.py: flannel's subnet leases).

1. `_connect()`: the cached client, or a new one (URLs in order, control/etcd.py `connect`,
   checked with one read of `_check_key`); `_client_ready` is notified for threads that wait
   for it (the node lease's keepalive thread).
2. A failed etcd call -> `_disconnected(err)`: state.connected False, state.last_error set,
   one WARNING per outage (not one per retry), the client closed; the caller waits
   `_backoff.next()` (capped exponential, +-20 % jitter) on its stop event and tries again.
3. Back -> `_connected()`: state.connected True, state.etcd_url, last_error cleared (a stale
   error after reconnecting misleads an operator, issue 12), reconnects counted after the
   first, one INFO line, backoff reset.
4. `_retry(fn, timeout, what)`: steps 1-3 around one call until `timeout` (bootstrap, config
   reads, lease acquisition): TimeoutError naming the URLs and the last error.

What differs stays with each control plane: what a session does once connected (list + watch
with its own watch API, leases) and the text of its log lines (`_session_text()`). A user of
the mixin sets, before any call: settings, _check_key, state (with connected, etcd_url,
last_error, reconnects), and calls `_init_session(backoff_initial, backoff_max)`.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any

import pyetcd  # type: ignore[import-untyped]

from .etcd import ETCD_ERRORS, EtcdSettings, close_quietly, connect, describe

log = logging.getLogger(__name__)


class Backoff:
    """Capped exponential backoff with +-20 % jitter."""

    def __init__(self, initial: float = 0.05, cap: float = 1.0) -> None:
        self.initial = initial
        self.cap = cap
        self._next = initial

    def reset(self) -> None:
        self._next = self.initial

    def next(self) -> float:
        delay = self._next
        self._next = min(self.cap, self._next * 2)
        return delay * random.uniform(0.8, 1.2)


class EtcdSession:
    """Mixin: connection state, backoff and retry of one control thread (module docstring)."""

    settings: EtcdSettings
    state: Any
    _check_key: str
    _log: logging.Logger = log

    def _init_session(self, backoff_initial: float, backoff_max: float) -> None:
        self._backoff = Backoff(backoff_initial, backoff_max)
        self._lock = threading.Lock()          # guards _client, _url, state
        self._client_ready = threading.Condition(self._lock)
        self._client: pyetcd.MultiEndpointEtcd3Client | None = None
        self._url: str | None = None
        self._stop = threading.Event()
        self._ever_connected = False

    def _session_text(self) -> str:
        """What the log lines say this session is for (e.g. "node n1, network net1")."""
        return ""

    def _urls_text(self) -> str:
        return ",".join(str(u) for u in self.settings.urls)

    def _connect(self) -> pyetcd.MultiEndpointEtcd3Client:
        with self._lock:
            if self._client is not None:
                return self._client
        client, url = connect(self.settings, self._check_key)
        with self._client_ready:
            self._client, self._url = client, str(url)
            self._client_ready.notify_all()
        return client

    def _close_client(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        close_quietly(client)

    def _connected(self) -> None:
        with self._lock:
            was = self.state.connected
            self.state.connected = True
            self.state.etcd_url = self._url
            self.state.last_error = None
            if not was and self._ever_connected:
                self.state.reconnects += 1
        if not was:
            self._log.info("etcd connected: %s (%s)", self._url, self._session_text())
        self._ever_connected = True
        self._backoff.reset()

    def _disconnected(self, err: BaseException) -> None:
        text = describe(err)
        with self._lock:
            was = self.state.connected
            first_failure = self.state.last_error is None and not self._ever_connected
            self.state.connected = False
            self.state.last_error = text
        if was or first_failure:
            self._log.warning("etcd unavailable (%s): %s; keeping the last known tables, "
                              "retrying with backoff up to %gs", self._urls_text(), text,
                              self._backoff.cap)
        self._close_client()

    def _retry(self, fn: Any, timeout: float, what: str) -> Any:
        """fn(client) until it returns, retrying etcd errors with backoff until `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                result = fn(self._connect())
                self._backoff.reset()
                return result
            except ETCD_ERRORS as e:
                self._disconnected(e)
                delay = self._backoff.next()
                if time.monotonic() + delay > deadline:
                    raise TimeoutError(f"{what}: etcd not reachable at {self._urls_text()} "
                                       f"within {timeout:g}s: {describe(e)}") from None
                if self._stop.wait(delay):
                    raise TimeoutError(f"stopped while {what}") from None
