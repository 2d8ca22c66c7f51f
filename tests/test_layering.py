"""The architecture rule, enforced: pure cores never import I/O, web or runtime modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "qmp_server"
CORES = ("wire", "qapi", "engine", "commands", "hmp", "fleet")
FORBIDDEN = {
    "asyncio", "socket", "selectors", "threading", "time", "subprocess",
    "fastapi", "starlette", "pydantic", "uvicorn", "httpx",
    "qmp_server.runtime", "qmp_server.rest", "qmp_server.cli",
}  # fmt: skip


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize(
    "path",
    [p for core in CORES for p in sorted((PACKAGE / core).rglob("*.py"))],
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_core_module_imports_no_io(path: Path) -> None:
    bad = {
        name
        for name in _imports(path)
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)
    }
    assert not bad, f"{path.name} imports {sorted(bad)}"
