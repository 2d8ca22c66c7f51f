"""The source's multifd channels: extra connections that carry the RAM pages in parallel.

Why a module: the precopy loop (:mod:`migration_source`) decides *which* pages go and when;
this part decides *on which channel* and moves them.  Contract: :meth:`MultifdOutgoing.open`
connects ``multifd-channels`` sockets to the migration's address after the main connection
(each starts with ``CHANNEL``, docs/stream-format.md); :meth:`~MultifdOutgoing.send_pages`
hands a step's pages to the least busy channel, :meth:`~MultifdOutgoing.sync` puts a
``CHANNEL_SYNC`` on every channel at a dirty sync, :meth:`~MultifdOutgoing.finish` ends them.

Each channel has its own task, encoder (its own running checksum) and writer thread
(:mod:`socket_writer`), which builds the pages it writes: the builds and kernel copies of
the channels run in parallel, while the loop walks the next pages.  Compression runs in a
thread pool (zlib and zstd release the GIL), one packet of :data:`PACKET_PAGES` pages at a
time, with one compressor per channel, as QEMU keeps one stream per channel.  A channel
whose write fails fails the migration (:attr:`error`).
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from qmp_server.engine.guest import PAGE_SIZE, GuestMemory
from qmp_server.engine.multifd_cost import MultifdAccount, ZeroPages
from qmp_server.engine.stream import Part, StreamEncoder, encode_guest_pages_parts
from qmp_server.runtime.channel import Address, Channel, connect

if TYPE_CHECKING:
    from qmp_server.runtime.host_link import HostLink

__all__ = ["CHANNEL_ACK", "PACKET_PAGES", "Compressor", "MultifdOutgoing"]

#: What the destination answers on a multifd channel it takes (it closes one it refuses).
CHANNEL_ACK = b"M"
#: Pages per multifd packet (QEMU: 512 KiB of 4 KiB pages); a compressed packet is a record.
PACKET_PAGES = 128
#: Page jobs queued per channel before the precopy loop waits (each up to 4 MiB of pages,
#: named, not built: see :meth:`MultifdOutgoing._encode`).
_QUEUE_JOBS = 4

#: ``compress(data, count)``: one packet of ``count`` pages (one compressor per channel)
Compressor = Callable[[bytes, int], bytes]


@dataclass(slots=True)
class _Pages:
    pages: npt.NDArray[np.int64]
    zero: npt.NDArray[np.bool_]


@dataclass(slots=True)
class _Sync:
    generation: int


class _End:
    pass


_Job = _Pages | _Sync | _End


class _Lane:
    """One channel: its connection, encoder, queue and task."""

    def __init__(self, channel: Channel, enc: StreamEncoder, compress: Compressor | None) -> None:
        self.channel = channel
        self.enc = enc
        self.compress = compress
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.page_jobs = 0
        self.room = asyncio.Event()
        self.room.set()
        self.done = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


class MultifdOutgoing:
    """The multifd channels of one outgoing migration."""

    def __init__(
        self,
        guest: GuestMemory,
        account: MultifdAccount,
        compression: str = "none",
        new_compressor: Callable[[], Compressor] | None = None,
        *,
        link: HostLink | None = None,
        zero_copy: bool = False,
    ) -> None:
        self.guest = guest
        #: ``zero-copy-send``: the channels send page data with ``MSG_ZEROCOPY``
        self.zero_copy = zero_copy
        #: the fleet's modelled NIC the channels go through (None: the real network)
        self.link = link
        #: what QEMU's channels would carry and count for the same pages
        self.account = account
        self.channels = account.channels
        self.zero_pages = account.rules.zero_pages
        self.compression = compression
        self._new_compressor = new_compressor
        self._lanes: list[_Lane] = []
        self._pool: ThreadPoolExecutor | None = None
        #: the first channel error (the migration fails with it)
        self.error: OSError | None = None
        self.failed = asyncio.Event()
        self._next = 0

    async def open(self, address: Address, session: bytes) -> list[int]:
        """Connect every channel and send its ``CHANNEL``; wait until the destination took
        each one (:data:`CHANNEL_ACK`).  Returns the ids of the channels it refused (closed:
        a destination without ``multifd``, or with fewer channels); those fail when used."""
        self._pool = ThreadPoolExecutor(self.channels, thread_name_prefix="multifd")
        for i in range(self.channels):
            channel = await connect(address, link=self.link)
            if self.zero_copy:
                channel.enable_zero_copy()
            enc = StreamEncoder()
            hello = enc.channel_hello(i, self.channels, session, self.guest.size_bytes)
            compress = self._new_compressor() if self._new_compressor is not None else None
            self._lanes.append(_Lane(channel, enc, compress))
            await channel.send([hello])
        refused = []
        for i, lane in enumerate(self._lanes):
            try:
                ack = await lane.channel.recv(len(CHANNEL_ACK))
            except OSError:
                ack = b""
            if ack != CHANNEL_ACK:
                refused.append(i)
        return refused

    def writer_thread_ids(self) -> list[int | None]:
        """Each connected channel's writer thread id, by channel number (None: not running)."""
        return [lane.channel.writer_thread_id for lane in self._lanes]

    @property
    def kernel_copied(self) -> bool:
        """Every zero-copy send of the channels so far was copied by the kernel after all
        (QEMU's flush then reports a miss: rule 6 of engine/multifd_cost)."""
        return all(lane.channel.kernel_copied for lane in self._lanes)

    def start(self, generation: int) -> None:
        """Start sending: each channel first marks the current round."""
        for lane in self._lanes:
            lane.queue.put_nowait(_Sync(generation))
            lane.task = asyncio.get_running_loop().create_task(self._run(lane))

    async def send_pages(self, pages: npt.NDArray[np.int64], zero: npt.NDArray[np.bool_]) -> None:
        """Queue ``pages`` on the next channel with room (QEMU's round robin over free
        channels); waits while every channel has its queue full."""
        if self.error is not None:
            raise self.error
        if pages.size == 0:
            return
        if self.zero_pages is ZeroPages.NONE:
            zero = np.zeros(pages.size, dtype=bool)  # not looked for: sent with their data
        lanes = self._lanes
        while True:
            for k in range(len(lanes)):
                lane = lanes[(self._next + k) % len(lanes)]
                if lane.page_jobs < _QUEUE_JOBS:
                    self._next = (self._next + k + 1) % len(lanes)
                    lane.page_jobs += 1
                    if lane.page_jobs >= _QUEUE_JOBS:
                        lane.room.clear()
                    lane.queue.put_nowait(_Pages(pages, zero))
                    return
            waits = [asyncio.ensure_future(lane.room.wait()) for lane in lanes]
            waits.append(asyncio.ensure_future(self.failed.wait()))
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
            if self.error is not None:
                raise self.error

    def sync(self, generation: int) -> None:
        """A dirty sync: every channel marks where round ``generation`` starts."""
        for lane in self._lanes:
            lane.queue.put_nowait(_Sync(generation))

    async def finish(self) -> None:
        """End every channel after what is queued; raise the first channel error."""
        for lane in self._lanes:
            lane.queue.put_nowait(_End())
        for lane in self._lanes:
            await lane.done.wait()
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        for lane in self._lanes:
            if lane.task is not None:
                lane.task.cancel()
            lane.channel.abort()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    # -- per channel ------------------------------------------------------------------------
    async def _run(self, lane: _Lane) -> None:
        try:
            while True:
                job = await lane.queue.get()
                if isinstance(job, _End):
                    await lane.channel.send([lane.enc.channel_end()])
                    await lane.channel.finish()
                    return
                if isinstance(job, _Sync):
                    await lane.channel.send([lane.enc.channel_sync(job.generation)])
                    continue
                parts = await self._encode(lane, job)
                lane.page_jobs -= 1
                lane.room.set()
                await lane.channel.send(parts)
        except OSError as err:
            if self.error is None:
                # a channel the peer closed: QEMU's write reports EPIPE (the first write
                # after a reset may say ENOTCONN or ECONNRESET here)
                self.error = BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))
                self.error.__cause__ = err
            self.failed.set()
        finally:
            lane.done.set()

    async def _encode(self, lane: _Lane, job: _Pages) -> list[Part]:
        """The job's records.  Plain pages are named here and built by the channel's writer
        thread just before its kernel copy (:class:`~qmp_server.engine.page_run.PageRun`):
        each channel builds and copies on its own core, in parallel, while the loop walks
        on.  Building them on the loop made it the bottleneck (~0.2 CPU-s per GiB there, the
        writers waiting); in a pool thread, the hand-over and the pages built on one core
        and copied on the other cost more than they saved (benchmarks/bench_multifd.py).
        Compression runs in the pool."""
        loop = asyncio.get_running_loop()
        assert self._pool is not None
        if lane.compress is None:
            return encode_guest_pages_parts(
                lane.enc, self.guest, job.pages, zero=job.zero, deferred=True
            ).parts
        zero_part = encode_guest_pages_parts(
            lane.enc, self.guest, job.pages[job.zero], zero=job.zero[job.zero]
        ).parts
        normal = job.pages[~job.zero]
        if normal.size == 0:
            return zero_part
        compress = lane.compress
        # the pages are read here, on the loop, where the workload writes them
        raw = [
            (idx, self.guest.read_page_list(idx))
            for idx in (normal[o : o + PACKET_PAGES] for o in range(0, normal.size, PACKET_PAGES))
        ]

        def packets() -> list[tuple[npt.NDArray[np.int64], bytes]]:
            return [(idx, compress(data, int(idx.size))) for idx, data in raw]

        done = await loop.run_in_executor(self._pool, packets)
        parts = list(zero_part)
        for idx, data in done:
            parts += lane.enc.compressed_parts(self.compression, idx, data)
            self.account.compressed(int(idx.size) * PAGE_SIZE, len(data))
        return parts
