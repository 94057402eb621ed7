"""IPv6 underlay end to end, in namespaces (issue 10): vxtap <-> vxtap and vxtap <-> the Linux
kernel's VXLAN (`ip link add ... type vxlan ... local <v6>`) over an IPv6-only underlay, both
directions, ping and ping -6 between pods, a full-size DF ping (70 bytes of overhead), a
SHA-256-checked TCP transfer, offloads on and off; the UDP checksum of what vxtap puts on the
wire (scapy); zero checksums only when both ends are configured for them (udp6zerocsum*);
a dual-stack agent with one IPv4 and one IPv6 peer at once; and every IPv6 bad input, dropped
and counted where it reaches us (fast path: ip6_ext_hdr, ip6_fragment) or by the kernel before
the socket (bad/zero checksum, lengths, truncation: `show stats` kernel ip6 counters)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import (IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment,
                                IPv6ExtHdrHopByHop, fragment6)
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from fastpath import outer6_ref
from tests import topo

pytestmark = pytest.mark.integration

MB = 1024 * 1024
VNI = 42


def nz(d: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in d.items() if v}


def net0(agent: topo.Agent) -> dict[str, Any]:
    return agent.stats()["networks"][0]


def talk(t: topo.Topology, size: int = 20 * MB) -> None:
    """Pods 1 and 2: ping and ping -6 both ways, a full-size DF ping, a transfer each way."""
    a, b = t.pod(1), t.pod(2)
    for src, dst in ((a, b), (b, a)):
        st = src.ping(dst, count=3, interval=0.05)
        assert st.received == 3, st.output
        st = src.ping(dst.ip6, count=3, interval=0.05)
        assert st.received == 3, st.output
    assert a.mtu == 1500 - 70
    st = a.ping(b, count=2, interval=0.05, size=a.mtu - 28, dont_fragment=True)
    assert st.received == 2, st.output
    res = t.tcp_transfer(a, b, size=size)
    assert res.intact, res
    res = t.tcp_transfer(b, a, size=size // 4)
    assert res.intact, res


PAIRS = [("vxtap", "vxtap"), ("vxtap", "kernel")]


@pytest.mark.parametrize("offload", ["auto", "off"])
@pytest.mark.parametrize("pair", PAIRS, ids=["vxtap-vxtap", "vxtap-kernel"])
def test_ipv6_only_underlay(make_topology: Callable[..., topo.Topology], pair: tuple[str, str],
                            offload: str) -> None:
    t = make_topology(nodes=2, underlay="ipv6", pod_ipv6=True)
    assert all(n.ip4 is None and n.ip == n.ip6 for n in t.nodes)
    for node, kind in zip(t.nodes, pair):
        if kind == "kernel":       # kernel defaults: checksums computed, zero ones refused
            t.add_kernel_vxlan(node, vni=VNI)
        else:
            t.add_vxtap_agent(node, vni=VNI, extra=["--offload", offload])
    cap = t.capture(t.node(1), bpf=f"ip6 and udp dst port {topo.VXLAN_PORT}", name="ul6")
    a, b = t.pod(1), t.pod(2)
    st = a.ping(b.ip6, count=5, interval=0.05)
    assert st.received == 5, st.output
    cap.stop()
    talk(t)
    # what left node 1 (either VTEP) is IPv6 + UDP + VXLAN with a valid UDP checksum
    from scapy.utils import rdpcap
    pkts = [p for p in rdpcap(str(cap.path)) if IPv6 in p and p[IPv6].src == t.node(1).ip6]
    assert len(pkts) >= 5
    for p in pkts:
        u = p[UDP]
        assert u.dport == topo.VXLAN_PORT and u.chksum != 0 and p[IPv6].nh == 17
        again = IPv6(bytes(p[IPv6]))
        del again[UDP].chksum
        assert IPv6(bytes(again))[UDP].chksum == u.chksum, p.summary()
        assert p[VXLAN].vni == VNI
        # the flow label is the inner flow's (raw path: ours; pool: IPV6_FLOWINFO_SEND)
        assert p[IPv6].fl == outer6_ref.py_flow_label(bytes(p[VXLAN].payload)), p.summary()
    # the agents' view: per-VTEP counters under the IPv6 address, nothing spoofed or dropped
    for agent in t.agents:
        peer = t.node(2 if agent.node is t.node(1) else 1)
        n = net0(agent)
        (v,) = n["vteps"]
        assert v["vtep"] == peer.ip6 and v["rx_packets"] > 1000 and v["tx_packets"] > 1000, v
        c = nz(n["counters"])
        assert not {k for k in c if k.startswith("drop_")} - {"drop_bum"}, c
        st = agent.stats()
        assert nz(st["global"]) == {}, st["global"]
        if offload == "auto":
            assert st["offload"]["udp_gso6"] is True and st["offload"]["pool_ports6"]
            assert c["gso_segments"] > c["gso_frames"] > 0 and c["gro_frames"] > 0, c
        else:
            assert "gso_frames" not in c and "gro_frames" not in c, c
        out = agent.cli("show", "stats").stdout
        assert peer.ip6 in out


def test_udp6_zero_checksums_only_when_configured(
        make_topology: Callable[..., topo.Topology]) -> None:
    """A kernel peer with udp6zerocsumtx/rx: by default vxtap's kernel socket refuses its
    zero-checksum datagrams (counted: kernel ip6 udp6_in_csum_errors), nothing is delivered;
    with --udp6zerocsumtx --udp6zerocsumrx both directions work and vxtap sends checksum 0."""
    t = make_topology(nodes=2, underlay="ipv6", pod_ipv6=True)
    n1, n2 = t.nodes
    t.add_kernel_vxlan(n2, vni=VNI, extra=["udp6zerocsumtx", "udp6zerocsumrx"])
    ag = t.add_vxtap_agent(n1, vni=VNI)
    a, b = t.pod(1), t.pod(2)
    before = ag.stats()["kernel"]["ip6"]["udp6_in_csum_errors"]
    st = b.ping(a, count=3, interval=0.05, deadline=2, check=False)
    assert st.received == 0, st.output
    after = ag.stats()
    assert after["kernel"]["ip6"]["udp6_in_csum_errors"] >= before + 3, after["kernel"]
    assert net0(ag)["counters"]["udp_rx_packets"] == 0
    t.remove_agent(ag)
    ag = t.add_vxtap_agent(n1, vni=VNI, extra=["--udp6zerocsumtx", "--udp6zerocsumrx"])
    cap = t.capture(n1, bpf=f"ip6 and udp dst port {topo.VXLAN_PORT}", name="zero")
    for src, dst in ((a, b), (b, a)):
        st = src.ping(dst, count=3, interval=0.05)
        assert st.received == 3, st.output
    res = t.tcp_transfer(a, b, size=4 * MB)
    assert res.intact, res
    cap.stop()
    from scapy.utils import rdpcap
    mine = [p for p in rdpcap(str(cap.path)) if IPv6 in p and p[IPv6].src == n1.ip6]
    assert mine and all(p[UDP].chksum == 0 for p in mine)
    assert net0(ag)["counters"]["udp_rx_packets"] > 0


def test_dual_stack_agent_with_an_ipv4_and_an_ipv6_peer(
        make_topology: Callable[..., topo.Topology]) -> None:
    """Node 1's agent has --local IPv4 and --local IPv6; node 2's kernel VXLAN speaks IPv4,
    node 3's IPv6. Pod 1 reaches both pods, and both reach it, at the same time."""
    t = make_topology(nodes=3, underlay="dual")
    n1, n2, n3 = t.nodes
    p1, p2, p3 = t.pod(1), t.pod(2), t.pod(3)
    assert p1.mtu == 1500 - 70
    fdb = [(p2.mac, n2.ip4, 4789), (p3.mac, n3.ip6, 4789)]
    ag = t.add_vxtap_agent(n1, vni=VNI, local=f"{n1.ip4},{n1.ip6}", fdb=fdb)
    t.add_kernel_vxlan(n2, vni=VNI, local=n2.ip4, peers=[n1], fdb=[(p1.mac, n1.ip4, 4789)])
    t.add_kernel_vxlan(n3, vni=VNI, local=n3.ip6, peers=[n1], fdb=[(p1.mac, n1.ip6, 4789)])
    for dst in (p2, p3):
        for x, y in ((p1, dst), (dst, p1)):
            st = x.ping(y, count=3, interval=0.05)
            assert st.received == 3, (x.ip, y.ip, st.output)
    for dst in (p2, p3):
        res = t.tcp_transfer(p1, dst, size=4 * MB)
        assert res.intact, res
        res = t.tcp_transfer(dst, p1, size=2 * MB)
        assert res.intact, res
    vt = {v["vtep"]: v for v in net0(ag)["vteps"]}
    assert set(vt) == {n2.ip4, n3.ip6}
    # live table edits with IPv6 VTEPs: CLI ([v6]:port) and control socket (vtep + port)
    ag.cli("fdb", "add", "02:00:00:00:09:01", f"[{n3.ip6}]:8472")
    ag.request("fdb_add", mac="02:00:00:00:09:02", vtep=n2.ip6, port=4790)
    with pytest.raises(topo.AgentError, match="disagree"):
        ag.request("fdb_add", mac="02:00:00:00:09:03", vtep=f"[{n2.ip6}]:1", port=2)
    rows = {m: (v, p) for m, v, p in ag.request("show", what="fdb")["rows"]}
    assert rows["02:00:00:00:09:01"] == (n3.ip6, 8472)
    assert rows["02:00:00:00:09:02"] == (n2.ip6, 4790)
    assert f"dst {n3.ip6} port 8472" in ag.cli("show", "fdb").stdout
    for m in ("02:00:00:00:09:01", "02:00:00:00:09:02"):
        ag.cli("fdb", "del", m)
    assert all(v["rx_packets"] > 100 and v["tx_packets"] > 100 for v in vt.values()), vt
    assert ag.request("info")["local"] == f"{n1.ip4},{n1.ip6}"


def _vxlan6(src_node: topo.Node, dst_node: topo.Node, dst_mac: str, inner: bytes,
            ext: Any = None) -> Any:
    l3 = IPv6(src=src_node.ip6, dst=dst_node.ip6)
    if ext is not None:
        l3 = l3 / ext
    return (Ether(dst=dst_mac, src=topo.link_mac(src_node.ns, src_node.dev)) / l3 /
            UDP(sport=40000, dport=topo.VXLAN_PORT) / VXLAN(vni=VNI, flags=0x08) / inner)


def test_ipv6_bad_input_dropped_and_counted(make_topology: Callable[..., topo.Topology]) -> None:
    """Crafted frames from node 2's underlay port to node 1's agent (AF_PACKET: the kernel of
    the sender changes nothing). Extension headers and fragments reach the socket and are the
    fast path's drops; a zero or wrong UDP checksum, a wrong payload length and a truncated
    UDP header never reach it and are the kernel's (shown in `show stats`)."""
    t = make_topology(nodes=2, underlay="ipv6")
    n1, n2 = t.nodes
    ag = t.add_vxtap_agent(n1, vni=VNI)
    dmac = topo.link_mac(n1.ns, n1.dev)
    inner = bytes(Ether(src=t.pod(2).mac, dst=t.pod(1).mac) /
                  IP(src=t.pod(2).ip, dst=t.pod(1).ip) / UDP(sport=7, dport=9) / (b"x" * 32))
    good = _vxlan6(n2, n1, dmac, inner)

    def send(frames: list[Any]) -> None:
        assert topo.send_ethernet(n2.ns, n2.dev, [bytes(f) for f in frames]) == len(frames)

    def snapshot() -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
        st = ag.stats()
        return st["networks"][0]["counters"], st["global"], st["kernel"]["ip6"]

    def delta(before: tuple[dict[str, int], ...]) -> dict[str, int]:
        import time
        time.sleep(0.3)
        after = snapshot()
        out = {}
        for b, a in zip(before, after):
            out.update({k: a[k] - b[k] for k in a if a[k] != b[k]})
        return out

    s0 = snapshot()
    send([good])
    d = delta(s0)
    assert d.get("udp_rx_packets") == 1 and d.get("tap_tx_packets") == 1, d
    cases: list[tuple[str, list[Any], str]] = [
        ("destination options", [_vxlan6(n2, n1, dmac, inner, IPv6ExtHdrDestOpt())],
         "drop_ip6_ext_hdr"),
        ("hop-by-hop", [_vxlan6(n2, n1, dmac, inner, IPv6ExtHdrHopByHop())],
         "drop_ip6_ext_hdr"),
        ("fragments", [Ether(dst=dmac, src=good[Ether].src) / f for f in fragment6(
            IPv6(src=n2.ip6, dst=n1.ip6) / IPv6ExtHdrFragment() /
            UDP(sport=40000, dport=topo.VXLAN_PORT) / VXLAN(vni=VNI, flags=0x08) / inner,
            96)], "drop_ip6_fragment"),
    ]
    zero = good.copy()
    zero[UDP].chksum = 0
    bad = Ether(bytes(good))
    bad[UDP].chksum ^= 0x5555
    longer = Ether(bytes(good))
    longer[IPv6].plen += 40                 # says more than the frame has
    short_udp = Ether(bytes(good))
    short_udp[UDP].len = len(short_udp[UDP]) + 20     # UDP length beyond the packet
    trunc = Ether(bytes(good)[:14 + 40 + 4])          # half a UDP header
    trunc[IPv6].plen = 4
    cases += [("zero checksum", [zero], "udp6_in_csum_errors"),
              ("bad checksum", [bad], "udp6_in_csum_errors"),
              ("payload length beyond the frame", [longer], "ip6_in_truncated"),
              ("UDP length beyond the packet", [short_udp], "udp6_in_errors"),
              ("truncated UDP header", [trunc], "udp6_in_errors")]
    for what, frames, counter in cases:
        s0 = snapshot()
        send(frames)
        d = delta(s0)
        # a checksum the kernel left unvalidated is checked while recvmsg copies it out and
        # counted in the Udp (not Udp6) MIB: either counter is the kernel's drop reason
        got = d.get(counter, 0) + (d.get("udp_in_csum_errors", 0) if "csum" in counter else 0)
        assert got >= 1, (what, d)
        assert "udp_rx_packets" not in d and "tap_tx_packets" not in d, (what, d)
    s0 = snapshot()
    send([good])
    assert delta(s0).get("udp_rx_packets") == 1, "still forwarding"
    out = ag.cli("show", "stats").stdout
    assert "ip6_ext_hdr 2" in out and "ip6_fragment 1" in out and "csum_errors" in out


@pytest.mark.etcd
def test_ipv6_underlay_through_etcd(request: pytest.FixtureRequest,
                                    make_topology: Callable[..., topo.Topology]) -> None:
    """Two `vxtap agent --etcd` over an IPv6-only underlay: each registers its IPv6 underlay
    address in its node record, the other's fdb points at it, pods talk both ways."""
    import json

    from control.keys import Layout
    from tests.etcd_server import etcd_client, etcd_fresh_network, wait_until
    etcd = request.getfixturevalue("etcd")
    net = "v6ul"
    t = make_topology(nodes=2, underlay="ipv6")
    layout = Layout("/vxtap", net)
    etcd_fresh_network(etcd, net, [n.index for n in t.nodes],    # blocks clear of the pods
                       config={"vni": VNI, "subnet": "10.244.0.0/16", "block_prefix": 24})
    agents = [t.add_vxtap_agent(n, fdb=[], neigh=[], extra=[
        "--etcd", etcd.url, "--network", net, "--node", f"node{n.index}", "--lease-ttl", 5])
        for n in t.nodes]
    for agent, pod in zip(agents, (t.pod(1), t.pod(2))):
        agent.cli("endpoint", "add", pod.ns, "--mac", pod.mac, "--ip", f"{pod.ip}/16")
    client = etcd_client(etcd)
    try:
        recs = {n.index: json.loads(client.get(layout.node(f"node{n.index}"))[0])
                for n in t.nodes}
    finally:
        client.close()
    assert {i: r["underlay"] for i, r in recs.items()} == {1: t.node(1).ip6, 2: t.node(2).ip6}
    for agent, peer in zip(agents, (t.node(2), t.node(1))):
        wait_until(lambda agent=agent, peer=peer: [r[1] for r in
                                                   agent.request("show", what="fdb")["rows"]]
                   == [peer.ip6], timeout=15)
    for x, y in ((t.pod(1), t.pod(2)), (t.pod(2), t.pod(1))):
        st = x.ping(y, count=3, interval=0.05)
        assert st.received == 3, st.output
