"""Drive a human monitor (HMP) the same way for QEMU and for qmp-server.

Used by ``tools/record_hmp.py`` (recording from a real QEMU 7.2, or 10.0 in a chroot) and by
``tests/conformance/test_hmp_replay.py`` (replaying the fixtures against qmp-server), so that a
difference in a replay can only come from the server.

A *session* is a process started with a QMP socket and an HMP socket (``-monitor
unix:PATH,server=on,wait=off``) and a list of steps.  Each step is one of:

* ``{"line": "info status"}``: typed on the HMP socket followed by ``"\\n"`` (``"send"`` gives
  the raw bytes instead, e.g. ``"info status\\r\\n"``); everything up to the next prompt is the
  step's ``output``.  Through QMP the same line goes to ``human-monitor-command`` and the
  answer (``return`` text or ``error``) is kept.
  A ``"cpu-index"`` member is passed to ``human-monitor-command`` as is.
* ``{"wait": ["completed", ...]}``: poll ``query-migrate`` over QMP until the status is one of
  these (not recorded: it only makes the next step deterministic).

Both modes run in separate processes so that state changes in one do not leak into the other.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

PROMPT = b"(qemu) "
#: silence after a prompt that ends the collection of one step's output (seconds)
SETTLE = 0.25
#: how long one step may take (a blocking ``migrate`` waits for the migration)
STEP_TIMEOUT = 60.0


@dataclass(frozen=True)
class Launcher:
    """How to start the process under test: ``prefix`` + argv + monitors.

    ``root`` is a chroot directory (QEMU 10.0 lives in /srv/trixie): sockets are created under
    ``root/tmp`` and named to the process by their path inside the chroot.
    """

    prefix: tuple[str, ...]
    root: str = ""

    def paths(self) -> tuple[str, str]:
        """A fresh directory (host path, path the process sees)."""
        base = os.path.join(self.root, "tmp") if self.root else None
        host = tempfile.mkdtemp(prefix="hmprec-", dir=base)
        inside = host[len(self.root) :] if self.root else host
        return host, inside


@dataclass
class Process:
    proc: subprocess.Popen[bytes]
    qmp_path: str
    hmp_path: str
    tmpdir: str


@contextmanager
def started(launcher: Launcher, argv: Sequence[str]) -> Iterator[Process]:
    """Start the process with a QMP and an HMP unix socket; kill it and clean up at the end."""
    host, inside = launcher.paths()
    cmd = [
        *launcher.prefix,
        *argv,
        "-qmp",
        f"unix:{inside}/qmp.sock,server=on,wait=off",
        "-monitor",
        f"unix:{inside}/hmp.sock,server=on,wait=off",
    ]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    process = Process(proc, f"{host}/qmp.sock", f"{host}/hmp.sock", host)
    try:
        deadline = time.monotonic() + 15
        while not (os.path.exists(process.qmp_path) and os.path.exists(process.hmp_path)):
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"{cmd} exited {proc.returncode}: {err}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{cmd}: no monitor sockets")
            time.sleep(0.02)
        yield process
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
        shutil.rmtree(host, ignore_errors=True)


def _connect(path: str) -> socket.socket:
    deadline = time.monotonic() + 10
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class QMP:
    """A minimal synchronous QMP client (events are skipped)."""

    def __init__(self, path: str) -> None:
        self.sock = _connect(path)
        self.buf = b""
        self.greeting = self._read()
        self.execute("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        deadline = time.monotonic() + STEP_TIMEOUT
        while b"\n" not in self.buf:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("QMP connection closed")
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        value: dict[str, Any] = json.loads(line)
        return value

    def execute(self, name: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        msg: dict[str, Any] = {"execute": name}
        if args is not None:
            msg["arguments"] = args
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            reply = self._read()
            if "event" not in reply:
                return reply

    def wait_status(self, wanted: Sequence[str]) -> None:
        deadline = time.monotonic() + STEP_TIMEOUT
        while True:
            status = self.execute("query-migrate").get("return", {}).get("status", "none")
            if status in wanted:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"migration status {status}, waiting for {wanted}")
            time.sleep(0.05)

    def close(self) -> None:
        with suppress(OSError):
            self.sock.close()


class HMP:
    """A raw HMP socket client: what it reads is kept byte for byte (latin-1 text)."""

    def __init__(self, path: str) -> None:
        self.sock = _connect(path)
        self.greeting = self.read_to_prompt()

    def read_to_prompt(self, timeout: float = STEP_TIMEOUT) -> str:
        out = b""
        deadline = time.monotonic() + timeout
        while True:
            wait = SETTLE if out.endswith(PROMPT) else max(0.01, deadline - time.monotonic())
            self.sock.settimeout(wait)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                if out.endswith(PROMPT) or time.monotonic() >= deadline:
                    return out.decode("latin-1")
                continue
            if not data:
                return out.decode("latin-1")
            out += data

    def send(self, raw: str) -> str:
        self.sock.sendall(raw.encode("latin-1"))
        return self.read_to_prompt()

    def close(self) -> None:
        with suppress(OSError):
            self.sock.close()


def step_bytes(step: dict[str, Any]) -> str:
    return str(step["send"]) if "send" in step else f"{step['line']}\n"


def run_hmp(
    launcher: Launcher, argv: Sequence[str], steps: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """Run ``steps`` on the HMP socket; returns the greeting and each step's output."""
    with started(launcher, argv) as process:
        qmp = QMP(process.qmp_path)
        hmp = HMP(process.hmp_path)
        try:
            outputs: list[str | None] = []
            for step in steps:
                if "wait" in step:
                    qmp.wait_status(step["wait"])
                    outputs.append(None)
                else:
                    outputs.append(hmp.send(step_bytes(step)))
            return {
                "greeting": hmp.greeting,
                "outputs": outputs,
                "version": qmp.greeting["QMP"]["version"],
            }
        finally:
            hmp.close()
            qmp.close()


def run_qmp(
    launcher: Launcher, argv: Sequence[str], steps: Sequence[dict[str, Any]]
) -> list[dict[str, Any] | None]:
    """Run the ``line`` steps through ``human-monitor-command``; returns each reply."""
    with started(launcher, argv) as process:
        qmp = QMP(process.qmp_path)
        try:
            replies: list[dict[str, Any] | None] = []
            for step in steps:
                if "wait" in step:
                    qmp.wait_status(step["wait"])
                    replies.append(None)
                elif "line" in step:
                    args: dict[str, Any] = {"command-line": step["line"]}
                    if "cpu-index" in step:
                        args["cpu-index"] = step["cpu-index"]
                    reply = qmp.execute("human-monitor-command", args)
                    reply.pop("id", None)
                    replies.append(reply)
                else:
                    replies.append(None)  # raw-bytes steps only mean something on a socket
            return replies
        finally:
            qmp.close()


_NUMBER = re.compile(r"\d+")


def mask_numbers(text: str) -> str:
    """Time-varying counters of a running or finished migration compare as ``N``."""
    return _NUMBER.sub("N", text)
