"""``mapped-ram``: where each RAM block's pages live in a ``file:`` migration, and its bitmap.

Why a module of its own: QEMU 9.0+'s ``mapped-ram`` capability turns a ``file:`` migration
from a stream into a file with a place for every page, so a page dirtied twice is written
twice at the same offset and the file never grows past the guest's size.  The layout is a
decision a unit test can hold against QEMU's recorded files; the writing and reading live in
:mod:`qmp_server.runtime.mapped_ram`.

Facts (recorded from QEMU 10.0, ``docs/multifd-facts.md`` §13):

1. The stream starts as usual.  In the RAM setup, each block gets a small header in the
   stream; its bitmap (one bit per page, in 8-byte words) follows the header; its pages start
   at the next 1 MiB boundary of the file, one page per 4 KiB in block order; the stream goes
   on right after the block's last page.  So the file's apparent size is the guest's RAM plus
   about 1 MiB per block plus the device state, and it is sparse: a page never written (a
   zero page) is a hole.
2. A page that is not zero is written in place (``pwrite``) and its bit set; a zero page only
   clears its bit.  The bitmaps are written when the migration completes (as
   ``downtime-bytes``); the destination loads the pages whose bit is set and zeroes the rest.
3. No page header goes anywhere: a normal page costs its 4096 bytes, a zero page nothing.
   With ``multifd`` the channels write the pages (``multifd-bytes`` = normal pages × 4096,
   no packet headers, no sync flags) and the main stream is the same as without.

qmp-server's own record for a block is ``MAPPED_BLOCK`` (``docs/stream-format.md``): the
offsets it names are relative to the stream's first byte; the alignment is the file's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from qmp_server.engine.guest import PAGE_SIZE, page_runs

__all__ = [
    "ALIGNMENT",
    "BlockRegion",
    "LoadPlan",
    "MappedBitmap",
    "bitmap_bytes",
    "check_alignment",
    "plan_load",
    "plan_region",
    "region_runs",
]

#: Where a block's pages start: the next multiple of this in the file.
ALIGNMENT = 1 << 20


def bitmap_bytes(pages: int) -> int:
    """A block's bitmap size: one bit per page, in whole 64-bit words (QEMU's longs)."""
    return (pages + 63) // 64 * 8


def _align_up(value: int, to: int) -> int:
    return (value + to - 1) // to * to


@dataclass(frozen=True)
class BlockRegion:
    """One RAM block's place in the file; offsets relative to the stream's first byte."""

    first_page: int
    pages: int
    bitmap_offset: int
    pages_offset: int
    #: where the stream goes on: right after the block's last page
    next_offset: int

    def page_offset(self, page: int) -> int:
        return self.pages_offset + (page - self.first_page) * PAGE_SIZE


def plan_region(
    first_page: int,
    pages: int,
    *,
    record_at: int,
    record_bytes: int,
    base: int = 0,
    alignment: int = ALIGNMENT,
) -> BlockRegion:
    """The region of a block whose record starts ``record_at`` bytes into the stream.

    ``base``: the stream's own offset in the file (the URI's ``offset``); the pages are
    aligned in the file, so the relative offsets depend on it.  ``alignment``: QEMU's, but
    for tests that want small files (a multiple of the page size).
    """
    bitmap_at = record_at + record_bytes
    pages_at = _align_up(base + bitmap_at + bitmap_bytes(pages), alignment) - base
    return BlockRegion(first_page, pages, bitmap_at, pages_at, pages_at + pages * PAGE_SIZE)


def check_region(region: BlockRegion, *, expected_first: int, ram_pages: int) -> str | None:
    """What is wrong with a region read from a file (None: nothing).  Its pages' alignment
    is the file's, not the stream's: :func:`check_alignment` once the stream's offset is
    known."""
    if region.first_page != expected_first:
        return f"mapped-ram block at page {region.first_page}, expected {expected_first}"
    if region.pages <= 0 or region.first_page + region.pages > ram_pages:
        return f"mapped-ram block of {region.pages} pages at {region.first_page} is out of RAM"
    if region.bitmap_offset + bitmap_bytes(region.pages) > region.pages_offset:
        return "mapped-ram bitmap overlaps the block's pages"
    if region.next_offset != region.pages_offset + region.pages * PAGE_SIZE:
        return "mapped-ram block does not end after its pages"
    return None


def check_alignment(region: BlockRegion, base: int) -> str | None:
    """A region whose pages do not start on a page of the file (``base``: the stream's
    offset in it)."""
    if (base + region.pages_offset) % PAGE_SIZE:
        return f"mapped-ram pages at an unaligned offset {base + region.pages_offset}"
    return None


def region_runs(
    region: BlockRegion, pages: npt.NDArray[np.int64], *, piece_pages: int | None = None
) -> list[tuple[int, int, int]]:
    """``(file_offset, first_page, count)`` for each run of consecutive ``pages`` (sorted,
    inside ``region``), cut in pieces of at most ``piece_pages`` (a worker's buffer): what
    one ``pwrite``/``pread`` moves."""
    return [
        (region.page_offset(start + k), start + k, min(piece_pages or count, count - k))
        for start, count in page_runs(pages)
        for k in range(0, count, piece_pages or count)
    ]


class MappedBitmap:
    """Which pages the file holds: set when a page is written, cleared when it went as zero."""

    def __init__(self, ram_pages: int) -> None:
        self.bits = np.zeros(ram_pages, dtype=np.bool_)

    def mark(self, pages: npt.NDArray[np.int64], zero: npt.NDArray[np.bool_]) -> None:
        self.bits[pages] = ~zero

    def block_bytes(self, region: BlockRegion) -> bytes:
        """The block's bitmap as written to the file: least significant bit first, the
        last word padded with zero bits."""
        bits = self.bits[region.first_page : region.first_page + region.pages]
        packed = np.packbits(bits, bitorder="little").tobytes()
        return packed.ljust(bitmap_bytes(region.pages), b"\0")

    @staticmethod
    def parse(region: BlockRegion, raw: bytes) -> npt.NDArray[np.bool_]:
        """A bitmap read back: one bool per page of the block; set padding bits are an error."""
        if len(raw) != bitmap_bytes(region.pages):
            raise ValueError(f"mapped-ram bitmap of {len(raw)} bytes, expected "
                             f"{bitmap_bytes(region.pages)}")  # fmt: skip
        bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="little")
        if bits[region.pages :].any():
            raise ValueError("mapped-ram bitmap has bits set beyond the block's last page")
        return bits[: region.pages].astype(np.bool_)


@dataclass(frozen=True)
class LoadPlan:
    """What the destination does with one block: the runs to zero, the runs to read."""

    zero_runs: list[tuple[int, int]]
    #: ``(file_offset, first_page, count)``, relative to the stream's first byte
    read_runs: list[tuple[int, int, int]]


def plan_load(region: BlockRegion, raw_bitmap: bytes, *, piece_pages: int) -> LoadPlan:
    """The block's load from its bitmap as read (reads cut in ``piece_pages`` pieces);
    raises ValueError for a bitmap that cannot be the source's."""
    present = MappedBitmap.parse(region, raw_bitmap)
    pages = np.arange(region.first_page, region.first_page + region.pages, dtype=np.int64)
    reads = region_runs(region, pages[present], piece_pages=piece_pages)
    return LoadPlan(page_runs(pages[~present]), reads)


def bitmaps_total(blocks: Sequence[int]) -> int:
    """Every block's bitmap, in bytes (what the completion writes: ``downtime-bytes``)."""
    return sum(bitmap_bytes(p) for p in blocks)
