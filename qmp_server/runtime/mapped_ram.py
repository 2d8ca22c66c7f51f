"""``mapped-ram`` on a ``file:`` migration: pages written and read in place, by threads.

Why a module of its own: with ``mapped-ram`` the file is not a stream.  The source writes
each block's ``MAPPED_BLOCK`` record, leaves room for the block's bitmap and pages, and goes
on with the stream after them (:class:`MappedRamOutgoing`); every page that is not zero is
``pwrite``-n at its own offset by worker threads (``multifd-channels`` of them with
``multifd``, as QEMU's channels each write their share; else one, QEMU's migration thread),
and the bitmaps are written at the end.  The destination (:func:`load_block`) reads a block's
bitmap and its pages with ``pread`` straight off the file, zeroes the others, and its reader
goes on after the block.  With ``direct-io`` and ``multifd`` (QEMU opens its channels'
descriptors with ``O_DIRECT``) the pages bypass the page cache: the workers write and read
them through a descriptor of their own, from page-aligned buffers.  Where the pages go is decided in
:mod:`qmp_server.engine.mapped_ram`; the counters in :mod:`qmp_server.engine.wire_cost`.
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from qmp_server.engine.guest import PAGE_SIZE, GuestMemory
from qmp_server.engine.mapped_ram import (
    BlockRegion,
    MappedBitmap,
    bitmap_bytes,
    check_alignment,
    plan_load,
    plan_region,
    region_runs,
)
from qmp_server.engine.stream import MAPPED_BLOCK_BYTES, StreamEncoder, StreamError
from qmp_server.engine.wire_cost import BlockMap

if TYPE_CHECKING:
    from qmp_server.runtime.channel import Channel

__all__ = ["MappedRamOutgoing", "load_block", "open_direct"]

#: Pages a worker builds and writes at a time (4 MiB).
_PIECE_PAGES = 1024
#: Steps handed to the writers before the loop waits for the oldest.
_IN_FLIGHT = 3


class MappedRamOutgoing:
    """The source's side: the blocks' places in the file, the bitmap, the page writers."""

    def __init__(
        self,
        guest: GuestMemory,
        blocks: BlockMap,
        channel: Channel,
        *,
        base: int,
        writers: int,
        channels: bool = False,
        direct_path: str | None = None,
    ) -> None:
        assert channel.file is not None
        self.guest = guest
        self.channel = channel
        self.base = base
        self.fd = channel.file.fileno()
        #: ``direct-io``: the pages' own descriptor, opened with ``O_DIRECT``
        self._direct_fd = open_direct(direct_path, os.O_WRONLY) if direct_path else None
        counts = [int(n) for n in np.diff([*blocks.starts.tolist(), blocks.page_count])]
        self._blocks = list(zip(blocks.starts.tolist(), counts, strict=True))
        self.regions: list[BlockRegion] = []
        self.bitmap = MappedBitmap(guest.page_count)
        self.writers = max(1, writers)
        #: the writers are multifd's channels (``multifd`` on): QEMU lists them as senders
        self.channels = channels
        self._thread_ids: list[int] = []
        #: each writer's buffer, reused for every run it writes
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(
            self.writers, thread_name_prefix="mapped-ram", initializer=self._note_thread
        )
        # every writer exists from the start (query-migrationthreads lists them, as QEMU
        # lists its channels' threads): each waits until all are up
        ready = threading.Barrier(self.writers)
        for _ in range(self.writers):
            self._pool.submit(ready.wait, 5.0)
        self._starts = np.asarray(blocks.starts, dtype=np.int64)
        #: steps handed to the writers and not written yet; the pages they hold
        self._inflight: list[asyncio.Future[list[None]]] = []
        self._busy = np.zeros(guest.page_count, dtype=np.bool_)

    def _note_thread(self) -> None:
        self._thread_ids.append(threading.get_native_id())

    def writer_thread_ids(self) -> list[int]:
        """The native ids of the page writers, in the order they started."""
        return list(self._thread_ids)

    async def setup(self, enc: StreamEncoder, head: bytes) -> None:
        """Send the stream's start and each block's record, leaving room for its pages."""
        channel = self.channel
        pos = await channel.send([head])
        for first, pages in self._blocks:
            region = plan_region(
                first, pages, record_at=pos, record_bytes=MAPPED_BLOCK_BYTES, base=self.base
            )
            await channel.send([enc.mapped_block(region)])
            await channel.seek(self.base + region.next_offset)
            self.regions.append(region)
            pos = region.next_offset

    async def write(self, pages: np.ndarray, zero: np.ndarray) -> None:
        """Pages taken from the guest: the normal ones go to their places, in parallel.

        Returns once the step is handed to the writers (a few steps stay in flight while the
        loop walks on), unless a page of it is still being written by an earlier step (a
        page sent again in the next pass): its writes must land in order."""
        if not pages.size:
            return
        self.bitmap.mark(pages, zero)
        normal = np.sort(pages[~zero])
        if not normal.size:
            return
        if self._busy[normal].any():
            await self.drain()
        if len(self._inflight) >= _IN_FLIGHT:
            await self._inflight[0]
        block_of = np.searchsorted(self._starts, normal, side="right") - 1
        jobs: list[list[tuple[int, int, int]]] = [[] for _ in range(self.writers)]
        k = 0
        for b in np.unique(block_of).tolist():
            pieces = region_runs(self.regions[b], normal[block_of == b], piece_pages=_PIECE_PAGES)
            for piece in pieces:
                jobs[k % self.writers].append(piece)
                k += 1
        loop = asyncio.get_running_loop()
        step = asyncio.gather(
            *(loop.run_in_executor(self._pool, self._write_runs, job) for job in jobs if job)
        )
        self._busy[normal] = True
        self._inflight.append(step)

        def done(_: object) -> None:
            self._inflight.remove(step)
            self._busy[normal] = False

        step.add_done_callback(done)

    async def drain(self) -> None:
        """Wait until every page handed over is written (a failed write raises here)."""
        for step in list(self._inflight):
            await step

    def _write_runs(self, runs: list[tuple[int, int, int]]) -> None:
        """A worker: build each run's pages and write them at their offset."""
        fd = self.fd if self._direct_fd is None else self._direct_fd
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
            scratch = self._local.scratch = _aligned_pages(_PIECE_PAGES)
        for offset, first, count in runs:
            _pwrite_all(fd, self.guest.read_pages_into(first, count, scratch), self.base + offset)

    async def finish(self) -> int:
        """Write every block's bitmap; returns their bytes (QEMU's final RAM section)."""
        await self.drain()
        total = 0
        loop = asyncio.get_running_loop()
        for region in self.regions:
            raw = self.bitmap.block_bytes(region)
            await loop.run_in_executor(
                self._pool, _pwrite_all, self.fd, raw, self.base + region.bitmap_offset
            )
            total += len(raw)
        return total

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        if self._direct_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._direct_fd)
            self._direct_fd = None


def open_direct(path: str, flags: int) -> int:
    """The file opened again with ``O_DIRECT`` (``direct-io``); an OSError names why not."""
    return os.open(path, flags | os.O_DIRECT | os.O_CLOEXEC)


def _aligned_pages(pages: int) -> np.ndarray:
    """A buffer of ``pages`` pages on a page boundary (what ``O_DIRECT`` needs): an anonymous
    mapping, freed with its last view."""
    area = mmap.mmap(-1, pages * PAGE_SIZE)
    return np.frombuffer(area, dtype=np.uint64).reshape(pages, PAGE_SIZE // 8)


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view.nbytes:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _pread_exact(fd: int, size: int, offset: int) -> bytes:
    data = os.pread(fd, size, offset)
    while len(data) < size:
        more = os.pread(fd, size - len(data), offset + len(data))
        if not more:
            raise StreamError("mapped-ram file truncated: a block's pages are missing")
        data += more
    return data


def _pread_direct(fd: int, size: int, offset: int) -> bytes:
    """:func:`_pread_exact` through an ``O_DIRECT`` descriptor, into an aligned buffer."""
    area = mmap.mmap(-1, size)
    with area:
        got = os.preadv(fd, [area], offset)
        if got != size:
            raise StreamError("mapped-ram file truncated: a block's pages are missing")
        return area[:size]


async def load_block(
    guest: GuestMemory,
    region: BlockRegion,
    fd: int,
    *,
    base: int,
    readers: int,
    direct_fd: int | None = None,
) -> None:
    """The destination's side of one block: its bitmap, then its pages, read in parallel
    (``readers`` threads: the destination's multifd channels, or one; through
    ``direct_fd`` with ``direct-io``)."""
    problem = check_alignment(region, base)
    if problem is not None:
        raise StreamError(problem)
    loop = asyncio.get_running_loop()
    raw = await loop.run_in_executor(
        None, _pread_exact, fd, bitmap_bytes(region.pages), base + region.bitmap_offset
    )
    try:
        plan = plan_load(region, raw, piece_pages=_PIECE_PAGES)
    except ValueError as err:
        raise StreamError(str(err)) from None
    for start, count in plan.zero_runs:
        guest.load_zero_pages(start, count)
    runs = plan.read_runs
    reader, page_fd = (_pread_exact, fd) if direct_fd is None else (_pread_direct, direct_fd)
    window = 4 * max(1, readers)  # reads in flight: the memory held stays small
    with ThreadPoolExecutor(max(1, readers), thread_name_prefix="mapped-ram-load") as pool:
        for at in range(0, len(runs), window):
            batch = runs[at : at + window]
            reads = [
                loop.run_in_executor(pool, reader, page_fd, count * PAGE_SIZE, base + offset)
                for offset, _, count in batch
            ]
            for (_, first, _count), read in zip(batch, reads, strict=True):
                guest.load_pages(first, await read)
