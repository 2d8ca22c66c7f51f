"""The README's two commands in a clean, container-like setting (issue 6).

A copy of the source tree (no .venv, no build products) in a temporary directory:

1. ``scripts/demo.sh`` creates ``.venv``, installs the project and runs the demo, which keeps
   host-c and host-d serving; 2. ``.venv/bin/qmp-shell run/host-d.sock`` talks to the guest's
   new home.  Then Ctrl-C ends the demo with status 0.

A second test installs the project the non-editable way (``pip install <tree>`` into a fresh
venv) and runs the demo with ``--exit``.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IGNORE = shutil.ignore_patterns(
    ".venv", ".git", "run", "__pycache__", "*.egg-info", ".mypy_cache", ".ruff_cache",
    ".pytest_cache", "build", "dist",
)  # fmt: skip
SMALL = ["--memory", "64M", "--initial-bytes", "16M", "--load-ms", "800"]


def clean_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "qmp-server"
    shutil.copytree(ROOT, tree, ignore=IGNORE, symlinks=True)
    return tree


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    path = [p for p in env.get("PATH", "").split(":") if not p.startswith(str(ROOT))]
    env["PATH"] = ":".join(path)
    return env


@pytest.mark.slow
def test_readme_commands_in_a_clean_tree(tmp_path: Path) -> None:
    tree = clean_tree(tmp_path)
    demo = subprocess.Popen(
        ["bash", "scripts/demo.sh", *SMALL], cwd=tree, env=clean_env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    assert demo.stdout is not None
    seen = b""
    try:
        deadline = time.monotonic() + 240
        while b"Ctrl-C stops them" not in seen:
            assert time.monotonic() < deadline, seen.decode()
            assert demo.poll() is None, seen.decode()
            ready, _, _ = select.select([demo.stdout], [], [], 1.0)
            if ready:
                seen += os.read(demo.stdout.fileno(), 65536)
        shell = subprocess.run(
            [".venv/bin/qmp-shell", "run/host-d.sock"], cwd=tree, env=clean_env(),
            input="query-status\n", capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert '"status": "running"' in shell.stdout, shell.stdout + shell.stderr
        os.killpg(demo.pid, signal.SIGINT)
        rest, _ = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
    out = (seen + rest).decode()
    assert demo.returncode == 0, out
    assert "guest digests equal" in out


@pytest.mark.slow
def test_non_editable_install_runs_the_demo(tmp_path: Path) -> None:
    tree = clean_tree(tmp_path)
    venv = tmp_path / "venv"
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True, env=clean_env(), timeout=120)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(tree)],
        check=True, env=clean_env(), timeout=240,
    )  # fmt: skip
    demo = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "qmp_server.demo", "--exit", "--dir", "run", *SMALL],
        cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "guest digests equal" in demo.stdout
