"""Shared pytest fixtures.

Namespace fixtures come from tests/topo.py: ``make_topology`` (factory) and ``topo2`` (two nodes,
one pod each, no VTEP yet). Both skip when the machine cannot run them (not root, no
/dev/net/tun) and always tear everything down, also on failure; on failure they print the
agents' stderr and keep the topology's work directory (logs, pcaps) for inspection.

A real etcd (tests/etcd_server.py) comes from ``etcd``: one server per test module, started
again before each test that asks for it (an outage test stops it). Module-scoped fixtures take
``etcd_server``, the same server without the restart.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Generator, Iterator
from typing import Any

import pytest

from tests import topo
from tests.etcd_server import EtcdServer


def pytest_configure(config: pytest.Config) -> None:
    # A terminated runner (CI timeout, Ctrl-C from a wrapper) still runs the finalizers.
    topo.install_sigterm_handler()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)  # read by fixtures to print diagnostics on failure
    return rep


def _failed(request: pytest.FixtureRequest) -> bool:
    return any(getattr(request.node, f"rep_{w}", None) is not None
               and getattr(request.node, f"rep_{w}").failed for w in ("setup", "call"))


@pytest.fixture
def make_topology(request: pytest.FixtureRequest) -> Iterator[Callable[..., topo.Topology]]:
    """Factory: ``make_topology(nodes=2, pods=1, mtu=1500)`` -> built Topology, torn down after."""
    reason = topo.missing_privileges()
    if reason:
        pytest.skip(reason)
    created: list[topo.Topology] = []

    def factory(**kw: Any) -> topo.Topology:
        t = topo.Topology(**kw)
        created.append(t)
        return t.build()

    yield factory
    failed = _failed(request)
    for t in created:
        if failed:
            t.keep_workdir = True  # agent logs, process output, pcaps
            print(f"\n=== {t.prefix}: files kept in {t.workdir}", file=sys.stderr)
            if t.agents:
                print(f"=== agent logs ===\n{t.agent_logs()}", file=sys.stderr)
        t.close()


@pytest.fixture
def topo2(make_topology: Callable[..., topo.Topology]) -> topo.Topology:
    """Two nodes, one pod each, underlay MTU 1500, no VTEP configured."""
    return make_topology(nodes=2, pods=1)


@pytest.fixture(scope="module")
def etcd_server() -> Iterator[EtcdServer]:
    """One etcd on loopback for the test module, stopped and its data removed after it."""
    with EtcdServer() as server:
        yield server


@pytest.fixture
def etcd(etcd_server: EtcdServer) -> EtcdServer:
    """The module's etcd, running: started again if an earlier test stopped it, so that a
    failed outage test does not break the tests after it."""
    etcd_server.start()
    return etcd_server
