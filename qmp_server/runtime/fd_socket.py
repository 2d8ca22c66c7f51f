"""Unix-socket monitors that receive file descriptors (SCM_RIGHTS) with the bytes of a command.

asyncio's socket transport reads with ``sock.recv()``, which drops ancillary data.  Instead of
a transport of our own, the monitor's unix sockets are :class:`FdSocket` objects whose
``recv`` is a ``recvmsg``: the bytes go to the protocol as before, and descriptors that came
with them are handed to the connection's sink first, so they are waiting when the command that
arrived with them is dispatched (QEMU keeps them on the chardev the same way).  Listening
sockets are :class:`FdListener`, whose ``accept`` makes FdSockets.  Descriptors received while
no sink is attached are closed; all are received close-on-exec.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import os
import socket
from collections.abc import Callable
from typing import Any

__all__ = ["FdListener", "FdSocket", "as_fd_socket", "attach_fd_sink"]

#: The kernel's SCM_MAX_FD: the most descriptors one message can carry.
_MAX_FDS = 253
_ANC_SIZE = socket.CMSG_SPACE(_MAX_FDS * array.array("i").itemsize)
_RECV_FLAGS = getattr(socket, "MSG_CMSG_CLOEXEC", 0)
#: asyncio asks for 256 KiB per read; a buffer that large is above glibc's mmap threshold, so
#: every read would map and unmap it (~15 us here).  QMP input comes in small commands: 64 KiB
#: per read keeps the buffer on the heap, and longer input just arrives in more reads.
_READ_CAP = 64 << 10


def _descriptors(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % fds.itemsize
            fds.frombytes(data[:usable])
    return list(fds)


class FdSocket(socket.socket):
    """A connected unix stream socket whose reads keep passed descriptors."""

    __slots__ = ("fd_sink",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fd_sink: Callable[[list[int]], None] | None = None

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data, ancdata, _, _ = self.recvmsg(min(bufsize, _READ_CAP), _ANC_SIZE, flags | _RECV_FLAGS)
        if ancdata:
            fds = _descriptors(ancdata)
            if fds:
                sink = self.fd_sink
                if sink is not None:
                    sink(fds)
                else:
                    for fd in fds:
                        with contextlib.suppress(OSError):
                            os.close(fd)
        return data


class FdListener(socket.socket):
    """A listening unix socket whose accepted connections are :class:`FdSocket`."""

    __slots__ = ()

    def accept(self) -> tuple[socket.socket, Any]:
        fd, addr = self._accept()  # type: ignore[attr-defined]
        conn = FdSocket(self.family, self.type, self.proto, fileno=fd)
        if socket.getdefaulttimeout() is None and self.gettimeout():
            conn.setblocking(True)
        return conn, addr


def as_fd_socket(sock: socket.socket, *, listening: bool) -> socket.socket:
    """The same socket as an FdSocket (FdListener: ``listening``) if it is a unix socket."""
    if sock.family != socket.AF_UNIX or isinstance(sock, FdSocket | FdListener):
        return sock
    kind: type[socket.socket] = FdListener if listening else FdSocket
    timeout = sock.gettimeout()
    new = kind(sock.family, sock.type, sock.proto, fileno=sock.detach())
    new.settimeout(timeout)
    return new


def attach_fd_sink(transport: asyncio.BaseTransport, sink: Callable[[list[int]], None]) -> bool:
    """Route the descriptors read by ``transport``'s socket to ``sink``; False when the socket
    cannot carry any (tcp)."""
    wrapped = transport.get_extra_info("socket")
    # asyncio hands out a TransportSocket wrapper; the socket it reads from is behind it
    sock = getattr(wrapped, "_sock", wrapped)
    if isinstance(sock, FdSocket):
        sock.fd_sink = sink
        return True
    return False
