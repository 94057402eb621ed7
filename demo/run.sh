#!/bin/sh
# vxtap demo: a local etcd, two emulated nodes in network namespaces with a vxtap agent each,
# pods joined through the CNI plugin, ping + 20 MB transfer + iperf3, then kernel VXLAN for
# comparison; everything is torn down at the end (also on Ctrl-C or failure).
# Usage: sudo demo/run.sh [--mtu N] [--seconds S] [--only vxtap|kernel] [--static] [--json FILE]
# (scripts/demo.sh installs everything first and runs this with .venv on PATH.)
set -e
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" demo/demo.py "$@"
