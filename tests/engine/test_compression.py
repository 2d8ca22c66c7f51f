"""Multifd zlib/zstd channels and 7.2's legacy compression (engine/compression.py)."""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qmp_server.engine.compression import (
    LEGACY_MAX_LENGTH,
    PAGE_SIZE,
    LegacyCompressStats,
    LegacyPageCompressor,
    Method,
    MultifdCompressor,
    MultifdDecompressor,
)
from qmp_server.engine.guest import baseline_words

METHODS: list[Method] = ["zlib", "zstd"]


def text_pages(start: int, count: int) -> bytes:
    return baseline_words("text", 1, start, count).tobytes()


def channel(method: Method, counts: list[int]) -> tuple[list[bytes], list[bytes]]:
    """Pages and packets of one channel sending packets of ``counts`` pages."""
    comp = MultifdCompressor(method, 1)
    pages, packets, start = [], [], 0
    for n in counts:
        data = text_pages(start, n)
        start += n
        pages.append(data)
        packets.append(comp.compress(data, n))
    return pages, packets


@pytest.mark.parametrize("method", METHODS)
def test_a_channel_round_trips_and_keeps_its_stream(method: Method) -> None:
    counts = [128, 1, 0, 37, 128]
    pages, packets = channel(method, counts)
    assert packets[2] == b""  # no page, no compression call
    dec = MultifdDecompressor(method)
    for data, pkt, n in zip(pages, packets, counts, strict=True):
        assert dec.decompress(pkt, n) == data
    # the stream carries across packets: a later packet alone does not decode
    with pytest.raises(ValueError):
        MultifdDecompressor(method).decompress(packets[4], 128)


@pytest.mark.parametrize("method", METHODS)
def test_text_compresses_to_about_a_third(method: Method) -> None:
    pages, packets = channel(method, [128] * 4)
    ratio = sum(map(len, packets)) / sum(map(len, pages))
    assert 0.25 < ratio < 0.45


@pytest.mark.parametrize("method", METHODS)
def test_bad_arguments(method: Method) -> None:
    with pytest.raises(ValueError):
        MultifdCompressor(method, 1).compress(b"x" * 100, 1)
    with pytest.raises(ValueError):
        MultifdCompressor(method, 99)
    with pytest.raises(ValueError):
        MultifdDecompressor(method).decompress(b"x", 0)


@pytest.mark.parametrize("method", METHODS)
def test_short_and_trailing_packets_are_errors(method: Method) -> None:
    _pages, packets = channel(method, [8, 8])
    for cut in (1, 3, len(packets[0]) // 2):
        with pytest.raises(ValueError):
            MultifdDecompressor(method).decompress(packets[0][:-cut], 8)
    with pytest.raises(ValueError):  # fewer pages than the packet holds
        MultifdDecompressor(method).decompress(packets[0], 7)
    with pytest.raises(ValueError):  # more
        MultifdDecompressor(method).decompress(packets[0], 9)
    with pytest.raises(ValueError):  # two packets glued
        MultifdDecompressor(method).decompress(packets[0] + packets[1], 8)
    dec = MultifdDecompressor(method)
    with pytest.raises(ValueError):
        dec.decompress(packets[0] + b"\x00", 8)
    with pytest.raises(ValueError):  # a failed stream stays failed
        dec.decompress(packets[0], 8)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(METHODS), st.binary(max_size=3000), st.integers(1, 4), st.booleans())
def test_garbage_only_raises_value_error(
    method: Method, garbage: bytes, count: int, after_a_packet: bool
) -> None:
    dec = MultifdDecompressor(method)
    if after_a_packet:
        pages, packets = channel(method, [2])
        assert dec.decompress(packets[0], 2) == pages[0]
    try:
        out = dec.decompress(garbage, count)
    except ValueError:
        return
    assert len(out) == count * PAGE_SIZE


_PACKETS = {m: channel(m, [16, 16]) for m in METHODS}


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(METHODS), st.integers(0, 1), st.data())
def test_bit_flips_only_raise_value_error(method: Method, which: int, data: st.DataObject) -> None:
    pages, packets = _PACKETS[method]
    bad = bytearray(packets[which])
    for _ in range(data.draw(st.integers(1, 3))):
        bit = data.draw(st.integers(0, len(bad) * 8 - 1))
        bad[bit // 8] ^= 1 << (bit % 8)
    dec = MultifdDecompressor(method)
    try:
        if which == 1:
            assert dec.decompress(packets[0], 16) == pages[0]
        out = dec.decompress(bytes(bad), 16)
    except ValueError:
        return
    assert len(out) == 16 * PAGE_SIZE  # no checksum in multifd: QEMU takes such data too


@pytest.mark.parametrize("method", METHODS)
def test_channels_compress_in_parallel_threads(method: Method) -> None:
    """Each worker owns its channel's streams; results do not depend on the threads."""
    want = channel(method, [32, 32])[1]
    results: dict[int, list[bytes]] = {}

    def worker(k: int) -> None:
        results[k] = channel(method, [32, 32])[1]

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[k] == want for k in range(3))


# ---- QEMU's own libraries ----------------------------------------------------------------


def _parity_tool() -> ModuleType:
    path = Path(__file__).parents[2] / "tools" / "check_compression_parity.py"
    spec = importlib.util.spec_from_file_location("check_compression_parity", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("which", ["qemu-7.2 (host)", "qemu-10.0 (trixie)"])
def test_packets_equal_qemus_library_calls(which: str, capsys: pytest.CaptureFixture[str]) -> None:
    tool = _parity_tool()
    zpath, zstdpath = tool.LIBS[which]
    if not (os.path.exists(zpath) and os.path.exists(zstdpath)):
        pytest.skip(f"{which}: libraries not here")
    assert tool.check(which, zpath, zstdpath, "text", 256, 1)
    assert "identical" in capsys.readouterr().out


# ---- 7.2's legacy compress ---------------------------------------------------------------


def test_legacy_pages_round_trip() -> None:
    comp = LegacyPageCompressor(1)
    for page in (text_pages(5, 1), bytes(PAGE_SIZE), os.urandom(PAGE_SIZE)):
        data = comp.compress_page(page)
        assert 0 < len(data) <= LEGACY_MAX_LENGTH == 4110
        assert data[:1] == b"\x78"  # a zlib stream of its own
        assert LegacyPageCompressor.decompress_page(data) == page
    assert len(comp.compress_page(text_pages(5, 1))) < PAGE_SIZE // 2


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=5000))
def test_legacy_garbage_only_raises_value_error(garbage: bytes) -> None:
    try:
        out = LegacyPageCompressor.decompress_page(garbage)
    except ValueError:
        return
    assert len(out) == PAGE_SIZE


def test_legacy_rejects_more_or_less_than_a_page() -> None:
    import zlib

    with pytest.raises(ValueError):
        LegacyPageCompressor.decompress_page(zlib.compress(bytes(PAGE_SIZE - 1)))
    with pytest.raises(ValueError):
        LegacyPageCompressor.decompress_page(zlib.compress(bytes(PAGE_SIZE + 1)))
    with pytest.raises(ValueError):
        LegacyPageCompressor.decompress_page(zlib.compress(bytes(PAGE_SIZE)) + b"x")
    with pytest.raises(ValueError, match="Invalid compressed data length: 4111"):
        LegacyPageCompressor.decompress_page(b"\0" * 4111)


def test_legacy_stats_count_like_7_2() -> None:
    stats = LegacyCompressStats()
    # first page given to each of 2 idle threads: their empty buffers are drained too
    stats.drained(0, zero_page=False)
    stats.drained(0, zero_page=False)
    assert (stats.pages, stats.compressed_size) == (2, -16)
    # two compressed pages of 1000 zlib bytes: 8 header + 4 length + 1000
    stats.drained(8 + 4 + 1000, zero_page=False)
    stats.drained(8 + 4 + 1000, zero_page=False)
    stats.drained(9, zero_page=True)  # a zero page: not a compression statistic
    stats.busy_page()
    assert (stats.pages, stats.busy, stats.compressed_size) == (4, 1, 1992)
    stats.update_rates(0)  # no page processed: no update at all
    assert stats.busy_rate == 0.0
    stats.update_rates(10)
    assert stats.busy_rate == 0.1
    assert stats.compression_rate == 4 * 4096 / 1992
    stats.update_rates(5)  # nothing compressed since: the rate stays
    assert stats.busy_rate == 0.0 and stats.compression_rate == 4 * 4096 / 1992
    assert list(stats.as_qapi()) == [
        "pages", "busy", "busy-rate", "compressed-size", "compression-rate"
    ]  # fmt: skip
