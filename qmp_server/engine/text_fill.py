"""The ``text`` guest baseline: distinct, deterministic pages that compress like text.

Why: zlib/zstd compression only shows what it does on content that compresses; ``random``
does not and ``zero`` is not compressed at all (zero pages are sent as flags).  ``text`` pages
look like a log or a source file (words, punctuation, newlines from a fixed vocabulary) so
multifd zlib/zstd at level 1 shrink a page to roughly a third (zlib-1 36 %, zstd-1 34 %;
docs/compression-facts.md).

Definition (the numpy code here is the reference; ``_pages.text_fill``/``text_differs`` in C
give the same bytes, tests/engine/test_text_fill.py checks it):

- ``POOL``: :data:`POOL_PAGES` pages of text generated once per seed (:func:`text_pool`).
  Each page is :data:`LINES_PER_PAGE` lines of 256 bytes: an 8-byte *slot*, a space, 246
  bytes of a continuous word stream (hard-wrapped, so a word may continue on the next line)
  and a newline.  The pool is 4 MiB, more than the window of zlib (32 KiB) and of zstd at
  levels 1 to 7 (up to 2 MiB); step 1 below keeps bigger windows from exploiting it.
- Page *i* is ``POOL[i mod POOL_PAGES]`` where

  1. each *word start* (a lowercase ASCII letter after a space or newline; ``MARKS`` holds them
     as bits, bit ``p % 64`` of word ``p // 64`` for byte ``p``) is upper-cased when bit
     ``p % 64`` of ``splitmix64((64 i + p // 64) XOR case_key)`` is set: about half the words
     of a page are capitalised, differently on every page, so a compressor whose window
     reaches the previous use of the same pool page (zstd levels >= 8, or a channel fed every
     N-th packet) finds only short matches and the ratio stays text-like;
  2. slot *k* (bytes ``256k .. 256k+8``) is replaced by the 8 lowercase hex digits, most
     significant first, of the low 32 bits of ``splitmix64((16 i + k) XOR page_key)``.

  ``splitmix64`` is the finaliser of the ``random`` baseline.  Every page is distinct (its
  slots), none is all zero.
"""

from __future__ import annotations

import functools

import numpy as np
import numpy.typing as npt

from qmp_server.engine.splitmix import seed_key, splitmix

try:  # the C fast path (optional; the numpy code below gives the same results)
    from qmp_server.engine import _pages as _accel
except ImportError:  # pragma: no cover - depends on the build
    _accel = None  # type: ignore[assignment]

__all__ = ["LINES_PER_PAGE", "POOL_PAGES", "TextBaseline", "text_marks", "text_pool"]

PAGE_SIZE = 4096
WORDS_PER_PAGE = PAGE_SIZE // 8
POOL_PAGES = 1024
LINE_BYTES = 256
LINES_PER_PAGE = PAGE_SIZE // LINE_BYTES
SLOT_BYTES = 8
_BODY_BYTES = LINE_BYTES - SLOT_BYTES - 2  # slot, space, body, newline

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)

# A fixed vocabulary (log lines and C-like source); earlier words are drawn more often (Zipf).
_VOCABULARY_TEXT = (
    "the of to and a in is it you that he was for on are with as I his they be at one have "
    "this from or had by hot word but what some we can out other were all there when up use "
    "your how said an each she which do their time if will way about many then them write "
    "would like so these her long make thing see him two has look more day could go come did "
    "number sound no most people my over know water than call first who may down side been "
    "now find any new work part take get place made live where after back little only round "
    "man year came show every good me give our under name very through just form sentence "
    "great think say help low line differ turn cause much mean before move right boy old too "
    "same tell does set three want air well also play small end put home read hand port large "
    "spell add even land here must big high such follow act why ask men change went light "
    "kind off need house picture try us again animal point mother world near build self earth "
    "INFO DEBUG WARN ERROR kernel: systemd[1]: Started Stopped Reached target session user "
    "connection accepted closed from port ssh2 request GET POST HTTP/1.1 200 404 500 ms bytes "
    "static int void char const unsigned struct return if else for while break continue NULL "
    "size_t uint64_t len buf ptr err goto out free malloc memcpy sizeof -> == != && || { } ( "
    ") ; = + - * / # include define ifdef endif 0 1 2 3 4 5 6 7 8 9 10 16 32 64 128 256 4096 "
    "0x0 0xff true false self def class import from None return yield async await"
)
_VOCABULARY = _VOCABULARY_TEXT.split()

# Phrases that recur, as in a real log or source file; drawn like the most frequent words.
_PHRASES = (
    "connection accepted from",
    "systemd[1]: Started Session of user",
    "return -EINVAL;",
    "if (ret < 0) {",
    "kernel: usb 1-1: new high-speed USB device number",
    "GET /index.html",
    "for (i = 0; i < n; i++) {",
    "Accepted publickey for root from",
    "} else {",
    "pam_unix(sshd:session): session opened for user",
    "static inline void",
    "goto out;",
    "INFO worker finished job in",
    "WARN retrying request after",
    "memcpy(dst, src, len);",
    "self.assertEqual(result, expected)",
    "def __init__(self, name):",
    "return None",
)
_PHRASE_SHARE = 0.18
_SEPARATORS = (" ",) * 24 + ("\n", ", ", ". ", "(", ") ", ": ", "\n    ", " = ")


def _seed_key(seed: int, salt: bytes) -> int:
    return seed_key(seed, salt, b"qmpsrv-text")


def _token_stream(rng: np.random.Generator, nbytes: int) -> npt.NDArray[np.uint8]:
    """At least ``nbytes`` of words and separators drawn from the vocabulary."""
    vocab = (*_PHRASES, *_VOCABULARY)
    tokens = [w.encode() for w in vocab] + [s.encode() for s in _SEPARATORS]
    nwords = len(vocab)
    # Words are Zipf-distributed; phrases take 18 % of the draws (tuned so that zlib and
    # zstd at level 1 give about a third, see docs/compression-facts.md).
    zipf = 1.0 / np.arange(1, len(_VOCABULARY) + 1) ** 1.1
    zipf *= (1 - _PHRASE_SHARE) / zipf.sum()
    weights = np.concatenate((np.full(len(_PHRASES), _PHRASE_SHARE / len(_PHRASES)), zipf))
    blob = np.frombuffer(b"".join(tokens), dtype=np.uint8)
    lengths = np.array([len(t) for t in tokens], dtype=np.int64)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    count = nbytes // 3 + 16  # a word and its separator average about 6.5 bytes
    words = rng.choice(nwords, size=count, p=weights)
    seps = nwords + rng.integers(0, len(_SEPARATORS), size=count)
    ids = np.empty(2 * count, dtype=np.int64)
    ids[0::2], ids[1::2] = words, seps
    lens = lengths[ids]
    total = int(lens.sum())
    if total < nbytes:  # pragma: no cover - count has a wide margin
        raise AssertionError("token stream too short")
    first = np.repeat(np.cumsum(lens) - lens, lens)
    offsets = np.repeat(starts[ids], lens) + (np.arange(total) - first)
    return blob[offsets[:nbytes]]


@functools.lru_cache(maxsize=4)
def text_pool(seed: int) -> npt.NDArray[np.uint8]:
    """The pool of one seed: ``(POOL_PAGES, 4096)`` bytes, slots holding ``'0'`` (module doc)."""
    rng = np.random.Generator(np.random.PCG64(_seed_key(seed, b"pool")))
    lines = POOL_PAGES * LINES_PER_PAGE
    body = _token_stream(rng, lines * _BODY_BYTES).reshape(lines, _BODY_BYTES)
    out = np.empty((lines, LINE_BYTES), dtype=np.uint8)
    out[:, :SLOT_BYTES] = ord("0")
    out[:, SLOT_BYTES] = ord(" ")
    out[:, SLOT_BYTES + 1 : -1] = body
    out[:, -1] = ord("\n")
    pool = out.reshape(POOL_PAGES, PAGE_SIZE)
    pool.flags.writeable = False
    return pool


@functools.lru_cache(maxsize=4)
def text_marks(seed: int) -> npt.NDArray[np.uint64]:
    """The word starts of the pool: ``(POOL_PAGES, 64)`` words of bits (module doc)."""
    pool = text_pool(seed)
    prev = np.zeros_like(pool)
    prev[:, 1:] = pool[:, :-1]
    starts = ((prev == ord(" ")) | (prev == ord("\n"))) & (pool >= ord("a")) & (pool <= ord("z"))
    marks = np.packbits(starts, axis=1, bitorder="little").view("<u8").astype(np.uint64)
    marks.flags.writeable = False
    return marks


class TextBaseline:
    """The ``text`` baseline generator of one seed; same interface as the random one."""

    __slots__ = ("_accel", "_c_args", "_case_key", "_key", "_marks", "_pool")

    def __init__(self, seed: int, *, accelerated: bool = True) -> None:
        self._pool = text_pool(seed)
        self._marks = text_marks(seed)
        self._key = _seed_key(seed, b"page-key")
        self._case_key = _seed_key(seed, b"case-key")
        # an extension built before the text fill existed lacks text_fill: use numpy then
        self._accel = _accel if accelerated and hasattr(_accel, "text_fill") else None
        #: the leading arguments of the C entry points
        self._c_args = (self._pool, self._marks, self._key, self._case_key)

    def _case_flips(
        self, idx: npt.NDArray[np.uint64], rows: npt.NDArray[np.intp]
    ) -> npt.NDArray[np.uint8]:
        """0x20 where a word start of the listed pages is capitalised, else 0: ``(n, 4096)``."""
        words = (idx[:, None] << np.uint64(6)) | np.arange(64, dtype=np.uint64)
        bits = splitmix(words ^ np.uint64(self._case_key)) & self._marks[rows]
        flips = np.unpackbits(bits.astype("<u8").view(np.uint8), axis=1, bitorder="little")
        return flips << np.uint8(5)

    def _slots(self, idx: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint8]:
        """The slot bytes of the listed pages: ``(n, LINES_PER_PAGE, 8)``."""
        lines = (idx[:, None] << np.uint64(4)) | np.arange(LINES_PER_PAGE, dtype=np.uint64)
        vals = splitmix(lines ^ np.uint64(self._key)) & np.uint64(0xFFFFFFFF)
        shifts = np.arange(28, -1, -4, dtype=np.uint64)
        nibbles = (vals[:, :, None] >> shifts) & np.uint64(0xF)
        return _HEX[nibbles.astype(np.intp)]

    def _build(self, idx: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
        rows = (idx % np.uint64(POOL_PAGES)).astype(np.intp)
        out = np.take(self._pool, rows, axis=0)
        out ^= self._case_flips(idx, rows)
        out.reshape(idx.size, LINES_PER_PAGE, LINE_BYTES)[:, :, :SLOT_BYTES] = self._slots(idx)
        return out.view(np.uint64).reshape(idx.size, WORDS_PER_PAGE)

    def run(
        self, start: int, count: int, out: npt.NDArray[np.uint64] | None = None
    ) -> npt.NDArray[np.uint64]:
        """Pages ``[start, start+count)``, into ``out`` (``(count, 512)`` words) if given."""
        if out is None:
            out = np.empty((count, WORDS_PER_PAGE), dtype=np.uint64)
        if self._accel is not None:
            self._accel.text_fill(*self._c_args, start, out)
            return out
        out[:] = self._build(np.arange(start, start + count, dtype=np.uint64))
        return out

    def gather(self, indexes: npt.NDArray[np.int64]) -> npt.NDArray[np.uint64]:
        if self._accel is not None:
            out = np.empty((indexes.size, WORDS_PER_PAGE), dtype=np.uint64)
            idx = np.ascontiguousarray(indexes, dtype=np.int64)
            self._accel.text_fill(*self._c_args, 0, out, idx)
            return out
        return self._build(indexes.astype(np.uint64))

    def compare_run(
        self, start: int, words: npt.NDArray[np.uint64]
    ) -> npt.NDArray[np.bool_] | None:
        """Which pages of ``words`` (pages from ``start``) differ; None if none does."""
        if self._accel is not None:
            mask = np.empty(words.shape[0], dtype=np.uint8)
            if self._accel.text_differs(*self._c_args, start, words, mask) == 0:
                return None
            return mask.view(np.bool_)
        differs = np.asarray((words != self.run(start, words.shape[0])).any(axis=1))
        return differs if differs.any() else None

    def equals_run(self, start: int, words: npt.NDArray[np.uint64]) -> bool:
        return self.compare_run(start, words) is None

    def differs_list(
        self, indexes: npt.NDArray[np.int64], words: npt.NDArray[np.uint64]
    ) -> npt.NDArray[np.bool_]:
        """For each listed page (its content in ``words``): whether it differs from the baseline."""
        if self._accel is not None:
            mask = np.empty(indexes.size, dtype=np.uint8)
            idx = np.ascontiguousarray(indexes, dtype=np.int64)
            self._accel.text_differs(*self._c_args, 0, words, mask, idx)
            return mask.view(np.bool_)
        return np.asarray((words != self.gather(indexes)).any(axis=1))
