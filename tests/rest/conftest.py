"""Fixtures for the REST mirror: the real qmp-server process with ``--http``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_process import ServerProcess, free_port

TOKEN = "s3cret-token-for-tests"


@dataclass
class RestServer:
    """A running qmp-server with a QMP unix socket and the REST mirror at ``base_url``."""

    process: ServerProcess
    base_url: str
    token: str | None

    @property
    def socket(self) -> str:
        return self.process.socket

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=10, **kwargs)

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}


def _wait_http(base_url: str, server: ServerProcess, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(base_url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if server.proc.poll() is not None:
            raise RuntimeError(f"qmp-server exited: {server.stop()[1].decode()}")
        if time.monotonic() > deadline:
            raise TimeoutError("the REST mirror did not come up")
        time.sleep(0.05)


@pytest.fixture
def rest_server(
    qmp_server: Callable[..., ServerProcess], tmp_path: Path
) -> Iterator[Callable[..., RestServer]]:
    """Factory: ``rest_server(*qemu_args, token=False, cors=None)``."""

    def start(*args: str, token: bool = False, cors: str | None = None,
              **kwargs: Any) -> RestServer:  # fmt: skip
        port = free_port()
        argv = [*args, "--http", f"127.0.0.1:{port}"]
        secret = None
        if token:
            secret = TOKEN
            path = tmp_path / f"token-{port}"
            path.write_text(secret + "\n")
            argv += ["--http-token-file", str(path)]
        if cors:
            argv += ["--http-cors", cors]
        process = qmp_server(*argv, **kwargs)
        base_url = f"http://127.0.0.1:{port}"
        _wait_http(base_url, process)
        return RestServer(process, base_url, secret)

    yield start
