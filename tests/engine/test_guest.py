"""GuestMemory, Workload and sizes: sparse storage, baselines, dirty log, digest, rates."""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pytest

from qmp_server.engine.guest import PAGE_SIZE, GuestMemory, Workload, page_runs
from qmp_server.engine.sizes import format_size, parse_memory_size, parse_size


def test_sizes() -> None:
    assert parse_size("64G") == 64 << 30
    assert parse_size("512M") == 512 << 20
    assert parse_size("4096") == 4096
    assert parse_size("1k") == parse_size("1K") == 1024
    assert parse_size("10b") == 10
    assert parse_size("1.5G") == 3 << 29
    assert parse_size("0x1000") == 4096
    assert parse_size("2", "M") == 2 << 20
    assert parse_memory_size("64") == 64 << 20
    assert parse_memory_size("64G") == 64 << 30
    assert parse_memory_size("1001k") == 126 * 8192  # rounded up to 8 KiB
    for bad in ("", "x", "1Q", "1.5", "-1", "1.5b", "16E", "1 2"):
        with pytest.raises(ValueError, match="expects a non-negative number below 2"):
            parse_size(bad)
    with pytest.raises(ValueError):
        parse_memory_size("17592186044416")  # 2**64 bytes
    assert parse_memory_size("0") == 128 << 20  # QEMU 7.2 starts with its default (recorded)
    assert format_size(64 << 30) == "64 GiB"
    assert format_size(1536 << 20) == "1.5 GiB"


def test_sparse_64g_guest_is_fast_and_small() -> None:
    t0 = time.perf_counter()
    ram = GuestMemory(64 << 30, fill="random", seed=3)
    untouched = ram.digest()
    assert ram.is_zero_page(ram.page_count - 1) is False
    ram.write_page(ram.page_count - 1, bytes(PAGE_SIZE))
    assert ram.is_zero_page(ram.page_count - 1)
    assert ram.resident_pages == 1
    assert ram.digest() != untouched
    assert len(ram.sync_dirty()) == 1
    assert time.perf_counter() - t0 < 2.0


def test_random_baseline_is_deterministic_and_distinct() -> None:
    a = GuestMemory(1 << 20, fill="random", seed=7)
    b = GuestMemory(1 << 20, fill="random", seed=7)
    c = GuestMemory(1 << 20, fill="random", seed=8)
    assert a.read_pages(0, 256) == b.read_pages(0, 256)
    assert a.read_page(5) != c.read_page(5)
    pages = {a.read_page(i) for i in range(256)}
    assert len(pages) == 256
    # A run equals the pages read one by one, and a list read in any order.
    assert a.read_pages(250, 6) == b"".join(a.read_page(i) for i in range(250, 256))
    assert a.read_page_list([9, 3]) == a.read_page(9) + a.read_page(3)


def test_write_restoring_baseline_is_canonical() -> None:
    ram = GuestMemory(1 << 20, fill="random", seed=1)
    before = ram.digest()
    original = ram.read_page(10)
    ram.write_page(10, b"\xaa" * PAGE_SIZE)
    assert ram.resident_pages == 1
    ram.write_page(10, original)
    assert ram.resident_pages == 0
    assert ram.digest() == before


def test_load_and_digest_match_between_two_memories() -> None:
    src = GuestMemory(4 << 20, fill="random", seed=11)
    Workload(src, 1 << 20, seed=5).advance(1.0)
    src.write_page(3, bytes(PAGE_SIZE))
    dst = GuestMemory(4 << 20, fill="random", seed=11)
    for start in range(0, src.page_count, 256):
        dst.load_pages(start, src.read_pages(start, 256))
    assert dst.digest() == src.digest()
    assert dst.content_digest() == src.content_digest()
    assert dst.resident_pages == src.resident_pages
    # Loads never mark pages dirty.
    assert dst.dirty_count() == 0


def test_zero_guest_zero_mask_and_loads() -> None:
    ram = GuestMemory(1 << 20, fill="zero")
    ram.write_page(4, b"\x01" * PAGE_SIZE)
    mask = ram.zero_mask([3, 4, 5])
    assert mask.tolist() == [True, False, True]
    ram.load_zero_pages(0, 256)
    assert ram.resident_pages == 0
    assert ram.digest() == GuestMemory(1 << 20).digest()


def test_content_digest_is_plain_sha256() -> None:
    ram = GuestMemory(64 * PAGE_SIZE, fill="random", seed=2)
    assert ram.content_digest() == hashlib.sha256(ram.read_pages(0, 64)).hexdigest()


def test_dirty_log_sync_returns_and_clears() -> None:
    ram = GuestMemory(1 << 30)
    ram.mark_all_dirty()
    assert ram.dirty_count() == 262144
    t0 = time.perf_counter()
    dirty = ram.sync_dirty()
    assert time.perf_counter() - t0 < 0.5
    assert dirty.size == 262144 and dirty[0] == 0 and dirty[-1] == 262143
    assert ram.sync_dirty().size == 0
    ram.write_page_list([7, 2, 7], b"\x01" * PAGE_SIZE + b"\x02" * PAGE_SIZE + b"\x03" * PAGE_SIZE)
    assert ram.sync_dirty().tolist() == [2, 7]
    assert ram.read_page(7) == b"\x03" * PAGE_SIZE  # the last write wins
    assert page_runs([1, 2, 3, 7]) == [(1, 3), (7, 1)]


def test_workload_rate_throttle_and_stop() -> None:
    ram = GuestMemory(256 << 20)
    work = Workload(ram, 10 * PAGE_SIZE * 100, seed=1)  # 1000 pages/s
    assert work.advance(0.5) == 500
    work.set_throttle(50, now=0.5)
    assert work.advance(1.5) == 500
    work.set_rate(0, now=1.5)
    assert work.advance(10.0) == 0
    work.set_rate(PAGE_SIZE * 100, now=10.0)
    work.set_throttle(0, now=10.0)
    work.set_running(False, now=11.0)
    assert work.advance(20.0) == 100
    assert work.effective_rate == 0
    assert 0 < len(ram.sync_dirty()) <= 1100
    with pytest.raises(ValueError):
        work.set_throttle(100, now=20.0)


def test_index_checks() -> None:
    ram = GuestMemory(PAGE_SIZE * 4)
    with pytest.raises(IndexError):
        ram.read_page(4)
    with pytest.raises(IndexError):
        ram.load_pages(3, bytes(2 * PAGE_SIZE))
    with pytest.raises(ValueError):
        GuestMemory(1000)
    assert np.all(ram.zero_mask(np.arange(4)))
