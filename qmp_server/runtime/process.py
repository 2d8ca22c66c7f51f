"""What every qmp-server process does around its VM(s): ``-daemonize``, ``-pidfile``, the loop.

:class:`ProcessRunner` is shared by the one-VM :class:`~qmp_server.runtime.runtime.Runtime`
and the :class:`~qmp_server.runtime.fleet.Fleet`: QEMU's texts for a pid file that cannot be
created or locked, the daemon's parent returning once the monitors listen.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from qmp_server.errors import UsageError
from qmp_server.runtime.loop import new_event_loop
from qmp_server.runtime.vm_instance import stderr_line

__all__ = ["ProcessRunner", "on_signals", "write_pidfile"]


def write_pidfile(path: str) -> int:
    """Create ``path`` (0600), lock it and write this process's pid; returns the open fd,
    which keeps the lock for the life of the process.

    :raise UsageError: QEMU's texts for a file that cannot be created or is locked.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as err:
        reason = os.strerror(err.errno) if err.errno else str(err)
        raise UsageError(f"cannot create PID file: Could not create '{path}': {reason}") from None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        reason = os.strerror(err.errno) if err.errno else str(err)
        raise UsageError(f"cannot create PID file: Cannot lock pid file: {reason}") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _wait_for_daemon(ready: int, pid: int) -> int:
    """The parent of ``-daemonize``: 0 once the daemon reports ready, else its exit status."""
    with os.fdopen(ready, "rb") as pipe:
        if pipe.read(1):
            return 0
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return code if code > 0 else 1


def on_signals(handler: Callable[[int], None]) -> None:
    """SIGTERM, SIGINT and SIGHUP end the process through ``handler(signum)`` (QEMU's
    "terminating on signal N"), on the running loop."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, handler, signum)


class ProcessRunner:
    """Runs one ``serve`` coroutine as the process: fork first if ``-daemonize``, hold the
    pid file, and report start-up complete (:meth:`detach`) to the waiting parent."""

    def __init__(self, *, daemonize: bool, pidfile: str | None, poll_us: int) -> None:
        self.daemonize = daemonize
        self.pidfile = pidfile
        self.poll_us = poll_us
        #: ``-daemonize``: the pipe end that tells the waiting parent the monitors listen
        self._ready_fd: int | None = None

    def detach(self) -> None:
        """Start-up is complete: release a ``-daemonize`` parent, leave the terminal."""
        if self._ready_fd is None:
            return
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
            sys.stderr.flush()
        null = os.open(os.devnull, os.O_RDWR)
        for target in (0, 1, 2):
            os.dup2(null, target)
        os.close(null)
        os.write(self._ready_fd, b"\0")
        os.close(self._ready_fd)
        self._ready_fd = None

    def run(
        self, serve: Callable[[], Coroutine[Any, Any, None]], exit_code: Callable[[], int]
    ) -> int:
        """Run ``serve()`` to its end; the process's exit status."""
        if self.daemonize:
            ready, self._ready_fd = os.pipe()
            pid = os.fork()
            if pid:
                os.close(self._ready_fd)
                self._ready_fd = None
                return _wait_for_daemon(ready, pid)
            os.close(ready)
            os.setsid()
        pidfile_fd = None
        pidfile = self.pidfile
        try:
            if pidfile is not None:
                pidfile_fd = write_pidfile(pidfile)
            with asyncio.Runner(loop_factory=lambda: new_event_loop(self.poll_us)) as r:
                r.run(serve())
        except (OSError, UsageError) as err:
            stderr_line(f"qmp-server: {err}\n")
            return 1
        finally:
            if pidfile_fd is not None:
                assert pidfile is not None
                with contextlib.suppress(OSError):
                    os.unlink(pidfile)
                os.close(pidfile_fd)
        return exit_code()
