"""Migration transports: a URI's address, and the connection a migration stream runs over.

Why a module of its own: the source and the destination speak the same byte format over the
same kinds of connection, and neither should know how a socket is tuned, a file synced or an
``exec:`` command reaped.  Contract: :func:`parse_uri` turns a URI into an :class:`Address`
(pure; :class:`ValueError` carries QEMU's text for a bad address, :class:`LookupError` means an
unknown transport); :func:`connect` opens the source's end, :func:`listen` /
:func:`open_for_read` / :func:`exec_channel` the destination's; every end is a
:class:`Channel`, whose owner calls :meth:`Channel.finish` (source, all sent) or
:meth:`Channel.abort` (anything else) exactly once.  Only tcp/unix channels carry a return path.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import os
import socket
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qmp_server.engine.page_run import PageRun
from qmp_server.errors import CommandError
from qmp_server.runtime.socket_writer import SocketWriter, recv_nowait

if TYPE_CHECKING:
    from qmp_server.engine.stream import Part
    from qmp_server.runtime.host_link import HostLink

__all__ = [
    "NOT_SEEKABLE",
    "Address",
    "Buffer",
    "Channel",
    "command_uri",
    "connect",
    "exec_channel",
    "fd_channel",
    "fd_not_found",
    "listen",
    "listening_address",
    "open_for_read",
    "open_for_write",
    "parse_uri",
    "seekable_fd",
    "write_error",
]

#: Socket buffers (the kernel caps them at net.core.[rw]mem_max).
RECEIVE_BUFFER = _SOCK_BUF = 4 << 20
#: Bytes the writer thread may have queued before the sender waits (socket_writer).
_WRITER_LIMIT = 8 << 20

Buffer = bytes | bytearray | memoryview

#: ``mapped-ram`` on a transport that cannot seek (both sides; live 10.0)
NOT_SEEKABLE = "Migration requires seekable transport (e.g. file)"


@dataclass(frozen=True)
class Address:
    """A parsed migration URI."""

    scheme: str  # tcp | unix | exec | file | fd
    host: str = ""
    port: int = 0
    path: str = ""  # unix/file: the path; fd: the descriptor's name
    command: str = ""
    offset: int = 0  # file: where the stream starts in the file

    def describe(self) -> str:
        if self.scheme == "tcp":
            return f"{self.host}:{self.port}"
        return self.path or self.command


def parse_uri(uri: str, *, file_ok: bool) -> Address:
    """Parse a migration URI; :class:`ValueError` carries QEMU's text for a bad address."""
    if uri.startswith("tcp:"):
        rest = uri[4:]
        host, sep, port = rest.rpartition(":")
        if not sep or not port:
            raise ValueError(f"error parsing address '{rest}'")
        host = host.strip("[]")
        try:
            number = int(port)
        except ValueError:
            raise ValueError(f"error parsing port in address '{rest}'") from None
        return Address("tcp", host=host or "0.0.0.0", port=number)
    if uri.startswith("unix:"):
        return Address("unix", path=uri[5:])
    if uri.startswith("exec:"):
        return Address("exec", command=uri[5:])
    if uri.startswith("fd:"):
        return Address("fd", path=uri[3:])
    if file_ok and uri.startswith("file:"):
        path, _, option = uri[5:].partition(",")
        offset = 0
        if option:
            try:
                offset = int(option.removeprefix("offset="), 0)
            except ValueError:
                raise ValueError(f"file URI has bad offset {option}") from None
        return Address("file", path=path, offset=offset)
    raise LookupError(uri)


def command_uri(uri: str) -> Address:
    """A URI given to ``migrate-recover`` or a resuming ``migrate``, with QEMU's errors."""
    try:
        return parse_uri(uri, file_ok=False)
    except LookupError:
        raise CommandError(f"unknown migration protocol: {uri}") from None
    except ValueError as err:
        raise CommandError(str(err)) from None


def listening_address(sock: socket.socket, address: Address) -> list[dict[str, Any]]:
    """``query-migrate``'s ``socket-address`` of a listener: QEMU names an IPv6 socket's
    family ``ipv6`` (``tcp:[::]:PORT``, live 7.2 and 10.0), an IPv4 one's ``ipv4``."""
    if address.scheme != "tcp":
        return [{"type": "unix", "path": address.path}]
    host, port = sock.getsockname()[:2]
    family = "ipv6" if sock.family == socket.AF_INET6 else "ipv4"
    return [{"type": "inet", "host": host, "port": str(port), family: True}]


def fd_not_found(address: Address) -> str:
    """QEMU's text for an ``fd:`` URI whose name the monitor does not hold (getfd)."""
    return f"File descriptor named '{address.path}' has not been found"


def seekable_fd(fd: int) -> bool:
    """A descriptor ``mapped-ram`` can use: a regular file (not a socket or a pipe)."""
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return False


def fd_channel(fd: int, *, outgoing: bool) -> Channel:
    """A channel over a descriptor handed over by ``getfd`` or inherited (``-incoming fd:N``).

    A socket carries a return path, as in QEMU; a pipe or a file (libvirt's ``virsh save``
    writes through a pipe) is a one-way stream read and written in the executor.  The
    channel owns the descriptor.
    """
    if stat.S_ISSOCK(os.fstat(fd).st_mode):
        channel = Channel(socket.socket(fileno=fd), return_path=True)
        if outgoing:
            channel.start_writer()
        return channel
    raw = io.FileIO(fd, "wb" if outgoing else "rb")
    file: io.BufferedIOBase = io.BufferedWriter(raw) if outgoing else io.BufferedReader(raw)
    return Channel(file=file)


def write_error(err: OSError, channel: Channel | None = None) -> str:
    """QEMU's error-desc for a failed write on the migration channel (an ``exec:`` command's
    pipe is a "command" to QEMU, anything else a "socket")."""
    number = err.errno or errno.EPIPE
    what = "command" if channel is not None and channel.proc is not None else "socket"
    return f"Unable to write to {what}: {os.strerror(number)}"


class Channel:
    """One migration connection.

    A socket (``tcp:``, ``unix:``, and ``exec:`` through a socketpair with the command's
    stdin or stdout), without asyncio streams: the outgoing stream is gather writes
    (``sendmsg``) of the encoder's buffers by a writer thread (:mod:`socket_writer`), receives
    go straight into the decoder's buffer (``recv_into`` on the loop).  Or a file (``file:``),
    read and written in the loop's executor.  Only a tcp/unix socket carries a return path.
    """

    def __init__(
        self,
        sock: socket.socket | None = None,
        *,
        file: io.BufferedIOBase | None = None,
        proc: asyncio.subprocess.Process | None = None,
        return_path: bool = False,
        buffer: int = _SOCK_BUF,
        writer_limit: int = _WRITER_LIMIT,
    ) -> None:
        self.sock = sock
        self.file = file
        self.proc = proc
        self.has_return_path = return_path
        self.loop = asyncio.get_running_loop()
        self._writer: SocketWriter | None = None
        self._writer_limit = writer_limit
        if sock is not None:
            sock.setblocking(False)
            for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, opt, buffer)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def _readable(self) -> None:
        """Wait until the socket has data, without blocking the loop (it may be blocking)."""
        assert self.sock is not None
        fut: asyncio.Future[None] = self.loop.create_future()
        fd = self.sock.fileno()

        def ready() -> None:
            if not fut.done():
                fut.set_result(None)

        self.loop.add_reader(fd, ready)
        try:
            await fut
        finally:
            self.loop.remove_reader(fd)

    def start_writer(self) -> None:
        """Hand the socket's writes to a thread (the source's bulk stream; see socket_writer)."""
        if self.sock is not None and self._writer is None:
            self._writer = SocketWriter(self.sock, self.loop, self._writer_limit)

    def enable_zero_copy(self) -> None:
        """``zero-copy-send``: page data goes with ``MSG_ZEROCOPY`` (see runtime/zero_copy)."""
        self.start_writer()
        assert self._writer is not None
        self._writer.enable_zero_copy()

    @property
    def kernel_copied(self) -> bool:
        """Every zero-copy send of this channel was copied by the kernel after all."""
        return self._writer is None or self._writer.kernel_copied

    @property
    def writer_thread_id(self) -> int | None:
        """The native id of the writer thread, while it runs (None: no writer thread)."""
        return None if self._writer is None else self._writer.native_id

    async def send(self, parts: Sequence[Part]) -> int:
        """Write every buffer, in order; returns the byte count.  A socket's writer thread
        builds the deferred page runs (:class:`~qmp_server.engine.page_run.PageRun`); a file's
        are built here."""
        defer = self.file is None and self.sock is not None
        views: list[memoryview | PageRun] = [
            p if isinstance(p, PageRun) and defer
            else p.materialize() if isinstance(p, PageRun)
            else memoryview(p)
            for p in parts if len(p)
        ]  # fmt: skip
        total = sum(v.nbytes for v in views)
        if self.file is not None:
            await self.loop.run_in_executor(None, self.file.writelines, views)  # type: ignore[arg-type]
            return total
        self.start_writer()  # a socket's outgoing stream always goes through the writer
        assert self._writer is not None
        await self._writer.send(views, total)
        return total

    async def seek(self, offset: int) -> None:
        """A file channel goes on at ``offset`` (``mapped-ram`` leaves a block's bitmap and
        pages between two parts of the stream); what was buffered is written or dropped."""
        assert self.file is not None
        await self.loop.run_in_executor(None, self.file.seek, offset)

    async def flush(self) -> None:
        """Wait until everything sent so far is in the kernel (the writer thread is idle)."""
        if self._writer is not None:
            await self._writer.drain()

    def send_nowait(self, data: bytes) -> None:
        """A small return-path message: written at once, or by a task if the socket is full."""
        sock = self.sock
        if sock is None or sock.fileno() < 0:
            return
        try:
            sent = sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            return
        if sent < len(data):
            self.loop.create_task(self.loop.sock_sendall(sock, data[sent:]))

    async def recv_into(self, view: memoryview) -> int:
        """Receive into ``view``; 0 at the end of the stream."""
        if self.file is not None:
            n: int = await self.loop.run_in_executor(None, self.file.readinto, view)
            return n
        assert self.sock is not None
        return await self.loop.sock_recv_into(self.sock, view)

    async def recv(self, size: int) -> bytes:
        sock = self.sock
        assert sock is not None
        if self._writer is None:
            return await self.loop.sock_recv(sock, size)
        while True:  # the writer made the socket blocking: never block the loop
            try:
                return recv_nowait(sock, size)
            except (BlockingIOError, InterruptedError):
                await self._readable()

    async def command_exited(self, within: float) -> bool:
        """``exec:``: whether the command has ended (waiting at most ``within`` seconds)."""
        if self.proc is None:
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.proc.wait()), within)
        return self.proc.returncode is not None

    def shutdown(self) -> None:
        """Shut both directions down (``migrate-pause``): a pending receive sees the end of
        the stream at once, on this side and the peer's; :meth:`abort` then closes."""
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.file.close()
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    async def finish(self) -> None:
        """The source sent everything: flush, close its direction, reap an exec command.
        A file is flushed here and synced by :meth:`close_file`, after the migration
        completed (QEMU syncs it as it closes the channel, in the cleanup)."""
        if self.file is not None:
            await self.loop.run_in_executor(None, self.file.flush)
            return
        if self._writer is not None:
            await self._writer.drain()
            self._writer.stop()
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_WR)
        if self.proc is not None:
            await self.proc.wait()
            if self.sock is not None:
                self.sock.close()


    async def close_file(self) -> None:
        """A finished file: synced to its disk, then closed (nothing for other channels)."""
        if self.file is not None and not self.file.closed:
            file = self.file
            await self.loop.run_in_executor(None, _flush_and_sync, file)
            file.close()


def _flush_and_sync(file: io.BufferedIOBase) -> None:
    file.flush()
    if stat.S_ISREG(os.fstat(file.fileno()).st_mode):  # a pipe (fd:) cannot be synced
        os.fsync(file.fileno())


async def connect(
    address: Address, file: io.BufferedIOBase | None = None, *, link: HostLink | None = None
) -> Channel:
    """The source's end of a tcp/unix/exec/file address (``file``: already opened for it).

    A socket's writes go through the writer thread from the start.  ``link``: the fleet's
    modelled NIC (:mod:`~qmp_server.runtime.host_link`); a tcp/unix connection goes through it.
    """
    loop = asyncio.get_running_loop()
    if address.scheme in ("tcp", "unix"):
        sockaddr: Any
        if address.scheme == "tcp":
            infos = await loop.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
            family, kind, proto, _, sockaddr = infos[0]
            sock = socket.socket(family, kind, proto)
        else:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sockaddr = address.path
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, sockaddr)
        except BaseException:
            sock.close()
            raise
        if link is not None:
            sock = await link.attach(sock)
            channel = Channel(
                sock, return_path=True, buffer=link.socket_buffer, writer_limit=link.writer_limit
            )
        else:
            channel = Channel(sock, return_path=True)
        channel.start_writer()
        return channel
    if address.scheme == "exec":
        channel = await exec_channel(address.command, outgoing=True)
        channel.start_writer()
        return channel
    return Channel(file=file or open_for_write(address.path, address.offset))


async def exec_channel(command: str, *, outgoing: bool) -> Channel:
    """``exec:``: ``/bin/sh -c command`` with a socketpair as its stdin (the source's stream,
    ``outgoing``) or its stdout (the destination's); the channel reaps or kills it."""
    ours, theirs = socket.socketpair()
    fd = theirs.fileno()
    stdin, stdout = (fd, None) if outgoing else (None, fd)
    try:
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", command, stdin=stdin, stdout=stdout
        )
    finally:
        theirs.close()
    return Channel(ours, proc=proc)


def listen(address: Address, backlog: int = 1) -> socket.socket:
    """A non-blocking tcp/unix listener (a stale unix socket file is replaced); ``backlog``:
    the connections that may wait to be accepted (QEMU's: one per channel it expects)."""
    sockaddr: Any
    if address.scheme == "tcp":
        infos = socket.getaddrinfo(
            address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, kind, proto, _, sockaddr = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(address.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sockaddr = address.path
    try:
        sock.bind(sockaddr)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def open_for_write(path: str, offset: int = 0) -> io.BufferedIOBase:
    file = open(path, "wb")  # noqa: SIM115 (the channel owns and closes it)
    if offset:
        file.seek(offset)  # file: migration with an offset (QEMU truncates, then seeks)
    return file


def open_for_read(path: str, offset: int = 0) -> io.BufferedIOBase:
    file = open(path, "rb")  # noqa: SIM115 (the channel owns and closes it)
    if offset:
        file.seek(offset)
    return file
