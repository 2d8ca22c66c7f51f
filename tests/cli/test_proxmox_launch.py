"""qmp-server started with a Proxmox VE-style command line (issue 13).

Proxmox's ``qemu-server`` starts QEMU with ``-daemonize -pidfile``, a QMP monitor on a unix
socket, a second QMP monitor that connects *out* to its event daemon (``qmeventd``) with
``reconnect=5``, and a long list of devices, drives, a user-mode or tap netdev, ``-smbios``,
``-iscsi``, ``-global kvm-pit.lost_tick_policy=discard`` and friends.  The line below is that
shape (without Proxmox's own ``-id`` option and ``+pve0`` machine types, which upstream QEMU
refuses too); real QEMU 7.2 starts with it (checked live; it warns about the missing boot
splash image), and so must we.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


def proxmox_line(d: Path) -> list[str]:
    return [
        "-name", "vm100,debug-threads=on", "-no-shutdown",
        "-chardev", f"socket,id=qmp,path={d}/100.qmp,server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
        "-chardev", f"socket,id=qmp-event,path={d}/qmeventd.sock,reconnect=5",
        "-mon", "chardev=qmp-event,mode=control",
        "-pidfile", f"{d}/100.pid", "-daemonize",
        "-smbios", "type=1,uuid=6e6b1a2e-2b49-4a41-9a67-3c0f3f1d9a11",
        "-smp", "2,sockets=1,cores=2,maxcpus=2", "-nodefaults",
        "-boot", "menu=on,strict=on,reboot-timeout=1000",
        "-vnc", f"unix:{d}/100.vnc,password=on",
        "-cpu", "kvm64,enforce,+kvm_pv_eoi,+kvm_pv_unhalt,+lahf_lm,+sep", "-m", "256",
        "-object", "iothread,id=iothread-virtioscsi0",
        "-device", "pci-bridge,id=pci.1,chassis_nr=1,bus=pci.0,addr=0x1e",
        "-device", "piix3-usb-uhci,id=uhci,bus=pci.0,addr=0x1.0x2",
        "-device", "usb-tablet,id=tablet,bus=uhci.0,port=1",
        "-device", "VGA,id=vga,bus=pci.0,addr=0x2",
        "-chardev", f"socket,path={d}/100.qga,server=on,wait=off,id=qga0",
        "-device", "virtio-serial,id=qga0,bus=pci.0,addr=0x8",
        "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
        "-device", "virtio-balloon-pci,id=balloon0,bus=pci.0,addr=0x3,free-page-reporting=on",
        "-iscsi", "initiator-name=iqn.1993-08.org.debian:01:abc",
        "-drive", "if=none,id=drive-ide2,media=cdrom,aio=io_uring",
        "-device", "ide-cd,bus=ide.1,unit=0,drive=drive-ide2,id=ide2,bootindex=101",
        "-device", "virtio-scsi-pci,id=virtioscsi0,bus=pci.1,addr=0x1,"
                   "iothread=iothread-virtioscsi0",
        "-netdev", "type=user,id=net0",
        "-device", "virtio-net-pci,mac=BC:24:11:00:00:01,netdev=net0,bus=pci.0,addr=0x12,"
                   "id=net0,rx_queue_size=1024,tx_queue_size=1024",
        "-machine", "type=pc-i440fx-7.2", "-rtc", "driftfix=slew,base=localtime",
        "-global", "kvm-pit.lost_tick_policy=discard",
    ]  # fmt: skip


def _qmp(path: str, *commands: str) -> list[dict[str, object]]:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        f = s.makefile("rwb")
        json.loads(f.readline())
        answers = []
        for cmd in ("qmp_capabilities", *commands):
            f.write(json.dumps({"execute": cmd}).encode() + b"\n")
            f.flush()
            while "event" in (reply := json.loads(f.readline())):
                pass
            answers.append(reply)
        return answers[1:]


@pytest.mark.parametrize("event_daemon_first", [True, False])
def test_proxmox_command_line_starts_and_is_driven(tmp_path: Path,
                                                   event_daemon_first: bool) -> None:  # fmt: skip
    d = tmp_path
    events = socket.socket(socket.AF_UNIX)
    if event_daemon_first:  # qmeventd is up: the second monitor greets it at once
        events.bind(str(d / "qmeventd.sock"))
        events.listen(1)
    done = subprocess.run([sys.executable, "-m", "qmp_server", "--compat", "7.2",
                           *proxmox_line(d)], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr  # the parent returns once the monitors listen
    pid = int((d / "100.pid").read_text())
    try:
        status, name, cpus, balloon = _qmp(str(d / "100.qmp"), "query-status", "query-name",
                                           "query-cpus-fast", "query-balloon")  # fmt: skip
        assert status["return"] == {"status": "running", "singlestep": False, "running": True}
        assert name["return"] == {"name": "vm100"}
        assert len(cpus["return"]) == 2  # type: ignore[arg-type]
        assert balloon["return"] == {"actual": 256 << 20}
        if not event_daemon_first:  # QEMU retries every 5 s until qmeventd listens
            events.bind(str(d / "qmeventd.sock"))
            events.listen(1)
        events.settimeout(15)
        conn, _ = events.accept()
        with conn:
            greeting = json.loads(conn.makefile("rb").readline())
            assert greeting["QMP"]["version"]["qemu"]["major"] == 7
    finally:
        events.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if not (d / "100.pid").exists():
                break
            time.sleep(0.05)
