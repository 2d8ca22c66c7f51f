"""The modelled guest: sparse RAM with a dirty log, and a workload that dirties it.

Contract: pure data structures.  No clocks (``now`` is an argument), no threads, no I/O;
randomness comes from explicit seeds.  Neighbours: :mod:`qmp_server.engine.stream` (turns
pages into records and records back into pages), the migration engine (drives the
:class:`Workload`, calls :meth:`GuestMemory.sync_dirty` once per pass), ``x-query-guest-digest``
(calls :meth:`GuestMemory.digest`).

Design rules:

1. **Sparse.**  Every page has a *baseline*: its content at boot, a pure function of
   ``(fill, seed, page index)``.  Only pages whose content differs from their baseline are
   stored (``_pages``: page index -> 4 KiB ``bytes``).  A write that restores the baseline
   drops the stored copy, so the stored set is canonical.  A 64 GiB guest costs two 16 MiB
   per-page byte maps plus what was touched.
2. **Baselines.**  ``zero``: all zero.  ``idle``: what an idle guest's firmware touched: zero
   but for the pages listed by the machine's layout (``firmware_pages``, recorded from QEMU:
   :mod:`qmp_server.engine.machine`), whose content is built from the ``random`` baseline to
   compress like QEMU's pages, some repeating others as SeaBIOS's copies of itself do
   (``firmware_content``, recorded per layout: :mod:`qmp_server.engine.idle_fill`; without
   a table, each firmware page is its ``random`` baseline with the first byte's low bit set).
   ``random``: page *i* is the 64-bit little-endian words
   ``POOL[i mod 256] XOR K(i)``, where ``POOL`` is 256 pages of SplitMix64 output keyed by the
   seed and ``K(i)`` is a per-page SplitMix64 key broadcast over the page's 512 words.  Every
   page is distinct and looks random; it is not cryptographic.  Generating a run of pages costs
   one XOR pass, which is what lets the source send, and the destination compare, 1 GiB of
   "random" RAM at memory speed: about 8 GB/s with numpy, about twice that with the optional
   C extension :mod:`qmp_server.engine._pages` (built at install time when a compiler is
   there; the same results either way).  ``text``: distinct text-like pages (a log, a source
   file) that compress to about a third, defined in :mod:`qmp_server.engine.text_fill`.
3. **Digest (v1).**  ``sha256("qmp-server-ram-digest-v1\\0" || u64 ram size || u32 page size ||
   u8 fill || u64 seed || for every stored page in ascending order: u64 index || 4096 bytes)``
   (integers little-endian; ``fill``: 0 zero, 1 random, 2 idle, 3 text; for ``idle`` the header also
   holds the sha256 of the firmware page indexes as u64 little-endian followed by the content
   table, per firmware page u16 random bytes kept, u16 token bytes, u32 source ordinal:
   :meth:`qmp_server.engine.idle_fill.FirmwareContent.digest_bytes`).  Because stored pages
   are exactly the pages that differ from the baseline, two memories with the same size and
   baseline have the same digest iff their contents are equal (up to sha256).  Cost:
   proportional to the touched pages only.  A destination must therefore adopt the source's
   baseline (the stream header carries fill and seed).  :meth:`GuestMemory.content_digest` is
   the baseline-independent sha256 of all bytes, linear in the RAM size, for tests.
4. **Dirty log.**  One byte per page (``numpy.uint8``); guest writes (:meth:`write_page`,
   :meth:`write_page_list`) set it, loads from a migration stream (``load_*``) do not.
   :meth:`sync_dirty` returns the sorted dirty indexes and clears the log, like QEMU's bitmap
   sync.

>>> ram = GuestMemory(64 << 30, fill="zero")          # 64 GiB, nothing allocated per page
>>> ram.is_zero_page(12345), ram.resident_pages
(True, 0)
>>> ram.write_page(7, b"\\x01" * PAGE_SIZE)
>>> ram.sync_dirty().tolist(), ram.resident_pages
([7], 1)
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Iterable
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

try:  # the C fast path of rule 2 (optional; the numpy code below gives the same results)
    from qmp_server.engine import _pages as _accel
except ImportError:  # pragma: no cover - depends on the build
    _accel = None  # type: ignore[assignment]

from qmp_server.engine.idle_fill import FirmwareContent, IdleBaseline
from qmp_server.engine.splitmix import seed_key, splitmix
from qmp_server.engine.text_fill import TextBaseline

__all__ = [
    "PAGE_SIZE",
    "WORDS_PER_PAGE",
    "Fill",
    "GuestMemory",
    "PageIndexes",
    "Workload",
    "baseline_words",
    "page_runs",
]

PAGE_SIZE = 4096
WORDS_PER_PAGE = PAGE_SIZE // 8
_POOL_PAGES = 256
_BATCH_PAGES = 256
_MASK64 = (1 << 64) - 1

Fill = Literal["zero", "random", "idle", "text"]
FILL_CODES: dict[str, int] = {"zero": 0, "random": 1, "idle": 2, "text": 3}

#: Sorted page indexes as numpy returns them.
PageIndexes = npt.NDArray[np.int64]
_U64 = np.dtype("<u8")
_ZERO_PAGE = bytes(PAGE_SIZE)


def _seed_key(seed: int, salt: bytes) -> np.uint64:
    return np.uint64(seed_key(seed, salt, b"qmpsrv-guest"))


class _RandomBaseline:
    """The ``random`` baseline generator of one seed (rule 2)."""

    __slots__ = ("_accel", "_key", "_pool")

    def __init__(self, seed: int, *, accelerated: bool = True) -> None:
        pool_key = _seed_key(seed, b"pool")
        words = np.arange(_POOL_PAGES * WORDS_PER_PAGE, dtype=np.uint64) + pool_key
        self._pool = splitmix(words).reshape(_POOL_PAGES, WORDS_PER_PAGE)
        self._key = _seed_key(seed, b"page-key")
        self._accel = _accel if accelerated else None

    def keys(self, indexes: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
        return splitmix(indexes ^ self._key)

    def run(
        self, start: int, count: int, out: npt.NDArray[np.uint64] | None = None
    ) -> npt.NDArray[np.uint64]:
        """Pages ``[start, start+count)``, into ``out`` (``(count, 512)`` words) if given."""
        if out is None:
            out = np.empty((count, WORDS_PER_PAGE), dtype=np.uint64)
        if self._accel is not None:
            self._accel.fill(self._pool, int(self._key), start, out)
            return out
        keys = self.keys(np.arange(start, start + count, dtype=np.uint64))
        pos = 0
        while pos < count:
            row = (start + pos) % _POOL_PAGES
            n = min(_POOL_PAGES - row, count - pos)
            np.bitwise_xor(
                self._pool[row : row + n], keys[pos : pos + n, None], out=out[pos : pos + n]
            )
            pos += n
        return out

    def compare_run(
        self, start: int, words: npt.NDArray[np.uint64]
    ) -> npt.NDArray[np.bool_] | None:
        """Which pages of ``words`` (pages from ``start``) differ from the baseline; None if
        none does (the common case, checked first without building the whole run)."""
        if self._accel is not None:
            mask = np.empty(words.shape[0], dtype=np.uint8)
            if self._accel.differs(self._pool, int(self._key), start, words, mask) == 0:
                return None
            return mask.view(np.bool_)
        if self.equals_run(start, words):
            return None
        return np.asarray((words != self.run(start, words.shape[0])).any(axis=1))

    def equals_run(self, start: int, words: npt.NDArray[np.uint64]) -> bool:
        """Whether ``words`` (pages from ``start``) equal the baseline, without building it:
        generated and compared one pool block at a time, so the baseline stays in cache."""
        count = words.shape[0]
        if self._accel is not None:
            mask = np.empty(count, dtype=np.uint8)
            return bool(self._accel.differs(self._pool, int(self._key), start, words, mask) == 0)
        keys = self.keys(np.arange(start, start + count, dtype=np.uint64))
        scratch = np.empty((min(count, _POOL_PAGES), WORDS_PER_PAGE), dtype=np.uint64)
        pos = 0
        while pos < count:
            row = (start + pos) % _POOL_PAGES
            n = min(_POOL_PAGES - row, count - pos)
            block = scratch[:n]
            np.bitwise_xor(self._pool[row : row + n], keys[pos : pos + n, None], out=block)
            if not np.array_equal(block, words[pos : pos + n]):
                return False
            pos += n
        return True

    def differs_list(
        self, indexes: npt.NDArray[np.int64], words: npt.NDArray[np.uint64]
    ) -> npt.NDArray[np.bool_]:
        """For each listed page (its content in ``words``): whether it differs from the baseline."""
        if self._accel is not None:
            mask = np.empty(indexes.size, dtype=np.uint8)
            self._accel.differs(self._pool, int(self._key), 0, words, mask,
                                np.ascontiguousarray(indexes, dtype=np.int64))  # fmt: skip
            return mask.view(np.bool_)
        return np.asarray((words != self.gather(indexes)).any(axis=1))

    def gather(self, indexes: npt.NDArray[np.int64]) -> npt.NDArray[np.uint64]:
        if self._accel is not None:
            out = np.empty((indexes.size, WORDS_PER_PAGE), dtype=np.uint64)
            self._accel.fill(self._pool, int(self._key), 0, out,
                             np.ascontiguousarray(indexes, dtype=np.int64))  # fmt: skip
            return out
        idx = indexes.astype(np.uint64)
        rows = np.take(self._pool, (idx % np.uint64(_POOL_PAGES)).astype(np.intp), axis=0)
        rows ^= self.keys(idx)[:, None]
        return rows


def baseline_words(fill: Fill, seed: int, start: int, count: int) -> npt.NDArray[np.uint64]:
    """The baseline content of pages ``[start, start+count)`` as ``(count, 512)`` uint64 words.

    Little-endian words: ``baseline_words(...).astype("<u8").tobytes()`` is the byte content.
    """
    if fill == "zero":
        return np.zeros((count, WORDS_PER_PAGE), dtype=np.uint64)
    if fill == "idle":
        raise ValueError("the idle baseline depends on the machine: use GuestMemory")
    if fill == "text":
        return TextBaseline(seed).run(start, count)
    return _RandomBaseline(seed).run(start, count)


@functools.lru_cache(maxsize=16)
def _baseline_generator(fill: Fill, seed: int) -> _RandomBaseline | TextBaseline:
    """The generator of a fill and seed: read-only, so the guests of one process share it
    (a fleet of idle VMs holds one pool, not one per VM)."""
    return TextBaseline(seed) if fill == "text" else _RandomBaseline(seed)


@functools.lru_cache(maxsize=16)
def _firmware_map(page_count: int, pages: bytes) -> npt.NDArray[np.uint8]:
    """1 where the boot content is a firmware page; shared read-only by guests of one layout."""
    firmware = np.zeros(page_count, dtype=np.uint8)
    firmware[np.frombuffer(pages, dtype=_U64).astype(np.int64)] = 1
    firmware.flags.writeable = False
    return firmware


def page_runs(indexes: npt.ArrayLike) -> list[tuple[int, int]]:
    """Split sorted page indexes into ``(start, count)`` runs of consecutive pages.

    >>> page_runs([1, 2, 3, 7, 9, 10])
    [(1, 3), (7, 1), (9, 2)]
    """
    idx = np.asarray(indexes, dtype=np.int64)
    if idx.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) != 1) + 1
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [idx.size]))
    return [(int(idx[s]), int(e - s)) for s, e in zip(starts, ends, strict=True)]


def _as_words(data: bytes | bytearray | memoryview, count: int) -> npt.NDArray[np.uint64]:
    arr: npt.NDArray[np.uint64] = np.frombuffer(data, dtype=_U64)
    return arr.reshape(count, WORDS_PER_PAGE)


class GuestMemory:
    """Sparse guest RAM of ``size_bytes`` (a multiple of 4 KiB), see the module rules.

    :param size_bytes: RAM size; a multiple of :data:`PAGE_SIZE` (0: a machine without RAM).
    :param fill: ``"zero"``, ``"random"``, ``"idle"`` or ``"text"``: the boot content (the
        baseline).
    :param seed: seed of the ``random`` and ``text`` baselines and of the idle firmware
        pages' content.
    :param firmware_pages: sorted page indexes that are non-zero at boot (``idle`` only).
    :param firmware_content: how each firmware page is filled (``idle`` only; None: every one
        random whole), :mod:`qmp_server.engine.idle_fill`.
    :raise ValueError: on a bad size, fill or page list.
    """

    def __init__(
        self,
        size_bytes: int,
        fill: Fill = "zero",
        seed: int = 0,
        *,
        firmware_pages: npt.ArrayLike | None = None,
        firmware_content: FirmwareContent | None = None,
    ) -> None:
        if size_bytes < 0 or size_bytes % PAGE_SIZE:
            raise ValueError(f"RAM size {size_bytes} is not a multiple of {PAGE_SIZE}")
        if fill not in FILL_CODES:
            raise ValueError(
                f"unknown guest fill {fill!r} (expected 'zero', 'random', 'idle' or 'text')"
            )
        self.size_bytes = size_bytes
        self.page_count = size_bytes // PAGE_SIZE
        self.fill: Fill = fill
        self.seed = seed & _MASK64
        #: the generator of the non-zero baseline pages (None: all zero)
        self._random = (
            None
            if fill == "zero"
            else _baseline_generator("random" if fill == "idle" else fill, self.seed)
        )
        #: ``idle``: 1 where the baseline is a firmware page (non-zero), else None
        self._firmware: npt.NDArray[np.uint8] | None = None
        self._firmware_digest = b""
        #: ``idle``: the firmware pages' content (rule 2), else None
        self._idle: IdleBaseline | None = None
        if fill == "idle":
            idx = np.unique(np.asarray(firmware_pages if firmware_pages is not None else [],
                                       dtype=np.int64))  # fmt: skip
            if idx.size and (int(idx[0]) < 0 or int(idx[-1]) >= self.page_count):
                raise ValueError("a firmware page lies outside the guest RAM")
            content = firmware_content or FirmwareContent.whole(idx.size)
            self._idle = IdleBaseline(_baseline_generator("random", self.seed), idx, content)
            self._firmware_digest = hashlib.sha256(
                idx.astype(_U64).tobytes() + content.digest_bytes()
            ).digest()
            self._firmware = _firmware_map(self.page_count, idx.astype(_U64).tobytes())
        elif firmware_pages is not None or firmware_content is not None:
            raise ValueError("firmware_pages is only meaningful with the 'idle' fill")
        #: page index -> content, only for pages that differ from the baseline (rule 1).
        self._pages: dict[int, bytes] = {}
        #: 1 where ``_pages`` holds the page (fast vectorised membership).
        self._stored = np.zeros(self.page_count, dtype=np.uint8)
        #: the dirty log (rule 4).
        self._dirty = np.zeros(self.page_count, dtype=np.uint8)

    # ---- introspection -------------------------------------------------------------------

    @property
    def resident_pages(self) -> int:
        """How many pages are stored (differ from the baseline)."""
        return len(self._pages)

    def stored_pages(self) -> PageIndexes:
        """Sorted indexes of the pages that differ from their baseline."""
        return np.flatnonzero(self._stored).astype(np.int64)

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.page_count:
            raise IndexError(f"page {index} out of range (guest has {self.page_count} pages)")

    def _check_run(self, start: int, count: int) -> None:
        if count < 0 or start < 0 or start + count > self.page_count:
            raise IndexError(
                f"pages [{start}, {start + count}) out of range (guest has {self.page_count} pages)"
            )

    def _check_list(self, indexes: npt.NDArray[np.int64]) -> None:
        if indexes.size and (int(indexes.min()) < 0 or int(indexes.max()) >= self.page_count):
            raise IndexError(f"page index out of range (guest has {self.page_count} pages)")

    # ---- baselines -----------------------------------------------------------------------

    @property
    def firmware_page_count(self) -> int:
        """How many pages the ``idle`` baseline has non-zero (0 for the other fills)."""
        return 0 if self._firmware is None else int(np.count_nonzero(self._firmware))

    def baseline_of(self, idx: npt.NDArray[np.int64]) -> npt.NDArray[np.uint64]:
        """The baseline of the listed pages (any order), ``(n, 512)`` words."""
        if self._random is None:
            return np.zeros((idx.size, WORDS_PER_PAGE), dtype=np.uint64)
        if self._idle is None or self._firmware is None:
            return self._random.gather(idx)
        out = np.zeros((idx.size, WORDS_PER_PAGE), dtype=np.uint64)
        rows = np.flatnonzero(self._firmware[idx])
        if rows.size:
            out[rows] = self._idle.gather(idx[rows])
        return out

    def _baseline_run(self, start: int, count: int) -> npt.NDArray[np.uint64]:
        if self._random is None:
            return np.zeros((count, WORDS_PER_PAGE), dtype=np.uint64)
        if self._firmware is None:
            return self._random.run(start, count)
        return self.baseline_of(np.arange(start, start + count, dtype=np.int64))

    def _baseline_page(self, index: int) -> bytes:
        if self._random is None or (self._firmware is not None and not self._firmware[index]):
            return _ZERO_PAGE
        if self._idle is not None:
            return self._idle.run(index, 1).astype(_U64, copy=False).tobytes()
        return self._random.run(index, 1).astype(_U64, copy=False).tobytes()

    def _baseline_zero(self, idx: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        """For each listed page: whether its baseline is all zero."""
        if self._random is None:
            return np.ones(idx.size, dtype=bool)
        if self._firmware is None:
            return np.zeros(idx.size, dtype=bool)
        return np.asarray(self._firmware[idx] == 0)

    def _differs(
        self, idx: npt.NDArray[np.int64], words: npt.NDArray[np.uint64]
    ) -> npt.NDArray[np.bool_]:
        """For each listed page (content in ``words``): whether it differs from its baseline."""
        if self._random is None:
            return np.asarray(words.any(axis=1))
        if self._firmware is None or self._idle is None:
            return self._random.differs_list(idx, words)
        differs = np.asarray(words.any(axis=1))
        rows = np.flatnonzero(self._firmware[idx])
        if rows.size:
            differs[rows] = self._idle.differs_list(idx[rows], np.ascontiguousarray(words[rows]))
        return differs

    # ---- reads ---------------------------------------------------------------------------

    def read_page(self, index: int) -> bytes:
        """The 4 KiB content of page ``index``."""
        self._check_index(index)
        stored = self._pages.get(index)
        return stored if stored is not None else self._baseline_page(index)

    def read_pages(self, start: int, count: int) -> bytes:
        """The content of the ``count`` consecutive pages from ``start``, concatenated."""
        return self.read_pages_view(start, count).tobytes()

    def read_pages_view(self, start: int, count: int) -> memoryview:
        """:meth:`read_pages` without the copy: a byte view of a fresh array (native order:
        the baseline words are little-endian, and qmp-server runs on little-endian hosts)."""
        self._check_run(start, count)
        return self._read_run(start, count, self._baseline_run(start, count))

    def read_pages_into(self, start: int, count: int, out: npt.NDArray[np.uint64]) -> memoryview:
        """:meth:`read_pages_view` into ``out`` (at least ``(count, 512)`` words, reused by
        the caller: a writer thread's buffer); the view covers the ``count`` pages."""
        self._check_run(start, count)
        words = out[:count]
        if self._random is None:
            words.fill(0)
        elif self._firmware is None:
            self._random.run(start, count, words)
        else:
            words[:] = self._baseline_run(start, count)
        return self._read_run(start, count, words)

    def _read_run(self, start: int, count: int, words: npt.NDArray[np.uint64]) -> memoryview:
        """``words`` (the run's baseline) with the stored pages laid over it, as bytes."""
        touched = np.flatnonzero(self._stored[start : start + count])
        if touched.size:
            buf = words.view(np.uint8).reshape(count, PAGE_SIZE)
            pages = self._pages
            for offset in touched.tolist():
                # .get: a multifd channel's thread reads while the guest writes; a page
                # written back to its baseline meanwhile is dirty and goes again
                page = pages.get(start + offset)
                if page is not None:
                    buf[offset] = np.frombuffer(page, dtype=np.uint8)
        return words.data.cast("B")

    def read_page_list(self, indexes: npt.ArrayLike) -> bytes:
        """The content of the listed pages, concatenated in the given order."""
        idx = np.asarray(indexes, dtype=np.int64)
        self._check_list(idx)
        pages = self._pages
        stored = self._stored[idx] if idx.size else np.zeros(0, dtype=np.uint8)
        if self._random is None:
            return b"".join(
                pages.get(i, _ZERO_PAGE) if s else _ZERO_PAGE
                for i, s in zip(idx.tolist(), stored.tolist(), strict=True)
            )
        words = self.baseline_of(idx)
        touched = np.flatnonzero(stored)
        if touched.size:
            buf = words.view(np.uint8).reshape(idx.size, PAGE_SIZE)
            for k in touched.tolist():
                page = pages.get(int(idx[k]))  # see read_pages_view
                if page is not None:
                    buf[k] = np.frombuffer(page, dtype=np.uint8)
        return words.astype(_U64, copy=False).tobytes()

    def is_zero_page(self, index: int) -> bool:
        """Whether page ``index`` is all zero (no content generated for untouched pages)."""
        self._check_index(index)
        stored = self._pages.get(index)
        if stored is not None:
            return stored == _ZERO_PAGE
        return self._random is None or (self._firmware is not None and not self._firmware[index])

    def zero_mask(self, indexes: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        """For each listed page, whether it is all zero; cheap for untouched pages."""
        idx = np.asarray(indexes, dtype=np.int64)
        self._check_list(idx)
        stored = self._stored[idx].astype(bool) if idx.size else np.zeros(0, dtype=bool)
        # Untouched pages: zero iff the baseline is zero.  Stored pages: look at them.
        mask = ~stored & self._baseline_zero(idx)
        for k in np.flatnonzero(stored).tolist():
            mask[k] = self._pages[int(idx[k])] == _ZERO_PAGE
        return mask

    # ---- writes --------------------------------------------------------------------------

    def _store(self, index: int, data: bytes) -> None:
        if data == self._baseline_page(index):
            if self._pages.pop(index, None) is not None:
                self._stored[index] = 0
        else:
            self._pages[index] = data
            self._stored[index] = 1

    def write_page(self, index: int, data: bytes | bytearray | memoryview) -> None:
        """A guest write: replace page ``index`` and mark it dirty."""
        self._check_index(index)
        if len(data) != PAGE_SIZE:
            raise ValueError(f"a page is {PAGE_SIZE} bytes, got {len(data)}")
        self._store(index, bytes(data))
        self._dirty[index] = 1

    def write_page_list(self, indexes: npt.ArrayLike, data: bytes | bytearray | memoryview) -> None:
        """Guest writes of several pages (data concatenated in index order); marks them dirty.

        Later entries win when an index repeats.
        """
        idx = np.asarray(indexes, dtype=np.int64)
        self._check_list(idx)
        self._load_list(idx, data)
        self._dirty[idx] = 1

    def run_differs(
        self, start: int, data: bytes | bytearray | memoryview
    ) -> npt.NDArray[np.bool_] | None:
        """Which of the consecutive pages in ``data`` differ from their baseline (None: none
        does).  Reads only the baseline, never the stored pages: safe beside writers, so a
        multifd channel compares outside the guest's lock (:meth:`load_pages` ``differs``)."""
        if len(data) % PAGE_SIZE:
            raise ValueError(f"page data length {len(data)} is not a multiple of {PAGE_SIZE}")
        count = len(data) // PAGE_SIZE
        self._check_run(start, count)
        if count == 0:
            return None
        words = _as_words(data, count)
        random = self._random
        if random is None:
            return np.asarray(words.any(axis=1)) if words.any() else None
        if self._firmware is None:
            return random.compare_run(start, words)
        differs = self._differs(np.arange(start, start + count, dtype=np.int64), words)
        return differs if differs.any() else None

    def load_pages(
        self,
        start: int,
        data: bytes | bytearray | memoryview,
        differs: npt.NDArray[np.bool_] | bool | None = True,
    ) -> None:
        """Load consecutive pages from a migration stream (not a guest write: no dirty bit);
        ``differs``: what :meth:`run_differs` gave for them, if the caller computed it."""
        if differs is True:
            differs = self.run_differs(start, data)
        elif differs is False:
            raise ValueError("differs is a mask, None, or True (compute it)")
        count = len(data) // PAGE_SIZE
        if count == 0:
            return
        if differs is None:
            # the whole run equals its baseline (a first pass of an untouched guest)
            stored = self._stored[start : start + count]
            if stored.any():
                for offset in np.flatnonzero(stored).tolist():
                    self._pages.pop(start + offset, None)
                stored[:] = 0
            return
        self._apply(np.arange(start, start + count, dtype=np.int64), differs, data)

    def load_page_list(self, indexes: npt.ArrayLike, data: bytes | bytearray | memoryview) -> None:
        """Load the listed pages (data concatenated in index order) from a migration stream."""
        idx = np.asarray(indexes, dtype=np.int64)
        self._check_list(idx)
        self._load_list(idx, data)

    def _load_list(self, idx: npt.NDArray[np.int64], data: bytes | bytearray | memoryview) -> None:
        if len(data) != idx.size * PAGE_SIZE:
            raise ValueError(f"{idx.size} pages need {idx.size * PAGE_SIZE} bytes, got {len(data)}")
        if idx.size == 0:
            return
        words = _as_words(data, idx.size)
        uniq, first_in_reversed = np.unique(idx[::-1], return_index=True)
        if uniq.size != idx.size:
            # Repeated indexes: the last write of each page wins.
            keep = idx.size - 1 - first_in_reversed
            idx = uniq
            words = np.ascontiguousarray(words[keep])
            data = words.astype(_U64, copy=False).tobytes()
        self._apply(idx, self._differs(idx, words), data)

    def _apply(
        self,
        idx: npt.NDArray[np.int64],
        differs: npt.NDArray[np.bool_],
        data: bytes | bytearray | memoryview,
    ) -> None:
        pages = self._pages
        view = memoryview(data)
        same = idx[~differs]
        if same.size:
            for i in same[self._stored[same] == 1].tolist():
                pages.pop(i, None)
            self._stored[same] = 0
        for k in np.flatnonzero(differs).tolist():
            pages[int(idx[k])] = view[k * PAGE_SIZE : (k + 1) * PAGE_SIZE].tobytes()
        self._stored[idx[differs]] = 1

    def load_zero_pages(self, start: int, count: int) -> None:
        """Load a run of zero pages from a migration stream."""
        self._check_run(start, count)
        if self._random is None and not self._stored[start : start + count].any():
            return  # already the baseline
        if self._firmware is not None and not (
            self._stored[start : start + count].any() or self._firmware[start : start + count].any()
        ):
            return
        self._load_zero(np.arange(start, start + count, dtype=np.int64))

    def load_zero_page_list(self, indexes: npt.ArrayLike) -> None:
        """Load the listed pages as zero pages from a migration stream."""
        idx = np.asarray(indexes, dtype=np.int64)
        self._check_list(idx)
        self._load_zero(idx)

    def _load_zero(self, idx: npt.NDArray[np.int64]) -> None:
        base_zero = self._baseline_zero(idx)
        # Where zero is the baseline: drop whatever was stored.
        same = idx[base_zero]
        for i in same[self._stored[same] == 1].tolist():
            self._pages.pop(i, None)
        self._stored[same] = 0
        other = idx[~base_zero]
        for i in other.tolist():
            self._pages[i] = _ZERO_PAGE
        self._stored[other] = 1

    # ---- dirty log -----------------------------------------------------------------------

    def mark_dirty(self, indexes: Iterable[int] | npt.ArrayLike) -> None:
        """Set the dirty bit of the listed pages."""
        idx = np.asarray(list(indexes) if isinstance(indexes, set) else indexes, dtype=np.int64)
        self._check_list(idx)
        self._dirty[idx] = 1

    def mark_all_dirty(self) -> None:
        """Set every dirty bit (what a migration's first pass sends)."""
        self._dirty.fill(1)

    def dirty_count(self) -> int:
        """How many pages are dirty now (no sync)."""
        return int(np.count_nonzero(self._dirty))

    def sync_dirty(self) -> PageIndexes:
        """Return the sorted dirty page indexes and clear the log (QEMU's bitmap sync)."""
        dirty = np.flatnonzero(self._dirty).astype(np.int64)
        if dirty.size:
            self._dirty[dirty] = 0
        return dirty

    # ---- digests -------------------------------------------------------------------------

    def digest_header(self) -> bytes:
        return (
            b"qmp-server-ram-digest-v1\0"
            + struct.pack("<QIBQ", self.size_bytes, PAGE_SIZE, FILL_CODES[self.fill], self.seed)
            + self._firmware_digest
        )

    def digest(self) -> str:
        """The v1 RAM digest (module rule 3), hex; cost proportional to the touched pages."""
        h = hashlib.sha256(self.digest_header())
        pages = self._pages
        pack = struct.Struct("<Q").pack
        for index in sorted(pages):
            h.update(pack(index))
            h.update(pages[index])
        return h.hexdigest()

    def content_digest(self, chunk_pages: int = 256) -> str:
        """sha256 of the whole RAM byte by byte (baseline-independent; linear in the size)."""
        h = hashlib.sha256()
        for start in range(0, self.page_count, chunk_pages):
            h.update(self.read_pages(start, min(chunk_pages, self.page_count - start)))
        return h.hexdigest()


class FaultGate(Protocol):
    """Postcopy on the destination (:class:`qmp_server.engine.postcopy.PostcopyFaults`):
    pages may still be missing, and touching one blocks the guest until it arrives."""

    @property
    def blocked(self) -> bool: ...
    def touch(self, pages: npt.NDArray[np.int64], now: float) -> npt.NDArray[np.bool_]: ...
    def write(self, pages: npt.NDArray[np.int64], data: bytes, now: float) -> None: ...


class Workload:
    """A guest program that dirties RAM at ``rate_bytes_per_s`` (pages chosen at random).

    Time is an input: :meth:`advance` writes the pages owed since the previous call.  The
    throttle (auto-converge, QEMU's ``cpu-throttle-percentage``) is the percentage of time the
    vCPUs are kept from running, so the effective rate is ``rate * (100 - throttle) / 100``.
    While stopped (:meth:`set_running` False) nothing is written and no debt accrues.

    :param guest: the RAM to dirty.
    :param rate_bytes_per_s: bytes dirtied per second of running time (0: idle).
    :param seed: seed of the page choice and of the written content.
    :param now: the time origin.
    :param max_pages_per_advance: cap of pages written by one :meth:`advance` (the rest of the
        debt is dropped, as a descheduled guest would not catch up).
    :param hot_pages: pages an idle guest rewrites at every timer tick while it runs (the BIOS
        data area's tick count, the stack: :mod:`qmp_server.engine.machine`), whatever the rate.
    :param hot_interval: the tick (SeaBIOS programs the PIT to 18.2 Hz).
    """

    def __init__(
        self,
        guest: GuestMemory,
        rate_bytes_per_s: int,
        seed: int = 0,
        *,
        now: float = 0.0,
        max_pages_per_advance: int = 1 << 16,
        hot_pages: npt.ArrayLike | None = None,
        hot_interval: float = 1 / 18.2,
        write_bytes: int = PAGE_SIZE,
        working_set: int = 0,
    ) -> None:
        if rate_bytes_per_s < 0:
            raise ValueError("the dirty rate must be non-negative")
        self.guest = guest
        self.hot_pages = np.asarray(hot_pages if hot_pages is not None else [], dtype=np.int64)
        self.hot_interval = hot_interval
        self._next_tick = now + hot_interval
        self.rate = rate_bytes_per_s
        self.throttle_percent = 0
        self.running = True
        self.max_pages_per_advance = max_pages_per_advance
        self.pages_written = 0
        self._rng = np.random.Generator(np.random.PCG64(seed & _MASK64))
        self._last = now
        self._debt = 0.0  # bytes owed, < PAGE_SIZE after each advance
        #: postcopy on the destination: writes go through the gate, which may block them
        self.faults: FaultGate | None = None
        #: bytes each write changes in the page it dirties (a page: rewritten whole)
        self.write_bytes = PAGE_SIZE
        self.set_write_bytes(write_bytes)
        #: the pages writes go to (None: all of RAM); a working set makes pages dirty again
        self._working_set: npt.NDArray[np.int64] | None = None
        self.set_working_set(working_set)

    def set_working_set(self, nbytes: int) -> None:
        """Writes go to a fixed random set of ``nbytes`` of RAM (0: anywhere in RAM)."""
        self.working_set_bytes = nbytes
        pages = min(nbytes // PAGE_SIZE, self.guest.page_count)
        if pages <= 0 or pages >= self.guest.page_count:
            self._working_set = None
            return
        chosen = self._rng.choice(self.guest.page_count, size=pages, replace=False)
        self._working_set = np.sort(chosen.astype(np.int64))

    def set_write_bytes(self, nbytes: int) -> None:
        """Writes that change ``nbytes`` contiguous bytes of a page (1..4096)."""
        if not 1 <= nbytes <= PAGE_SIZE:
            raise ValueError(f"a write changes 1 to {PAGE_SIZE} bytes")
        self.write_bytes = nbytes

    @property
    def active(self) -> bool:
        """Whether :meth:`advance` can write anything (a rate or hot pages)."""
        return bool(self.rate) or bool(self.hot_pages.size)

    @property
    def effective_rate(self) -> float:
        """Bytes per second actually written now (rate less the throttle; 0 when stopped)."""
        if not self.running:
            return 0.0
        return self.rate * (100 - self.throttle_percent) / 100

    def _accrue(self, now: float) -> None:
        if self.faults is not None and self.faults.blocked:
            self._last = max(self._last, now)  # a vCPU waiting for a page makes no progress
            return
        elapsed = max(0.0, now - self._last)
        self._last = max(self._last, now)
        self._debt += self.effective_rate * elapsed

    def set_rate(self, rate_bytes_per_s: int, now: float) -> None:
        """Change the rate from ``now`` on (time before ``now`` accrues at the old rate)."""
        if rate_bytes_per_s < 0:
            raise ValueError("the dirty rate must be non-negative")
        self._accrue(now)
        self.rate = rate_bytes_per_s

    def set_throttle(self, percent: int, now: float) -> None:
        """Set the throttle percentage (0..99, as QEMU's cpu-throttle-percentage)."""
        if not 0 <= percent <= 99:
            raise ValueError("the throttle percentage must be in 0..99")
        self._accrue(now)
        self.throttle_percent = percent

    def set_running(self, running: bool, now: float) -> None:
        """Start or stop the vCPUs (the ``stop``/``cont`` runstate)."""
        self._accrue(now)
        self.running = running

    def _tick_hot_pages(self, now: float) -> int:
        """Timer ticks since the last call write the hot pages (once, however many ticks).

        The write dirties them (what QEMU's migration sees) but keeps their bytes: a guest's
        digest then depends on its history, not on when it was read, so a destination that
        runs on still has the digest of the source's last state.
        """
        if now < self._next_tick:
            return 0
        missed = int((now - self._next_tick) // self.hot_interval) + 1
        self._next_tick += missed * self.hot_interval
        if not self.running or not self.hot_pages.size:
            return 0
        if self.faults is not None:
            if self.faults.blocked:
                return 0
            present = self.faults.touch(self.hot_pages, now)
            self.guest.mark_dirty(self.hot_pages[present])
            return int(np.count_nonzero(present))
        self.guest.mark_dirty(self.hot_pages)
        return int(self.hot_pages.size)

    def _content(self, indexes: npt.NDArray[np.int64]) -> bytes:
        """What the guest writes into ``indexes``: whole random pages, or each page as it is
        with ``write_bytes`` random bytes at a random place."""
        n = int(indexes.size)
        if self.write_bytes >= PAGE_SIZE:
            content = self._rng.integers(
                0, _MASK64, size=n * WORDS_PER_PAGE, dtype=np.uint64, endpoint=True
            )
            return content.astype(_U64, copy=False).tobytes()
        width = self.write_bytes
        pages = np.frombuffer(self.guest.read_page_list(indexes), dtype=np.uint8)
        pages = pages.reshape(n, PAGE_SIZE).copy()
        starts = self._rng.integers(0, PAGE_SIZE - width + 1, size=n)
        columns = starts[:, None] + np.arange(width)
        pages[np.arange(n)[:, None], columns] = self._rng.integers(
            0, 256, size=(n, width), dtype=np.uint8
        )
        return pages.tobytes()

    def advance(self, now: float) -> int:
        """Write the pages owed up to ``now``; return how many pages were written."""
        hot = self._tick_hot_pages(now)
        self._accrue(now)
        count = int(self._debt // PAGE_SIZE)
        if count <= 0:
            return hot
        self._debt -= count * PAGE_SIZE
        count = min(count, self.max_pages_per_advance)
        # Batches of 1 MiB: big temporaries are fresh mmaps, and first-touch page faults cost
        # more than the work itself; 1 MiB blocks are recycled by the allocator.
        for done in range(0, count, _BATCH_PAGES):
            n = min(_BATCH_PAGES, count - done)
            if self._working_set is None:
                indexes = self._rng.integers(0, self.guest.page_count, size=n, dtype=np.int64)
            else:
                picks = self._rng.integers(0, self._working_set.size, size=n)
                indexes = self._working_set[picks]
            data = self._content(indexes)
            if self.faults is not None:
                self.faults.write(indexes, data, now)
                if self.faults.blocked:
                    break  # the vCPU waits for a page: the rest of this batch waits too
            else:
                self.guest.write_page_list(indexes, data)
        self.pages_written += count
        return count + hot
