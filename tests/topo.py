"""Network-namespace test topologies for vxtap.

Used by the integration tests, the benchmarks and the demo. Needs root, iproute2 and
(for the agent) /dev/net/tun. Nothing is ever created in the root network namespace.

Layout built by :class:`Topology` (``prefix`` is unique per run, e.g. ``vxt4242a7``)::

    <prefix>n1 (node 1)                                    <prefix>n2 (node 2)
    +-------------------------------+                      +---------------------------+
    | ul0 192.168.100.1/24  MTU m   |---- veth pair -------| ul0 192.168.100.2/24      |
    | br0 (Linux bridge)            |   (N>2: bridge hub0  | br0                       |
    |  +- vp2 <-veth-> pod eth0     |    in <prefix>hub)   |  +- vp2 <-veth-> pod eth0 |
    |  +- vx42 (kernel VXLAN) or    |                      |  +- ...                   |
    |     vxtap0 (TAP of the agent) |                      |                           |
    +-------------------------------+                      +---------------------------+
    pod <prefix>n1p2: eth0 10.244.1.2/16, MAC 02:00:00:00:01:02, MTU m-50

Pod host numbers start at 2 (.1 is left for a gateway), and the last MAC byte equals the last
IP byte. Pods get a /16 so that all pods are on one L2 segment (the overlay bridges L2).
IPv6 is off in every namespace (no ND/MLD noise in captures). The underlay veths have TX checksum
offload off (``wire_checksums=True``): like a real wire, every datagram between nodes carries
complete inner checksums (see ``_build``). Every node's VTEP uses UDP port ``vxlan_port`` (4789)
unless ``add_kernel_vxlan``/``add_vxtap_agent`` get ``port=``.

Typical use::

    with Topology(nodes=2) as t:            # or the pytest fixtures make_topology / topo2
        t.add_vxtap_agent(t.node(1))        # fdb + neigh for every remote pod by default
        t.add_kernel_vxlan(t.node(2))       # vx42, nolearning, static bridge fdb
        print(t.pod(1).ping(t.pod(2)))      # PingStats
        assert t.tcp_transfer(t.pod(1), t.pod(2)).intact

Cleanup is layered: ``Topology`` is a context manager; every live topology is also closed by an
``atexit`` hook; the pytest fixtures in ``conftest.py`` add a finalizer; every background process
gets PR_SET_PDEATHSIG=SIGKILL so that it dies with the test runner; and :func:`cleanup_stale`
removes namespaces left behind by a runner that was SIGKILLed (owner PID recorded under
``/run/vxtap-topo``). Processes are only ever stopped by their own PID.
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Self

# Spec constants (RFC 7348) and the topology's own addressing plan.
VXLAN_PORT = 4789
VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
VXLAN6_OVERHEAD = 70  # outer Ethernet 14 + IPv6 40 + UDP 8 + VXLAN 8
UNDERLAY6_NET = "fd00:100::"   # IPv6 underlay: node n is fd00:100::n/64
POD6_NET = "fd00:244::"        # pods' IPv6 (static): fd00:244::<node>:<host>/64
DEFAULT_VNI = 42
UNDERLAY_NET = "192.168.100"
UNDERLAY_PREFIXLEN = 24
POD_NET = "10.244"
POD_PREFIXLEN = 16
UNDERLAY_DEV = "ul0"
BRIDGE = "br0"
POD_DEV = "eth0"
AGENT_TAP = "vxtap0"

# tcpdump filter: VXLAN datagrams (default port) whose inner frame is ARP. Offsets from the UDP
# header: UDP 8 + VXLAN 8 + inner destination/source MAC 12 = the inner ethertype.
BPF_VXLAN_ARP = f"udp dst port {VXLAN_PORT} and udp[28:2] = 0x0806"

REPO_ROOT = Path(__file__).resolve().parent.parent
STATE_DIR = Path("/run/vxtap-topo")

# util-linux (essential in Debian): the child gets SIGKILL when the test runner dies.
PDEATHSIG = ["setpriv", "--pdeathsig", "KILL", "--"] if shutil.which("setpriv") else []


class TopoError(RuntimeError):
    """A command used to build or drive a topology failed."""


# --------------------------------------------------------------------------------------------
# Environment checks
# --------------------------------------------------------------------------------------------


def missing_privileges() -> str | None:
    """Return why namespace tests cannot run here, or None if they can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth, bridges)"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    if shutil.which("ip") is None:
        return "needs iproute2 (`ip`)"
    return None


def missing_requirements(tools: Iterable[str] = ()) -> str | None:
    """missing_privileges(), or which of `tools` are not on PATH (None: all there). For the
    namespace benchmarks and the tests that drive them."""
    why = missing_privileges()
    if why:
        return why
    missing = [x for x in tools if shutil.which(x) is None]
    return f"missing tools: {', '.join(missing)}" if missing else None


def vxtap_command() -> list[str] | None:
    """The command that starts the vxtap CLI, or None if it is not installed.

    ``VXTAP_CMD`` (shell-split) overrides; else the ``vxtap`` console script; else
    ``python -m dataplane`` if the package is importable from the repo.
    """
    env = os.environ.get("VXTAP_CMD")
    if env:
        return env.split()
    exe = shutil.which("vxtap")
    if exe:
        return [exe]
    if (REPO_ROOT / "dataplane" / "__main__.py").exists():
        return [sys.executable, "-m", "dataplane"]
    return None


# --------------------------------------------------------------------------------------------
# Running commands
# --------------------------------------------------------------------------------------------


def ns_argv(ns: str | None, argv: Sequence[Any]) -> list[str]:
    """argv wrapped so that it runs inside network namespace ``ns`` (None: here)."""
    argv = [str(a) for a in argv]
    return ["ip", "netns", "exec", ns, *argv] if ns else argv


def run(
    argv: Sequence[Any],
    ns: str | None = None,
    *,
    timeout: float = 30,
    check: bool = True,
    input: bytes | str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command (in ``ns``) with a timeout; raise TopoError with its output on failure."""
    full = ns_argv(ns, argv)
    if isinstance(input, bytes):
        input = input.decode()
    try:
        cp = subprocess.run(
            full, capture_output=True, text=True, timeout=timeout, input=input, check=False,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as e:
        raise TopoError(f"timeout after {timeout}s: {' '.join(full)}\n"
                        f"stdout: {e.stdout!r}\nstderr: {e.stderr!r}") from None
    if check and cp.returncode != 0:
        raise TopoError(f"exit {cp.returncode}: {' '.join(full)}\n"
                        f"stdout: {cp.stdout.strip()}\nstderr: {cp.stderr.strip()}")
    return cp


def ip(*args: Any, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``ip [-n ns] args...``"""
    pre = ["ip", "-n", ns] if ns else ["ip"]
    return run([*pre, *map(str, args)], check=check, timeout=15)


class BgProcess:
    """A background process (optionally inside a netns), stdout/stderr captured to files.

    ``ip netns exec`` execs the command, so ``pid`` is the command's own PID. The process is its
    own session leader, so ``stop()`` signals exactly it (and anything it forked) by PID.
    """

    def __init__(self, argv: Sequence[Any], ns: str | None = None, *, name: str = "proc",
                 logdir: str | os.PathLike[str] | None = None, cwd: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = ns_argv(ns, [*PDEATHSIG, *map(str, argv)])
        self.ns = ns
        self._own_logdir = logdir is None
        self.logdir = Path(logdir or tempfile.mkdtemp(prefix="vxtap-bg-"))
        base = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        self.stdout_path = self.logdir / f"{base}.stdout"
        self.stderr_path = self.logdir / f"{base}.stderr"
        # Open for the process's whole life, closed in _finish().
        self._out = open(self.stdout_path, "wb")  # noqa: SIM115
        self._err = open(self.stderr_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=self._out, stderr=self._err,
            start_new_session=True, cwd=cwd,
            env={**os.environ, **(env or {})},
        )
        self.pid = self.proc.pid
        self.returncode: int | None = None
        _LIVE_PROCS[self.pid] = self

    def __repr__(self) -> str:
        return f"<BgProcess {self.name} pid={self.pid} rc={self.proc.poll()}>"

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def stdout_text(self) -> str:
        if not self._out.closed:
            self._out.flush()
        return self.stdout_path.read_text(errors="replace")

    def stderr_text(self) -> str:
        if not self._err.closed:
            self._err.flush()
        return self.stderr_path.read_text(errors="replace")

    def wait_output(self, pattern: str, timeout: float = 10, stream: str = "stdout") -> re.Match[str]:
        """Wait until ``pattern`` (regex) appears in the process's stdout or stderr."""
        path = self.stdout_path if stream == "stdout" else self.stderr_path
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, path.read_text(errors="replace"))
            if m:
                return m
            if not self.alive:
                raise TopoError(f"{self.name} exited ({self.proc.returncode}) before printing "
                                f"{pattern!r}\nstdout: {self.stdout_text()}\nstderr: {self.stderr_text()}")
            if time.monotonic() > deadline:
                raise TopoError(f"{self.name}: no {pattern!r} within {timeout}s\n"
                                f"stdout: {self.stdout_text()}\nstderr: {self.stderr_text()}")
            time.sleep(0.02)

    def wait(self, timeout: float = 30) -> int:
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TopoError(f"{self.name} (pid {self.pid}) still running after {timeout}s\n"
                            f"stderr: {self.stderr_text()}") from None
        self._finish()
        return self.returncode

    def stop(self, timeout: float = 5, sig: int = signal.SIGTERM) -> int | None:
        """Send ``sig`` to the process (by PID), SIGKILL after ``timeout``; return exit code."""
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(10)
        self.returncode = self.proc.returncode
        self._finish()
        return self.returncode

    def _finish(self) -> None:
        _LIVE_PROCS.pop(self.pid, None)
        for f in (self._out, self._err):
            if not f.closed:
                f.close()


_LIVE_PROCS: dict[int, BgProcess] = {}


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class PingStats:
    transmitted: int
    received: int
    rtt_min_ms: float | None
    rtt_avg_ms: float | None
    rtt_max_ms: float | None
    rtt_mdev_ms: float | None
    output: str

    @property
    def loss(self) -> float:
        return 1.0 - self.received / self.transmitted if self.transmitted else 1.0

    def __str__(self) -> str:
        if self.rtt_avg_ms is None:
            return f"{self.received}/{self.transmitted} replies"
        return (f"{self.received}/{self.transmitted} replies, rtt min/avg/max/mdev = "
                f"{self.rtt_min_ms:.3f}/{self.rtt_avg_ms:.3f}/{self.rtt_max_ms:.3f}/"
                f"{self.rtt_mdev_ms:.3f} ms")


def ping(ns: str, dst: str, count: int = 5, interval: float = 0.2, deadline: float | None = None,
         size: int | None = None, dont_fragment: bool = False, check: bool = True) -> PingStats:
    """ICMP echo from ``ns`` to ``dst``; raise TopoError if ``check`` and no reply arrived."""
    argv: list[Any] = ["ping", "-n", "-q", "-c", count, "-i", interval, "-W", 1]
    if deadline is None:
        deadline = count * interval + 3
    argv += ["-w", int(deadline + 0.999)]
    if size is not None:
        argv += ["-s", size]
    if dont_fragment:
        argv += ["-M", "do"]
    cp = run([*argv, dst], ns, timeout=deadline + 10, check=False)
    out = cp.stdout + cp.stderr
    m = re.search(r"(\d+) packets transmitted, (\d+) (?:packets )?received", out)
    tx, rx = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    r = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms", out)
    vals: list[float | None] = [float(x) for x in r.groups()] if r else [None] * 4
    st = PingStats(tx, rx, vals[0], vals[1], vals[2], vals[3], output=out)
    if check and rx == 0:
        raise TopoError(f"ping {ns} -> {dst}: no reply\n{out}")
    return st


CNI_BIN = "/usr/lib/cni"


def run_vxtap_cni(cmd: str, node_ns: str, pod_ns: str, cid: str,
                  config: dict[str, Any]) -> tuple[int, Any, str]:
    """Run vxtap's CNI plugin (``python -m control.cni``) in ``node_ns`` for the pod namespace
    ``pod_ns``, as a runtime would: returns (exit code, parsed stdout or None, stderr)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO_ROOT),
           "CNI_COMMAND": cmd, "CNI_CONTAINERID": cid, "CNI_NETNS": f"/var/run/netns/{pod_ns}",
           "CNI_IFNAME": "eth0", "CNI_PATH": CNI_BIN}
    r = subprocess.run(["ip", "netns", "exec", node_ns, sys.executable, "-m", "control.cni"],
                       input=json.dumps(config).encode(), env=env, capture_output=True,
                       cwd=REPO_ROOT, timeout=60, check=False)
    out = json.loads(r.stdout) if r.stdout.strip() else None
    return r.returncode, out, r.stderr.decode(errors="replace")


_TCP_SERVER = textwrap.dedent("""
    import hashlib, socket, sys
    port, timeout = int(sys.argv[1]), float(sys.argv[2])
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(1); s.settimeout(timeout)
    print("READY", flush=True)
    c, _ = s.accept(); c.settimeout(timeout)
    h, n = hashlib.sha256(), 0
    while True:
        b = c.recv(1 << 16)
        if not b:
            break
        h.update(b); n += len(b)
    print("RESULT", n, h.hexdigest(), flush=True)
    c.close()
""")

_TCP_CLIENT = textwrap.dedent("""
    import hashlib, os, socket, sys, time
    host, port, size, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    data = os.urandom(size)
    digest = hashlib.sha256(data).hexdigest()
    c = socket.create_connection((host, port), timeout=timeout)
    t0 = time.monotonic()
    c.sendall(data)
    c.shutdown(socket.SHUT_WR)
    while c.recv(4096):
        pass
    dt = time.monotonic() - t0
    print("RESULT", size, digest, dt, flush=True)
""")


@dataclasses.dataclass
class TransferResult:
    sent_bytes: int
    sent_sha256: str
    received_bytes: int
    received_sha256: str
    seconds: float

    @property
    def intact(self) -> bool:
        return self.sent_bytes == self.received_bytes and self.sent_sha256 == self.received_sha256

    @property
    def mbit_per_s(self) -> float:
        return self.sent_bytes * 8 / self.seconds / 1e6 if self.seconds else 0.0


def tcp_transfer(src_ns: str, dst_ns: str, dst_ip: str, size: int = 20 * 1024 * 1024,
                 port: int = 5201 + 17, timeout: float = 60, logdir: str | None = None) -> TransferResult:
    """Send ``size`` random bytes over TCP from ``src_ns`` to ``dst_ip`` (in ``dst_ns``).

    Both sides compute a SHA-256; compare with ``result.intact``.
    """
    server = BgProcess([sys.executable, "-c", _TCP_SERVER, port, timeout], dst_ns,
                       name=f"tcpsrv-{dst_ns}-{port}", logdir=logdir)
    try:
        server.wait_output(r"READY", timeout=10)
        cp = run([sys.executable, "-c", _TCP_CLIENT, dst_ip, port, size, timeout], src_ns,
                 timeout=timeout + 10, check=False)
        if cp.returncode != 0:
            raise TopoError(f"tcp client {src_ns} -> {dst_ip}:{port} failed ({cp.returncode})\n"
                            f"{cp.stderr}\nserver stderr: {server.stderr_text()}")
        _, sent, sdig, secs = cp.stdout.split()
        server.wait(timeout=15)
        m = re.search(r"RESULT (\d+) ([0-9a-f]+)", server.stdout_text())
        if not m:
            raise TopoError(f"tcp server printed no result: {server.stdout_text()} {server.stderr_text()}")
        return TransferResult(int(sent), sdig, int(m.group(1)), m.group(2), float(secs))
    finally:
        server.stop(timeout=2)


@dataclasses.dataclass
class IperfResult:
    bits_per_second: float
    retransmits: int | None
    sender_cpu: float | None
    receiver_cpu: float | None
    raw: dict[str, Any]

    @property
    def gbit_per_s(self) -> float:
        return self.bits_per_second / 1e9


def iperf3(src_ns: str, dst_ns: str, dst_ip: str, seconds: float = 3, port: int = 5201,
           extra: Sequence[str] = (), logdir: str | None = None) -> IperfResult:
    """iperf3 TCP throughput from ``src_ns`` to ``dst_ip`` (server in ``dst_ns``)."""
    server = BgProcess(["iperf3", "-s", "-1", "--forceflush", "-B", dst_ip, "-p", port], dst_ns,
                       name=f"iperf3-s-{dst_ns}", logdir=logdir)
    try:
        server.wait_output(r"Server listening", timeout=10)
        cp = run(["iperf3", "-c", dst_ip, "-p", port, "-t", seconds, "-J", *extra], src_ns,
                 timeout=seconds + 30, check=False)
        try:
            data = json.loads(cp.stdout)
        except json.JSONDecodeError:
            raise TopoError(f"iperf3 client output is not JSON: {cp.stdout} {cp.stderr}") from None
        if "error" in data:
            raise TopoError(f"iperf3: {data['error']}\nserver: {server.stdout_text()}")
        end = data["end"]
        cpu = end.get("cpu_utilization_percent", {})
        return IperfResult(
            bits_per_second=end["sum_received"]["bits_per_second"],
            retransmits=end.get("sum_sent", {}).get("retransmits"),
            sender_cpu=cpu.get("host_total"), receiver_cpu=cpu.get("remote_total"), raw=data)
    finally:
        server.stop(timeout=2)


# --------------------------------------------------------------------------------------------
# Packet capture
# --------------------------------------------------------------------------------------------


class Capture:
    """tcpdump on ``dev`` inside ``ns`` writing a pcap; ``stop()`` flushes it.

    Use as a context manager; afterwards read ``vxlan_frames()``.
    """

    def __init__(self, ns: str, dev: str, bpf: str, path: str | os.PathLike[str],
                 logdir: str | os.PathLike[str] | None = None) -> None:
        self.ns, self.dev, self.bpf, self.path = ns, dev, bpf, Path(path)
        self.proc = BgProcess(["tcpdump", "-n", "-U", "--immediate-mode", "-s", "0", "-i", dev, "-w", str(self.path),
                               *bpf.split()], ns, name=f"tcpdump-{ns}-{dev}", logdir=logdir)
        self.proc.wait_output(r"listening on", timeout=10, stream="stderr")

    def stop(self) -> None:
        if self.proc.alive:
            time.sleep(0.2)  # let the last packets reach the ring
            self.proc.stop(sig=signal.SIGINT, timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def vxlan_frames(self, port: int = VXLAN_PORT) -> list[tuple[str, str, bytes, bytes]]:
        """(outer src IP, outer dst IP, 8-byte VXLAN header, inner Ethernet frame) for each
        captured UDP datagram to or from ``port``. Parsed by hand, not by scapy's VXLAN layer."""
        return read_vxlan_frames(self.path, port)


def read_vxlan_frames(pcap: str | os.PathLike[str], port: int = VXLAN_PORT
                      ) -> list[tuple[str, str, bytes, bytes]]:
    from scapy.layers.inet import IP, UDP  # scapy is slow to import: only when needed
    from scapy.utils import rdpcap

    out = []
    for pkt in rdpcap(str(pcap)):
        if IP not in pkt or UDP not in pkt:
            continue
        udp = pkt[UDP]
        if port not in (udp.sport, udp.dport):
            continue
        payload = bytes(udp.payload)
        out.append((pkt[IP].src, pkt[IP].dst, payload[:8], payload[8:]))
    return out


def inner_ethertype(frame: bytes) -> int | None:
    """Ethertype of an inner Ethernet frame, looking through one 802.1Q tag."""
    if len(frame) < 14:
        return None
    et = int.from_bytes(frame[12:14], "big")
    if et == 0x8100 and len(frame) >= 18:
        et = int.from_bytes(frame[16:18], "big")
    return et


_RAW_SENDER = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    n = 0
    for line in (open(sys.argv[1]) if len(sys.argv) > 1 else sys.stdin):
        pkt = bytes.fromhex(line.strip())
        if pkt:
            s.sendto(pkt, (socket.inet_ntoa(pkt[16:20]), 0)); n += 1
    print(n)
""")


_PACKET_SENDER = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((sys.argv[1], 0))
    n = 0
    for line in sys.stdin:
        frame = bytes.fromhex(line.strip())
        if frame:
            s.send(frame); n += 1
    print(n)
""")


def send_ethernet(ns: str, dev: str, frames: Iterable[bytes]) -> int:
    """Send complete Ethernet frames on ``dev`` in ``ns`` (AF_PACKET: the kernel touches
    nothing, so headers may lie: payload lengths, checksums, extension headers)."""
    data = "".join(f.hex() + "\n" for f in frames)
    cp = run([sys.executable, "-c", _PACKET_SENDER, dev], ns, input=data, timeout=30)
    return int(cp.stdout.strip() or 0)


def link_mac(ns: str, dev: str) -> str:
    cp = run(["ip", "-j", "link", "show", "dev", dev], ns)
    return str(json.loads(cp.stdout)[0]["address"])


def send_raw_ipv4(ns: str, packets: Iterable[bytes]) -> int:
    """Send complete IPv4 packets (header included, any source address) from ``ns``."""
    data = "".join(p.hex() + "\n" for p in packets)
    cp = run([sys.executable, "-c", _RAW_SENDER], ns, input=data, timeout=30)
    return int(cp.stdout.strip() or 0)


_SET_TX_CSUM = textwrap.dedent("""
    import ctypes, fcntl, socket, struct, sys
    SIOCETHTOOL, ETHTOOL_STXCSUM = 0x8946, 0x17        # linux/sockios.h, linux/ethtool.h
    val = ctypes.create_string_buffer(struct.pack("II", ETHTOOL_STXCSUM, int(sys.argv[2])), 8)
    ifr = struct.pack("16sP", sys.argv[1].encode(), ctypes.addressof(val)).ljust(40, b"\\0")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s, SIOCETHTOOL, ifr)
""")


def set_tx_checksum(ns: str, dev: str, on: bool) -> None:
    """``ethtool -K DEV tx on|off`` in ``ns`` (the ethtool ioctl; no ethtool binary needed)."""
    run([sys.executable, "-c", _SET_TX_CSUM, dev, int(on)], ns)


def neighbours(ns: str, dev: str | None = None) -> dict[str, tuple[str | None, str]]:
    """``ip neigh`` of ``ns`` as {ip: (lladdr or None, state)}."""
    cp = run(["ip", "-j", "neigh", "show", *(["dev", dev] if dev else [])], ns)
    res = {}
    for e in json.loads(cp.stdout or "[]"):
        state = e.get("state", ["?"])
        res[e["dst"]] = (e.get("lladdr"), ",".join(state) if isinstance(state, list) else state)
    return res


# --------------------------------------------------------------------------------------------
# Stale-state cleanup
# --------------------------------------------------------------------------------------------


def _proc_start(pid: int) -> str | None:
    """Start time (clock ticks since boot) of a live, non-zombie process; None if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def cleanup_stale() -> list[str]:
    """Delete namespaces recorded by topologies whose owner process is gone (e.g. SIGKILLed).

    Only touches what this module recorded under STATE_DIR; never other users' namespaces.
    """
    removed: list[str] = []
    if not STATE_DIR.is_dir():
        return removed
    for rec in STATE_DIR.glob("*.json"):
        try:
            info = json.loads(rec.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        pid = int(info.get("pid", 0))
        start = _proc_start(pid)
        if pid != os.getpid() and start is not None and start == info.get("start"):
            continue  # owner still running
        for ns in info.get("netns", []):
            if ip("netns", "del", ns, check=False).returncode == 0:
                removed.append(ns)
        rec.unlink(missing_ok=True)
    return removed


# --------------------------------------------------------------------------------------------
# Topology
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Pod:
    ns: str
    node: Node
    host: int          # last IP byte, 2.. (== last MAC byte)
    ip: str
    mac: str
    mtu: int
    dev: str = POD_DEV
    node_dev: str = ""  # veth end on the node's bridge
    ip6: str | None = None   # static IPv6 address (Topology(pod_ipv6=True))

    def run(self, argv: Sequence[Any], **kw: Any) -> subprocess.CompletedProcess[str]:
        return run(argv, self.ns, **kw)

    def ping(self, dst: str | Pod, **kw: Any) -> PingStats:
        return ping(self.ns, dst.ip if isinstance(dst, Pod) else dst, **kw)

    def neighbours(self) -> dict[str, tuple[str | None, str]]:
        return neighbours(self.ns, self.dev)


@dataclasses.dataclass
class Node:
    ns: str
    index: int
    ip: str            # underlay address
    mtu: int           # underlay MTU
    pods: list[Pod] = dataclasses.field(default_factory=list)
    dev: str = UNDERLAY_DEV
    bridge: str = BRIDGE
    vxlan_port: int = VXLAN_PORT   # port of whatever VTEP (kernel or agent) runs here
    vtep: str | None = None        # "kernel", "vxtap" or None
    ip4: str | None = None         # underlay IPv4 address (None: IPv6-only underlay)
    ip6: str | None = None         # underlay IPv6 address (Topology(underlay="ipv6"/"dual"))

    @property
    def overlay_mtu(self) -> int:
        return self.mtu - (VXLAN6_OVERHEAD if self.ip6 else VXLAN_OVERHEAD)

    def run(self, argv: Sequence[Any], **kw: Any) -> subprocess.CompletedProcess[str]:
        return run(argv, self.ns, **kw)

    def vxlan_links(self) -> list[dict[str, Any]]:
        """Kernel vxlan links in this node (``ip -d link show type vxlan``)."""
        cp = run(["ip", "-j", "-d", "link", "show", "type", "vxlan"], self.ns)
        return json.loads(cp.stdout or "[]")


class AgentError(RuntimeError):
    """The agent answered {"ok": false} or did not answer."""


class Agent:
    """A ``vxtap agent --netns NODE`` process and a client for its control socket."""

    def __init__(self, node: Node, argv: list[str], sock: Path, proc: BgProcess,
                 vni: int, port: int, tap: str) -> None:
        self.node, self.argv, self.sock, self.proc = node, argv, sock, proc
        self.vni, self.port, self.tap = vni, port, tap

    def __repr__(self) -> str:
        return f"<Agent {self.node.ns} pid={self.proc.pid} sock={self.sock}>"

    def request(self, op: str, timeout: float = 5, **args: Any) -> Any:
        """One request on the control socket; returns ``result`` or raises AgentError."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(self.sock))
            s.sendall((json.dumps({"op": op, **args}) + "\n").encode())
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        try:
            resp = json.loads(buf)
        except json.JSONDecodeError:
            raise AgentError(f"{op}: bad response {buf!r}") from None
        if not resp.get("ok"):
            raise AgentError(f"{op}: {resp.get('error', resp)}")
        return resp.get("result")

    def ping(self) -> bool:
        try:
            self.request("ping", timeout=1)
            return True
        except (OSError, AgentError):
            return False

    def server_pid(self) -> int | None:
        """PID of the process listening on the control socket (SO_PEERCRED), None if none."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(1)
                s.connect(str(self.sock))
                creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        except OSError:
            return None
        return int(struct.unpack("3i", creds)[0])

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not (self.ping() and self.server_pid() == self.proc.pid):
            if not self.proc.alive:
                raise TopoError(f"vxtap agent for {self.node.ns} exited with "
                                f"{self.proc.proc.returncode}\ncommand: {' '.join(self.argv)}\n"
                                f"stderr:\n{self.proc.stderr_text()}\nstdout:\n{self.proc.stdout_text()}")
            if time.monotonic() > deadline:
                raise TopoError(f"vxtap agent for {self.node.ns}: control socket {self.sock} did "
                                f"not answer ping within {timeout}s\ncommand: {' '.join(self.argv)}\n"
                                f"stderr:\n{self.proc.stderr_text()}")
            time.sleep(0.05)

    def cli(self, *args: Any, check: bool = True, timeout: float = 15) -> subprocess.CompletedProcess[str]:
        """Run ``vxtap ARGS... --sock SOCK`` (root ns)."""
        cmd = vxtap_command()
        if cmd is None:
            raise TopoError("vxtap is not installed")
        return run([*cmd, *map(str, args), "--sock", str(self.sock)], check=check, timeout=timeout)

    def stats(self) -> Any:
        """``vxtap show stats --json`` parsed."""
        return json.loads(self.cli("show", "stats", "--json").stdout)

    def stderr_text(self) -> str:
        return self.proc.stderr_text()

    def stop(self, timeout: float = 5) -> int | None:
        return self.proc.stop(timeout=timeout)


class Topology:
    """N nodes on an underlay, each with bridge br0 and ``pods`` pod namespaces.

    >>> with Topology(nodes=2) as t:
    ...     t.kernel_vxlan_mesh()
    ...     t.pod(1).ping(t.pod(2))
    """

    def __init__(self, nodes: int = 2, pods: int = 1, mtu: int = 1500, prefix: str | None = None,
                 disable_ipv6: bool = True, wire_checksums: bool = True,
                 vxlan_port: int = VXLAN_PORT, underlay: str = "ipv4",
                 pod_ipv6: bool = False) -> None:
        """underlay: "ipv4" (192.168.100.n), "ipv6" (fd00:100::n only: an IPv6-only
        underlay) or "dual" (both; node.ip is the IPv4 one). Node.ip is the address VTEPs
        use by default. pod_ipv6: pods also get fd00:244::<node>:<host>/64 (IPv6 is then
        enabled in every namespace)."""
        if underlay not in ("ipv4", "ipv6", "dual"):
            raise ValueError(f"underlay must be ipv4, ipv6 or dual, got {underlay!r}")
        self.underlay = underlay
        self.pod_ipv6 = pod_ipv6
        if underlay != "ipv4" or pod_ipv6:
            disable_ipv6 = False
        if nodes < 2:
            raise ValueError("need at least 2 nodes")
        if not 1 <= pods <= 250:
            raise ValueError("pods per node must be 1..250")
        if mtu - VXLAN_OVERHEAD < 576:
            raise ValueError(f"underlay MTU {mtu} leaves no room for overlay traffic")
        self.n_nodes, self.n_pods, self.mtu = nodes, pods, mtu
        self.disable_ipv6 = disable_ipv6
        self.wire_checksums = wire_checksums
        self.vxlan_port = vxlan_port  # every node's VTEP port unless add_*(port=...) says else
        self.prefix = prefix or f"vxt{os.getpid() % 10000}{random.randrange(256):02x}"
        if len(self.prefix) > 10:
            raise ValueError("prefix too long (names must stay short)")
        self.nodes: list[Node] = []
        self.hub: str | None = None
        self.namespaces: list[str] = []
        self.procs: list[BgProcess] = []
        self.agents: list[Agent] = []
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        os.chmod(self.workdir, 0o700)
        self.keep_workdir = False
        self._closed = False
        self._built = False

    # -- life cycle ------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.build()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _record(self) -> None:
        STATE_DIR.mkdir(mode=0o700, exist_ok=True)
        (STATE_DIR / f"{self.prefix}.json").write_text(
            json.dumps({"pid": os.getpid(), "start": _proc_start(os.getpid()),
                        "netns": self.namespaces}))

    def _add_ns(self, name: str) -> str:
        self.namespaces.append(name)
        self._record()  # record first: a crash right after `netns add` still gets cleaned
        ip("netns", "add", name)
        ip("link", "set", "lo", "up", ns=name)
        sysctls = []
        if self.disable_ipv6:
            sysctls += ["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"]
        if sysctls:
            run(["sysctl", "-q", "-w", *sysctls], name)
        return name

    def _bridge_sysctls(self, ns: str) -> None:
        # br_netfilter is loaded on this host and its knobs are per netns (default 1): keep
        # bridged frames out of iptables in our namespaces. Absent without br_netfilter: fine.
        run(["sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=0",
             "net.bridge.bridge-nf-call-ip6tables=0", "net.bridge.bridge-nf-call-arptables=0"],
            ns, check=False)

    def build(self) -> Topology:
        if self._built:
            return self
        self._built = True
        global _STALE_CHECKED
        if not _STALE_CHECKED:
            _STALE_CHECKED = True
            cleanup_stale()
        _LIVE_TOPOS.add(self)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def _build(self) -> None:
        p = self.prefix
        for n in range(1, self.n_nodes + 1):
            ip4 = f"{UNDERLAY_NET}.{n}" if self.underlay != "ipv6" else None
            ip6 = f"{UNDERLAY6_NET}{n}" if self.underlay != "ipv4" else None
            node = Node(ns=self._add_ns(f"{p}n{n}"), index=n, ip=ip4 or str(ip6), mtu=self.mtu,
                        vxlan_port=self.vxlan_port, ip4=ip4, ip6=ip6)
            self.nodes.append(node)
            self._bridge_sysctls(node.ns)
        # Underlay.
        if self.n_nodes == 2:
            a, b = self.nodes
            ip("link", "add", UNDERLAY_DEV, "mtu", self.mtu, "type", "veth",
               "peer", "name", UNDERLAY_DEV, "mtu", self.mtu, "netns", b.ns, ns=a.ns)
        else:
            self.hub = self._add_ns(f"{p}hub")
            self._bridge_sysctls(self.hub)
            ip("link", "add", "hub0", "mtu", self.mtu, "type", "bridge", ns=self.hub)
            ip("link", "set", "hub0", "up", ns=self.hub)
            for node in self.nodes:
                port = f"ul{node.index}"
                ip("link", "add", port, "mtu", self.mtu, "type", "veth",
                   "peer", "name", UNDERLAY_DEV, "mtu", self.mtu, "netns", node.ns, ns=self.hub)
                ip("link", "set", port, "master", "hub0", "up", ns=self.hub)
        for node in self.nodes:
            if self.wire_checksums:
                # Make the underlay behave like a wire. A veth passes CHECKSUM_PARTIAL skbs
                # through untouched, so a kernel VXLAN sender's inner TCP/UDP checksums would
                # never be computed: a kernel receiver trusts the skb metadata, but a userspace
                # receiver (the agent, via a UDP socket) gets the bytes with a bad checksum. With
                # TX checksum offload off, every datagram leaving a node carries complete
                # checksums, as after a real NIC.
                set_tx_checksum(node.ns, UNDERLAY_DEV, False)
            if node.ip4:
                ip("addr", "add", f"{node.ip4}/{UNDERLAY_PREFIXLEN}", "dev", UNDERLAY_DEV,
                   ns=node.ns)
            if node.ip6:          # no DAD: usable at once
                ip("addr", "add", f"{node.ip6}/64", "dev", UNDERLAY_DEV, "nodad", ns=node.ns)
            ip("link", "set", UNDERLAY_DEV, "up", ns=node.ns)
            # Node bridge; no STP, no forwarding delay, no multicast snooping surprises.
            ip("link", "add", BRIDGE, "mtu", node.overlay_mtu, "type", "bridge",
               "stp_state", "0", "forward_delay", "0", "mcast_snooping", "0", ns=node.ns)
            ip("link", "set", BRIDGE, "up", ns=node.ns)
            for m in range(self.n_pods):
                self._add_pod(node, host=m + 2)
        if self.underlay != "ipv4":
            # A neighbour solicitation sent within ~0.5 s of the links coming up goes
            # unanswered and the kernel retries only after RetransTimer (1 s): the first
            # packets of a test would stall for a second (kernel VTEPs and agents alike).
            # Wait until the IPv6 underlay answers, node 1 to every other node.
            for node in self.nodes[1:]:
                ping(self.nodes[0].ns, str(node.ip6), count=1, interval=0.2, deadline=5)

    def _add_pod(self, node: Node, host: int) -> Pod:
        ns = self._add_ns(f"{self.prefix}n{node.index}p{host}")
        pod = Pod(ns=ns, node=node, host=host, ip=f"{POD_NET}.{node.index}.{host}",
                  mac=f"02:00:00:00:{node.index:02x}:{host:02x}", mtu=node.overlay_mtu,
                  node_dev=f"vp{host}")
        ip("link", "add", pod.node_dev, "mtu", pod.mtu, "type", "veth",
           "peer", "name", POD_DEV, "mtu", pod.mtu, "address", pod.mac, "netns", ns, ns=node.ns)
        ip("link", "set", pod.node_dev, "master", BRIDGE, "up", ns=node.ns)
        ip("addr", "add", f"{pod.ip}/{POD_PREFIXLEN}", "dev", POD_DEV, ns=ns)
        if self.pod_ipv6:
            pod.ip6 = f"{POD6_NET}{node.index}:{host}"
            ip("addr", "add", f"{pod.ip6}/64", "dev", POD_DEV, "nodad", ns=ns)
        ip("link", "set", POD_DEV, "up", ns=ns)
        node.pods.append(pod)
        return pod

    def close(self) -> None:
        """Stop every process started through this topology (by PID), delete the namespaces."""
        if self._closed:
            return
        self._closed = True
        errors = []
        for agent in reversed(self.agents):
            try:
                agent.stop()
            except Exception as e:  # noqa: BLE001 -- report, keep cleaning
                errors.append(f"stop {agent}: {e}")
        for proc in reversed(self.procs):
            try:
                proc.stop(timeout=3)
            except Exception as e:  # noqa: BLE001 -- report, keep cleaning
                errors.append(f"stop {proc}: {e}")
        for ns in reversed(self.namespaces):
            cp = ip("netns", "del", ns, check=False)
            if cp.returncode != 0 and "No such file" not in cp.stderr:
                errors.append(f"netns del {ns}: {cp.stderr.strip()}")
        (STATE_DIR / f"{self.prefix}.json").unlink(missing_ok=True)
        if not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        _LIVE_TOPOS.discard(self)
        if errors:
            print("topology cleanup problems:\n  " + "\n  ".join(errors), file=sys.stderr)

    # -- access ------------------------------------------------------------------------------

    def node(self, n: int) -> Node:
        """Node by 1-based index."""
        return self.nodes[n - 1]

    def pod(self, n: int, m: int = 0) -> Pod:
        """Pod ``m`` (0-based) of node ``n`` (1-based)."""
        return self.nodes[n - 1].pods[m]

    @property
    def pods(self) -> list[Pod]:
        return [p for n in self.nodes for p in n.pods]

    def remote_pods(self, node: Node) -> list[Pod]:
        return [p for p in self.pods if p.node is not node]

    # -- processes -----------------------------------------------------------------------------

    def start(self, argv: Sequence[Any], ns: str | None = None, name: str = "proc",
              **kw: Any) -> BgProcess:
        """Start a background process (in ``ns``); it is stopped by ``close()``."""
        proc = BgProcess(argv, ns, name=name, logdir=self.workdir, **kw)
        self.procs.append(proc)
        return proc

    def start_raw_ipv4(self, ns: str, packets: Iterable[bytes], name: str = "rawsend") -> BgProcess:
        """Like :func:`send_raw_ipv4`, in the background (wait() returns when all are sent)."""
        path = self.workdir / f"{name}-{len(self.procs)}.hex"
        path.write_text("".join(p.hex() + "\n" for p in packets))
        return self.start([sys.executable, "-c", _RAW_SENDER, path], ns, name=name)

    def capture(self, node: Node, bpf: str = f"udp port {VXLAN_PORT}", name: str = "ul") -> Capture:
        """tcpdump on the node's underlay device; stopped by ``close()`` at the latest."""
        cap = Capture(node.ns, node.dev, bpf, self.workdir / f"{name}-{node.ns}.pcap", logdir=self.workdir)
        self.procs.append(cap.proc)
        return cap

    # -- VTEPs -----------------------------------------------------------------------------------

    def add_kernel_vxlan(self, node: Node, vni: int = DEFAULT_VNI, local: str | None = None,
                         port: int | None = None, peers: Iterable[Node] | None = None,
                         fdb: Iterable[tuple[str, str, int]] | None = None,
                         extra: Sequence[Any] = ()) -> str:
        """Linux kernel VXLAN device ``vx<VNI>`` on the node's br0, learning off, static fdb.

        ``port`` (default: ``node.vxlan_port``, i.e. ``Topology(vxlan_port=...)``) is the local
        UDP port. ``peers`` (default: every other node) get a flood entry (00:00:00:00:00:00) with their
        ``vxlan_port``; ``fdb`` (default: every remote pod's MAC -> its node) gets unicast
        entries as (mac, vtep_ip, port). ``extra``: more ``ip link add ... type vxlan``
        options (e.g. udp6zerocsumtx). With an IPv6 ``local`` the peers' flood entries use
        their IPv6 addresses.
        """
        dev = f"vx{vni}"
        local = local or node.ip
        port = node.vxlan_port if port is None else port
        ip("link", "add", dev, "mtu", node.overlay_mtu, "type", "vxlan", "id", vni, "local", local,
           "dstport", port, "nolearning", *extra, "dev", node.dev, ns=node.ns)
        ip("link", "set", dev, "master", node.bridge, "up", ns=node.ns)
        node.vxlan_port, node.vtep = port, "kernel"
        peers = [n for n in self.nodes if n is not node] if peers is None else list(peers)
        for peer in peers:
            dst = peer.ip6 if ":" in local else (peer.ip4 or peer.ip)
            run(["bridge", "fdb", "append", "00:00:00:00:00:00", "dev", dev, "dst", dst,
                 "port", peer.vxlan_port, "self", "permanent"], node.ns)
        if fdb is None:
            fdb = [(p.mac, p.node.ip, p.node.vxlan_port) for p in self.remote_pods(node)]
        for mac, vtep, vport in fdb:
            run(["bridge", "fdb", "replace", mac, "dev", dev, "dst", vtep, "port", vport,
                 "self", "permanent"], node.ns)
        return dev

    def remove_kernel_vxlan(self, node: Node, vni: int = DEFAULT_VNI) -> None:
        """Delete ``vx<VNI>`` (and with it its fdb) from the node."""
        ip("link", "del", f"vx{vni}", ns=node.ns)
        node.vtep = None

    def remove_agent(self, agent: Agent) -> int | None:
        """Stop one agent (its TAP disappears with it)."""
        rc = agent.stop()
        agent.node.vtep = None
        return rc

    def kernel_vxlan_mesh(self, vni: int = DEFAULT_VNI) -> None:
        """Kernel VXLAN on every node (port: each node's ``vxlan_port``), full static fdb."""
        for node in self.nodes:
            self.add_kernel_vxlan(node, vni=vni)

    def add_vxtap_agent(self, node: Node, vni: int = DEFAULT_VNI, local: str | None = None,
                        port: int | None = None, fdb: Iterable[tuple[str, str, int]] | None = None,
                        neigh: Iterable[tuple[str, str]] | None = None, tap: str = AGENT_TAP,
                        extra: Sequence[Any] = (), ready_timeout: float = 20) -> Agent:
        """Start ``vxtap agent --netns NODE ...`` (in the root ns) and wait for its socket.

        ``port`` defaults to ``node.vxlan_port`` (``Topology(vxlan_port=...)``, 4789).
        ``fdb`` defaults to every remote pod's MAC -> (its node's IP, its node's vxlan_port);
        ``neigh`` defaults to every remote pod's (IP, MAC), so the agent answers their ARP.
        """
        cmd = vxtap_command()
        if cmd is None:
            raise TopoError("vxtap is not installed (no `vxtap` on PATH, no dataplane/__main__.py)")
        local = local or node.ip
        port = node.vxlan_port if port is None else port
        node.vxlan_port, node.vtep = port, "vxtap"
        if fdb is None:
            fdb = [(p.mac, p.node.ip, p.node.vxlan_port) for p in self.remote_pods(node)]
        if neigh is None:
            neigh = [(p.ip, p.mac) for p in self.remote_pods(node)]
            neigh += [(p.ip6, p.mac) for p in self.remote_pods(node) if p.ip6]
        nth = sum(a.node is node for a in self.agents)
        sock = self.workdir / (f"agent-{node.index}.sock" if nth == 0 else
                               f"agent-{node.index}-{nth}.sock")
        argv = [*cmd, "agent", "--netns", node.ns, "--tap", tap, "--bridge", node.bridge,
                "--vni", str(vni), *[x for a in local.split(",") for x in ("--local", a)],
                "--port", str(port),
                "--mtu", str(node.overlay_mtu), "--underlay-mtu", str(node.mtu), "--sock", str(sock)]
        for mac, vtep, vport in fdb:
            argv += ["--fdb", f"{mac},[{vtep}]:{vport}" if ":" in vtep else f"{mac},{vtep}:{vport}"]
        for pip, mac in neigh:
            argv += ["--neigh", f"{pip},{mac}"]
        argv += [str(a) for a in extra]
        proc = BgProcess(argv, None, name=f"agent-{node.index}", logdir=self.workdir, cwd=str(REPO_ROOT))
        agent = Agent(node, argv, sock, proc, vni, port, tap)
        self.agents.append(agent)
        agent.wait_ready(ready_timeout)
        return agent

    def agent_logs(self) -> str:
        """stderr of every agent started here (for failure reports)."""
        parts = []
        for a in self.agents:
            parts.append(f"--- agent {a.node.ns} pid {a.proc.pid} rc {a.proc.proc.poll()}\n"
                         f"$ {' '.join(a.argv)}\n{a.stderr_text()}")
        return "\n".join(parts)

    # -- traffic (thin wrappers) -----------------------------------------------------------------

    def tcp_transfer(self, src: Pod, dst: Pod, size: int = 20 * 1024 * 1024, **kw: Any) -> TransferResult:
        return tcp_transfer(src.ns, dst.ns, dst.ip, size=size, logdir=str(self.workdir), **kw)

    def iperf3(self, src: Pod, dst: Pod, seconds: float = 3, **kw: Any) -> IperfResult:
        return iperf3(src.ns, dst.ns, dst.ip, seconds=seconds, logdir=str(self.workdir), **kw)


_LIVE_TOPOS: set[Topology] = set()
_STALE_CHECKED = False


def install_sigterm_handler() -> None:
    """Make SIGTERM raise KeyboardInterrupt (if nobody handles it yet), so that context
    managers, fixture finalizers and atexit hooks run when a runner is terminated."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, handler)


@atexit.register
def _cleanup_at_exit() -> None:
    for topo in list(_LIVE_TOPOS):
        topo.close()
    for proc in list(_LIVE_PROCS.values()):
        proc.stop(timeout=2)


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tests.topo --nodes 2 --vtep vxtap``: build a topology and keep it up until
    Ctrl-C (for poking at it by hand with ``ip netns exec``); everything is removed on exit."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m tests.topo", description=main.__doc__)
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--pods", type=int, default=1)
    ap.add_argument("--mtu", type=int, default=1500)
    ap.add_argument("--vtep", choices=("none", "kernel", "vxtap"), default="none",
                    help="VTEP on every node (default: none)")
    ap.add_argument("--agent-arg", action="append", default=[], help="extra agent argument")
    args = ap.parse_args(argv)
    reason = missing_privileges()
    if reason:
        print(reason, file=sys.stderr)
        return 2
    install_sigterm_handler()
    with Topology(nodes=args.nodes, pods=args.pods, mtu=args.mtu) as t:
        for node in t.nodes:
            if args.vtep == "kernel":
                t.add_kernel_vxlan(node)
            elif args.vtep == "vxtap":
                t.add_vxtap_agent(node, extra=args.agent_arg)
        for node in t.nodes:
            print(f"node {node.ns}: underlay {node.dev} {node.ip}/{UNDERLAY_PREFIXLEN}, "
                  f"bridge {node.bridge}")
            for pod in node.pods:
                print(f"  pod {pod.ns}: {pod.dev} {pod.ip}/{POD_PREFIXLEN} {pod.mac}")
        for agent in t.agents:
            print(f"agent {agent.node.ns}: pid {agent.proc.pid}, sock {agent.sock}")
        print("up; Ctrl-C tears it down", flush=True)
        try:
            while all(a.proc.alive for a in t.agents):
                time.sleep(0.5)
            print(t.agent_logs(), file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    sys.exit(main())
