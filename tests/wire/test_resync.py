"""The 0xFF parser reset (QMP spec §2.6) works after *any* prefix.

The live differential test (``tests/conformance/test_live_differential.py``) relies on it: it
sends hostile bytes, then ``\\xff`` and a sync request, and reads replies up to the sync reply.
0xFF is never valid UTF-8, so the lexer rejects it in every state (between tokens, inside a
string, after a number or keyword that waits for its lookahead, in error recovery); the error
makes the streamer drop whatever it queued, and the next ``{`` starts from scratch.
"""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from qmp_server.wire.parser import JSONStreamer, ParseError

SYNC = b'{"execute":"query-status","id":"sync"}'
SYNC_VALUE = {"execute": "query-status", "id": "sync"}

_FRAGMENTS = st.sampled_from(
    [
        b"{",
        b"}",
        b"[",
        b"]",
        b":",
        b",",
        b'"',
        b"'",
        b"\\",
        b"\\u",
        b"\\uD8",
        b"1",
        b"-",
        b"1e",
        b"0.",
        b"tru",
        b"null",
        b'"a',
        b"'a",
        b"\xc3",
        b"\xed\xa0",
        b"\x00",
        b"\x1b",
        b"\xfe",
        b"\xff",
        b" ",
        b"\n",
        b'{"execute":',
        b'{"a":[1,',
        b"[" * 1100,
    ]
)


@settings(max_examples=300, deadline=None)
@given(prefix=st.one_of(st.binary(max_size=64), st.lists(_FRAGMENTS, max_size=12).map(b"".join)))
@example(prefix=b"1")  # a number waits for its lookahead: 0xFF ends it, then errors itself
@example(prefix=b'"abc')  # inside a string
@example(prefix=b"@")  # in error recovery
@example(prefix=b"[" * 1025)  # past the nesting limit
def test_ff_then_request_always_parses_alone(prefix: bytes) -> None:
    out = JSONStreamer().feed(prefix + b"\xff" + SYNC)
    assert out[-1] == SYNC_VALUE
    assert isinstance(out[-2], ParseError)  # the 0xFF itself is always reported


def test_number_then_ff_reports_both() -> None:
    # Checked live on QEMU 7.2: "1" then 0xFF gives the value 1 (-> "QMP input must be a JSON
    # object" from the dispatcher) and then "stray '\uFFFD'".
    out = JSONStreamer().feed(b"1\xff")
    assert out == [1, ParseError("JSON parse error, stray '\ufffd'")]
