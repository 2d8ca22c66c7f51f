"""7.2's compress threads as counted: a block's first page bypasses them, thread 0 takes every
page and drains its previous output, a flush drains all (empty ones count -8 bytes)."""

from __future__ import annotations

import numpy as np

from qmp_server.engine.compression import LegacyCompressStats
from qmp_server.engine.legacy_compress import (
    ZERO_RECORD_BYTES,
    CompressThreads,
    compressed_record_bytes,
)


def test_a_blocks_first_page_goes_from_the_migration_thread() -> None:
    pages = np.array([0, 1, 2, 10, 11], dtype=np.int64)
    starts = np.array([0, 10], dtype=np.int64)
    assert CompressThreads.via_threads(pages, starts).tolist() == [False, True, True, False, True]


def test_drains_count_what_7_2_counts() -> None:
    stats = LegacyCompressStats()
    threads = CompressThreads(4, stats)
    threads.give(compressed_record_bytes(100), False, block=0)  # drains thread 0: empty
    assert (stats.pages, stats.compressed_size) == (1, -8)
    threads.give(ZERO_RECORD_BYTES, True, block=0)  # drains the compressed page
    assert (stats.pages, stats.compressed_size) == (2, -8 + 104)
    threads.flush()  # the zero page (not counted here) and three empty threads
    assert (stats.pages, stats.compressed_size) == (5, 96 - 3 * 8)


def test_a_new_block_flushes_first() -> None:
    stats = LegacyCompressStats()
    threads = CompressThreads(2, stats)
    threads.give(compressed_record_bytes(50), False, block=0)
    threads.give(compressed_record_bytes(60), False, block=1)  # flush (2 drains), then drain
    assert stats.pages == 1 + 2 + 1
