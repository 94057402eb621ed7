"""Unit tests of dataplane/ that need no root and no kernel devices.

1. ``dataplane.tablefile``: the ``--fdb``/``--neigh`` flag syntax and the ``--table`` file format
   (comments, ``vni N`` suffix), every error message with its ``file:line``.
2. ``dataplane.show``: the text output of ``vxtap show`` (``bridge fdb show``, ``ip neigh`` and
   ``ip -s link`` habits).
3. ``dataplane.ctlsock``: a real ControlServer on a temporary Unix socket (protocol, errors,
   permissions, stale and live sockets).
4. The ``vxtap`` command line: argument errors exit non-zero with one clear line on stderr and
   no traceback (``python -m dataplane`` run as a subprocess, no agent is ever started).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dataplane import ctlsock, show, tablefile
from dataplane.tablefile import FdbEntry, NeighEntry
from fastpath import addr
from fastpath.counters import DROPS, NAMES

REPO_ROOT = Path(__file__).resolve().parent.parent
MAC = "02:00:00:00:02:02"
VTEP = "192.168.100.2"


# ---------------------------------------------------------------------------------------------
# 1. tablefile
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag, entry", [
    (f"{MAC},{VTEP}", FdbEntry(MAC, VTEP, None)),
    (f"{MAC},{VTEP}:8472", FdbEntry(MAC, VTEP, 8472)),
    ("02:AB:CD:EF:00:01,10.0.0.1:1", FdbEntry("02:ab:cd:ef:00:01", "10.0.0.1", 1)),
])
def test_fdb_flag(flag: str, entry: FdbEntry) -> None:
    assert tablefile.parse_fdb_flag(flag) == entry


def test_fdb_flag_accepts_dashed_mac() -> None:
    e = tablefile.parse_fdb_flag("02-00-00-00-00-0A,10.0.0.1:65535")
    assert (addr.mac_to_int(e.mac), e.vtep, e.port, e.vni) == (0x02000000000A, "10.0.0.1",
                                                               65535, None)


@pytest.mark.parametrize("flag, want", [
    (f"{MAC},fd00::2", ("fd00::2", None)),
    (f"{MAC},[fd00::2]", ("fd00::2", None)),
    (f"{MAC},[fd00::2]:8472", ("fd00::2", 8472)),
])
def test_fdb_flag_ipv6_vtep(flag: str, want: tuple[str, int | None]) -> None:
    e = tablefile.parse_fdb_flag(flag)
    assert (e.vtep, e.port) == want


def test_table_file_ipv6_vteps() -> None:
    got = tablefile.parse_table(f"fdb {MAC} [fd00::2]:4789 vni 7\nfdb {MAC} fd00::3\n")
    assert [(e.vtep, e.port, e.vni) for e in got] == [("fd00::2", 4789, 7), ("fd00::3", None,
                                                                             None)]
    for line, msg in ((f"fdb {MAC} [fd00::2", "'[' without ']'"),
                      (f"fdb {MAC} [fd00::2]:x", "bad VTEP port in '[fd00::2]:x'"),
                      (f"fdb {MAC} ::ffff:10.0.0.1", "IPv4-mapped"),
                      (f"fdb {MAC} ff02::1", "not a unicast IPv6 address")):
        with pytest.raises(ValueError, match=msg.replace("[", "\\[")):
            tablefile.parse_table(line, "t")


@pytest.mark.parametrize("flag, message", [
    (MAC, f"--fdb wants MAC,VTEP[:PORT], got '{MAC}'"),
    (f"{MAC},{VTEP},4789", f"--fdb wants MAC,VTEP[:PORT], got '{MAC},{VTEP},4789'"),
    ("", "--fdb wants MAC,VTEP[:PORT], got ''"),
    (f"02:00:00:00:02,{VTEP}", "not a MAC address: '02:00:00:00:02' (want aa:bb:cc:dd:ee:ff)"),
    (f"01:00:5e:00:00:01,{VTEP}",
     "01:00:5e:00:00:01 is a multicast/broadcast MAC, not a station address"),
    (f"{MAC},192.168.100", "not an IPv4 address: '192.168.100'"),
    (f"{MAC},{VTEP}:", f"bad VTEP port in '{VTEP}:'"),
    (f"{MAC},{VTEP}:vxlan", f"bad VTEP port in '{VTEP}:vxlan'"),
    (f"{MAC},{VTEP}:-1", f"bad VTEP port in '{VTEP}:-1'"),
    (f"{MAC},{VTEP}:0", "UDP port must be in 1..65535, got 0"),
    (f"{MAC},{VTEP}:65536", "UDP port must be in 1..65535, got 65536"),
])
def test_fdb_flag_errors(flag: str, message: str) -> None:
    with pytest.raises(ValueError) as e:
        tablefile.parse_fdb_flag(flag)
    assert str(e.value) == message


def test_neigh_flag() -> None:
    assert tablefile.parse_neigh_flag("10.244.2.2,02:00:00:00:02:0A") == \
        NeighEntry("10.244.2.2", "02:00:00:00:02:0a")


@pytest.mark.parametrize("flag, message", [
    ("10.244.2.2", "--neigh wants IP,MAC, got '10.244.2.2'"),
    (f"10.244.2.2,{MAC},x", f"--neigh wants IP,MAC, got '10.244.2.2,{MAC},x'"),
    (f"{MAC},10.244.2.2", f"not an IPv6 address: '{MAC}'"),
    ("10.244.2.2,ff:ff:ff:ff:ff:ff",
     "ff:ff:ff:ff:ff:ff is a multicast/broadcast MAC, not a station address"),
    ("10.244.2.2,zz:00:00:00:00:01", "not a MAC address: 'zz:00:00:00:00:01' "
                                     "(want aa:bb:cc:dd:ee:ff)"),
])
def test_neigh_flag_errors(flag: str, message: str) -> None:
    with pytest.raises(ValueError) as e:
        tablefile.parse_neigh_flag(flag)
    assert str(e.value) == message


TABLE = """\
# vxtap static table
fdb   02:00:00:00:02:02  192.168.100.2          # node 2, default port

fdb   02:00:00:00:03:02  192.168.100.3:8472  vni 7
   neigh 10.244.2.2      02:00:00:00:02:02
neigh 10.244.3.2         02:00:00:00:03:02   vni 16777215   # max VNI
\t# an indented comment
"""


def test_table_file_format() -> None:
    assert tablefile.parse_table(TABLE, "t.conf") == [
        FdbEntry(MAC, VTEP, None, None),
        FdbEntry("02:00:00:00:03:02", "192.168.100.3", 8472, 7),
        NeighEntry("10.244.2.2", MAC, None),
        NeighEntry("10.244.3.2", "02:00:00:00:03:02", 16777215),
    ]
    assert tablefile.parse_table("", "t.conf") == []
    assert tablefile.parse_table("# only\n\n   \n", "t.conf") == []


def test_table_file_error_names_file_and_line() -> None:
    with pytest.raises(ValueError) as e:
        tablefile.parse_table(TABLE + "FDB 02:00:00:00:02:02 192.168.100.2   # keywords are "
                                      "lower case\n", "/etc/vxtap/t.conf")
    assert str(e.value) == (
        "/etc/vxtap/t.conf:8: want 'fdb MAC VTEP[:PORT]' or 'neigh IP MAC', got "
        "'FDB 02:00:00:00:02:02 192.168.100.2   # keywords are lower case'")


def _table_error(line: str, lineno: int = 2) -> str:
    text = "# header\n" * (lineno - 1) + line + "\n"
    with pytest.raises(ValueError) as e:
        tablefile.parse_table(text, "t.conf")
    return str(e.value)


@pytest.mark.parametrize("line, message", [
    ("fdb 02:00:00:00:02:02", "want 'fdb MAC VTEP[:PORT]' or 'neigh IP MAC', "
                              "got 'fdb 02:00:00:00:02:02'"),
    ("fdb 02:00:00:00:02:02 192.168.100.2 4789",
     "want 'fdb MAC VTEP[:PORT]' or 'neigh IP MAC', "
     "got 'fdb 02:00:00:00:02:02 192.168.100.2 4789'"),
    ("fdb 02:00:00:00:02:02 192.168.100.2 vni",
     "want 'fdb MAC VTEP[:PORT]' or 'neigh IP MAC', got 'fdb 02:00:00:00:02:02 192.168.100.2 vni'"),
    ("neigh 10.244.2.2 02:00:00:00:02:02 vni 42 x",
     "want 'fdb MAC VTEP[:PORT]' or 'neigh IP MAC', "
     "got 'neigh 10.244.2.2 02:00:00:00:02:02 vni 42 x'"),
    ("arp 10.244.2.2 02:00:00:00:02:02", "want 'fdb MAC VTEP[:PORT]' or 'neigh IP MAC', "
                                         "got 'arp 10.244.2.2 02:00:00:00:02:02'"),
    ("fdb 02:00:00:00:02:02 192.168.100.2 vni x", "bad VNI 'x'"),
    ("fdb 02:00:00:00:02:02 192.168.100.2 vni -1", "bad VNI '-1'"),
    ("fdb 01:00:00:00:02:02 192.168.100.2",
     "01:00:00:00:02:02 is a multicast/broadcast MAC, not a station address"),
    ("fdb 02:00:00:00:02:02 192.168.100.300", "not an IPv4 address: '192.168.100.300'"),
    ("fdb 02:00:00:00:02:02 192.168.100.2:x", "bad VTEP port in '192.168.100.2:x'"),
    ("fdb 02:00:00:00:02:02 192.168.100.2:99999", "UDP port must be in 1..65535, got 99999"),
    ("neigh 10.244.2 02:00:00:00:02:02", "not an IPv4 or IPv6 address: '10.244.2'"),
    ("neigh 10.244.2.2 ff:ff:ff:ff:ff:ff",
     "ff:ff:ff:ff:ff:ff is a multicast/broadcast MAC, not a station address"),
])
def test_table_file_errors(line: str, message: str) -> None:
    assert _table_error(line, lineno=3) == f"t.conf:3: {message}"


@pytest.mark.parametrize("vni", ["0", "16777216"])
def test_table_file_vni_out_of_range_names_file_and_line(vni: str) -> None:
    msg = _table_error(f"fdb 02:00:00:00:02:02 192.168.100.2 vni {vni}", lineno=4)
    assert msg == f"t.conf:4: VNI must be an integer in 1..16777215, got {vni}"


def test_table_file_default_source_name() -> None:
    with pytest.raises(ValueError, match=r"^<table>:1: "):
        tablefile.parse_table("bogus")


# ---------------------------------------------------------------------------------------------
# 2. show
# ---------------------------------------------------------------------------------------------


def test_format_fdb_like_bridge_fdb_show() -> None:
    rows = [[MAC, VTEP, 4789], ["02:00:00:00:03:02", "192.168.100.3", 8472]]
    assert show.format_fdb("vxtap0", 42, rows) == (
        "02:00:00:00:02:02 dev vxtap0 dst 192.168.100.2 port 4789 vni 42 self permanent\n"
        "02:00:00:00:03:02 dev vxtap0 dst 192.168.100.3 port 8472 vni 42 self permanent\n")
    assert show.format_fdb("vxtap0", 42, []) == ""


def test_format_neigh_like_ip_neigh() -> None:
    rows = [["10.244.2.2", MAC], ["10.244.3.2", "02:00:00:00:03:02"]]
    assert show.format_neigh("vxtap0", rows) == (
        "10.244.2.2 dev vxtap0 lladdr 02:00:00:00:02:02 PERMANENT\n"
        "10.244.3.2 dev vxtap0 lladdr 02:00:00:00:03:02 PERMANENT\n")
    assert show.format_neigh("vxtap0", []) == ""


def _counters(**nonzero: int) -> dict[str, int]:
    c = dict.fromkeys(NAMES, 0)
    assert set(nonzero) <= set(c), set(nonzero) - set(c)
    c.update(nonzero)
    return c


def test_format_stats_table() -> None:
    net = {"tap": "vxtap0", "vni": 42, "mac": "02:00:00:00:01:fe", "mtu": 1450,
           "counters": _counters(tap_rx_bytes=123456, tap_rx_packets=1000, udp_tx_bytes=173456,
                                 udp_tx_packets=1000, udp_rx_bytes=9, udp_rx_packets=1,
                                 tap_tx_bytes=1, tap_tx_packets=1, arp_replied=3,
                                 drop_tx_too_big=7, drop_spoofed=2),
           "vteps": [{"vtep": VTEP, "port": 4789, "fdb_entries": 2, "tx_packets": 10,
                      "tx_bytes": 1340, "rx_packets": 9, "rx_bytes": 900}]}
    stats = {"networks": [net], "global": _counters(drop_truncated=5),
             "control": {"etcd": "connected", "revision": 17}}
    assert show.format_stats(stats) == (
        "vxtap0: vni 42 mtu 1450 link/ether 02:00:00:00:01:fe\n"
        "                           bytes  packets\n"
        "    TAP in (from bridge)  123456     1000\n"
        "    underlay out          173456     1000\n"
        "    underlay in                9        1\n"
        "    TAP out (to bridge)        1        1\n"
        "    arp replied 3  nd replied 0  flooded 0\n"
        "    drops: tx_too_big 7, spoofed 2\n"
        "    peers:\n"
        "      vtep           port  fdb  tx_pkts  tx_bytes  rx_pkts  rx_bytes\n"
        "      192.168.100.2  4789    2       10      1340        9       900\n"
        "underlay (before a VNI is known) drops: truncated 5\n"
        "control etcd: connected\n"
        "control revision: 17\n")


def test_format_stats_quiet_agent() -> None:
    net = {"tap": "vx1", "vni": 1, "mac": MAC, "mtu": 1450, "counters": _counters(), "vteps": []}
    out = show.format_stats({"networks": [net], "global": _counters()})
    assert "    drops: none\n" in out
    assert "peers" not in out
    assert out.endswith("underlay (before a VNI is known) drops: none\n")
    assert "control" not in out
    assert show.format_stats({"networks": [], "global": {}}) == \
        "underlay (before a VNI is known) drops: none\n"


def test_format_stats_shows_every_drop_reason() -> None:
    """Every drop counter the fast path has is printed by its reason, in counter order."""
    values = {d: i + 1 for i, d in enumerate(DROPS)}
    net = {"tap": "vxtap0", "vni": 42, "mac": MAC, "mtu": 1450,
           "counters": _counters(**values), "vteps": []}
    out = show.format_stats({"networks": [net], "global": _counters()})
    line = next(ln for ln in out.splitlines() if ln.startswith("    drops: "))
    assert line == "    drops: " + ", ".join(f"{d[5:]} {v}" for d, v in values.items())


# ---------------------------------------------------------------------------------------------
# 3. ctlsock: a real server on a temporary Unix socket
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A short private directory (Unix socket paths are limited to 107 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="vxctl-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _serve(path: Path) -> Iterator[ctlsock.ControlServer]:
    srv = ctlsock.ControlServer(str(path))

    def echo(q: dict[str, Any]) -> Any:
        return {k: v for k, v in q.items() if k != "op"}

    def bad(q: dict[str, Any]) -> Any:
        raise ValueError(f"bad value {q.get('x')!r}")

    def missing(q: dict[str, Any]) -> Any:
        raise KeyError("no network with VNI 99")

    def typeerr(q: dict[str, Any]) -> Any:
        raise TypeError("want an int")

    def boom(q: dict[str, Any]) -> Any:
        raise RuntimeError("boom")

    for name, fn in (("echo", echo), ("bad", bad), ("missing", missing), ("typeerr", typeerr),
                     ("boom", boom)):
        srv.register(name, fn)
    srv.start()
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture(scope="module")
def server() -> Iterator[ctlsock.ControlServer]:
    """One server for the tests that only send requests (closing one takes 0.5 s)."""
    d = Path(tempfile.mkdtemp(prefix="vxctl-"))
    try:
        yield from _serve(d / "run" / "vxtap0.sock")
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def fresh_server(sockdir: Path) -> Iterator[ctlsock.ControlServer]:
    """A server of its own, for tests that register ops or stop accepting."""
    yield from _serve(sockdir / "run" / "vxtap0.sock")


class Conn:
    """One client connection: raw lines in, parsed response lines out."""

    def __init__(self, path: str) -> None:
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(5)
        self.s.connect(path)
        self.f = self.s.makefile("rb")

    def send(self, line: bytes) -> dict[str, Any]:
        self.s.sendall(line + b"\n")
        resp = self.f.readline()
        assert resp.endswith(b"\n"), resp
        return json.loads(resp)

    def close(self) -> None:
        self.f.close()
        self.s.close()


def test_ping(server: ctlsock.ControlServer) -> None:
    assert ctlsock.call(server.path, {"op": "ping"}) == "pong"
    assert ctlsock.call(server.path, {"op": "echo", "a": [1, "x"]}) == {"a": [1, "x"]}


def test_unknown_op_lists_known_ops(server: ctlsock.ControlServer) -> None:
    with pytest.raises(ctlsock.ControlError) as e:
        ctlsock.call(server.path, {"op": "nope"})
    assert str(e.value) == "unknown op 'nope'; known: bad, boom, echo, missing, ping, typeerr"


@pytest.mark.parametrize("line, error", [
    (b'{"op": "ping"', "bad JSON: "),
    (b"ping", "bad JSON: "),
    (b"\xff\xfe{}", "bad JSON: "),
    (b"[1, 2]", "request must be a JSON object with a string 'op'"),
    (b'"ping"', "request must be a JSON object with a string 'op'"),
    (b"{}", "request must be a JSON object with a string 'op'"),
    (b'{"op": 5}', "request must be a JSON object with a string 'op'"),
    (b"null", "request must be a JSON object with a string 'op'"),
])
def test_malformed_requests(server: ctlsock.ControlServer, line: bytes, error: str) -> None:
    c = Conn(server.path)
    try:
        resp = c.send(line)
        assert resp["ok"] is False and resp["error"].startswith(error), resp
        if error == "bad JSON: ":
            assert len(resp["error"]) > len(error), resp   # the parser's reason follows
        # The connection stays usable after a bad line.
        assert c.send(b'{"op": "ping"}') == {"ok": True, "result": "pong"}
    finally:
        c.close()


@pytest.mark.parametrize("op, error", [
    ("bad", "bad value 3"),
    ("missing", "no network with VNI 99"),   # KeyError: its message, not repr() with quotes
    ("typeerr", "want an int"),
    ("boom", "internal error: boom"),
])
def test_handler_errors(server: ctlsock.ControlServer, op: str, error: str) -> None:
    with pytest.raises(ctlsock.ControlError) as e:
        ctlsock.call(server.path, {"op": op, "x": 3})
    assert str(e.value) == error
    assert ctlsock.call(server.path, {"op": "ping"}) == "pong"


def test_internal_error_keeps_serving(server: ctlsock.ControlServer,
                                      caplog: pytest.LogCaptureFixture) -> None:
    c = Conn(server.path)
    try:
        for _ in range(3):
            assert c.send(b'{"op": "boom"}') == {"ok": False, "error": "internal error: boom"}
            assert c.send(b'{"op": "echo", "n": 1}') == {"ok": True, "result": {"n": 1}}
    finally:
        c.close()
    assert ctlsock.call(server.path, {"op": "ping"}) == "pong"     # a new connection too
    assert "control op boom failed" in caplog.text and "RuntimeError: boom" in caplog.text


def test_many_requests_on_one_connection(server: ctlsock.ControlServer) -> None:
    c = Conn(server.path)
    try:
        c.s.sendall(b"".join(b'{"op": "echo", "i": %d}\n' % i for i in range(50)))
        assert [json.loads(c.f.readline())["result"]["i"] for i in range(50)] == list(range(50))
    finally:
        c.close()


def test_client_waits_for_a_busy_server(fresh_server: ctlsock.ControlServer) -> None:
    """call(timeout=5) waits for the agent to accept; it does not fail at once with EAGAIN when
    the listen backlog is full (many CNI invocations at once)."""
    inner = fresh_server._server
    assert inner is not None
    inner.shutdown()                    # stop accepting for a moment; the socket keeps listening
    held = []
    timer = threading.Timer(0.3, inner.serve_forever)        # accept again 0.3 s later
    timer.daemon = True
    try:
        for _ in range(4096):           # fill the listen backlog
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            held.append(s)
            try:
                s.connect(fresh_server.path)
            except BlockingIOError:
                break
        else:
            pytest.fail("the listen backlog never filled")
        timer.start()
        assert ctlsock.call(fresh_server.path, {"op": "ping"}, timeout=5) == "pong"
    finally:
        timer.cancel()
        if timer.is_alive() or not timer.finished.is_set():
            timer.join(1)
        for s in held:
            s.close()


def test_socket_and_directory_modes(server: ctlsock.ControlServer) -> None:
    st = os.stat(server.path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(server.path)).st_mode) == 0o700


def test_close_removes_the_socket(sockdir: Path) -> None:
    path = str(sockdir / "x.sock")
    srv = ctlsock.ControlServer(path)
    srv.start()
    assert ctlsock.call(path, {"op": "ping"}) == "pong"
    srv.close()
    assert not os.path.exists(path)
    with pytest.raises(OSError):
        ctlsock.call(path, {"op": "ping"})
    srv.close()   # twice: no error


def test_stale_socket_is_replaced(sockdir: Path) -> None:
    path = str(sockdir / "x.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)          # the file of an agent that was SIGKILLed: nobody listens
    dead.close()
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    srv = ctlsock.ControlServer(path)
    srv.start()
    try:
        assert ctlsock.call(path, {"op": "ping"}) == "pong"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        srv.close()


def test_live_socket_refuses_a_second_server(server: ctlsock.ControlServer) -> None:
    second = ctlsock.ControlServer(server.path)
    with pytest.raises(OSError) as e:
        second.start()
    assert str(e.value) == f"{server.path}: another agent is listening there"
    second.close()   # the failed one must not remove the live agent's socket
    assert os.path.exists(server.path)
    assert ctlsock.call(server.path, {"op": "ping"}) == "pong"


def test_regular_file_at_socket_path_is_not_deleted(sockdir: Path) -> None:
    path = sockdir / "notes.txt"            # e.g. a mistyped --sock
    path.write_text("precious\n")
    srv = ctlsock.ControlServer(str(path))
    try:
        with pytest.raises(OSError):
            srv.start()
    finally:
        srv.close()
    assert path.read_text() == "precious\n"


def test_unserializable_result_gets_an_error_response(fresh_server: ctlsock.ControlServer) -> None:
    fresh_server.register("obj", lambda q: object())
    with pytest.raises(ctlsock.ControlError, match="internal error"):
        ctlsock.call(fresh_server.path, {"op": "obj"})


def test_call_to_missing_socket_is_oserror(sockdir: Path) -> None:
    with pytest.raises(FileNotFoundError):
        ctlsock.call(str(sockdir / "none.sock"), {"op": "ping"})


def test_default_path() -> None:
    assert ctlsock.default_path("vxtap0") == "/run/vxtap/vxtap0.sock"


# ---------------------------------------------------------------------------------------------
# 4. vxtap command-line errors (subprocess; nothing is started)
# ---------------------------------------------------------------------------------------------


def vxtap(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dataplane", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False)


def assert_clean_error(cp: subprocess.CompletedProcess[str], rc: int, message: str) -> None:
    """Exit code ``rc``, ``message`` on stderr, nothing on stdout, no traceback."""
    assert cp.returncode == rc, (cp.returncode, cp.stderr)
    assert message in cp.stderr, cp.stderr
    assert "Traceback" not in cp.stderr, cp.stderr
    assert cp.stdout == "", cp.stdout


AGENT = ["agent", "--local", "192.168.100.1", "--vni", "42"]


@pytest.mark.parametrize("args, message", [
    (["agent"], "vxtap agent: --vni (or --net NAME:VNI:TAP[:BRIDGE]) is required without "
                "--etcd"),
    (["agent", "--local", "192.168.100.1"],
     "vxtap agent: --vni (or --net NAME:VNI:TAP[:BRIDGE]) is required without --etcd"),
    (["agent", "--vni", "42"], "vxtap agent: --local is required without --etcd"),
    (["agent", "--etcd", "http://127.0.0.1:1"],
     "vxtap agent: --etcd needs --network (or --net NAME::TAP[:BRIDGE])"),
    ([*AGENT[:3], "--vni", "0"],
     "vxtap agent: network vxtap0: VNI must be an integer in 1..16777215, got 0"),
    ([*AGENT[:3], "--vni", "16777216"],
     "vxtap agent: network vxtap0: VNI must be an integer in 1..16777215, got 16777216"),
    # several networks: every spec checked before anything is created
    ([*AGENT[:3], "--net", "red:42"], "vxtap agent: --net wants NAME:VNI:TAP[:BRIDGE], "
                                      "got 'red:42'"),
    ([*AGENT[:3], "--net", "red:x:vxr"], "vxtap agent: --net 'red:x:vxr': VNI 'x' is not a "
                                         "number"),
    ([*AGENT[:3], "--net", "red::vxr"], "vxtap agent: --net 'red::vxr': a VNI is required "
                                        "without --etcd"),
    ([*AGENT[:3], "--net", "red:42:vxr:br:extra"],
     "vxtap agent: --net wants NAME:VNI:TAP[:BRIDGE], got 'red:42:vxr:br:extra'"),
    ([*AGENT[:3], "--net", "red:42:vxr", "--net", "blue:42:vxb"],
     "vxtap agent: VNI 42 given twice (networks red and blue)"),
    ([*AGENT[:3], "--net", "red:42:vxr", "--net", "blue:43:vxr"],
     "vxtap agent: TAP vxr given twice (networks red and blue)"),
    ([*AGENT[:3], "--net", "red:42:vxr", "--net", "red:43:vxb"],
     "vxtap agent: network name 'red' given twice"),
    ([*AGENT[:3], "--net", "red:42:vxr:br0", "--net", "blue:43:vxb:br0"],
     "vxtap agent: bridge br0 given to two networks (red and blue): that would join their "
     "tenants at layer 2"),
    ([*AGENT[:3], "--net", "red:42:a-tap-name-too-long"],
     "vxtap agent: network red: bad TAP name 'a-tap-name-too-long' (1..15 characters, no "
     "whitespace, '/' or ':')"),
    ([*AGENT[:3], "--net=.red:42:vxr"], "vxtap agent: bad network name '.red': 1-63 of A-Z "
                                        "a-z 0-9 _ . -, starting with a letter or digit"),
    ([*AGENT[:3], "--net", "red:0:vxr"],
     "vxtap agent: network red: VNI must be an integer in 1..16777215, got 0"),
    ([*AGENT, "--net", "red:43:vxr"], "vxtap agent: give the networks either as --net "
     "NAME:VNI:TAP[:BRIDGE] or as --tap/--vni/--bridge/--mac (one network), not both"),
    ([*AGENT[:3], "--net", "red:42:vxr", "--network", "red"],
     "vxtap agent: --network needs --etcd"),
    (["agent", "--local", "192.168.100", "--vni", "42"],
     "vxtap agent: not an IPv4 or IPv6 address: '192.168.100'"),
    ([*AGENT, "--port", "65536"], "vxtap agent: UDP port must be in 1..65535, got 65536"),
    ([*AGENT, "--local", "fd00::1", "--local", "fd00::zz"],
     "vxtap agent: not an IPv6 address: 'fd00::zz'"),
    (["agent", "--local", "ff02::1", "--vni", "42"],
     "vxtap agent: ff02::1 is not a unicast IPv6 address, cannot be a VTEP"),
])
def test_agent_argument_errors_exit_1(args: list[str], message: str) -> None:
    cp = vxtap(*args)
    assert_clean_error(cp, 1, message)
    assert cp.stderr.strip().splitlines()[-1] == message


@pytest.mark.parametrize("args, message", [
    ([*AGENT, "--srcport", "1000"], "argument --srcport: want MIN-MAX, got '1000'"),
    ([*AGENT, "--srcport", "a-b"], "argument --srcport: want MIN-MAX, got 'a-b'"),
    ([*AGENT, "--srcport", "2000-1000"],
     "argument --srcport: want 1 <= MIN < MAX <= 65536, got '2000-1000'"),
    ([*AGENT, "--srcport", "0-100"], "argument --srcport: want 1 <= MIN < MAX <= 65536, "
                                     "got '0-100'"),
    ([*AGENT, "--srcport", "1-65537"], "argument --srcport: want 1 <= MIN < MAX <= 65536, "
                                       "got '1-65537'"),
    ([*AGENT, "--fdb", MAC], f"argument --fdb: --fdb wants MAC,VTEP[:PORT], got '{MAC}'"),
    ([*AGENT, "--fdb", f"ff:ff:ff:ff:ff:ff,{VTEP}"],
     "argument --fdb: ff:ff:ff:ff:ff:ff is a multicast/broadcast MAC, not a station address"),
    ([*AGENT, "--fdb", f"{MAC},{VTEP}:x"], f"argument --fdb: bad VTEP port in '{VTEP}:x'"),
    ([*AGENT, "--neigh", "10.244.2.2"], "argument --neigh: --neigh wants IP,MAC, "
                                        "got '10.244.2.2'"),
    ([*AGENT, "--threads", "many"], "argument --threads: invalid choice: 'many'"),
    ([*AGENT, "--vni", "x"], "argument --vni: invalid int value: 'x'"),
    ([*AGENT, "--pcap-points", "nowhere"], "argument --pcap-points: capture points:"),
])
def test_agent_flag_errors_exit_2(args: list[str], message: str) -> None:
    cp = vxtap(*args)
    assert_clean_error(cp, 2, message)
    assert cp.stderr.startswith("usage: vxtap agent"), cp.stderr


def test_agent_table_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.table"
    bad.write_text(f"# ok\nfdb {MAC} {VTEP}\nneigh 10.244.2.2\n")
    cp = vxtap(*AGENT, "--table", str(bad))
    assert_clean_error(cp, 1, f"vxtap agent: --table: {bad}:3: want 'fdb MAC VTEP[:PORT]' or "
                              "'neigh IP MAC', got 'neigh 10.244.2.2'")
    missing = tmp_path / "missing.table"
    cp = vxtap(*AGENT, "--table", str(missing))
    assert_clean_error(cp, 1, f"vxtap agent: --table: [Errno 2] No such file or directory: "
                              f"'{missing}'")


@pytest.mark.parametrize("args, rc, message", [
    (["fdb", "add", MAC], 1, "vxtap fdb add: need VTEP[:PORT]"),
    (["fdb", "add", MAC, f"{VTEP}:x"], 1, f"vxtap fdb add: bad VTEP port in '{VTEP}:x'"),
    (["fdb", "add", MAC, "192.168.100"], 1, "vxtap fdb add: not an IPv4 address: '192.168.100'"),
    (["neigh", "add", "10.244.2.2"], 1, "vxtap neigh add: need MAC"),
    (["fdb", "flush", MAC], 2, "argument action: invalid choice: 'flush'"),
    (["show", "routes"], 2, "argument what: invalid choice: 'routes'"),
    (["fdb", "add", MAC, VTEP, "--vni", "x"], 2, "argument --vni: invalid int value: 'x'"),
    ([], 2, "the following arguments are required: cmd"),
])
def test_table_command_errors(args: list[str], rc: int, message: str, sockdir: Path) -> None:
    cp = vxtap(*args, "--sock", str(sockdir / "none.sock")) if args else vxtap()
    assert_clean_error(cp, rc, message)


@pytest.mark.parametrize("args", [["show", "fdb"], ["fdb", "del", MAC],
                                  ["neigh", "add", "10.244.2.2", MAC]])
def test_no_agent_at_socket(args: list[str], sockdir: Path) -> None:
    path = sockdir / "none.sock"
    cp = vxtap(*args, "--sock", str(path))
    assert_clean_error(cp, 1, f"vxtap: cannot reach the agent at {path}: "
                              "[Errno 2] No such file or directory")


def test_agent_error_is_reported_by_the_cli(fresh_server: ctlsock.ControlServer) -> None:
    """An {"ok": false} answer becomes `vxtap: <error>` and exit 1 (fake agent: the server)."""
    def fdb_del(q: dict[str, Any]) -> None:
        raise KeyError(f"no network with VNI {q['vni']}")

    fresh_server.register("fdb_del", fdb_del)
    cp = vxtap("fdb", "del", MAC, "--vni", "7", "--sock", fresh_server.path)
    assert_clean_error(cp, 1, "vxtap: no network with VNI 7")


def test_show_output_through_the_cli(fresh_server: ctlsock.ControlServer) -> None:
    """`vxtap show fdb|neigh` print the show formats of what the agent returns."""
    fresh_server.register("show", lambda q: {"tap": "vxtap0", "vni": 42, "rows": (
        [[MAC, VTEP, 4789]] if q["what"] == "fdb" else [["10.244.2.2", MAC]])})
    cp = vxtap("show", "fdb", "--sock", fresh_server.path)
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout == show.format_fdb("vxtap0", 42, [[MAC, VTEP, 4789]])
    cp = vxtap("show", "neigh", "--sock", fresh_server.path)
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout == "10.244.2.2 dev vxtap0 lladdr 02:00:00:00:02:02 PERMANENT\n"
    cp = vxtap("show", "neigh", "--json", "--sock", fresh_server.path)
    assert json.loads(cp.stdout) == {"tap": "vxtap0", "vni": 42, "rows": [["10.244.2.2", MAC]]}


# ---------------------------------------------------------------------------------------------
# issue 12, item 7: binary table file, 2 MB control line, client gone before the answer
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data, message", [
    (b"# ok\nfdb 02:00:00:00:02:02 192.168.100.2\n\x7fELF\x02\x01\x01\xff\xfe\n",
     "t.bin:3: not a text file (byte 0xff at column 8 is not UTF-8)"),
    (b"\x89PNG\r\n", "t.bin:1: not a text file (byte 0x89 at column 1 is not UTF-8)"),
    (b"# ok\n\n  fdb\x00\x00\n", "t.bin:3: not a text file (NUL byte at column 6)"),
])
def test_binary_table_file_error_has_a_line_number(data: bytes, message: str) -> None:
    with pytest.raises(ValueError) as e:
        tablefile.parse_table(data, "t.bin")
    assert str(e.value) == message


def test_table_file_bytes_same_as_text() -> None:
    assert tablefile.parse_table(TABLE.encode(), "t") == tablefile.parse_table(TABLE, "t")
    assert tablefile.parse_table(b"fdb 02:00:00:00:02:02 192.168.100.2\r\n", "t") == [
        FdbEntry(MAC, VTEP, None, None)]


def test_oversized_control_line_is_too_long_not_bad_json(server: ctlsock.ControlServer) -> None:
    c = Conn(server.path)
    try:
        line = b'{"op": "echo", "x": "' + b"a" * (2 << 20) + b'"}'
        resp = c.send(line)
        assert resp == {"ok": False, "error": f"request line too long (more than "
                                              f"{ctlsock.MAX_LINE} bytes); one JSON object per "
                                              "line"}, resp
        assert c.send(b'{"op": "ping"}') == {"ok": True, "result": "pong"}   # still in step
        ok = b'{"op": "echo", "x": "' + b"b" * (ctlsock.MAX_LINE - 40) + b'"}'
        assert c.send(ok)["ok"] is True                 # just under the limit still works
    finally:
        c.close()


def test_client_gone_before_answer_is_silent(fresh_server: ctlsock.ControlServer,
                                             capfd: pytest.CaptureFixture[str],
                                             caplog: pytest.LogCaptureFixture) -> None:
    done = threading.Event()

    def slow(q: dict[str, Any]) -> Any:
        time.sleep(0.2)
        done.set()
        return "x" * (1 << 20)              # more than a socket buffer: the write must fail

    fresh_server.register("slow", slow)
    for _ in range(3):
        done.clear()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(fresh_server.path)
        s.sendall(b'{"op": "slow"}\n')
        s.close()                           # gone before the answer
        assert done.wait(5)
    time.sleep(0.3)
    assert ctlsock.call(fresh_server.path, {"op": "ping"}) == "pong"
    err = capfd.readouterr().err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert "BrokenPipe" not in caplog.text and "Traceback" not in caplog.text, caplog.text
