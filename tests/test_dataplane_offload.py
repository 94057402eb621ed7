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


def test_agent_falls_back_to_offload_off_when_the_tap_refuses_the_header(
        topo2: topo.Topology, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """--offload auto and a TAP that refuses IFF_VNET_HDR (no such kernel is at hand: the
    refusal is simulated at the ioctl's wrapper; the TAP itself is real): the agent runs with
    offloads off, says so in one log line, and forwards (ping to a kernel VXLAN peer)."""
    import errno
    import logging

    from dataplane.agent import Agent, AgentConfig
    from dataplane.tablefile import FdbEntry, NeighEntry

    real = devices.VnetTap.__init__

    def refuse(self: devices.VnetTap, name: str, queues: int = 1, vnet: bool = True) -> None:
        if vnet:
            raise OSError(errno.EINVAL, "Invalid argument")
        real(self, name, queues, vnet)

    monkeypatch.setattr(devices.VnetTap, "__init__", refuse)
    t = topo2
    n1, n2 = t.nodes
    t.add_kernel_vxlan(n2, vni=42)
    p2 = t.pod(2)
    cfg = AgentConfig(tap="vxfb0", vni=42, local=n1.ip, bridge=n1.bridge, netns=n1.ns,
                      mtu=n1.overlay_mtu, underlay_mtu=n1.mtu, offload="auto", nice=None,
                      sock=str(t.workdir / "fallback.sock"),
                      entries=[FdbEntry(p2.mac, n2.ip, 4789, None),
                               NeighEntry(p2.ip, p2.mac, None)])
    agent = Agent(cfg)
    with caplog.at_level(logging.INFO):
        agent.start()
    try:
        assert not agent.offload_on
        assert agent.stats()["offload"]["active"] is False
        lines = [r.getMessage() for r in caplog.records if "(IFF_VNET_HDR); running" in
                 r.getMessage()]
        assert len(lines) == 1 and "offloads off" in lines[0], lines
        st = t.pod(1).ping(p2, count=3, interval=0.1)
        assert st.received == st.transmitted, st.output
    finally:
        agent.close()
