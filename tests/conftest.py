from __future__ import annotations

import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from migration_rig import Rig
from server_process import ServerProcess, start_server


@pytest.fixture
def qmp_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Factory: ``qmp_server(*args, monitors=1)`` starts a real qmp-server process."""
    started: list[ServerProcess] = []

    def start(*args: str, **kwargs: Any) -> ServerProcess:
        server = start_server(tmp_path, args, name=f"s{len(started)}-", **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def sockdir() -> Iterator[str]:
    # unix socket paths must stay short (108 bytes): not under pytest's tmp_path
    with tempfile.TemporaryDirectory(prefix="qmpmig-") as path:
        yield path


@pytest.fixture
async def rig(qmp_server: Callable[..., ServerProcess], sockdir: str) -> AsyncIterator[Rig]:
    """Two-process migration rig (tests/migration_rig.py), torn down after the test."""
    r = Rig(qmp_server, sockdir)
    yield r
    await r.close()
