"""Guest pages named now and read later, by the thread that writes them out.

Why: the source's writer threads (``runtime/socket_writer.py``) build a step's pages just
before their kernel copy, on the same core while the pages are in cache, in parallel with
each other and with the event loop (the baselines' C fill releases the GIL).  Reading later
than the step was taken is what QEMU's sender threads do too: a page the guest writes
meanwhile is dirty and goes again.  Not for XBZRLE (its cache must hold exactly what was
sent) nor for a checksum that covers page contents.  No numpy here: the channel and its
writer import this module before any guest exists.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from qmp_server.engine.guest import GuestMemory

__all__ = ["PageRun"]

_PAGE_SIZE = 4096


class PageRun:
    """``count`` consecutive guest pages from ``start``, read by :meth:`materialize`."""

    __slots__ = ("count", "guest", "nbytes", "start")

    def __init__(self, guest: GuestMemory, start: int, count: int) -> None:
        if count < 0 or start < 0 or start + count > guest.page_count:
            raise IndexError(f"pages [{start}, {start + count}) out of range")
        self.guest = guest
        self.start = start
        self.count = count
        self.nbytes = count * _PAGE_SIZE

    def __len__(self) -> int:
        return self.nbytes

    def materialize(self) -> memoryview:
        """The pages' content now (a fresh buffer)."""
        return self.guest.read_pages_view(self.start, self.count)

    def pieces(self, scratch: npt.NDArray[np.uint64]) -> Iterator[memoryview]:
        """The pages' content now, ``len(scratch)`` pages at a time, each piece built into
        ``scratch`` (valid until the next piece): a writer thread reuses one buffer and
        allocates nothing per run."""
        step = scratch.shape[0]
        for offset in range(0, self.count, step):
            n = min(step, self.count - offset)
            yield self.guest.read_pages_into(self.start + offset, n, scratch)
