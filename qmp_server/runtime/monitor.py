"""QMP monitors on sockets: the asyncio adapter around the pure wire and command layers.

One :class:`QMPMonitor` per ``-qmp``/``-mon`` option.  Like a QEMU socket chardev it serves one
client at a time: later clients are accepted but get no greeting and are not read until the
current one leaves; then the next gets a fresh greeting and negotiates from scratch.

Output ordering rule: while a connection processes a chunk of input, everything addressed to it
(replies and events raised by its own commands, e.g. SHUTDOWN before ``quit``'s reply) is
queued in order and written once at the end of the chunk; other connections get events at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qmp_server.commands.dispatch import Dispatcher, MonitorState
from qmp_server.wire.encoder import encode_line
from qmp_server.wire.parser import JSONStreamer

__all__ = ["ChardevSpec", "QMPConnection", "QMPMonitor"]

logger = logging.getLogger(__name__)

#: A client that stops reading is cut off once this much output is queued for it.
MAX_PENDING_OUTPUT = 64 << 20


@dataclass(frozen=True, slots=True)
class ChardevSpec:
    """Where a monitor lives: ``unix`` path or ``tcp`` host/port, listening or connecting out."""

    kind: str  # "unix" | "tcp"
    path: str = ""
    host: str = ""
    port: int = 0
    server: bool = True
    wait: bool = False

    def describe(self) -> str:
        return f"unix:{self.path}" if self.kind == "unix" else f"tcp:{self.host}:{self.port}"


class QMPConnection(asyncio.Protocol):
    """One client of a monitor: bytes -> streamer -> dispatcher -> encoder -> bytes."""

    def __init__(self, monitor: QMPMonitor) -> None:
        self.monitor = monitor
        self.streamer = JSONStreamer()
        self.state = MonitorState(oob_offered=True)
        self.transport: asyncio.Transport | None = None
        self.active = False
        self.closed = False
        self._batch: list[bytes] | None = None

    # -- asyncio.Protocol -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.monitor.attach(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.monitor.detach(self)

    def data_received(self, data: bytes) -> None:
        if not self.active:  # should not happen: reading is paused until activation
            return
        self._batch = batch = []
        try:
            dispatch = self.monitor.dispatcher.dispatch
            for message in self.streamer.feed(data):
                reply = dispatch(message, self.state)
                if reply is not None:
                    batch.append(encode_line(reply))
        finally:
            self._batch = None
            if batch:
                self._write(b"".join(batch))
        self.monitor.after_input()

    # -- output ---------------------------------------------------------------------------
    def activate(self) -> None:
        """This client's turn: greet it and start reading."""
        assert self.transport is not None
        self.active = True
        self._write(encode_line(self.monitor.greeting()))
        self.transport.resume_reading()

    def send_event(self, line: bytes) -> None:
        if not (self.active and self.state.negotiated) or self.closed:
            return
        if self._batch is not None:
            self._batch.append(line)
        else:
            self._write(line)

    def _write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size() > MAX_PENDING_OUTPUT:
            logger.warning("%s: client does not read its replies; disconnecting", self.monitor)
            transport.abort()
            return
        transport.write(data)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class QMPMonitor:
    """A listening (or connecting) QMP endpoint serving one client at a time."""

    def __init__(
        self,
        spec: ChardevSpec,
        dispatcher: Dispatcher,
        greeting: Callable[[], dict[str, Any]],
        after_input: Callable[[], None],
    ) -> None:
        self.spec = spec
        self.dispatcher = dispatcher
        self._greeting = greeting
        self.after_input = after_input
        self.current: QMPConnection | None = None
        self.waiting: deque[QMPConnection] = deque()
        self.server: asyncio.AbstractServer | None = None
        self.address: Any = None

    def __str__(self) -> str:
        return f"monitor {self.spec.describe()}"

    def greeting(self) -> dict[str, Any]:
        return self._greeting()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        spec = self.spec
        if spec.server:
            if spec.kind == "unix":
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(spec.path)
                old_umask = os.umask(0o177)  # the socket is created 0600
                try:
                    self.server = await loop.create_unix_server(
                        lambda: QMPConnection(self), spec.path
                    )
                finally:
                    os.umask(old_umask)
                self.address = spec.path
            else:
                self.server = await loop.create_server(
                    lambda: QMPConnection(self), spec.host or None, spec.port, reuse_address=True
                )
                self.address = self.server.sockets[0].getsockname()[:2]
        elif spec.kind == "unix":
            await loop.create_unix_connection(lambda: QMPConnection(self), spec.path)
            self.address = spec.path
        else:
            await loop.create_connection(lambda: QMPConnection(self), spec.host, spec.port)
            self.address = (spec.host, spec.port)

    def attach(self, conn: QMPConnection) -> None:
        assert conn.transport is not None
        conn.transport.pause_reading()
        if self.current is None:
            self.current = conn
            conn.activate()
        else:
            self.waiting.append(conn)

    def detach(self, conn: QMPConnection) -> None:
        if conn is self.current:
            self.current = None
            while self.waiting:
                nxt = self.waiting.popleft()
                if not nxt.closed:
                    self.current = nxt
                    nxt.activate()
                    break
        else:
            with contextlib.suppress(ValueError):
                self.waiting.remove(conn)

    def broadcast(self, line: bytes) -> None:
        if self.current is not None:
            self.current.send_event(line)

    def connections(self) -> list[QMPConnection]:
        conns = [self.current] if self.current is not None else []
        return conns + list(self.waiting)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for conn in self.connections():
            conn.close()
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 1.0)
        if self.spec.server and self.spec.kind == "unix":
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.spec.path)
