"""Replay two-party migration transcripts recorded from a live QEMU.

Each fixture holds a scenario (a source and a destination driven step by step) and the run
QEMU gave: ``fixtures/qemu-7.2/`` from QEMU 7.2 (``tools/record_two_party.py``),
``fixtures/qemu-10.0/`` from QEMU 10.0.13 in a Debian trixie chroot, QMP over TCP
(``tools/record_two_party.py --chroot /work/qemu10``).  The test runs the same scenario against
two ``python -m qmp_server --compat VERSION`` processes and compares the normalised views (see
``_tp_harness.view`` and docs/conformance.md, "Two-party migration transcripts"): per side, the
same events in the same order, the same replies (query-migrate counters masked), the same exit
behaviour.  Scenarios with ``"exact_counters": true`` also compare the source's final
query-migrate member by member (``_tp_harness.exact_counter_diffs``).

With ``QMP_SERVER_REPLAY_TARGET=qemu`` the very same run goes against the real QEMU
(``QMP_SERVER_QEMU`` / ``QMP_SERVER_QEMU10_CHROOT``); that run must pass: it proves the
recordings and the normaliser are stable.  A scenario with ``"replay": false`` (recorded for
reference, e.g. postcopy, which qmp-server does not model yet) is skipped against both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .. import _harness as h
from . import _tp_harness as tp

#: version -> where its transcripts are
FIXTURES: dict[str, Path] = {"7.2": tp.FIXTURE_DIR, "10.0": tp.FIXTURE_DIR_100}
TARGETS = {version: h.target_from_env(version) for version in FIXTURES}


def _cases() -> list[Any]:
    cases = []
    for version, directory in FIXTURES.items():
        for path in sorted(directory.glob("*.json")):
            marks: list[Any] = [pytest.mark.slow]
            if TARGETS[version].kind == "qemu":
                marks.append(pytest.mark.live_qemu)
            replay = tp.load_scenario(path.stem).get("replay", True)
            if replay is False or (isinstance(replay, list) and version not in replay):
                # recorded from QEMU for reference, or a race in that version's QEMU
                # (record_two_party.py --check shows which are stable)
                marks.append(pytest.mark.skip(reason="recorded for reference only"))
            cases.append(pytest.param(version, path.stem, marks=marks,
                                      id=f"two-party-{version}/{path.stem}"))  # fmt: skip
    return cases


@pytest.mark.parametrize(("version", "name"), _cases())
def test_replay_two_party(version: str, name: str) -> None:
    target = TARGETS[version]
    why = h.target_available(target)
    if why:
        pytest.skip(why)
    fixture = tp.load_fixture(name, FIXTURES[version])
    scenario = fixture["scenario"]
    # An exact-counter comparison depends on time (QEMU's bandwidth measure decides the
    # switchover point); a stall of this VM (seen: one period of 700 ms under the full suite)
    # moves it as a stalled QEMU would move.  Such a scenario gets up to two more runs; the
    # views and counters of one run must then all match.
    attempts = _EXACT_ATTEMPTS if scenario.get("exact_counters") else 1
    diff = ""
    for _ in range(attempts):
        diff = _replay_once(target, fixture, version)
        if not diff:
            return
    pytest.fail(
        f"two-party/{name}: {target.kind} differs from QEMU {version} "
        f"(normalised views; see docs/conformance.md)\n{diff}",
        pytrace=False,
    )


#: runs of an exact-counter scenario before it fails (see above)
_EXACT_ATTEMPTS = 3


def _replay_once(target: Any, fixture: dict[str, Any], version: str) -> str:
    """Run the fixture's scenario once; the differences from QEMU's run ("" if none)."""
    scenario = fixture["scenario"]
    expected = tp.view(fixture["run"], scenario)
    try:
        run = tp.run_scenario(target, scenario)
    except h.StartError as e:
        pytest.fail(f"{target.kind} did not start: {e}", pytrace=False)
    actual = tp.view(run, scenario)
    diff = tp.diff_views(expected, actual, target.kind, f"QEMU {version}")
    if scenario.get("exact_counters"):
        spread = tp.counter_spread(scenario, version)
        counters = tp.exact_counter_diffs(fixture["run"], run, spread, target.kind)
        if counters:
            diff += "\n\nsource's final query-migrate, exact counters:\n" + "\n".join(counters)
    return diff
