"""qmp-server started the way launchers start QEMU (issue 13, the command line).

QEMU's Python launcher, QEMUMachine, first runs ``BINARY -M help``; it then creates a
``socket.socketpair()``, makes one end inheritable and names it on the command line as
``-chardev socket,id=mon,fd=N -mon chardev=mon,mode=control`` (after ``-display none -vga
none``), closes that end in the parent once the process runs and hands the other end to
qemu.qmp's legacy ``QEMUMonitorProtocol`` (a socket, not server mode), whose ``connect()``
waits for the greeting and negotiates.  ``Launched`` below does exactly that.  libvirt hands
over an already listening socket (``fd=N,server=on``); Proxmox and libvirt's probe use
``-daemonize -pidfile``.  The error texts are QEMU 7.2's and 10.0's, recorded live
(tools/record_help_texts.py records the help texts).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp.legacy import QEMUMonitorProtocol
from server_process import free_port

QMP_SERVER = [sys.executable, "-m", "qmp_server"]
DATA = Path(__file__).resolve().parents[2] / "qmp_server" / "data" / "help"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*QMP_SERVER, *args], capture_output=True, text=True, timeout=60)


def machine_types(help_text: str) -> list[str]:
    """What a launcher reads from ``-M help``: the first column after the heading."""
    lines = help_text.splitlines()
    assert lines[0] == "Supported machines are:"
    return [line.split()[0] for line in lines[1:] if line.strip()]


class Launched:
    """One qmp-server started as QEMUMachine starts QEMU (socketpair monitor)."""

    def __init__(self, log: Path, *args: str) -> None:
        ours, theirs = socket.socketpair()
        fd = ours.fileno()
        os.set_inheritable(fd, True)
        argv = [
            *QMP_SERVER, "-display", "none", "-vga", "none",
            "-chardev", f"socket,id=mon,fd={fd}", "-mon", "chardev=mon,mode=control",
            "-machine", "microvm", "-nodefaults", *args,
        ]  # fmt: skip
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                pass_fds=[fd],
            )  # fmt: skip
        ours.close()
        self.quit_issued = False
        self.qmp = QEMUMonitorProtocol(theirs, nickname=log.stem)
        try:
            self.greeting = self.qmp.connect()
        except BaseException:
            self.kill()
            raise

    def cmd(self, name: str, **args: Any) -> Any:
        reply = self.qmp.cmd_raw(name, args or None)  # what QEMUMachine.qmp() sends
        assert "return" in reply, (name, reply)
        return reply["return"]

    def wait_migration(self, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            info: dict[str, Any] = self.cmd("query-migrate")
            if info.get("status") in ("completed", "failed", "cancelled"):
                return info
            assert time.monotonic() < deadline, info
            time.sleep(0.05)

    def quit(self) -> int:
        self.cmd("quit")
        self.quit_issued = True
        return self.close()

    def close(self) -> int:
        try:
            self.qmp.close()
        except EOFError:  # QEMUMachine too: expected once quit was issued
            if not self.quit_issued:
                raise
        try:
            return self.proc.wait(10)
        finally:
            self.kill()

    def kill(self) -> None:
        """What a failed test leaves is killed (a no-op once the process has exited)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def test_m_help_prints_the_emulated_qemus_machine_list() -> None:
    for compat, folder in (("7.2", "qemu-7.2"), ("10.0", "qemu-10.0"), ("8.1", "qemu-7.2")):
        recorded = (DATA / folder / "machine.txt").read_text()
        forms = (["-M", "help"], ["-machine", "help"], ["-M", "?"], ["-M", "help", "-M", "none"],
                 ["-M", "accel=tcg,help"])
        for args in forms:
            result = run("--compat", compat, *args)
            assert (result.returncode, result.stdout, result.stderr) == (0, recorded, "")
    types = machine_types(run("-M", "help").stdout)
    assert {"microvm", "pc", "q35", "none"} <= set(types)
    # -M help is acted on as it is read, as in QEMU: it wins over errors found later
    assert run("-M", "help", "-chardev", "socket,id=m,fd=99").returncode == 0
    assert run("-M", "help", "-version").stdout == recorded
    # with a type already known QEMU lists that machine's properties: not recorded here
    refused = run("-M", "none", "-M", "help")
    assert (refused.returncode, refused.stderr) == (
        1, "qmp-server: -M help: machine property help is not available\n",
    )  # fmt: skip
    cpus = run("--compat", "10.0", "-cpu", "help")
    assert cpus.stdout == (DATA / "qemu-10.0" / "cpu.txt").read_text()
    for form in ("help", "?"):
        accels = run("--compat", "7.2", "-accel", form)
        assert accels.stdout == (DATA / "qemu-7.2" / "accel.txt").read_text()


def test_version_names_the_emulated_version() -> None:
    for compat, version in (("7.2", "7.2.0"), ("10.0", "10.0.0"), (None, "8.0.50")):
        result = run("-version", *(["--compat", compat] if compat else []))
        first, second = result.stdout.splitlines()
        assert result.returncode == 0
        assert first.startswith(f"QEMU emulator version {version} (qmp-server ")
        assert second.startswith("Copyright (c) 2003-")
    assert run("--version").stdout.startswith("qmp-server ")


def test_started_and_quit_as_qemumachine_does(tmp_path: Path) -> None:
    assert "microvm" in machine_types(run("-M", "help").stdout)  # QEMUMachine's first step
    vm = Launched(tmp_path / "vm.log")
    try:
        assert vm.greeting is not None and vm.greeting["QMP"]["capabilities"] == ["oob"]
        assert vm.cmd("query-status")["status"] == "running"
        assert vm.quit() == 0
    finally:
        vm.kill()


@pytest.mark.parametrize("transport", ["tcp", "unix", "exec"])
def test_migrate_between_two_qemumachine_style_instances(tmp_path: Path, transport: str) -> None:
    source = Launched(tmp_path / "source.log", "-m", "64M")
    try:
        dest = Launched(tmp_path / "dest.log", "-m", "64M", "-incoming", "defer")
    except BaseException:
        source.kill()
        raise
    try:
        assert dest.cmd("query-status")["status"] == "inmigrate"
        if transport == "exec":
            image = tmp_path / "stream"
            source.cmd("migrate", uri=f"exec:cat > {image}")
            assert source.wait_migration()["status"] == "completed"
            dest.cmd("migrate-incoming", uri=f"exec:cat {image}")
        else:
            uri = (
                f"tcp:127.0.0.1:{free_port()}" if transport == "tcp"
                else f"unix:{tmp_path / 'migrate.sock'}"
            )  # fmt: skip
            dest.cmd("migrate-incoming", uri=uri)
            source.cmd("migrate", uri=uri)
            assert source.wait_migration()["status"] == "completed"
        assert dest.wait_migration()["status"] == "completed"
        assert dest.cmd("query-status")["status"] == "running"
        assert source.cmd("query-status")["status"] == "postmigrate"
        assert dest.quit() == 0
        assert source.quit() == 0
    finally:
        source.kill()
        dest.kill()


def test_listening_fd_with_server_on_as_libvirt_passes_it(tmp_path: Path) -> None:
    path = str(tmp_path / "charmonitor.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(1)
    fd = listener.fileno()
    spec = f"socket,id=charmonitor,fd={fd},server=on,wait=off"
    proc = subprocess.Popen(
        [*QMP_SERVER, "-chardev", spec, "-mon", "chardev=charmonitor,mode=control"],
        stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, pass_fds=[fd],
    )  # fmt: skip
    listener.close()
    try:
        with QEMUMonitorProtocol(path) as qmp:
            assert qmp.connect() is not None
            assert qmp.cmd("query-status")["status"] == "running"
        qmp = QEMUMonitorProtocol(path)  # the next client is accepted too
        qmp.connect()
        assert qmp.cmd("quit") == {}
        with contextlib.suppress(EOFError):  # the server may hang up first, as QEMU does
            qmp.close()
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        assert proc.stderr is not None
        proc.stderr.close()


def test_bad_fd_fails_with_qemus_text() -> None:
    # QEMU 7.2 and 10.0 print the same texts and exit 1
    cases = {
        "socket,id=mon,fd=99": "File descriptor '99' is not a socket",
        "socket,id=mon,fd=99,server=on,wait=off": "File descriptor '99' is not a socket",
        "socket,id=mon,fd=abc": "Unable to parse FD number abc",
        "socket,id=mon,fd=0": "File descriptor '0' is not a socket",
    }
    for spec, text in cases.items():
        result = subprocess.run(
            [*QMP_SERVER, "-chardev", spec, "-mon", "chardev=mon,mode=control"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert (result.returncode, result.stderr) == (1, f"qmp-server: -chardev {spec}: {text}\n")
    # a connected socket cannot be listened on
    ours, theirs = socket.socketpair()
    spec = f"socket,id=mon,fd={ours.fileno()},server=on,wait=off"
    result = subprocess.run(
        [*QMP_SERVER, "-chardev", spec, "-mon", "chardev=mon,mode=control"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
        pass_fds=[ours.fileno()],
    )  # fmt: skip
    ours.close()
    theirs.close()
    expected = f"qmp-server: -chardev {spec}: Failed to listen on fd socket: Invalid argument\n"
    assert (result.returncode, result.stderr) == (1, expected)


def test_daemonize_with_pidfile(tmp_path: Path) -> None:
    pidfile, monitor = tmp_path / "vm.pid", tmp_path / "vm.sock"
    args = ["-daemonize", "-pidfile", str(pidfile), "-nographic", "-S",
            "-qmp", f"unix:{monitor},server=on,wait=off"]  # fmt: skip
    result = run(*args)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    pid = int(pidfile.read_text())
    try:
        assert pidfile.read_text() == f"{pid}\n"
        os.kill(pid, 0)  # alive
        assert monitor.exists()  # the parent returned only once the monitor listened
        with QEMUMonitorProtocol(str(monitor)) as qmp:
            qmp.connect()
            assert qmp.cmd("query-status")["status"] == "prelaunch"
        again = run(*args[:3], "-qmp", f"unix:{tmp_path / 'other.sock'},server=on,wait=off")
        assert (again.returncode, again.stderr) == (
            1, "qmp-server: cannot create PID file: Cannot lock pid file: "
            "Resource temporarily unavailable\n",
        )  # fmt: skip
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while pidfile.exists() and time.monotonic() < deadline:  # removed at exit, as QEMU does
        time.sleep(0.05)
    assert not pidfile.exists() and not monitor.exists()


def test_daemonize_and_pidfile_refusals() -> None:
    cases = {
        ("-pidfile", "/nonexistent/vm.pid"):
            "cannot create PID file: Could not create '/nonexistent/vm.pid': "
            "No such file or directory",
        ("-daemonize", "-nographic"): "-nographic cannot be used with -daemonize",
        ("-daemonize", "-qmp", "stdio"): "-qmp stdio: cannot use stdio with -daemonize",
        ("-daemonize", "-chardev", "stdio,id=s"):
            "-chardev stdio,id=s: cannot use stdio with -daemonize",
    }  # fmt: skip
    for args, text in cases.items():
        result = run(*args)
        assert (result.returncode, result.stderr) == (1, f"qmp-server: {text}\n"), args


def _live_qemus() -> list[Any]:
    targets = []
    if os.path.exists("/usr/bin/qemu-system-x86_64"):
        targets.append(pytest.param(["/usr/bin/qemu-system-x86_64"], "7.2", id="qemu-7.2"))
    if os.geteuid() == 0 and os.path.exists("/srv/trixie/usr/bin/qemu-system-x86_64"):
        chroot = ["chroot", "/srv/trixie", "qemu-system-x86_64"]
        targets.append(pytest.param(chroot, "10.0", id="qemu-10.0"))
    return targets or [pytest.param([], "", marks=pytest.mark.skip(reason="no live QEMU"))]


@pytest.mark.live_qemu
@pytest.mark.parametrize(("qemu", "compat"), _live_qemus())
def test_texts_and_refusals_match_live_qemu(qemu: list[str], compat: str) -> None:
    """The same command line, given to the real QEMU and to qmp-server: same stdout, same
    stderr after the program name, same status (``-version`` differs by design)."""
    ours, theirs = socket.socketpair()
    connected = f"socket,id=mon,fd={ours.fileno()},server=on,wait=off"
    cases = [
        ["-M", "help"], ["-machine", "?"], ["-cpu", "help"], ["-M", "accel=tcg,help"],
        ["-chardev", "socket,id=mon,fd=99", "-mon", "chardev=mon,mode=control"],
        ["-chardev", "socket,id=mon,fd=abc", "-mon", "chardev=mon,mode=control"],
        ["-chardev", connected, "-mon", "chardev=mon,mode=control"],
        ["-pidfile", "/nonexistent/vm.pid"],
        ["-daemonize", "-nographic"],
        ["-daemonize", "-qmp", "stdio"],
    ]  # fmt: skip
    try:
        for args in cases:
            live = subprocess.run(
                [*qemu, *args], capture_output=True, text=True, timeout=30,
                pass_fds=[ours.fileno()], stdin=subprocess.DEVNULL,
            )  # fmt: skip
            mine = subprocess.run(
                [*QMP_SERVER, "--compat", compat, *args], capture_output=True,
                text=True, timeout=30, pass_fds=[ours.fileno()], stdin=subprocess.DEVNULL,
            )  # fmt: skip
            # (without a display QEMU may first complain about its GUI modules)
            lines = live.stderr.splitlines(keepends=True)
            kept = "".join(line for line in lines if not line.startswith("qemu: module "))
            expected = kept.replace("qemu-system-x86_64: ", "qmp-server: ")
            assert (mine.returncode, mine.stdout, mine.stderr) == (
                live.returncode, live.stdout, expected,
            ), args  # fmt: skip
    finally:
        ours.close()
        theirs.close()
