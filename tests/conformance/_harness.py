"""Shared machinery for the QEMU conformance recorder and the replay test.

The same code talks to a real ``qemu-system-x86_64`` (when recording, or when
replaying with ``QMP_SERVER_REPLAY_TARGET=qemu``) and to qmp-server (when
replaying normally), so that a difference in a replay can only come from the
server's answers, never from the client side.

Scenario files live in ``tests/conformance/scenarios/<group>.json``; fixture
files (written only by ``tools/record_conformance.py``) live in
``tests/conformance/fixtures/qemu-7.2/<group>.json``.  The formats are
described in ``docs/conformance.md``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
SCENARIO_DIR = HERE / "scenarios"
FIXTURE_DIR = HERE / "fixtures" / "qemu-7.2"
#: Fixtures recorded from a live QEMU 10.0 (in a Debian trixie chroot).
FIXTURE_DIR_100 = HERE / "fixtures" / "qemu-10.0"

DEFAULT_QEMU = "qemu-system-x86_64"
#: Silence that ends reply collection while recording (seconds).
DEFAULT_SETTLE = 0.3
#: How long a replay waits for each recorded line (seconds).
LINE_TIMEOUT = 5.0
#: How long a startup scenario may run, once its monitor socket exists, before it counts as
#: "started".
STARTUP_WAIT = 2.0
#: How long a startup scenario may take to create its monitor socket or exit.
STARTUP_LIMIT = 15.0
#: Normalised program prefix in recorded stderr.
PROG = "PROG: "
#: Prefix qmp-server puts on its own diagnostics.
QMP_SERVER_PROG = "qmp-server: "

GREETING_STEP: dict[str, Any] = {"connect": True}


# --------------------------------------------------------------------------
# Scenario / fixture loading
# --------------------------------------------------------------------------


def scenario_groups(version: str | None = None) -> list[str]:
    """Every scenario group, or those recorded from QEMU ``version`` ("7.2", "10.0").

    A group file that is an object may name the versions it is for:
    ``{"qemu": ["10.0"], "scenarios": [...]}`` (e.g. arguments 7.2 does not have).
    """
    names = sorted(p.stem for p in SCENARIO_DIR.glob("*.json"))
    return [g for g in names if version is None or version in group_versions(g)]


def group_versions(group: str) -> list[str]:
    """The QEMU versions a group is recorded from (default: all)."""
    with open(SCENARIO_DIR / f"{group}.json", encoding="utf-8") as f:
        data = json.load(f)
    versions: list[str] = ["7.2", "10.0"]
    if isinstance(data, dict) and "qemu" in data:
        versions = list(data["qemu"])
    return versions


def load_scenarios(group: str) -> list[dict[str, Any]]:
    with open(SCENARIO_DIR / f"{group}.json", encoding="utf-8") as f:
        data = json.load(f)
    if isinstance(data, dict):  # allow {"qemu": [...], "note": ..., "scenarios": [...]}
        data = data["scenarios"]
    names = [s["name"] for s in data]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"{group}: duplicate scenario names {sorted(dup)}")
    return data


def load_fixture(group: str, fixture_dir: Path = FIXTURE_DIR) -> dict[str, Any]:
    with open(fixture_dir / f"{group}.json", encoding="utf-8") as f:
        return json.load(f)


def step_payload(step: dict[str, Any]) -> bytes | None:
    """The bytes a step sends, or None for a non-send step."""
    if "send" in step:
        return str(step["send"]).encode("utf-8")
    if "send_b64" in step:
        return base64.b64decode(step["send_b64"])
    return None


# --------------------------------------------------------------------------
# Masking
# --------------------------------------------------------------------------

_TIMESTAMP_RE = re.compile(r'"timestamp": \{"seconds": -?\d+, "microseconds": -?\d+\}')
_VERSION_RE = re.compile(
    r'"qemu": \{"micro": \d+, "minor": \d+, "major": \d+\}, "package": "(?:[^"\\]|\\.)*"'
)
TIMESTAMP_MASK = '"timestamp": {"seconds": <S>, "microseconds": <US>}'
#: host thread ids of vCPUs (query-cpus-fast) and I/O threads (query-iothreads)
_THREAD_ID_RE = re.compile(
    r'(\{"thread-id": )\d+(, "props": )|("thread-id": )\d+(, "aio-max-batch")'
)
#: the harness's own QMP monitor (appended -qmp): a temporary socket or a tcp port
_QMP_CHARDEV_RE = re.compile(r'"filename": "(?:[^"\\]|\\.)*", "label": "compat_monitor0"')
QMP_CHARDEV_MASK = '"filename": "<QMP>", "label": "compat_monitor0"'
VERSION_MASK = '"qemu": {"micro": <MICRO>, "minor": <MINOR>, "major": <MAJOR>}, "package": "<PKG>"'


def mask_line(line: str) -> str:
    """Mask the only values allowed to differ: event timestamps, the version, host thread
    ids (vCPUs, I/O threads) and the chardev of the harness's own QMP socket.

    The patterns are spelled with QEMU's exact key order and separators, so a
    line with any other layout is left alone and shows up in the diff.
    """
    line = _TIMESTAMP_RE.sub(TIMESTAMP_MASK, line)
    line = _THREAD_ID_RE.sub(lambda m: f"{m[1] or m[3]}<TID>{m[2] or m[4]}", line)
    line = _QMP_CHARDEV_RE.sub(QMP_CHARDEV_MASK, line)
    return _VERSION_RE.sub(VERSION_MASK, line)


def normalise_stderr(text: str, progs: Sequence[str]) -> str:
    """Replace the program prefix ("qemu-system-x86_64: ", "qmp-server: ") by PROG."""
    out = []
    for ln in text.splitlines(keepends=True):
        for p in progs:
            if ln.startswith(p + ": "):
                ln = PROG + ln[len(p) + 2 :]
                break
        out.append(ln)
    return "".join(out)


# --------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------


@dataclass
class Target:
    """How to start the thing under test."""

    kind: str  # "qemu" or "qmp-server"
    prefix: list[str]  # argv before the scenario's argv
    progs: list[str]  # names that may prefix stderr lines
    env: dict[str, str] | None = None
    #: QEMU only: wait this long after the socket appears before connecting.
    #: A client accepted while QEMU is still starting can receive the startup
    #: RESUME event *before* the greeting (a race inside QEMU 7.2, not
    #: something we emulate); waiting, plus ``PRE_GREETING_RETRIES``, avoids it.
    connect_grace: float = 0.0
    #: QEMU in a chroot (``chroot DIR qemu-system-x86_64``): its /tmp is DIR/tmp.
    chroot: str | None = None
    #: Talk QMP over ``tcp:127.0.0.1:PORT`` instead of a unix socket.
    qmp_tcp: bool = False

    def argv(self, scenario_argv: Sequence[str], sock: str) -> list[str]:
        return [*self.prefix, *scenario_argv, "-qmp", f"{sock},server=on,wait=off"]

    def host_tmp(self) -> str:
        """The directory to create temporary files in, seen from this host."""
        return os.path.join(self.chroot, "tmp") if self.chroot else "/tmp"

    def inside(self, host_path: str) -> str:
        """A host path below ``host_tmp()`` as the target sees it."""
        if self.chroot and host_path.startswith(self.chroot.rstrip("/") + "/"):
            return host_path[len(self.chroot.rstrip("/")) :]
        return host_path


def qemu_target(qemu: str | None = None) -> Target:
    path = qemu or shutil.which(DEFAULT_QEMU) or DEFAULT_QEMU
    return Target("qemu", [path], [os.path.basename(path), path], connect_grace=0.3)


def chroot_target(chroot: str, qemu: str = DEFAULT_QEMU) -> Target:
    """A QEMU installed in a chroot (e.g. QEMU 10.0 in Debian trixie), QMP over TCP."""
    return Target(
        "qemu",
        ["chroot", chroot, qemu],
        [os.path.basename(qemu), qemu],
        connect_grace=0.3,
        chroot=chroot,
        qmp_tcp=True,
    )


def qmp_server_target(compat: str = "7.2") -> Target:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    return Target(
        "qmp-server",
        [sys.executable, "-m", "qmp_server", "--compat", compat],
        ["qmp-server"],
        env,
    )


def target_from_env(compat: str = "7.2") -> Target:
    """qmp-server --compat COMPAT, or the real QEMU with QMP_SERVER_REPLAY_TARGET=qemu.

    For ``compat="10.0"`` the real QEMU is the one in the chroot named by
    ``QMP_SERVER_QEMU10_CHROOT`` (default /work/qemu10).
    """
    which = os.environ.get("QMP_SERVER_REPLAY_TARGET", "qmp-server").strip().lower()
    if which == "qemu":
        if compat == "10.0":
            return chroot_target(os.environ.get("QMP_SERVER_QEMU10_CHROOT", "/work/qemu10"))
        return qemu_target(os.environ.get("QMP_SERVER_QEMU"))
    return qmp_server_target(compat)


def target_available(target: Target) -> str | None:
    """None if the target can run here, else why not."""
    if target.kind != "qemu":
        return None
    if target.chroot:
        if not os.path.exists(os.path.join(target.chroot, "usr/bin", target.prefix[2])):
            return f"{target.prefix[2]} not installed in {target.chroot}"
        if not os.path.exists(os.path.join(target.chroot, "proc/self")):
            return f"/proc is not mounted in {target.chroot}"
        return None
    exe = target.prefix[0]
    if not (os.path.exists(exe) or shutil.which(exe)):
        return f"{exe} not installed"
    return None


@contextmanager
def tmp_socket_dir(base: str = "/tmp") -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="qmpconf-", dir=base)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


class StartError(RuntimeError):
    pass


class StartupRace(RuntimeError):
    """QEMU sent something before its greeting (see Target.connect_grace)."""


#: How often a QEMU session is restarted after a StartupRace.
PRE_GREETING_RETRIES = 3


def _check_greeting_first(target: Target, first_line: bytes | str | None) -> None:
    if target.kind != "qemu" or first_line is None:
        return
    text = first_line.decode("utf-8", "replace") if isinstance(first_line, bytes) else first_line
    if not text.startswith('{"QMP": '):
        raise StartupRace(f"QEMU sent {text.strip()[:200]!r} before its greeting")


#: what in a scenario names a fixed socket, file or port (two such scenarios must not overlap)
_ADDRESS = re.compile(r"(?:/tmp/[A-Za-z0-9_.-]+|tcp:[0-9.]+:\d+|port=\d+)")
_address_table: dict[str, threading.Lock] = {}
_address_table_lock = threading.Lock()


@contextmanager
def address_locks(scenario: dict[str, Any]) -> Iterator[None]:
    """Hold the locks of the fixed addresses ``scenario`` names (replays run side by side)."""
    names = sorted(set(_ADDRESS.findall(json.dumps(scenario))))
    with _address_table_lock:
        locks = [_address_table.setdefault(n, threading.Lock()) for n in names]
    for lock in locks:
        lock.acquire()
    try:
        yield
    finally:
        for lock in reversed(locks):
            lock.release()


def _retrying(fn: Any, target: Target, *args: Any) -> Any:
    for attempt in range(PRE_GREETING_RETRIES + 1):
        try:
            return fn(target, *args)
        except StartupRace:
            if attempt == PRE_GREETING_RETRIES:
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


class Process:
    """A started target with its QMP socket path."""

    def __init__(self, target: Target, argv: Sequence[str], sock: str) -> None:
        self.sock = sock
        self.port: int | None = None
        #: What Client() connects to: the socket path, or ("127.0.0.1", port).
        self.endpoint: str | tuple[str, int] = sock
        if target.qmp_tcp:
            self.port = _free_port()
            self.endpoint = ("127.0.0.1", self.port)
            self.cmd = target.argv(argv, f"tcp:127.0.0.1:{self.port}")
        else:
            self.cmd = target.argv(argv, f"unix:{sock}")
        self.stderr_file = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            self.cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.stderr_file,
            env=target.env,
            cwd=str(REPO_ROOT),
            start_new_session=True,
        )

    def wait_socket(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.port is not None and _tcp_listening(self.port):
                return
            if self.port is None and os.path.exists(self.sock):
                return
            if self.proc.poll() is not None:
                raise StartError(
                    f"{self.cmd!r} exited with {self.proc.returncode} before "
                    f"creating its socket; stderr: {self.stderr()!r}"
                )
            time.sleep(0.01)
        raise StartError(f"{self.cmd!r}: socket {self.sock} did not appear in {timeout}s")

    def stderr(self) -> str:
        self.stderr_file.seek(0)
        return self.stderr_file.read().decode("utf-8", "backslashreplace")

    def stop(self) -> str:
        """Kill the process (if still running) and return its stderr."""
        if self.proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        err = self.stderr()
        self.stderr_file.close()
        return err


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _tcp_listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port (without connecting to it)."""
    want = f"0100007F:{port:04X}"
    try:
        with open("/proc/net/tcp", encoding="ascii") as f:
            for ln in f.readlines()[1:]:
                parts = ln.split()
                if parts[1] == want and parts[3] == "0A":
                    return True
    except OSError:
        return False
    return False


# --------------------------------------------------------------------------
# The raw client
# --------------------------------------------------------------------------


class Client:
    """A raw line-oriented socket client (no JSON parsing, no masking)."""

    def __init__(self, path: str | tuple[str, int]) -> None:
        self.path = path
        self.buf = b""
        self.eof = False
        self.sock = self._connect()

    def _connect(self) -> socket.socket:
        family = socket.AF_INET if isinstance(self.path, tuple) else socket.AF_UNIX
        deadline = time.monotonic() + 10
        while True:
            s = socket.socket(family, socket.SOCK_STREAM)
            try:
                s.connect(self.path)
                return s
            except (FileNotFoundError, ConnectionRefusedError):
                s.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def reconnect(self) -> None:
        self.close()
        self.buf = b""
        self.eof = False
        self.sock = self._connect()

    def close(self) -> None:
        with suppress(OSError):
            self.sock.close()

    def send(self, data: bytes) -> None:
        if data:
            self.sock.sendall(data)

    def _recv(self, timeout: float) -> bool:
        """Read once; False on timeout, True on data or EOF."""
        if self.eof:
            return False
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            return False
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
        self.buf += chunk
        return True

    def _pop_lines(self) -> list[bytes]:
        lines = []
        while b"\n" in self.buf:
            ln, self.buf = self.buf.split(b"\n", 1)
            lines.append(ln + b"\n")
        return lines

    def collect(self, settle: float) -> tuple[list[bytes], bool]:
        """Read until ``settle`` seconds of silence (or EOF).

        Returns the complete lines (each with its terminator) and whether the
        peer closed the connection.
        """
        while not self.eof and self._recv(settle):
            pass
        return self._pop_lines(), self.eof

    def read_until_eof(self, timeout: float) -> list[bytes]:
        """Read until the peer closes (or ``timeout``); return complete lines and rest."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._recv(remaining)
        lines = self._pop_lines()
        if self.buf:
            lines.append(self.buf)
            self.buf = b""
        return lines

    def read_lines(self, n: int, timeout: float = LINE_TIMEOUT) -> list[bytes]:
        """Read exactly n lines; fewer if one takes longer than ``timeout`` or EOF comes."""
        out: list[bytes] = []
        while len(out) < n:
            if b"\n" in self.buf:
                ln, self.buf = self.buf.split(b"\n", 1)
                out.append(ln + b"\n")
                continue
            if self.eof:
                break
            deadline = time.monotonic() + timeout
            while b"\n" not in self.buf and not self.eof:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return out
                self._recv(remaining)
        return out


def split_line(raw: bytes) -> tuple[str, str]:
    """(text without terminator, terminator) for one received line."""
    if raw.endswith(b"\r\n"):
        body, eol = raw[:-2], "\r\n"
    elif raw.endswith(b"\n"):
        body, eol = raw[:-1], "\n"
    else:
        body, eol = raw, ""
    return body.decode("utf-8", "backslashreplace"), eol


# --------------------------------------------------------------------------
# Running scenarios
# --------------------------------------------------------------------------


@dataclass
class StepResult:
    step: dict[str, Any]
    lines: list[str] = field(default_factory=list)
    eols: list[str] = field(default_factory=list)
    closed: bool = False
    partial: str = ""

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"step": self.step, "lines": self.lines}
        d["crlf"] = all(e == "\r\n" for e in self.eols)
        if not d["crlf"]:
            d["eols"] = self.eols
        if self.partial:
            d["partial"] = self.partial
        if self.closed:
            d["closed"] = True
        return d


def record_session(target: Target, scenario: dict[str, Any]) -> list[StepResult]:
    """Run one session scenario collecting replies until silence after each step."""
    result: list[StepResult] = _retrying(_record_session_once, target, scenario)
    return result


def _record_session_once(target: Target, scenario: dict[str, Any]) -> list[StepResult]:
    results: list[StepResult] = []
    with tmp_socket_dir(target.host_tmp()) as d:
        sock = os.path.join(d, "qmp.sock")
        proc = Process(target, scenario.get("argv", []), sock)
        try:
            proc.wait_socket()
            if target.connect_grace:
                time.sleep(target.connect_grace)
            client = Client(proc.endpoint)
            try:
                steps = [GREETING_STEP, *scenario["steps"]]
                for step in steps:
                    res = StepResult(step)
                    settle = float(step.get("settle", DEFAULT_SETTLE))
                    _send_step(client, step)
                    raw, closed = client.collect(settle)
                    if step is GREETING_STEP:
                        _check_greeting_first(target, raw[0] if raw else None)
                    for r in raw:
                        text, eol = split_line(r)
                        res.lines.append(text)
                        res.eols.append(eol)
                    res.closed = closed
                    if closed and client.buf:
                        res.partial = client.buf.decode("utf-8", "backslashreplace")
                        client.buf = b""
                    results.append(res)
            finally:
                client.close()
        finally:
            proc.stop()
    return results


@dataclass
class Mismatch:
    step_index: int
    step: dict[str, Any]
    expected: list[str]
    actual: list[str]
    note: str = ""
    recorded: str = "QEMU 7.2"

    def render(self) -> str:
        import difflib

        head = f"step {self.step_index} {json.dumps(self.step, ensure_ascii=True)[:300]}"
        if self.note:
            head += f"\n  {self.note}"
        diff = difflib.unified_diff(
            self.expected, self.actual, f"recorded ({self.recorded})", "actual", lineterm="", n=2
        )
        return head + "\n" + "\n".join("  " + d for d in diff)


def replay_session(
    target: Target, scenario: dict[str, Any], recorded: list[dict[str, Any]]
) -> tuple[list[Mismatch], str]:
    """Replay a recorded session; return mismatches (after masking) and stderr."""
    result: tuple[list[Mismatch], str] = _retrying(_replay_session_once, target, scenario, recorded)
    return result


def _send_step(client: Client, step: dict[str, Any]) -> None:
    """What one step does to the connection: reconnect, wait, or send its payload."""
    if step.get("reconnect"):
        client.reconnect()
    elif "sleep" in step:
        time.sleep(float(step["sleep"]))
    else:
        payload = step_payload(step)
        if payload is not None:
            client.send(payload)


def replay_steps(client: Client, target: Target, recorded: list[dict[str, Any]]) -> list[Mismatch]:
    """Replay recorded steps on a connected client; the mismatches (after masking)."""
    mismatches: list[Mismatch] = []
    for i, rec in enumerate(recorded):
        step = rec["step"]
        _send_step(client, step)
        exp_lines: list[str] = rec["lines"]
        exp_eols: list[str] = rec.get("eols") or ["\r\n"] * len(exp_lines)
        raw = client.read_lines(len(exp_lines))
        if i == 0:
            _check_greeting_first(target, raw[0] if raw else None)
        got = [split_line(r) for r in raw]
        exp_view = [mask_line(t) + repr(e)[1:-1] for t, e in zip(exp_lines, exp_eols, strict=True)]
        act_view = [mask_line(t) + repr(e)[1:-1] for t, e in got]
        if exp_view != act_view:
            note = ""
            if len(got) < len(exp_lines):
                note = (
                    f"got {len(got)} of {len(exp_lines)} lines "
                    f"({'connection closed' if client.eof else 'timed out'})"
                )
            mismatches.append(Mismatch(i, step, exp_view, act_view, note))
            break  # later steps would only cascade
        if rec.get("closed"):
            # QEMU closed the connection after this step: nothing
            # more may arrive before EOF.
            extra = client.read_until_eof(LINE_TIMEOUT)
            if extra or not client.eof:
                mismatches.append(
                    Mismatch(
                        i,
                        step,
                        exp_view,
                        act_view + [split_line(r)[0] for r in extra],
                        "expected the connection to close after these lines"
                        + ("" if client.eof else " (it stayed open)"),
                    )
                )
                break
    if not mismatches and not client.eof:
        extra, _ = client.collect(DEFAULT_SETTLE)
        if extra:
            mismatches.append(
                Mismatch(
                    len(recorded),
                    {"after": "last step"},
                    [],
                    [split_line(r)[0] for r in extra],
                    "unexpected extra output after the last step",
                )
            )
    return mismatches


def _replay_session_once(
    target: Target, scenario: dict[str, Any], recorded: list[dict[str, Any]]
) -> tuple[list[Mismatch], str]:
    mismatches: list[Mismatch] = []
    with tmp_socket_dir(target.host_tmp()) as d:
        sock = os.path.join(d, "qmp.sock")
        proc = Process(target, scenario.get("argv", []), sock)
        stderr = ""
        try:
            proc.wait_socket()
            if target.connect_grace:
                time.sleep(target.connect_grace)
            client = Client(proc.endpoint)
            try:
                mismatches = replay_steps(client, target, recorded)
            finally:
                client.close()
        finally:
            stderr = proc.stop()
    return mismatches, stderr


def run_startup(target: Target, scenario: dict[str, Any]) -> dict[str, Any]:
    """Run a startup scenario: exit status + normalised stderr, or "started"."""
    with tmp_socket_dir(target.host_tmp()) as d:
        sock = os.path.join(d, "qmp.sock")
        proc = Process(target, scenario.get("argv", []), sock)
        try:
            # the wait starts once the monitor socket is up (or the process is gone): a
            # loaded machine can take seconds just to start Python, which is not "started"
            up_by = time.monotonic() + STARTUP_LIMIT
            while (proc.proc.poll() is None and proc.port is None
                   and not os.path.exists(sock) and time.monotonic() < up_by):  # fmt: skip
                time.sleep(0.02)
            try:
                rc = proc.proc.wait(timeout=float(scenario.get("wait", STARTUP_WAIT)))
            except subprocess.TimeoutExpired:
                rc = None
        finally:
            err = proc.stop()
    res: dict[str, Any] = {"stderr": normalise_stderr(err, target.progs)}
    if rc is None:
        res["started"] = True
        res["exit_status"] = None
    else:
        res["started"] = False
        res["exit_status"] = rc
    return res


def qemu_version_line(qemu: str, target: Target | None = None) -> str:
    cmd = [*target.prefix, "--version"] if target is not None else [qemu, "--version"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return out.stdout.splitlines()[0].strip()
