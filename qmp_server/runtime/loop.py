"""The event loop qmp-server runs on, with optional adaptive busy polling.

On virtual machines, waking a process that sleeps in ``epoll_wait`` costs far more than the
work of answering a QMP request (measured here: an asyncio echo server answers ~3,100
sequential requests/s, ~14,600 when it polls briefly before sleeping).  ``--poll-us N`` makes
the selector poll without blocking for up to N microseconds, but only while traffic arrived
in the last 2 ms, so an idle server still sleeps.
"""

from __future__ import annotations

import asyncio
import selectors
import time
from typing import Any

__all__ = ["BusyPollSelector", "new_event_loop"]

_ACTIVE_WINDOW = 0.002


class BusyPollSelector(selectors.EpollSelector):
    """An epoll selector that spins for ``spin`` seconds before blocking, after activity."""

    def __init__(self, spin: float) -> None:
        super().__init__()
        self.spin = spin
        self._last_event = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None or timeout > 0:
            now = time.perf_counter()
            if now - self._last_event < _ACTIVE_WINDOW:
                limit = now + (self.spin if timeout is None else min(self.spin, timeout))
                while time.perf_counter() < limit:
                    ready = super().select(0)
                    if ready:
                        self._last_event = time.perf_counter()
                        return ready
        ready = super().select(timeout)
        if ready:
            self._last_event = time.perf_counter()
        return ready


def new_event_loop(poll_us: int = 0) -> asyncio.AbstractEventLoop:
    """A selector event loop; busy-polling when ``poll_us`` > 0."""
    if poll_us <= 0:
        return asyncio.new_event_loop()
    selector: Any = BusyPollSelector(poll_us / 1e6)
    return asyncio.SelectorEventLoop(selector)
