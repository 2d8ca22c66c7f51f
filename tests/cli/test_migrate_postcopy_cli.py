"""``qmp-migrate --postcopy`` between two real qmp-server processes (issue 14, item 4).

The pauses are made the way an operator or a broken network would: ``migrate-pause`` sent
through a second monitor of the source or the destination while qmp-migrate holds the first.
"""

from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp.legacy import QEMUMonitorProtocol
from server_process import ServerProcess

from qmp_server.migrate_postcopy import PostcopySwitch, blocktime_text, postcopy_detail

Start = Callable[..., ServerProcess]
FAILED_IN_POSTCOPY = "error: operation failed: job 'migration out' failed in post-copy phase"


def migrate_cmd(src: ServerProcess, dst: ServerProcess, tmp_path: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "qmp_server.migrate_cli",
        "--source", src.socket, "--dest", dst.socket,
        "--uri", f"unix:{tmp_path}/mig.sock", "--json", *extra,
    ]  # fmt: skip


def run_json(cmd: list[str], timeout: float = 90) -> tuple[int, dict[str, Any], str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, json.loads(proc.stdout), proc.stderr


class Monitor:
    """A second monitor of a server, for what an operator does beside qmp-migrate."""

    def __init__(self, socket: str) -> None:
        self.qmp = QEMUMonitorProtocol(socket)
        self.qmp.connect()

    def cmd(self, name: str, args: dict[str, Any] | None = None) -> Any:
        return self.qmp.cmd(name, **(args or {}))

    def wait_status(self, *wanted: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while (status := self.cmd("query-migrate").get("status")) not in wanted:
            assert time.monotonic() < deadline, f"still {status}, not {wanted}"
            time.sleep(0.02)
        return str(status)

    def close(self) -> None:
        self.qmp.close()


def read_until(proc: subprocess.Popen[str], text: str, timeout: float = 30) -> str:
    """qmp-migrate's stderr up to the line holding ``text``."""
    assert proc.stderr is not None
    seen = ""
    deadline = time.monotonic() + timeout
    while text not in seen:
        left = deadline - time.monotonic()
        assert left > 0 and select.select([proc.stderr], [], [], left)[0], seen
        line = proc.stderr.readline()
        assert line, seen
        seen += line
    return seen


def caps_on(socket: str) -> list[str]:
    with QEMUMonitorProtocol(socket) as qmp:
        qmp.connect()
        return [c["capability"] for c in qmp.cmd("query-migrate-capabilities") if c["state"]]


@pytest.mark.parametrize("compat", ["7.2", "10.0"])
def test_postcopy_at_once_with_blocktime(qmp_server: Start, tmp_path: Path, compat: str) -> None:
    src = qmp_server("--compat", compat, "-m", "64M", "--guest-fill", "random")
    dst = qmp_server("--compat", compat, "-m", "64M", "-incoming", "defer")
    code, summary, stderr = run_json(migrate_cmd(
        src, dst, tmp_path, "--postcopy", "--postcopy-blocktime",
        "--max-bandwidth", "1M", "--max-postcopy-bandwidth", "32M",
    ))  # fmt: skip
    assert code == 0, stderr
    assert summary["status"] == "completed"
    assert summary["postcopy-requested"] == "precopy started"
    assert summary["postcopy-active"] is True
    statuses = summary["statuses"]
    assert statuses.index("active") < statuses.index("postcopy-active")
    assert statuses[-1] == "completed"
    assert ("device" in statuses) == (compat == "10.0")  # 10.0 shows it before postcopy-active
    assert summary["dest-statuses"][-2:] == ["postcopy-active", "completed"]
    assert summary["postcopy-bytes"] > 32 << 20  # most of the random RAM came after the switch
    assert isinstance(summary["postcopy-requests"], int)
    assert isinstance(summary["postcopy-blocktime"], int)
    assert len(summary["postcopy-vcpu-blocktime"]) == 1
    assert summary["dest-query-migrate"]["status"] == "completed"
    assert summary["digests-equal"] is True  # the destination guest writes nothing here
    assert summary["dest-runstate"] == "running"
    assert summary["source-runstate"] == "postmigrate"
    assert "migrate-start-postcopy" in stderr and "postcopy sent" in stderr
    assert caps_on(src.socket) == ["events"] == caps_on(dst.socket)


def test_after_precopy_switches_when_the_first_pass_did_not_converge(
    qmp_server: Start, tmp_path: Path
) -> None:
    src = qmp_server("-m", "64M", "--guest-fill", "random", "--dirty-rate", "8M")
    dst = qmp_server("-m", "64M", "-incoming", "defer", "--dirty-rate", "1M")
    code, summary, stderr = run_json(migrate_cmd(
        src, dst, tmp_path, "--postcopy", "--postcopy-after-precopy", "--postcopy-blocktime",
        "--max-bandwidth", "32M", "--max-postcopy-bandwidth", "32M",
    ))  # fmt: skip
    assert code == 0, stderr
    assert summary["postcopy-requested"] == "pass 2: the first full pass did not converge"
    assert summary["postcopy-active"] is True
    # the destination guest ran into pages it did not have yet and asked for them
    assert summary["postcopy-requests"] > 0
    assert summary["postcopy-blocktime"] >= 0


def test_after_precopy_a_converging_migration_stays_precopy(
    qmp_server: Start, tmp_path: Path
) -> None:
    src = qmp_server("-m", "64M")
    dst = qmp_server("-m", "64M", "-incoming", "defer")
    code, summary, stderr = run_json(
        migrate_cmd(src, dst, tmp_path, "--postcopy", "--postcopy-after-precopy")
    )
    assert code == 0, stderr
    assert summary["postcopy-active"] is False
    assert "postcopy-active" not in summary["statuses"]
    assert summary["dest-query-migrate"] == {}
    assert summary["digests-equal"] is True


def test_timeout_postcopy_switches_instead_of_cancelling(qmp_server: Start, tmp_path: Path) -> None:
    src = qmp_server("-m", "128M", "--guest-fill", "random", "--dirty-rate", "64M")
    dst = qmp_server("-m", "128M", "-incoming", "defer")
    code, summary, stderr = run_json(migrate_cmd(
        src, dst, tmp_path, "--postcopy", "--timeout", "1", "--timeout-postcopy",
        "--max-bandwidth", "16M", "--max-postcopy-bandwidth", "256M",
    ))  # fmt: skip
    assert code == 0, stderr
    assert summary["postcopy-requested"] == "--timeout 1 s elapsed"
    assert summary["cancelled-because"] is None
    assert summary["status"] == "completed"


@pytest.mark.parametrize(("compat", "side"), [
    ("7.2", "source"), ("10.0", "source"), ("8.1", "destination"),
])  # fmt: skip
def test_recover_after_a_pause(qmp_server: Start, tmp_path: Path, compat: str, side: str) -> None:
    src = qmp_server("--compat", compat, "-m", "64M", "--guest-fill", "random", monitors=2)
    dst = qmp_server("--compat", compat, "-m", "64M", "-incoming", "defer", monitors=2)
    proc = subprocess.Popen(
        migrate_cmd(src, dst, tmp_path, "--postcopy", "--max-bandwidth", "1M",
                    "--max-postcopy-bandwidth", "1M", "--recover", f"unix:{tmp_path}/rec.sock"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    src2, dst2 = Monitor(src.extra_sockets[0]), Monitor(dst.extra_sockets[0])
    try:
        src2.wait_status("postcopy-active")
        (src2 if side == "source" else dst2).cmd("migrate-pause")
        before = read_until(proc, "migrate-recover and migrate resume sent")
        src2.wait_status("postcopy-active")  # recovered: now let it finish quickly
        src2.cmd("migrate-set-parameters", {"max-postcopy-bandwidth": 256 << 20})
        out, err = proc.communicate(timeout=60)
        err = before + err
    finally:
        src2.close()
        dst2.close()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["recoveries"] == 1
    statuses = summary["statuses"]
    paused = statuses.index("postcopy-paused")
    # 10.0's source passes through postcopy-recover-setup (live 10.0), 7.2's does not
    setup = ["postcopy-recover-setup"] if compat == "10.0" else []
    assert statuses[paused:] == ["postcopy-paused", *setup, "postcopy-recover",
                                 "postcopy-active", "completed"]  # fmt: skip
    assert "postcopy-recover" in summary["dest-statuses"]
    assert summary["digests-equal"] is True  # nothing lost across the pause
    assert "postcopy paused: recovering through unix:" in err


def test_a_pause_without_recover_leaves_both_sides_paused(
    qmp_server: Start, tmp_path: Path
) -> None:
    src = qmp_server("-m", "64M", "--guest-fill", "random", monitors=2)
    dst = qmp_server("-m", "64M", "-incoming", "defer")
    proc = subprocess.Popen(
        migrate_cmd(src, dst, tmp_path, "--postcopy", "--max-bandwidth", "1M",
                    "--max-postcopy-bandwidth", "1M"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    src2 = Monitor(src.extra_sockets[0])
    try:
        src2.wait_status("postcopy-active")
        src2.cmd("migrate-pause")
        out, err = proc.communicate(timeout=60)
        assert src2.cmd("query-migrate")["status"] == "postcopy-paused"
    finally:
        src2.close()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1
    assert err.strip().splitlines()[-1] == FAILED_IN_POSTCOPY
    summary = json.loads(out)
    assert summary["status"] == "postcopy-paused"
    assert summary["dest-runstate"] is None  # a paused destination is not asked (QEMU may hang)
    assert summary["reset-errors"] == []
    assert "postcopy-ram" in caps_on(src.socket)  # left for a manual recovery


@pytest.mark.parametrize(
    "flag", ["--postcopy-after-precopy", "--recover=unix:/x", "--timeout-postcopy"]
)
def test_postcopy_modifiers_require_postcopy(flag: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "qmp_server.migrate_cli", "--source", "a", "--dest", "b",
         "--uri", "unix:/x", flag],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 2
    assert f"{flag.split('=')[0]} requires --postcopy" in proc.stderr


def test_switch_rules() -> None:
    at_once = PostcopySwitch(after_precopy=False)
    assert at_once.due("setup", 0) is None
    assert at_once.due("active", 1) == "precopy started"
    at_once.reason = "precopy started"
    assert at_once.due("active", 1) is None  # once
    after = PostcopySwitch(after_precopy=True)
    assert after.due("active", 1) is None
    assert after.due("completed", 2) is None
    assert after.due("active", 3) == "pass 3: the first full pass did not converge"
    assert PostcopySwitch(after_precopy=False, on_timeout=True).due("active", 5) is None


def test_progress_texts() -> None:
    assert postcopy_detail({"status": "active", "ram": {"postcopy-bytes": 0}}) == ""
    paused = {"status": "postcopy-paused", "ram": {"postcopy-bytes": 0, "postcopy-requests": 1}}
    assert postcopy_detail(paused) == ", postcopy sent 0 B, 1 page request"
    assert blocktime_text({"status": "completed"}) is None
    assert blocktime_text({"postcopy-blocktime": 5, "postcopy-vcpu-blocktime": []}) == "5 ms"


def test_ctrl_c_in_postcopy_leaves_the_migration_running(qmp_server: Start, tmp_path: Path) -> None:
    src = qmp_server("-m", "64M", "--guest-fill", "random", monitors=2)
    dst = qmp_server("-m", "64M", "-incoming", "defer")
    proc = subprocess.Popen(
        migrate_cmd(src, dst, tmp_path, "--postcopy", "--max-bandwidth", "1M",
                    "--max-postcopy-bandwidth", "1M"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    src2 = Monitor(src.extra_sockets[0])
    try:
        src2.wait_status("postcopy-active")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert src2.cmd("query-migrate")["status"] == "postcopy-active"  # not cancelled
    finally:
        src2.close()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "cannot abort migration in post-copy mode" in err.strip().splitlines()[-1]
    summary = json.loads(out)
    assert summary["left-running"] is True and summary["status"] == "postcopy-active"
