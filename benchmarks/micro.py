"""Run the micro benchmarks with the options used for RESULTS.md.

    python -m benchmarks.micro [--quick] [extra pytest args...]

Writes the pytest-benchmark JSON (with ns_per_packet_* in each benchmark's extra_info) to
benchmarks/results/micro-<UTC time>.json and prints the ns-per-packet table at the end.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    quick = "--quick" in args
    if quick:
        args.remove("--quick")
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    opts = [str(HERE / "bench_micro.py"), "-q", "-p", "no:cacheprovider",
            "--benchmark-columns=min,median,rounds", "--benchmark-sort=name",
            f"--benchmark-json={out / f'micro-{stamp}.json'}",
            "--benchmark-max-time=" + ("0.1" if quick else "1.0"),
            "--benchmark-min-rounds=" + ("5" if quick else "20")]
    return int(pytest.main([*opts, *args]))


if __name__ == "__main__":
    sys.exit(main())
