"""Stage 3 of the schema compiler: the typed, frozen schema model for one profile.

Contract: :func:`build_schema` takes the checked definitions of :mod:`.expr` and a profile's
condition symbols, drops everything whose ``'if'`` does not hold, resolves every type
reference, and returns a :class:`Schema` that holds only what the emulated QEMU version has.
Semantic errors (unknown or duplicate names, bad bases, discriminators, branch clashes) are
:class:`~qmp_server.errors.SchemaError` located at the offending definition.

Neighbours: :mod:`.introspect` turns a :class:`Schema` into the ``query-qmp-schema`` payload,
:mod:`.jsonschema` into JSON Schema, :mod:`.validate` checks command arguments against it.

Rule 1: entities are immutable to everyone but this module's builder, which fills the members of
named types after creating them, so that types may refer to each other (even recursively).
Rule 2: a member, enum value, branch or feature that is compiled out is simply absent.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from qmp_server.errors import SchemaError
from qmp_server.qapi.expr import (
    AlternateDef,
    CommandDef,
    Definition,
    EnumDef,
    EventDef,
    FeatureDef,
    Loc,
    MemberDef,
    StructDef,
    TypeRef,
    UnionDef,
)

if TYPE_CHECKING:
    from qmp_server._types import JSONObject

__all__ = [
    "AlternateBranch",
    "AlternateType",
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
    "build_schema",
]

EMPTY_OBJECT = "q_empty"


# --------------------------------------------------------------------------------------------
# Entities


@dataclass(frozen=True, eq=False, slots=True)
class BuiltinType:
    """A built-in scalar: ``str``, ``int``, ``uint8``, ``size``, ``any``, ...

    ``json_type`` is the SchemaInfoBuiltin ``json-type``; ``int_range`` is ``(min, max)`` of the
    value QEMU stores for integer types (``None`` for the others).
    """

    name: str
    json_type: str
    int_range: tuple[int, int] | None = None
    features: tuple[str, ...] = ()
    doc: str | None = None

    def __repr__(self) -> str:
        return f"BuiltinType({self.name!r})"


@dataclass(frozen=True, slots=True)
class EnumMember:
    name: str
    features: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False, slots=True)
class EnumType:
    name: str
    members: tuple[EnumMember, ...] = ()
    features: tuple[str, ...] = ()
    prefix: str | None = None
    doc: str | None = None

    @property
    def values(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.members)

    def __repr__(self) -> str:
        return f"EnumType({self.name!r})"


@dataclass(frozen=True, eq=False, slots=True)
class ArrayType:
    name: str
    element_type: QAPIType
    features: tuple[str, ...] = ()
    doc: str | None = None

    def __repr__(self) -> str:
        return f"ArrayType({self.name!r})"


@dataclass(frozen=True, eq=False, slots=True)
class Member:
    name: str
    type: QAPIType
    optional: bool = False
    features: tuple[str, ...] = ()

    def __repr__(self) -> str:
        opt = "*" if self.optional else ""
        return f"Member({opt}{self.name}: {self.type.name})"


@dataclass(frozen=True, eq=False, slots=True)
class Variant:
    name: str
    type: ObjectType


@dataclass(frozen=True, eq=False, slots=True)
class Variants:
    """The branches of a union: ``tag`` is the discriminator member (one of the base's)."""

    tag: Member
    cases: tuple[Variant, ...]

    def case(self, value: str) -> Variant | None:
        return next((v for v in self.cases if v.name == value), None)


@dataclass(frozen=True, eq=False, slots=True)
class ObjectType:
    """A struct, a union, or an implicit argument type.

    ``members`` lists the base's members first, then the type's own; a union's branch
    members are only in ``variants``.
    """

    name: str
    members: tuple[Member, ...] = ()
    base: ObjectType | None = None
    variants: Variants | None = None
    features: tuple[str, ...] = ()
    implicit: bool = False
    doc: str | None = None

    def member(self, name: str) -> Member | None:
        return next((m for m in self.members if m.name == name), None)

    def __repr__(self) -> str:
        return f"ObjectType({self.name!r})"


@dataclass(frozen=True, eq=False, slots=True)
class AlternateBranch:
    name: str
    type: QAPIType


@dataclass(frozen=True, eq=False, slots=True)
class AlternateType:
    name: str
    branches: tuple[AlternateBranch, ...] = ()
    features: tuple[str, ...] = ()
    doc: str | None = None

    def __repr__(self) -> str:
        return f"AlternateType({self.name!r})"


QAPIType = BuiltinType | EnumType | ArrayType | ObjectType | AlternateType


@dataclass(frozen=True, eq=False, slots=True)
class Command:
    name: str
    arg_type: ObjectType | None = None
    ret_type: QAPIType | None = None
    allow_oob: bool = False
    boxed: bool = False
    success_response: bool = True
    features: tuple[str, ...] = ()
    allow_preconfig: bool = False
    coroutine: bool = False
    doc: str | None = None

    def __repr__(self) -> str:
        return f"Command({self.name!r})"


@dataclass(frozen=True, eq=False, slots=True)
class Event:
    name: str
    arg_type: ObjectType | None = None
    features: tuple[str, ...] = ()
    boxed: bool = False
    doc: str | None = None

    def __repr__(self) -> str:
        return f"Event({self.name!r})"


_I64 = (-(1 << 63), (1 << 63) - 1)
_U64 = (0, (1 << 64) - 1)
BUILTINS: tuple[BuiltinType, ...] = (
    BuiltinType("str", "string"),
    BuiltinType("number", "number"),
    BuiltinType("int", "int", _I64),
    BuiltinType("int8", "int", (-(1 << 7), (1 << 7) - 1)),
    BuiltinType("int16", "int", (-(1 << 15), (1 << 15) - 1)),
    BuiltinType("int32", "int", (-(1 << 31), (1 << 31) - 1)),
    BuiltinType("int64", "int", _I64),
    BuiltinType("uint8", "int", (0, (1 << 8) - 1)),
    BuiltinType("uint16", "int", (0, (1 << 16) - 1)),
    BuiltinType("uint32", "int", (0, (1 << 32) - 1)),
    BuiltinType("uint64", "int", _U64),
    BuiltinType("size", "int", _U64),
    BuiltinType("bool", "boolean"),
    BuiltinType("null", "null"),
    BuiltinType("any", "value"),
)


# --------------------------------------------------------------------------------------------
# The schema


@dataclass(frozen=True, eq=False)
class Schema:
    """Everything one emulated QEMU version has, after ``'if'`` filtering.

    ``commands`` and ``events`` keep definition order; ``entities`` interleaves them the way
    the schema files do (the order ``query-qmp-schema`` lists them in).
    """

    commands: Mapping[str, Command]
    events: Mapping[str, Event]
    types: Mapping[str, QAPIType]
    entities: tuple[Command | Event, ...]
    defines: frozenset[str] = frozenset()
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def command(self, name: str) -> Command | None:
        return self.commands.get(name)

    def event(self, name: str) -> Event | None:
        return self.events.get(name)

    def lookup_type(self, name: str) -> QAPIType | None:
        return self.types.get(name)

    @property
    def empty_type(self) -> ObjectType:
        t = self.types[EMPTY_OBJECT]
        assert isinstance(t, ObjectType)
        return t

    def enum_members(self, enum_name: str) -> list[str]:
        """The values of enum ``enum_name``, in order.

        :raise KeyError: when there is no such enum in this profile.
        """
        t = self.types.get(enum_name)
        if not isinstance(t, EnumType):
            raise KeyError(enum_name)
        return list(t.values)

    def introspect(self) -> list[JSONObject]:
        """The ``query-qmp-schema`` payload (a fresh copy on every call)."""
        from qmp_server.qapi.introspect import introspect

        if "introspect" not in self._cache:
            self._cache["introspect"] = introspect(self)
        result: list[JSONObject] = copy.deepcopy(self._cache["introspect"])
        return result

    def json_schema(self, name: str) -> JSONObject:
        """JSON Schema (Draft 2020-12) for a type, or for a command's arguments.

        :param name: a type name (``'MigrationCapabilityStatus'``) or a command name, which
            stands for the command's argument type (the empty object when it takes none).
        :raise KeyError: when ``name`` is neither.
        """
        from qmp_server.qapi.jsonschema import type_schema

        cmd = self.commands.get(name)
        if cmd is not None:
            return type_schema(cmd.arg_type or self.empty_type)
        t = self.types.get(name)
        if t is None:
            raise KeyError(name)
        return type_schema(t)

    def __iter__(self) -> Iterator[Command | Event]:
        return iter(self.entities)


# --------------------------------------------------------------------------------------------
# The builder


def _feats(features: tuple[FeatureDef, ...], defines: frozenset[str]) -> tuple[str, ...]:
    return tuple(f.name for f in features if f.ifcond.holds(defines))


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)


class _Builder:
    def __init__(self, defs: list[Definition], defines: frozenset[str]) -> None:
        self.defines = defines
        self.all_defs = defs
        self.defs = [d for d in defs if d.ifcond.holds(defines)]
        self.types: dict[str, QAPIType] = {b.name: b for b in BUILTINS}
        self.arrays: dict[str, ArrayType] = {}
        self.def_of: dict[str, Definition] = {}
        self.filled: set[str] = set()
        self.filling: set[str] = set()

    def fail(self, defn: Definition | Loc, msg: str) -> SchemaError:
        if isinstance(defn, Loc):
            return SchemaError(defn.fname, defn.line, msg)
        return SchemaError(defn.loc.fname, defn.loc.line, msg, defn.context)

    # -- pass 1: names --------------------------------------------------------------------

    def declare(self) -> None:
        seen: dict[str, Definition] = {}
        for d in self.all_defs:
            if d.name in self.types or d.name == EMPTY_OBJECT:
                raise self.fail(d, f"'{d.name}' is the name of a built-in type")
            if d.name in seen:
                other = seen[d.name]
                raise self.fail(
                    d, f"'{d.name}' is already defined at {other.loc.fname}:{other.loc.line}"
                )
            seen[d.name] = d
        self.types[EMPTY_OBJECT] = ObjectType(EMPTY_OBJECT, implicit=True)
        for d in self.defs:
            feats = _feats(d.features, self.defines)
            shell: QAPIType
            if isinstance(d, EnumDef):
                shell = EnumType(d.name, features=feats, prefix=d.prefix, doc=d.doc)
            elif isinstance(d, StructDef | UnionDef):
                shell = ObjectType(d.name, features=feats, doc=d.doc)
            elif isinstance(d, AlternateDef):
                shell = AlternateType(d.name, features=feats, doc=d.doc)
            else:
                continue
            self.types[d.name] = shell
            self.def_of[d.name] = d

    # -- references -------------------------------------------------------------------------

    def resolve(self, defn: Definition, ref: TypeRef, what: str) -> QAPIType:
        t = self.types.get(ref.name)
        if t is None or (ref.name == EMPTY_OBJECT):
            if any(d.name == ref.name for d in self.all_defs):
                raise self.fail(
                    defn,
                    f"{what} uses type '{ref.name}', which is compiled out in this configuration",
                )
            raise self.fail(defn, f"{what} uses unknown type '{ref.name}'")
        if ref.array:
            return self.array_of(t)
        return t

    def array_of(self, elem: QAPIType) -> ArrayType:
        name = elem.name + "List"
        arr = self.arrays.get(name)
        if arr is None:
            arr = self.arrays[name] = ArrayType(name, elem)
        return arr

    def members(self, defn: Definition, mdefs: tuple[MemberDef, ...]) -> list[Member]:
        out: list[Member] = []
        for m in mdefs:
            if not m.ifcond.holds(self.defines):
                continue
            t = self.resolve(defn, m.type, f"member '{m.name}'")
            out.append(Member(m.name, t, m.optional, _feats(m.features, self.defines)))
        return out

    @staticmethod
    def _clash(members: list[Member]) -> str | None:
        seen: set[str] = set()
        for m in members:
            # QEMU's C names fold '-' and '_' together; two such members would collide there.
            key = m.name.replace("-", "_")
            if key in seen:
                return m.name
            seen.add(key)
        return None

    # -- pass 2: fill named types -------------------------------------------------------------

    def fill(self, name: str) -> None:
        if name in self.filled:
            return
        d = self.def_of[name]
        if name in self.filling:
            raise self.fail(d, f"'{name}' is its own base")
        self.filling.add(name)
        shell = self.types[name]
        if isinstance(d, EnumDef):
            values = tuple(
                EnumMember(v.name, _feats(v.features, self.defines))
                for v in d.values
                if v.ifcond.holds(self.defines)
            )
            _set(shell, "members", values)
        elif isinstance(d, StructDef):
            self.fill_struct(d, shell)
        elif isinstance(d, UnionDef):
            self.fill_union(d, shell)
        elif isinstance(d, AlternateDef):
            self.fill_alternate(d, shell)
        self.filling.discard(name)
        self.filled.add(name)

    def base_of(self, d: Definition, base_name: str) -> ObjectType:
        base = self.resolve(d, TypeRef(base_name), "'base'")
        bdef = self.def_of.get(base_name)
        if not isinstance(base, ObjectType) or not isinstance(bdef, StructDef):
            raise self.fail(d, f"'base' requires a struct type, '{base_name}' isn't")
        self.fill(base_name)
        return base

    def fill_struct(self, d: StructDef, shell: QAPIType) -> None:
        base = self.base_of(d, d.base) if d.base else None
        own = self.members(d, d.members)
        all_members = [*(base.members if base else ()), *own]
        clash = self._clash(all_members)
        if clash:
            raise self.fail(
                d,
                f"member '{clash}' clashes with another member"
                + (f" (base '{base.name}')" if base else ""),
            )
        _set(shell, "base", base)
        _set(shell, "members", tuple(all_members))

    def fill_union(self, d: UnionDef, shell: QAPIType) -> None:
        if isinstance(d.base, str):
            base = self.base_of(d, d.base)
            base_members = list(base.members)
        else:
            base = ObjectType(f"q_obj_{d.name}-base", implicit=True)
            base_members = self.members(d, d.base)
            clash = self._clash(base_members)
            if clash:
                raise self.fail(d, f"member '{clash}' clashes with another member")
            _set(base, "members", tuple(base_members))
        tag = next((m for m in base_members if m.name == d.discriminator), None)
        if tag is None:
            raise self.fail(d, f"discriminator '{d.discriminator}' is not a member of 'base'")
        if tag.optional:
            raise self.fail(d, f"discriminator member '{d.discriminator}' must not be optional")
        if not isinstance(tag.type, EnumType):
            raise self.fail(d, f"discriminator member '{d.discriminator}' must be of enum type")
        self.fill(tag.type.name)
        values = tag.type.values
        cases: list[Variant] = []
        for b in d.branches:
            if b.name not in (v.name for v in self.enum_def(tag.type.name).values):
                raise self.fail(d, f"branch '{b.name}' is not a value of {tag.type.name}")
            if not b.ifcond.holds(self.defines):
                continue
            if b.name not in values:
                raise self.fail(
                    d,
                    f"branch '{b.name}' is present but enum value '{b.name}' of "
                    f"{tag.type.name} is compiled out",
                )
            btype = self.resolve(d, b.type, f"branch '{b.name}'")
            bdef = self.def_of.get(btype.name)
            if not isinstance(btype, ObjectType) or not isinstance(bdef, StructDef | UnionDef):
                raise self.fail(d, f"branch '{b.name}' must be a struct type, '{btype.name}' isn't")
            self.fill(btype.name)
            clash = self._clash([*base_members, *btype.members])
            if clash:
                raise self.fail(
                    d, f"member '{clash}' of branch '{b.name}' clashes with a base member"
                )
            cases.append(Variant(b.name, btype))
        covered = {c.name for c in cases}
        # As QEMU does, values without a branch get the empty object (visible in introspection).
        empty = self.types[EMPTY_OBJECT]
        assert isinstance(empty, ObjectType)
        cases.extend(Variant(v, empty) for v in values if v not in covered)
        _set(shell, "base", base)
        _set(shell, "members", tuple(base_members))
        _set(shell, "variants", Variants(tag, tuple(cases)))

    def enum_def(self, name: str) -> EnumDef:
        d = self.def_of[name]
        assert isinstance(d, EnumDef)
        return d

    def fill_alternate(self, d: AlternateDef, shell: QAPIType) -> None:
        branches: list[AlternateBranch] = []
        kinds: dict[str, str] = {}
        for b in d.branches:
            if not b.ifcond.holds(self.defines):
                continue
            btype = self.resolve(d, b.type, f"branch '{b.name}'")
            kind = json_kind(btype)
            if kind in ("value", "alternate"):
                raise self.fail(d, f"branch '{b.name}' cannot use type '{btype.name}'")
            if kind in kinds:
                raise self.fail(d, f"branch '{b.name}' can't be distinguished from '{kinds[kind]}'")
            kinds[kind] = b.name
            branches.append(AlternateBranch(b.name, btype))
        if not branches:
            raise self.fail(d, "no branch is left in this configuration")
        _set(shell, "branches", tuple(branches))

    # -- pass 3: commands and events ----------------------------------------------------------

    def arg_type(self, d: CommandDef | EventDef) -> ObjectType | None:
        if d.data is None:
            return None
        if isinstance(d.data, str):
            t = self.resolve(d, TypeRef(d.data), "'data'")
            tdef = self.def_of.get(t.name)
            if d.boxed:
                if not isinstance(t, ObjectType):
                    raise self.fail(d, f"'data' of a boxed {d.meta} must be a struct or union")
            elif not isinstance(t, ObjectType) or not isinstance(tdef, StructDef):
                raise self.fail(d, f"'data' must name a struct type, '{t.name}' isn't")
            return t
        members = self.members(d, d.data)
        clash = self._clash(members)
        if clash:
            raise self.fail(d, f"member '{clash}' clashes with another member")
        return ObjectType(f"q_obj_{d.name}-arg", tuple(members), implicit=True)

    def build(self) -> Schema:
        self.declare()
        for name in list(self.def_of):
            self.fill(name)
        commands: dict[str, Command] = {}
        events: dict[str, Event] = {}
        entities: list[Command | Event] = []
        for d in self.defs:
            feats = _feats(d.features, self.defines)
            if isinstance(d, CommandDef):
                ret = self.resolve(d, d.returns, "'returns'") if d.returns else None
                cmd = Command(
                    d.name,
                    self.arg_type(d),
                    ret,
                    d.allow_oob,
                    d.boxed,
                    d.success_response,
                    feats,
                    d.allow_preconfig,
                    d.coroutine,
                    d.doc,
                )
                if not d.success_response and ret is not None:
                    raise self.fail(d, "'success-response': false forbids 'returns'")
                commands[d.name] = cmd
                entities.append(cmd)
            elif isinstance(d, EventDef):
                ev = Event(d.name, self.arg_type(d), feats, d.boxed, d.doc)
                events[d.name] = ev
                entities.append(ev)
        types: dict[str, QAPIType] = dict(self.types)
        types.update(self.arrays)
        return Schema(
            MappingProxyType(commands),
            MappingProxyType(events),
            MappingProxyType(types),
            tuple(entities),
            self.defines,
        )


def json_kind(t: QAPIType) -> str:
    """The JSON kind a value of ``t`` has on the wire (what alternates dispatch on)."""
    if isinstance(t, BuiltinType):
        return {
            "string": "string",
            "int": "number",
            "number": "number",
            "boolean": "boolean",
            "null": "null",
            "value": "value",
        }[t.json_type]
    if isinstance(t, EnumType):
        return "string"
    if isinstance(t, ArrayType):
        return "array"
    if isinstance(t, ObjectType):
        return "object"
    return "alternate"


def build_schema(defs: list[Definition], defines: frozenset[str]) -> Schema:
    """Build the model of ``defs`` for a profile whose condition symbols are ``defines``.

    :raise SchemaError: on the first semantic defect.
    """
    return _Builder(defs, defines).build()
