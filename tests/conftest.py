from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

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
