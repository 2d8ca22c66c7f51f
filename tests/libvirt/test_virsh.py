"""libvirt 9.0 drives qmp-server as it drives QEMU: ``virsh`` against a private libvirtd.

Nothing between libvirt and qmp-server: the domain's ``<emulator>`` is a two-line wrapper that
runs ``python -m qmp_server --compat VERSION`` with libvirt's own command line.  The probe
(``virsh domcapabilities``) is compared with the real QEMU 7.2's where that QEMU is installed.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from _host import LibvirtHost

DOMAIN_XML = """\
<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <emulator>{emulator}</emulator>
    <serial type='pty'/>
    <console type='pty'/>
  </devices>
</domain>
"""


def _domcaps(host: LibvirtHost, emulator: Path) -> str:
    return host.virsh("domcapabilities", "--emulatorbin", str(emulator), "--arch", "x86_64",
                      "--virttype", "qemu").stdout  # fmt: skip


def _wait_state(host: LibvirtHost, name: str, state: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        seen = host.virsh("domstate", name, check=False).stdout.strip()
        if seen == state:
            return seen
        time.sleep(0.2)
    return seen


@pytest.mark.parametrize("compat", ["7.2", "10.0"])
def test_domcapabilities_probe_succeeds(libvirt_host: LibvirtHost, emulators: dict[str, Path],
                                        compat: str) -> None:  # fmt: skip
    caps = _domcaps(libvirt_host, emulators[compat])
    machine = "pc-i440fx-7.2" if compat == "7.2" else "pc-i440fx-10.0"
    assert f"<machine>{machine}</machine>" in caps
    # the CPU models come from query-cpu-definitions / query-cpu-model-expansion
    assert re.search(r"<mode name='maximum' supported='yes'>", caps), caps


def test_domcapabilities_equal_real_qemu(libvirt_host: LibvirtHost, emulators: dict[str, Path],
                                         libvirt_root: Path) -> None:  # fmt: skip
    real = Path("/usr/bin/qemu-system-x86_64")
    if not real.exists():
        pytest.skip("QEMU 7.2 is not installed (scripts/test.sh installs qemu-system-x86)")
    ours = _domcaps(libvirt_host, emulators["7.2"]).replace(str(emulators["7.2"]), "EMULATOR")
    theirs = _domcaps(libvirt_host, real).replace(str(real), "EMULATOR")
    # What qmp-server does not model, and so does not advertise: a display (libvirt offers
    # sdl/vnc/egl-headless/dbus graphics only when the schema has their commands) and block
    # jobs (incremental backup).
    for display in ("sdl", "vnc", "egl-headless", "dbus"):
        theirs = theirs.replace(f"        <value>{display}</value>\n", "", 1)
    theirs = theirs.replace("<backup supported='yes'/>", "<backup supported='no'/>")
    assert ours == theirs


@pytest.mark.parametrize("compat", ["7.2", "10.0"])
def test_domain_life(libvirt_host: LibvirtHost, emulators: dict[str, Path], libvirt_root: Path,
                     compat: str) -> None:  # fmt: skip
    name = f"life-{compat.replace('.', '')}"
    xml = libvirt_root / f"{name}.xml"
    xml.write_text(DOMAIN_XML.format(name=name, emulator=emulators[compat]))
    v = libvirt_host.virsh
    v("define", str(xml))
    try:
        v("start", name)
        assert _wait_state(libvirt_host, name, "running") == "running"
        # the serial console's pty, which libvirt read back from query-chardev
        assert v("ttyconsole", name).stdout.strip().startswith("/dev/pts/")
        status = v("qemu-monitor-command", name, '{"execute":"query-status"}').stdout
        assert '"status":"running"' in status.replace(" ", "")
        assert "Migration status" not in v("qemu-monitor-command", name, "--hmp",
                                            "info migrate").stdout  # fmt: skip
        v("suspend", name)
        assert _wait_state(libvirt_host, name, "paused") == "paused"
        v("resume", name)
        assert _wait_state(libvirt_host, name, "running") == "running"
        assert "Job type:" in v("domjobinfo", name).stdout
        assert "actual 65536" in v("dommemstat", name).stdout
        assert "state.state=1" in v("domstats", name).stdout
        v("domdirtyrate-calc", name, "--seconds", "1")  # calc-dirty-rate, then query-dirty-rate
        deadline = time.monotonic() + 30
        while "dirtyrate.calc_status=2" not in (stats := v("domstats", "--dirtyrate",
                                                            name).stdout):  # fmt: skip
            assert time.monotonic() < deadline, stats
            time.sleep(0.3)
        assert "dirtyrate.megabytes_per_second=" in stats
        v("reset", name)  # system_reset: the guest reboots and keeps running
        assert _wait_state(libvirt_host, name, "running") == "running"
        v("shutdown", name)  # a button pressed while the guest reboots counts once it is up
        assert _wait_state(libvirt_host, name, "shut off") == "shut off"
        v("start", name)
        v("destroy", name)
        assert _wait_state(libvirt_host, name, "shut off") == "shut off"
    finally:
        v("destroy", name, check=False)
        v("undefine", name, check=False)


def test_save_and_restore(libvirt_host: LibvirtHost, emulators: dict[str, Path],
                          libvirt_root: Path) -> None:  # fmt: skip
    name = "saved"
    xml = libvirt_root / f"{name}.xml"
    xml.write_text(DOMAIN_XML.format(name=name, emulator=emulators["7.2"]))
    v = libvirt_host.virsh
    v("define", str(xml))
    image = libvirt_root / "saved.img"
    try:
        v("start", name)
        v("save", name, str(image))
        assert _wait_state(libvirt_host, name, "shut off") == "shut off"
        # libvirt's header and the stream of an idle 64 MiB pc guest (~0.5 MB, as from QEMU)
        assert image.stat().st_size > 400_000
        v("restore", str(image))
        assert _wait_state(libvirt_host, name, "running") == "running"
    finally:
        v("destroy", name, check=False)
        v("undefine", name, check=False)


@pytest.mark.parametrize("compat", ["7.2", "10.0"])
def test_virsh_migrate_live_between_two_hosts(
    libvirt_pair: tuple[LibvirtHost, LibvirtHost, str], emulators: dict[str, Path],
    libvirt_root: Path, compat: str,
) -> None:  # fmt: skip
    source, dest, address = libvirt_pair
    name = f"mig-{compat.replace('.', '')}"
    xml = libvirt_root / f"{name}.xml"
    xml.write_text(DOMAIN_XML.format(name=name, emulator=emulators[compat]))
    source.virsh("define", str(xml))
    try:
        source.virsh("start", name)
        source.virsh("migrate", "--live", "--verbose", name, dest.uri,
                     "--migrateuri", f"tcp://{address}")  # fmt: skip
        assert _wait_state(dest, name, "running") == "running"
        assert source.virsh("domstate", name).stdout.strip() == "shut off"
        status = dest.virsh("qemu-monitor-command", name, '{"execute":"query-migrate"}').stdout
        assert '"status":"completed"' in status.replace(" ", "")
    finally:
        dest.virsh("destroy", name, check=False)
        source.virsh("destroy", name, check=False)
        source.virsh("undefine", name, check=False)
