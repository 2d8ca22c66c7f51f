"""HMP monitors on sockets (``-monitor``, ``-mon mode=readline``): the asyncio adapter around
the pure :mod:`qmp_server.hmp` core.

Like QEMU's: a banner and the ``(qemu) `` prompt on connect, the typed line echoed as QEMU's
line editor redraws it, output lines ending ``\\r\\n``, events never printed.  One client at a
time; later clients wait their turn (the QMP monitors' policy).  A ``migrate`` without ``-d``
suspends the monitor until the migration ends: input is kept, not read, and the prompt comes
back afterwards.  Listening sockets are made by :mod:`qmp_server.runtime.monitor`'s helpers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections import deque
from typing import TYPE_CHECKING, Any

from qmp_server.hmp.interpreter import HMPInterpreter, crlf
from qmp_server.hmp.readline import LineEditor
from qmp_server.runtime.client_queue import ClientQueue
from qmp_server.runtime.monitor import ChardevSpec, _listening_unix_socket, close_endpoint

if TYPE_CHECKING:
    from qmp_server.engine.vm import VirtualMachine

__all__ = ["HMPConnection", "HMPMonitor", "banner"]

logger = logging.getLogger(__name__)

PROMPT = "(qemu) "
#: how often a suspended monitor looks whether its migration ended (QEMU: every second)
_POLL = 0.05
_RUNNING = frozenset(
    {
        "setup",
        "active",
        "pre-switchover",
        "device",
        "cancelling",
        "postcopy-active",
        "postcopy-paused",
        "postcopy-recover",
        "wait-unplug",
        "colo",
    }
)


def banner(vm: VirtualMachine) -> str:
    major, minor, micro = vm.profile.version
    return f"QEMU {major}.{minor}.{micro} monitor - type 'help' for more information\r\n"


class HMPConnection(asyncio.Protocol):
    """One client: bytes -> line editor -> interpreter -> text."""

    def __init__(self, monitor: HMPMonitor) -> None:
        self.monitor = monitor
        self.editor = LineEditor()
        self.transport: asyncio.Transport | None = None
        self.active = False
        self.closed = False
        self.pending: deque[str] = deque()
        self.suspended = False
        self._waiter: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.monitor.attach(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.monitor.detach(self)

    def activate(self) -> None:
        assert self.transport is not None
        self.active = True
        self._write(banner(self.monitor.vm) + PROMPT)
        self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if not self.active:
            return
        self.pending.extend(data.decode("latin-1"))
        self._process()
        self.monitor.after_input()

    def _process(self) -> None:
        out: list[str] = []
        while self.pending and not self.suspended:
            echo, done = self.editor.feed_char(self.pending.popleft())
            out.append(echo)
            if done:
                out.append(self._run(self.editor.take_line()))
        self._write("".join(out))

    def _run(self, line: str) -> str:
        result = self.monitor.interpreter.run(line, interactive=True)
        text = crlf(result.text)
        if result.wait_migration:
            self.suspended = True
            self._waiter = asyncio.get_running_loop().create_task(
                self._wait_migration(result.block)
            )
            return text
        return text + PROMPT

    async def _wait_migration(self, block: bool) -> None:
        vm = self.monitor.vm
        # QEMU polls the migration state with a timer too; no event carries every end state
        while vm.source_migration_status in _RUNNING and not self.closed:  # noqa: ASYNC110
            await asyncio.sleep(_POLL)
        self.suspended = False
        self._write(("\r\n" if block else "") + PROMPT)
        self._process()

    def _write(self, text: str) -> None:
        transport = self.transport
        if text and transport is not None and not transport.is_closing():
            transport.write(text.encode("latin-1", "replace"))

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class HMPMonitor(ClientQueue[HMPConnection]):
    """A listening HMP endpoint serving one client at a time."""

    def __init__(self, spec: ChardevSpec, interpreter: HMPInterpreter, after_input: Any) -> None:
        self.spec = spec
        self.interpreter = interpreter
        self.vm = interpreter.ctx.vm
        self.after_input = after_input
        super().__init__()
        self.server: asyncio.AbstractServer | None = None
        self.address: object = None

    def __str__(self) -> str:
        return f"HMP monitor {self.spec.describe()}"

    async def start(self) -> None:
        try:
            await self._start()
        except OSError as err:
            reason = os.strerror(err.errno) if err.errno else str(err)
            where = (
                self.spec.path
                if self.spec.kind == "unix"
                else (f"{self.spec.host}:{self.spec.port}")
            )
            verb = "bind socket to" if self.spec.server else "connect to"
            raise OSError(f"Failed to {verb} '{where}': {reason}") from None

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        spec = self.spec
        factory = lambda: HMPConnection(self)  # noqa: E731
        if spec.kind == "fd":
            sock = socket.socket(fileno=spec.fd)
            if spec.server:
                sock.listen(100)
                self.server = await loop.create_server(factory, sock=sock)
            else:
                await loop.connect_accepted_socket(factory, sock)
        elif spec.server and spec.kind == "unix":
            with contextlib.suppress(FileNotFoundError):
                os.unlink(spec.path)
            self.server = await loop.create_unix_server(
                factory, sock=_listening_unix_socket(spec.path)
            )
        elif spec.server:
            self.server = await loop.create_server(
                factory, spec.host or None, spec.port, reuse_address=True
            )
            self.address = self.server.sockets[0].getsockname()[:2]
        elif spec.kind == "unix":
            await loop.create_unix_connection(factory, spec.path)
        else:
            await loop.create_connection(factory, spec.host, spec.port)

    def freeze(self) -> None:
        for conn in self.connections():
            conn.active = False
            if conn.transport is not None and not conn.transport.is_closing():
                conn.transport.pause_reading()

    def broadcast(self, line: bytes) -> None:
        """Events are not printed on a human monitor."""

    async def close(self) -> None:
        await close_endpoint(self.server, self.connections(), self.spec)
