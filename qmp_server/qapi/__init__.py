"""The QAPI schema compiler: schema/*.json in, a typed model of one QEMU version out.

Pipeline (one stage per module, each with its contract in its docstring):

1. :mod:`.parser`: text to located raw expressions (``include`` resolved);
2. :mod:`.expr`: structural checks, raw expressions to frozen definitions;
3. :mod:`.model`: ``'if'`` filtering for a profile, type resolution, semantic checks;
4. :mod:`.introspect` (``query-qmp-schema``), :mod:`.jsonschema` (JSON Schema), and
5. :mod:`.validate` (command arguments, with QEMU's error messages).

Every defect in schema text raises :class:`~qmp_server.errors.SchemaError` with file, line and
the definition it is in.  The package does no I/O besides reading the schema files.

>>> s = load_schema_text("{ 'enum': 'E', 'data': [ 'a', { 'name': 'b', 'if': 'X' } ] }",
...                      frozenset())
>>> s.enum_members("E")
['a']
"""

from __future__ import annotations

from pathlib import Path

from qmp_server.qapi.expr import check_exprs
from qmp_server.qapi.model import (
    AlternateBranch,
    AlternateType,
    ArrayType,
    BuiltinType,
    Command,
    EnumMember,
    EnumType,
    Event,
    Member,
    ObjectType,
    QAPIType,
    Schema,
    Variant,
    Variants,
    build_schema,
)
from qmp_server.qapi.parser import parse_schema, parse_text
from qmp_server.qapi.validate import ArgumentValidator

__all__ = [
    "SCHEMA_DIR",
    "AlternateBranch",
    "AlternateType",
    "ArgumentValidator",
    "ArrayType",
    "BuiltinType",
    "Command",
    "EnumMember",
    "EnumType",
    "Event",
    "Member",
    "ObjectType",
    "QAPIType",
    "Schema",
    "Variant",
    "Variants",
    "load_schema",
    "load_schema_text",
]

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schema"
"""Where the shipped schema files live (``schema/migration.json`` is the entry point)."""


def load_schema(path: str | Path, defines: frozenset[str]) -> Schema:
    """Compile the schema file ``path`` (and its includes) for one profile.

    :param defines: the profile's condition symbols (``Profile.defines``); definitions,
        members, values and features whose ``'if'`` does not hold are left out.
    :raise SchemaError: when the schema text is invalid.
    """
    return build_schema(check_exprs(parse_schema(path)), defines)


def load_schema_text(
    text: str, defines: frozenset[str] = frozenset(), fname: str = "<string>"
) -> Schema:
    """Like :func:`load_schema` for schema text without includes (handy in tests)."""
    return build_schema(check_exprs(parse_text(text, fname)), defines)
