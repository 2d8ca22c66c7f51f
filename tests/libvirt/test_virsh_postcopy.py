"""libvirt 9.0's postcopy against qmp-server: ``virsh migrate --postcopy`` between two hosts.

The guest dirties memory faster than ``--bandwidth`` lets precopy send it (``x-set-dirty-rate``
through ``virsh qemu-monitor-command``), so precopy alone never converges: a migration that
completes has switched to postcopy.  libvirt switches by itself after the first pass
(``--postcopy-after-precopy``), or when a second virsh asks (``virsh migrate-postcopy``), and
shows the domain as ``paused (post-copy)`` on the source and ``running (post-copy)`` on the
destination until the destination holds every page.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _host import LibvirtHost
from test_virsh import DOMAIN_XML, _wait_state

#: 32 MiB keeps a precopy pass short; the dirty rate is far above every bandwidth used here.
_MEMORY = "32"
_DIRTY_RATE = 200_000_000

Pair = tuple[LibvirtHost, LibvirtHost, str]


def _reason(host: LibvirtHost, name: str) -> str:
    return host.virsh("domstate", "--reason", name, check=False).stdout.strip()


def _qmp(host: LibvirtHost, name: str, command: str, **arguments: object) -> Any:
    """One QMP command through libvirt; its ``return`` value."""
    request: dict[str, object] = {"execute": command}
    if arguments:
        request["arguments"] = arguments
    reply = host.virsh("qemu-monitor-command", name, json.dumps(request)).stdout
    return json.loads(reply)["return"]


def _wait(predicate: Callable[[], bool], what: Callable[[], str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what()}")


@pytest.fixture
def busy_guest(libvirt_pair: Pair, emulators: dict[str, Path], libvirt_root: Path,
               request: pytest.FixtureRequest) -> Iterator[str]:  # fmt: skip
    """A running domain on the source whose guest dirties 200 MB/s; cleaned up on both hosts."""
    source, dest, _ = libvirt_pair
    compat: str = request.param
    name = f"{request.node.originalname.removeprefix('test_')[:12]}-{compat.replace('.', '')}"
    xml = libvirt_root / f"{name}.xml"
    xml.write_text(DOMAIN_XML.format(name=name, emulator=emulators[compat])
                   .replace("'MiB'>64<", f"'MiB'>{_MEMORY}<"))  # fmt: skip
    source.virsh("define", str(xml))
    try:
        source.virsh("start", name)
        _qmp(source, name, "x-set-dirty-rate", rate=_DIRTY_RATE)
        yield name
    finally:
        dest.virsh("destroy", name, check=False)
        source.virsh("destroy", name, check=False)
        source.virsh("undefine", name, check=False)


def _migrate_in_background(source: LibvirtHost, dest: LibvirtHost, address: str, name: str,
                           *flags: str) -> subprocess.Popen[str]:  # fmt: skip
    argv = ["virsh", "-c", source.uri, "migrate", "--live", "--postcopy", *flags, name, dest.uri,
            "--migrateuri", f"tcp://{address}"]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _switch_when_active(source: LibvirtHost, name: str) -> None:
    """``virsh migrate-postcopy`` once QEMU's migration runs (before, the capability is not
    set yet and the emulator refuses: "Enable postcopy with migrate_set_capability ...")."""
    _wait(lambda: _qmp(source, name, "query-migrate").get("status") == "active",
          lambda: f"the source's migration to be active: {_qmp(source, name, 'query-migrate')}")
    source.virsh("migrate-postcopy", name)


def _ended(proc: subprocess.Popen[str], timeout: float = 60.0) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err.strip()


@pytest.mark.parametrize("busy_guest", ["7.2", "10.0"], indirect=True)
def test_postcopy_after_precopy(libvirt_pair: Pair, busy_guest: str) -> None:
    source, dest, address = libvirt_pair
    name = busy_guest
    # 32 MiB/s against 200 MB/s dirtied: the first pass ends, precopy cannot converge, and
    # libvirt sends migrate-start-postcopy on the MIGRATION_PASS event of the second pass
    source.virsh("migrate", "--live", "--postcopy", "--postcopy-after-precopy", "--bandwidth",
                 "32", name, dest.uri, "--migrateuri", f"tcp://{address}")  # fmt: skip
    assert _wait_state(dest, name, "running") == "running"
    assert _reason(dest, name) == "running (migrated)"
    assert _reason(source, name) == "shut off (migrated)"
    info = source.virsh("domjobinfo", "--completed", name).stdout
    assert "Outgoing migration" in info
    assert "Postcopy requests:" in info  # libvirt's one postcopy figure (ram.postcopy-requests)


@pytest.mark.parametrize("busy_guest", ["7.2", "10.0"], indirect=True)
def test_migrate_postcopy_from_another_virsh(libvirt_pair: Pair, busy_guest: str) -> None:
    source, dest, address = libvirt_pair
    name = busy_guest
    # 1 MiB/s of precopy never ends; postcopy at 1 MiB/s lasts until we have seen it
    proc = _migrate_in_background(source, dest, address, name, "--bandwidth", "1",
                                  "--postcopy-bandwidth", "1")  # fmt: skip
    try:
        _switch_when_active(source, name)
        _wait(lambda: _reason(dest, name) == "running (post-copy)" or proc.poll() is not None,
              lambda: f"the destination to run in post-copy: {_reason(dest, name)}")  # fmt: skip
        on_source = _reason(source, name)
        deadline = time.monotonic() + 3.0
        while on_source != "paused (post-copy)" and time.monotonic() < deadline:
            time.sleep(0.1)
            on_source = _reason(source, name)
        # query-migrate in postcopy-active, as libvirt reads it
        assert "Outgoing migration" in source.virsh("domjobinfo", name).stdout
        # max-postcopy-bandwidth, raised while postcopy runs: the rest goes at once
        source.virsh("migrate-setspeed", name, "1000", "--postcopy")
        assert _ended(proc) == (0, "")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _reason(dest, name) == "running (migrated)"
    assert _reason(source, name) == "shut off (migrated)"
    assert on_source == "paused (post-copy)"


@pytest.mark.parametrize("busy_guest", ["7.2", "10.0"], indirect=True)
def test_paused_postcopy_resumes(libvirt_pair: Pair, busy_guest: str) -> None:
    source, dest, address = libvirt_pair
    name = busy_guest
    # postcopy at 1 MiB/s: 32 s if nothing stops it, time enough to pause it
    proc = _migrate_in_background(source, dest, address, name, "--bandwidth", "1",
                                  "--postcopy-bandwidth", "1")  # fmt: skip
    try:
        _switch_when_active(source, name)
        # the destination must have loaded the device state (its RESUME) before the pause,
        # or QEMU's destination fails instead of pausing
        _wait(lambda: _reason(dest, name) == "running (post-copy)",
              lambda: f"the destination to run: {_reason(dest, name)}")
        # libvirt's way to pause postcopy: migrate-pause on the source
        source.virsh("domjobabort", "--postcopy", name)
        code, err = _ended(proc)
        assert code == 1 and "failed in post-copy phase" in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _reason(source, name) == "paused (post-copy failed)"
    assert _reason(dest, name) == "running (post-copy failed)"
    # libvirt: migrate-recover on the destination, getfd + migrate resume:true on the source
    resumed = source.virsh("migrate", "--live", "--postcopy", "--postcopy-resume", name,
                           dest.uri, "--migrateuri", f"tcp://{address}", "--postcopy-bandwidth",
                           "100", check=False, timeout=6)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert _reason(dest, name) == "running (migrated)"
    assert _reason(source, name) == "shut off (migrated)"
