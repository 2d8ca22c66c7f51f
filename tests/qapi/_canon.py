"""Compare introspection payloads whatever their type numbering."""

from __future__ import annotations

import json
from typing import Any

BUILTINS = {"int", "str", "bool", "number", "null", "any"}


def canonical(entries: list[dict[str, Any]], root: str) -> list[dict[str, Any]]:
    """The entries reachable from ``root``, renumbered in walk order (to compare schemas)."""
    by_name = {e["name"]: e for e in entries}
    names: dict[str, str] = {}

    def nm(n: str) -> str:
        if n.startswith("["):
            return "[" + nm(n[1:-1]) + "]"
        if n in BUILTINS:
            return n
        return names.setdefault(n, f"T{len(names)}")

    out: list[dict[str, Any]] = []
    seen: set[str] = set()

    def walk(n: str) -> None:
        if n.startswith("["):
            walk(n[1:-1])
            return
        if n in seen:
            return
        seen.add(n)
        e = json.loads(json.dumps(by_name[n]))
        refs: list[str] = []

        def ref(v: str) -> str:
            refs.append(v)
            return nm(v)

        if e["meta-type"] in ("command", "event"):
            e["arg-type"] = ref(e["arg-type"])
            if "ret-type" in e:
                e["ret-type"] = ref(e["ret-type"])
        else:
            e["name"] = nm(e["name"])
            for m in e.get("members", []) if e["meta-type"] in ("object", "alternate") else []:
                m["type"] = ref(m["type"])
            for v in e.get("variants", []):
                v["type"] = ref(v["type"])
            if e["meta-type"] == "array":
                e["element-type"] = ref(e["element-type"])
        out.append(e)
        for r in refs:
            walk(r)

    walk(root)
    return out
