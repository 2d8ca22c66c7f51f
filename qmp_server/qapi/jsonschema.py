"""Stage 4b: JSON Schema (Draft 2020-12) for QAPI types, for validation and for OpenAPI.

Contract: :func:`type_schema` maps a :class:`~.model.QAPIType` to a JSON Schema document whose
root describes that type; every named enum, struct, union or alternate it refers to is in
``$defs`` and referred to with ``$ref`` (so recursive types work).  Implicit argument types,
arrays and built-ins are written inline.

The schemas accept exactly what QEMU's QAPI input visitor accepts:

* ``integer`` means a JSON integer (validators must not count ``true`` or ``1.0``: see
  :data:`~.validate.QAPI_TYPE_CHECKER`); the bounds are those of the C type, except that
  ``uint64`` and ``size`` also accept negative int64 values, which QEMU wraps to 2**64 + v;
* ``number`` is any JSON number, ``any`` is anything;
* objects reject unknown members; an optional member, when present, must have its type
  (``null`` is not "absent").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qmp_server._types import INT64_MIN
from qmp_server.qapi.model import (
    AlternateType,
    ArrayType,
    BuiltinType,
    EnumType,
    ObjectType,
    QAPIType,
)

if TYPE_CHECKING:
    from qmp_server._types import JSONObject

__all__ = ["DIALECT", "type_schema"]

DIALECT = "https://json-schema.org/draft/2020-12/schema"


class _Gen:
    def __init__(self, root: QAPIType) -> None:
        self.root = root
        self.defs: dict[str, JSONObject] = {}

    def ref(self, t: QAPIType) -> JSONObject:
        if isinstance(t, BuiltinType):
            return self.builtin(t)
        if isinstance(t, ArrayType):
            return {"type": "array", "items": self.ref(t.element_type)}
        if isinstance(t, ObjectType) and t.implicit:
            return self.body(t)
        if t is self.root:
            return {"$ref": "#"}
        if t.name not in self.defs:
            self.defs[t.name] = {}  # placeholder: breaks recursion
            self.defs[t.name] = self.body(t)
        return {"$ref": f"#/$defs/{t.name}"}

    @staticmethod
    def builtin(t: BuiltinType) -> JSONObject:
        if t.int_range is not None:
            lo, hi = t.int_range
            if t.name in ("uint64", "size"):
                lo = INT64_MIN
            return {"type": "integer", "minimum": lo, "maximum": hi}
        kind = {"string": "string", "number": "number", "boolean": "boolean", "null": "null"}
        if t.json_type in kind:
            return {"type": kind[t.json_type]}
        return {}

    def object_parts(self, t: ObjectType) -> tuple[JSONObject, list[str]]:
        props = {m.name: self.ref(m.type) for m in t.members}
        required = [m.name for m in t.members if not m.optional]
        return props, required

    def branches(self, t: ObjectType) -> list[JSONObject]:
        """One ``if``/``then`` per union branch (nested unions nest their own)."""
        assert t.variants is not None
        tag = t.variants.tag.name
        out: list[JSONObject] = []
        for case in t.variants.cases:
            vprops, vreq = self.object_parts(case.type)
            then: JSONObject = {"properties": vprops}
            if vreq:
                then["required"] = vreq
            if case.type.variants is not None:
                then["allOf"] = self.branches(case.type)
            out.append(
                {
                    "if": {"properties": {tag: {"const": case.name}}, "required": [tag]},
                    "then": then,
                }
            )
        return out

    def body(self, t: QAPIType) -> JSONObject:
        if isinstance(t, BuiltinType | ArrayType):
            return self.ref(t)
        out: JSONObject = {"title": t.name} if not getattr(t, "implicit", False) else {}
        if t.doc:
            out["description"] = t.doc.split("\n\n")[0]
        if "deprecated" in t.features:
            out["deprecated"] = True
        if isinstance(t, EnumType):
            out.update({"type": "string", "enum": list(t.values)})
        elif isinstance(t, AlternateType):
            out["anyOf"] = [self.ref(b.type) for b in t.branches]
        else:
            assert isinstance(t, ObjectType)
            props, required = self.object_parts(t)
            out["type"] = "object"
            out["properties"] = props
            if required:
                out["required"] = required
            if t.variants is None:
                out["additionalProperties"] = False
            else:
                out["allOf"] = self.branches(t)
                out["unevaluatedProperties"] = False
        return out


def type_schema(t: QAPIType) -> JSONObject:
    """A self-contained JSON Schema document for ``t``."""
    gen = _Gen(t)
    doc: JSONObject = {"$schema": DIALECT}
    doc.update(gen.body(t))
    if gen.defs:
        doc["$defs"] = gen.defs
    return doc
