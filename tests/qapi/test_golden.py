"""Golden negative cases: each golden/<case>.json must fail with the text in <case>.err.

Set ``QMP_SERVER_REGENERATE=1`` to rewrite the .err files from the current output (then review
the diff, as with QEMU's qapi-schema tests).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from qmp_server.errors import SchemaError
from qmp_server.qapi import load_schema

GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(p.stem for p in GOLDEN.glob("*.json"))
REGENERATE = os.environ.get("QMP_SERVER_REGENERATE") == "1"


def _render(case: str) -> str:
    try:
        load_schema(GOLDEN / f"{case}.json", frozenset())
    except SchemaError as err:
        # Paths relative to the golden directory, so the files do not depend on the checkout.
        text = str(err).replace(str(GOLDEN) + os.sep, "")
        return text + "\n"
    return "(no error)\n"


def test_cases_exist() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str) -> None:
    actual = _render(case)
    expected_file = GOLDEN / f"{case}.err"
    if REGENERATE or not expected_file.exists():
        expected_file.write_text(actual)
        if not REGENERATE:
            pytest.fail(f"{expected_file.name} was missing; written, please review")
    assert actual == expected_file.read_text()
    assert actual != "(no error)\n"
