"""The content of an idle guest's firmware pages: seeded bytes that compress like SeaBIOS's.

Why: an idle SeaBIOS guest's non-zero pages (code, tables, the BIOS data area) are what a
compressed migration of the default guest sends; QEMU 10.0's multifd zlib sends them in about
half their size, and zstd finds SeaBIOS's copies of itself (the BIOS shadowed below 1 MiB is
``pc.bios`` again, its relocated code at the top of RAM, the ACPI tables in RAM and in their
ROM blob).  The bytes are not SeaBIOS's: each page is described by two recorded numbers
(``tools/record_idle_content.py``, reduced by ``tools/derive_idle_content.py`` to
``qmp_server/data/idle_page_content.json``) and generated from the seed.

Rules (``GuestMemory``'s ``idle`` baseline, rule 2 of :mod:`qmp_server.engine.guest`):

The table lists firmware pages in ascending page order (the shipped one in the layout's
recorded block order: :mod:`qmp_server.engine.machine` reorders it for its blocks).

1. **Shape.**  Let ``R`` be the 4096 bytes of the ``random`` baseline of firmware page *k*'s
   *source* page (rule 2).  The page is ``R[:keep[k]]``, then ``tokens[k]`` bytes of
   4-byte tokens, then zeros; its first byte has its low bit set (never a zero page).  The
   tokens are the 256 little-endian words of ``R[3072:]``; the *i*-th token is word number
   ``R[1024 + i]``.  Repeats of 4 bytes are what zlib matches and zstd at level 1 (whose
   matches are longer) does not, the way x86 code compresses better with zlib than with
   zstd.  ``keep`` and ``tokens`` are chosen (``tools/derive_idle_content.py``) so that the
   page alone compresses to the recorded size of QEMU's page with zlib level 1 (7.2's
   ``compress``, multifd zlib) and with zstd level 1 (multifd zstd).
2. **Copies.**  ``source[k]`` is the firmware ordinal whose content page *k* repeats (itself
   if none): where SeaBIOS's page is a copy of an earlier one in the stream, ours is that
   page's bytes exactly, so a compressor with a long window finds it as QEMU's does.
3. **No table** (a machine without a recording): every firmware page is its ``random``
   baseline whole (``keep`` 4096, no tokens, its own source).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

__all__ = ["FirmwareContent", "IdleBaseline", "content_table", "shape_page"]

PAGE_SIZE = 4096


@dataclass(frozen=True)
class FirmwareContent:
    """Per firmware page (ascending order): random bytes kept, token bytes, and the ordinal
    it copies."""

    keep: npt.NDArray[np.int64] = field(repr=False)
    tokens: npt.NDArray[np.int64] = field(repr=False)
    source: npt.NDArray[np.int64] = field(repr=False)

    def __post_init__(self) -> None:
        n = self.keep.size
        if self.source.size != n or self.tokens.size != n:
            raise ValueError("keep, tokens and source differ in length")
        if n and (
            int(self.keep.min()) < 0
            or int(self.tokens.min()) < 0
            or int((self.keep + self.tokens).max()) > PAGE_SIZE
        ):
            raise ValueError("a firmware page holds 0 to 4096 random and token bytes")
        if n and (int(self.source.min()) < 0 or int(self.source.max()) >= n):
            raise ValueError("a firmware page copies a page outside the list")
        roots = self.source[self.source]
        if not np.array_equal(roots, self.source):
            raise ValueError("a firmware page copies a page that is itself a copy")

    @classmethod
    def whole(cls, count: int) -> FirmwareContent:
        """Rule 3: every page random and its own."""
        return cls(
            np.full(count, PAGE_SIZE, dtype=np.int64),
            np.zeros(count, dtype=np.int64),
            np.arange(count, dtype=np.int64),
        )

    def reordered(self, order: npt.NDArray[np.intp]) -> FirmwareContent:
        """The table for the pages taken in ``order`` (new ordinal *i* is old ``order[i]``):
        a machine whose blocks come in another order than the recording's."""
        new_of_old = np.empty(order.size, dtype=np.int64)
        new_of_old[order] = np.arange(order.size)
        return FirmwareContent(self.keep[order], self.tokens[order], new_of_old[self.source[order]])

    def digest_bytes(self) -> bytes:
        """What the RAM digest's header holds of the table: per page u16 keep, u16 tokens,
        u32 source (little-endian), page after page."""
        table = np.empty(self.keep.size, dtype=[("k", "<u2"), ("t", "<u2"), ("s", "<u4")])
        table["k"], table["t"], table["s"] = self.keep, self.tokens, self.source
        return table.tobytes()


def _load() -> dict[str, Any]:
    text = resources.files("qmp_server.data").joinpath("idle_page_content.json").read_text()
    data: dict[str, Any] = json.loads(text)
    return data


@cache
def _tables() -> dict[str, Any]:
    return _load()


def content_table(version: str, family: str, count: int) -> FirmwareContent | None:
    """The recorded table of a machine family, if recorded for ``count`` firmware pages."""
    rec = _tables()["versions"].get(version, {}).get(family)
    if rec is None or len(rec.get("tokens", ())) != count:
        return None  # not recorded, or by an older derivation
    return FirmwareContent(
        np.asarray(rec["keep"], dtype=np.int64),
        np.asarray(rec["tokens"], dtype=np.int64),
        np.asarray(rec["source"], dtype=np.int64),
    )


def shape_page(raw: npt.NDArray[np.uint8], keep: int, tokens: int) -> None:
    """Rule 1, in place: ``raw`` (the 4096 bytes of ``R``) becomes the firmware page."""
    if keep < PAGE_SIZE:
        source = raw.copy()
        raw[keep:] = 0
        if tokens:
            vocab = source[3 * 1024 :].view("<u4")
            picks = source[1024 : 1024 + (tokens + 3) // 4]
            raw[keep : keep + tokens] = vocab[picks].view(np.uint8)[:tokens]
    raw[0] |= 1


class _Gatherer(Protocol):
    def gather(self, indexes: npt.NDArray[np.int64]) -> npt.NDArray[np.uint64]: ...


class IdleBaseline:
    """The firmware pages' content (rules 1-3), from the ``random`` generator of the seed.

    Only firmware pages are asked for (:class:`~qmp_server.engine.guest.GuestMemory` keeps
    the others zero); generating one costs a ``random`` page and a masked fill.
    """

    __slots__ = ("_firmware", "_keep", "_random", "_root", "_tokens")

    def __init__(
        self, random: _Gatherer, firmware: npt.NDArray[np.int64], content: FirmwareContent
    ) -> None:
        if content.keep.size != firmware.size:
            raise ValueError(
                f"the firmware content table has {content.keep.size} pages, "
                f"the layout {firmware.size}"
            )
        self._random = random
        self._firmware = firmware
        self._keep = content.keep
        self._tokens = content.tokens
        #: the flat page index whose random baseline each firmware page starts from
        self._root = firmware[content.source]

    def gather(self, indexes: npt.NDArray[np.int64]) -> npt.NDArray[np.uint64]:
        """The content of the listed firmware pages, ``(n, 512)`` words."""
        pos = np.searchsorted(self._firmware, indexes)
        words = self._random.gather(self._root[pos])
        raw = words.view(np.uint8).reshape(indexes.size, PAGE_SIZE)
        keep, tokens = self._keep[pos].tolist(), self._tokens[pos].tolist()
        for row in range(indexes.size):
            shape_page(raw[row], keep[row], tokens[row])
        return words

    def run(
        self, start: int, count: int, out: npt.NDArray[np.uint64] | None = None
    ) -> npt.NDArray[np.uint64]:
        """Firmware pages ``[start, start+count)`` (all of them firmware pages)."""
        words = self.gather(np.arange(start, start + count, dtype=np.int64))
        if out is None:
            return words
        out[:] = words
        return out

    def differs_list(
        self, indexes: npt.NDArray[np.int64], words: npt.NDArray[np.uint64]
    ) -> npt.NDArray[np.bool_]:
        """For each listed firmware page (its content in ``words``): whether it differs."""
        return np.asarray((words != self.gather(indexes)).any(axis=1))
