"""A fleet process driven as an orchestrator drives it: qemu.qmp on the fleet monitor and on
each VM's own monitor (issue 16, item 1)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import ExecuteError, QMPClient

REPO = Path(__file__).resolve().parents[2]

FLEET = """
[fleet]
qmp = "unix:{d}/fleet.sock,server=on,wait=off"

[defaults]
m = "64M"
qmp = "unix:{d}/{{name}}.sock,server=on,wait=off"
args = ["-name", "{{name}}"]

[[vm]]
name = "web{{index}}"
count = 2
compat = "7.2"

[[vm]]
name = "db"
compat = "10.0"
S = true
"""


def _start(args: list[str], wait: list[Path], timeout: float = 30) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "qmp_server", *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    deadline = time.monotonic() + timeout
    for path in wait:
        while not path.exists():
            if proc.poll() is not None:
                raise AssertionError((proc.stderr.read() if proc.stderr else b"").decode())
            assert time.monotonic() < deadline, f"{path} did not appear"
            time.sleep(0.02)
    return proc


@pytest.fixture
def fleet(sockdir: str) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    d = Path(sockdir)
    (d / "fleet.toml").write_text(FLEET.format(d=d))
    proc = _start(["--fleet", str(d / "fleet.toml")], [d / "fleet.sock", d / "db.sock"])
    yield proc, d
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


async def _client(path: Path) -> QMPClient:
    client = QMPClient(path.stem)
    await client.connect(str(path))
    return client


async def _event(client: QMPClient, name: str) -> dict[str, Any]:
    while True:
        event = await asyncio.wait_for(client.events.get(), 10)
        if event["event"] == name:
            return dict(event)


async def test_each_vm_is_its_own_qemu(fleet: tuple[subprocess.Popen[bytes], Path]) -> None:
    _proc, d = fleet
    mon = await _client(d / "fleet.sock")
    infos = await mon.execute("query-fleet")
    assert [(v["name"], v["status"]) for v in infos] == [
        ("web0", "running"), ("web1", "running"), ("db", "prelaunch"),
    ]  # fmt: skip
    assert infos[0]["monitors"] == [f"unix:{d}/web0.sock"]
    web1, db = await _client(d / "web1.sock"), await _client(d / "db.sock")
    assert (await web1.execute("query-version"))["qemu"] == {"major": 7, "minor": 2, "micro": 0}
    assert (await db.execute("query-version"))["qemu"]["major"] == 10
    assert await web1.execute("query-name") == {"name": "web1"}
    await db.execute("cont")
    assert (await db.execute("query-status"))["status"] == "running"
    assert [v["status"] for v in await mon.execute("query-fleet")][2] == "running"
    # a VM's quit ends that VM only
    await web1.execute("quit")
    removed = await _event(mon, "FLEET_VM_REMOVED")
    assert removed["data"] == {"name": "web1", "reason": "host-qmp-quit"}
    assert not (d / "web1.sock").exists()
    assert [v["name"] for v in await mon.execute("query-fleet")] == ["web0", "db"]
    await db.disconnect()
    with contextlib.suppress(EOFError):  # the VM closed the connection (as QEMU's quit does)
        await web1.disconnect()
    await mon.disconnect()


async def test_vms_come_and_go(fleet: tuple[subprocess.Popen[bytes], Path]) -> None:
    proc, d = fleet
    mon = await _client(d / "fleet.sock")
    args = ["--compat", "8.1", "-m", "32M", "-qmp", f"unix:{d}/{{name}}.sock,server=on,wait=off"]
    await mon.execute("fleet-vm-add", {"name": "new", "args": args})
    assert (await _event(mon, "FLEET_VM_ADDED"))["data"] == {"name": "new"}
    new = await _client(d / "new.sock")
    assert (await new.execute("query-version"))["qemu"]["minor"] == 1
    with pytest.raises(ExecuteError, match="a VM named 'new' is already in the fleet"):
        await mon.execute("fleet-vm-add", {"name": "new", "args": []})
    with pytest.raises(ExecuteError, match="bad: -m foo: Parameter 'size' expects"):
        await mon.execute("fleet-vm-add", {"name": "bad", "args": ["-m", "foo"]})
    with pytest.raises(ExecuteError, match="-daemonize is an option of the fleet"):
        await mon.execute("fleet-vm-add", {"name": "bad", "args": ["-daemonize"]})
    same = ["-qmp", f"unix:{d}/web0.sock,server=on,wait=off"]
    with pytest.raises(ExecuteError, match=r"web0\.sock: VM 'web0' already listens there"):
        await mon.execute("fleet-vm-add", {"name": "thief", "args": same})
    with pytest.raises(ExecuteError, match="VM name 'a b' must be"):
        await mon.execute("fleet-vm-add", {"name": "a b", "args": []})
    # removing a VM is a signal to its process: SHUTDOWN on its monitor, then it is gone
    await mon.execute("fleet-vm-remove", {"name": "new"})
    shutdown = await _event(new, "SHUTDOWN")
    assert shutdown["data"] == {"guest": False, "reason": "host-signal"}
    assert (await _event(mon, "FLEET_VM_REMOVED"))["data"]["name"] == "new"
    with pytest.raises(ExecuteError, match="VM 'new' is not in the fleet"):
        await mon.execute("fleet-vm-remove", {"name": "new"})
    # a VM whose -incoming cannot listen leaves the fleet; the fleet runs on
    busy = f"unix:{d}/nodir/x.sock"
    await mon.execute("fleet-vm-add", {"name": "dst", "args": ["-incoming", busy]})
    assert (await _event(mon, "FLEET_VM_REMOVED"))["data"] == {"name": "dst", "reason": "failed"}
    assert len(await mon.execute("query-fleet")) == 3
    with contextlib.suppress(EOFError):
        await new.disconnect()
    await mon.execute("quit")
    with contextlib.suppress(EOFError):
        await mon.disconnect()
    assert proc.wait(10) == 0
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    assert "qmp-server: dst: -incoming unix:" in stderr
    assert not list(d.glob("*.sock"))


async def test_a_signal_ends_every_vm(fleet: tuple[subprocess.Popen[bytes], Path]) -> None:
    proc, d = fleet
    clients = [await _client(d / f"{n}.sock") for n in ("web0", "web1", "db")]
    proc.send_signal(signal.SIGTERM)
    for client in clients:
        event = await _event(client, "SHUTDOWN")
        assert event["data"] == {"guest": False, "reason": "host-signal"}
    assert proc.wait(10) == 0
    for client in clients:
        with contextlib.suppress(EOFError):
            await client.disconnect()
    assert not list(d.glob("*.sock"))


def test_a_bad_vm_stops_the_fleet_at_start(sockdir: str) -> None:
    d = Path(sockdir)
    path = d / "f.toml"
    path.write_text('[[vm]]\nname = "ok"\n[[vm]]\nname = "broken"\nargs = ["-global", "x"]\n')
    run = subprocess.run(
        [sys.executable, "-m", "qmp_server", "--fleet", str(path)],
        capture_output=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=60,
    )  # fmt: skip
    assert run.returncode == 1
    assert run.stderr.decode().startswith("qmp-server: broken: -global x: ")
    run = subprocess.run(
        [sys.executable, "-m", "qmp_server", "--fleet-size", "2", "-m", "1G"],
        capture_output=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=60,
    )  # fmt: skip
    assert run.returncode == 1
    assert b"-m: not an option of the fleet process" in run.stderr


def test_daemonize_and_pidfile(sockdir: str) -> None:
    d = Path(sockdir)
    run = subprocess.run(
        [sys.executable, "-m", "qmp_server", "--fleet-size", "3", "-daemonize",
         "-pidfile", str(d / "fleet.pid"), "--",
         "-m", "32M", "-qmp", f"unix:{d}/{{name}}.sock,server=on,wait=off"],
        capture_output=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    # the parent returns once every VM listens
    assert sorted(p.name for p in d.glob("*.sock")) == ["vm0.sock", "vm1.sock", "vm2.sock"]
    pid = int((d / "fleet.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while (d / "fleet.pid").exists():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert not list(d.glob("*.sock"))
