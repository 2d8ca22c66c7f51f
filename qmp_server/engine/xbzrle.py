"""XBZRLE: re-sent pages as deltas against a cache of what was sent, as QEMU does it.

No I/O.  The source keeps a :class:`PageCache` of ``xbzrle-cache-size`` bytes; a dirty page
sent again is encoded against its cached copy (:func:`encode`), the destination applies the
delta to the page it holds (:func:`decode`).  :class:`XbzrleStats` keeps QEMU's
``xbzrle-cache`` members.  Facts (QEMU 7.2 and 10.0 behaviour, docs/migration-engine.md):

1. **Delta format** (QEMU's): a sequence of ``zrun nzrun`` pairs over the page's bytes,
   ``zrun`` the ULEB128 length of bytes equal in both versions, ``nzrun`` the ULEB128 length of
   differing bytes followed by their new values; a trailing equal run is left out.  An
   unchanged page encodes to nothing (QEMU then sends nothing for it); a delta longer than a
   page *overflows* and the full page is sent instead.
2. **When.** XBZRLE starts once the first full pass over RAM is done (the bulk stage sends
   everything in full); zero pages are never encoded; in the last stage (the guest stopped) a
   page missing from the cache is not inserted.
3. **The cache** is direct mapped: ``pow2floor(xbzrle-cache-size / 4096)`` slots, a page goes
   to slot ``page index mod slots``; a page sent in full is inserted (a *cache miss* counts
   when XBZRLE was tried for a page the cache did not hold).
4. **Counters**: ``pages`` encoded, ``bytes`` their record bytes without the 8-byte page header
   (flag, 2-byte length, delta), ``cache-miss``, ``overflow``; at each rate update (a dirty
   sync at least a second after the last) ``cache-miss-rate`` = misses / pages processed since
   the last update and ``encoding-rate`` = encoded pages × 4096 / their encoded bytes (0 when
   none were encoded).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from qmp_server.engine.guest import PAGE_SIZE

__all__ = [
    "XBZRLE_RECORD_OVERHEAD",
    "PageCache",
    "XbzrleSender",
    "XbzrleStats",
    "decode",
    "encode",
]

#: What an encoded page's record adds to its delta in QEMU's stream, page header excluded:
#: the encoding flag byte and the 16-bit length.
XBZRLE_RECORD_OVERHEAD = 1 + 2


def _uleb128(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode(
    old: bytes | memoryview, new: bytes | memoryview, limit: int = PAGE_SIZE
) -> bytes | None:
    """The delta turning ``old`` into ``new`` (rule 1): ``b""`` when they are equal, None
    when it would be longer than ``limit`` (an overflow)."""
    a = np.frombuffer(old, dtype=np.uint8)
    b = np.frombuffer(new, dtype=np.uint8)
    if a.size != b.size:
        raise ValueError("pages of different sizes")
    differ = a != b
    if not differ.any():
        return b""
    # boundaries where the equal/differing state changes
    edges = np.flatnonzero(np.diff(differ.astype(np.int8))) + 1
    starts = np.concatenate(([0], edges))
    ends = np.concatenate((edges, [a.size]))
    out = bytearray()
    if differ[0]:
        out += b"\x00"  # a page that starts with a change has an empty first zrun
    view = memoryview(new).cast("B") if isinstance(new, memoryview) else memoryview(new)
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        if differ[start]:
            out += _uleb128(end - start)
            out += view[start:end]
        elif end < a.size:  # the trailing equal run is left out
            out += _uleb128(end - start)
        if len(out) > limit:
            return None
    return bytes(out)


def _read_uleb128(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 21:
            raise ValueError("truncated or oversized run length in an XBZRLE delta")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def decode(delta: bytes, old: bytes | memoryview) -> bytes:
    """Apply ``delta`` to ``old``; ValueError when it does not fit the page (rule 1)."""
    page = bytearray(old)
    pos = at = 0
    while pos < len(delta):
        zrun, pos = _read_uleb128(delta, pos)
        at += zrun
        if pos >= len(delta):
            break  # a delta may end with a zrun (QEMU's never does; harmless)
        nzrun, pos = _read_uleb128(delta, pos)
        if nzrun == 0 or at + nzrun > len(page) or pos + nzrun > len(delta):
            raise ValueError("an XBZRLE run goes beyond the page or the delta")
        page[at : at + nzrun] = delta[pos : pos + nzrun]
        pos += nzrun
        at += nzrun
    if at > len(page):
        raise ValueError("an XBZRLE run goes beyond the page")
    return bytes(page)


class PageCache:
    """QEMU's page cache (rule 3): direct mapped, ``pow2floor(size / 4096)`` slots."""

    def __init__(self, size_bytes: int) -> None:
        slots = max(1, size_bytes // PAGE_SIZE)
        self.slots = 1 << (slots.bit_length() - 1)
        self.size_bytes = self.slots * PAGE_SIZE
        self._tags = np.full(self.slots, -1, dtype=np.int64)
        self._data: npt.NDArray[np.uint8] = np.zeros((self.slots, PAGE_SIZE), dtype=np.uint8)

    def _slot(self, page: int) -> int:
        return page & (self.slots - 1)

    def get(self, page: int) -> memoryview | None:
        slot = self._slot(page)
        if self._tags[slot] != page:
            return None
        return memoryview(self._data[slot])

    def put(self, page: int, data: bytes | memoryview) -> None:
        slot = self._slot(page)
        self._tags[slot] = page
        self._data[slot] = np.frombuffer(data, dtype=np.uint8)


@dataclass
class XbzrleStats:
    """QEMU's ``xbzrle-cache`` members (rule 4)."""

    cache_size: int
    pages: int = 0
    bytes: int = 0
    cache_miss: int = 0
    overflow: int = 0
    cache_miss_rate: float = 0.0
    encoding_rate: float = 0.0
    _miss_prev: int = 0
    _pages_prev: int = 0
    _bytes_prev: int = 0

    def encoded(self, delta_len: int) -> None:
        self.pages += 1
        self.bytes += delta_len + XBZRLE_RECORD_OVERHEAD

    def update_rates(self, pages_processed: int) -> None:
        """A rate update; ``pages_processed``: pages the source handled since the last one."""
        misses = self.cache_miss - self._miss_prev
        self.cache_miss_rate = misses / pages_processed if pages_processed else 0.0
        encoded_pages = self.pages - self._pages_prev
        encoded_bytes = self.bytes - self._bytes_prev
        if encoded_pages and encoded_bytes:
            self.encoding_rate = encoded_pages * PAGE_SIZE / encoded_bytes
        else:
            self.encoding_rate = 0.0
        self._miss_prev, self._pages_prev, self._bytes_prev = (
            self.cache_miss,
            self.pages,
            self.bytes,
        )

    def as_qapi(self) -> dict[str, Any]:
        return {
            "cache-size": self.cache_size,
            "bytes": self.bytes,
            "pages": self.pages,
            "cache-miss": self.cache_miss,
            "cache-miss-rate": float(self.cache_miss_rate),
            "encoding-rate": float(self.encoding_rate),
            "overflow": self.overflow,
        }


class XbzrleSender:
    """The source's XBZRLE: which pages of a step go as deltas (rules 2 and 3).

    ``enabled`` turns true once the first round over RAM is done (the walk wrapped).
    """

    def __init__(self, cache_size: int) -> None:
        self.cache = PageCache(cache_size)
        self.stats = XbzrleStats(cache_size=cache_size)
        self.enabled = False
        #: pages handled since the last rate update (QEMU's target page count)
        self.processed = 0

    def split(
        self,
        pages: npt.NDArray[np.int64],
        zero: npt.NDArray[np.bool_],
        read_page: Callable[[int], bytes],
        *,
        last_stage: bool = False,
        first: int = 0,
    ) -> tuple[npt.NDArray[np.bool_], list[tuple[int, bytes]]]:
        """For the step's ``pages``: the mask of those sent in full (zero pages included),
        and the deltas of the others (an unchanged page is in neither: nothing is sent).
        ``first``: where in the step XBZRLE starts (the walk wrapped there: rule 2)."""
        self.processed += int(pages.size)
        full = np.ones(pages.size, dtype=bool)
        if first >= pages.size:
            return full, []
        self.enabled = True
        records: list[tuple[int, bytes]] = []
        cache, stats = self.cache, self.stats
        zeros = bytes(PAGE_SIZE)
        for k, page in enumerate(pages.tolist()):
            if k < first:
                continue
            if zero[k]:
                if not last_stage:
                    cache.put(page, zeros)
                continue
            new = read_page(page)
            old = cache.get(page)
            if old is None:
                stats.cache_miss += 1
                if not last_stage:
                    cache.put(page, new)
                continue
            delta = encode(old, new)
            if delta is None:
                stats.overflow += 1
            elif delta:
                stats.encoded(len(delta))
                records.append((page, delta))
                full[k] = False
            else:
                full[k] = False  # unchanged since it was cached: QEMU sends nothing
            if not last_stage and delta != b"":
                cache.put(page, new)
        return full, records

    def update_rates(self) -> None:
        self.stats.update_rates(self.processed)
        self.processed = 0
