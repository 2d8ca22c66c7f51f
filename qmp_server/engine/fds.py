"""File descriptors handed to the monitor: the per-connection queue, named fds, fd sets.

QEMU's rules, established live on 7.2 and 10.0 (the same on both):

* Descriptors arrive over a unix socket (SCM_RIGHTS) with the bytes of a command and wait on
  the connection until a command takes one: ``getfd``/``add-fd`` take the first and close the
  others; a later message that brings descriptors replaces (closes) the waiting ones; commands
  that take none (``query-status``) leave them waiting.  No descriptor: ``No file descriptor
  supplied via SCM_RIGHTS``.
* ``getfd NAME`` keeps it under NAME in the monitor (a name already used is replaced, a name
  starting with a digit is refused after the descriptor was taken); ``closefd`` and
  ``migrate fd:NAME`` remove it; unknown: ``File descriptor named 'X' not found``.
* ``add-fd`` puts it in an fd set (``fdset-id`` absent: the lowest free id); ``query-fdsets``
  lists the sets by descending id, each set's descriptors in the order they were added;
  ``remove-fd`` closes one (or all) and drops a set left empty; unknown: ``File descriptor
  named 'fdset-id:S[, fd:N]' not found``.

Pure apart from closing descriptors, which goes through an injectable ``close``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qmp_server.errors import CommandError

__all__ = ["FdSets", "MonitorFds", "NamedFds", "ReceivedFds"]

NO_FD = "No file descriptor supplied via SCM_RIGHTS"


def _close_quietly(close: Callable[[int], None], fd: int) -> None:
    with contextlib.suppress(OSError):
        close(fd)


class ReceivedFds:
    """The descriptors that came with a connection's latest message, until one is taken."""

    def __init__(self, close: Callable[[int], None] = os.close) -> None:
        self._fds: list[int] = []
        self._close = close

    def __len__(self) -> int:
        return len(self._fds)

    def receive(self, fds: list[int]) -> None:
        """New descriptors replace (and close) any still waiting."""
        self.discard()
        self._fds = list(fds)

    def take(self) -> int:
        """The first waiting descriptor; the rest are closed.

        :raise CommandError: ``No file descriptor supplied via SCM_RIGHTS``.
        """
        if not self._fds:
            raise CommandError(NO_FD)
        first, rest = self._fds[0], self._fds[1:]
        self._fds = []
        for fd in rest:
            _close_quietly(self._close, fd)
        return first

    def discard(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            _close_quietly(self._close, fd)


class NamedFds:
    """``getfd`` names of one monitor (they outlive its client connections)."""

    def __init__(self, close: Callable[[int], None] = os.close) -> None:
        self.fds: dict[str, int] = {}
        self._close = close

    def add(self, name: str, fd: int) -> None:
        if name[:1].isdigit():
            _close_quietly(self._close, fd)
            raise CommandError("Parameter 'fdname' expects a name not starting with a digit")
        old = self.fds.pop(name, None)
        if old is not None:
            _close_quietly(self._close, old)
        self.fds[name] = fd

    def pop(self, name: str) -> int:
        """Remove and return the descriptor named ``name`` (the caller owns it)."""
        try:
            return self.fds.pop(name)
        except KeyError:
            raise CommandError(f"File descriptor named '{name}' not found") from None

    def take(self, name: str) -> int | None:
        """Remove and return the descriptor named ``name``, None when there is none."""
        return self.fds.pop(name, None)

    def close(self, name: str) -> None:
        _close_quietly(self._close, self.pop(name))


class FdSets:
    """The process's fd sets (``add-fd``, ``-add-fd``)."""

    def __init__(self, close: Callable[[int], None] = os.close) -> None:
        self.sets: dict[int, list[tuple[int, str | None]]] = {}
        self._close = close

    def add(
        self, fd: int, fdset_id: int | None = None, opaque: str | None = None
    ) -> dict[str, int]:
        if fdset_id is None:
            fdset_id = 0
            while fdset_id in self.sets:
                fdset_id += 1
        elif fdset_id < 0:
            _close_quietly(self._close, fd)
            raise CommandError("Parameter 'fdset-id' expects a non-negative value")
        self.sets.setdefault(fdset_id, []).append((fd, opaque))
        return {"fdset-id": fdset_id, "fd": fd}

    def remove(self, fdset_id: int, fd: int | None = None) -> None:
        members = self.sets.get(fdset_id)
        if fd is None:
            if members is None:
                raise CommandError(f"File descriptor named 'fdset-id:{fdset_id}' not found")
            removed = members
            del self.sets[fdset_id]
        else:
            removed = [m for m in members or () if m[0] == fd]
            if not removed:
                desc = f"File descriptor named 'fdset-id:{fdset_id}, fd:{fd}' not found"
                raise CommandError(desc)
            assert members is not None
            members.remove(removed[0])
            if not members:
                del self.sets[fdset_id]
        for number, _ in removed:
            _close_quietly(self._close, number)

    def query(self) -> list[dict[str, Any]]:
        answer: list[dict[str, Any]] = []
        for fdset_id in sorted(self.sets, reverse=True):
            fds: list[dict[str, Any]] = []
            for fd, opaque in self.sets[fdset_id]:
                info: dict[str, Any] = {"fd": fd}
                if opaque is not None:
                    info["opaque"] = opaque
                fds.append(info)
            answer.append({"fdset-id": fdset_id, "fds": fds})
        return answer


@dataclass(slots=True)
class MonitorFds:
    """What one client connection of a monitor can reach: its waiting descriptors and the
    monitor's names."""

    received: ReceivedFds
    named: NamedFds
