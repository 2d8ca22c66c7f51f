"""The source's walk over the RAM pages a pass still has to send (QEMU's RAM bitmap walk).

Why a module of its own: how a pass is cut into steps (zero-page windows, the non-zero page
budget of one gather write) is independent of when the precopy loop sends a step, and the
multifd work will cut the same walk across channels.  Contract: :class:`PageSender` owns the
sorted page indexes of the current pass; :meth:`PageSender.peek` offers the next step,
:meth:`PageSender.take` encodes (a prefix of) it and advances, :meth:`PageSender.resync`
merges a dirty sync into what is left.  No I/O.
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
        #: the last page taken (-1: none yet); the walk goes on from there after a sync
        self.last_page = -1
        #: a pass was walked to its end (QEMU's first round: XBZRLE may start)
        self.completed_pass = False
        self._win_start = 0
        self._win_zero: np.ndarray | None = None

    @property
    def remaining(self) -> int:
        return int(self.pages.size - self.cursor)

    def resync(self, fresh: np.ndarray) -> None:
        """Add the pages of a dirty sync to what is left of this pass.

        QEMU's walk does not restart at a sync: it goes on from the last page it sent and
        wraps around at the end of RAM, so the merged pages are rotated to start after it
        (the order decides where QEMU's stream names a block, hence its byte counts).
        """
        rest = self.pages[self.cursor :]
        if rest.size == 0:
            pages = fresh
        elif fresh.size:
            # the bitmap merges them: sorted, without duplicates, in linear time
            self.guest.mark_dirty(rest)
            self.guest.mark_dirty(fresh)
            pages = self.guest.sync_dirty()
        else:
            pages = np.sort(rest)
        if self.last_page >= 0 and pages.size:
            split = int(np.searchsorted(pages, self.last_page, side="right"))
            if 0 < split < pages.size:
                pages = np.concatenate((pages[split:], pages[:split]))
        self.pages = pages
        self.cursor = 0
        self._win_zero = None

    def peek(self, max_normal: int) -> tuple[np.ndarray, np.ndarray]:
        """The next step's candidate pages and their zero mask, without taking them: pages
        until ``max_normal`` non-zero ones (the caller may take fewer, see :meth:`take`)."""
        cursor = self.cursor
        zero = self._win_zero
        if zero is None or cursor >= self._win_start + zero.size:
            window = self.pages[cursor : cursor + _WINDOW_PAGES]
            zero = self._win_zero = self.guest.zero_mask(window)
            self._win_start = cursor
        zero_part = zero[cursor - self._win_start :]
        normal = np.flatnonzero(~zero_part)
        take = int(normal[max_normal]) if normal.size > max_normal else int(zero_part.size)
        return self.pages[cursor : cursor + take], zero_part[:take]

    def take(
        self,
        pages: np.ndarray,
        zero: np.ndarray,
        keep: np.ndarray | None = None,
        *,
        deferred: bool = False,
    ) -> EncodedPages:
        """Encode the first pages of the last :meth:`peek` (``pages``/``zero`` its prefixes);
        ``keep``: the mask of those to encode in full (the others went as XBZRLE deltas or
        not at all), all of them by default."""
        self.cursor += int(pages.size)
        if pages.size:
            # QEMU's round ends where its walk wraps at the end of RAM
            wrapped = (0 <= int(pages[0]) < self.last_page) or bool(np.any(pages[1:] < pages[:-1]))
            if wrapped or self.cursor >= self.pages.size:
                self.completed_pass = True
            self.last_page = int(pages[-1])
        if keep is not None:
            pages, zero = pages[keep], zero[keep]
        return encode_guest_pages_parts(
            self.enc, self.guest, pages, zero=zero, max_pages=STEP_PAGES, deferred=deferred
        )

    def step(self, max_normal: int) -> EncodedPages:
        """:meth:`peek` and :meth:`take` everything it offered."""
        return self.take(*self.peek(max_normal))
