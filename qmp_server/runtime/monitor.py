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
import ipaddress
import logging
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from qmp_server.commands.dispatch import Dispatcher, MonitorState
from qmp_server.engine.fds import MonitorFds, NamedFds, ReceivedFds
from qmp_server.runtime.client_queue import ClientQueue
from qmp_server.runtime.fd_socket import FdListener, FdSocket, as_fd_socket, attach_fd_sink
from qmp_server.wire.encoder import encode_line
from qmp_server.wire.parser import JSONStreamer

__all__ = ["ChardevSpec", "QMPConnection", "QMPMonitor", "exposure_warning"]

logger = logging.getLogger(__name__)

#: A client that stops reading is cut off (its connection aborted) rather than have more than
#: this much output queued for it, counting the replies to the chunk of input being processed.
MAX_PENDING_OUTPUT = 64 << 20


def exposure_warning(
    sockname: tuple[Any, ...] | list[Any], spec_host: str, port: int
) -> str | None:
    """The start-up warning for a QMP TCP socket bound beyond loopback (None when loopback).

    QMP has no authentication: anyone who can connect controls the VM.

    >>> exposure_warning(("127.0.0.1", 4444), "127.0.0.1", 4444) is None
    True
    >>> exposure_warning(("0.0.0.0", 4444), "", 4444)
    'QMP monitor on 0.0.0.0:4444 is reachable from other hosts; QMP has no authentication'
    """
    try:
        address = ipaddress.ip_address(str(sockname[0]).split("%", 1)[0])
    except ValueError:
        return None
    if address.is_loopback:
        return None
    shown = spec_host or str(address)
    return f"QMP monitor on {shown}:{port} is reachable from other hosts; QMP has no authentication"


def _listening_unix_socket(path: str) -> socket.socket:
    """A listening unix socket at ``path``, created 0600, that appears only once it listens.

    It is bound under a temporary name in the same directory, made to listen, then renamed into
    place: a client that waits for the file to exist never meets ``ECONNREFUSED`` (the window
    between ``bind`` and ``listen``).
    """
    tmp = os.path.join(os.path.dirname(path) or ".", f".qmp-{os.getpid()}-{id(path):x}")
    if len(os.fsencode(tmp)) >= 100:  # sun_path is 108 bytes: no room for a temporary name
        tmp = path
    sock = FdListener(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old_umask = os.umask(0o177)  # the socket is created 0600
        try:
            sock.bind(tmp)
        finally:
            os.umask(old_umask)
        sock.listen(100)
        if tmp != path:
            os.rename(tmp, path)
    except BaseException:
        sock.close()
        if tmp != path:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
    return sock


async def close_endpoint(
    server: asyncio.AbstractServer | None, connections: list[Any], spec: ChardevSpec
) -> None:
    """Stop listening, close the clients, remove a unix socket we created (QMP and HMP)."""
    if server is not None:
        server.close()
    for conn in connections:
        conn.close()
    if server is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1.0)
    if spec.server and spec.kind == "unix":
        with contextlib.suppress(FileNotFoundError):
            os.unlink(spec.path)


@dataclass(frozen=True, slots=True)
class ChardevSpec:
    """Where a monitor lives: ``unix`` path or ``tcp`` host/port, listening or connecting out,
    or an inherited socket (``fd``: connected, the client itself; or listening with ``server``).
    """

    kind: str  # "unix" | "tcp" | "fd"
    path: str = ""
    host: str = ""
    port: int = 0
    server: bool = True
    wait: bool = False
    fd: int = -1
    #: ``reconnect=N``: a client socket that may fail to connect; retried every N seconds
    reconnect: int = 0
    #: the ``-chardev`` text, for QEMU's error messages that quote it
    option: str = field(default="", compare=False)

    def describe(self) -> str:
        if self.kind == "fd":
            return f"fd:{self.fd}"
        return f"unix:{self.path}" if self.kind == "unix" else f"tcp:{self.host}:{self.port}"


class QMPConnection(asyncio.Protocol):
    """One client of a monitor: bytes -> streamer -> dispatcher -> encoder -> bytes."""

    def __init__(self, monitor: QMPMonitor) -> None:
        self.monitor = monitor
        self.streamer = JSONStreamer()
        self.received_fds = ReceivedFds()
        self.state = MonitorState(
            oob_offered=True, fds=MonitorFds(self.received_fds, monitor.named_fds)
        )
        self.transport: asyncio.Transport | None = None
        self.active = False
        self.closed = False
        self._batch: list[bytes] | None = None

    # -- asyncio.Protocol -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        attach_fd_sink(transport, self.received_fds.receive)
        self.monitor.attach(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.received_fds.discard()  # descriptors nobody took die with the connection
        self.monitor.detach(self)

    def data_received(self, data: bytes) -> None:
        if not self.active:  # should not happen: reading is paused until activation
            return
        self._batch = batch = []
        transport = self.transport
        queued = transport.get_write_buffer_size() if transport is not None else 0
        try:
            dispatch = self.monitor.dispatcher.dispatch
            for message in self.streamer.feed(data):
                reply = dispatch(message, self.state)
                if reply is not None:
                    line = encode_line(reply)
                    batch.append(line)
                    queued += len(line)
                    if queued > MAX_PENDING_OUTPUT:
                        # one chunk of pipelined input must not queue past the bound either
                        batch.clear()
                        self._cut_off()
                        break
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
        if transport.get_write_buffer_size() + len(data) > MAX_PENDING_OUTPUT:
            self._cut_off()
            return
        transport.write(data)

    def _cut_off(self) -> None:
        """The client does not read: drop it rather than queue past the bound (policy)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        logger.warning("%s: client does not read its replies; disconnecting", self.monitor)
        transport.abort()

    def freeze(self) -> None:
        """Read and answer nothing more; what is queued still goes out (process exit)."""
        self.active = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class QMPMonitor(ClientQueue[QMPConnection]):
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
        super().__init__()
        self._reconnect: asyncio.Future[None] | None = None
        self.server: asyncio.AbstractServer | None = None
        self.address: Any = None
        #: ``getfd`` names: they belong to the monitor and outlive its clients (QEMU)
        self.named_fds = NamedFds()

    def __str__(self) -> str:
        return f"monitor {self.spec.describe()}"

    def greeting(self) -> dict[str, Any]:
        return self._greeting()

    async def start(self) -> None:
        """Listen (or connect out).

        :raise OSError: with a message that names the socket (``Failed to bind socket to ...``),
            printed by the runtime as ``qmp-server: ...`` before it exits 1.
        """
        if not self.spec.server and self.spec.reconnect > 0 and self.spec.kind != "fd":
            # QEMU starts without the peer and keeps trying (Proxmox's qmeventd socket)
            self._reconnect = asyncio.ensure_future(self._keep_connected())
            return
        try:
            await self._start()
        except OSError as err:
            reason = os.strerror(err.errno) if err.errno else str(err)
            spec = self.spec
            if spec.kind == "fd":
                what = f"-chardev {spec.option}: Failed to listen on fd socket"
                raise OSError(f"{what}: {reason}") from None
            where = spec.path if spec.kind == "unix" else f"{spec.host}:{spec.port}"
            verb = "bind socket to" if spec.server else "connect to"
            raise OSError(f"Failed to {verb} '{where}': {reason}") from None

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        spec = self.spec
        if spec.kind == "fd":
            await self._start_inherited(loop)
        elif spec.server:
            if spec.kind == "unix":
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(spec.path)
                self.server = await loop.create_unix_server(
                    lambda: QMPConnection(self), sock=_listening_unix_socket(spec.path)
                )
                self.address = spec.path
            else:
                self.server = await loop.create_server(
                    lambda: QMPConnection(self), spec.host or None, spec.port, reuse_address=True
                )
                self.address = self.server.sockets[0].getsockname()[:2]
                for sock in self.server.sockets:
                    warning = exposure_warning(sock.getsockname(), spec.host, self.address[1])
                    if warning is not None:
                        with contextlib.suppress(OSError, ValueError):
                            sys.stderr.write(f"qmp-server: warning: {warning}\n")
                            sys.stderr.flush()
                        break
        elif spec.kind == "unix":
            client = FdSocket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                client.setblocking(False)
                await loop.sock_connect(client, spec.path)
                await loop.create_unix_connection(lambda: QMPConnection(self), sock=client)
            except BaseException:
                client.close()
                raise
            self.address = spec.path
        else:
            await loop.create_connection(lambda: QMPConnection(self), spec.host, spec.port)
            self.address = (spec.host, spec.port)

    async def _start_inherited(self, loop: asyncio.AbstractEventLoop) -> None:
        """An inherited socket: listen on it (``server=on``) or serve it as the client."""
        sock = as_fd_socket(socket.socket(fileno=self.spec.fd), listening=self.spec.server)
        try:
            if self.spec.server:
                sock.listen(100)
                self.server = await loop.create_server(lambda: QMPConnection(self), sock=sock)
                self.address = sock.getsockname()
            else:
                await loop.connect_accepted_socket(lambda: QMPConnection(self), sock)
                self.address = self.spec.describe()
        except BaseException:
            sock.close()
            raise

    async def _keep_connected(self) -> None:
        while True:
            if self.current is None:
                with contextlib.suppress(OSError):
                    await self._start()
            await asyncio.sleep(self.spec.reconnect)

    def freeze(self) -> None:
        """The process is exiting: no command is answered from now on (QEMU's exit() leaves
        no window in which a client could still be served), queued output is flushed."""
        for conn in self.connections():
            conn.freeze()

    def broadcast(self, line: bytes) -> None:
        if self.current is not None:
            self.current.send_event(line)

    async def close(self) -> None:
        if self._reconnect is not None:
            self._reconnect.cancel()
        await close_endpoint(self.server, self.connections(), self.spec)
