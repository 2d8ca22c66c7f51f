"""A real fleet process (``--fleet-size N --http``) for the fleet REST tests, one per module."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from server_process import ServerProcess, free_port

TOKEN = "fleet-token-for-tests"


@dataclass
class FleetServer:
    """The fleet process: its monitor ``socket``, VM sockets in ``directory``, the REST mirror."""

    proc: subprocess.Popen[bytes]
    directory: Path
    base_url: str
    token: str

    @property
    def socket(self) -> str:
        return str(self.directory / "fleet.sock")

    def vm_socket(self, name: str) -> str:
        return str(self.directory / f"{name}.sock")

    def vm_args(self, name: str, *extra: str) -> list[str]:
        """A new VM's command line, like the ones the fleet was started with."""
        return ["-m", "64M", "-qmp", f"unix:{self.vm_socket(name)},server=on,wait=off", *extra]

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=10, **kwargs)

    def stop(self) -> bytes:
        return ServerProcess(self.proc, self.socket).stop()[1]


#: The fleet's host link (``--link-bandwidth``): wide enough that it slows no test.
LINK_BANDWIDTH = "1G"


def start_fleet(directory: Path, size: int = 3, timeout: float = 15.0) -> FleetServer:
    """``python -m qmp_server --fleet-size SIZE --link-bandwidth 1G --http ... -- -m 64M -qmp
    unix:DIR/{name}.sock,...``."""
    port = free_port()
    token_file = directory / "token"
    token_file.write_text(TOKEN + "\n")
    argv = [sys.executable, "-m", "qmp_server", "--fleet-size", str(size),
            "--link-bandwidth", LINK_BANDWIDTH, "--http", f"127.0.0.1:{port}",
            "--http-token-file", str(token_file),
            "-qmp", f"unix:{directory / 'fleet.sock'},server=on,wait=off", "--",
            "-m", "64M", "-qmp", f"unix:{directory}/{{name}}.sock,server=on,wait=off"]  # fmt: skip
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env)  # fmt: skip
    server = FleetServer(proc, directory, f"http://127.0.0.1:{port}", TOKEN)
    deadline = time.monotonic() + timeout
    while True:
        try:
            health = httpx.get(server.base_url + "/healthz", timeout=1)
            listening = all(os.path.exists(server.vm_socket(f"vm{i}")) for i in range(size))
            if health.status_code == 200 and health.json()["vms"] == size and listening:
                return server
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"the fleet exited: {server.stop().decode()}")
        if time.monotonic() > deadline:
            server.stop()
            raise TimeoutError("the fleet's REST mirror did not come up")
        time.sleep(0.05)
