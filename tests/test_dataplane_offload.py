"""The TAP with a virtio-net header and offloads, on a real TAP in a test namespace: created and
adopted, frames read with their header, plain TAP with offloads off."""
from __future__ import annotations

import os
import select
import struct
import time
from collections.abc import Iterator

import pytest

from dataplane import devices
from tests import topo

pytestmark = pytest.mark.integration


@pytest.fixture
def ns() -> Iterator[str]:
    """A namespace of our own (unique name, deleted afterwards even on failure)."""
    reason = topo.missing_privileges()
    if reason:
        pytest.skip(reason)
    name = f"vxtoff{os.getpid() % 100000}{time.monotonic_ns() % 1000:03d}"
    topo.ip("netns", "add", name)
    try:
        topo.ip("link", "set", "lo", "up", ns=name)
        yield name
    finally:
        topo.ip("netns", "del", name, check=False)


def _read_frame(fd: int, timeout: float = 5) -> bytes:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r, _, _ = select.select([fd], [], [], 0.2)
        if r:
            try:
                return os.read(fd, 70000)
            except BlockingIOError:
                continue
    raise AssertionError("no frame from the TAP")


def _arp_frame(data: bytes, off: int) -> bool:
    return len(data) >= off + 14 and struct.unpack_from("!H", data, off + 12)[0] == 0x0806


@pytest.mark.parametrize("adopt", [False, True], ids=["created", "adopted"])
def test_tap_with_vnet_header_and_offloads(ns: str, adopt: bool) -> None:
    name = "vxoff0"
    if adopt:
        topo.ip("tuntap", "add", "dev", name, "mode", "tap", ns=ns)
    tap = devices.open_tap(name, 42, mtu=1450, ns=ns, offload=True)
    try:
        assert tap.vnet_hdr
        assert {"csum", "tso4", "tso6"} <= set(tap.offload_names), tap.offload_names
        topo.ip("addr", "add", "10.99.0.1/24", "dev", name, ns=ns)
        topo.run(["ping", "-c", "1", "-W", "1", "10.99.0.2"], ns, check=False, timeout=5)
        data = b""
        for _ in range(20):
            data = _read_frame(tap.fileno())
            if _arp_frame(data, 10):
                break
        assert _arp_frame(data, 10), data[:40].hex()
        assert data[:10] == bytes(10), "an ARP request carries an empty virtio-net header"
        # a write needs the header too: an ARP reply written with one reaches the stack
        reply = (data[10 + 6:10 + 12] + bytes.fromhex("020000000099") + b"\x08\x06"
                 + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2) + bytes.fromhex("020000000099")
                 + bytes([10, 99, 0, 2]) + data[10 + 22:10 + 28] + bytes([10, 99, 0, 1]))
        os.write(tap.fileno(), bytes(10) + reply)
        time.sleep(0.2)
        neigh = topo.run(["ip", "neigh", "show", "10.99.0.2", "dev", name], ns).stdout
        assert "02:00:00:00:00:99" in neigh, neigh
    finally:
        tap.close()
    links = topo.run(["ip", "-o", "link", "show"], ns).stdout
    assert (name in links) == adopt, "an adopted TAP stays, a created one goes"


def test_tap_offload_off_is_plain(ns: str) -> None:
    tap = devices.open_tap("vxoff1", 42, mtu=1450, ns=ns, offload=False)
    try:
        assert not tap.vnet_hdr and tap.offloads == 0
    finally:
        tap.close()
