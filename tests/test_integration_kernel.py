"""Kernel VXLAN <-> kernel VXLAN on the test topology.

This is the reference: it proves tests/topo.py (namespaces, underlay, bridges, pods, static fdb)
right without any vxtap code, so a failure in test_integration_dataplane.py that does not
show here is the agent's.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests import topo

pytestmark = pytest.mark.integration


def test_kernel_vxlan_ping_and_transfer(topo2: topo.Topology) -> None:
    topo2.kernel_vxlan_mesh(vni=42)
    a, b = topo2.pod(1), topo2.pod(2)

    st = a.ping(b, count=5, interval=0.05)
    assert st.received == st.transmitted, st.output
    st = b.ping(a, count=3, interval=0.05)
    assert st.received == st.transmitted, st.output

    res = topo2.tcp_transfer(a, b, size=20 * 1024 * 1024)
    assert res.intact, res
    res = topo2.tcp_transfer(b, a, size=2 * 1024 * 1024)
    assert res.intact, res

    # The topology really went through VXLAN devices with learning off, on the node ns only.
    for node in topo2.nodes:
        links = node.vxlan_links()
        assert [link["ifname"] for link in links] == ["vx42"]
        info = links[0]["linkinfo"]["info_data"]
        assert info["id"] == 42 and info["port"] == topo.VXLAN_PORT and not info["learning"]


def test_kernel_vxlan_full_size_frames_fit(topo2: topo.Topology) -> None:
    """Pod MTU = underlay MTU - 50: a full-size DF ping crosses, one byte more does not."""
    topo2.kernel_vxlan_mesh()
    a, b = topo2.pod(1), topo2.pod(2)
    payload = a.mtu - 28  # IPv4 20 + ICMP 8
    st = a.ping(b, count=2, interval=0.05, size=payload, dont_fragment=True)
    assert st.received == 2, st.output
    st = a.ping(b, count=1, deadline=1, size=payload + 1, dont_fragment=True, check=False)
    assert st.received == 0


def test_kernel_vxlan_three_nodes_hub(make_topology: Callable[..., topo.Topology]) -> None:
    """N>2 nodes use a bridge in a hub namespace; two pods per node."""
    t = make_topology(nodes=3, pods=2, mtu=9000)
    t.kernel_vxlan_mesh(vni=7)
    assert t.hub is not None
    src = t.pod(1, 0)
    for dst in t.pods[1:]:
        st = src.ping(dst, count=1, check=False)
        assert st.received == 1, f"{src.ip} -> {dst.ip}: {st.output}"
    st = t.pod(2, 1).ping(t.pod(3, 1), count=2, interval=0.05, size=8000, dont_fragment=True)
    assert st.received == 2, st.output
    res = t.tcp_transfer(t.pod(3, 1), t.pod(1, 1), size=4 * 1024 * 1024)
    assert res.intact, res


def test_capture_sees_vxlan_and_arp_inside(topo2: topo.Topology) -> None:
    """The capture helper used for ARP suppression: with kernel VXLAN, ARP does cross the
    tunnel (flooded to the 00:00:00:00:00:00 entry), so the check can see it."""
    topo2.kernel_vxlan_mesh()
    cap = topo2.capture(topo2.node(1))
    arp_only = topo2.capture(topo2.node(1), bpf=topo.BPF_VXLAN_ARP, name="arp")
    with cap, arp_only:
        topo2.pod(1).ping(topo2.pod(2), count=2, interval=0.05)
    frames = cap.vxlan_frames()
    arp_frames = arp_only.vxlan_frames()
    assert arp_frames and all(topo.inner_ethertype(f) == 0x0806 for *_, f in arp_frames)
    assert frames, "no VXLAN datagram captured"
    assert all(hdr[0] == 0x08 and int.from_bytes(hdr[4:7], "big") == 42 for _, _, hdr, _ in frames)
    assert any(topo.inner_ethertype(f) == 0x0806 for _, _, _, f in frames)
    assert topo2.pod(1).neighbours()["10.244.2.2"][0] == "02:00:00:00:02:02"
