"""The JSON streamer against QEMU's behaviour (facts from reference §1.6, checked live)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qmp_server.wire.parser import JSONStreamer, ParseError


def feed(data: bytes) -> list[object]:
    return JSONStreamer().feed(data)


def errors(data: bytes) -> list[str]:
    return [m.desc if isinstance(m, ParseError) else repr(m) for m in feed(data)]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"@", ["JSON parse error, stray '@'"]),
        (b"01 ", ["JSON parse error, stray '01'"]),
        (b"1.}", ["JSON parse error, stray '1.}'"]),
        (b"-}", ["JSON parse error, stray '-}'"]),
        (b"%", ["JSON parse error, stray '%'"]),
        (b"\x00", ["JSON parse error, stray ''"]),
        (b"}", ["JSON parse error, expecting value"]),
        (b'{"execute":"query-status",}', ["JSON parse error, expecting value"]),
        (b"{foo}", ["JSON parse error, invalid keyword 'foo'"]),
        (b'{"a":tru}', ["JSON parse error, invalid keyword 'tru'"]),
        (b'"\\x"', ["JSON parse error, invalid escape sequence in string"]),
        (b'{"id":1,"id":2}', ["JSON parse error, duplicate key"]),
        (b'{"a":1]', ["JSON parse error, expected separator in dict"]),
        (b"[1 2]", ["JSON parse error, expected separator in list"]),
        (b'{"a" 1}', ["JSON parse error, missing : in object pair"]),
        (b"{1:2}", ["JSON parse error, key is not a string in object"]),
        (b'"\\ud800"', ["JSON parse error, \\ud800 is not a valid Unicode character"]),
        (b'"\\uFFFF"', ["JSON parse error, \\uFFFF is not a valid Unicode character"]),
        (b'"\xff"', ["JSON parse error, stray '\"\ufffd'"]),
        (b'"\xc3("', ["JSON parse error, invalid UTF-8 sequence in string"]),
    ],
)
def test_error_texts(data: bytes, expected: list[str]) -> None:
    assert errors(data) == expected


def test_values_follow_qobject_numbers() -> None:
    assert feed(b"[0.1, 1e3, -0, 12345678901234567890, 123456789012345678901, 1e400]") == [
        [0.1, 1000.0, 0, 12345678901234567890, 1.2345678901234568e20, float("inf")]
    ]


def test_extensions_single_quotes_and_several_objects_per_line() -> None:
    assert feed(b"{'execute':'a\\'b'}{\"execute\":\"c\"}\n") == [
        {"execute": "a'b"},
        {"execute": "c"},
    ]


def test_reset_by_0xff_drops_the_partial_object() -> None:
    out = feed(b'{"execute":"x", \xff{"execute":"y"}')
    assert out == [ParseError("JSON parse error, stray '\ufffd'"), {"execute": "y"}]


def test_bom_is_a_stray_byte_then_the_command_runs() -> None:
    assert feed(b'\xef\xbb\xbf{"execute":"x"}') == [
        ParseError("JSON parse error, stray '\ufffd'"),
        {"execute": "x"},
    ]


def test_nesting_limit() -> None:
    ok = feed(b"[" * 1024 + b"]" * 1024)
    assert len(ok) == 1 and isinstance(ok[0], list)
    bad = feed(b"[" * 1025 + b"]" * 1025)
    assert bad[0] == ParseError("JSON nesting depth limit exceeded")
    assert all(m == ParseError("JSON parse error, expecting value") for m in bad[1:])


def test_surrogate_pair_and_nul_escape() -> None:
    assert feed(b'["\\ud83d\\ude00", "\\u0000"]') == [["\U0001f600", "\x00"]]


def test_incomplete_input_waits() -> None:
    s = JSONStreamer()
    assert s.feed(b'{"execute": "qu') == []
    assert s.feed(b'ery-status"') == []
    assert s.feed(b"}") == [{"execute": "query-status"}]
    assert s.feed(b"1") == []  # a number ends only at the next byte
    assert s.feed(b" ") == [1]


SAMPLES = [
    b'{"execute":"qmp_capabilities"}\r\n{"execute":"query-status","id":"a\\u00e9"}',
    b"{'execute': 'x', 'arguments': {'a': [1, 2.5, null, true]}}@{\"x\":1}",
    b'[[[{"a":"\\ud83d\\ude00"}]]]\x01{"b":-0.5e-3}}}\xff{"c":tru}',
]


@settings(max_examples=200, deadline=None)
@given(
    data=st.one_of(st.sampled_from(SAMPLES), st.binary(max_size=200)),
    cuts=st.lists(st.integers(min_value=0, max_value=250), max_size=12),
)
def test_any_chunking_gives_the_same_messages(data: bytes, cuts: list[int]) -> None:
    whole = JSONStreamer().feed(data)
    streamer = JSONStreamer()
    pieces: list[object] = []
    last = 0
    for cut in sorted({min(c, len(data)) for c in cuts}):
        pieces += streamer.feed(data[last:cut])
        last = cut
    pieces += streamer.feed(data[last:])
    assert pieces == whole or repr(pieces) == repr(whole)  # NaN-free; repr handles inf


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise(data: bytes) -> None:
    for message in JSONStreamer().feed(data):
        assert isinstance(message, ParseError | dict | list | str | int | float | bool) or (
            message is None
        )
