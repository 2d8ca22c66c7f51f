"""Start the real qmp-server process on real sockets for integration tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    """A running ``python -m qmp_server`` with one unix-socket QMP monitor (``.socket``)."""

    proc: subprocess.Popen[bytes]
    socket: str
    extra_sockets: list[str] = field(default_factory=list)

    def stop(self) -> tuple[int, bytes]:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        stderr = self.proc.stderr.read() if self.proc.stderr else b""
        return self.proc.returncode, stderr


def start_server(
    tmp_path: Path,
    args: Sequence[str] = (),
    *,
    name: str = "qmp",
    monitors: int = 1,
    wait_for: Sequence[str] = (),
    timeout: float = 15.0,
) -> ServerProcess:
    sockets = [str(tmp_path / f"{name}{i}.sock") for i in range(monitors)]
    argv = [sys.executable, "-m", "qmp_server", *args]
    for path in sockets:
        argv += ["-qmp", f"unix:{path},server=on,wait=off"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    deadline = time.monotonic() + timeout
    for path in [*sockets, *wait_for]:
        while not os.path.exists(path):
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"qmp-server exited with {proc.returncode}: {err}")
            if time.monotonic() > deadline:
                proc.kill()
                raise TimeoutError(f"qmp-server did not create {path}")
            time.sleep(0.02)
    return ServerProcess(proc, sockets[0], sockets[1:])


class RawClient:
    """A bare socket client: sends bytes, reads ``\\r\\n``-terminated lines."""

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buf)
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def lines(self, n: int) -> list[bytes]:
        return [self.line() for _ in range(n)]

    def close(self) -> None:
        self.sock.close()
