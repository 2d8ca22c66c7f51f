"""query-chardev of inherited sockets (``-chardev socket,fd=N``), compared with the live QEMU 7.2:
libvirt's listening socket (``server=on``) and QEMUMachine's connected socketpair end."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

QEMU = shutil.which("qemu-system-x86_64")
pytestmark = [pytest.mark.live_qemu, pytest.mark.skipif(QEMU is None, reason="no QEMU")]


class _Peer:
    """A QMP client on an already connected socket."""

    def __init__(self, sock: socket.socket) -> None:
        sock.settimeout(20)
        self.file = sock.makefile("rwb")
        self.file.readline()
        self.call("qmp_capabilities")

    def call(self, name: str) -> Any:
        self.file.write(json.dumps({"execute": name}).encode() + b"\n")
        self.file.flush()
        while True:
            reply = json.loads(self.file.readline())
            if "event" not in reply:
                return reply["return"]


def _start(binary: list[str], fd: int, server: bool) -> subprocess.Popen[bytes]:
    chardev = f"socket,id=charmonitor,fd={fd}" + (",server=on,wait=off" if server else "")
    argv = [*binary, "-machine", "none", "-nodefaults", "-display", "none", "-chardev", chardev,
            "-mon", "chardev=charmonitor,id=monitor,mode=control"]  # fmt: skip
    return subprocess.Popen(argv, pass_fds=[fd], stdin=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip


BINARIES = {"qemu": [QEMU or "qemu"], "qmp-server": [sys.executable, "-m", "qmp_server",
                                                     "--compat", "7.2"]}


@pytest.fixture
def sockdir() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="qmpfd-") as path:
        yield path


def _listening(path: str, binary: list[str]) -> Any:
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(1)
    proc = _start(binary, listener.fileno(), server=True)
    listener.close()
    try:
        client = socket.socket(socket.AF_UNIX)
        client.connect(path)
        return _Peer(client).call("query-chardev")
    finally:
        proc.kill()
        proc.wait()
        os.unlink(path)


def _socketpair(binary: list[str]) -> Any:
    ours, theirs = socket.socketpair()
    proc = _start(binary, theirs.fileno(), server=False)
    theirs.close()
    try:
        return _Peer(ours).call("query-chardev")
    finally:
        proc.kill()
        proc.wait()


def test_listening_fd_like_libvirt(sockdir: str) -> None:
    path = os.path.join(sockdir, "monitor.sock")
    answers = {name: _listening(path, binary) for name, binary in BINARIES.items()}
    assert answers["qmp-server"] == answers["qemu"]
    assert answers["qemu"] == [
        {"frontend-open": True, "filename": f"unix:{path},server=on", "label": "charmonitor"}
    ]


def test_socketpair_fd_like_qemu_machine() -> None:
    answers = {name: _socketpair(binary) for name, binary in BINARIES.items()}
    assert answers["qmp-server"] == answers["qemu"]
