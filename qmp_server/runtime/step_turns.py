"""Outgoing migrations of one process take turns: one page step per turn of the event loop.

Why: a page step is a few milliseconds of CPU in the loop's thread.  With a plain
``asyncio.sleep(0)`` between steps, every migration of a fleet is ready at once, so one turn of
the loop runs all their steps back to back (20 migrations: a quarter of a second) before it
reads a monitor's socket again.  Handing the turn to one step at a time lets the loop poll its
sockets between any two steps, so a QMP request waits for at most about one step, whatever the
number of migrations; and while others wait, a step is a quarter of the usual one
(:data:`CONTENDED_STEP_PAGES`), so that wait stays short.  One migration alone still steps on
every other turn: the order and the content of what it sends do not change.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque

__all__ = ["CONTENDED_STEP_PAGES", "StepTurns", "step_turns"]

#: the non-zero pages of a step while other migrations of the process wait for their turn
#: (a step of 1,024 pages that the guest wrote costs up to ~70 ms of CPU on a busy host)
CONTENDED_STEP_PAGES = 256


class StepTurns:
    """A FIFO of waiting steps, one released per turn of the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._release_scheduled = False

    async def take(self) -> None:
        """Wait for this step's turn (FIFO among the process's migrations)."""
        fut: asyncio.Future[None] = self._loop.create_future()
        self._waiting.append(fut)
        if not self._release_scheduled:
            self._release_scheduled = True
            self._loop.call_soon(self._release)
        await fut  # a cancelled waiter is skipped by _release

    @property
    def contended(self) -> bool:
        """Whether other steps wait for their turn (the one that has it runs shorter)."""
        return bool(self._waiting)

    def _release(self) -> None:
        while self._waiting:
            fut = self._waiting.popleft()
            if not fut.done():
                fut.set_result(None)
                break
        if self._waiting:
            self._loop.call_soon(self._release)  # the next one, on the next turn
        else:
            self._release_scheduled = False


_TURNS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, StepTurns] = (
    weakref.WeakKeyDictionary()
)


def step_turns() -> StepTurns:
    """The running loop's turns (one per loop: the migrations of its process share them)."""
    loop = asyncio.get_running_loop()
    turns = _TURNS.get(loop)
    if turns is None:
        turns = _TURNS[loop] = StepTurns(loop)
    return turns
