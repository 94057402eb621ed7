"""Enter a named network namespace for the current OS thread (setns), and come back.

The agent stays in its own namespace (where etcd is reachable) and creates its TAP, bridge
port and underlay sockets inside a node's namespace: a socket or TAP keeps the namespace it
was created in, so only their creation happens in here.
"""
from __future__ import annotations

import ctypes
import os
from contextlib import contextmanager
from typing import Iterator

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns failed: {os.strerror(err)}")


@contextmanager
def netns(name: str | None) -> Iterator[None]:
    """`with netns("node1"): ...` runs the block in /run/netns/node1 (None: stay here)."""
    if not name:
        yield
        return
    path = name if name.startswith("/") else os.path.join(NETNS_RUN_DIR, name)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ValueError(f"no network namespace {name!r} ({path} does not exist)") from None
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)
