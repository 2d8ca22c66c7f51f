"""Stage 4a: the ``query-qmp-schema`` payload (a list of SchemaInfo objects) for a schema.

Contract: :func:`introspect` renders a :class:`~.model.Schema` the way QEMU 7.2 does, as
observed on a live ``query-qmp-schema``:

* every command and event comes first, in definition order;
* then every type they use, transitively, in order of first use: a type is queued the first
  time a command, event or already-queued type refers to it (an array is queued just before
  its element type, which it refers to);
* names of types other than built-ins are masked as decimal numbers, numbered in the same
  order of first use, and arrays are named ``[<element>]``; commands and events without
  arguments (or without a return value) refer to the empty object type;
* all integer types are shown as the built-in ``int`` (and arrays of them as ``[int]``);
* a member's ``default`` is ``null`` for optional members; ``allow-oob`` appears only when
  true, ``features`` only when not empty;
* within each object the keys come in the order QEMU emits them (that order is a QDict hash
  artefact, but it costs nothing to match it).

Whether enum entries carry ``values``, ``members`` or both follows the schema's own
``SchemaInfoEnum`` type when it defines one (QEMU 7.2 has both; ``values`` is deprecated).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qmp_server.qapi.model import (
    EMPTY_OBJECT,
    AlternateType,
    ArrayType,
    BuiltinType,
    Command,
    EnumType,
    Member,
    ObjectType,
    QAPIType,
    Schema,
)

if TYPE_CHECKING:
    from qmp_server._types import JSONObject

__all__ = ["introspect"]


class _Introspector:
    def __init__(self, schema: Schema, unmask: bool) -> None:
        self.schema = schema
        self.unmask = unmask
        self.names: dict[str, str] = {}
        self.queue: list[QAPIType] = []
        self.queued: set[str] = set()
        int_type = schema.lookup_type("int")
        assert isinstance(int_type, BuiltinType)
        self.int_type = int_type
        enum_info = schema.lookup_type("SchemaInfoEnum")
        if isinstance(enum_info, ObjectType):
            self.enum_keys = {m.name for m in enum_info.members} & {"members", "values"}
        else:
            self.enum_keys = {"members", "values"}

    def name(self, t: QAPIType) -> str:
        if self.unmask:
            return t.name
        if t.name not in self.names:
            self.names[t.name] = str(len(self.names))
        return self.names[t.name]

    def use(self, t: QAPIType) -> str:
        """Queue ``t`` if it is new; return how the payload refers to it."""
        if isinstance(t, BuiltinType) and t.json_type == "int":
            t = self.int_type
        elif (
            isinstance(t, ArrayType)
            and isinstance(t.element_type, BuiltinType)
            and t.element_type.json_type == "int"
        ):
            t = ArrayType("intList", self.int_type)
        if t.name not in self.queued:
            self.queued.add(t.name)
            self.queue.append(t)
        if isinstance(t, BuiltinType):
            return t.name
        if isinstance(t, ArrayType):
            return "[" + self.use(t.element_type) + "]"
        return self.name(t)

    def member(self, m: Member) -> JSONObject:
        out: JSONObject = {"name": m.name}
        if m.optional:
            out["default"] = None
        out["type"] = self.use(m.type)
        if m.features:
            out["features"] = list(m.features)
        return out

    def type_entry(self, t: QAPIType) -> JSONObject:
        if isinstance(t, BuiltinType):
            return {"name": t.name, "json-type": t.json_type, "meta-type": "builtin"}
        if isinstance(t, ArrayType):
            return {
                "name": self.use(t),
                "element-type": self.use(t.element_type),
                "meta-type": "array",
            }
        out: JSONObject = {"name": self.name(t)}
        if isinstance(t, EnumType):
            if "members" in self.enum_keys:
                out["members"] = [
                    {"name": m.name, **({"features": list(m.features)} if m.features else {})}
                    for m in t.members
                ]
            out["meta-type"] = "enum"
            if "values" in self.enum_keys:
                out["values"] = list(t.values)
        elif isinstance(t, ObjectType):
            members = [self.member(m) for m in t.members]
            if t.variants is not None:
                out["tag"] = t.variants.tag.name
                out["variants"] = [
                    {"case": v.name, "type": self.use(v.type)} for v in t.variants.cases
                ]
            out["members"] = members
            out["meta-type"] = "object"
        else:
            assert isinstance(t, AlternateType)
            out["members"] = [{"type": self.use(b.type)} for b in t.branches]
            out["meta-type"] = "alternate"
        if t.features:
            out["features"] = list(t.features)
        return out

    def run(self) -> list[JSONObject]:
        empty = self.schema.lookup_type(EMPTY_OBJECT)
        assert empty is not None
        trees: list[JSONObject] = []
        for ent in self.schema.entities:
            arg = self.use(ent.arg_type or empty)
            if isinstance(ent, Command):
                entry: JSONObject = {"name": ent.name, "ret-type": self.use(ent.ret_type or empty)}
                if ent.allow_oob:
                    entry["allow-oob"] = True
                entry["meta-type"] = "command"
            else:
                entry = {"name": ent.name, "meta-type": "event"}
            entry["arg-type"] = arg
            if ent.features:
                entry["features"] = list(ent.features)
            trees.append(entry)
        i = 0
        while i < len(self.queue):  # the queue grows while we walk it
            trees.append(self.type_entry(self.queue[i]))
            i += 1
        return trees


def introspect(schema: Schema, *, unmask: bool = False) -> list[JSONObject]:
    """Return the SchemaInfo list for ``schema``.

    :param unmask: show real type names instead of numbers (for debugging; QEMU's
        ``-unmask`` generator option does the same).
    """
    return _Introspector(schema, unmask).run()
