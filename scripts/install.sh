#!/usr/bin/env bash
# Install everything vxtap needs on Debian 12, as root: system packages, a virtualenv in .venv
# with the Python dependencies, and the Cython fast path built in place. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then echo "install.sh: run as root" >&2; exit 1; fi

APT_PKGS=(etcd-server etcd-client iperf3 tcpdump tshark iputils-ping sockperf openssl procps
          containernetworking-plugins iproute2 bridge-utils python3-venv python3-dev gcc)
missing=()
for p in "${APT_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "== apt: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv"
    "$PY" -m venv .venv
fi
stamp=.venv/.vxtap-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ]; then
    echo "== pip: installing vxtap and its dependencies"
    .venv/bin/pip install -q --upgrade pip "setuptools>=77" "Cython>=3.0,<4" wheel
    .venv/bin/pip install -q -e ".[test]"
    touch "$stamp"
fi
# (re)build the extension in place whenever a Cython source is newer than its module
need_build=0
for pyx in fastpath/*.pyx; do
    so=$(ls "${pyx%.pyx}".cpython-*.so 2>/dev/null | head -1 || true)
    if [ -z "$so" ]; then need_build=1; break; fi
    for src in "$pyx" fastpath/*.pxd fastpath/includes/*.pxd; do
        [ "$src" -nt "$so" ] && need_build=1
    done
done
if [ $need_build = 1 ]; then
    echo "== building the Cython fast path"
    .venv/bin/python setup.py -q build_ext --inplace >/dev/null
fi
echo "== ready: $(.venv/bin/python -c 'import fastpath.switch, sys; print(sys.version.split()[0])') with the fast path built"
