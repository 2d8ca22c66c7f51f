"""The demo (``python -m qmp_server.demo``, the README's first command) in the test suite."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def test_demo_shows_both_downtimes(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "qmp_server.demo", "--exit", "--dir", str(tmp_path / "run"),
         "--memory", "64M", "--initial-bytes", "16M", "--load-ms", "800", "--no-http"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "1) host-a → host-b, switchover ACK OFF" in out
    assert "2) host-b → host-c, switchover ACK ON" in out
    assert "qmp-migrate --source" in out and "--switchover-ack" in out
    downtime = re.search(r"^  downtime\s+(\d+) ms\s+(\d+) ms$", out, re.M)
    assert downtime, out
    off, on = int(downtime[1]), int(downtime[2])
    assert off >= 800 > on
    assert re.search(r"^  guest digests equal\s+yes\s+yes$", out, re.M), out
    assert "less downtime" in out
    # hop 3: a guest that outruns the link switches to postcopy after the first pass
    assert "3) host-c → host-d, postcopy" in out
    assert "--postcopy --postcopy-after-precopy --postcopy-blocktime" in out
    assert "switched to postcopy (pass 2: the first full pass did not converge)" in out
    assert re.search(r"page requests from host-d's guest$", out, re.M), out
    assert re.search(r"^   host-d's vCPUs waited for pages: \d+ ms", out, re.M), out


def test_demo_without_the_postcopy_hop(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "qmp_server.demo", "--exit", "--dir", str(tmp_path / "run"),
         "--memory", "64M", "--initial-bytes", "16M", "--load-ms", "300", "--no-http",
         "--no-postcopy"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2) host-b → host-c" in proc.stdout
    assert "host-d" not in proc.stdout
