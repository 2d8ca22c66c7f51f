"""The C fast path of the QMP JSON writer gives the Python encoder's bytes, for any value."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qmp_server.wire import encoder

_qjson = pytest.importorskip("qmp_server.wire._qjson")

keys = st.one_of(st.text(max_size=12), st.sampled_from(["return", "id", "capability", "state"]))
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(),
)  # fmt: skip
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(keys, inner, max_size=8),
    ),
    max_leaves=40,
)


def _python(value: object) -> bytes:
    return encoder.encode_line_python(value)


@settings(max_examples=800)
@given(values)
def test_same_bytes_as_the_python_encoder(value: object) -> None:
    try:
        fast = _qjson.encode_line(value)
    except _qjson.Fallback:
        return  # what the C path leaves to Python (non-ASCII or NUL keys, other types)
    assert fast == _python(value)


def test_what_it_leaves_to_python_still_encodes() -> None:
    class Number(int):
        pass

    for value in ({"clé": 1}, {"a\0b": 1}, {"x": Number(3)}, {"ok": 1}):
        assert encoder.encode_line(value) == _python(value)
    assert encoder.encode_line({"x": Number(3)}) == b'{"x": 3}\r\n'


def test_the_special_cases() -> None:
    for value in (math.inf, -math.inf, -0.0, 1e300, 2**80, "\U0001f600\x7f\"\\\b", []):
        assert _qjson.encode_line(value) == _python(value)


@settings(max_examples=300)
@given(values, values)
def test_an_encoded_value_is_written_as_its_value(inner: object, outer: object) -> None:
    """``Encoded`` (an answer whose text is made once) gives the bytes of the plain value,
    wherever it sits, on both paths."""
    message = {"return": encoder.Encoded(inner), "id": outer}
    plain = _python({"return": inner, "id": outer})
    assert encoder.encode_line(message) == plain
    assert _python(message) == plain
