"""Property tests: bad schema text only ever raises SchemaError; the JSON Schema and the
replayed QEMU visit agree on what is valid."""

from __future__ import annotations

import contextlib
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qmp_server.errors import CommandError, SchemaError
from qmp_server.qapi import Schema, load_schema_text
from qmp_server.qapi.validate import QAPIValidator, visit_arguments

_TOKENS = ["{", "}", "[", "]", ":", ",", "'", "#", "##\n", "\n", " ", "true", "false", "'enum'",
           "'struct'", "'union'", "'alternate'", "'command'", "'event'", "'data'", "'base'",
           "'discriminator'", "'if'", "'features'", "'name'", "'type'", "'returns'", "'boxed'",
           "'include'", "'pragma'", "'all'", "'any'", "'not'", "'E'", "'S'", "'c'", "'x'",
           "'*x'", "'str'", "'int'", "'uint8'", "['S']", "'\\'", "\"", "1", "@", "\x00", "é"]


def _only_schema_errors(text: str) -> None:
    with contextlib.suppress(SchemaError):
        load_schema_text(text, frozenset({"A"}))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_random_text(text: str) -> None:
    _only_schema_errors(text)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_TOKENS), max_size=60))
def test_random_tokens(tokens: list[str]) -> None:
    _only_schema_errors("".join(tokens))


_json_scalars = st.one_of(
    st.none(), st.booleans(), st.sampled_from([0, 1, -1, 255, 256, 2**63, 2**64 - 1, 2**64]),
    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(["", "a", "oob", "b"]),
)
_keys = st.sampled_from(["s", "i", "u8", "n", "l", "o", "e", "alt", "k", "x", "y", "zz"])
_json = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=4),
    max_leaves=12,
)

_SCHEMA = """
{ 'enum': 'E', 'data': [ 'a', 'b' ] }
{ 'struct': 'O', 'data': { 'e': 'E', '*i': 'int' } }
{ 'alternate': 'Alt', 'data': { 's': 'str', 'n': 'null', 'o': 'O' } }
{ 'union': 'U', 'base': { 'k': 'E' }, 'discriminator': 'k', 'data': { 'a': 'O' } }
{ 'command': 'c', 'data': { '*s': 'str', '*i': 'int', '*u8': 'uint8', '*n': 'number',
                            '*l': [ 'O' ], '*o': 'O', '*e': ['E'], '*alt': 'Alt',
                            '*un': 'U', '*sz': 'size' } }
"""


@settings(max_examples=800, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["s", "i", "u8", "n", "l", "o", "e", "alt", "un", "sz",
                                        "x"]), _json, max_size=4))
def test_jsonschema_agrees_with_visit(args: dict[str, Any]) -> None:
    schema: Schema = _agree_schema
    cmd = schema.command("c")
    assert cmd is not None and cmd.arg_type is not None
    valid = QAPIValidator(schema.json_schema("c")).is_valid(args)
    try:
        visit_arguments(cmd.arg_type, args)
        visited_ok = True
    except CommandError:
        visited_ok = False
    assert valid == visited_ok


_agree_schema = load_schema_text(_SCHEMA)
