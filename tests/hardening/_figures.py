"""Figures the hardening tests measure, collected into ``artifacts/reliability-figures.json``.

Each test calls :func:`record` with its promise id and counts (requests served, faults injected,
inputs tried, bytes compared).  Running this file prints the table of ``docs/reliability.md``::

    .venv/bin/pytest tests/hardening -q && .venv/bin/python tests/hardening/_figures.py

``--update docs/reliability.md`` rewrites the table between the ``figures:begin`` and
``figures:end`` markers of that file instead.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
FIGURES = ROOT / "artifacts" / "reliability-figures.json"


def _load() -> dict[str, Any]:
    try:
        data = json.loads(FIGURES.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def record(test: str, **counts: int) -> None:
    """Add ``counts`` to ``test``'s figures (read-modify-write; tests run in one process)."""
    data = _load()
    entry = data.setdefault(test, {})
    for key, value in counts.items():
        entry[key] = int(value)
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    tmp = FIGURES.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    tmp.replace(FIGURES)


def table() -> str:
    rows = ["| test | figures |", "|---|---|"]
    for test, counts in sorted(_load().items()):
        shown = ", ".join(f"{k.replace('_', ' ')}: {v:,}" for k, v in sorted(counts.items()))
        rows.append(f"| `{test}` | {shown} |")
    return "\n".join(rows)


BEGIN, END = "<!-- figures:begin -->", "<!-- figures:end -->"


def update(doc: Path) -> None:
    text = doc.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    doc.write_text(f"{head}{BEGIN}\n{table()}\n{END}{tail}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--update":
        update(Path(sys.argv[2]))
    else:
        sys.stdout.write(table() + "\n")
