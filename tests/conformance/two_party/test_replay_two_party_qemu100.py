"""Replay two-party migration transcripts recorded from a live QEMU 10.0.

The fixtures in ``fixtures/qemu-10.0/`` were recorded by
``tools/record_two_party.py --chroot /work/qemu10`` (QEMU 10.0.13 in a Debian
trixie chroot, QMP over TCP).  The test runs the same scenario against two
``python -m qmp_server --compat 10.0`` processes and compares the normalised
views exactly as the 7.2 two-party replay does.  ``QMP_SERVER_REPLAY_TARGET=qemu``
runs it against the chroot's QEMU (``QMP_SERVER_QEMU10_CHROOT``).  Fixtures
that do not match yet live in ``fixtures/qemu-10.0/pending/`` (not collected).
"""

from __future__ import annotations

from typing import Any

import pytest

from .. import _harness as h
from . import _tp_harness as tp

TARGET = h.target_from_env("10.0")


def _cases() -> list[Any]:
    cases = []
    for path in sorted(tp.FIXTURE_DIR_100.glob("*.json")):
        marks: list[Any] = [pytest.mark.slow]
        if TARGET.kind == "qemu":
            marks.append(pytest.mark.live_qemu)
        cases.append(pytest.param(path.stem, id=f"two-party-10.0/{path.stem}", marks=marks))
    return cases


@pytest.mark.parametrize("name", _cases())
def test_replay_two_party_qemu100(name: str) -> None:
    why = h.target_available(TARGET)
    if why:
        pytest.skip(why)
    fixture = tp.load_fixture(name, tp.FIXTURE_DIR_100)
    scenario = fixture["scenario"]
    expected = tp.view(fixture["run"], scenario)
    try:
        run = tp.run_scenario(TARGET, scenario)
    except h.StartError as e:
        pytest.fail(f"{TARGET.kind} did not start: {e}", pytrace=False)
    actual = tp.view(run, scenario)
    diff = tp.diff_views(expected, actual, TARGET.kind, "QEMU 10.0")
    if diff:
        pytest.fail(
            f"two-party/{name}: {TARGET.kind} differs from QEMU 10.0 "
            f"(normalised views; see docs/conformance.md)\n{diff}",
            pytrace=False,
        )
