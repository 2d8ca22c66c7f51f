"""Replay two-party migration transcripts recorded from real QEMU 7.2.

Each fixture in ``fixtures/qemu-7.2/`` holds a scenario (a source and a
destination driven step by step) and the run QEMU 7.2 gave.  The test runs
the same scenario against two qmp-server processes
(``python -m qmp_server --compat 7.2 <the scenario's argv>``) and compares
the normalised views (see ``_tp_harness.view`` and docs/conformance.md,
"Two-party migration transcripts"): per side, the same events in the same
order, the same replies (query-migrate counters masked), the same exit
behaviour.

With ``QMP_SERVER_REPLAY_TARGET=qemu`` the very same run goes against
``qemu-system-x86_64`` (``QMP_SERVER_QEMU`` picks the binary); that run must
pass: it proves the recordings and the normaliser are stable.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import pytest

from .. import _harness as h
from . import _tp_harness as tp

TARGET = h.target_from_env()


def _cases() -> list[Any]:
    cases = []
    for path in sorted(tp.FIXTURE_DIR.glob("*.json")):
        marks: list[Any] = [pytest.mark.slow]
        if TARGET.kind == "qemu":
            marks.append(pytest.mark.live_qemu)
        cases.append(pytest.param(path.stem, id=f"two-party/{path.stem}", marks=marks))
    return cases


@pytest.mark.parametrize("name", _cases())
def test_replay_two_party(name: str) -> None:
    exe = TARGET.prefix[0]
    if TARGET.kind == "qemu" and not (os.path.exists(exe) or shutil.which(exe)):
        pytest.skip(f"{exe} not installed")
    fixture = tp.load_fixture(name)
    scenario = fixture["scenario"]
    expected = tp.view(fixture["run"], scenario)
    try:
        run = tp.run_scenario(TARGET, scenario)
    except h.StartError as e:
        pytest.fail(f"{TARGET.kind} did not start: {e}", pytrace=False)
    actual = tp.view(run, scenario)
    diff = tp.diff_views(expected, actual, TARGET.kind)
    if diff:
        pytest.fail(
            f"two-party/{name}: {TARGET.kind} differs from QEMU 7.2 "
            f"(normalised views; see docs/conformance.md)\n{diff}",
            pytrace=False,
        )
