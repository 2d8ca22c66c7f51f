"""XBZRLE deltas, the page cache and QEMU's counters."""

from __future__ import annotations

import contextlib
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qmp_server.engine.guest import PAGE_SIZE
from qmp_server.engine.xbzrle import PageCache, XbzrleStats, decode, encode

BASE = os.urandom(PAGE_SIZE)


@given(st.lists(st.tuples(st.integers(0, PAGE_SIZE - 1), st.binary(min_size=1, max_size=64)),
                max_size=12))  # fmt: skip
def test_round_trip(writes: list[tuple[int, bytes]]) -> None:
    new = bytearray(BASE)
    for at, data in writes:
        new[at : at + len(data)] = data[: PAGE_SIZE - at]
    delta = encode(BASE, bytes(new), limit=1 << 20)
    assert delta is not None
    assert decode(delta, BASE) == bytes(new)


def test_unchanged_page_encodes_to_nothing() -> None:
    assert encode(BASE, BASE) == b""
    assert decode(b"", BASE) == BASE


def test_a_small_write_is_small() -> None:
    new = bytearray(BASE)
    new[100:108] = (
        bytes(8 ^ b for b in new[100:108]) if False else bytes(x ^ 0xFF for x in new[100:108])
    )
    delta = encode(BASE, bytes(new))
    assert delta == bytes([100, 8]) + bytes(new[100:108])  # zrun 100, nzrun 8, the bytes


def test_a_change_at_the_start_has_an_empty_first_run() -> None:
    new = bytearray(BASE)
    new[0] ^= 1
    assert encode(BASE, bytes(new)) == b"\x00\x01" + bytes(new[:1])


def test_a_rewritten_page_overflows() -> None:
    assert encode(BASE, os.urandom(PAGE_SIZE)) is None


@pytest.mark.parametrize("bad", [b"\x80", b"\x05\x10\x01", b"\xff\x7f\x01\x00", b"\x00\x00"])
def test_bad_deltas_raise_value_error(bad: bytes) -> None:
    with pytest.raises(ValueError):
        decode(bad, BASE)


@given(st.binary(max_size=200))
def test_garbage_raises_only_value_error(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        assert len(decode(data, BASE)) == PAGE_SIZE


def test_cache_is_direct_mapped_with_power_of_two_slots() -> None:
    cache = PageCache(5 * PAGE_SIZE)
    assert cache.slots == 4 and cache.size_bytes == 4 * PAGE_SIZE
    cache.put(1, BASE)
    assert bytes(cache.get(1) or b"") == BASE
    cache.put(5, bytes(PAGE_SIZE))  # same slot: replaces page 1
    assert cache.get(1) is None and cache.get(5) is not None


def test_rates() -> None:
    stats = XbzrleStats(cache_size=64 << 20)
    stats.cache_miss += 3
    for size in (10, 30):
        stats.encoded(size)
    stats.update_rates(pages_processed=10)
    assert stats.cache_miss_rate == pytest.approx(0.3)
    assert stats.encoding_rate == pytest.approx(2 * PAGE_SIZE / 46)
    stats.update_rates(pages_processed=0)
    assert stats.encoding_rate == 0.0 and stats.cache_miss_rate == 0.0
    assert list(stats.as_qapi()) == [
        "cache-size", "bytes", "pages", "cache-miss", "cache-miss-rate", "encoding-rate",
        "overflow",
    ]  # fmt: skip


def test_xbzrle_record_through_the_stream() -> None:
    from qmp_server.engine.guest import GuestMemory
    from qmp_server.engine.stream import (
        NEED_DATA,
        StreamDecoder,
        StreamEncoder,
        StreamError,
        XbzrlePage,
        apply_ram_event,
    )

    guest = GuestMemory(4 * PAGE_SIZE)
    guest.write_page(2, BASE)
    new = bytearray(BASE)
    new[10:20] = bytes(10)
    delta = encode(BASE, bytes(new))
    assert delta
    enc = StreamEncoder()
    wire = enc.header(ram_size=4 * PAGE_SIZE, fill="zero", seed=0, profile="7.2")
    wire += enc.xbzrle(2, delta) + enc.complete("ab" * 32, [])
    dec = StreamDecoder()
    dec.receive_data(wire)
    dec.receive_data(b"")
    events = [e for e in iter(dec.next_event, NEED_DATA) if isinstance(e, XbzrlePage)]
    assert events == [XbzrlePage(2, delta)]
    assert apply_ram_event(guest, events[0])
    assert guest.read_page(2) == bytes(new)
    with pytest.raises(StreamError, match="page 1"):
        apply_ram_event(guest, XbzrlePage(1, b"\x05\xff\x01"))


def test_sender_encodes_only_after_the_first_round_and_counts_misses() -> None:
    import numpy as np

    from qmp_server.engine.xbzrle import XbzrleSender

    pages = {1: BASE, 2: bytes(PAGE_SIZE), 3: BASE}
    xb = XbzrleSender(64 << 20)
    idx = np.array([1, 2, 3], dtype=np.int64)
    zero = np.array([False, True, False])
    full, deltas = xb.split(idx, zero, pages.__getitem__, first=3)  # the bulk round
    assert full.all() and not deltas and xb.stats.cache_miss == 0
    full, deltas = xb.split(idx, zero, pages.__getitem__, first=2)  # wrapped before page 3
    assert full.all() and xb.stats.cache_miss == 1  # page 3: not cached yet
    changed = bytearray(BASE)
    changed[0] ^= 0xFF
    pages[3] = bytes(changed)
    pages[1] = bytes(changed)
    full, deltas = xb.split(idx, zero, pages.__getitem__)
    assert full.tolist() == [True, True, False]  # page 1 missed, page 3 encoded
    assert deltas == [(3, b"\x00\x01" + bytes(changed[:1]))]
    assert xb.stats.pages == 1 and xb.stats.cache_miss == 2
    full, deltas = xb.split(idx, zero, pages.__getitem__, last_stage=True)
    assert full.tolist() == [False, True, False] and not deltas  # unchanged: nothing sent
