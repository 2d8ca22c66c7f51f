"""The multifd records (MULTIFD_SETUP, CHANNEL, CHANNEL_SYNC, COMPRESSED) and the rule that
the later round's copy of a page wins, whatever order the channels deliver them in."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qmp_server.engine.guest import PAGE_SIZE, GuestMemory
from qmp_server.engine.multifd import PageGenerations, apply_generation_event
from qmp_server.engine.stream import (
    NEED_DATA,
    ChannelHello,
    ChannelSync,
    CompressedPages,
    EndOfStream,
    MultifdSetup,
    RamRun,
    StreamDecoder,
    StreamEncoder,
    StreamError,
    StreamEvent,
    Tag,
)

PAGES = 64
SESSION = b"\x01\x02\x03\x04\x05\x06\x07\x08"


def _packet(data: bytes) -> bytes:
    return zlib.compress(data, 1)


def _inflate(kind: str, data: bytes, count: int) -> bytes:
    out = zlib.decompress(data)
    if len(out) != count * PAGE_SIZE:
        raise ValueError("wrong size")
    return out


def _channel_stream() -> bytes:
    enc = StreamEncoder()
    out = enc.channel_hello(1, 2, SESSION, PAGES * PAGE_SIZE) + enc.channel_sync(1)
    out += enc.ram_run(0, b"\x05" * PAGE_SIZE) + enc.zero_run(1, 3)
    idx = np.array([7, 9], dtype=np.int64)
    out += b"".join(enc.compressed_parts("zlib", idx, _packet(b"\x07" * (2 * PAGE_SIZE))))
    out += enc.channel_sync(2) + enc.ram_list([4, 5], b"\x06" * (2 * PAGE_SIZE))
    return out + enc.channel_end()


SAMPLE = _channel_stream()


def _decode(chunks: list[bytes], **kw: bool) -> list[StreamEvent]:
    dec = StreamDecoder(channel=True, **kw)
    out: list[StreamEvent] = []
    for chunk in [*chunks, b""]:
        dec.receive_data(chunk)
        while (event := dec.next_event()) is not NEED_DATA:
            out.append(event)  # type: ignore[arg-type]
    return out


def test_a_channel_stream_round_trips() -> None:
    events = _decode([SAMPLE])
    kinds = [type(e).__name__ for e in events]
    assert kinds[:3] == ["ChannelHello", "ChannelSync", "Checkpoint"]
    assert events[0] == ChannelHello(1, 2, SESSION, PAGES * PAGE_SIZE)
    assert ChannelSync(2) in events
    packet = next(e for e in events if isinstance(e, CompressedPages))
    assert packet.indexes == (7, 9) and packet.compression == "zlib"
    assert isinstance(events[-1], EndOfStream)


def test_the_main_stream_carries_the_setup_once() -> None:
    enc = StreamEncoder()
    wire = enc.header(ram_size=PAGES * PAGE_SIZE, fill="zero", seed=0, profile="7.2")
    wire += enc.multifd_setup(2, "zstd", SESSION) + enc.complete("00" * 32, [])
    dec = StreamDecoder()
    dec.receive_data(wire)
    dec.receive_data(b"")
    events = list(iter(dec.next_event, NEED_DATA))
    assert MultifdSetup(2, "zstd", SESSION) in events
    again = StreamEncoder()
    bad = again.header(ram_size=PAGES * PAGE_SIZE, fill="zero", seed=0, profile="7.2")
    bad += again.multifd_setup(2, "none", SESSION) + again.multifd_setup(2, "none", SESSION)
    dec = StreamDecoder()
    dec.receive_data(bad)
    with pytest.raises(StreamError, match="second MULTIFD_SETUP"):
        list(iter(dec.next_event, NEED_DATA))


@pytest.mark.parametrize("where", ["main", "channel"])
def test_records_out_of_their_stream_are_refused(where: str) -> None:
    enc = StreamEncoder()
    if where == "main":
        wire = enc.header(ram_size=PAGES * PAGE_SIZE, fill="zero", seed=0, profile="7.2")
        wire += enc.channel_sync(1)
        dec = StreamDecoder()
    else:
        wire = enc.channel_hello(0, 1, SESSION, PAGES * PAGE_SIZE) + enc.sync(1)
        dec = StreamDecoder(channel=True)
    dec.receive_data(wire)
    with pytest.raises(StreamError, match="record"):
        list(iter(dec.next_event, NEED_DATA))


def test_a_channel_must_end_with_its_checksum() -> None:
    enc = StreamEncoder()
    wire = enc.channel_hello(0, 1, SESSION, PAGES * PAGE_SIZE)
    wire += enc.zero_run(0, 1) + enc._record(Tag.EOF)
    with pytest.raises(StreamError, match="without its CHECKSUM"):
        _decode([wire])


@settings(max_examples=60)
@given(st.lists(st.integers(0, len(SAMPLE)), max_size=6))
def test_any_split_decodes_the_same(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    chunks = [SAMPLE[a:b] for a, b in zip([0, *points], [*points, len(SAMPLE)], strict=True)]
    assert _decode([c for c in chunks if c]) == _decode([SAMPLE])


def _page_bytes(stream: bytes) -> set[int]:
    out: set[int] = set()
    for fill in (b"\x05", b"\x06"):
        at = stream.index(fill * PAGE_SIZE)
        out |= set(range(at, at + PAGE_SIZE * (1 if fill == b"\x05" else 2)))
    return out


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=0, max_value=len(SAMPLE) * 8 - 1))
def test_every_bit_flip_outside_page_contents_is_detected(bit: int) -> None:
    """Compressed packets are hashed whole: a flip in them fails at the next checksum."""
    if bit // 8 in _page_bytes(SAMPLE):
        return  # the loader's RAM digest catches those (rule 3 of engine/stream.py)
    data = bytearray(SAMPLE)
    data[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(StreamError):
        events = _decode([bytes(data)])
        assert not any(isinstance(e, EndOfStream) for e in events)
        raise AssertionError("corruption not detected")  # pragma: no cover


def test_the_later_round_wins_in_either_order() -> None:
    old = RamRun(2, 1, b"\x01" * PAGE_SIZE)
    new = RamRun(2, 1, b"\x02" * PAGE_SIZE)
    for first, second in ((old, new), (new, old)):
        guest = GuestMemory(PAGES * PAGE_SIZE)
        rounds = PageGenerations(PAGES)
        gens = {id(old): 3, id(new): 4}
        for event in (first, second):
            apply_generation_event(guest, rounds, gens[id(event)], event, _inflate)
        assert guest.read_page(2) == b"\x02" * PAGE_SIZE


def test_a_run_loads_only_its_admitted_pages() -> None:
    guest = GuestMemory(PAGES * PAGE_SIZE)
    rounds = PageGenerations(PAGES)
    apply_generation_event(guest, rounds, 5, RamRun(3, 1, b"\x09" * PAGE_SIZE), _inflate)
    apply_generation_event(guest, rounds, 4, RamRun(2, 3, b"\x08" * (3 * PAGE_SIZE)), _inflate)
    assert guest.read_page(2) == b"\x08" * PAGE_SIZE
    assert guest.read_page(3) == b"\x09" * PAGE_SIZE
    assert guest.read_page(4) == b"\x08" * PAGE_SIZE


def test_a_bad_packet_is_a_value_error() -> None:
    guest = GuestMemory(PAGES * PAGE_SIZE)
    event = CompressedPages("zlib", (1, 2), b"not zlib")
    with pytest.raises((ValueError, zlib.error)):
        apply_generation_event(guest, PageGenerations(PAGES), 1, event, _inflate)
