"""``qmp-migrate`` between two real qmp-server processes (issue 6)."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from server_process import ServerProcess

from qmp_server.migrate_cli import parse_endpoint, progress_percent

LOAD_MS = 600
DEVICE = ["-device", f"vfio-sim,id=nic0,initial-bytes=16M,state-bytes=1M,load-ms={LOAD_MS}"]
Start = Callable[..., ServerProcess]


def migrate_cmd(src: ServerProcess, dst: ServerProcess, tmp_path: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "qmp_server.migrate_cli",
        "--source", src.socket, "--dest", dst.socket,
        "--uri", f"unix:{tmp_path}/mig.sock", *extra,
    ]  # fmt: skip


def run_json(cmd: list[str], timeout: float = 60) -> tuple[int, dict[str, Any], str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, json.loads(proc.stdout), proc.stderr


def pair(
    qmp_server: Start, src_args: tuple[str, ...] = (), dst_args: tuple[str, ...] = ()
) -> tuple[ServerProcess, ServerProcess]:
    src = qmp_server("-m", "64M", *DEVICE, *src_args)
    dst = qmp_server("-m", "64M", "-incoming", "defer", *DEVICE, *dst_args)
    return src, dst


def wait_for_status(socket: str, status: str, timeout: float = 20) -> None:
    from qemu.qmp.legacy import QEMUMonitorProtocol

    deadline = time.monotonic() + timeout
    with QEMUMonitorProtocol(socket) as qmp:
        qmp.connect()
        while qmp.cmd("query-migrate").get("status") != status:
            assert time.monotonic() < deadline, f"no {status} migration"
            time.sleep(0.05)


def test_without_ack_the_device_load_is_downtime(qmp_server: Start, tmp_path: Path) -> None:
    src, dst = pair(qmp_server)
    code, summary, stderr = run_json(migrate_cmd(src, dst, tmp_path, "--json"))
    assert code == 0, stderr
    assert summary["status"] == "completed"
    assert summary["exit-status"] == 0 and summary["error"] is None
    assert summary["switchover-ack"] is False
    assert summary["downtime"] >= LOAD_MS
    assert summary["digests-equal"] is True
    assert summary["statuses"][0] == "setup" and summary["statuses"][-1] == "completed"
    assert "pre-switchover" not in summary["statuses"]
    assert summary["source-runstate"] == "postmigrate"
    assert summary["dest-runstate"] == "running"
    assert summary["vfio-transferred"] >= 16 << 20
    assert summary["reset-errors"] == []


def test_with_ack_the_device_loads_before_switchover(qmp_server: Start, tmp_path: Path) -> None:
    src, dst = pair(qmp_server)
    code, summary, stderr = run_json(migrate_cmd(src, dst, tmp_path, "--switchover-ack", "--json"))
    assert code == 0, stderr
    assert summary["status"] == "completed"
    assert summary["ack-capability"] == {
        "source": "precopy-initial-data",
        "destination": "precopy-initial-data",
    }
    assert summary["downtime"] < LOAD_MS
    assert summary["digests-equal"] is True


def test_ack_under_its_released_name(qmp_server: Start, tmp_path: Path) -> None:
    src, dst = pair(qmp_server, ("--compat", "8.1"), ("--compat", "8.1"))
    code, summary, stderr = run_json(migrate_cmd(src, dst, tmp_path, "--switchover-ack", "--json"))
    assert code == 0, stderr
    assert summary["ack-capability"]["source"] == "switchover-ack"
    assert summary["downtime"] < LOAD_MS


def test_capabilities_are_reset_afterwards(qmp_server: Start, tmp_path: Path) -> None:
    from qemu.qmp.legacy import QEMUMonitorProtocol

    src, dst = pair(qmp_server)
    code, _, stderr = run_json(
        migrate_cmd(src, dst, tmp_path, "--switchover-ack", "--pause-before-switchover", "--json")
    )
    assert code == 0, stderr
    with QEMUMonitorProtocol(src.socket) as qmp:
        qmp.connect()
        caps = qmp.cmd("query-migrate-capabilities")
    on = [c["capability"] for c in caps if c["state"]]
    assert on == ["events"]  # libvirt leaves events on and resets everything else


def test_pause_before_switchover_is_continued(qmp_server: Start, tmp_path: Path) -> None:
    src, dst = pair(qmp_server)
    code, summary, stderr = run_json(
        migrate_cmd(src, dst, tmp_path, "--switchover-ack", "--pause-before-switchover", "--json")
    )
    assert code == 0, stderr
    statuses = summary["statuses"]
    assert statuses.index("pre-switchover") < statuses.index("device") < statuses.index("completed")
    assert "pre-switchover answered with migrate-continue" in stderr
    assert summary["digests-equal"] is True


def test_timeout_cancels_a_migration_that_cannot_converge(
    qmp_server: Start, tmp_path: Path
) -> None:
    src = qmp_server("-m", "256M", "--dirty-rate", "200M")
    dst = qmp_server("-m", "256M", "-incoming", "defer")
    started = time.monotonic()
    code, summary, stderr = run_json(
        migrate_cmd(src, dst, tmp_path, "--max-bandwidth", "8M", "--timeout", "2", "--json")
    )
    assert code == 3, stderr
    assert time.monotonic() - started < 20
    assert summary["status"] == "cancelled"
    assert summary["cancelled-because"] == "--timeout 2 s elapsed"
    assert summary["error"] == "operation aborted: job 'migration out' canceled by client"
    assert "error: operation aborted: job 'migration out' canceled by client" in stderr
    assert summary["source-runstate"] == "running"
    assert src.proc.poll() is None  # the source keeps running the guest


def test_ctrl_c_cancels(qmp_server: Start, tmp_path: Path) -> None:
    src = qmp_server("-m", "256M", "--dirty-rate", "200M")
    dst = qmp_server("-m", "256M", "-incoming", "defer")
    proc = subprocess.Popen(
        migrate_cmd(src, dst, tmp_path, "--max-bandwidth", "8M", "--json"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(1.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    summary = json.loads(out)
    assert summary["status"] == "cancelled"
    assert summary["source-runstate"] == "running"


def test_destination_without_the_ack_capability(qmp_server: Start, tmp_path: Path) -> None:
    src, dst = pair(qmp_server, dst_args=("--compat", "7.2"))
    proc = subprocess.run(
        migrate_cmd(src, dst, tmp_path, "--switchover-ack"),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: argument unsupported: Migration option 'switchover-ack' is not supported by "
        "destination QEMU binary (it reports neither 'precopy-initial-data' nor "
        "'switchover-ack')"
    )
    assert src.proc.poll() is None


def test_a_refused_command_is_shown_libvirts_way(qmp_server: Start, tmp_path: Path) -> None:
    src = qmp_server("-m", "64M")
    not_incoming = qmp_server("-m", "64M")  # started without -incoming
    proc = subprocess.run(
        migrate_cmd(src, not_incoming, tmp_path), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: internal error: unable to execute QEMU command 'migrate-incoming': "
        "'-incoming' was not specified on the command line"
    )


def test_capability_set_refused_during_a_migration(qmp_server: Start, tmp_path: Path) -> None:
    """A second qmp-migrate on a busy source: QEMU refuses migrate-set-capabilities.

    A QEMU socket monitor serves one client at a time, so the second driver uses a second
    monitor of the source, as a second management tool would.
    """
    src = qmp_server("-m", "256M", "--dirty-rate", "200M", monitors=2)
    second_monitor = src.extra_sockets[0]
    dst = qmp_server("-m", "256M", "-incoming", "defer")
    dst2 = qmp_server("-m", "256M", "-incoming", "defer")
    first = subprocess.Popen(
        migrate_cmd(src, dst, tmp_path, "--max-bandwidth", "8M", "--timeout", "4", "--json"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for_status(second_monitor, "active")
        second = subprocess.run(
            [sys.executable, "-m", "qmp_server.migrate_cli", "--source", second_monitor,
             "--dest", dst2.socket, "--uri", f"unix:{tmp_path}/mig2.sock", "--timeout", "10"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        first.communicate(timeout=30)
    assert second.returncode == 1
    assert second.stderr.strip().splitlines()[-1] == (
        "error: internal error: unable to execute QEMU command 'migrate-set-capabilities': "
        "There's a migration process in progress"
    )


def test_unreachable_monitor(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "qmp_server.migrate_cli", "--source", str(tmp_path / "no.sock"),
         "--dest", str(tmp_path / "no2.sock"), "--uri", "unix:/nonexistent"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"error: failed to connect to the source monitor '{tmp_path / 'no.sock'}': "
        "No such file or directory"
    )


def test_usage_error_is_status_2() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "qmp_server.migrate_cli", "--source", "x"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "usage: qmp-migrate" in proc.stderr


def test_plain_progress_lines_when_not_a_terminal(qmp_server: Start, tmp_path: Path) -> None:
    src, dst = pair(qmp_server)
    proc = subprocess.run(
        migrate_cmd(src, dst, tmp_path, "--switchover-ack"),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr
    assert "migration: setup\n" in proc.stderr
    assert "migration: completed\n" in proc.stderr
    assert "Migration: [100 %] completed" in proc.stderr
    assert proc.stdout.startswith("Migration completed\n")
    assert "guest digest: equal on source and destination" in proc.stdout


def test_progress_bar_on_a_terminal(qmp_server: Start, tmp_path: Path) -> None:
    src = qmp_server("-m", "256M", "--guest-fill", "random")
    dst = qmp_server("-m", "256M", "-incoming", "defer")
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        migrate_cmd(src, dst, tmp_path, "--max-bandwidth", "100M"),
        stdout=subprocess.PIPE, stderr=slave, text=True,
    )  # fmt: skip
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    out, _ = proc.communicate(timeout=30)
    screen = b"".join(chunks).decode()
    assert proc.returncode == 0, screen
    redraws = screen.count("\rMigration: [")
    assert redraws >= 3, screen
    assert "\rMigration: [100 %] [########################] completed" in screen
    assert any(f"\rMigration: [{p:3d} %]" in screen for p in range(1, 99)), screen
    assert out.startswith("Migration completed")


def test_parse_endpoint_and_percent() -> None:
    assert parse_endpoint("/run/q.sock") == "/run/q.sock"
    assert parse_endpoint("localhost:4444") == ("localhost", 4444)
    assert progress_percent({"status": "completed"}) == 100
    assert progress_percent({"status": "active", "ram": {"total": 100, "remaining": 58}}) == 42
    assert progress_percent({"status": "active", "ram": {"total": 100, "remaining": 0}}) == 99
    assert progress_percent({"status": "setup"}) == 0
    assert progress_percent({}) is None


def test_tcp_monitors_and_tcp_migration(qmp_server: Start) -> None:
    from server_process import free_port

    qport, dport, mport = free_port(), free_port(), free_port()
    qmp_server("-m", "64M", "-qmp", f"tcp:127.0.0.1:{qport},server=on,wait=off")
    qmp_server("-m", "64M", "-incoming", "defer",
                     "-qmp", f"tcp:127.0.0.1:{dport},server=on,wait=off")  # fmt: skip
    code, summary, stderr = run_json(
        [sys.executable, "-m", "qmp_server.migrate_cli",
         "--source", f"127.0.0.1:{qport}", "--dest", f"127.0.0.1:{dport}",
         "--uri", f"tcp:127.0.0.1:{mport}", "--json"]
    )  # fmt: skip
    assert code == 0, stderr
    assert summary["status"] == "completed"
    assert summary["digests-equal"] is True
