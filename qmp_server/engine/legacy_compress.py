"""7.2's legacy ``compress`` capability: which pages its compress threads take, and when
their output is counted (the counters of ``query-migrate``'s ``compression`` member).

Why a module: the statistics are counted when a thread's buffer is moved into the stream
(when the thread is given its next page, and for every thread at a flush), not when a page
is compressed, and 7.2 counts empty buffers too (docs/compression-facts.md).  The
compression itself is :class:`qmp_server.engine.compression.LegacyPageCompressor`; this
module decides, per page, where it goes and what is counted.  Pure: no threads here.

Rules (facts from 7.2's migration/ram.c):

1. The first page of each RAM block goes from the migration thread, uncompressed (a normal
   or zero page); every other page goes to a compress thread, which sends a zero page as a
   zero record and compresses the others.
2. A page goes to the first free thread.  qmp-server's threads are free at once, so that is
   always thread 0: giving it a page drains its previous output first.
3. Before a page of another block, after a completed pass over RAM, and at the end, every
   thread is drained (a flush); draining a thread with nothing buffered still counts a page
   of -8 bytes (a wart 7.2 kept).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from qmp_server.engine.compression import LegacyCompressStats

__all__ = ["ZERO_RECORD_BYTES", "CompressThreads", "compressed_record_bytes"]

#: a zero page from a compress thread: the 8-byte page header and one 0 byte
ZERO_RECORD_BYTES = 9


def compressed_record_bytes(data_len: int) -> int:
    """QEMU's bytes for one compressed page: page header, be32 length, the zlib bytes."""
    return 8 + 4 + data_len


class CompressThreads:
    """The compress threads' buffers, as the migration thread drains them (rules 2-3)."""

    def __init__(self, threads: int, stats: LegacyCompressStats) -> None:
        if threads < 1:
            raise ValueError("compress-threads must be at least 1")
        self.stats = stats
        self._held = [0] * threads
        self._last_zero = [False] * threads
        self._block = -1

    @property
    def count(self) -> int:
        return len(self._held)

    @staticmethod
    def via_threads(pages: npt.NDArray[np.int64], block_starts: npt.NDArray[np.int64]
                    ) -> npt.NDArray[np.bool_]:  # fmt: skip
        """Rule 1: which pages a compress thread takes (not a block's first page)."""
        return ~np.isin(pages, block_starts)

    def give(self, nbytes: int, zero: bool, block: int) -> None:
        """A page of ``block`` for a thread: its record is ``nbytes`` long."""
        if block != self._block:
            if self._block >= 0:
                self.flush()
            self._block = block
        self._drain(0)
        self._held[0] = nbytes
        self._last_zero[0] = zero

    def flush(self) -> None:
        """Drain every thread (a new block, a completed pass, the end)."""
        for i in range(len(self._held)):
            self._drain(i)

    def _drain(self, i: int) -> None:
        self.stats.drained(self._held[i], self._last_zero[i])
        self._held[i] = 0
