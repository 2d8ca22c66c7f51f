"""Two-process migration rigs for tests: qmp-server processes with QMPClients collecting events.

Shared by tests/runtime/test_migration.py, tests/runtime/test_switchover_ack_profiles.py and
tests/hardening; the ``rig`` and ``sockdir`` fixtures live in tests/conftest.py.  The helpers at
the end (:func:`migrate_and_finish`, :func:`assert_same_guest`, :func:`ack_never_comes`, ...) are
the steps those modules share.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from qemu.qmp import QMPClient
from qemu.qmp.events import EventListener
from server_process import ServerProcess, free_port

Start = Callable[..., ServerProcess]
MiB = 1 << 20
#: Hard cap of any single wait in these tests (a hung migration fails the test, never hangs it).
WAIT = 30.0


@dataclass
class Side:
    """One qmp-server process and a connected QMPClient collecting its events."""

    server: ServerProcess
    qmp: QMPClient
    events: list[dict[str, Any]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    _since: int = 0

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

    def names(self, kinds: tuple[str, ...] = ("MIGRATION", "MIGRATION_PASS", "STOP", "RESUME")
              ) -> list[str]:  # fmt: skip
        """The events so far as compact strings: ``setup``, ``PASS 1``, ``STOP`` ..."""
        out = []
        for ev in self.events:
            if ev["event"] not in kinds:
                continue
            if ev["event"] == "MIGRATION":
                out.append(ev["data"]["status"])
            elif ev["event"] == "MIGRATION_PASS":
                out.append(f"PASS {ev['data']['pass']}")
            else:
                out.append(ev["event"])
        return out

    def stamp(self, name: str, status: str | None = None) -> float:
        """Server timestamp (seconds) of the first event ``name`` (with ``status``)."""
        for ev in self.events:
            if ev["event"] == name and (status is None or ev["data"]["status"] == status):
                ts = ev["timestamp"]
                return float(ts["seconds"]) + ts["microseconds"] / 1e6
        raise AssertionError(f"no {name} {status or ''} event in {self.names()}")

    def mark(self) -> None:
        """Make :meth:`wait_status` ignore the events received so far (a new migration)."""
        self._since = len(self.events)

    async def wait_status(self, *statuses: str, within: float = WAIT) -> str:
        """Wait for a MIGRATION event with one of ``statuses`` (since :meth:`mark`); return it."""

        async def poll() -> str:
            while True:
                for ev in self.events[self._since :]:
                    if ev["event"] == "MIGRATION" and ev["data"]["status"] in statuses:
                        return str(ev["data"]["status"])
                await asyncio.sleep(0.01)

        try:
            return await asyncio.wait_for(poll(), within)
        except TimeoutError:
            raise AssertionError(f"no MIGRATION {statuses} within {within}s: {self.names()}"
                                 ) from None  # fmt: skip

    async def wait_event(self, name: str, within: float = WAIT) -> None:
        """Wait for an event ``name`` received since :meth:`mark`."""

        async def poll() -> None:
            while True:
                if any(ev["event"] == name for ev in self.events[self._since :]):
                    return
                await asyncio.sleep(0.01)

        try:
            await asyncio.wait_for(poll(), within)
        except TimeoutError:
            raise AssertionError(f"no {name} within {within}s: {self.names()}") from None

    async def wait_query(self, pred: Callable[[dict[str, Any]], bool],
                         within: float = WAIT) -> dict[str, Any]:  # fmt: skip
        """Poll query-migrate until ``pred`` holds; return that answer."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            info = await self.run("query-migrate")
            if pred(info):
                return dict(info)
            if loop.time() > deadline:
                raise AssertionError(f"query-migrate never matched: {info}")
            await asyncio.sleep(0.02)

    async def wait_bytes(self, at_least: int, within: float = WAIT) -> None:
        """Poll query-migrate until ``at_least`` bytes moved (the migration still running)."""
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
            with contextlib.suppress(Exception):  # a killed peer: nothing left to close
                await asyncio.wait_for(self.qmp.disconnect(), 5)


class Rig:
    """Starts processes and keeps their clients; everything is torn down by the fixture."""

    def __init__(self, start: Start, sockdir: str) -> None:
        self._start = start
        self.sockdir = sockdir
        self.sides: list[Side] = []
        self._n = 0

    def unix_uri(self) -> str:
        self._n += 1
        return f"unix:{self.sockdir}/mig{self._n}.sock"

    async def side(self, *args: str, events: bool = True, **kwargs: Any) -> Side:
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
        if events:
            await side.caps(events=True)
        return side

    async def pair(
        self,
        *common: str,
        src: tuple[str, ...] = (),
        dst: tuple[str, ...] = (),
        caps: dict[str, bool] | None = None,
        dst_caps: dict[str, bool] | None = None,
        uri: str | None = None,
    ) -> tuple[Side, Side, str]:
        """A source and a deferred destination, listening on ``uri`` (TCP by default)."""
        source = await self.side(*common, *src)
        dest = await self.side(*common, *dst, "-incoming", "defer")
        if caps:
            await source.caps(**caps)
        if dst_caps if dst_caps is not None else caps:
            await dest.caps(**(dst_caps if dst_caps is not None else caps or {}))
        uri = uri or f"tcp:127.0.0.1:{free_port()}"
        await dest.run("migrate-incoming", {"uri": uri})
        return source, dest, uri

    async def close(self) -> None:
        for side in self.sides:
            await side.close()


# ---- shared migration steps ---------------------------------------------------------------------


async def migrate_and_finish(source: Side, dest: Side, uri: str) -> None:
    """``migrate`` and wait until both sides end; the source must reach ``completed``."""
    source.mark()
    await source.run("migrate", {"uri": uri})
    assert await source.wait_status("completed", "failed", "cancelled") == "completed", (
        await source.run("query-migrate")
    )
    await dest.wait_status("completed", "failed")


async def assert_same_guest(source: Side, dest: Side) -> None:
    """Nothing was lost: both sides report the same guest (RAM and device) digests."""
    a, b = await source.digest(), await dest.digest()
    assert a["algorithm"] == "sha256"
    assert a == b


def exit_code(server: ServerProcess, timeout: float = 10.0) -> int:
    return server.proc.wait(timeout)


async def ack_never_comes(
    rig: Rig,
    *profile: str,
    cap: str = "precopy-initial-data",
    src: tuple[str, ...] = ("--dirty-rate", "1M"),
) -> tuple[Side, Side, dict[str, Any]]:
    """The ACK capability ``cap`` on the source only, no device: the destination never ACKs.

    ``profile``: extra options of both processes (``--compat``); ``src``: the source's only.
    Returns once the source was seen waiting (``active``, running, no STOP, its passes still
    counting), with the guest digest it had before ``migrate``.
    """
    source, dest, uri = await rig.pair(
        *profile, "-m", "64M", "--guest-fill", "random",
        src=src,
        caps={"return-path": True, cap: True},
        dst_caps={"return-path": True},
    )  # fmt: skip
    before = await source.digest()
    await source.params(max_bandwidth=0)
    source.mark()
    await source.run("migrate", {"uri": uri})
    first = await source.wait_query(lambda i: i.get("status") == "active"
                                    and i["ram"]["dirty-sync-count"] >= 3)  # fmt: skip
    # bounded: the passes go on while the ACK is missing, so this matches within the wait
    second = await source.wait_query(
        lambda i: i["ram"]["dirty-sync-count"] >= first["ram"]["dirty-sync-count"] + 3
        if i.get("status") == "active" else True
    )  # fmt: skip
    assert second["status"] == "active", second
    assert "expected-downtime" in second and "setup-time" in second
    assert "STOP" not in source.names()
    assert await source.status() == "running"
    return source, dest, before
