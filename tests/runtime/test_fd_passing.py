"""File descriptors over SCM_RIGHTS: getfd/add-fd on unix monitors and libvirt's save/restore.

``virsh save`` passes the write end of a pipe with ``getfd`` and runs ``migrate fd:NAME``;
``virsh restore`` starts the destination with ``-incoming defer`` (or ``-incoming fd:N``) and
feeds the saved stream through another pipe.  Two real processes, real pipes; the guest digest
after the restore equals the one saved.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from _sync_client import Client
from server_process import start_server


def _wait_status(client: Client, wanted: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = client.cmd("query-migrate")["return"]
        if info.get("status") == wanted:
            return dict(info)
        assert info.get("status") != "failed", info
        time.sleep(0.05)
    raise AssertionError(f"no {wanted}: {info}")


def _copy(src: int, dst: int) -> threading.Thread:
    """libvirt's iohelper: copy one descriptor into another, then close both."""

    def run() -> None:
        try:
            while chunk := os.read(src, 1 << 20):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(dst, view) :]
        finally:
            os.close(src)
            os.close(dst)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _save(tmp_path: Path, image: Path, args: list[str]) -> str:
    """``virsh save``: the source migrates into a pipe whose reader writes ``image``."""
    src = start_server(tmp_path, args, name="src")
    try:
        client = Client(src.socket)
        read_end, write_end = os.pipe()
        assert client.cmd("getfd", fds=[write_end], fdname="migrate") == {"return": {}}
        os.close(write_end)
        copier = _copy(read_end, os.open(image, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        assert client.cmd("stop") == {"return": {}}
        digest = client.cmd("x-query-guest-digest")["return"]["ram"]
        assert client.cmd("migrate", uri="fd:migrate") == {"return": {}}
        _wait_status(client, "completed")
        copier.join(30)
        # the name was consumed by migrate, as QEMU's monitor_get_fd does
        gone = client.cmd("closefd", fdname="migrate")
        assert gone["error"]["desc"] == "File descriptor named 'migrate' not found"
        client.close()
        return str(digest)
    finally:
        src.stop()


ARGS = ["-M", "pc", "-m", "64", "--guest-fill", "random"]


@pytest.mark.parametrize("compat", ["7.2", "10.0"])
def test_save_and_restore_through_getfd_pipes(tmp_path: Path, compat: str) -> None:
    image = tmp_path / "saved.img"
    args = [*ARGS, "--compat", compat]
    saved = _save(tmp_path, image, args)
    assert image.stat().st_size > 0
    dst = start_server(tmp_path, [*args, "-S", "-incoming", "defer"], name="dst")
    try:
        client = Client(dst.socket)
        read_end, write_end = os.pipe()
        copier = _copy(os.open(image, os.O_RDONLY), write_end)
        assert client.cmd("getfd", fds=[read_end], fdname="migrate") == {"return": {}}
        os.close(read_end)
        assert client.cmd("migrate-incoming", uri="fd:migrate") == {"return": {}}
        _wait_status(client, "completed")
        copier.join(30)
        assert client.cmd("x-query-guest-digest")["return"]["ram"] == saved
        assert client.cmd("query-status")["return"]["status"] == "paused"
    finally:
        dst.stop()


def test_restore_from_inherited_fd(tmp_path: Path) -> None:
    """``-incoming fd:N``: the descriptor is inherited, as libvirt's restore may pass it."""
    image = tmp_path / "saved.img"
    saved = _save(tmp_path, image, ARGS)
    fd = os.open(image, os.O_RDONLY)
    sock = str(tmp_path / "dst.sock")
    proc = subprocess.Popen(
        [sys.executable, "-m", "qmp_server", *ARGS, "-S", "-incoming", f"fd:{fd}",
         "-qmp", f"unix:{sock},server=on,wait=off"],
        pass_fds=(fd,), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    os.close(fd)
    try:
        deadline = time.monotonic() + 15
        while not os.path.exists(sock):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        client = Client(sock)
        _wait_status(client, "completed")
        assert client.cmd("x-query-guest-digest")["return"]["ram"] == saved
    finally:
        proc.terminate()
        proc.wait(10)


def test_fd_queue_rules(tmp_path: Path) -> None:
    """QEMU's rules for waiting descriptors (recorded on 7.2 and 10.0)."""
    srv = start_server(tmp_path, ["-M", "none"])
    try:
        client = Client(srv.socket)
        r, w = os.pipe()
        try:
            no_fd = "No file descriptor supplied via SCM_RIGHTS"
            assert client.cmd("getfd", fdname="x")["error"]["desc"] == no_fd
            # a command that takes none leaves them waiting for the next one
            assert "return" in client.cmd("query-status", fds=[r])
            assert client.cmd("getfd", fdname="x") == {"return": {}}
            assert client.cmd("getfd", fdname="y")["error"]["desc"] == no_fd
            # a name starting with a digit is refused, and the descriptor is used up
            bad = client.cmd("getfd", fds=[r], fdname="5y")["error"]["desc"]
            assert bad == "Parameter 'fdname' expects a name not starting with a digit"
            assert client.cmd("getfd", fdname="z")["error"]["desc"] == no_fd
            # two descriptors with one add-fd: the first is added, the second closed
            first = client.cmd("add-fd", fds=[r, w], opaque="o")["return"]
            assert first["fdset-id"] == 0
            assert client.cmd("add-fd")["error"]["desc"] == no_fd
            second = client.cmd("add-fd", fds=[w], **{"fdset-id": 7})["return"]
            third = client.cmd("add-fd", fds=[w], **{"fdset-id": 0})["return"]
            sets = client.cmd("query-fdsets")["return"]
            assert sets == [
                {"fdset-id": 7, "fds": [{"fd": second["fd"]}]},
                {"fdset-id": 0, "fds": [{"fd": first["fd"], "opaque": "o"},
                                        {"fd": third["fd"]}]},
            ]  # fmt: skip
            err = client.cmd("remove-fd", **{"fdset-id": 0, "fd": 99999})["error"]["desc"]
            assert err == "File descriptor named 'fdset-id:0, fd:99999' not found"
            assert client.cmd("remove-fd", **{"fdset-id": 0}) == {"return": {}}
            err = client.cmd("remove-fd", **{"fdset-id": 0})["error"]["desc"]
            assert err == "File descriptor named 'fdset-id:0' not found"
            # the add-fd lowest free id: 0 is free again
            again = client.cmd("add-fd", fds=[w])["return"]
            assert again["fdset-id"] == 0
            # descriptors over tcp or without any: the same error as QEMU's
            assert client.cmd("closefd", fdname="x") == {"return": {}}
            assert client.cmd("closefd", fdname="x")["error"]["desc"] == (
                "File descriptor named 'x' not found"
            )
        finally:
            os.close(r)
            os.close(w)
            client.close()
    finally:
        srv.stop()


def test_add_fd_on_the_command_line(tmp_path: Path) -> None:
    r, w = os.pipe()
    sock = str(tmp_path / "q.sock")
    proc = subprocess.Popen(
        [sys.executable, "-m", "qmp_server", "-M", "none", "-add-fd",
         f"fd={r},set=2,opaque=hello", "-qmp", f"unix:{sock},server=on,wait=off"],
        pass_fds=(r,), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while not os.path.exists(sock):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        client = Client(sock)
        (fdset,) = client.cmd("query-fdsets")["return"]
        assert fdset["fdset-id"] == 2 and fdset["fds"][0]["opaque"] == "hello"
        assert fdset["fds"][0]["fd"] != r  # QEMU keeps a duplicate
        client.close()
    finally:
        proc.terminate()
        proc.wait(10)
        os.close(r)
        os.close(w)
    bad = subprocess.run(
        [sys.executable, "-m", "qmp_server", "-M", "none", "-add-fd", "fd=1,set=1"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert bad.returncode == 1
    assert "-add-fd fd=1,set=1: fd cannot be a standard I/O stream" in bad.stderr


async def test_qemu_qmp_send_fd_scm(tmp_path: Path) -> None:
    """qemu.qmp's QMPClient sends a descriptor with one space byte, then the command."""
    from qemu.qmp import ExecuteError, QMPClient

    srv = start_server(tmp_path, ["-M", "none"])
    qmp = QMPClient("fd")
    r, w = os.pipe()
    try:
        await qmp.connect(srv.socket)
        qmp.send_fd_scm(w)
        assert await qmp.execute("getfd", {"fdname": "out"}) == {}
        qmp.send_fd_scm(r)
        added = await qmp.execute("add-fd", {"opaque": "read end"})
        assert isinstance(added, dict) and added["fdset-id"] == 0
        assert await qmp.execute("closefd", {"fdname": "out"}) == {}
        with pytest.raises(ExecuteError, match="No file descriptor supplied via SCM_RIGHTS"):
            await qmp.execute("getfd", {"fdname": "again"})
    finally:
        await qmp.disconnect()
        os.close(r)
        os.close(w)
        srv.stop()
