"""The source's page path: where a step's pages go, and what QEMU counts for them.

Why a module of its own: the precopy loop (:mod:`migration_source`) decides *when* to send,
sync, stop and switch over; this decides *how* a step's pages leave (the main stream, multifd
channels, 7.2's compress threads, XBZRLE deltas, or their places in a ``mapped-ram`` file)
and keeps QEMU's stream model (:class:`~qmp_server.engine.wire_cost.QemuStream`) and the
multifd account in step, so the counters and the rate limit are QEMU's whatever the path.
Contract: one :class:`PagePath` per outgoing migration, built once its channels are open.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import cast

import numpy as np

from qmp_server.engine.compression import LegacyPageCompressor, Method, MultifdCompressor
from qmp_server.engine.guest import GuestMemory
from qmp_server.engine.legacy_compress import (
    ZERO_RECORD_BYTES,
    CompressThreads,
    compressed_record_bytes,
)
from qmp_server.engine.migration import SourceMigration
from qmp_server.engine.multifd_cost import MultifdAccount, MultifdRules, packet_share
from qmp_server.engine.stream import StreamEncoder
from qmp_server.engine.wire_cost import BlockMap, PagesCost, QemuStream
from qmp_server.runtime.channel import Address, Channel
from qmp_server.runtime.mapped_ram import MappedRamOutgoing
from qmp_server.runtime.migration_context import MigrationContext
from qmp_server.runtime.multifd_source import Compressor, MultifdOutgoing
from qmp_server.runtime.page_sender import PageSender

__all__ = ["LegacyCompression", "PagePath", "mapped_outgoing", "multifd_outgoing"]


def _compressor(method: Method, level: int) -> Compressor:
    """A channel's compressor (one stream per channel, as QEMU's)."""
    return MultifdCompressor(method, level).compress


def multifd_outgoing(
    ctx: MigrationContext, address: Address | None, channel: Channel
) -> MultifdOutgoing | None:
    """The multifd channels a migration uses (``multifd`` over a socket address)."""
    if not ctx.vm.config.enabled("multifd") or address is None:
        return None
    if address.scheme not in ("tcp", "unix") or channel.sock is None:
        return None
    detection = ctx.param("zero-page-detection") if ctx.profile.since(9, 0) else None
    method = str(ctx.param("multifd-compression"))
    new_compressor = None
    if method in ("zlib", "zstd"):
        level = int(ctx.param(f"multifd-{method}-level"))
        new_compressor = partial(_compressor, cast(Method, method), level)
    channels = int(ctx.param("multifd-channels"))
    rules = MultifdRules.for_profile(ctx.profile, str(detection or "legacy"))
    zero_copy = ctx.vm.config.enabled("zero-copy-send")
    account = MultifdAccount(rules, BlockMap(ctx.layout.block_list()), channels,
                             zero_copy=zero_copy)  # fmt: skip
    return MultifdOutgoing(
        ctx.guest, account, method, new_compressor, link=ctx.link, zero_copy=zero_copy
    )


def mapped_outgoing(
    ctx: MigrationContext, address: Address | None, channel: Channel
) -> MappedRamOutgoing | None:
    """``mapped-ram`` on a ``file:`` migration: the pages go to their places in the file,
    written by ``multifd-channels`` threads with ``multifd``, else by one."""
    cfg = ctx.vm.config
    if not cfg.enabled("mapped-ram") or address is None or channel.file is None:
        return None
    multifd = cfg.enabled("multifd")
    writers = int(ctx.param("multifd-channels")) if multifd else 1
    # ``direct-io``: QEMU opens its channels with O_DIRECT (with multifd only; live 10.0)
    direct = multifd and bool(ctx.param("direct-io")) and address.scheme == "file"
    return MappedRamOutgoing(
        ctx.guest,
        BlockMap(ctx.layout.block_list()),
        channel,
        base=address.offset,
        writers=writers,
        channels=multifd,
        direct_path=address.path if direct else None,
    )


class LegacyCompression:
    """7.2's ``compress`` for one migration: the threads' model and a pool that compresses
    a step's pages in ``compress-threads`` pieces (zlib releases the GIL)."""

    def __init__(self, threads: CompressThreads, compressor: LegacyPageCompressor) -> None:
        self.threads = threads
        self.compressor = compressor
        self.count = threads.count
        self.pool = ThreadPoolExecutor(self.count, thread_name_prefix="compress")

    def compress_all(self, pages: list[bytes]) -> list[bytes]:
        """Each page its own zlib stream (run in the pool; the pieces in parallel)."""
        if len(pages) < 2 * self.count:
            return [self.compressor.compress_page(p) for p in pages]
        size = -(-len(pages) // self.count)
        pieces = [pages[i : i + size] for i in range(0, len(pages), size)]
        out: list[bytes] = []
        for done in self.pool.map(lambda ps: [self.compressor.compress_page(p) for p in ps],
                                  pieces):  # fmt: skip
            out += done
        return out


class PagePath:
    """How one migration's pages leave the source, and QEMU's counting of them."""

    def __init__(
        self,
        state: SourceMigration,
        guest: GuestMemory,
        qemu: QemuStream,
        *,
        multifd: MultifdOutgoing | None = None,
        legacy: LegacyCompression | None = None,
        mapped: MappedRamOutgoing | None = None,
    ) -> None:
        self.state = state
        self.guest = guest
        self.qemu = qemu
        self.multifd = multifd
        self.legacy = legacy
        self.mapped = mapped

    def count(self) -> None:
        """query-migrate's counters from QEMU's stream model (and its multifd channels)."""
        self.state.account(self.qemu, self.multifd.account if self.multifd else None)

    def rate_bytes(self) -> int:
        """The bytes QEMU's rate limit has seen: its main stream's, and the multifd packets
        (7.2 charges a packet when it hands it to a channel)."""
        extra = self.multifd.account.multifd_bytes if self.multifd is not None else 0
        return self.qemu.rate_bytes + extra

    def fit(self, pages: np.ndarray, zero: np.ndarray, cost: PagesCost, allowance: int) -> int:
        """How many pages of a step QEMU's rate limit lets go (tested before each page).
        With multifd only the main channel's pages are tested page by page; the channels'
        packets are charged when they are handed over (7.2, docs/multifd-facts.md §10)."""
        if self.multifd is None:
            return self.qemu.fit(cost, allowance)
        account = self.multifd.account
        main = account.main_mask(zero)
        charged = np.where(main, cost.bytes, 0)
        if account.rules.counts_in_channels:
            # 8.1+: the channels' packets are charged as they go, page by page in effect
            # (their header spread over the packet's pages; zero pages carry no data)
            channel = packet_share(zero[~main], account.rules)
            charged[~main] = channel
        main_cost = PagesCost(charged, cost.normal & main)
        return self.qemu.fit(main_cost, allowance - account.multifd_bytes)

    def multifd_sync(self) -> None:
        """A sync of QEMU's multifd channels (the accounting: SYNC packets, 8.0+'s flag)."""
        if self.multifd is None:
            return
        account = self.multifd.account
        account.sync(kernel_copied=self.multifd.kernel_copied)
        if account.rules.flush_flag:
            self.qemu.multifd_flush()

    async def send_step(
        self,
        channel: Channel,
        enc: StreamEncoder,
        sender: PageSender,
        pages: np.ndarray,
        zero: np.ndarray,
        cost: PagesCost,
        *,
        downtime: bool,
        exact_flushes: bool,
        last_stage: bool = False,
    ) -> None:
        """Send a step's pages: in full, or as XBZRLE deltas once the first pass is done."""
        qemu = self.qemu
        xbzrle = self.state.xbzrle
        multifd = self.multifd
        if self.mapped is not None:
            # nothing of the pages goes in the stream: they are written at their places
            sender.take(pages, zero, keep=np.zeros(pages.size, dtype=np.bool_))
            await self.mapped.write(pages, zero)
            qemu.add_pages(pages, cost, downtime=downtime, exact_flushes=exact_flushes)
            return
        if multifd is not None:
            on_main = multifd.account.main_mask(zero)
            previous = sender.last_page
            encoded = sender.take(pages, zero, keep=on_main)
            if encoded.parts:
                await channel.send(encoded.parts)
            await multifd.send_pages(pages[~on_main], zero[~on_main])
            self._account_multifd(pages, zero, previous, downtime=downtime)
            return
        if self.legacy is not None:
            await self._send_compressed(channel, enc, sender, pages, zero, downtime)
            return
        if xbzrle is None:
            encoded = sender.take(pages, zero, deferred=True)
            await channel.send(encoded.parts)
            qemu.add_pages(pages, cost, downtime=downtime, exact_flushes=exact_flushes)
            return
        first = 0
        if not (xbzrle.enabled or sender.completed_pass):
            # the round ends where the walk wraps, possibly inside this step
            before = np.concatenate(([sender.last_page], pages[:-1]))
            wraps = np.flatnonzero(pages < before)
            first = int(wraps[0]) if wraps.size else int(pages.size)
        full, deltas = xbzrle.split(
            pages, zero, self.guest.read_page, last_stage=last_stage, first=first
        )
        encoded = sender.take(pages, zero, keep=full)
        await channel.send([*encoded.parts, *(enc.xbzrle(p, d) for p, d in deltas)])
        qemu.add_pages(pages[full], PagesCost(cost.bytes[full], cost.normal[full]),
                       downtime=downtime, exact_flushes=exact_flushes)  # fmt: skip
        for page, delta in deltas:
            qemu.add_xbzrle(page, len(delta), downtime=downtime)

    async def _send_compressed(
        self,
        channel: Channel,
        enc: StreamEncoder,
        sender: PageSender,
        pages: np.ndarray,
        zero: np.ndarray,
        downtime: bool,
    ) -> None:
        """7.2's ``compress``: a block's first page from the migration thread, the others
        through the compress threads (zero records, or each page its own zlib stream,
        compressed in the thread pool); counted as the threads are drained."""
        legacy = self.legacy
        qemu = self.qemu
        assert legacy is not None
        starts = qemu.blocks.starts
        threads = legacy.threads.via_threads(pages, starts)
        squeeze = threads & ~zero
        previous = sender.last_page
        encoded = sender.take(pages, zero, keep=~squeeze)
        datas: list[bytes] = []
        if squeeze.any():
            raw = [self.guest.read_page(int(i)) for i in pages[squeeze]]
            datas = await asyncio.get_running_loop().run_in_executor(None, legacy.compress_all, raw)
        await channel.send(
            [*encoded.parts, *(enc.compressed_page(int(i), d)
                               for i, d in zip(pages[squeeze], datas, strict=True))]
        )  # fmt: skip
        main = ~threads
        if main.any():
            qemu.add_pages(pages[main], qemu.cost(pages[main], zero[main]), downtime=downtime)
        blocks = qemu.blocks.block_of(pages)
        sizes = iter(datas)
        for k in np.flatnonzero(threads).tolist():
            if int(pages[k]) <= previous:
                legacy.threads.flush()  # a completed pass drains every thread
            previous = int(pages[k])
            if zero[k]:
                nbytes = ZERO_RECORD_BYTES
                qemu.zero_pages += 1
            else:
                nbytes = compressed_record_bytes(len(next(sizes)))
            qemu.add_thread_record(nbytes, downtime=downtime)
            legacy.threads.give(nbytes, bool(zero[k]), int(blocks[k]))

    def _account_multifd(
        self, pages: np.ndarray, zero: np.ndarray, previous: int, *, downtime: bool
    ) -> None:
        """QEMU's multifd counting of a step: the channels' packets, the main channel's zero
        pages; 8.0+ syncs where its walk wraps past the end of RAM (multifd_cost rule 3)."""
        assert self.multifd is not None
        account = self.multifd.account
        cut = pages.size
        if not account.rules.sync_per_section and pages.size:
            back = np.flatnonzero(pages < np.concatenate(([previous + 1], pages[:-1] + 1)))
            cut = int(back[0]) if back.size else pages.size
        for part in (slice(0, cut), slice(cut, None)):
            if part.start == cut and cut < pages.size:
                self.multifd_sync()
            p, z = pages[part], zero[part]
            if not p.size:
                continue
            account.queue(p, z, packets=False)
            main = account.main_mask(z)
            if main.any():
                self.qemu.add_pages(p[main], self.qemu.cost(p[main], z[main]), downtime=downtime)
