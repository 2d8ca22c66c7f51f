"""Page compression as QEMU does it: multifd zlib/zstd packets and 7.2's legacy ``compress``.

Contract: pure (no clocks, no threads, no I/O).  Every compressed size equals what QEMU
produces from the same pages with the same zlib / libzstd, because the library is driven the
way QEMU drives it (facts and sources: docs/compression-facts.md):

- **multifd** (:class:`MultifdCompressor`, :class:`MultifdDecompressor`): one compression
  stream per channel, created with the level at channel setup and never reset or ended; a
  packet's pages go into it back to back and the packet ends with a sync flush (zlib
  ``Z_SYNC_FLUSH``, zstd ``ZSTD_e_flush``), so each packet decodes on its own given the
  earlier packets of its channel.  No fallback: output that does not fit fails the channel
  (QEMU's buffer always fits).  QEMU 7.2 and 10.0 produce the same bytes; they differ only
  in which pages reach a packet (10.0's ``multifd-zero-page-detection=multifd`` keeps zero
  pages out of the compressed data and skips compression for a packet without normal
  pages), which is the caller's concern: ``compress(b"", 0)`` is ``b""`` and leaves the
  stream alone.
- **legacy** (:class:`LegacyPageCompressor`): each page is its own zlib stream (the thread's
  stream is reset, then one ``deflate(Z_FINISH)``), sent as a be32 length and those bytes;
  :class:`LegacyCompressStats` is query-migrate's ``compression`` member, counted exactly
  where 7.2 counts it (warts included).

Threading: one compressor per channel, used from that channel's worker thread.  CPython's
``zlib`` and ``zstandard`` release the GIL while they compress or decompress, so workers run
on all cores (tools/bench_compression_threads.py measures it).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, Literal

import zstandard

__all__ = [
    "LEGACY_MAX_LENGTH",
    "PAGE_SIZE",
    "LegacyCompressStats",
    "LegacyPageCompressor",
    "Method",
    "MultifdCompressor",
    "MultifdDecompressor",
]

PAGE_SIZE = 4096
Method = Literal["zlib", "zstd"]
#: zlib's compressBound(4096): the largest be32 length 7.2's destination accepts for a page.
LEGACY_MAX_LENGTH = PAGE_SIZE + (PAGE_SIZE >> 12) + (PAGE_SIZE >> 14) + (PAGE_SIZE >> 25) + 13

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_ZLIB_SYNC_MARK = b"\x00\x00\xff\xff"
_ZSTD_BLOCK_MAX = 128 << 10


def _check_pages(pages: bytes | memoryview, count: int) -> None:
    if count < 0 or len(pages) != count * PAGE_SIZE:
        raise ValueError(f"{len(pages)} bytes are not {count} pages of {PAGE_SIZE}")


class MultifdCompressor:
    """The compression stream of one multifd channel (send side).

    :param method: ``multifd-compression``: ``"zlib"`` or ``"zstd"``.
    :param level: ``multifd-zlib-level`` (0-9) or ``multifd-zstd-level`` (0-20).
    """

    def __init__(self, method: Method, level: int) -> None:
        self.method: Method = method
        self.level = level
        if method == "zlib":
            if not 0 <= level <= 9:
                raise ValueError(f"zlib level {level} is not in 0..9")
            # deflateInit(level): 32 KiB window, memLevel 8, default strategy (Python's defaults)
            self._zlib = zlib.compressobj(level)
        elif method == "zstd":
            if not 0 <= level <= 20:
                raise ValueError(f"zstd level {level} is not in 0..20")
            # ZSTD_initCStream(level): unknown content size, no checksum
            self._zstd = zstandard.ZstdCompressor(level=level).compressobj()
        else:
            raise ValueError(f"unknown multifd compression {method!r}")

    def compress(self, pages: bytes | memoryview, count: int) -> bytes:
        """The compressed data of one packet holding ``count`` pages (``count * 4096`` bytes)."""
        _check_pages(pages, count)
        if count == 0:
            return b""
        # Page by page as QEMU feeds them: at zlib level 0 (stored blocks) the output depends
        # on how the input is split; at the other levels it does not, but costs no more.
        view = memoryview(pages).cast("B")
        pieces = range(0, len(view), PAGE_SIZE)
        if self.method == "zlib":
            out = [self._zlib.compress(view[i : i + PAGE_SIZE]) for i in pieces]
            out.append(self._zlib.flush(zlib.Z_SYNC_FLUSH))
        else:
            out = [self._zstd.compress(view[i : i + PAGE_SIZE]) for i in pieces]
            out.append(self._zstd.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK))
        return b"".join(out)


class MultifdDecompressor:
    """The decompression stream of one multifd channel (receive side).

    :meth:`decompress` returns exactly the packet's pages or raises :class:`ValueError`
    (corrupt data, too little, or data beyond the pages); after an error the stream is
    unusable, as the channel (and the migration) has failed.
    """

    def __init__(self, method: Method) -> None:
        if method not in ("zlib", "zstd"):
            raise ValueError(f"unknown multifd compression {method!r}")
        self.method: Method = method
        self._zlib = zlib.decompressobj()
        self._zstd = zstandard.ZstdDecompressor().decompressobj()
        self._zstd_header = False
        self._failed = False

    def decompress(self, data: bytes | memoryview, count: int) -> bytes:
        """The ``count`` pages (``count * 4096`` bytes) of one packet's compressed ``data``."""
        if count < 0:
            raise ValueError(f"negative page count {count}")
        if self._failed:
            raise ValueError("the stream failed earlier")
        if count == 0:
            if len(data):
                raise ValueError(f"{len(data)} bytes of compressed data for no page")
            return b""
        self._failed = True  # until this packet decoded cleanly
        want = count * PAGE_SIZE
        try:
            out = self._zlib_packet(data, want) if self.method == "zlib" else (
                self._zstd_packet(memoryview(data).cast("B"), want)
            )  # fmt: skip
        except (zlib.error, zstandard.ZstdError) as exc:
            raise ValueError(f"{self.method}: corrupt data ({exc})") from None
        if len(out) != want:
            raise ValueError(f"{self.method}: packet holds {len(out)} bytes, expected {want}")
        self._failed = False
        return out

    def _zlib_packet(self, data: bytes | memoryview, want: int) -> bytes:
        # A packet ends with Z_SYNC_FLUSH's empty stored block: without it the packet was cut
        # or has something after it (and the next packet would not decode).
        if bytes(data[-4:]) != _ZLIB_SYNC_MARK:
            raise ValueError("zlib: the packet does not end with a sync flush")
        # One byte more than wanted: more output means data beyond the pages.
        out = self._zlib.decompress(data, want + 1)
        if self._zlib.eof:
            raise ValueError("zlib: the stream ended (QEMU never ends it)")
        return out

    def _zstd_packet(self, data: memoryview, want: int) -> bytes:
        """Feeds the packet one block at a time, so garbage cannot make it expand unbounded.

        A packet ends with a flush, hence on a block boundary; the first one starts with the
        frame header.
        """
        pos = 0
        if not self._zstd_header:
            pos = _zstd_frame_header_size(data)
            self._zstd_header = True
        start = 0  # the frame header goes in with the first block
        chunks: list[bytes] = []
        produced = 0
        while pos < len(data):
            if len(data) - pos < 3:
                raise ValueError("zstd: truncated block header")
            header = int.from_bytes(data[pos : pos + 3], "little")
            kind, size = (header >> 1) & 3, header >> 3
            if header & 1:
                raise ValueError("zstd: the frame ended (QEMU never ends it)")
            if kind == 3:
                raise ValueError("zstd: reserved block type")
            if size > _ZSTD_BLOCK_MAX:
                raise ValueError("zstd: block larger than the maximum")
            pos += 3 + (1 if kind == 1 else size)
            if pos > len(data):
                raise ValueError("zstd: truncated block")
            chunk = self._zstd.decompress(data[start:pos])
            start = pos
            chunks.append(chunk)
            produced += len(chunk)
            if produced > want:
                raise ValueError("zstd: data beyond the packet's pages")
        return b"".join(chunks)


def _zstd_frame_header_size(data: memoryview) -> int:
    """Size of the zstd frame header at the start of ``data`` (RFC 8878 section 3.1.1.1)."""
    if len(data) < 5 or bytes(data[:4]) != _ZSTD_MAGIC:
        raise ValueError("zstd: no frame header")
    descriptor = data[4]
    if descriptor & 0x08:
        raise ValueError("zstd: reserved frame header bit set")
    fcs_flag, single = descriptor >> 6, bool(descriptor & 0x20)
    size = 5 + (0 if single else 1) + (0, 1, 2, 4)[descriptor & 3]
    size += (1 if single else 0, 2, 4, 8)[fcs_flag]
    if size > len(data):
        raise ValueError("zstd: truncated frame header")
    return size


class LegacyPageCompressor:
    """7.2's ``compress`` capability for one page at a time (any compress thread).

    :param level: ``compress-level`` (0-9; 0 stores the page uncompressed in zlib format).
    """

    def __init__(self, level: int) -> None:
        if not 0 <= level <= 9:
            raise ValueError(f"compress-level {level} is not in 0..9")
        self.level = level

    def compress_page(self, page: bytes | memoryview) -> bytes:
        """The zlib stream of one page: what follows the be32 length in the migration stream."""
        if len(page) != PAGE_SIZE:
            raise ValueError(f"a page is {PAGE_SIZE} bytes, got {len(page)}")
        return zlib.compress(page, self.level)

    @staticmethod
    def decompress_page(data: bytes | memoryview) -> bytes:
        """The page of one compressed record; :class:`ValueError` on anything else."""
        if not 0 < len(data) <= LEGACY_MAX_LENGTH:
            raise ValueError(f"Invalid compressed data length: {len(data)}")
        inflater = zlib.decompressobj()
        try:
            out = inflater.decompress(data, PAGE_SIZE + 1)
        except zlib.error as exc:
            raise ValueError(f"decompress data failed ({exc})") from None
        if len(out) != PAGE_SIZE or not inflater.eof or inflater.unused_data:
            raise ValueError("decompress data failed (not exactly one page)")
        return out


@dataclass
class LegacyCompressStats:
    """query-migrate's ``compression`` member, computed as 7.2 does (see the facts doc).

    The source calls :meth:`drained` each time a compress thread's output buffer is moved
    into the migration stream (when the thread is given its next page, and for every thread
    at each flush), :meth:`busy_page` when no thread was free and the page went out
    uncompressed, and :meth:`update_rates` at each rate update.
    """

    pages: int = 0
    busy: int = 0
    busy_rate: float = 0.0
    compressed_size: int = 0
    compression_rate: float = 0.0
    _busy_prev: int = field(default=0, repr=False)
    _pages_prev: int = field(default=0, repr=False)
    _size_prev: int = field(default=0, repr=False)

    #: bytes of the page header QEMU subtracts (8: a header with the CONTINUE flag)
    HEADER_BYTES = 8

    def drained(self, nbytes: int, zero_page: bool) -> None:
        """A thread's buffer of ``nbytes`` went out; ``zero_page``: its last job's result.

        Like 7.2 this also counts a drain of an empty buffer (a flush of an idle thread): a
        phantom page of -8 bytes, or nothing but a zero page for the ``duplicate`` counter.
        """
        if zero_page:
            return  # counted in ram.duplicate by the caller, not here
        self.compressed_size += nbytes - self.HEADER_BYTES
        self.pages += 1

    def busy_page(self) -> None:
        """No compress thread was free (``compress-wait-thread`` off)."""
        self.busy += 1

    def update_rates(self, page_count: int) -> None:
        """A rate update; ``page_count``: pages the source handled since the last one (7.2
        skips the whole update when it is 0)."""
        if page_count <= 0:
            return
        self.busy_rate = (self.busy - self._busy_prev) / page_count
        self._busy_prev = self.busy
        size = self.compressed_size - self._size_prev
        if size:
            self.compression_rate = (self.pages - self._pages_prev) * PAGE_SIZE / size
            self._pages_prev = self.pages
            self._size_prev = self.compressed_size

    def as_qapi(self) -> dict[str, Any]:
        """The ``CompressionStats`` object, members in QEMU's order."""
        return {
            "pages": self.pages,
            "busy": self.busy,
            "busy-rate": float(self.busy_rate),
            "compressed-size": self.compressed_size,
            "compression-rate": float(self.compression_rate),
        }
