"""`demo/demo.py --keep` (issue 12 item 8): the demo's topology stays up, the commands it prints
work on it, and SIGTERM (Ctrl-C) tears everything down. Needs root, etcd, /usr/lib/cni."""
from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import topo
from tests.etcd_server import ETCD_BIN

pytestmark = [pytest.mark.integration, pytest.mark.etcd]
REPO = Path(__file__).resolve().parent.parent


def test_demo_keep_prints_working_commands_and_tears_down(tmp_path: Path) -> None:
    why = topo.missing_privileges()
    if why:
        pytest.skip(why)
    if not os.access(ETCD_BIN, os.X_OK) or not os.access("/usr/lib/cni/bridge", os.X_OK):
        pytest.skip("needs etcd and /usr/lib/cni/bridge")
    out_path, err_path = tmp_path / "out", tmp_path / "err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen([sys.executable, "demo/demo.py", "--keep", "--seconds", "1"],
                                cwd=REPO, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "kept running" not in err_path.read_text():
            assert proc.poll() is None, out_path.read_text()[-3000:] + err_path.read_text()
            assert time.monotonic() < deadline, "demo never reached the kept state"
            time.sleep(0.2)
        text = out_path.read_text()
        cmds = re.findall(r"^    \$ (.*)$", text[text.index("Kept running"):], re.M)
        by_start = {c.split(" --")[0]: c for c in cmds}
        for key in ("vxtap show fdb", "vxtap show stats", "vxtap trace add 20"):
            assert key in by_start, cmds
        env = dict(os.environ, PATH=f"{REPO}/.venv/bin:{os.environ.get('PATH', '')}")

        def sh(cmd: str) -> str:
            cp = subprocess.run(shlex.split(cmd), capture_output=True, text=True, env=env,
                                timeout=30, check=False)
            assert cp.returncode == 0, (cmd, cp.stdout, cp.stderr)
            return cp.stdout
        assert "dst 192.168.100.2" in sh(by_start["vxtap show fdb"])
        sh(by_start["vxtap trace add 20"])
        ping = next(c for c in cmds if " ping -c 2 " in c)
        assert "2 received" in sh(ping)
        show = next(c for c in cmds if c.startswith("vxtap trace show"))
        assert "verdict: encap" in sh(show)
        pid = int(re.search(r"kill (\d+)", text[text.index("To tear it all down"):]).group(1))
        assert pid == proc.pid
        os.kill(pid, signal.SIGTERM)
        assert proc.wait(60) == 0, out_path.read_text()[-2000:] + err_path.read_text()
        assert "everything the demo created is gone" in out_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
