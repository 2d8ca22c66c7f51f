"""What QEMU's own migration stream would cost: the bytes behind every counter and the rate limit.

qmp-server sends its own format (``docs/stream-format.md``: runs of pages, cheap zero runs).
What a management tool sees must still be QEMU's: ``transferred``, ``precopy-bytes``,
``downtime-bytes``, ``mbps``, the time a bandwidth-limited migration takes.  So the source
keeps a :class:`QemuStream`: the bytes QEMU's stream would hold for the same pages, as QEMU
queues and flushes them, and the counters derive from it.  Facts (read in QEMU 7.2 and 10.0's
``migration/``, checked against their streams recorded here, ``docs/migration-engine.md`` §7):

1. **Records.**  A page header is 8 bytes; when the page's RAM block is not the block of the
   previous page sent (in the whole migration, not per section), the block name follows (one
   length byte and the name).  A zero page adds 1 byte, a normal page its 4096 bytes.  Every
   RAM section ends with an 8-byte ``EOS``; QEMU wraps each in a section header (5 bytes; 17
   for the first, which names ``ram``) and a footer (5 bytes).  Before the RAM come the file
   header (8 bytes), the configuration section (machine type name), the return-path commands
   (open: 5 bytes, ping: 9); at the switchover, 10.0 sends a 5-byte switchover-start command;
   after the RAM, the device state, ``EOF`` and the JSON description (recorded per machine).
2. **RAM bytes** (``ram_transferred_add``): pages and the ``EOS`` of iterations (not of the
   setup or of the final section).  They go to ``precopy-bytes`` while the guest runs, else to
   ``downtime-bytes``.  In 7.2, 8.0 and 8.1 ``transferred`` is their sum; from 8.2 (the 10.0
   profile) it is every byte flushed to the channel.
3. **Rate limit bytes.**  7.2/8.0 count every byte as it is queued; 8.1+ count only what was
   flushed.  QEMU's file buffer flushes when 64 iovecs are queued (a normal page takes two,
   its header and its data; a run of small records shares one) or 32 KiB of small records
   are buffered, and at the end of every section.  So 10.0 overshoots a low ``max-bandwidth``
   (live: 500 kB/s sends ~70 kB per period).
4. **Bandwidth** (``migration_update_counters``) counts every stream byte: 7.2 flushes before
   it looks, 10.0 counts what was flushed.
5. **mapped-ram** (9.0+, ``file:``; :mod:`~qmp_server.engine.mapped_ram`).  The configuration
   section carries a ``configuration/capabilities`` subsection naming the capability (47
   bytes); each block's setup entry adds a 28-byte header (version, page size, bitmap and
   pages offsets); pages have no header: a normal page is its 4096 bytes, written in place
   and flushed at once, a zero page costs nothing; the bitmaps are RAM bytes of the final
   section; the JSON description grows by 201 bytes (recorded).  With ``multifd`` the
   channels write the pages: ``multifd-bytes``, in ``transferred`` and the bandwidth but not
   in the RAM bytes, and not held by ``max-bandwidth`` (live: 467 kB of pages at 100 kB/s
   took 605 ms; without multifd 5.3 s).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from qmp_server.engine.guest import PAGE_SIZE
from qmp_server.profiles import Profile

__all__ = [
    "EOS_BYTES",
    "NORMAL_PAGE_BYTES",
    "ZERO_PAGE_BYTES",
    "BlockMap",
    "QemuStream",
]

PAGE_HEADER_BYTES = 8
ZERO_PAGE_BYTES = PAGE_HEADER_BYTES + 1
NORMAL_PAGE_BYTES = PAGE_HEADER_BYTES + PAGE_SIZE
EOS_BYTES = 8
FILE_HEADER_BYTES = 8
SECTION_HEADER_BYTES = 1 + 4
SECTION_FOOTER_BYTES = 1 + 4
#: The first RAM section's header: type, section id, ``ram`` (length byte), instance, version.
SECTION_START_BYTES = 1 + 4 + 1 + len(b"ram") + 4 + 4
OPEN_RETURN_PATH_BYTES = 1 + 2 + 2
PING_BYTES = 1 + 2 + 2 + 4
SWITCHOVER_START_BYTES = 1 + 2 + 2
#: rule 5: the ``configuration/capabilities`` subsection (type, name, version, count, and the
#: capability's name with its length byte), a block's mapped-ram header, the description's
#: growth
MAPPED_CAPABILITY_BYTES = (
    1 + 1 + len(b"configuration/capabilities") + 4 + 4 + 1 + len(b"mapped-ram")
)
MAPPED_HEADER_BYTES = 4 + 8 + 8 + 8
MAPPED_VMDESC_BYTES = 201
#: QEMUFile: buffered small records and queued iovecs before a flush (rule 3).
_IO_BUF_SIZE = 32768
_MAX_IOV = 64


class BlockMap:
    """The RAM blocks laid end to end in one page space, in QEMU's order."""

    def __init__(self, blocks: Sequence[tuple[str, int]]) -> None:
        self.names = tuple(name for name, _ in blocks)
        pages = [used // PAGE_SIZE for _, used in blocks]
        self.starts = (
            np.cumsum([0, *pages[:-1]], dtype=np.int64) if pages else np.zeros(0, np.int64)
        )
        self.page_count = int(sum(pages))
        #: what a block name costs after a page header (length byte + name)
        self.name_bytes = np.array([1 + len(n.encode()) for n in self.names], dtype=np.int64)

    def block_of(self, pages: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        return np.searchsorted(self.starts, pages, side="right").astype(np.int64) - 1

    def setup_body_bytes(self) -> int:
        """The setup record: total size, then each block's name and size, then ``EOS``."""
        return 8 + int(sum(int(n) + 8 for n in self.name_bytes)) + EOS_BYTES


@dataclass(frozen=True)
class PagesCost:
    """QEMU's bytes for pages about to be sent: per page, and what each needs of the buffer."""

    bytes: npt.NDArray[np.int64]
    normal: npt.NDArray[np.bool_]

    def head(self, n: int) -> PagesCost:
        """The cost of the first ``n`` pages only."""
        return PagesCost(self.bytes[:n], self.normal[:n])


class QemuStream:
    """QEMU's stream for one outgoing migration: what was queued, flushed, counted (rules)."""

    def __init__(
        self,
        profile: Profile,
        blocks: BlockMap,
        *,
        configuration_bytes: int,
        device_state_bytes: int,
        vmdesc_bytes: int = 0,
    ) -> None:
        self.blocks = blocks
        self.vmdesc_bytes = vmdesc_bytes
        self.configuration_bytes = configuration_bytes
        self.device_state_bytes = device_state_bytes
        #: 8.2+: ``transferred`` is every flushed byte (rule 2)
        self.transferred_is_stream = profile.since(8, 2)
        #: 8.1+: the rate limit sees flushed bytes only (rule 3)
        self.rate_counts_flushed = profile.since(8, 1)
        self.switchover_start = profile.since(10, 0)
        self._file = _FileBuffer()
        self.precopy_bytes = 0
        self.downtime_bytes = 0
        self.postcopy_bytes = 0
        #: after the switch to postcopy, RAM bytes count as ``postcopy-bytes``
        self.postcopy = False
        self.normal_pages = 0
        self.zero_pages = 0
        self._last_block = -1
        #: rule 5: ``mapped-ram``; pages written by multifd channels (``multifd-bytes``)
        self.mapped_ram = False
        self.mapped_channels = False
        self.channel_bytes = 0

    def use_mapped_ram(self, *, multifd: bool) -> None:
        """Rule 5, before :meth:`setup`: a ``file:`` migration with ``mapped-ram``."""
        self.mapped_ram = True
        self.mapped_channels = multifd

    # -- counters ------------------------------------------------------------------------
    @property
    def queued(self) -> int:
        """Every byte QEMU has written so far."""
        return self._file.queued

    @property
    def flushed(self) -> int:
        """The bytes QEMU's file buffer has flushed to the channel."""
        return self._file.flushed

    @property
    def transferred(self) -> int:
        """``ram.transferred`` (rule 2)."""
        if self.transferred_is_stream:
            return self.flushed + self.channel_bytes
        return self.precopy_bytes + self.downtime_bytes + self.postcopy_bytes

    @property
    def rate_bytes(self) -> int:
        """What the rate limit and the bandwidth measure see (rules 3 and 4)."""
        return self.flushed if self.rate_counts_flushed else self.queued

    def _small(self, nbytes: int) -> None:
        self._file.small(nbytes)

    def flush(self) -> None:
        self._file.flush()

    # -- the stream's parts ----------------------------------------------------------------
    def setup(self, *, return_path: bool) -> None:
        """Everything before the first iteration (QEMU's header, commands, RAM setup)."""
        mapped = self.mapped_ram
        capabilities = MAPPED_CAPABILITY_BYTES if mapped else 0
        self._small(FILE_HEADER_BYTES + self.configuration_bytes + capabilities)
        if return_path:
            self._small(OPEN_RETURN_PATH_BYTES + PING_BYTES)
        headers = MAPPED_HEADER_BYTES * len(self.blocks.names) if mapped else 0
        self._small(
            SECTION_START_BYTES + self.blocks.setup_body_bytes() + headers + SECTION_FOOTER_BYTES
        )
        self.flush()

    def begin_section(self) -> None:
        self._small(SECTION_HEADER_BYTES)

    def end_section(self, *, downtime: bool, final: bool = False) -> None:
        """``EOS`` and the footer; QEMU flushes after each section."""
        if not final:
            self._count_ram(EOS_BYTES, downtime)
        self._small(EOS_BYTES + SECTION_FOOTER_BYTES)
        self.flush()

    def switchover(self) -> None:
        """The switchover's command (10.0) and the final RAM section's header."""
        if self.switchover_start:
            self._small(SWITCHOVER_START_BYTES)
        self.begin_section()

    def complete(self, device_bytes: int = 0) -> None:
        """After the final RAM section: device state, ``EOF``, the description; flushed."""
        extra = MAPPED_VMDESC_BYTES if self.mapped_ram else 0
        self._file.unbuffered(self.device_state_bytes + device_bytes + extra)

    def mapped_bitmaps(self, nbytes: int) -> None:
        """Rule 5: the blocks' bitmaps, written as the final RAM section ends."""
        self._count_ram(nbytes, downtime=True)
        self._file.unbuffered(nbytes)

    def postcopy_switch(self, device_bytes: int = 0) -> None:
        """The switch to postcopy: the device state goes in one package, without the JSON
        description that ends a precopy stream; RAM bytes from here on are postcopy bytes."""
        self._file.unbuffered(self.device_state_bytes - self.vmdesc_bytes + device_bytes)
        self.postcopy = True

    def multifd_flush(self) -> None:
        """8.0+ multifd: the 8-byte ``MULTIFD_FLUSH`` flag of a sync, then a flush; not a RAM
        byte (``engine/multifd_cost.py``, rule 3)."""
        self._small(8)
        self.flush()

    def device_data(self, nbytes: int) -> None:
        """Device data sent during precopy (``vfio-sim``): payload as one buffer."""
        self._file.unbuffered(nbytes)

    # -- pages --------------------------------------------------------------------------------
    def cost(self, pages: npt.NDArray[np.int64], zero: npt.NDArray[np.bool_]) -> PagesCost:
        """What sending ``pages`` (in order, after what was sent) would add (rule 1)."""
        normal = ~zero
        if self.mapped_ram:
            return PagesCost(np.where(normal, PAGE_SIZE, 0).astype(np.int64), normal)
        nbytes = np.where(normal, NORMAL_PAGE_BYTES, ZERO_PAGE_BYTES).astype(np.int64)
        if pages.size:
            ends = self.blocks.block_of(pages[[0, -1]])
            if ends[0] == ends[1] and pages[-1] >= pages[0]:
                # one block, no wrap (the common step): only the first page may name it
                if ends[0] != self._last_block:
                    nbytes[0] += self.blocks.name_bytes[ends[0]]
                return PagesCost(nbytes, normal)
            block = self.blocks.block_of(pages)
            prev = np.empty_like(block)
            prev[0] = self._last_block
            prev[1:] = block[:-1]
            changed = block != prev
            nbytes[changed] += self.blocks.name_bytes[block[changed]]
        return PagesCost(nbytes, normal)

    def fit(self, cost: PagesCost, allowance: int) -> int:
        """How many of the costed pages QEMU sends before its rate limit is exceeded.

        QEMU tests the limit before each page: a page goes while the bytes counted so far
        (rule 3) are not above ``allowance``.
        """
        n = cost.bytes.size
        if n == 0:
            return 0
        if self.mapped_channels:
            return n  # rule 5: the channels' pages do not hold the rate limit (live 10.0)
        if not self.rate_counts_flushed or self.mapped_ram:
            # (mapped-ram writes every page at once: each is counted as it goes)
            counted = self.rate_bytes if self.mapped_ram else self.queued
            before = counted + np.concatenate(([0], np.cumsum(cost.bytes)[:-1]))
            return int(np.searchsorted(before, allowance, side="right"))
        if self.flushed > allowance:
            return 0
        # replay the buffer on a copy: only flushes move the counted bytes
        probe = self._file.copy()
        for k in range(n):
            if probe.flushed > allowance:
                return k
            probe.page(int(cost.bytes[k]), bool(cost.normal[k]))
        return n

    def add_pages(
        self,
        pages: npt.NDArray[np.int64],
        cost: PagesCost,
        *,
        downtime: bool,
        exact_flushes: bool = True,
    ) -> None:
        """The costed pages were sent (``cost`` from :meth:`cost` of the same pages).

        ``exact_flushes`` False (no rate limit to apply): take them as flushed at once, which
        the end of the section makes true anyway.
        """
        n = int(cost.bytes.size)
        if n == 0:
            return
        normal_count = int(np.count_nonzero(cost.normal))
        self.normal_pages += normal_count
        self.zero_pages += n - normal_count
        total = int(cost.bytes.sum())
        if self.mapped_channels:
            self.channel_bytes += total
            return
        self._count_ram(total, downtime)
        self._last_block = int(self.blocks.block_of(pages[-1:])[0])
        if not self.rate_counts_flushed or not exact_flushes or self.mapped_ram:
            # only where the rate limit sees flushes does the buffer's state matter
            self._file.unbuffered(total)
            return
        file = self._file
        start = 0
        if n > 4 * _MAX_IOV:
            # a long run: only the last flushes matter; replay the tail exactly
            start = n - 4 * _MAX_IOV
            file.unbuffered(int(cost.bytes[:start].sum()))
        for k in range(start, n):
            file.page(int(cost.bytes[k]), bool(cost.normal[k]))

    def add_xbzrle(self, page: int, delta_len: int, *, downtime: bool) -> None:
        """An XBZRLE page: its header (and block name), the flag, the length, the delta, all
        copied into QEMU's buffer."""
        block = int(self.blocks.block_of(np.array([page], dtype=np.int64))[0])
        nbytes = PAGE_HEADER_BYTES + 1 + 2 + delta_len
        if block != self._last_block:
            nbytes += int(self.blocks.name_bytes[block])
        self._last_block = block
        self._count_ram(nbytes, downtime)
        self._file.small(nbytes)

    def add_thread_record(self, nbytes: int, *, downtime: bool) -> None:
        """A record a compress thread wrote (7.2's ``compress``: a compressed or zero page),
        moved into QEMU's buffer when the thread is drained."""
        self._count_ram(nbytes, downtime)
        self._file.small(nbytes)

    def _count_ram(self, nbytes: int, downtime: bool) -> None:
        if self.postcopy:
            self.postcopy_bytes += nbytes
        elif downtime:
            self.downtime_bytes += nbytes
        else:
            self.precopy_bytes += nbytes


class _FileBuffer:
    """QEMUFile's buffer (rule 3): what is queued, what was flushed, and when it flushes."""

    __slots__ = ("buf", "flushed", "iov", "last_small", "queued")

    def __init__(self) -> None:
        self.queued = 0  # every byte written so far
        self.flushed = 0
        self.buf = 0  # small-record bytes in the buffer
        self.iov = 0  # iovecs queued
        self.last_small = False  # the last iovec is the buffer's (a small record extends it)

    def copy(self) -> _FileBuffer:
        twin = _FileBuffer()
        twin.queued, twin.flushed, twin.buf = self.queued, self.flushed, self.buf
        twin.iov, twin.last_small = self.iov, self.last_small
        return twin

    def small(self, nbytes: int) -> None:
        """A small record: copied into the buffer, sharing the buffer's last iovec."""
        self.queued += nbytes
        if not self.last_small:
            self.iov += 1
            self.last_small = True
        self.buf += nbytes
        if self.buf >= _IO_BUF_SIZE or self.iov >= _MAX_IOV:
            self.flush()

    def page(self, nbytes: int, normal: bool) -> None:
        """A page record: its header is small; a normal page's data is an iovec of its own."""
        self.small(nbytes - PAGE_SIZE if normal else nbytes)
        if normal:
            self.queued += PAGE_SIZE
            self.iov += 1
            self.last_small = False
            if self.iov >= _MAX_IOV:
                self.flush()

    def unbuffered(self, nbytes: int) -> None:
        """Bytes written and flushed at once (device state, or when flushes do not matter)."""
        self.queued += nbytes
        self.flush()

    def flush(self) -> None:
        self.flushed = self.queued
        self.buf = self.iov = 0
        self.last_small = False
