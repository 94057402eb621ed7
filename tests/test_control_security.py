"""etcd TLS (server + client certificates) and username/password, each against its own real
etcd: the sync works, and wrong credentials are a clear error, not a hang or a crash."""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Iterator

import pytest

from control.agent import add_agent_args, control_config_from_args, control_plane_from_control
from control.etcd import EtcdSettings
from control.records import NetworkConfig
from control.sync import ControlPlane
from control.testing import FakeSink
from tests.etcd_server import EtcdServer, TlsFiles, make_tls

CFG = NetworkConfig(vni=42, subnet="10.244.0.0/16")
pytestmark = pytest.mark.etcd


@pytest.fixture(scope="module")
def tls_files() -> Iterator[TlsFiles]:
    if not shutil.which("openssl"):
        pytest.skip("needs openssl")
    d = tempfile.mkdtemp(prefix="vxtap-tls-")
    try:
        yield make_tls(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def run_pair(settings: EtcdSettings) -> None:
    """Two nodes; an endpoint of n2 reaches n1's table."""
    cps: list[ControlPlane] = []
    sinks = [FakeSink(), FakeSink()]
    try:
        for i in (1, 2):
            cp = ControlPlane(settings, "sec", f"n{i}", ttl=2, init_config=CFG)
            cps.append(cp)
            cp.bootstrap(timeout=10)
            cp.start(sinks[i - 1], underlay=f"192.168.100.{i}", port=4789,
                     tap_mac=f"02:00:00:00:00:0{i}")
            assert cp.wait_synced(10)
        cps[1].endpoint_add("p", "eth0", "02:00:00:00:02:02", "10.244.1.2/16", None)
        deadline = time.monotonic() + 10
        while (42, "02:00:00:00:02:02") not in sinks[0].fdb:
            assert time.monotonic() < deadline, "endpoint did not propagate"
            time.sleep(0.02)
        assert sinks[0].fdb[(42, "02:00:00:00:02:02")] == ("192.168.100.2", 4789)
    finally:
        for cp in cps:
            cp.stop()


def test_tls_with_client_certificates(tls_files: TlsFiles) -> None:
    with EtcdServer(tls=tls_files) as server:
        assert server.url.startswith("https://")
        # through the agent's own option parsing
        p = argparse.ArgumentParser()
        add_agent_args(p)
        args = p.parse_args(["--etcd", server.url, "--network", "sec", "--node", "n1",
                             "--etcd-cacert", tls_files.ca, "--etcd-cert", tls_files.client_cert,
                             "--etcd-key", tls_files.client_key])
        conf = control_config_from_args(args)
        assert conf is not None
        settings = control_plane_from_control(conf).settings
        run_pair(settings)
        # without a client certificate the server refuses: a clear timeout, no crash
        cp = ControlPlane(EtcdSettings.from_text(server.url, cafile=tls_files.ca, timeout=1),
                          "sec", "n3", backoff_initial=0.05, backoff_max=0.2)
        with pytest.raises(TimeoutError, match="etcd not reachable at https://127.0.0.1"):
            cp.bootstrap(timeout=1.5)
        cp.stop()


def test_username_password() -> None:
    with EtcdServer() as server:
        server.etcdctl("user", "add", "root:rootpw")
        server.etcdctl("role", "add", "vxtap")
        server.etcdctl("role", "grant-permission", "vxtap", "--prefix=true", "readwrite", "/vxtap/")
        server.etcdctl("user", "add", "agent:s3cret")
        server.etcdctl("user", "grant-role", "agent", "vxtap")
        server.etcdctl("auth", "enable")
        run_pair(EtcdSettings.from_text(server.url, username="agent", password="s3cret"))
        cp = ControlPlane(EtcdSettings.from_text(server.url, username="agent", password="wrong",
                                                 timeout=1),
                          "sec", "n3", backoff_initial=0.05, backoff_max=0.2)
        with pytest.raises(TimeoutError, match="authentication failed"):
            cp.bootstrap(timeout=1)
        cp.stop()
        with pytest.raises(ValueError, match="username and password must be given together"):
            EtcdSettings.from_text(server.url, username="agent")
