"""A real etcd for tests: loopback only, free non-default ports, private data dir.

    with EtcdServer() as etcd:          # started and healthy
        etcd.url                        # "http://127.0.0.1:<port>"
        etcd.stop()                     # SIGTERM by PID, wait
        etcd.start()                    # same ports, same data dir
    # stopped and data dir removed, also on failure

Only the process this helper started is ever signalled (by PID). Tests get one through the
fixtures `etcd` and `etcd_server` of tests/conftest.py (one server per test module).

Also here, for tests of agents on etcd: `etcd_client`, `etcd_desired` (the tables a node should
hold), `agent_tables` (the tables a running agent holds, in the same form) and
`etcd_fresh_network` (a network emptied, with node blocks clear of tests/topo.py's pods).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from control.tables import Tables
    from tests import topo

ETCD_BIN = os.environ.get("VXTAP_TEST_ETCD", "/usr/bin/etcd")
ETCDCTL_BIN = os.environ.get("VXTAP_TEST_ETCDCTL", "/usr/bin/etcdctl")
_DEFAULT_PORTS = {2379, 2380}


def free_port() -> int:
    """A free TCP port on 127.0.0.1 that is not one of etcd's default ports."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _DEFAULT_PORTS:
            return port


@dataclass(frozen=True)
class TlsFiles:
    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str


def make_tls(directory: str) -> TlsFiles:
    """A throw-away CA, a server certificate for 127.0.0.1 and a client certificate (openssl)."""
    def p(name: str) -> str:
        return os.path.join(directory, name)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=vxtap-test-ca",
            "-keyout", p("ca.key"), "-out", p("ca.crt"))
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
                      ("client", "extendedKeyUsage=clientAuth")):
        with open(p(f"{name}.ext"), "w") as f:
            f.write(ext + "\n")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=vxtap-{name}",
                "-keyout", p(f"{name}.key"), "-out", p(f"{name}.csr"))
        openssl("x509", "-req", "-in", p(f"{name}.csr"), "-CA", p("ca.crt"), "-CAkey", p("ca.key"),
                "-CAcreateserial", "-days", "2", "-extfile", p(f"{name}.ext"), "-out", p(f"{name}.crt"))
    return TlsFiles(p("ca.crt"), p("server.crt"), p("server.key"), p("client.crt"), p("client.key"))


class EtcdServer:
    """One single-member etcd on 127.0.0.1, owned by this object."""

    def __init__(self, name: str = "vxtap-test", startup_timeout: float = 20.0, *,
                 tls: TlsFiles | None = None, extra_args: Sequence[str] = ()) -> None:
        """tls: serve clients over https with these files (client certificates required)."""
        self.name = name
        self.tls = tls
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.client_port = free_port()
        self.peer_port = free_port()
        while self.peer_port == self.client_port:
            self.peer_port = free_port()
        self.data_dir = tempfile.mkdtemp(prefix="vxtap-etcd-")
        self.log_path = os.path.join(self.data_dir, "etcd.log")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.client_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Start (or restart) etcd on the same ports and data dir; return when healthy."""
        if self.running:
            return
        peer = f"http://127.0.0.1:{self.peer_port}"
        cmd = [
            ETCD_BIN,
            "--name", self.name,
            "--data-dir", os.path.join(self.data_dir, "data"),
            "--listen-client-urls", self.url,
            "--advertise-client-urls", self.url,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{self.name}={peer}",
            "--initial-cluster-state", "new",
            "--heartbeat-interval", "50",
            "--election-timeout", "500",
        ]
        if self.tls:
            cmd += ["--cert-file", self.tls.server_cert, "--key-file", self.tls.server_key,
                    "--trusted-ca-file", self.tls.ca, "--client-cert-auth"]
        cmd += self.extra_args
        with open(self.log_path, "ab") as log:
            # own session: a terminal Ctrl-C must not kill etcd before the cleanup that
            # still needs it (CNI DEL in the demo); it is always stopped by PID
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}; log:\n{self.log_tail()}")
            if self.healthy():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"etcd not healthy after {self.startup_timeout}s; log:\n{self.log_tail()}")

    def healthy(self) -> bool:
        ctx = None
        if self.tls:
            ctx = ssl.create_default_context(cafile=self.tls.ca)
            ctx.load_cert_chain(self.tls.client_cert, self.tls.client_key)
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=1.0, context=ctx) as r:
                return bool(json.loads(r.read()).get("health") == "true")
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the etcd this object started (by PID), SIGKILL it if it does not exit."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def log_tail(self, n: int = 30) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return b"\n".join(f.read().splitlines()[-n:]).decode(errors="replace")
        except OSError:
            return "(no log)"

    def etcdctl(self, *args: str, check: bool = True) -> str:
        """Run etcdctl (API v3) against this server; return stdout."""
        env = dict(os.environ, ETCDCTL_API="3")
        tls = []
        if self.tls:
            tls = ["--cacert", self.tls.ca, "--cert", self.tls.client_cert,
                   "--key", self.tls.client_key]
        r = subprocess.run([ETCDCTL_BIN, "--endpoints", self.url, *tls, *args], env=env,
                           capture_output=True, timeout=20, check=False)
        if check and r.returncode != 0:
            raise RuntimeError(f"etcdctl {' '.join(args)}: {r.stderr.decode(errors='replace')}")
        return r.stdout.decode(errors="replace")

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.cleanup()


class GrpcProxy:
    """`etcd grpc-proxy start` on loopback in front of an etcd (it coalesces identical watches
    of its clients into one upstream watch), stopped by PID. Returns once it listens.

        proxy = GrpcProxy(etcd.url); proxy.url  ->  "http://127.0.0.1:<proxy port>"
        proxy.stop()
    """

    def __init__(self, upstream_url: str, workdir: str | None = None,
                 name: str = "grpc-proxy", startup_timeout: float = 20.0) -> None:
        self.port = free_port()
        self._own_dir = workdir is None
        self.dir = workdir if workdir is not None else tempfile.mkdtemp(prefix="vxtap-proxy-")
        self.log_path = os.path.join(self.dir, f"{name}.log")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [ETCD_BIN, "grpc-proxy", "start", "--endpoints", upstream_url.split("://", 1)[-1],
                 "--listen-addr", f"127.0.0.1:{self.port}",
                 "--data-dir", os.path.join(self.dir, f"{name}.data"),
                 "--advertise-client-url", f"127.0.0.1:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        deadline = time.monotonic() + startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"grpc-proxy exited {self.proc.returncode}, see {self.log_path}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"grpc-proxy not listening after {startup_timeout:g} s, "
                           f"see {self.log_path}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    close = stop


class TcpProxy:
    """A loopback TCP forwarder in front of etcd that a test can cut and restore, so a client
    loses its connection (and its watch) while etcd itself keeps running.

        proxy = TcpProxy(etcd.client_port); proxy.url  ->  "http://127.0.0.1:<proxy port>"
        proxy.cut()       # close every connection, refuse new ones
        proxy.restore()   # accept again on the same port
    """

    def __init__(self, upstream_port: int) -> None:
        import threading
        self.upstream_port = upstream_port
        self.port = free_port()
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._threading = threading
        self.restore()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def restore(self) -> None:
        if self._listener is not None:
            return
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(64)
        self._listener = ls
        self._threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            ls, self._listener = self._listener, None
            conns, self._conns = self._conns, []
        if ls is not None:
            try:
                ls.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            ls.close()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    close = cut

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                down, _ = ls.accept()
            except OSError:
                return
            try:
                up = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=2)
                up.settimeout(None)
            except OSError:
                down.close()
                continue
            with self._lock:
                if self._listener is not ls:
                    down.close()
                    up.close()
                    return
                self._conns += [down, up]
            for a, b in ((down, up), (up, down)):
                self._threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def wait_until(pred: Callable[[], bool], timeout: float = 10.0, step: float = 0.02) -> float:
    """Seconds until pred() held; AssertionError on timeout."""
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(step)
    return time.monotonic() - t0


def etcd_client(server: EtcdServer) -> Any:
    """A pyetcd client for `server` (close it after use)."""
    from control.etcd import EtcdSettings, connect
    client, _ = connect(EtcdSettings.from_text(server.url), "/")
    return client


def etcd_desired(server: EtcdServer, network: str, node: str, prefix: str = "/vxtap") -> Any:
    """The tables `node` should hold, computed (by control.tables.desired) from etcd's content."""
    from control.keys import Layout
    from control.tables import Snapshot, desired
    layout = Layout(prefix, network)
    client = etcd_client(server)
    try:
        kvs = [(m.key.decode(), v) for v, m in client.get_prefix(layout.root)]
    finally:
        client.close()
    return desired(Snapshot.from_kvs(layout, kvs), node)


def agent_tables(agent: topo.Agent) -> Tables:
    """The tables a running agent holds (its first network's `show fdb` and `show neigh`), as
    control.tables.Tables, the form etcd_desired() returns."""
    from control.tables import Tables
    fdb = agent.request("show", what="fdb")["rows"]
    neigh = agent.request("show", what="neigh")["rows"]
    return Tables(fdb={(agent.vni, m): (v, p) for m, v, p in fdb},
                  neigh={(agent.vni, ip): m for ip, m in neigh})


def etcd_fresh_network(server: EtcdServer, network: str, nodes: Iterable[int],
                       config: dict[str, Any] | None = None, prefix: str = "/vxtap") -> None:
    """Start `network` afresh: delete its keys and its IPAM index keys, write `config` if
    given, and give node<i> (i in `nodes`) the block 10.244.<10 i>.0/24. tests/topo.py's pods
    use 10.244.<i>.x and an agent reuses the block its node owns, so the addresses it hands out
    (CNI, IPAM) cannot collide with the topology's pods."""
    from control.ipam import index_root
    from control.keys import Layout
    layout = Layout(prefix, network)
    client = etcd_client(server)
    try:
        client.delete_prefix(layout.root)
        client.delete_prefix(index_root(layout))
        if config is not None:
            client.put(layout.config, json.dumps(config))
        for i in nodes:
            client.put(layout.block(f"10.244.{i * 10}.0/24"), json.dumps({"node": f"node{i}"}))
    finally:
        client.close()
