"""The postcopy and XBZRLE records and return-path messages: round trips, order, corruption."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qmp_server.engine.devices import DeviceChunk, DeviceChunkKind
from qmp_server.engine.guest import PAGE_SIZE
from qmp_server.engine.postcopy import bitmap_of
from qmp_server.engine.stream import (
    NEED_DATA,
    RP_BITMAP_CHUNK,
    EndOfStream,
    PostcopyAdvise,
    PostcopyDiscard,
    PostcopyListen,
    PostcopyResume,
    PostcopyRun,
    RamRun,
    Recover,
    ReturnPathDecoder,
    ReturnPathEncoder,
    RpBitmapEnd,
    RpClosed,
    RpOpen,
    RpRecvBitmap,
    RpReqPages,
    RpShut,
    StreamDecoder,
    StreamEncoder,
    StreamError,
    StreamEvent,
)

PAGES = 70  # not a multiple of 8: the discard bitmap has spare bits


def _postcopy_stream() -> bytes:
    enc = StreamEncoder()
    out = enc.header(
        ram_size=PAGES * PAGE_SIZE, fill="zero", seed=0, profile="7.2", return_path=True
    )
    out += enc.open_return_path() + enc.postcopy_advise()
    out += enc.ram_run(0, b"\x05" * PAGE_SIZE) + enc.sync(1)
    out += enc.xbzrle(0, b"\x10\x02\x07\x07")  # a re-sent page as a delta (engine/xbzrle.py)
    out += enc.sync(2) + enc.postcopy_discard(bitmap_of([3, 9, 69], PAGES))
    out += enc.postcopy_listen()
    out += enc.device(DeviceChunk("dev0", DeviceChunkKind.FINAL, 0, b"state"))
    out += enc.postcopy_run(False)
    out += enc.ram_run(9, b"\x06" * PAGE_SIZE) + enc.zero_run(3, 1) + enc.zero_run(69, 1)
    out += enc.complete("ab" * 32, [])
    return out


def _recovery_stream() -> bytes:
    enc = StreamEncoder()
    out = enc.recover(PAGES * PAGE_SIZE) + enc.postcopy_resume()
    out += enc.ram_run(9, b"\x06" * PAGE_SIZE) + enc.complete("ab" * 32, [])
    return out


SAMPLE = _postcopy_stream()
RECOVERY = _recovery_stream()


def _decode(chunks: list[bytes], *, recovery: bool = False) -> list[StreamEvent]:
    dec = StreamDecoder(recovery=recovery)
    events: list[StreamEvent] = []
    for chunk in [*chunks, b""]:
        dec.receive_data(chunk)
        while (event := dec.next_event()) is not NEED_DATA:
            assert not isinstance(event, type(NEED_DATA))
            events.append(event)
    return events


def test_postcopy_records_round_trip() -> None:
    events = _decode([SAMPLE])
    kinds = [type(e) for e in events]
    for kind in (PostcopyAdvise, PostcopyDiscard, PostcopyListen, PostcopyRun):
        assert kinds.count(kind) == 1
    assert kinds.index(PostcopyDiscard) < kinds.index(PostcopyListen) < kinds.index(PostcopyRun)
    discard = next(e for e in events if isinstance(e, PostcopyDiscard))
    assert discard.bitmap == bitmap_of([3, 9, 69], PAGES)
    assert next(e for e in events if isinstance(e, PostcopyRun)).running is False
    assert isinstance(events[-1], EndOfStream)


def test_recovery_stream_round_trip() -> None:
    events = _decode([RECOVERY], recovery=True)
    assert isinstance(events[0], Recover) and events[0].ram_size == PAGES * PAGE_SIZE
    assert isinstance(events[1], PostcopyResume)
    assert isinstance(events[-1], EndOfStream)
    with pytest.raises(StreamError, match="expected HEADER"):
        _decode([RECOVERY])
    with pytest.raises(StreamError, match="expected RECOVER"):
        _decode([SAMPLE], recovery=True)


@settings(max_examples=100)
@given(st.lists(st.integers(0, len(SAMPLE)), max_size=6))
def test_any_split_decodes_the_same(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    chunks = [SAMPLE[a:b] for a, b in zip([0, *points], [*points, len(SAMPLE)], strict=True)]
    assert _decode([c for c in chunks if c]) == _decode([SAMPLE])


def _page_bytes(stream: bytes) -> set[int]:
    out: set[int] = set()
    for fill in (b"\x05", b"\x06"):
        at = stream.index(fill * PAGE_SIZE)
        out |= set(range(at, at + PAGE_SIZE))
    return out


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=0, max_value=len(SAMPLE) * 8 - 1))
def test_every_bit_flip_outside_page_contents_is_detected(bit: int) -> None:
    if bit // 8 in _page_bytes(SAMPLE):
        return  # the loader's RAM digest catches those (rule 3 of engine/stream.py)
    data = bytearray(SAMPLE)
    data[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(StreamError):
        events = _decode([bytes(data)])
        assert not any(isinstance(e, EndOfStream) for e in events)
        raise AssertionError("corruption not detected")  # pragma: no cover


def _records(*names: str) -> bytes:
    enc = StreamEncoder()
    out = enc.header(ram_size=PAGES * PAGE_SIZE, fill="zero", seed=0, profile="7.2")
    for name in names:
        if name == "discard":
            out += enc.postcopy_discard(bitmap_of([], PAGES))
        else:
            out += getattr(enc, f"postcopy_{name}")()
    return out


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (("discard",), "before POSTCOPY_ADVISE"),
        (("advise", "listen"), "before POSTCOPY_DISCARD"),
        (("advise", "discard", "run"), "before POSTCOPY_LISTEN"),
        (("advise", "advise"), "a second POSTCOPY_ADVISE"),
        (("resume",), "out of place"),
    ],
)
def test_postcopy_records_out_of_order(names: tuple[str, ...], message: str) -> None:
    dec = StreamDecoder()
    dec.receive_data(_records(*names))
    with pytest.raises(StreamError, match=message):
        while dec.next_event() is not NEED_DATA:
            pass


def test_complete_between_listen_and_run_is_refused() -> None:
    enc = StreamEncoder()
    out = enc.header(ram_size=PAGES * PAGE_SIZE, fill="zero", seed=0, profile="7.2")
    out += enc.postcopy_advise() + enc.postcopy_discard(bitmap_of([], PAGES))
    out += enc.postcopy_listen() + enc.complete("ab" * 32, [])
    with pytest.raises(StreamError, match="between POSTCOPY_LISTEN and POSTCOPY_RUN"):
        _decode([out])


def test_discard_bits_beyond_the_last_page_are_refused() -> None:
    enc = StreamEncoder()
    out = enc.header(ram_size=PAGES * PAGE_SIZE, fill="zero", seed=0, profile="7.2")
    out += enc.postcopy_advise() + enc.postcopy_discard(b"\x00" * 8 + b"\x80")
    with pytest.raises(StreamError, match="beyond the last page"):
        _decode([out])


def test_return_path_postcopy_messages() -> None:
    rp = ReturnPathEncoder()
    bitmap = bytes(range(256)) * 3
    wire = rp.open() + rp.req_pages(7, 3) + rp.recv_bitmap(bitmap) + rp.shut(0)
    dec = ReturnPathDecoder()
    dec.receive_data(wire)
    dec.receive_data(b"")
    events = list(iter(dec.next_event, NEED_DATA))
    assert events[0] == RpOpen(1)
    assert events[1] == RpReqPages(7, 3)
    pieces = [e for e in events if isinstance(e, RpRecvBitmap)]
    assert len(pieces) == -(-len(bitmap) // RP_BITMAP_CHUNK)
    assert b"".join(p.data for p in pieces) == bitmap
    assert RpBitmapEnd(len(bitmap)) in events
    assert events[-2:] == [RpShut(0), RpClosed(clean=True)]


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (ReturnPathEncoder.req_pages(1, 0), "for no page"),
        (b"\x06\x05\x04\x00\x00\x00\x00", "at offset 4"),
        (b"\x07\x04\x09\x00\x00\x00", "says 9 bytes"),
        (b"\x06\x04\x00\x00\x00\x00", "RECV_BITMAP with bad length"),
    ],
)
def test_return_path_postcopy_errors(wire: bytes, message: str) -> None:
    dec = ReturnPathDecoder()
    dec.receive_data(ReturnPathEncoder.open() + wire)
    with pytest.raises(StreamError, match=message):
        while dec.next_event() is not NEED_DATA:
            pass


@given(st.binary(max_size=300))
def test_return_path_garbage_raises_only_stream_error(data: bytes) -> None:
    dec = ReturnPathDecoder()
    dec.receive_data(ReturnPathEncoder.open() + data)
    dec.receive_data(b"")
    try:
        for _ in range(1000):
            if dec.next_event() is NEED_DATA:
                break
    except StreamError:
        pass


def test_ram_after_the_switch_is_ordinary() -> None:
    events = _decode([SAMPLE])
    run_at = next(i for i, e in enumerate(events) if isinstance(e, PostcopyRun))
    after = [e for e in events[run_at:] if isinstance(e, RamRun)]
    assert after and after[0].start == 9
