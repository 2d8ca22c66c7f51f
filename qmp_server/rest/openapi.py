"""The OpenAPI document: FastAPI's skeleton, with request and response bodies from the QAPI schema.

Contract: :func:`build_openapi` takes the routes' skeleton and the loaded
:class:`~qmp_server.qapi.model.Schema`, and fills in, for every route that mirrors a command,
the JSON Schema (Draft 2020-12, which OpenAPI 3.1 uses) of the command's arguments and return
type, as :mod:`qmp_server.qapi.jsonschema` derives them.  Each QAPI ``$defs`` entry becomes a
``components/schemas`` entry of the same name, and ``$ref`` pointers are rewritten to match.
``POST /api/v1/qmp/{command}`` is listed as one path per command of the loaded schema, so a
fuzzer knows every command's own arguments.  Error responses are ``ErrorBody``.
"""

from __future__ import annotations

import copy
from typing import Any

from qmp_server.qapi.jsonschema import type_schema
from qmp_server.qapi.model import ArrayType, BuiltinType, ObjectType, QAPIType, Schema
from qmp_server.rest.deps import is_read_only_command

__all__ = ["COMMAND_ROUTES", "ERROR_BODY", "build_openapi"]

ERROR_BODY: dict[str, Any] = {
    "type": "object",
    "title": "ErrorBody",
    "description": "A QMP error (class and desc as QEMU sends them) or an HTTP-layer refusal",
    "properties": {"class": {"type": "string"}, "desc": {"type": "string"}},
    "required": ["class", "desc"],
    "additionalProperties": False,
}

#: (method, path) of the routes that mirror one command: request from its arguments, response
#: from its return type.
COMMAND_ROUTES: dict[tuple[str, str], tuple[str | None, str]] = {
    ("get", "/api/v1/capabilities"): (None, "query-migrate-capabilities"),
    ("patch", "/api/v1/capabilities"): ("migrate-set-capabilities", "query-migrate-capabilities"),
    ("get", "/api/v1/parameters"): (None, "query-migrate-parameters"),
    ("patch", "/api/v1/parameters"): ("migrate-set-parameters", "query-migrate-parameters"),
    ("get", "/api/v1/status"): (None, "query-status"),
    ("get", "/api/v1/schema"): (None, "query-qmp-schema"),
}

_ERROR_STATUSES = {
    "400": "Bad arguments, or the command refused (GenericError)",
    "401": "Missing or wrong bearer token",
    "403": "Read-only mirror, or a URI refused over HTTP",
    "404": "Unknown command (CommandNotFound)",
    "409": "The VM's state forbids it (e.g. a migration is in progress)",
    "413": "Request body too large",
}
_READ_ERRORS = ("400",)
_WRITE_ERRORS = ("400", "401", "403", "409", "413")


class _Embedder:
    """Moves QAPI JSON Schema documents into ``components/schemas``."""

    def __init__(self, components: dict[str, Any]) -> None:
        self.components = components

    def _rewrite(self, node: Any, root: str | None) -> Any:
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                if key == "$ref" and isinstance(value, str):
                    if value == "#":
                        assert root is not None
                        value = f"#/components/schemas/{root}"
                    elif value.startswith("#/$defs/"):
                        value = "#/components/schemas/" + value[len("#/$defs/") :]
                    out[key] = value
                else:
                    out[key] = self._rewrite(value, root)
            return out
        if isinstance(node, list):
            return [self._rewrite(v, root) for v in node]
        return node

    def embed(self, t: QAPIType) -> dict[str, Any]:
        doc = copy.deepcopy(type_schema(t))
        doc.pop("$schema", None)
        for name, sub in doc.pop("$defs", {}).items():
            self.components.setdefault(name, self._rewrite(sub, name))
        named = not isinstance(t, BuiltinType | ArrayType) and not (
            isinstance(t, ObjectType) and t.implicit
        )
        if named:
            self.components.setdefault(t.name, self._rewrite(doc, t.name))
            return {"$ref": f"#/components/schemas/{t.name}"}
        rewritten: dict[str, Any] = self._rewrite(doc, None)
        return rewritten


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _errors(codes: tuple[str, ...]) -> dict[str, Any]:
    ref = {"$ref": "#/components/schemas/ErrorBody"}
    return {code: {"description": _ERROR_STATUSES[code], "content": _json(ref)} for code in codes}


def _request_body(schema: Schema, emb: _Embedder, name: str) -> dict[str, Any]:
    cmd = schema.commands[name]
    arg = cmd.arg_type or schema.empty_type
    required = bool(cmd.arg_type and any(not m.optional for m in cmd.arg_type.members))
    return {"required": required, "content": _json(emb.embed(arg))}


def _returns(schema: Schema, emb: _Embedder, name: str) -> dict[str, Any]:
    ret = schema.commands[name].ret_type
    out = emb.embed(ret) if ret is not None else {"type": "object", "maxProperties": 0}
    return {"description": f"The return value of '{name}'", "content": _json(out)}


def build_openapi(skeleton: dict[str, Any], schema: Schema) -> dict[str, Any]:
    """Fill ``skeleton`` (FastAPI's ``get_openapi`` output) from the QAPI schema; returns it."""
    doc = skeleton
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["ErrorBody"] = ERROR_BODY
    components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    emb = _Embedder(schemas)
    paths = doc.setdefault("paths", {})
    for (method, path), (arg_cmd, ret_cmd) in COMMAND_ROUTES.items():
        op = paths.get(path, {}).get(method)
        if op is None or ret_cmd not in schema.commands:
            continue
        op["responses"] = {
            "200": _returns(schema, emb, ret_cmd),
            **_errors(_WRITE_ERRORS if arg_cmd else _READ_ERRORS),
        }
        if arg_cmd is not None and arg_cmd in schema.commands:
            op["requestBody"] = _request_body(schema, emb, arg_cmd)
            op["security"] = [{"bearer": []}]
    migration = paths.get("/api/v1/migration", {}).get("get")
    if migration is not None and "query-migrate" in schema.commands:
        info = _returns(schema, emb, "query-migrate")["content"]["application/json"]["schema"]
        migration["responses"]["200"]["content"] = _json(
            {
                "type": "object",
                "properties": {"info": info, "derived": {"type": "object"}},
                "required": ["info", "derived"],
            }
        )
    for name in schema.commands:
        read_only = is_read_only_command(name)
        op = {
            "operationId": f"qmp-{name}",
            "summary": f"Execute the QMP command '{name}'",
            "tags": ["qmp"],
            "requestBody": _request_body(schema, emb, name),
            "responses": {
                "200": _returns(schema, emb, name),
                **_errors(("400", "404", "409", "413") if read_only else (*_WRITE_ERRORS, "404")),
            },
        }
        if not read_only:
            op["security"] = [{"bearer": []}]
        paths[f"/api/v1/qmp/{name}"] = {"post": op}
    return doc
