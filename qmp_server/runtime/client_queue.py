"""One client at a time per monitor, as QEMU serves its monitors (QMP and HMP alike).

A monitor's chardev has one frontend: while a client is connected, later ones are accepted by
the kernel but not read from (their reading is paused here) until the current one leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Generic, Protocol, TypeVar

__all__ = ["ClientQueue"]


class _Client(Protocol):
    transport: asyncio.Transport | None
    closed: bool

    def activate(self) -> None: ...


C = TypeVar("C", bound=_Client)


class ClientQueue(Generic[C]):
    """The connected client (``current``) and those waiting for their turn (``waiting``)."""

    def __init__(self) -> None:
        self.current: C | None = None
        self.waiting: deque[C] = deque()

    def attach(self, conn: C) -> None:
        assert conn.transport is not None
        conn.transport.pause_reading()
        if self.current is None:
            self.current = conn
            conn.activate()
        else:
            self.waiting.append(conn)

    def detach(self, conn: C) -> None:
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

    def connections(self) -> list[C]:
        return ([self.current] if self.current is not None else []) + list(self.waiting)
