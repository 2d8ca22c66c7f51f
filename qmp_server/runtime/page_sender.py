"""The source's walk over the RAM pages a pass still has to send (QEMU's RAM bitmap walk).

Why a module of its own: how a pass is cut into steps (zero-page windows, the non-zero page
budget of one gather write) is independent of when the precopy loop sends a step, and the
multifd work will cut the same walk across channels.  Contract: :class:`PageSender` owns the
sorted page indexes of the current pass; :meth:`PageSender.step` encodes the next step and
advances, :meth:`PageSender.resync` merges a dirty sync into what is left.  No I/O.
"""

from __future__ import annotations

import numpy as np

from qmp_server.engine.guest import GuestMemory
from qmp_server.engine.stream import EncodedPages, StreamEncoder, encode_guest_pages_parts

__all__ = ["STEP_PAGES", "PageSender"]

#: Largest number of non-zero pages in one step (4 MiB: one RAM_RUN record, one gather write).
#: Smaller steps keep the pages just built in cache until the kernel copies them; 4 MiB steps
#: with 8 MiB queued for the writer thread beat 8 MiB steps with 24 MiB by ~15% (1 GiB, TCP).
STEP_PAGES = 1024
#: Pages whose zero mask is computed at once (zero pages are cheap: whole windows per step).
_WINDOW_PAGES = 1 << 16


class PageSender:
    """The RAM pages a pass still has to send, sent in steps.

    Zero masks are computed per window of :data:`_WINDOW_PAGES` pages and reused by the
    steps inside it; a step takes pages until it holds ``max_normal`` non-zero pages.
    """

    def __init__(self, enc: StreamEncoder, guest: GuestMemory, pages: np.ndarray) -> None:
        self.enc = enc
        self.guest = guest
        self.pages = pages
        self.cursor = 0
        self._win_start = 0
        self._win_zero: np.ndarray | None = None

    @property
    def remaining(self) -> int:
        return int(self.pages.size - self.cursor)

    def resync(self, fresh: np.ndarray) -> None:
        """Add the pages of a dirty sync to what is left of this pass."""
        rest = self.pages[self.cursor :]
        if rest.size == 0:
            self.pages = fresh
        elif fresh.size:
            # the bitmap merges them: sorted, without duplicates, in linear time
            self.guest.mark_dirty(rest)
            self.guest.mark_dirty(fresh)
            self.pages = self.guest.sync_dirty()
        else:
            self.pages = rest
        self.cursor = 0
        self._win_zero = None

    def step(self, max_normal: int) -> EncodedPages:
        cursor = self.cursor
        zero = self._win_zero
        if zero is None or cursor >= self._win_start + zero.size:
            window = self.pages[cursor : cursor + _WINDOW_PAGES]
            zero = self._win_zero = self.guest.zero_mask(window)
            self._win_start = cursor
        zero_part = zero[cursor - self._win_start :]
        normal = np.flatnonzero(~zero_part)
        take = int(normal[max_normal]) if normal.size > max_normal else int(zero_part.size)
        idx = self.pages[cursor : cursor + take]
        self.cursor = cursor + take
        return encode_guest_pages_parts(
            self.enc, self.guest, idx, zero=zero_part[:take], max_pages=STEP_PAGES
        )
