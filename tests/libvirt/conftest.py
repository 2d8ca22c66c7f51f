"""Fixtures for the libvirt tests: a private libvirt host and qmp-server as its emulator."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _host import LibvirtHost, libvirt_unavailable, link_hosts

REPO = Path(__file__).resolve().parents[2]


def emulator_wrapper(directory: Path, compat: str) -> Path:
    """An executable libvirt can name as ``<emulator>``: qmp-server emulating ``compat``.

    libvirt runs the emulator with a cleared environment, so the wrapper names the interpreter
    and the checkout explicitly.  It also runs it in ``directory`` rather than libvirt's ``/``:
    a relative path the emulator writes to (a bug) then stays inside the test's tree.
    """
    path = directory / f"qmp-server-{compat}"
    path.write_text(
        "#!/bin/sh\n"
        f"cd {directory} || exit 1\n"
        f"PYTHONPATH={REPO} exec {sys.executable} -m qmp_server --compat {compat} \"$@\"\n"
    )
    path.chmod(0o755)
    return path


@pytest.fixture(scope="session")
def libvirt_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = libvirt_unavailable()
    if reason is not None:
        pytest.skip(reason)
    # a short path: unix socket paths under it must stay below 108 bytes
    root = Path(os.environ.get("QMP_SERVER_LIBVIRT_ROOT", "/tmp")) / f"qsl-{os.getpid()}"
    root.mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture(scope="session")
def libvirt_host(libvirt_root: Path) -> Iterator[LibvirtHost]:
    host = LibvirtHost(libvirt_root / "a", "qsl-host-a")
    host.start()
    yield host
    host.stop()


@pytest.fixture(scope="session")
def emulators(libvirt_root: Path) -> dict[str, Path]:
    bindir = libvirt_root / "bin"
    bindir.mkdir(exist_ok=True)
    return {c: emulator_wrapper(bindir, c) for c in ("7.2", "10.0")}


@pytest.fixture(scope="session")
def libvirt_pair(libvirt_host: LibvirtHost, libvirt_root: Path
                 ) -> Iterator[tuple[LibvirtHost, LibvirtHost, str]]:  # fmt: skip
    """A second host joined to the first by a veth pair: (source, destination, its address)."""
    other = LibvirtHost(libvirt_root / "b", "qsl-host-b")
    other.start()
    _, address = link_hosts(libvirt_host, other)
    yield libvirt_host, other, address
    other.stop()
