"""``zero-copy-send``: the multifd channels' page data sent with ``MSG_ZEROCOPY``.

Why a module: the kernel's zero-copy protocol is its own concern.  A socket opts in with
``SO_ZEROCOPY`` (TCP has it; a unix socket has not, which is what QEMU's "Zero copy send
feature not detected in host kernel" reports); every ``sendmsg(MSG_ZEROCOPY)`` that sends
something is numbered by the kernel, which later posts on the socket's error queue the
ranges of numbers it is done with, flagged when it had to copy after all (always over
loopback).  Until then the pages are the kernel's: the buffer must stay alive and unchanged.
So the writer thread keeps each buffer until its completion, and waits for all of them at
the end of every write job (what QEMU's flush waits for at a sync).  Contract:
:func:`zero_copy_supported` probes a socket family; :class:`ZeroCopySender` belongs to one
writer thread; :attr:`ZeroCopySender.copied` says whether every completion so far was a copy
(the multifd accounting counts QEMU's ``dirty-sync-missed-zero-copy`` only then).
"""

from __future__ import annotations

import errno
import select
import socket
import struct
import time
from collections import deque

__all__ = ["ZeroCopySender", "enable_zero_copy", "zero_copy_supported"]

SO_ZEROCOPY = 60
MSG_ZEROCOPY = 0x4000000
MSG_ERRQUEUE = 0x2000
#: sock_extended_err: errno u32, origin u8, type u8, code u8, pad u8, info u32, data u32
_EXTENDED_ERR = struct.Struct("=IBBBBII")
_ORIGIN_ZEROCOPY = 5
_CODE_COPIED = 1
#: how long the end of a job waits for the kernel's completions (a peer that stopped reading)
_COMPLETION_TIMEOUT = 30.0


def zero_copy_supported(family: int) -> bool:
    """Whether a stream socket of ``family`` takes ``SO_ZEROCOPY`` here (a probe socket)."""
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
    except OSError:
        return False
    return True


def enable_zero_copy(sock: socket.socket) -> None:
    """Opt ``sock`` in (raises OSError where the kernel has no zero copy for it)."""
    sock.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)


class ZeroCopySender:
    """One socket's zero-copy sends, owned by its writer thread."""

    def __init__(self) -> None:
        self._queued = 0  # successful MSG_ZEROCOPY sendmsg calls
        self._done = 0  # of them, completed by the kernel
        self._held: deque[tuple[int, memoryview]] = deque()  # (call number, its buffer)
        #: every completion so far was a copy (loopback; a NIC without zero copy)
        self.copied = True

    def send(self, sock: socket.socket, buf: memoryview) -> int:
        """Send all of ``buf`` with ``MSG_ZEROCOPY``; keep it until the kernel is done."""
        sent = 0
        while sent < buf.nbytes:
            try:
                sent += sock.sendmsg([buf[sent:]], [], MSG_ZEROCOPY)
            except OSError as err:
                if err.errno != errno.ENOBUFS or self._done >= self._queued:
                    raise
                # the socket's option memory holds the pending notifications: once the
                # kernel completed what is in flight there is room again (QEMU flushes too)
                self.wait(sock)
                continue
            self._queued += 1
            self._held.append((self._queued, buf))
        self._reap(sock)
        return sent

    def wait(self, sock: socket.socket) -> None:
        """Until the kernel completed every send (raises TimeoutError if it does not)."""
        deadline = time.monotonic() + _COMPLETION_TIMEOUT
        poller = select.poll()
        poller.register(sock.fileno(), 0)  # POLLERR is always reported
        while self._done < self._queued:
            self._reap(sock)
            if self._done >= self._queued:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the kernel did not complete the zero-copy sends")
            poller.poll(min(left, 0.05) * 1000)

    def _reap(self, sock: socket.socket) -> None:
        """Read the error queue's completions without blocking; release their buffers."""
        while True:
            try:
                _data, ancdata, _flags, _addr = sock.recvmsg(
                    0, 512, MSG_ERRQUEUE | socket.MSG_DONTWAIT
                )
            except (BlockingIOError, InterruptedError):
                break
            for _level, _type, data in ancdata:
                if len(data) < _EXTENDED_ERR.size:
                    continue
                _errno, origin, _kind, code, _pad, low, high = _EXTENDED_ERR.unpack_from(data)
                if origin != _ORIGIN_ZEROCOPY:
                    continue
                self._done += (high - low + 1) & 0xFFFFFFFF
                if not code & _CODE_COPIED:
                    self.copied = False
        while self._held and self._held[0][0] <= self._done:
            self._held.popleft()
