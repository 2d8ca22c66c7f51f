"""Fixtures for the hardening tests: processes with QMPClients, always torn down."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from qemu.qmp import QMPClient
from qemu.qmp.events import EventListener
from server_process import ServerProcess

Start = Callable[..., ServerProcess]
MiB = 1 << 20
#: Hard cap of any single wait (a hung migration fails the test, never hangs it).
WAIT = 30.0


def vm_rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB, from /proc/PID/status."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


@dataclass
class Side:
    server: ServerProcess
    qmp: QMPClient
    events: list[dict[str, Any]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    async def run(self, cmd: str, args: dict[str, Any] | None = None) -> Any:
        return await self.qmp.execute(cmd, args)

    async def caps(self, **caps: bool) -> None:
        await self.run(
            "migrate-set-capabilities",
            {"capabilities": [{"capability": k.replace("_", "-"), "state": v}
                              for k, v in caps.items()]},
        )  # fmt: skip

    async def params(self, **params: Any) -> None:
        await self.run(
            "migrate-set-parameters", {k.replace("_", "-"): v for k, v in params.items()}
        )

    async def wait_status(self, *statuses: str, within: float = WAIT) -> str:
        async def poll() -> str:
            while True:
                for ev in self.events:
                    if ev["event"] == "MIGRATION" and ev["data"]["status"] in statuses:
                        return str(ev["data"]["status"])
                await asyncio.sleep(0.01)

        try:
            return await asyncio.wait_for(poll(), within)
        except TimeoutError:
            seen = [e["data"]["status"] for e in self.events if e["event"] == "MIGRATION"]
            raise AssertionError(f"no MIGRATION {statuses} within {within}s: {seen}") from None

    async def wait_bytes(self, at_least: int, within: float = WAIT) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            info = await self.run("query-migrate")
            if info.get("ram", {}).get("transferred", 0) >= at_least:
                return
            assert info.get("status") in ("setup", "active"), info
            assert loop.time() < deadline, info
            await asyncio.sleep(0.02)

    async def digest(self) -> dict[str, Any]:
        return dict(await self.run("x-query-guest-digest"))

    async def status(self) -> str:
        return str((await self.run("query-status"))["status"])

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.qmp.runstate.name != "IDLE":
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.qmp.disconnect(), 5)


class Rig:
    def __init__(self, start: Start, sockdir: str) -> None:
        self._start = start
        self.sockdir = sockdir
        self.sides: list[Side] = []

    async def side(self, *args: str, **kwargs: Any) -> Side:
        server = self._start(*args, **kwargs)
        qmp = QMPClient(f"side{len(self.sides)}")
        await qmp.connect(server.socket)
        side = Side(server, qmp)
        listener = EventListener()
        qmp.register_listener(listener)

        async def collect() -> None:
            while True:
                side.events.append(dict(await listener.get()))

        side.task = asyncio.get_running_loop().create_task(collect())
        self.sides.append(side)
        await side.caps(events=True)
        return side

    async def close(self) -> None:
        for side in self.sides:
            await side.close()


@pytest.fixture
def sockdir() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="qmphard-") as path:
        yield path


@pytest.fixture
async def rig(qmp_server: Start, sockdir: str) -> AsyncIterator[Rig]:
    r = Rig(qmp_server, sockdir)
    yield r
    await r.close()


async def exit_code(server: ServerProcess, within: float = 15.0) -> int | None:
    """The process's exit status, waited for without blocking the loop (None: still running)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while server.proc.poll() is None and loop.time() < deadline:  # noqa: ASYNC110 (a process)
        await asyncio.sleep(0.02)
    return server.proc.poll()
