#!/bin/sh
# vxtap demo: two emulated nodes in network namespaces, vxtap agent vs kernel VXLAN.
# Usage: sudo demo/run.sh [--mtu N] [--seconds S] [--only vxtap|kernel] [--json FILE]
set -e
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" demo/demo.py "$@"
