"""The ``text`` baseline: its C fast path gives the numpy reference's bytes, and it is text."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qmp_server.engine.guest import PAGE_SIZE, WORDS_PER_PAGE
from qmp_server.engine.text_fill import LINES_PER_PAGE, POOL_PAGES, TextBaseline

seeds = st.integers(min_value=0, max_value=3)  # the pool is generated per seed (cached)
starts = st.integers(min_value=0, max_value=1 << 40)


def test_pages_are_distinct_text_and_compress() -> None:
    data = TextBaseline(7).run(0, 2 * POOL_PAGES).tobytes()
    pages = [data[i * PAGE_SIZE : (i + 1) * PAGE_SIZE] for i in range(2 * POOL_PAGES)]
    assert len(set(pages)) == len(pages)
    assert all(any(p) for p in pages)
    assert all(32 <= b < 127 or b == 10 for b in data[: 64 * PAGE_SIZE])
    assert data[PAGE_SIZE - 1 : PAGE_SIZE] == b"\n"
    ratio = len(zlib.compress(data[: 64 * PAGE_SIZE], 1)) / (64 * PAGE_SIZE)
    assert 0.2 < ratio < 0.5


def test_seed_matters() -> None:
    assert not np.array_equal(TextBaseline(1).run(0, 4), TextBaseline(2).run(0, 4))


accel = pytest.importorskip("qmp_server.engine._pages")


def pair(seed: int) -> tuple[TextBaseline, TextBaseline]:
    return TextBaseline(seed), TextBaseline(seed, accelerated=False)


def test_the_extension_is_used() -> None:
    assert TextBaseline(1)._accel is accel


@settings(max_examples=40, deadline=None)
@given(seeds, starts, st.integers(min_value=0, max_value=300))
def test_run_matches_numpy(seed: int, start: int, count: int) -> None:
    fast, slow = pair(seed)
    assert np.array_equal(fast.run(start, count), slow.run(start, count))


@settings(max_examples=40, deadline=None)
@given(seeds, st.lists(st.integers(min_value=0, max_value=1 << 40), max_size=200))
def test_gather_matches_numpy(seed: int, indexes: list[int]) -> None:
    fast, slow = pair(seed)
    idx = np.asarray(indexes, dtype=np.int64)
    assert np.array_equal(fast.gather(idx), slow.gather(idx))


@settings(max_examples=40, deadline=None)
@given(seeds, starts, st.integers(min_value=1, max_value=200), st.data())
def test_compare_matches_numpy(seed: int, start: int, count: int, data: st.DataObject) -> None:
    fast, slow = pair(seed)
    words = slow.run(start, count)
    assert fast.compare_run(start, words) is None and slow.compare_run(start, words) is None
    flips = data.draw(st.lists(st.tuples(st.integers(0, count - 1),
                                         st.integers(0, WORDS_PER_PAGE - 1),
                                         st.integers(0, 63)), max_size=8, unique=True))  # fmt: skip
    for page, word, bit in flips:
        words[page, word] ^= np.uint64(1 << bit)
    got, want = fast.compare_run(start, words), slow.compare_run(start, words)
    if not flips:
        assert got is None and want is None
    else:
        assert got is not None and want is not None
        assert got.tolist() == want.tolist()
        assert set(np.flatnonzero(got).tolist()) == {p for p, _, _ in flips}


@settings(max_examples=30, deadline=None)
@given(seeds, st.lists(st.integers(min_value=0, max_value=1 << 40), min_size=1, max_size=50),
       st.data())  # fmt: skip
def test_differs_list_matches_numpy(seed: int, indexes: list[int], data: st.DataObject) -> None:
    fast, slow = pair(seed)
    idx = np.asarray(indexes, dtype=np.int64)
    words = slow.gather(idx)
    bad = data.draw(st.sets(st.integers(0, idx.size - 1)))
    lines = words.view(np.uint8).reshape(idx.size, LINES_PER_PAGE, -1)
    for row in bad:  # a slot digit changed: only the slot tells these pages apart
        lines[row, row % LINES_PER_PAGE, 3] ^= 1
    assert fast.differs_list(idx, words).tolist() == slow.differs_list(idx, words).tolist()
    assert set(np.flatnonzero(fast.differs_list(idx, words)).tolist()) == bad


def test_pages_sharing_a_pool_row_differ_in_their_words() -> None:
    """Capitalised word starts change with the page, so a big window finds short matches."""
    base = TextBaseline(3)
    a, b = base.run(5, 1).tobytes(), base.run(5 + POOL_PAGES, 1).tobytes()
    assert sum(x != y for x, y in zip(a, b, strict=True)) > 100
