"""Stage 2 of the schema compiler: check each raw expression's structure, return definitions.

Contract: :func:`check_exprs` takes the :class:`~.parser.RawExpr` list and returns new frozen
definition nodes (:class:`EnumDef`, :class:`StructDef`, ...), one per definition, in order.  It
checks what can be checked without looking at other definitions: the keys each kind allows and
requires, the shape of every value, the spelling of names, ``'if'`` conditions and features.
Everything that needs the whole schema (unknown or duplicate types, union discriminators,
branch clashes) is :mod:`.model`'s job.

Every error is a :class:`~qmp_server.errors.SchemaError` carrying file, line and the
definition ("In command 'migrate'").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from qmp_server.errors import SchemaError
from qmp_server.qapi.parser import RawExpr

__all__ = [
    "AlternateDef",
    "BranchDef",
    "CommandDef",
    "Definition",
    "EnumDef",
    "EnumValueDef",
    "EventDef",
    "FeatureDef",
    "IfCond",
    "MemberDef",
    "StructDef",
    "TypeRef",
    "UnionDef",
    "check_exprs",
]


# --------------------------------------------------------------------------------------------
# Definition nodes


@dataclass(frozen=True, slots=True)
class IfCond:
    """A parsed ``'if'`` condition: a symbol, or ``all``/``any``/``not`` over sub-conditions."""

    op: str  # "sym" | "all" | "any" | "not" | "true"
    sym: str = ""
    args: tuple[IfCond, ...] = ()

    def holds(self, defines: frozenset[str]) -> bool:
        """Evaluate against a profile's condition symbols."""
        if self.op == "true":
            return True
        if self.op == "sym":
            return self.sym in defines
        if self.op == "all":
            return all(a.holds(defines) for a in self.args)
        if self.op == "any":
            return any(a.holds(defines) for a in self.args)
        return not self.args[0].holds(defines)


ALWAYS = IfCond("true")


@dataclass(frozen=True, slots=True)
class Loc:
    fname: str
    line: int


@dataclass(frozen=True, slots=True)
class TypeRef:
    """A reference to a type by name, or to an array of it (``['Name']``)."""

    name: str
    array: bool = False


@dataclass(frozen=True, slots=True)
class FeatureDef:
    name: str
    ifcond: IfCond = ALWAYS


@dataclass(frozen=True, slots=True)
class MemberDef:
    name: str
    type: TypeRef
    optional: bool
    ifcond: IfCond = ALWAYS
    features: tuple[FeatureDef, ...] = ()


@dataclass(frozen=True, slots=True)
class EnumValueDef:
    name: str
    ifcond: IfCond = ALWAYS
    features: tuple[FeatureDef, ...] = ()


@dataclass(frozen=True, slots=True)
class BranchDef:
    name: str
    type: TypeRef
    ifcond: IfCond = ALWAYS


@dataclass(frozen=True, slots=True)
class _DefBase:
    name: str
    loc: Loc
    doc: str | None
    ifcond: IfCond
    features: tuple[FeatureDef, ...]

    @property
    def meta(self) -> str:
        raise NotImplementedError

    @property
    def context(self) -> str:
        return f"In {self.meta} '{self.name}'"


@dataclass(frozen=True, slots=True)
class EnumDef(_DefBase):
    values: tuple[EnumValueDef, ...] = ()
    prefix: str | None = None

    @property
    def meta(self) -> str:
        return "enum"


@dataclass(frozen=True, slots=True)
class StructDef(_DefBase):
    members: tuple[MemberDef, ...] = ()
    base: str | None = None

    @property
    def meta(self) -> str:
        return "struct"


@dataclass(frozen=True, slots=True)
class UnionDef(_DefBase):
    base: str | tuple[MemberDef, ...] = ()
    discriminator: str = ""
    branches: tuple[BranchDef, ...] = ()

    @property
    def meta(self) -> str:
        return "union"


@dataclass(frozen=True, slots=True)
class AlternateDef(_DefBase):
    branches: tuple[BranchDef, ...] = ()

    @property
    def meta(self) -> str:
        return "alternate"


@dataclass(frozen=True, slots=True)
class CommandDef(_DefBase):
    data: str | tuple[MemberDef, ...] | None = None
    returns: TypeRef | None = None
    boxed: bool = False
    allow_oob: bool = False
    allow_preconfig: bool = False
    success_response: bool = True
    coroutine: bool = False

    @property
    def meta(self) -> str:
        return "command"


@dataclass(frozen=True, slots=True)
class EventDef(_DefBase):
    data: str | tuple[MemberDef, ...] | None = None
    boxed: bool = False

    @property
    def meta(self) -> str:
        return "event"


Definition = EnumDef | StructDef | UnionDef | AlternateDef | CommandDef | EventDef


# --------------------------------------------------------------------------------------------
# Names

_TYPE_NAME = re.compile(r"[A-Z][A-Za-z0-9]*\Z")
_EVENT_NAME = re.compile(r"[A-Z][A-Z0-9_]*\Z")
_COMMAND_NAME = re.compile(r"[a-z][a-z0-9_-]*\Z")
_MEMBER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*\Z")
_SYMBOL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

# Keys per kind: (required, optional); the kind's own key is required implicitly.
_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "enum": (("data",), ("prefix", "if", "features")),
    "struct": (("data",), ("base", "if", "features")),
    "union": (("base", "discriminator", "data"), ("if", "features")),
    "alternate": (("data",), ("if", "features")),
    "command": (
        (),
        (
            "data",
            "returns",
            "boxed",
            "if",
            "features",
            "gen",
            "success-response",
            "allow-oob",
            "allow-preconfig",
            "coroutine",
        ),
    ),
    "event": ((), ("data", "boxed", "if", "features")),
}
_BUILTIN_REF_OK = frozenset(
    {
        "str",
        "int",
        "bool",
        "number",
        "null",
        "any",
        "size",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
    }
)


class _Ctx:
    """Raises located errors for one expression."""

    def __init__(self, fname: str, line: int, context: str | None) -> None:
        self.fname = fname
        self.line = line
        self.context = context

    def fail(self, msg: str) -> SchemaError:
        return SchemaError(self.fname, self.line, msg, self.context)


def _check_keys(ctx: _Ctx, data: dict[str, Any], meta: str) -> None:
    required, optional = _KEYS[meta]
    for key in required:
        if key not in data:
            raise ctx.fail(f"missing key '{key}'")
    allowed = {meta, *required, *optional}
    for key in data:
        if key not in allowed:
            raise ctx.fail(
                f"key '{key}' is not allowed here (allowed: "
                + ", ".join(f"'{k}'" for k in sorted(allowed))
                + ")"
            )


def _check_name(ctx: _Ctx, name: Any, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(name, str):
        raise ctx.fail(f"{what} requires a string name")
    if not pattern.match(name):
        raise ctx.fail(f"{what} has an invalid name '{name}'")
    return name


def _check_bool(ctx: _Ctx, data: dict[str, Any], key: str, default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise ctx.fail(f"flag '{key}' must be true or false")
    return value


def check_if(ctx: _Ctx, cond: Any, where: str = "'if'") -> IfCond:
    """Parse an ``'if'``: ``'SYM'``, ``{'all': [...]}``, ``{'any': [...]}``, ``{'not': c}``."""
    if isinstance(cond, str):
        if not _SYMBOL.match(cond):
            raise ctx.fail(f"{where} condition '{cond}' is not a valid identifier")
        return IfCond("sym", cond)
    if isinstance(cond, dict):
        if len(cond) != 1:
            raise ctx.fail(
                f"{where} condition has {len(cond)} operators, needs exactly one "
                "of 'all', 'any', 'not'"
            )
        ((op, arg),) = cond.items()
        if op == "not":
            return IfCond("not", args=(check_if(ctx, arg, where),))
        if op in ("all", "any"):
            if not isinstance(arg, list) or not arg:
                raise ctx.fail(f"{where} condition '{op}' needs a non-empty list")
            return IfCond(op, args=tuple(check_if(ctx, a, where) for a in arg))
        raise ctx.fail(f"{where} condition has unknown operator '{op}'")
    raise ctx.fail(f"{where} condition must be a string or an object")


def _check_features(ctx: _Ctx, value: Any) -> tuple[FeatureDef, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ctx.fail("'features' must be an array")
    out: list[FeatureDef] = []
    for item in value:
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict):
            raise ctx.fail("'features' members must be strings or objects")
        for key in item:
            if key not in ("name", "if"):
                raise ctx.fail(f"feature has unknown key '{key}'")
        if "name" not in item:
            raise ctx.fail("feature lacks 'name'")
        name = _check_name(ctx, item["name"], _MEMBER_NAME, "feature")
        if any(f.name == name for f in out):
            raise ctx.fail(f"duplicate feature '{name}'")
        ifcond = check_if(ctx, item["if"]) if "if" in item else ALWAYS
        out.append(FeatureDef(name, ifcond))
    return tuple(out)


def _check_type_ref(ctx: _Ctx, value: Any, what: str, allow_array: bool = True) -> TypeRef:
    if isinstance(value, str):
        if not (
            value in _BUILTIN_REF_OK
            or _TYPE_NAME.match(value)
            or value.startswith("q_obj_")
            or value == "q_empty"
        ):
            raise ctx.fail(f"{what} uses an invalid type name '{value}'")
        return TypeRef(value)
    if isinstance(value, list) and allow_array:
        if len(value) != 1 or not isinstance(value[0], str):
            raise ctx.fail(f"{what}: an array type must be written ['TypeName']")
        return TypeRef(_check_type_ref(ctx, value[0], what, False).name, True)
    if isinstance(value, list):
        raise ctx.fail(f"{what} cannot be an array of arrays")
    raise ctx.fail(f"{what} must name a type")


def _check_members(ctx: _Ctx, data: Any, what: str) -> tuple[MemberDef, ...]:
    if not isinstance(data, dict):
        raise ctx.fail(f"'{what}' must be an object")
    out: list[MemberDef] = []
    for key, value in data.items():
        optional = key.startswith("*")
        name = _check_name(ctx, key[1:] if optional else key, _MEMBER_NAME, f"'{what}' member")
        # The same name twice is allowed when 'if' tells the two apart (``'uri'`` required
        # before 8.2, ``'*uri'`` after): the model rejects a clash that survives filtering.
        ifcond: IfCond = ALWAYS
        features: tuple[FeatureDef, ...] = ()
        if isinstance(value, dict):
            for k in value:
                if k not in ("type", "if", "features"):
                    raise ctx.fail(f"member '{name}' has unknown key '{k}'")
            if "type" not in value:
                raise ctx.fail(f"member '{name}' lacks 'type'")
            if "if" in value:
                ifcond = check_if(ctx, value["if"])
            features = _check_features(ctx, value.get("features"))
            value = value["type"]
        tref = _check_type_ref(ctx, value, f"member '{name}'")
        out.append(MemberDef(name, tref, optional, ifcond, features))
    return tuple(out)


def _check_branches(ctx: _Ctx, data: Any) -> tuple[BranchDef, ...]:
    if not isinstance(data, dict):
        raise ctx.fail("'data' must be an object")
    if not data:
        raise ctx.fail("'data' must not be empty")
    out: list[BranchDef] = []
    for key, value in data.items():
        name = _check_name(ctx, key, _MEMBER_NAME, "branch")
        ifcond = ALWAYS
        if isinstance(value, dict):
            for k in value:
                if k not in ("type", "if"):
                    raise ctx.fail(f"branch '{name}' has unknown key '{k}'")
            if "type" not in value:
                raise ctx.fail(f"branch '{name}' lacks 'type'")
            if "if" in value:
                ifcond = check_if(ctx, value["if"])
            value = value["type"]
        out.append(BranchDef(name, _check_type_ref(ctx, value, f"branch '{name}'", False), ifcond))
    return tuple(out)


def _check_enum_values(ctx: _Ctx, data: Any) -> tuple[EnumValueDef, ...]:
    if not isinstance(data, list):
        raise ctx.fail("'data' must be an array")
    out: list[EnumValueDef] = []
    for item in data:
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict):
            raise ctx.fail("enum 'data' members must be strings or objects")
        for k in item:
            if k not in ("name", "if", "features"):
                raise ctx.fail(f"enum member has unknown key '{k}'")
        if "name" not in item:
            raise ctx.fail("enum member lacks 'name'")
        name = _check_name(ctx, item["name"], _MEMBER_NAME, "enum member")
        if any(v.name == name for v in out):
            raise ctx.fail(f"duplicate enum member '{name}'")
        ifcond = check_if(ctx, item["if"]) if "if" in item else ALWAYS
        out.append(EnumValueDef(name, ifcond, _check_features(ctx, item.get("features"))))
    return tuple(out)


def _check_data(ctx: _Ctx, data: dict[str, Any], boxed: bool) -> str | tuple[MemberDef, ...] | None:
    if "data" not in data:
        if boxed:
            raise ctx.fail("'boxed': true requires 'data'")
        return None
    value = data["data"]
    if isinstance(value, str):
        return _check_type_ref(ctx, value, "'data'", False).name
    if boxed:
        raise ctx.fail("'boxed': true requires 'data' to name a type")
    return _check_members(ctx, value, "data")


def _one(expr_data: dict[str, Any], fname: str, line: int, doc: str | None) -> Definition | None:
    meta = next((k for k in _KEYS if k in expr_data), None)
    if meta is None:
        ctx = _Ctx(fname, line, None)
        if "pragma" in expr_data:
            if len(expr_data) != 1 or not isinstance(expr_data["pragma"], dict):
                raise ctx.fail("'pragma' must be the only key and take an object")
            return None
        raise ctx.fail(
            "expression must define one of: "
            + ", ".join(f"'{k}'" for k in (*_KEYS, "include", "pragma"))
        )
    name = expr_data[meta]
    shown = name if isinstance(name, str) else "?"
    ctx = _Ctx(fname, line, f"In {meta} '{shown}'")
    _check_keys(ctx, expr_data, meta)
    pattern = {"command": _COMMAND_NAME, "event": _EVENT_NAME}.get(meta, _TYPE_NAME)
    name = _check_name(ctx, name, pattern, meta)
    if meta not in ("command", "event") and name.endswith("List"):
        raise ctx.fail(f"{meta} name '{name}' must not end in 'List' (reserved for arrays)")
    loc = Loc(fname, line)
    ifcond = check_if(ctx, expr_data["if"]) if "if" in expr_data else ALWAYS
    features = _check_features(ctx, expr_data.get("features"))
    common = (name, loc, doc, ifcond, features)

    if meta == "enum":
        prefix = expr_data.get("prefix")
        if prefix is not None and not isinstance(prefix, str):
            raise ctx.fail("'prefix' must be a string")
        return EnumDef(*common, values=_check_enum_values(ctx, expr_data["data"]), prefix=prefix)
    if meta == "struct":
        base = expr_data.get("base")
        if base is not None:
            base = _check_type_ref(ctx, base, "'base'", False).name
        return StructDef(*common, members=_check_members(ctx, expr_data["data"], "data"), base=base)
    if meta == "union":
        raw_base = expr_data["base"]
        ubase: str | tuple[MemberDef, ...]
        if isinstance(raw_base, dict):
            ubase = _check_members(ctx, raw_base, "base")
        else:
            ubase = _check_type_ref(ctx, raw_base, "'base'", False).name
        disc = expr_data["discriminator"]
        if not isinstance(disc, str):
            raise ctx.fail("'discriminator' must be a string")
        return UnionDef(
            *common,
            base=ubase,
            discriminator=disc,
            branches=_check_branches(ctx, expr_data["data"]),
        )
    if meta == "alternate":
        return AlternateDef(*common, branches=_check_branches(ctx, expr_data["data"]))
    if meta == "command":
        boxed = _check_bool(ctx, expr_data, "boxed", False)
        returns = None
        if "returns" in expr_data:
            returns = _check_type_ref(ctx, expr_data["returns"], "'returns'")
        if "gen" in expr_data and not isinstance(expr_data["gen"], bool):
            raise ctx.fail("flag 'gen' must be true or false")
        return CommandDef(
            *common,
            data=_check_data(ctx, expr_data, boxed),
            returns=returns,
            boxed=boxed,
            allow_oob=_check_bool(ctx, expr_data, "allow-oob", False),
            allow_preconfig=_check_bool(ctx, expr_data, "allow-preconfig", False),
            success_response=_check_bool(ctx, expr_data, "success-response", True),
            coroutine=_check_bool(ctx, expr_data, "coroutine", False),
        )
    boxed = _check_bool(ctx, expr_data, "boxed", False)
    return EventDef(*common, data=_check_data(ctx, expr_data, boxed), boxed=boxed)


def check_exprs(exprs: list[RawExpr]) -> list[Definition]:
    """Check every expression; return the definitions (pragmas dropped) in source order.

    :param exprs: :class:`~.parser.RawExpr` items.
    :raise SchemaError: on the first structural defect.
    """
    out: list[Definition] = []
    for expr in exprs:
        defn = _one(expr.data, expr.fname, expr.line, expr.doc)
        if defn is not None:
            out.append(defn)
    return out
