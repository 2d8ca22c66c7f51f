"""``-chardev``s that no monitor uses: created at start-up and listed as QEMU lists them.

libvirt's ``<serial type='pty'>`` becomes ``-chardev pty`` + ``-device isa-serial`` and libvirt
reads the pty's path back from ``query-chardev``; Proxmox's guest-agent channel is a listening
unix socket behind a ``virtserialport``.  The answer is compared with the real QEMU 7.2's for
the same command line (pty numbers masked) when that QEMU is installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

QEMU = shutil.which("qemu-system-x86_64")


def _line(d: Path, port: int) -> list[str]:
    return [
        "-M", "pc", "-m", "64", "-nodefaults", "-display", "none",
        "-chardev", "pty,id=charserial0",
        "-device", "isa-serial,chardev=charserial0,id=serial0",
        "-chardev", f"socket,path={d}/qga.sock,server=on,wait=off,id=qga0",
        "-device", "virtio-serial", "-device",
        "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
        "-chardev", "null,id=n0", "-chardev", f"file,id=f0,path={d}/console.log",
        "-chardev", f"socket,id=s1,host=127.0.0.1,port={port},server=on,wait=off",
        "-qmp", f"unix:{d}/qmp.sock,server=on,wait=off",
    ]  # fmt: skip


def _query_chardev(argv: list[str], d: Path) -> list[dict[str, object]]:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(200):
            if (d / "qmp.sock").exists():
                break
            time.sleep(0.05)
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(d / "qmp.sock"))
            f = s.makefile("rwb")
            f.readline()
            for cmd in ("qmp_capabilities", "query-chardev"):
                f.write(json.dumps({"execute": cmd}).encode() + b"\n")
                f.flush()
                reply = json.loads(f.readline())
            # the guest-agent socket and the tcp one accept a client; what it sends is dropped
            with socket.socket(socket.AF_UNIX) as agent:
                agent.connect(str(d / "qga.sock"))
                agent.sendall(b'{"execute":"guest-ping"}\n')
            assert (d / "console.log").exists()
            result: list[dict[str, object]] = reply["return"]
            return result
    finally:
        proc.terminate()
        proc.wait(10)
        for name in ("qmp.sock", "qga.sock"):
            if (d / name).exists():
                os.unlink(d / name)


def _masked(entries: list[dict[str, object]], d: Path, port: int) -> str:
    text = json.dumps(entries).replace(str(d), "DIR").replace(str(port), "PORT")
    return re.sub(r"/dev/pts/\d+", "/dev/pts/N", text)


def test_guest_chardevs_are_created_and_listed(tmp_path: Path) -> None:
    from server_process import free_port

    port = free_port()
    ours = _query_chardev([sys.executable, "-m", "qmp_server", "--compat", "7.2",
                           *_line(tmp_path, port)], tmp_path)  # fmt: skip
    by_label = {e["label"]: e for e in ours}
    pty = str(by_label["charserial0"]["filename"]).removeprefix("pty:")
    assert pty.startswith("/dev/pts/")
    assert by_label["charserial0"]["frontend-open"] is True  # isa-serial opens it
    assert by_label["qga0"]["frontend-open"] is False  # a virtio port waits for the guest
    assert by_label["n0"]["filename"] == "null"
    if QEMU is None:
        pytest.skip("QEMU 7.2 is not installed: compared with ourselves only")
    theirs = _query_chardev([QEMU, "-accel", "tcg", *_line(tmp_path, port)], tmp_path)
    assert _masked(ours, tmp_path, port) == _masked(theirs, tmp_path, port)
