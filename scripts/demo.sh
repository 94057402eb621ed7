#!/usr/bin/env bash
# The main job: installs what it needs, then runs the demo: a local etcd (started here, on
# loopback, stopped at the end), two emulated nodes in network namespaces with a vxtap agent
# each, pods joined through the CNI plugin, ping + 20 MB transfer across, the same on kernel
# VXLAN for comparison, and a full teardown. Extra arguments go to demo/demo.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/python demo/demo.py "$@"
