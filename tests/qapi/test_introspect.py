"""query-qmp-schema: shape, numbering and ordering as QEMU 7.2 emits them."""

from __future__ import annotations

import json
from pathlib import Path

from qmp_server.qapi import Schema, load_schema_text
from qmp_server.qapi.introspect import introspect

from ._canon import canonical

LIVE_72 = Path(__file__).parent / "data" / "qemu-7.2-introspect.json"


def test_matches_live_qemu_72(schema72: Schema) -> None:
    """Every command and event we share with QEMU 7.2 introspects the same, key order too."""
    live = json.loads(LIVE_72.read_text())
    ours = schema72.introspect()
    shared = [e["name"] for e in ours if e["name"] in live]
    assert len(shared) >= 25
    for name in shared:
        assert json.dumps(canonical(ours, name)) == json.dumps(live[name]), name


def test_ordering_and_masking() -> None:
    s = load_schema_text("""
    { 'enum': 'E', 'data': [ 'a', { 'name': 'b', 'features': [ 'unstable' ] } ] }
    { 'struct': 'S', 'data': { 'e': 'E', '*n': 'uint8', 'l': [ 'size' ] } }
    { 'command': 'c1', 'data': { 's': 'S' }, 'returns': [ 'S' ], 'allow-oob': true }
    { 'event': 'EV' }
    { 'command': 'c2', 'features': [ 'deprecated' ] }
    """)
    got = s.introspect()
    assert got == [
        {"name": "c1", "ret-type": "[1]", "allow-oob": True, "meta-type": "command",
         "arg-type": "0"},
        {"name": "EV", "meta-type": "event", "arg-type": "2"},
        {"name": "c2", "ret-type": "2", "meta-type": "command", "arg-type": "2",
         "features": ["deprecated"]},
        {"name": "0", "members": [{"name": "s", "type": "1"}], "meta-type": "object"},
        {"name": "[1]", "element-type": "1", "meta-type": "array"},
        {"name": "1", "members": [{"name": "e", "type": "3"},
                                  {"name": "n", "default": None, "type": "int"},
                                  {"name": "l", "type": "[int]"}], "meta-type": "object"},
        {"name": "2", "members": [], "meta-type": "object"},
        {"name": "3", "members": [{"name": "a"}, {"name": "b", "features": ["unstable"]}],
         "meta-type": "enum", "values": ["a", "b"]},
        {"name": "int", "json-type": "int", "meta-type": "builtin"},
        {"name": "[int]", "element-type": "int", "meta-type": "array"},
    ]
    assert next(list(e) for e in got) == ["name", "ret-type", "allow-oob", "meta-type", "arg-type"]
    metas = {e["meta-type"] for e in got}
    assert metas == {"command", "event", "object", "array", "enum", "builtin"}


def test_union_and_alternate_shape() -> None:
    s = load_schema_text("""
    { 'enum': 'K', 'data': [ 'a', 'b' ] }
    { 'struct': 'A', 'data': { 'x': 'int' } }
    { 'union': 'U', 'base': { 'k': 'K' }, 'discriminator': 'k', 'data': { 'a': 'A' } }
    { 'alternate': 'Alt', 'data': { 's': 'str', 'n': 'null' } }
    { 'command': 'c', 'data': { 'u': 'U', 'alt': 'Alt' } }
    """)
    by = {e["name"]: e for e in introspect(s, unmask=True)}
    assert by["U"] == {"name": "U", "tag": "k",
                       "variants": [{"case": "a", "type": "A"}, {"case": "b", "type": "q_empty"}],
                       "members": [{"name": "k", "type": "K"}], "meta-type": "object"}
    assert by["Alt"] == {"name": "Alt", "members": [{"type": "str"}, {"type": "null"}],
                         "meta-type": "alternate"}
    assert by["null"] == {"name": "null", "json-type": "null", "meta-type": "builtin"}


def test_introspection_describes_itself(schemas: dict[str, Schema]) -> None:
    """The payload validates against the schema's own SchemaInfo type."""
    from qmp_server.qapi.validate import QAPIValidator

    for schema in schemas.values():
        validator = QAPIValidator(schema.json_schema("SchemaInfo"))
        for entry in schema.introspect():
            validator.validate(entry)


def test_fresh_copies(schema72: Schema) -> None:
    a = schema72.introspect()
    a[0]["name"] = "mutated"
    assert schema72.introspect()[0]["name"] != "mutated"
