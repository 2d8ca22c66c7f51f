"""The exact comparison of the source's final query-migrate (``_tp_harness.exact_counter_diffs``).

Runs nothing: a recorded QEMU 7.2 transcript is compared with copies of itself whose final
query-migrate reply was changed.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from . import _tp_harness as tp

NAME = "bandwidth-pc64-2M"


def _recorded() -> dict[str, Any]:
    run: dict[str, Any] = tp.load_fixture(NAME)["run"]
    return run


def _with(run: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``run`` whose last source query-migrate reply has ``change`` applied
    (dotted member path -> new value, or ``tp.MISSING`` to drop the member)."""
    out = copy.deepcopy(run)
    stream = out["sides"]["src"]["stream"]
    i = max(
        j for j, e in enumerate(stream) if "line" in e and '"status": "completed"' in e["line"]
        and '"ram"' in e["line"]
    )  # fmt: skip
    reply = json.loads(stream[i]["line"])
    for path, value in change.items():
        *parents, leaf = path.split(".")
        obj = reply["return"]
        for p in parents:
            obj = obj[p]
        if value is tp.MISSING:
            del obj[leaf]
        else:
            obj[leaf] = value
    stream[i]["line"] = json.dumps(reply)
    return out


def test_identical_run_passes() -> None:
    run = _recorded()
    assert tp.exact_counter_diffs(run, copy.deepcopy(run), {}) == []


@pytest.mark.parametrize(
    ("change", "ok"),
    [
        ({"ram.normal": 116}, False),
        ({"ram.transferred": 619695}, False),
        ({"ram.dirty-sync-count": 4}, False),
        ({"ram.skipped": tp.MISSING}, False),
        ({"ram.page-size": 4096.0}, False),  # a double where QEMU sends an int
        ({"total-time": 202 + 100 + 20}, True),  # 100 ms + 10 %
        ({"total-time": 202 + 100 + 21}, False),
        ({"downtime": 100}, True),
        ({"setup-time": 150}, False),
        ({"ram.mbps": 28.974 * 1.14}, True),
        ({"ram.mbps": 28.974 * 1.3}, False),
        ({"ram.pages-per-second": 1}, True),
        ({"ram.pages-per-second": 1.5}, False),
    ],
)
def test_members(change: dict[str, Any], ok: bool) -> None:
    run = _recorded()
    base = _with(run, {"total-time": 202, "ram.mbps": 28.974})
    diffs = tp.exact_counter_diffs(base, _with(base, change), {})
    assert (diffs == []) is ok, diffs


def test_spread_allows_exactly_what_qemu_showed() -> None:
    base = _recorded()
    fewer = _with(base, {"ram.dirty-sync-count": 2})
    assert tp.exact_counter_diffs(base, fewer, {"ram.dirty-sync-count": 1}) == []
    more = _with(base, {"ram.dirty-sync-count": 5})
    assert tp.exact_counter_diffs(base, more, {"ram.dirty-sync-count": 1}) != []
