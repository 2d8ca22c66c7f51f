"""The mapped-ram layout, bitmap, record and counters against QEMU 10.0's recorded file.

Recorded (``docs/multifd-facts.md`` §13; ``-M pc -m 64 -nodefaults``): the stream goes on
right after each block's pages, which start on a 1 MiB boundary: pc.ram's at 1 MiB, then
66, 67, 68, 69 and 70 MiB; the bitmaps are 2,088 bytes; the main stream outside the pages
and bitmaps is 112,580 bytes (112,580 + 8 + 2,088 = 114,676 with multifd).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from qmp_server.engine.machine import layout_for
from qmp_server.engine.mapped_ram import (
    ALIGNMENT,
    BlockRegion,
    MappedBitmap,
    bitmap_bytes,
    bitmaps_total,
    check_alignment,
    check_region,
    plan_region,
    region_runs,
)
from qmp_server.engine.stream import (
    MAPPED_BLOCK_BYTES,
    Complete,
    MappedBlock,
    NeedData,
    StreamDecoder,
    StreamEncoder,
    StreamError,
)
from qmp_server.engine.wire_cost import BlockMap, QemuStream
from qmp_server.profiles import PROFILES

MiB = 1 << 20
P100 = PROFILES["10.0"]
PC64 = layout_for(P100, "pc", 64 * MiB)


def _regions(base: int = 0, record_at: int = 200) -> list[BlockRegion]:
    blocks = BlockMap(PC64.block_list())
    counts = [used // 4096 for _, used in PC64.block_list()]
    out, pos = [], record_at
    for first, pages in zip(blocks.starts.tolist(), counts, strict=True):
        region = plan_region(first, pages, record_at=pos, record_bytes=MAPPED_BLOCK_BYTES,
                             base=base)  # fmt: skip
        out.append(region)
        pos = region.next_offset
    return out


def test_regions_are_where_qemu_puts_them() -> None:
    regions = _regions()
    assert [r.pages_offset // MiB for r in regions] == [1, 66, 67, 68, 69, 70]
    assert regions[0].next_offset == 65 * MiB
    assert regions[-1].next_offset == 70 * MiB + 4096
    assert all(check_region(r, expected_first=r.first_page, ram_pages=16514) is None
               for r in regions)  # fmt: skip


def test_an_offset_keeps_the_pages_aligned_in_the_file() -> None:
    for base in (4096, 1000, ALIGNMENT - 1):
        assert all((base + r.pages_offset) % ALIGNMENT == 0 for r in _regions(base))


def test_pages_must_be_aligned_in_the_file() -> None:
    region = BlockRegion(0, 10, 0, MiB - 1, MiB - 1 + 40960)
    assert check_alignment(region, 1) is None
    assert "unaligned offset" in (check_alignment(region, 0) or "")


def test_bitmaps_are_qemus_2088_bytes() -> None:
    assert bitmaps_total([used // 4096 for _, used in PC64.block_list()]) == 2088
    assert [bitmap_bytes(n) for n in (1, 64, 65, 16384)] == [8, 8, 16, 2048]


@given(st.lists(st.booleans(), min_size=1, max_size=300))
def test_bitmap_round_trip(bits: list[bool]) -> None:
    region = BlockRegion(0, len(bits), 100, ALIGNMENT, ALIGNMENT + 4096 * len(bits))
    bitmap = MappedBitmap(len(bits))
    pages = np.arange(len(bits), dtype=np.int64)
    bitmap.mark(pages, ~np.array(bits))
    raw = bitmap.block_bytes(region)
    assert len(raw) == bitmap_bytes(len(bits))
    assert MappedBitmap.parse(region, raw).tolist() == bits


def test_a_bit_beyond_the_last_page_is_refused() -> None:
    region = BlockRegion(0, 3, 100, ALIGNMENT, ALIGNMENT + 3 * 4096)
    with pytest.raises(ValueError, match="beyond the block's last page"):
        MappedBitmap.parse(region, bytes([0b1000]) + bytes(7))


def test_a_page_that_turned_zero_loses_its_bit() -> None:
    bitmap = MappedBitmap(4)
    bitmap.mark(np.array([0, 1, 2, 3]), np.array([False, False, True, False]))
    bitmap.mark(np.array([1]), np.array([True]))
    assert bitmap.bits.tolist() == [True, False, False, True]


def test_runs_name_file_offsets() -> None:
    region = BlockRegion(100, 50, 10, ALIGNMENT, ALIGNMENT + 50 * 4096)
    runs = region_runs(region, np.array([100, 101, 102, 110], dtype=np.int64))
    assert runs == [(ALIGNMENT, 100, 3), (ALIGNMENT + 10 * 4096, 110, 1)]


@pytest.mark.parametrize(
    ("region", "problem"),
    [
        (BlockRegion(5, 10, 0, MiB, MiB + 40960), "expected 0"),
        (BlockRegion(0, 0, 0, MiB, MiB), "out of RAM"),
        (BlockRegion(0, 10, MiB - 4, MiB, MiB + 40960), "overlaps"),
        (BlockRegion(0, 10, 0, MiB, MiB), "does not end"),
    ],
)
def test_bad_regions_are_named(region: BlockRegion, problem: str) -> None:
    found = check_region(region, expected_first=0, ram_pages=100)
    assert found is not None and problem in found


# ---- the MAPPED_BLOCK record ------------------------------------------------------------------


def _stream(regions: list[BlockRegion], ram_pages: int) -> tuple[bytes, list[bytes]]:
    enc = StreamEncoder()
    head = enc.header(
        ram_size=ram_pages * 4096, fill="zero", seed=0, profile="10.0", mapped_ram=True
    )
    return head, [enc.mapped_block(r) for r in regions] + [enc.complete("00" * 32, [])]


def _decode(pieces: list[bytes]) -> list[object]:
    """Feed a stream piece by piece; after a MAPPED_BLOCK the decoder is given what follows
    (its reader went on at the block's end), with junk that stood before it."""
    dec = StreamDecoder()
    events: list[object] = []
    for piece in [*pieces, b""]:  # b"": the end of the file
        dec.receive_data(piece)
        while not isinstance(ev := dec.next_event(), NeedData):
            events.append(ev)
    return events


def test_the_decoder_drops_what_follows_a_block_record() -> None:
    regions = [BlockRegion(0, 8, 200, MiB, MiB + 8 * 4096), BlockRegion(8, 2, MiB + 8 * 4096 + 50,
               2 * MiB, 2 * MiB + 8192)]  # fmt: skip
    head, records = _stream(regions, 10)
    # the bitmap and page bytes after a record (in the same read) are not stream
    events = _decode([head + records[0] + b"\xff" * 100, records[1] + b"junk", records[2]])
    assert [e.region for e in events if isinstance(e, MappedBlock)] == regions
    assert any(isinstance(e, Complete) for e in events)


def test_blocks_must_cover_the_guest() -> None:
    head, records = _stream([BlockRegion(0, 8, 200, MiB, MiB + 8 * 4096)], 10)
    with pytest.raises(StreamError, match="cover 8 of 10 pages"):
        _decode([head + records[0], records[1]])


def test_a_block_record_needs_the_header_flag() -> None:
    enc = StreamEncoder()
    head = enc.header(ram_size=10 * 4096, fill="zero", seed=0, profile="10.0")
    record = enc.mapped_block(BlockRegion(0, 10, 200, MiB, MiB + 40960))
    with pytest.raises(StreamError, match="without mapped-ram"):
        _decode([head + record])


def test_blocks_out_of_order_are_refused() -> None:
    head, records = _stream([BlockRegion(2, 8, 200, MiB, MiB + 8 * 4096)], 10)
    with pytest.raises(StreamError, match="expected 0"):
        _decode([head + records[0]])


@given(st.integers(min_value=0), st.integers(min_value=0, max_value=7))
def test_a_flipped_bit_in_a_block_record_is_caught(at: int, bit: int) -> None:
    region = BlockRegion(0, 10, 200, MiB, MiB + 40960)
    head, records = _stream([region], 10)
    record = bytearray(records[0])
    record[at % len(record)] ^= 1 << bit
    with pytest.raises(StreamError):
        _decode([head + bytes(record), records[1]])


# ---- counters (wire_cost rule 5) -----------------------------------------------------------


def _qemu(multifd: bool) -> QemuStream:
    q = QemuStream(P100, BlockMap(PC64.block_list()),
                   configuration_bytes=PC64.configuration_bytes,
                   device_state_bytes=PC64.device_state_bytes,
                   vmdesc_bytes=PC64.vmdesc_bytes)  # fmt: skip
    q.use_mapped_ram(multifd=multifd)
    q.setup(return_path=False)
    return q


@pytest.mark.parametrize("multifd", [False, True])
def test_counters_as_qemu_counts_them(multifd: bool) -> None:
    q = _qemu(multifd)
    pages = np.arange(16514, dtype=np.int64)
    zero = np.ones(16514, dtype=np.bool_)
    zero[:114] = False
    q.begin_section()
    q.add_pages(pages, q.cost(pages, zero), downtime=False)
    q.end_section(downtime=False)
    q.switchover()
    q.mapped_bitmaps(2088)
    q.end_section(downtime=True, final=True)
    q.complete()
    assert (q.normal_pages, q.zero_pages) == (114, 16400)
    if multifd:
        assert (q.precopy_bytes, q.downtime_bytes, q.channel_bytes) == (8, 2088, 114 * 4096)
        assert q.transferred - q.channel_bytes == 114676
    else:
        assert (q.precopy_bytes, q.downtime_bytes) == (114 * 4096 + 8, 2088)
        assert q.transferred - q.precopy_bytes - q.downtime_bytes == 112580


def test_runs_are_cut_into_pieces_a_buffer_holds() -> None:
    region = BlockRegion(0, 50, 10, ALIGNMENT, ALIGNMENT + 50 * 4096)
    runs = region_runs(region, np.arange(0, 10, dtype=np.int64), piece_pages=4)
    assert runs == [(ALIGNMENT, 0, 4), (ALIGNMENT + 4 * 4096, 4, 4), (ALIGNMENT + 8 * 4096, 8, 2)]
