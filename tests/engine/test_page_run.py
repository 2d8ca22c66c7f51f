"""PageRun: pages named when a step is taken and built by the writer (engine/page_run.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qmp_server.engine.guest import GuestMemory
from qmp_server.engine.page_run import PageRun
from qmp_server.engine.stream import (
    CHECKSUM_XXH3_64,
    StreamEncoder,
    encode_guest_pages_parts,
)


def _joined(parts: list[object]) -> bytes:
    return b"".join(
        bytes(p.materialize()) if isinstance(p, PageRun) else bytes(p)  # type: ignore[arg-type]
        for p in parts
    )


def _encoder(checksum: int | None = None) -> StreamEncoder:
    enc = StreamEncoder() if checksum is None else StreamEncoder(checksum)
    enc.header(ram_size=256 * 4096, fill="random", seed=3, profile="7.2")
    return enc


def test_a_run_reads_the_pages_when_built_not_when_named() -> None:
    guest = GuestMemory(32 * 4096, fill="random", seed=1)
    run = PageRun(guest, 4, 8)
    assert len(run) == run.nbytes == 8 * 4096
    guest.write_page(6, b"\x01" * 4096)  # after the step was taken: the newer content goes
    assert bytes(run.materialize()) == guest.read_pages(4, 8)


def test_a_run_outside_the_guest_is_refused_when_named() -> None:
    guest = GuestMemory(8 * 4096)
    with pytest.raises(IndexError):
        PageRun(guest, 6, 3)
    with pytest.raises(IndexError):
        PageRun(guest, -1, 1)


@settings(max_examples=60, deadline=None)
@given(
    pages=st.lists(st.integers(0, 255), min_size=1, max_size=200, unique=True),
    written=st.lists(st.integers(0, 255), max_size=20),
)
def test_deferred_records_are_byte_for_byte_the_built_ones(
    pages: list[int], written: list[int]
) -> None:
    guest = GuestMemory(256 * 4096, fill="random", seed=3)
    for i in written:
        guest.write_page(i, bytes([i % 7]) * 4096)  # some zero pages, some others
    idx = np.array(sorted(pages), dtype=np.int64)
    built = encode_guest_pages_parts(_encoder(), guest, idx, min_run=4)
    deferred = encode_guest_pages_parts(_encoder(), guest, idx, min_run=4, deferred=True)
    assert _joined(deferred.parts) == _joined(built.parts)
    assert (deferred.nbytes, deferred.zero_pages) == (built.nbytes, built.zero_pages)


def test_a_checksum_over_page_contents_never_defers() -> None:
    guest = GuestMemory(64 * 4096, fill="random", seed=2)
    enc = _encoder(CHECKSUM_XXH3_64)
    parts = encode_guest_pages_parts(enc, guest, np.arange(64), deferred=True).parts
    assert not any(isinstance(p, PageRun) for p in parts)


def test_pieces_cover_the_run_in_order_through_one_buffer() -> None:
    guest = GuestMemory(100 * 4096, fill="text", seed=4)
    guest.write_page(50, b"\x02" * 4096)
    scratch = np.empty((16, 512), dtype=np.uint64)
    got = b"".join(bytes(piece) for piece in PageRun(guest, 10, 70).pieces(scratch))
    assert got == guest.read_pages(10, 70)


@pytest.mark.parametrize("fill", ["zero", "random", "text"])
def test_read_pages_into_is_read_pages(fill: str) -> None:
    guest = GuestMemory(64 * 4096, fill=fill, seed=9)  # type: ignore[arg-type]
    guest.write_page(5, b"\x03" * 4096)
    out = np.full((32, 512), 7, dtype=np.uint64)
    assert bytes(guest.read_pages_into(3, 20, out)) == guest.read_pages(3, 20)
