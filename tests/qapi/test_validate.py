"""Argument validation: QEMU 7.2's input-visitor messages, first error first."""

from __future__ import annotations

from typing import Any

import pytest

from qmp_server.errors import CommandError
from qmp_server.qapi import ArgumentValidator, Schema, load_schema_text


def _check(schema: Schema, cmd: str, args: dict[str, Any]) -> dict[str, Any]:
    c = schema.command(cmd)
    assert c is not None
    return ArgumentValidator(schema).validate(c, args)


def _error(schema: Schema, cmd: str, args: dict[str, Any]) -> str:
    with pytest.raises(CommandError) as info:
        _check(schema, cmd, args)
    assert info.value.error_class == "GenericError"
    return info.value.desc


CAPS = "migrate-set-capabilities"
PARAMS = "migrate-set-parameters"


@pytest.mark.parametrize(("cmd", "args", "desc"), [
    (CAPS, {}, "Parameter 'capabilities' is missing"),
    (CAPS, {"x": 1}, "Parameter 'capabilities' is missing"),
    (CAPS, {"capabilities": [{"capability": "xbzrle"}]},
     "Parameter 'capabilities[0].state' is missing"),
    (CAPS, {"capabilities": [{"capability": "xbzrle", "state": True}, {"capability": "events"}]},
     "Parameter 'capabilities[1].state' is missing"),
    (CAPS, {"capabilities": [{"x": 1}]}, "Parameter 'capabilities[0].capability' is missing"),
    (CAPS, {"capabilities": [], "x": 1}, "Parameter 'x' is unexpected"),
    (CAPS, {"capabilities": [{"capability": "xbzrle", "state": True, "x": 1}]},
     "Parameter 'capabilities[0].x' is unexpected"),
    (CAPS, {"capabilities": "x"}, "Invalid parameter type for 'capabilities', expected: array"),
    (CAPS, {"capabilities": [1]},
     "Invalid parameter type for 'capabilities[0]', expected: object"),
    (CAPS, {"capabilities": [{"capability": "xbzrle", "state": 1}]},
     "Invalid parameter type for 'capabilities[0].state', expected: boolean"),
    (CAPS, {"capabilities": [{"capability": 5, "state": True}]},
     "Invalid parameter type for 'capabilities[0].capability', expected: string"),
    (CAPS, {"capabilities": [{"capability": "bogus", "state": True}]},
     "Parameter 'capability' does not accept value 'bogus'"),
    (CAPS, {"capabilities": [{"capability": "switchover-ack", "state": True}]},
     "Parameter 'capability' does not accept value 'switchover-ack'"),
    ("qmp_capabilities", {"enable": ["foo"]}, "Parameter 'null' does not accept value 'foo'"),
    ("qmp_capabilities", {"enable": "oob"},
     "Invalid parameter type for 'enable', expected: array"),
    ("qmp_capabilities", {"enable": None},
     "Invalid parameter type for 'enable', expected: array"),
    ("qmp_capabilities", {"foo": 1}, "Parameter 'foo' is unexpected"),
    (PARAMS, {"multifd-channels": 256}, "Parameter 'multifd-channels' expects uint8_t"),
    (PARAMS, {"multifd-channels": -1}, "Parameter 'multifd-channels' expects uint8_t"),
    (PARAMS, {"multifd-channels": 1.0}, "Parameter 'multifd-channels' expects uint64"),
    (PARAMS, {"x-checkpoint-delay": 2**32}, "Parameter 'x-checkpoint-delay' expects uint32_t"),
    (PARAMS, {"downtime-limit": 1.5}, "Parameter 'downtime-limit' expects uint64"),
    (PARAMS, {"downtime-limit": 1.0}, "Parameter 'downtime-limit' expects uint64"),
    (PARAMS, {"max-bandwidth": "1"}, "Parameter 'max-bandwidth' expects uint64"),
    (PARAMS, {"max-bandwidth": True}, "Parameter 'max-bandwidth' expects uint64"),
    (PARAMS, {"max-bandwidth": 2**64}, "Parameter 'max-bandwidth' expects uint64"),
    (PARAMS, {"tls-creds": 1}, "Invalid parameter type for 'tls-creds', expected: StrOrNull"),
    (PARAMS, {"tls-creds": ["a"]},
     "Invalid parameter type for 'tls-creds', expected: StrOrNull"),
    (PARAMS, {"multifd-compression": 1},
     "Invalid parameter type for 'multifd-compression', expected: string"),
    (PARAMS, {"multifd-compression": "lz4"},
     "Parameter 'multifd-compression' does not accept value 'lz4'"),
    (PARAMS, {"cpu-throttle-tailslow": None},
     "Invalid parameter type for 'cpu-throttle-tailslow', expected: boolean"),
    (PARAMS, {"block-bitmap-mapping": {}},
     "Invalid parameter type for 'block-bitmap-mapping', expected: array"),
    (PARAMS, {"block-bitmap-mapping": [5]},
     "Invalid parameter type for 'block-bitmap-mapping[0]', expected: object"),
    (PARAMS, {"block-bitmap-mapping": [{"node-name": "a", "alias": "b", "bitmaps": [
        {"name": "x", "alias": "y", "transform": {"persistent": 1}}]}]},
     "Invalid parameter type for 'block-bitmap-mapping[0].bitmaps[0].transform.persistent', "
     "expected: boolean"),
    # Unexpected members are reported when their object is done, before the next element.
    (PARAMS, {"block-bitmap-mapping": [{"node-name": "a", "alias": "b", "bitmaps": [], "z": 1},
                                       {"node-name": 1}]},
     "Parameter 'block-bitmap-mapping[0].z' is unexpected"),
    # Members are visited in schema order, whatever the input order.
    (PARAMS, {"max-bandwidth": "x", "announce-initial": "y"},
     "Parameter 'announce-initial' expects uint64"),
    (PARAMS, {"zzz": 1, "announce-initial": "y"}, "Parameter 'announce-initial' expects uint64"),
    ("migrate", {"uri": 1}, "Invalid parameter type for 'uri', expected: string"),
    ("migrate", {"blk": 1}, "Parameter 'uri' is missing"),
    ("migrate", {"uri": "x", "blk": 1}, "Invalid parameter type for 'blk', expected: boolean"),
    ("migrate-continue", {"state": "bogus"}, "Parameter 'state' does not accept value 'bogus'"),
    ("migrate-continue", {"state": 1}, "Invalid parameter type for 'state', expected: string"),
    ("query-migrate", {"x": 1}, "Parameter 'x' is unexpected"),
    # Several unexpected members: QEMU names the first in its hash table (checked live).
    ("query-migrate", {"aaa": 1, "zzz": 2}, "Parameter 'zzz' is unexpected"),
    ("query-migrate", {"c": 1, "a": 2, "b": 3}, "Parameter 'b' is unexpected"),
    ("query-migrate", {f"x{i}": i for i in range(1, 10)}, "Parameter 'x6' is unexpected"),
])
def test_messages_72(schema72: Schema, cmd: str, args: dict[str, Any], desc: str) -> None:
    assert _error(schema72, cmd, args) == desc


def test_profile_differences(schemas: dict[str, Schema]) -> None:
    s10 = schemas["10.0"]
    assert _error(s10, PARAMS, {"compress-level": 1}) == "Parameter 'compress-level' is unexpected"
    assert _error(s10, "migrate", {"uri": "x", "blk": True}) == "Parameter 'blk' is unexpected"
    assert _check(s10, "migrate", {}) == {}
    assert _error(s10, "migrate", {"channels": [{"channel-type": "main", "addr": {
        "transport": "socket", "type": "inet", "port": "1"}}]}) == (
        "Parameter 'channels[0].addr.host' is missing")
    assert _error(s10, "migrate", {"channels": [{"channel-type": "bogus"}]}) == (
        "Parameter 'channel-type' does not accept value 'bogus'")
    ok = {"channels": [{"channel-type": "main", "addr": {
        "transport": "socket", "type": "unix", "path": "/tmp/x"}}]}
    assert _check(s10, "migrate", ok) == ok
    assert _check(schemas["8.1"], CAPS, {"capabilities": [
        {"capability": "switchover-ack", "state": True}]})


def test_normalisation(schema72: Schema) -> None:
    args = {"max-postcopy-bandwidth": -5, "tls-creds": None, "downtime-limit": 2**64 - 1,
            "announce-initial": 0}
    out = _check(schema72, PARAMS, args)
    assert out == {"max-postcopy-bandwidth": 2**64 - 5, "tls-creds": None,
                   "downtime-limit": 2**64 - 1, "announce-initial": 0}
    assert list(out) == list(args)
    assert out is not args
    assert args["max-postcopy-bandwidth"] == -5  # the input is not touched
    assert _check(schema72, PARAMS, {"tls-creds": "c"}) == {"tls-creds": "c"}
    assert _check(schema72, PARAMS, {"multifd-channels": 255}) == {"multifd-channels": 255}


def test_signed_and_misc_types() -> None:
    s = load_schema_text("""
    { 'alternate': 'Alt', 'data': { 'i': 'int', 'o': 'Obj' } }
    { 'struct': 'Obj', 'data': { 'a': 'int' } }
    { 'command': 'c', 'data': { '*i8': 'int8', '*i': 'int', '*n': 'number', '*z': 'null',
                                '*any': 'any', '*u16': ['uint16'], '*alt': ['Alt'] } }
    """)
    assert _error(s, "c", {"i8": 128}) == "Parameter 'i8' expects int8_t"
    assert _error(s, "c", {"i8": 1.5}) == "Invalid parameter type for 'i8', expected: integer"
    assert _error(s, "c", {"i": 2**63}) == "Invalid parameter type for 'i', expected: integer"
    assert _error(s, "c", {"i": True}) == "Invalid parameter type for 'i', expected: integer"
    assert _error(s, "c", {"n": "1"}) == "Invalid parameter type for 'n', expected: number"
    assert _error(s, "c", {"n": False}) == "Invalid parameter type for 'n', expected: number"
    assert _error(s, "c", {"z": 0}) == "Invalid parameter type for 'z', expected: null"
    assert _error(s, "c", {"u16": [1, 65536]}) == "Parameter 'null' expects uint16_t"
    assert _error(s, "c", {"alt": ["s"]}) == "Invalid parameter type for 'null', expected: Alt"
    assert _error(s, "c", {"alt": [{"a": "x"}]}) == (
        "Invalid parameter type for 'alt[0].a', expected: integer")
    ok = {"i8": -128, "i": -(2**63), "n": 1, "z": None, "any": {"x": [1.5]}, "u16": [65535],
          "alt": [1, {"a": 2}]}
    assert _check(s, "c", ok) == ok


def test_union_arguments() -> None:
    s = load_schema_text("""
    { 'enum': 'K', 'data': [ 'a', 'b', 'c' ] }
    { 'struct': 'A', 'data': { 'x': 'int' } }
    { 'union': 'U', 'base': { 'k': 'K', '*common': 'str' }, 'discriminator': 'k',
      'data': { 'a': 'A', 'b': 'A' } }
    { 'command': 'u', 'data': 'U', 'boxed': true }
    """)
    assert _error(s, "u", {}) == "Parameter 'k' is missing"
    assert _error(s, "u", {"k": "d"}) == "Parameter 'k' does not accept value 'd'"
    assert _error(s, "u", {"k": "a"}) == "Parameter 'x' is missing"
    assert _error(s, "u", {"k": "c", "x": 1}) == "Parameter 'x' is unexpected"
    assert _error(s, "u", {"k": "a", "x": 1, "y": 2}) == "Parameter 'y' is unexpected"
    assert _check(s, "u", {"x": 1, "k": "b", "common": ""}) == {"x": 1, "k": "b", "common": ""}
    assert _check(s, "u", {"k": "c"}) == {"k": "c"}
