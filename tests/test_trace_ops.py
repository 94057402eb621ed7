"""The trace ops on a real control socket (no root): observe.attach on a stand-in agent with the
simulated switch, driven through `vxtap trace ...` (dataplane.cli.main) and raw requests.
"""
from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dataplane import cli, ctlsock, observe
from tests.test_trace_common import VNI, arp_for_b, make_switch, ping_out, tshark


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Any]:
    sw = make_switch()
    a = SimpleNamespace(fwd=SimpleNamespace(switch=sw),
                        ctl=ctlsock.ControlServer(str(tmp_path / "ctl" / "a.sock")))
    a.ctl.start()
    try:
        yield a
    finally:
        h = getattr(a, "observe_handle", None)
        if h is not None:
            h.stop()
        a.ctl.close()


def vxtap(capsys: pytest.CaptureFixture[str], agent: Any, *argv: str) -> str:
    rc = cli.main(["trace", *argv, "--sock", agent.ctl.path])
    assert rc == 0
    return capsys.readouterr().out


def test_cli_decision_trace(agent: Any, capsys: pytest.CaptureFixture[str]) -> None:
    observe.attach(agent, {})
    out = vxtap(capsys, agent, "add", "2")
    assert "decision trace: 0/2 packets, filter any" in out
    with agent.observe_handle.tracer.exclusive():          # see Tracer.exclusive
        agent.fwd.switch.process_tap(VNI, [ping_out(1), arp_for_b(), ping_out(2)])
    out = vxtap(capsys, agent, "show")
    assert out.count("Packet ") == 2
    assert "fdb lookup: hit 02:00:00:00:02:02 -> VTEP 192.168.100.2:4789" in out
    assert "answered locally: 10.244.2.2 is-at 02:00:00:00:02:02" in out
    recs = json.loads(vxtap(capsys, agent, "show", "--json", "--max", "1"))
    assert [r["verdict"] for r in recs] == ["arp_reply"]
    vxtap(capsys, agent, "clear")
    assert json.loads(vxtap(capsys, agent, "show", "--json")) == []
    st = json.loads(vxtap(capsys, agent, "status", "--json"))
    assert st["decision"] is None and st["records"] == 0 and not st["fastpath"]["active"]


def test_cli_pcap_start_stop_at_runtime(agent: Any, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    observe.attach(agent, {})
    d = tmp_path / "cap"
    out = vxtap(capsys, agent, "pcap", "start", str(d), "--points", "ul_out,tap_in",
                "--vni", str(VNI))
    assert "capture: running" in out
    assert re.search(rf"ul_out +0 packets  {d}/ul_out.pcap", out), out
    assert "fast path: armed ul_out unlimited, tap_in unlimited; filter vni 42;" in out
    with agent.observe_handle.tracer.exclusive():
        agent.fwd.switch.process_tap(VNI, [ping_out(1), ping_out(2)])
    out = vxtap(capsys, agent, "status")
    assert "filter vni 42" in out
    out = vxtap(capsys, agent, "pcap", "stop")
    assert "last capture: ended: stopped" in out or "capture: ended: stopped" in out
    assert re.search(r"ul_out +2 packets", out) and re.search(r"tap_in +2 packets", out), out
    assert tshark(str(d / "ul_out.pcap"), "vxlan.vni") == [["42"], ["42"]]


def test_start_flags(agent: Any, tmp_path: Path) -> None:
    p = argparse.ArgumentParser()
    observe.add_agent_flags(p.add_argument_group("observability"))
    args = p.parse_args(["--pcap", str(tmp_path / "boot"), "--pcap-points", "tap_in",
                         "--pcap-count", "1", "--trace", "5"])
    opts = observe.opts_from_args(args)
    assert opts == {"pcap": {"dir": str(tmp_path / "boot"), "points": ["tap_in"], "count": 1,
                             "duration": None, "vni": None, "mac": None, "ip": None,
                             "snaplen": 65535},
                    "trace": {"count": 5}}
    assert observe.opts_from_args(p.parse_args([])) == {}
    h = observe.attach(agent, opts)
    assert observe.attach(agent, {}) is h                     # one handle per agent
    with h.tracer.exclusive():
        agent.fwd.switch.process_tap(VNI, [ping_out(1), ping_out(2)])
    h.tracer.poll()
    st = ctlsock.call(agent.ctl.path, {"op": "trace_status"})
    assert st["last_pcap"]["written"] == {"tap_in": 1}
    assert st["last_pcap"]["stopped"] == "count reached"
    assert st["decision"]["got"] == 2


@pytest.mark.parametrize("bad", [["--pcap-points", "eth0"], ["--pcap-count", "0"],
                                 ["--trace", "x"]])
def test_bad_start_flags(bad: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    p = argparse.ArgumentParser()
    observe.add_agent_flags(p)
    with pytest.raises(SystemExit):
        p.parse_args(bad)
    assert "error:" in capsys.readouterr().err


def test_op_errors_are_precise(agent: Any, tmp_path: Path) -> None:
    observe.attach(agent, {})
    path = agent.ctl.path
    cases = [({"op": "trace_add", "count": 3, "colour": "red"},
              "unknown argument(s) colour; known: count, vni, mac, ip"),
             ({"op": "trace_add"},
              "Tracer.add() missing 1 required positional argument: 'count'"),
             ({"op": "trace_pcap_stop"}, "no capture running"),
             ({"op": "trace_pcap_start", "dir": str(tmp_path), "points": ["tap_in", "x"]},
              "unknown capture point 'x'; known: tap_in, ul_out, ul_in, tap_out")]
    for req, msg in cases:
        with pytest.raises(ctlsock.ControlError) as e:
            ctlsock.call(path, req)
        assert str(e.value) == msg
    with pytest.raises(SystemExit) as se:
        cli.main(["trace", "pcap", "stop", "--sock", path])
    assert str(se.value) == "vxtap: no capture running"


def test_status_names_the_count_that_applies(agent: Any, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """issue 12 item 5: two sessions with different filters arm the fast path without a count
    (-1); the status must show each session's own limit, not "unlimited"."""
    observe.attach(agent, {})
    vxtap(capsys, agent, "pcap", "start", str(tmp_path / "c"), "--points", "tap_in",
          "--count", "5", "--ip", "10.244.2.2")
    out = vxtap(capsys, agent, "add", "3", "--mac", "02:00:00:00:02:02")
    st = json.loads(vxtap(capsys, agent, "status", "--json"))
    assert st["armed"]["points"]["tap_in"] == -1, st["armed"]    # the case of the issue
    head = out.splitlines()[0]
    assert "unlimited" not in head, head
    assert "tap_in (capture 5 left, decision trace 3 left)" in head, head
    assert "ul_out (decision trace 3 left)" in head, head
    with agent.observe_handle.tracer.exclusive():
        agent.fwd.switch.process_tap(VNI, [ping_out(1), ping_out(2)])
    agent.observe_handle.tracer.poll()
    head = vxtap(capsys, agent, "status").splitlines()[0]
    assert "tap_in (capture 3 left, decision trace 1 left)" in head, head
    vxtap(capsys, agent, "pcap", "stop")
    vxtap(capsys, agent, "clear")
