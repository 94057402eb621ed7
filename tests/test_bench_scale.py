"""A tiny bounded run of the scale harness (benchmarks/scale.py): a real etcd, a grpc-proxy,
3 agents (the real sync code) in two processes, 300 endpoints. Checks the harness's own
accounting, not performance: every probe reached every agent, one etcd write per change, no
lease expiry, everything stopped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import scale

pytestmark = pytest.mark.etcd


def test_scale_harness_smoke(tmp_path: Path) -> None:
    rc = scale.main(["--agents", "3", "--endpoints", "300", "--probes", "2", "--burst", "10",
                     "--idle", "0.5", "--agents-per-proxy", "2", "--procs", "2",
                     "--probe-timeout", "10", "--out", str(tmp_path), "--no-plot"])
    assert rc == 0
    (jpath,) = tmp_path.glob("scale-*.json")
    (row,) = json.loads(jpath.read_text())["rows"]
    assert "error" not in row, row
    assert row["agents"] == 3 and row["proxies"] == 2
    assert row["solo"]["fdb_entries"] == 300
    assert row["propagation"]["lost"] == 0 and row["propagation"]["all_agents_max_ms"] > 0
    assert row["writes_per_change"] == 1.0
    assert row["burst"]["applied"] == [30, 30]
    assert row["lease"]["expiries"] == 0
    assert row["lease"]["node_keys_alive"] == row["lease"]["expected"]
    assert row["idle"]["unary_requests_per_s"] == 0.0          # no polling
    for w in ("solo", "w0", "w1"):
        log = next(tmp_path.glob(f"scale-*-logs/{w}-3-300.log"), None)
        assert log is not None
    for p in row["proxies_stat"]:
        assert p["rss_mb"] > 0
    assert len(row["pids"]) == 5
    for pid in row["pids"]:                  # every worker process and proxy is gone
        assert not _alive(pid), pid


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
