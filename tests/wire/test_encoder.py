"""QEMU's output format: QDict hash order, separators, escapes, numbers (reference §1.1–1.2)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from qmp_server.wire.encoder import encode, encode_line
from qmp_server.wire.parser import JSONStreamer


def test_orders_seen_live_on_qemu_7_2() -> None:
    greeting = {
        "QMP": {
            "version": {"qemu": {"major": 7, "minor": 2, "micro": 22}, "package": "p"},
            "capabilities": ["oob"],
        }
    }
    assert encode(greeting) == (
        '{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, '
        '"package": "p"}, "capabilities": ["oob"]}}'
    )
    assert encode({"return": {}, "id": "abc"}) == '{"return": {}, "id": "abc"}'
    assert encode({"error": {"class": "C", "desc": "d"}, "id": 1}) == (
        '{"id": 1, "error": {"class": "C", "desc": "d"}}'
    )
    assert encode({"capability": "xbzrle", "state": False}) == (
        '{"state": false, "capability": "xbzrle"}'
    )
    status = {"running": False, "singlestep": False, "status": "prelaunch"}
    assert encode(status) == '{"status": "prelaunch", "singlestep": false, "running": false}'


def test_escapes_and_numbers() -> None:
    assert encode(["\u00e9\u0001/\t\u2603\U0001f600\x7f"]) == (
        '["\\u00E9\\u0001/\\t\\u2603\\uD83D\\uDE00\\u007F"]'
    )
    assert encode([0.1, 1000.0, -0.0, 12345678901234567890]) == (
        "[0.10000000000000001, 1000, -0, 12345678901234567890]"
    )


def test_line_ending() -> None:
    assert encode_line({}) == b"{}\r\n"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_round_trip_through_the_parser(value: object) -> None:
    line = encode_line(value)
    assert line.isascii() and line.endswith(b"\r\n") and b"\n" not in line[:-1]
    assert JSONStreamer().feed(line) == [value]
