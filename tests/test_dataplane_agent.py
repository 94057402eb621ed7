"""The agent's life cycle in network namespaces: devices it creates, adopts and removes, start-up
and shutdown paths, failures while it runs, and the MTU contract.

Topology (tests/topo.py, fixtures in conftest.py): two nodes on a veth underlay (MTU 1500), one
pod per node on the node's br0. Each test starts its own ``vxtap agent --netns NODE`` (registered
in ``Topology.agents``, so it is stopped by PID and the namespaces deleted whatever happens).
Where a peer is needed, node 2 runs the kernel's VXLAN (cheaper than a second agent; wire
compatibility is covered in test_integration_dataplane.py).

1. Devices: a created TAP (node namespace, bridge port, MTU = underlay MTU - 50, --mac) is gone
   after SIGTERM or SIGINT (exit 0); an adopted persistent TAP stays; a missing --bridge is
   created and removed.
2. Tables: --table FILE (with --fdb/--neigh flags) loaded, shown by ``vxtap show``, used by
   traffic; live changes and errors through the CLI (what test_integration_dataplane.py does not
   already cover: neigh del, replace, no-op deletes, error texts).
3. Failures: the TAP deleted under a running agent, a second agent on the same control socket,
   start-up errors: exit 1, one clear line, no traceback, nothing left behind.
4. MTU: a frame that does not fit the underlay is dropped and counted (drop_tx_too_big), never
   fragmented.
"""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests import topo

pytestmark = pytest.mark.integration

VNI = 42


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def unique_tap(t: topo.Topology) -> str:
    """A TAP name no other test or host device uses (so its absence anywhere is meaningful)."""
    return f"tp{t.prefix[3:]}"[:15]


def start_agent(t: topo.Topology, node: topo.Node, *extra: Any, tap: str = topo.AGENT_TAP,
                bridge: str | None = topo.BRIDGE, sock: Path | None = None,
                name: str = "agent", wait: bool = True) -> topo.Agent:
    """``vxtap agent --netns NODE`` with exactly the flags given (no --mtu, no tables unless in
    ``extra``). Registered in ``t.agents``: stopped by PID at teardown whatever happens."""
    cmd = topo.vxtap_command()
    if cmd is None:
        pytest.fail("vxtap is not installed (no `vxtap` script, no `python -m dataplane`)")
    sock = sock or t.workdir / f"{name}.sock"
    argv = [*cmd, "agent", "--netns", node.ns, "--tap", tap, "--vni", str(VNI),
            "--local", node.ip, "--sock", str(sock)]
    if bridge:
        argv += ["--bridge", bridge]
    argv += [str(a) for a in extra]
    proc = topo.BgProcess(argv, None, name=name, logdir=t.workdir, cwd=str(topo.REPO_ROOT))
    agent = topo.Agent(node, argv, sock, proc, VNI, topo.VXLAN_PORT, tap)
    t.agents.append(agent)
    if wait:
        agent.wait_ready()
    return agent


def exit_or_ready(agent: topo.Agent, timeout: float = 15) -> int | None:
    """The exit code of an agent expected to fail at start-up; None if it became ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rc = agent.proc.proc.poll()
        if rc is not None:
            agent.proc.wait(1)
            return rc
        if agent.ping() and agent.server_pid() == agent.proc.pid:
            return None
        time.sleep(0.05)
    raise topo.TopoError(f"agent neither exited nor answered within {timeout}s\n"
                         f"{agent.stderr_text()}")


def link(ns: str | None, dev: str) -> dict[str, Any] | None:
    """``ip -j -d link show DEV`` in ``ns`` (None: this namespace), None if there is no DEV."""
    cp = topo.run(["ip", "-j", "-d", "link", "show", "dev", dev], ns, check=False)
    if cp.returncode != 0:
        assert "does not exist" in cp.stderr, cp.stderr
        return None
    return json.loads(cp.stdout)[0]


def bridge_ports(ns: str, bridge: str = topo.BRIDGE) -> set[str]:
    cp = topo.run(["ip", "-j", "link", "show", "master", bridge], ns)
    return {e["ifname"] for e in json.loads(cp.stdout or "[]")}


def assert_no_traceback(agent: topo.Agent) -> str:
    err = agent.stderr_text()
    assert "Traceback" not in err, err
    return err


def counter(agent: topo.Agent, name: str) -> int:
    """A per-VNI counter of the agent's only network."""
    (net,) = agent.stats()["networks"]
    return int(net["counters"][name])


def peer_flags(t: topo.Topology) -> list[str]:
    """--fdb/--neigh for node 2's pod (node 2's VTEP listens on the default port)."""
    p2 = t.pod(2)
    return ["--fdb", f"{p2.mac},{t.node(2).ip}", "--neigh", f"{p2.ip},{p2.mac}"]


# ---------------------------------------------------------------------------------------------
# 1. Devices
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_created_tap_lives_and_dies_with_the_agent(topo2: topo.Topology,
                                                   sig: signal.Signals) -> None:
    t, n1 = topo2, topo2.node(1)
    tap, mac = unique_tap(t), "02:00:00:00:01:fe"
    agent = start_agent(t, n1, "--mac", mac, tap=tap)

    dev = link(n1.ns, tap)
    assert dev is not None
    assert dev["linkinfo"]["info_kind"] == "tun", dev
    assert dev["linkinfo"]["info_data"]["type"] == "tap", dev
    assert dev["linkinfo"]["info_data"]["persist"] is False, dev
    assert dev["mtu"] == n1.mtu - topo.VXLAN_OVERHEAD == 1450, dev
    assert dev["address"] == mac and dev["master"] == topo.BRIDGE and "UP" in dev["flags"], dev
    assert bridge_ports(n1.ns) == {"vp2", tap}
    assert link(None, tap) is None, "the TAP must not be created in the agent's own namespace"
    info = agent.request("info")
    assert (info["tap"], info["mac"], info["mtu"], info["underlay_mtu"], info["netns"]) == \
        (tap, mac, 1450, 1500, n1.ns), info

    t0 = time.monotonic()
    rc = agent.proc.stop(sig=sig, timeout=5)
    assert rc == 0, agent.stderr_text()
    assert time.monotonic() - t0 < 4, "the agent needed the SIGKILL fallback"
    assert link(n1.ns, tap) is None
    assert bridge_ports(n1.ns) == {"vp2"}
    assert link(n1.ns, topo.BRIDGE) is not None, "br0 existed before: it must stay"
    assert not agent.sock.exists(), "control socket left behind"
    err = assert_no_traceback(agent)
    assert f"signal {int(sig)}: stopping" in err and " ERROR " not in err, err


def test_adopts_a_persistent_tap_and_leaves_it(topo2: topo.Topology) -> None:
    t, n1 = topo2, topo2.node(1)
    tap = unique_tap(t)
    topo.ip("tuntap", "add", "dev", tap, "mode", "tap", ns=n1.ns)
    agent = start_agent(t, n1, tap=tap)
    dev = link(n1.ns, tap)
    assert dev is not None and dev["master"] == topo.BRIDGE and dev["mtu"] == 1450, dev
    assert dev["linkinfo"]["info_data"]["persist"] is True, dev
    assert f"adopted TAP {tap}" in agent.stderr_text()

    assert agent.proc.stop(timeout=5) == 0, agent.stderr_text()
    dev = link(n1.ns, tap)
    assert dev is not None, "an adopted TAP must survive the agent"
    assert dev["linkinfo"]["info_kind"] == "tun" and dev["linkinfo"]["info_data"]["persist"]
    assert_no_traceback(agent)


def test_adopted_tap_is_left_as_it_was_found(topo2: topo.Topology) -> None:
    """devices.Tap.close: 'an adopted TAP is left as it was found'."""
    t, n1 = topo2, topo2.node(1)
    tap = unique_tap(t)
    topo.ip("tuntap", "add", "dev", tap, "mode", "tap", ns=n1.ns)
    before = link(n1.ns, tap)
    assert before is not None
    agent = start_agent(t, n1, "--mac", "02:00:00:00:01:fe", tap=tap)
    assert agent.proc.stop(timeout=5) == 0, agent.stderr_text()
    after = link(n1.ns, tap)
    assert after is not None
    keys = ("address", "mtu", "master", "operstate")
    assert {k: after.get(k) for k in keys} == {k: before.get(k) for k in keys}


def test_missing_bridge_is_created_and_removed(topo2: topo.Topology) -> None:
    t, n1 = topo2, topo2.node(1)
    tap, br = unique_tap(t), "brvx"
    assert link(n1.ns, br) is None
    agent = start_agent(t, n1, tap=tap, bridge=br)
    dev = link(n1.ns, br)
    assert dev is not None and dev["linkinfo"]["info_kind"] == "bridge", dev
    assert "UP" in dev["flags"], dev
    assert bridge_ports(n1.ns, br) == {tap}
    assert bridge_ports(n1.ns) == {"vp2"}, "the node's own br0 must not be touched"
    assert "created bridge brvx" in agent.stderr_text()

    assert agent.proc.stop(timeout=5) == 0, agent.stderr_text()
    assert link(n1.ns, br) is None, "a bridge the agent created must be removed at exit"
    assert link(n1.ns, tap) is None
    assert link(n1.ns, topo.BRIDGE) is not None
    assert_no_traceback(agent)


def test_bridge_of_a_killed_agent_is_adopted_and_removed(topo2: topo.Topology) -> None:
    """issue 12 item 7: after SIGKILL + restart the agent knows the bridge is its own (a marker
    under /run/vxtap/created) and removes it at exit; a bridge it did not create stays."""
    t, n1 = topo2, topo2.node(1)
    tap, br = unique_tap(t), "brvk"
    first = start_agent(t, n1, tap=tap, bridge=br, name="first")
    assert "created bridge brvk" in first.stderr_text()
    first.proc.stop(sig=signal.SIGKILL)
    assert link(n1.ns, br) is not None                    # left behind by the SIGKILL
    second = start_agent(t, n1, tap=tap, bridge=br, name="second")
    assert "adopted bridge brvk, created by a previous agent here" in second.stderr_text()
    assert bridge_ports(n1.ns, br) == {tap}
    assert second.proc.stop(timeout=5) == 0, second.stderr_text()
    assert link(n1.ns, br) is None, "the bridge a killed agent created must go at exit"
    assert_no_traceback(second)
    # the operator's bridge of the same name, made after that: the marker is gone, so kept
    topo.ip("link", "add", br, "type", "bridge", ns=n1.ns)
    third = start_agent(t, n1, tap=tap, bridge=br, name="third")
    assert "adopted bridge" not in third.stderr_text()
    assert third.proc.stop(timeout=5) == 0
    assert link(n1.ns, br) is not None, "a bridge the agent did not create must stay"


def test_underlay_mtu_flag_sets_the_default_tap_mtu(topo2: topo.Topology) -> None:
    t, n1 = topo2, topo2.node(1)
    agent = start_agent(t, n1, "--underlay-mtu", 1400)
    dev = link(n1.ns, topo.AGENT_TAP)
    assert dev is not None and dev["mtu"] == 1350, dev
    info = agent.request("info")
    assert (info["mtu"], info["underlay_mtu"]) == (1350, 1400), info
    assert "will be dropped" not in agent.stderr_text()   # 1350 + 50 fits


# ---------------------------------------------------------------------------------------------
# 2. Tables
# ---------------------------------------------------------------------------------------------


def test_table_file_is_loaded_and_used(topo2: topo.Topology) -> None:
    t, n1, n2 = topo2, topo2.node(1), topo2.node(2)
    p1, p2 = t.pod(1), t.pod(2)
    table = t.workdir / "static.table"
    table.write_text(f"""\
# node 2 (kernel VXLAN, default port)
fdb   {p2.mac.upper()}  {n2.ip}:4789  vni {VNI}   # upper case is accepted

neigh {p2.ip}  {p2.mac}
fdb   02:00:00:00:09:09  192.168.100.9:8472        # a peer that is not up
""")
    t.add_kernel_vxlan(n2, vni=VNI)
    agent = start_agent(t, n1, "--table", table, "--neigh", "10.244.9.9,02:00:00:00:09:09")
    assert "4 static entries" in agent.stderr_text()

    out = agent.cli("show", "fdb").stdout
    assert out == (
        f"{p2.mac} dev vxtap0 dst {n2.ip} port 4789 vni {VNI} self permanent\n"
        f"02:00:00:00:09:09 dev vxtap0 dst 192.168.100.9 port 8472 vni {VNI} self permanent\n")
    out = agent.cli("show", "neigh").stdout
    assert out == (f"{p2.ip} dev vxtap0 lladdr {p2.mac} PERMANENT\n"
                   f"10.244.9.9 dev vxtap0 lladdr 02:00:00:00:09:09 PERMANENT\n")

    st = p1.ping(p2, count=3, interval=0.05)
    assert st.received == 3, st.output
    assert counter(agent, "arp_replied") >= 1      # pod 1's ARP answered from the table
    assert counter(agent, "udp_tx_packets") >= 3 and counter(agent, "udp_rx_packets") >= 3


def test_live_table_changes_and_errors_through_the_cli(topo2: topo.Topology) -> None:
    t, n1, n2 = topo2, topo2.node(1), topo2.node(2)
    p1, p2 = t.pod(1), t.pod(2)
    t.add_kernel_vxlan(n2, vni=VNI)
    agent = start_agent(t, n1, *peer_flags(t))
    assert p1.ping(p2, count=2, interval=0.05).received == 2

    # neigh del: ARP for the pod is no longer answered (and not flooded: dropped, counted).
    agent.cli("neigh", "del", p2.ip)
    assert agent.cli("show", "neigh").stdout == ""
    p1.run(["ip", "neigh", "flush", "dev", p1.dev])
    misses = counter(agent, "drop_arp_miss")
    st = p1.ping(p2, count=1, deadline=1, check=False)
    assert st.received == 0, st.output
    assert counter(agent, "drop_arp_miss") > misses
    agent.cli("neigh", "add", p2.ip, p2.mac)
    p1.run(["ip", "neigh", "flush", "dev", p1.dev])
    assert p1.ping(p2, count=2, interval=0.05).received == 2

    # fdb add replaces (one row, new port); deleting what is not there is a no-op.
    agent.cli("fdb", "add", p2.mac, f"{n2.ip}:4790")
    assert agent.cli("show", "fdb").stdout == \
        f"{p2.mac} dev vxtap0 dst {n2.ip} port 4790 vni {VNI} self permanent\n"
    agent.cli("fdb", "add", p2.mac, n2.ip)          # back to the agent's port (4789)
    assert " port 4789 " in agent.cli("show", "fdb").stdout
    assert agent.cli("fdb", "del", "02:00:00:00:77:77").returncode == 0
    assert agent.cli("neigh", "del", "10.244.77.77").returncode == 0
    assert agent.cli("show", "fdb", "--vni", VNI).stdout.count("\n") == 1

    for args, message in [
        (("fdb", "add", p2.mac, n2.ip, "--vni", 43), "vxtap: no network with VNI 43"),
        (("show", "neigh", "--vni", 43), "vxtap: no network with VNI 43"),
        (("fdb", "add", "ff:ff:ff:ff:ff:ff", n2.ip),
         "vxtap: ff:ff:ff:ff:ff:ff is a multicast/broadcast MAC, not a station address"),
        (("fdb", "add", p2.mac, "0.0.0.0"),
         "vxtap fdb add: 0.0.0.0 is not a unicast IPv4 address, cannot be a VTEP"),
        (("fdb", "del", "02:00:00:00:02"),
         "vxtap: not a MAC address: '02:00:00:00:02' (want aa:bb:cc:dd:ee:ff)"),
        (("neigh", "add", "10.244.2.300", p2.mac), "vxtap: not an IPv4 or IPv6 address: '10.244.2.300'"),
    ]:
        cp = agent.cli(*args, check=False)
        assert (cp.returncode, cp.stderr.strip()) == (1, message), args
    with pytest.raises(topo.AgentError, match=r"show what\? fdb, neigh or stats \(got 'arp'\)"):
        agent.request("show", what="arp")

    # Nothing above disturbed forwarding.
    assert p1.ping(p2, count=2, interval=0.05).received == 2
    assert agent.proc.alive
    assert_no_traceback(agent)


def test_missing_argument_error_says_what_is_missing(topo2: topo.Topology) -> None:
    agent = start_agent(topo2, topo2.node(1))
    with pytest.raises(topo.AgentError) as e:
        agent.request("fdb_add", vtep="192.168.100.2")
    assert re.search(r"missing|required", str(e.value)), str(e.value)


# ---------------------------------------------------------------------------------------------
# 3. Failures
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("threads", ["single", "split"])
def test_tap_deleted_under_the_agent(topo2: topo.Topology, threads: str) -> None:
    t, n1 = topo2, topo2.node(1)
    agent = start_agent(t, n1, "--threads", threads)
    assert agent.request("info")["thread_mode"] == threads
    topo.ip("link", "del", topo.AGENT_TAP, ns=n1.ns)
    t0 = time.monotonic()
    assert agent.proc.wait(timeout=10) == 1, agent.stderr_text()
    assert time.monotonic() - t0 < 5
    err = assert_no_traceback(agent)
    errors = [ln for ln in err.splitlines() if " ERROR " in ln]
    assert 1 <= len(errors) <= 3, err              # reported, not spammed
    assert "stopped after a failure" in errors[-1], err
    if threads == "split":
        assert f"TAP read failed on VNI {VNI}" in errors[-1], err
    assert not agent.sock.exists()
    assert bridge_ports(n1.ns) == {"vp2"}


def test_tap_deleted_error_names_the_tap_in_single_thread_mode(topo2: topo.Topology) -> None:
    agent = start_agent(topo2, topo2.node(1), "--threads", "single")
    topo.ip("link", "del", topo.AGENT_TAP, ns=topo2.node(1).ns)
    assert agent.proc.wait(timeout=10) == 1
    last = [ln for ln in agent.stderr_text().splitlines() if " ERROR " in ln][-1]
    assert "TAP" in last or topo.AGENT_TAP in last, last


def test_second_agent_on_the_same_socket_refuses(topo2: topo.Topology) -> None:
    t, n1 = topo2, topo2.node(1)
    first = start_agent(t, n1, name="first")
    second = start_agent(t, n1, "--port", 4790, tap="vxtap1", sock=first.sock, name="second",
                         wait=False)
    assert exit_or_ready(second) == 1, second.stderr_text()
    err = assert_no_traceback(second)
    assert err.strip().splitlines()[-1].endswith(
        f"{first.sock}: another agent is listening there"), err
    assert first.sock.exists() and first.ping() and first.server_pid() == first.proc.pid
    assert link(n1.ns, "vxtap1") is None, "the refused agent's TAP must be gone"
    assert bridge_ports(n1.ns) == {"vp2", topo.AGENT_TAP}


def test_zero_vtep_flag_is_refused_before_any_device(topo2: topo.Topology) -> None:
    """A non-unicast VTEP in --fdb is a usage error (exit 2): nothing is created."""
    t, n1 = topo2, topo2.node(1)
    tap = unique_tap(t)
    agent = start_agent(t, n1, "--fdb", "02:00:00:00:02:02,0.0.0.0", tap=tap, bridge="brnew",
                        wait=False)
    assert exit_or_ready(agent) == 2, agent.stderr_text()
    err = agent.stderr_text()
    assert "Traceback" not in err, err
    assert "0.0.0.0 is not a unicast IPv4 address, cannot be a VTEP" in err, err
    assert link(n1.ns, tap) is None and link(n1.ns, "brnew") is None
    assert not agent.sock.exists()


@pytest.mark.parametrize("case", [
    "local-not-here",
    "vni-not-served",
    "mtu-too-big",
    "mtu-over-underlay",
    "bridge-not-a-bridge",
    "tap-is-a-tun",
])
def test_failed_start_is_clean(topo2: topo.Topology, case: str) -> None:
    """Exit 1 with one clear line, no traceback; what was created before the error is gone."""
    t, n1 = topo2, topo2.node(1)
    tap, br = unique_tap(t), "brnew"
    table = t.workdir / "t.table"
    table.write_text(f"fdb 02:00:00:00:02:02 {t.node(2).ip} vni {VNI + 1}\n")
    flags, bridge, message = {
        "local-not-here": (["--local", "192.168.100.9"], br,
                           "no interface has the address 192.168.100.9"),
        "vni-not-served": (["--table", table], br, f"no network with VNI {VNI + 1}"),
        "mtu-too-big": (["--mtu", 100000], br, "mtu"),
        "mtu-over-underlay": (["--mtu", 9000], br,
                              "--mtu 9000 does not fit the underlay: 9000 + 50 bytes of VXLAN "
                              "headers > underlay MTU 1500, so every frame over 1450 bytes "
                              "would be dropped (drop_tx_too_big); use --mtu 1450 or less "
                              "(or --force-mtu if that is meant)"),
        "bridge-not-a-bridge": ([], topo.UNDERLAY_DEV, topo.UNDERLAY_DEV),
        "tap-is-a-tun": ([], br, tap),
    }[case]
    if case == "tap-is-a-tun":
        topo.ip("tuntap", "add", "dev", tap, "mode", "tun", ns=n1.ns)
    agent = start_agent(t, n1, *flags, tap=tap, bridge=bridge, wait=False)
    assert exit_or_ready(agent) == 1, agent.stderr_text()
    err = agent.stderr_text()
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert " ERROR " in last and message.lower() in last.lower(), err
    if case != "tap-is-a-tun":
        assert link(n1.ns, tap) is None, "TAP left behind"
    assert link(n1.ns, br) is None, "bridge left behind"
    assert bridge_ports(n1.ns) == {"vp2"}
    assert not agent.sock.exists()


def test_port_zero_is_rejected(topo2: topo.Topology) -> None:
    agent = start_agent(topo2, topo2.node(1), "--port", 0, wait=False)
    rc = exit_or_ready(agent)
    info = agent.request("info") if rc is None else None
    assert rc == 1, f"agent started anyway: {info}"
    assert "UDP port must be in 1..65535, got 0" in agent.stderr_text()


# ---------------------------------------------------------------------------------------------
# 4. MTU: dropped and counted, never fragmented
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flags, pod_mtu, size, limit", [
    # TAP MTU raised above what the real underlay (1500) can carry.
    (["--mtu", 1600, "--force-mtu"], 1600, 1500, 1500),
    # --underlay-mtu below the real one: the agent keeps to the configured value.
    (["--underlay-mtu", 1400, "--mtu", 1450, "--force-mtu"], None, 1400, 1400),
], ids=["mtu-1600", "underlay-mtu-1400"])
def test_frame_too_big_is_dropped_not_fragmented(topo2: topo.Topology, flags: list[Any],
                                                 pod_mtu: int | None, size: int,
                                                 limit: int) -> None:
    t, n1, n2 = topo2, topo2.node(1), topo2.node(2)
    p1, p2 = t.pod(1), t.pod(2)
    t.add_kernel_vxlan(n2, vni=VNI)
    agent = start_agent(t, n1, *flags, *peer_flags(t))
    assert "will be dropped (drop_tx_too_big), never fragmented" in agent.stderr_text()
    assert agent.request("info")["underlay_mtu"] == limit
    if pod_mtu:
        topo.ip("link", "set", p1.node_dev, "mtu", pod_mtu, ns=n1.ns)
        topo.ip("link", "set", p1.dev, "mtu", pod_mtu, ns=p1.ns)
    # Everything VXLAN, and any IP fragment at all, on node 1's underlay.
    cap = t.capture(n1, bpf=f"udp port {topo.VXLAN_PORT} or (ip[6:2] & 0x3fff != 0)")
    with cap:
        small = p1.ping(p2, count=3, interval=0.05)
        assert small.received == 3, small.output
        big = p1.ping(p2, count=3, interval=0.05, size=size, dont_fragment=True, deadline=1,
                      check=False)
    assert big.transmitted >= 3 and big.received == 0, big.output
    assert counter(agent, "drop_tx_too_big") == big.transmitted

    from scapy.layers.inet import IP
    from scapy.utils import rdpcap
    pkts = [p[IP] for p in rdpcap(str(cap.path)) if IP in p]
    out = [p for p in pkts if p.src == n1.ip]
    # Everything the agent sent is on the wire (small echo requests, maybe a unicast ARP probe
    # of pod 2), and none of it is a big echo request.
    assert len(out) == counter(agent, "udp_tx_packets") >= small.transmitted, \
        [p.summary() for p in pkts]
    for p in pkts:
        assert p.frag == 0 and not p.flags.MF, f"fragment on the underlay: {p.summary()}"
        assert p.len <= limit, p.summary()
    for p in out:
        assert p.flags.DF, f"outer DF not set: {p.summary()}"
    assert agent.proc.alive
    assert_no_traceback(agent)
