"""Replay QMP sessions recorded from a real QEMU 7.2 and compare byte for byte.

By default the target is qmp-server (``python -m qmp_server --compat 7.2``).
With ``QMP_SERVER_REPLAY_TARGET=qemu`` the very same replay runs against
``qemu-system-x86_64`` (override the binary with ``QMP_SERVER_QEMU``); that
run must pass 100%: it proves that the recordings are stable.

Only event timestamps and the version triple/package string are masked (see
``_harness.mask_line``); everything else, key order and line endings
included, must match exactly.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import pytest

from . import _harness as h

TARGET = h.target_from_env()


def _cases() -> list[Any]:
    cases = []
    for path in sorted(h.FIXTURE_DIR.glob("*.json")):
        fixture = h.load_fixture(path.stem)
        for sc in fixture["scenarios"]:
            marks: list[Any] = []
            if TARGET.kind == "qemu":
                marks.append(pytest.mark.live_qemu)
            if sc.get("replay") is False:
                marks.append(pytest.mark.skip(reason="recorded for reference only"))
            cases.append(pytest.param(path.stem, sc, id=f"{path.stem}/{sc['name']}", marks=marks))
    return cases


def _skip_if_target_missing() -> None:
    exe = TARGET.prefix[0]
    if TARGET.kind == "qemu" and not (os.path.exists(exe) or shutil.which(exe)):
        pytest.skip(f"{exe} not installed")


@pytest.mark.parametrize(("group", "scenario"), _cases())
def test_replay(group: str, scenario: dict[str, Any]) -> None:
    _skip_if_target_missing()
    if scenario.get("startup"):
        _check_startup(scenario)
        return
    recorded = scenario["steps"]
    try:
        mismatches, stderr = h.replay_session(TARGET, scenario, recorded)
    except h.StartError as e:
        pytest.fail(f"{TARGET.kind} did not start: {e}", pytrace=False)
    if mismatches:
        report = "\n\n".join(m.render() for m in mismatches)
        if stderr.strip():
            report += f"\n\n{TARGET.kind} stderr:\n{stderr.strip()[-2000:]}"
        pytest.fail(
            f"{group}/{scenario['name']}: {TARGET.kind} differs from QEMU 7.2 "
            f"(masked lines, '\\r\\n' shown as text)\n{report}",
            pytrace=False,
        )


def _check_startup(scenario: dict[str, Any]) -> None:
    expected = scenario["result"]
    run = dict(scenario)
    actual = h.run_startup(TARGET, run)
    exp = {
        "started": expected["started"],
        "exit_status": expected["exit_status"],
        "stderr": expected["stderr"],
    }
    act = {
        "started": actual["started"],
        "exit_status": actual["exit_status"],
        "stderr": actual["stderr"],
    }
    if exp != act:
        import difflib

        diff = "\n".join(
            difflib.unified_diff(
                [f"{k}: {v!r}" for k, v in exp.items()],
                [f"{k}: {v!r}" for k, v in act.items()],
                "recorded (QEMU 7.2)",
                TARGET.kind,
                lineterm="",
            )
        )
        pytest.fail(f"startup/{scenario['name']} argv={scenario['argv']!r}\n{diff}", pytrace=False)
