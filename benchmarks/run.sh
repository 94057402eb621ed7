#!/usr/bin/env bash
# Benchmarks of vxtap, as root, with the repo's virtualenv.
#
#   bash benchmarks/run.sh [ARGS...]          system benchmark: kernel VXLAN vs vxtap in namespaces
#   bash benchmarks/run.sh --quick            the same, 3 s per measurement
#   bash benchmarks/run.sh micro [ARGS...]    micro benchmarks (pytest-benchmark, ns per packet)
#   bash benchmarks/run.sh chaos [--quick]    chaos harness: faults and bad input under traffic
#   bash benchmarks/run.sh scale [ARGS...]    control plane at scale: N agents, M endpoints, etcd
#
# Runs scripts/install.sh first (idempotent; rebuilds the fast path if a .pyx is newer than its
# module) unless VXTAP_SKIP_INSTALL=1. Output files go to benchmarks/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${VXTAP_SKIP_INSTALL:-0}" != 1 ]; then
    bash scripts/install.sh
fi
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
export PATH="$PWD/.venv/bin:$PATH"
if [ "${1:-}" = micro ]; then
    shift
    exec "$PY" -m benchmarks.micro "$@"
fi
if [ "${1:-}" = scale ]; then
    shift
    exec "$PY" -m benchmarks.scale "$@"
fi
if [ "$(id -u)" != 0 ]; then echo "run.sh: the system benchmark needs root" >&2; exit 1; fi
if [ "${1:-}" = chaos ]; then
    shift
    exec "$PY" -m benchmarks.chaos "$@"
fi
exec "$PY" -m benchmarks.system "$@"
