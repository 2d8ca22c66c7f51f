"""The C fast path of the random baseline gives exactly the numpy path's results."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qmp_server.engine import guest
from qmp_server.engine.guest import PAGE_SIZE, WORDS_PER_PAGE, GuestMemory, _RandomBaseline

accel = pytest.importorskip("qmp_server.engine._pages")

seeds = st.integers(min_value=0, max_value=(1 << 64) - 1)
starts = st.integers(min_value=0, max_value=1 << 40)


def pair(seed: int) -> tuple[_RandomBaseline, _RandomBaseline]:
    return _RandomBaseline(seed), _RandomBaseline(seed, accelerated=False)


def test_the_extension_is_used() -> None:
    assert guest._accel is accel
    assert _RandomBaseline(1)._accel is accel


@settings(max_examples=60, deadline=None)
@given(seeds, starts, st.integers(min_value=0, max_value=600))
def test_run_matches_numpy(seed: int, start: int, count: int) -> None:
    fast, slow = pair(seed)
    assert np.array_equal(fast.run(start, count), slow.run(start, count))


@settings(max_examples=60, deadline=None)
@given(seeds, st.lists(st.integers(min_value=0, max_value=1 << 40), max_size=300))
def test_gather_matches_numpy(seed: int, indexes: list[int]) -> None:
    fast, slow = pair(seed)
    idx = np.asarray(indexes, dtype=np.int64)
    assert np.array_equal(fast.gather(idx), slow.gather(idx))


@settings(max_examples=60, deadline=None)
@given(seeds, starts, st.integers(min_value=1, max_value=400), st.data())
def test_compare_matches_numpy(seed: int, start: int, count: int, data: st.DataObject) -> None:
    fast, slow = pair(seed)
    words = slow.run(start, count)
    assert fast.compare_run(start, words) is None
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
    idx = np.arange(start, start + count, dtype=np.int64)[::-1].copy()
    rev = np.ascontiguousarray(words[::-1])
    assert fast.differs_list(idx, rev).tolist() == slow.differs_list(idx, rev).tolist()


def test_bad_buffers_raise_value_error() -> None:
    pool = _RandomBaseline(3)._pool
    with pytest.raises(ValueError, match="whole number of pages"):
        accel.fill(pool, 1, 0, bytearray(100))
    with pytest.raises(ValueError, match="one byte per page"):
        accel.differs(pool, 1, 0, bytes(PAGE_SIZE), bytearray(2))
    with pytest.raises(ValueError, match="int64 index per page"):
        accel.fill(pool, 1, 0, bytearray(PAGE_SIZE), np.zeros(2, dtype=np.int64))
    with pytest.raises(ValueError, match="positive number of pages"):
        accel.fill(b"", 1, 0, bytearray(PAGE_SIZE))
    with pytest.raises(TypeError):
        accel.fill(pool, 1, 0, b"read-only" * 512)


def test_guests_built_either_way_have_the_same_digest() -> None:
    fast = GuestMemory(64 * PAGE_SIZE, fill="random", seed=9)
    slow = GuestMemory(64 * PAGE_SIZE, fill="random", seed=9)
    slow._random = _RandomBaseline(9, accelerated=False)
    data = fast.read_pages(0, 64)
    assert data == slow.read_pages(0, 64)
    changed = bytearray(data)
    changed[5 * PAGE_SIZE + 17] ^= 0xFF
    for ram in (fast, slow):
        ram.load_pages(0, bytes(changed))
    assert fast.stored_pages().tolist() == slow.stored_pages().tolist() == [5]
    assert fast.digest() == slow.digest()
