"""Offloads end to end: TCP through vxtap with TSO/GRO on the TAP and UDP GSO/GRO on the
underlay, against itself and against the Linux kernel's VXLAN, in network namespaces.

Every case moves 100 MB each way (SHA-256 compared by tests/topo.py's tcp_transfer) between
the pods of two nodes, for:
  - vxtap <-> vxtap and vxtap <-> kernel (both directions in every case);
  - the underlay veth's TX checksum offload on (what a user has: a kernel VXLAN sender then
    leaves inner TCP checksums partial, and vxtap must complete them) and off;
  - underlay MTU 1500 and 9000 (9000: TX checksum on);
  - `--offload auto` (the counters must show the offload path was used: GSO frames split,
    GRO frames built, partial checksums completed when the kernel peer leaves them) and
    `--offload off` (no super-frame built or split, partial checksums from the kernel peer
    still completed, transfers intact; against the kernel with TX checksum on and off,
    against vxtap with it on).
Before those, without any agent: frames coalesced by fastpath.gro (Cython) are written to a
real TAP with a virtio-net header (TSO4/TSO6 offered) and the kernel must deliver their bytes
to a TCP socket (IPv4/IPv6, complete and partial input checksums).
"""
from __future__ import annotations

import functools
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from fastpath.counters import OFFLOAD_STATS
from tests import topo
from tests.test_integration_dataplane import counters

pytestmark = pytest.mark.integration

MB = 1024 * 1024
VNI = 42
SIZE = 100 * MB

# Every case runs both directions, so one placement of the kernel peer covers vxtap->kernel and
# kernel->vxtap.
PAIRS = {"vxtap-vxtap": ("vxtap", "vxtap"), "vxtap-kernel": ("vxtap", "kernel")}
# (pair, underlay MTU, underlay TX checksum offload, --offload)
CASES = ([(p, 1500, tx, "auto") for p in PAIRS for tx in (True, False)]
         + [(p, 9000, True, "auto") for p in PAIRS]
         + [("vxtap-kernel", 1500, tx, "off") for tx in (True, False)]
         + [("vxtap-vxtap", 1500, True, "off")])


@functools.cache
def agent_has_offload_option() -> bool:
    cmd = topo.vxtap_command()
    if cmd is None:
        return False
    cp = subprocess.run([*cmd, "agent", "--help"], capture_output=True, text=True, timeout=30)
    return "--offload" in cp.stdout


def _case_id(c: tuple[str, int, bool, str]) -> str:
    pair, mtu, tx, off = c
    return f"{pair}-mtu{mtu}-txcsum_{'on' if tx else 'off'}-offload_{off}"


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_tcp_100mb_both_ways(make_topology: Callable[..., topo.Topology],
                             case: tuple[str, int, bool, str]) -> None:
    pair, mtu, tx_csum, offload = case
    if topo.vxtap_command() is None:
        pytest.fail("vxtap is not installed")
    if not agent_has_offload_option():
        pytest.skip("`vxtap agent` has no --offload option yet (agent/CLI integration of "
                    "issue 8 not landed)")
    # wire_checksums=False leaves the veth's TX checksum offload on (the kernel default)
    t = make_topology(nodes=2, pods=1, mtu=mtu, wire_checksums=not tx_csum)
    for node in t.nodes:
        topo.set_tx_checksum(node.ns, node.dev, tx_csum)
    for node, kind in zip(t.nodes, PAIRS[pair]):
        if kind == "kernel":
            t.add_kernel_vxlan(node, vni=VNI)
        else:
            t.add_vxtap_agent(node, vni=VNI, extra=["--offload", offload])
    a, b = t.pod(1), t.pod(2)
    st = a.ping(b, count=3, interval=0.05)
    assert st.received == st.transmitted, st.output
    for src, dst in ((a, b), (b, a)):
        try:
            res = t.tcp_transfer(src, dst, size=SIZE, timeout=90)
        except topo.TopoError as e:
            # say what the agents counted: e.g. csum_completed 0 against a kernel peer with
            # TX checksum on means its partial inner checksums reached the pod unfinished
            seen = {ag.node.ns: counters(ag.stats(), OFFLOAD_STATS) for ag in t.agents}
            raise AssertionError(f"{src.ns} -> {dst.ns} failed; agent offload counters "
                                 f"{seen}\n{e}") from None
        assert res.intact, f"{src.ns} -> {dst.ns}: {res}"
    for agent in t.agents:
        assert agent.proc.alive, agent.stderr_text()
        stats = agent.stats()
        c = counters(stats, OFFLOAD_STATS)
        peer_kernel = "kernel" in PAIRS[pair]
        if offload == "off":
            # no super-frames either way; partial checksums are still completed
            assert c["gso_frames"] == c["gro_frames"] == 0, (c, _offload_state(stats))
            assert (c["csum_completed"] > 0) == (peer_kernel and tx_csum), c
            continue
        # this agent's pod sent 100 MB through the TAP as TSO frames, and received 100 MB
        assert c["gso_frames"] > 0 and c["gso_segments"] > c["gso_frames"], c
        assert c["gro_frames"] > 0 and c["gro_segments"] > c["gro_frames"], c
        if peer_kernel and tx_csum:
            # the kernel sender left its inner checksums partial: completed by the agent
            assert c["csum_completed"] > 0, c


def _offload_state(stats: Any) -> Any:
    """The agent's offload description in `show stats --json`, for failure messages."""
    if isinstance(stats, dict):
        for k, v in stats.items():
            if "offload" in k:
                return v
    return None


# ---- the kernel accepts what gro builds -----------------------------------------------------------

_TAP_GRO = r"""
import fcntl, os, select, socket, struct, sys, time
from fastpath import gro, csum_ref
from scapy.layers.l2 import Ether
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

v6, partial, nseg, mss = sys.argv[1] == "6", sys.argv[2] == "1", int(sys.argv[3]), int(sys.argv[4])
TUNSETIFF, TUNSETVNETHDRSZ, TUNSETOFFLOAD = 0x400454CA, 0x400454D8, 0x400454D0
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", b"grot0", 0x0002 | 0x1000 | 0x4000))
fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", 10))
fcntl.ioctl(fd, TUNSETOFFLOAD, 1 | 2 | 4)          # CSUM | TSO4 | TSO6
me, peer = ("fd09::1", "fd09::2") if v6 else ("10.9.0.1", "10.9.0.2")
def sh(*a):
    import subprocess
    subprocess.run(a, check=True)
sh("ip", "link", "set", "grot0", "address", "02:00:00:00:00:0b", "mtu", "1500", "up")
if v6:
    sh("sysctl", "-qw", "net.ipv6.conf.grot0.disable_ipv6=0")
    sh("ip", "addr", "add", me + "/64", "dev", "grot0", "nodad")
else:
    sh("ip", "addr", "add", me + "/24", "dev", "grot0")
sh("ip", "neigh", "replace", peer, "lladdr", "02:00:00:00:00:0a", "dev", "grot0")
srv = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET)
srv.bind((me, 5201))
srv.listen()
os.set_blocking(fd, False)

def frame(flags, seq, ack, i=0, data=b"", opts=(), partial=False):
    l3 = (IPv6(src=peer, dst=me) if v6 else IP(src=peer, dst=me, flags="DF", id=100 + i))
    f = bytes(Ether(dst="02:00:00:00:00:0b", src="02:00:00:00:00:0a") / l3
              / TCP(sport=40000, dport=5201, seq=seq, ack=ack, flags=flags, window=60000,
                    options=list(opts)) / Raw(data))
    if partial:      # what a kernel VXLAN sender with TX checksum offload leaves (data only:
                     # the handshake goes to the TAP as it is)
        b = bytearray(f)
        t = 54 if v6 else 34
        n = len(b) - t
        ps = (csum_ref.py_pseudo6(b[22:38], b[38:54], 6, n) if v6 else
              csum_ref.py_pseudo4(int.from_bytes(b[26:30], "big"), int.from_bytes(b[30:34], "big"), 6, n))
        b[t + 16:t + 18] = csum_ref.py_csum_fold(ps).to_bytes(2, "big")
        f = bytes(b)
    return f

def tcp_from_tap(flags, timeout=3):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        select.select([fd], [], [], 0.1)
        try:
            p = Ether(os.read(fd, 70000)[10:])
        except BlockingIOError:
            continue
        if TCP in p and p[TCP].flags == flags:
            return p
    raise SystemExit(f"no {flags} from the kernel")

os.write(fd, bytes(10) + frame("S", 1000, 0, opts=[("MSS", mss)]))
isn = tcp_from_tap("SA")[TCP].seq
os.write(fd, bytes(10) + frame("A", 1001, isn + 1))
conn, _ = srv.accept()
data = [bytes([i]) * mss for i in range(nseg)]
segs = [frame("A" if i < nseg - 1 else "PA", 1001 + i * mss, isn + 1, i + 1, data[i],
              partial=partial) for i in range(nseg)]
out, st = gro.coalesce_stats(segs)
for hdr, f in out:
    os.write(fd, hdr + f)
conn.settimeout(5)
got = b""
while len(got) < nseg * mss:
    d = conn.recv(1 << 20)
    if not d:
        break
    got += d
print("RESULT", len(out), st["gro_frames"], st["csum_completed"], int(got == b"".join(data)))
"""


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("partial", [False, True], ids=["complete", "partial"])
def test_kernel_tap_accepts_gro_frames(make_topology: Callable[..., topo.Topology], v6: bool,
                                       partial: bool) -> None:
    """20 segments of 1400 bytes -> 1 GSO frame on a real TAP -> 28000 bytes to a socket."""
    t = make_topology(nodes=2, pods=1, disable_ipv6=False)
    pod = t.pod(1)       # a namespace of our own; the TAP dies with the script
    cp = pod.run([sys.executable, "-c", _TAP_GRO, "6" if v6 else "4", int(partial), 20, 1400],
                 timeout=30, check=False)
    assert cp.returncode == 0, cp.stderr + cp.stdout
    runs, frames, completed, intact = (int(x) for x in cp.stdout.split()[1:])
    assert (runs, frames) == (1, 1), cp.stdout
    assert completed == (20 if partial else 0)
    assert intact == 1, "the kernel did not deliver the coalesced bytes intact"
