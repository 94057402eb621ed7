#!/usr/bin/env bash
# The test suite: installs what it needs, then runs unit tests (pure logic, both fast-path
# implementations), integration tests in network namespaces (real TAP devices, real kernel
# VXLAN peers) and control-plane tests against a real etcd that the tests start on loopback.
# Extra arguments go to pytest, e.g.  bash scripts/test.sh -k arp
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export PATH="$PWD/.venv/bin:$PATH"
echo "== ruff (pyflakes rules)"
.venv/bin/python -m ruff check fastpath dataplane control tests benchmarks demo
set +e
.venv/bin/python -m pytest -ra --durations=15 "$@"
rc=$?
set -e
if [ $rc = 5 ]; then echo "test.sh: pytest collected no tests" >&2; exit 1; fi
exit $rc
