"""Stream codec: round trips, chunking invariance, corruption detection, return path."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qmp_server.engine.devices import DeviceChunk, DeviceChunkKind
from qmp_server.engine.guest import PAGE_SIZE, GuestMemory, Workload
from qmp_server.engine.stream import (
    CHECKSUM_XXH3_64,
    CHECKSUM_XXH3_64_NO_PAGES,
    NEED_DATA,
    Checkpoint,
    Complete,
    DeviceData,
    EndOfPrecopy,
    EndOfStream,
    OpenReturnPath,
    RamList,
    RamRun,
    ReturnPathDecoder,
    ReturnPathEncoder,
    RpClosed,
    RpOpen,
    RpResumed,
    RpShut,
    RpSwitchoverAck,
    StreamDecoder,
    StreamEncoder,
    StreamError,
    StreamEvent,
    StreamHeader,
    SyncMarker,
    ZeroList,
    ZeroRun,
    apply_ram_event,
    encode_guest_pages,
    guest_for_header,
)


def _sample_stream(checksum: int = CHECKSUM_XXH3_64_NO_PAGES) -> bytes:
    enc = StreamEncoder(checksum)
    out = enc.header(
        ram_size=64 * PAGE_SIZE,
        fill="random",
        seed=5,
        profile="8.1",
        switchover_ack=True,
        return_path=True,
    )
    out += enc.open_return_path()
    out += enc.ram_run(2, b"\x01" * PAGE_SIZE * 2)
    out += enc.ram_list([9, 7], b"\x02" * PAGE_SIZE + b"\x03" * PAGE_SIZE)
    out += enc.zero_run(10, 5) + enc.zero_list([20, 30])
    out += enc.device(DeviceChunk("dev0", DeviceChunkKind.INITIAL, 0, b"init"))
    out += enc.device(DeviceChunk("dev0", DeviceChunkKind.INIT_DATA_SENT))
    out += enc.sync(1) + enc.checkpoint() + enc.end_of_precopy()
    out += enc.device(DeviceChunk("dev0", DeviceChunkKind.FINAL, 4, b"late", initial=True))
    out += enc.device(DeviceChunk("dev0", DeviceChunkKind.END))
    out += enc.complete("ab" * 32, [("dev0", "cd" * 32)])
    assert enc.bytes_encoded == len(out)
    return out


SAMPLE = _sample_stream()
SAMPLE_V1 = _sample_stream(CHECKSUM_XXH3_64)  # page contents in the checksum too


def _decode(chunks: list[bytes], eof: bool = True) -> list[StreamEvent]:
    dec = StreamDecoder()
    events: list[StreamEvent] = []
    for chunk in [*chunks, *([b""] if eof else [])]:
        dec.receive_data(chunk)
        while (event := dec.next_event()) is not NEED_DATA:
            assert not isinstance(event, type(NEED_DATA))
            events.append(event)
    return events


EXPECTED = _decode([SAMPLE])


def test_round_trip_events() -> None:
    kinds = [type(e) for e in EXPECTED]
    assert kinds == [
        StreamHeader,
        OpenReturnPath,
        RamRun,
        RamList,
        ZeroRun,
        ZeroList,
        DeviceData,
        DeviceData,
        SyncMarker,
        Checkpoint,
        EndOfPrecopy,
        DeviceData,
        DeviceData,
        Complete,
        Checkpoint,
        EndOfStream,
    ]
    header = EXPECTED[0]
    assert isinstance(header, StreamHeader)
    assert header.switchover_ack and header.return_path and header.fill == "random"
    assert header.seed == 5 and header.profile == "8.1" and header.ram_size == 64 * PAGE_SIZE
    assert EXPECTED[2] == RamRun(2, 2, b"\x01" * PAGE_SIZE * 2)
    assert EXPECTED[3] == RamList((9, 7), b"\x02" * PAGE_SIZE + b"\x03" * PAGE_SIZE)
    assert EXPECTED[11] == DeviceData(
        DeviceChunk("dev0", DeviceChunkKind.FINAL, 4, b"late", initial=True)
    )
    assert EXPECTED[13] == Complete("ab" * 32, (("dev0", "cd" * 32),))


@given(st.lists(st.integers(min_value=0, max_value=len(SAMPLE)), max_size=30))
def test_any_split_decodes_the_same(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    chunks = [SAMPLE[a:b] for a, b in zip([0, *points], [*points, len(SAMPLE)], strict=True)]
    assert _decode([c for c in chunks if c]) == EXPECTED


def _must_fail(data: bytes) -> None:
    """Decoding must raise StreamError (and only that) before any EndOfStream."""
    with pytest.raises(StreamError):
        events = _decode([data])
        assert not any(isinstance(e, EndOfStream) for e in events)
        raise AssertionError("corruption not detected")  # pragma: no cover


def _page_content_bytes(stream: bytes) -> set[int]:
    """Offsets of page contents in the sample (the RAM_RUN and RAM_LIST data)."""
    run = stream.index(b"\x01" * PAGE_SIZE * 2)
    lst = stream.index(b"\x02" * PAGE_SIZE + b"\x03" * PAGE_SIZE)
    return {*range(run, run + 2 * PAGE_SIZE), *range(lst, lst + 2 * PAGE_SIZE)}


PAGE_BYTES = _page_content_bytes(SAMPLE)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=0, max_value=len(SAMPLE) * 8 - 1))
def test_every_bit_flip_is_detected(bit: int) -> None:
    """Outside page contents the decoder fails; inside them the pages it hands out differ,
    which the loader's RAM digest then refuses (tests/hardening/test_faults.py)."""
    data = bytearray(SAMPLE)
    data[bit // 8] ^= 1 << (bit % 8)
    if bit // 8 not in PAGE_BYTES:
        _must_fail(bytes(data))
        return
    events = _decode([bytes(data)])
    assert isinstance(events[-1], EndOfStream)
    assert [e for e in events if isinstance(e, (RamRun, RamList))] != [
        e for e in EXPECTED if isinstance(e, (RamRun, RamList))
    ]


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=0, max_value=len(SAMPLE_V1) * 8 - 1))
def test_every_bit_flip_is_detected_with_checksum_v1(bit: int) -> None:
    data = bytearray(SAMPLE_V1)
    data[bit // 8] ^= 1 << (bit % 8)
    _must_fail(bytes(data))


def test_v1_streams_are_still_read() -> None:
    def body(events: list[StreamEvent]) -> list[StreamEvent]:
        return [e for e in events if not isinstance(e, Checkpoint)]

    assert body(_decode([SAMPLE_V1])) == body(EXPECTED)
    assert SAMPLE_V1 != SAMPLE


@given(st.integers(min_value=0, max_value=len(SAMPLE) - 1))
def test_every_truncation_is_detected(length: int) -> None:
    _must_fail(SAMPLE[:length])


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_garbage_raises_only_stream_error(data: bytes) -> None:
    for candidate in (data, SAMPLE[:10] + data, SAMPLE[:60] + data):
        with contextlib.suppress(StreamError):
            _decode([candidate])


def test_data_after_eof_and_error_is_sticky() -> None:
    _must_fail(SAMPLE + b"\x00")
    dec = StreamDecoder()
    dec.receive_data(b"NOTMAGIC\x01\x00")
    for _ in range(2):
        with pytest.raises(StreamError, match="bad magic"):
            dec.next_event()


def test_specific_errors() -> None:
    enc = StreamEncoder()
    head = enc.header(ram_size=4 * PAGE_SIZE, fill="zero", seed=0, profile="x")
    with pytest.raises(StreamError, match="unsupported stream version"):
        _decode([SAMPLE[:8] + b"\x09\x00" + SAMPLE[10:]])
    with pytest.raises(StreamError, match="out of range"):
        _decode([head + enc.zero_run(3, 2)])
    with pytest.raises(StreamError, match="unknown record type 0x55"):
        _decode([head + b"\x55\x00\x00\x00\x00"])
    with pytest.raises(StreamError, match="truncated"):
        _decode([head])
    bad = bytearray(SAMPLE)
    bad[-10] ^= 0xFF  # inside the final checksum value
    with pytest.raises(StreamError, match="checksum mismatch"):
        _decode([bytes(bad)])


def test_guest_round_trip_with_zero_detection() -> None:
    src = GuestMemory(8 << 20, fill="random", seed=77)
    Workload(src, 200 * PAGE_SIZE, seed=3).advance(1.0)
    for i in (0, 1, 2, 100, 1000, 2047):
        src.write_page(i, bytes(PAGE_SIZE))
    src.mark_all_dirty()
    pages = src.sync_dirty()
    enc = StreamEncoder()
    wire = [enc.header(ram_size=src.size_bytes, fill=src.fill, seed=src.seed, profile="t")]
    for start in range(0, pages.size, 256):
        wire += encode_guest_pages(enc, src, pages[start : start + 256])
    # A second pass of scattered pages goes out as lists.
    wire += encode_guest_pages(enc, src, [5, 9, 100, 700])
    wire.append(enc.complete(src.digest(), ()))
    dec = StreamDecoder()
    dst = None
    kinds = set()
    for chunk in wire:
        dec.receive_data(chunk)
        while (event := dec.next_event()) is not NEED_DATA:
            kinds.add(type(event))
            if isinstance(event, StreamHeader):
                dst = guest_for_header(event)
            elif isinstance(event, Complete):
                assert dst is not None and dst.digest() == event.ram_digest
            else:
                assert dst is not None
                apply_ram_event(dst, event)
    assert {RamRun, ZeroList, RamList} <= kinds
    assert dst is not None and dst.content_digest() == src.content_digest()


def test_zero_guest_is_tiny_on_the_wire() -> None:
    src = GuestMemory(1 << 30)
    src.mark_all_dirty()
    enc = StreamEncoder()
    enc.header(ram_size=src.size_bytes, fill="zero", seed=0, profile="t")
    records = encode_guest_pages(enc, src, src.sync_dirty())
    assert len(records) == 1 and len(records[0]) == 21


def test_return_path_round_trip_and_errors() -> None:
    rp = ReturnPathEncoder()
    wire = rp.open() + rp.switchover_ack() + rp.resumed(12.5) + rp.resumed() + rp.shut(0)
    for split in range(len(wire) + 1):
        dec = ReturnPathDecoder()
        events = []
        for part in [p for p in (wire[:split], wire[split:]) if p] + [b""]:
            dec.receive_data(part)
            while (event := dec.next_event()) is not NEED_DATA:
                events.append(event)
        assert events == [
            RpOpen(1),
            RpSwitchoverAck(),
            RpResumed(12.5),
            RpResumed(None),
            RpShut(0),
            RpClosed(clean=True),
        ]
    for bad, message in [
        (b"\x09\x00", "unknown return path message"),
        (b"\x02\x00", "before OPEN"),
        (rp.open() + b"\x02\x03abc", "bad length"),
        (rp.open()[:3], "truncated"),
        (rp.open() + rp.shut() + rp.switchover_ack(), "after SHUT"),
    ]:
        dec = ReturnPathDecoder()
        dec.receive_data(bad)
        dec.receive_data(b"")
        with pytest.raises(StreamError, match=message):
            while dec.next_event() is not NEED_DATA:
                pass
    dec = ReturnPathDecoder()
    dec.receive_data(rp.open())
    dec.receive_data(b"")
    assert dec.next_event() == RpOpen(1)
    assert dec.next_event() == RpClosed(clean=False)
    assert dec.next_event() is NEED_DATA


@settings(max_examples=200)
@given(st.binary(max_size=64))
def test_return_path_garbage_raises_only_stream_error(data: bytes) -> None:
    dec = ReturnPathDecoder()
    dec.receive_data(data)
    dec.receive_data(b"")
    try:
        for _ in range(100):
            if dec.next_event() is NEED_DATA:
                break
    except StreamError:
        pass


@pytest.mark.parametrize("mask", [0x01, 0x80])
def test_a_flip_in_every_byte_is_detected(mask: int) -> None:
    """Every byte of a v1 stream, and every byte but page contents of a v2 stream."""
    for sample, skip in ((SAMPLE_V1, set()), (SAMPLE, PAGE_BYTES)):
        for pos in range(len(sample)):
            if pos in skip:
                continue
            data = bytearray(sample)
            data[pos] ^= mask
            _must_fail(bytes(data))
