"""Stage 5: check a command's arguments the way QEMU's QAPI input visitor does.

Contract: :meth:`ArgumentValidator.validate` accepts exactly the argument objects QEMU 7.2
accepts and returns them normalised (negative integers given for ``uint64``/``size`` members
wrapped to ``2**64 + v``, as QEMU stores them); otherwise it raises
:class:`~qmp_server.errors.CommandError` (GenericError) with the message QEMU would give.

How: the JSON Schema of :mod:`.jsonschema` (validated with the ``jsonschema`` library, with
:data:`QAPI_TYPE_CHECKER`) decides *whether* the input is valid.  Only when it is not, an exact
replay of QEMU's visit (:class:`_Visit`) finds *which* error QEMU reports first:

* members are visited in schema order, base members first, depth first; a missing or
  ill-typed member is reported when it is reached;
* members the type does not know are reported only after every known member of that object
  was visited successfully (and which one is named follows QEMU's hash tables:
  :mod:`._hashorder`);
* messages use the full path (``capabilities[0].state``), except the ones QEMU builds from
  the bare member name (enum values, small integer ranges, alternates), where a list element
  has no name and QEMU prints ``null``.

All message texts are the constants below, in one place, so that they can be diffed against
recordings of a real QEMU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jsonschema
import jsonschema.validators

from qmp_server._types import INT64_MAX, INT64_MIN, UINT64_MAX, JSONObject
from qmp_server.errors import CommandError
from qmp_server.qapi._hashorder import first_leftover
from qmp_server.qapi.jsonschema import type_schema
from qmp_server.qapi.model import (
    AlternateType,
    ArrayType,
    BuiltinType,
    Command,
    EnumType,
    Member,
    ObjectType,
    QAPIType,
    Schema,
    json_kind,
)

__all__ = [
    "MSG_BAD_ENUM",
    "MSG_EXPECTS",
    "MSG_INVALID_TYPE",
    "MSG_MISSING",
    "MSG_UNEXPECTED",
    "QAPI_TYPE_CHECKER",
    "ArgumentValidator",
    "QAPIValidator",
]

# The visitor's messages (QEMU 7.2, qerror.h and qapi-visit-core.c).
MSG_MISSING = "Parameter '{name}' is missing"
MSG_UNEXPECTED = "Parameter '{name}' is unexpected"
MSG_INVALID_TYPE = "Invalid parameter type for '{name}', expected: {expected}"
MSG_EXPECTS = "Parameter '{name}' expects {expected}"
MSG_BAD_ENUM = "Parameter '{name}' does not accept value '{value}'"
NULL_NAME = "null"  # what QEMU prints for a list element's (absent) bare name

# What "expected:" names for each wrong JSON type.
_EXPECTED_WORD = {"string": "string", "boolean": "boolean", "null": "null", "number": "number"}
# Integer types checked as uint64 first, then against the C type's maximum.
_UNSIGNED_C_NAME = {"uint8": "uint8_t", "uint16": "uint16_t", "uint32": "uint32_t"}
_SIGNED_C_NAME = {"int8": "int8_t", "int16": "int16_t", "int32": "int32_t"}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


QAPI_TYPE_CHECKER = jsonschema.validators.Draft202012Validator.TYPE_CHECKER.redefine_many(
    {
        "integer": lambda _checker, value: _is_int(value),
        "number": lambda _checker, value: _is_number(value),
    }
)
"""JSON types as QEMU sees them: ``1.0`` is a double, not an integer; ``true`` is no number."""

QAPIValidator = jsonschema.validators.extend(  # type: ignore[no-untyped-call]
    jsonschema.validators.Draft202012Validator, type_checker=QAPI_TYPE_CHECKER
)
"""A Draft 2020-12 validator class that uses :data:`QAPI_TYPE_CHECKER`."""


class VisitError(Exception):
    """Internal: the first error of a replayed visit."""

    def __init__(self, desc: str) -> None:
        super().__init__(desc)
        self.desc = desc


def _child(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


class _Visit:
    """Replays QEMU's input visit over a value; returns the normalised value."""

    def visit(self, t: QAPIType, value: Any, path: str, bare: str | None) -> Any:
        if isinstance(t, BuiltinType):
            return self.builtin(t, value, path, bare)
        if isinstance(t, EnumType):
            if not isinstance(value, str):
                raise VisitError(MSG_INVALID_TYPE.format(name=path, expected="string"))
            if value not in t.values:
                raise VisitError(MSG_BAD_ENUM.format(name=bare or NULL_NAME, value=value))
            return value
        if isinstance(t, ArrayType):
            if not isinstance(value, list):
                raise VisitError(MSG_INVALID_TYPE.format(name=path, expected="array"))
            return [
                self.visit(t.element_type, v, f"{path}[{i}]", None) for i, v in enumerate(value)
            ]
        if isinstance(t, ObjectType):
            if not isinstance(value, dict):
                raise VisitError(MSG_INVALID_TYPE.format(name=path, expected="object"))
            return self.object(t, value, path)
        return self.alternate(t, value, path, bare)

    def builtin(self, t: BuiltinType, value: Any, path: str, bare: str | None) -> Any:
        jt = t.json_type
        if jt == "value":
            return value
        if jt == "int":
            return self.integer(t, value, path, bare)
        ok = {
            "string": isinstance(value, str),
            "boolean": isinstance(value, bool),
            "null": value is None,
            "number": _is_number(value),
        }[jt]
        if not ok:
            raise VisitError(MSG_INVALID_TYPE.format(name=path, expected=_EXPECTED_WORD[jt]))
        return value

    def integer(self, t: BuiltinType, value: Any, path: str, bare: str | None) -> int:
        # A JSON integer outside int64 and uint64 is a double in QEMU: never an integer.
        is_qnum_int = _is_int(value) and INT64_MIN <= value <= UINT64_MAX
        if t.name in ("uint64", "size") or t.name in _UNSIGNED_C_NAME:
            if not is_qnum_int:
                raise VisitError(MSG_EXPECTS.format(name=path, expected="uint64"))
            wrapped: int = value & UINT64_MAX
            assert t.int_range is not None
            if t.name in _UNSIGNED_C_NAME and wrapped > t.int_range[1]:
                raise VisitError(
                    MSG_EXPECTS.format(name=bare or NULL_NAME, expected=_UNSIGNED_C_NAME[t.name])
                )
            return wrapped
        if not (is_qnum_int and value <= INT64_MAX):
            raise VisitError(MSG_INVALID_TYPE.format(name=path, expected="integer"))
        if t.name in _SIGNED_C_NAME:
            assert t.int_range is not None
            lo, hi = t.int_range
            if not lo <= value <= hi:
                raise VisitError(
                    MSG_EXPECTS.format(name=bare or NULL_NAME, expected=_SIGNED_C_NAME[t.name])
                )
        result: int = value
        return result

    def object(self, t: ObjectType, value: JSONObject, path: str) -> JSONObject:
        out: JSONObject = {}
        visited: list[str] = []
        self.members(t, value, path, out, visited)
        if len(visited) != len(value):
            extra = first_leftover(value, visited)
            raise VisitError(MSG_UNEXPECTED.format(name=_child(path, extra or "?")))
        return {k: out[k] for k in value}  # keep the caller's key order

    def members(
        self, t: ObjectType, value: JSONObject, path: str, out: JSONObject, visited: list[str]
    ) -> None:
        """Visit ``t``'s members, then (for a union) those of the branch the tag selects."""
        for m in t.members:
            self.member(m, value, path, out, visited)
        if t.variants is not None:
            # The tag is a base member, so it has been checked already.
            case = t.variants.case(out[t.variants.tag.name])
            if case is not None:
                self.members(case.type, value, path, out, visited)

    def member(
        self, m: Member, value: JSONObject, path: str, out: JSONObject, visited: list[str]
    ) -> None:
        if m.name not in value:
            if m.optional:
                return
            raise VisitError(MSG_MISSING.format(name=_child(path, m.name)))
        out[m.name] = self.visit(m.type, value[m.name], _child(path, m.name), m.name)
        visited.append(m.name)

    def alternate(self, t: AlternateType, value: Any, path: str, bare: str | None) -> Any:
        if isinstance(value, bool):
            kind = "boolean"
        elif value is None:
            kind = "null"
        elif isinstance(value, str):
            kind = "string"
        elif isinstance(value, int | float):
            kind = "number"
        elif isinstance(value, list):
            kind = "array"
        else:
            kind = "object"
        for b in t.branches:
            if json_kind(b.type) == kind:
                return self.visit(b.type, value, path, bare)
        raise VisitError(MSG_INVALID_TYPE.format(name=bare or NULL_NAME, expected=t.name))


def visit_arguments(arg_type: ObjectType, args: JSONObject) -> JSONObject:
    """Replay QEMU's visit of ``args`` as ``arg_type``; return the normalised arguments.

    :raise CommandError: with QEMU's message for the first error the visit meets.
    """
    try:
        result: JSONObject = _Visit().visit(arg_type, args, "", None)
    except VisitError as err:
        raise CommandError(err.desc) from None
    return result


class ArgumentValidator:
    """Validates command arguments for one :class:`~.model.Schema`.

    >>> from qmp_server.qapi import load_schema_text
    >>> s = load_schema_text("{ 'command': 'c', 'data': { 'n': 'uint8' } }")
    >>> v = ArgumentValidator(s)
    >>> v.validate(s.command("c"), {"n": 7})
    {'n': 7}
    >>> v.validate(s.command("c"), {"n": 300})
    Traceback (most recent call last):
    ...
    qmp_server.errors.CommandError: Parameter 'n' expects uint8_t
    """

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self._checks: dict[str, Callable[[object], bool]] = {}

    def _check_for(self, arg_type: ObjectType) -> Callable[[object], bool]:
        key = arg_type.name if not arg_type.implicit else f"{id(arg_type)}"
        check = self._checks.get(key)
        if check is None:
            validator = QAPIValidator(type_schema(arg_type))
            check = self._checks[key] = validator.is_valid
        return check

    def validate(self, command: Command, args: JSONObject) -> JSONObject:
        """Check ``args`` for ``command``; return a new, normalised dict in the same key order.

        :raise CommandError: GenericError with QEMU's text for the first problem.
        """
        arg_type = command.arg_type or self.schema.empty_type
        if not args and not any(not m.optional for m in arg_type.members):
            return {}  # the common no-argument call: nothing to check or normalise
        if self._check_for(arg_type)(args):
            return visit_arguments(arg_type, args)
        result = visit_arguments(arg_type, args)  # raises QEMU's first error
        # The replay found nothing: the JSON Schema and the replay disagree, a bug in one of
        # them; the replay is the one modelled on QEMU, so trust it.
        return result
