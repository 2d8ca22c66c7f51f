"""QEMU's precopy decisions per profile: rate limit, exact syncs, switchover, the ACK gate."""

from __future__ import annotations

import pytest

from qmp_server.engine.precopy import ACK_WAIT_SYNC, Decision, PrecopySchedule, RateLimit
from qmp_server.profiles import PROFILES


def test_rate_limit_is_a_tenth_per_period_and_exceeded_only_above() -> None:
    limit = RateLimit(2_000_000)
    assert limit.allowance == 200_000 and not limit.unlimited
    assert not limit.exceeded(200_000) and limit.exceeded(200_001)
    limit.set_bandwidth(0)
    assert limit.unlimited and not limit.exceeded(1 << 40)
    limit.set_bandwidth(9)  # below 10 bytes/s: QEMU's "no limit"
    assert limit.unlimited


def _next(schedule: PrecopySchedule, **kw: object) -> Decision:
    args = {"remaining": 0, "pending": 0, "gate_open": True, "since_last_sync": 0.0} | kw
    return schedule.next(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize("profile", ["7.2", "default", "8.1", "10.0"])
def test_nothing_pending_before_the_first_period_completes_without_a_sync(profile: str) -> None:
    assert _next(PrecopySchedule(PROFILES[profile])) is Decision.COMPLETE


def test_a_sync_happens_only_below_the_threshold() -> None:
    schedule = PrecopySchedule(PROFILES["7.2"], threshold=150_000)
    assert _next(schedule, remaining=159_744, pending=159_744) is Decision.ITERATE
    assert _next(schedule, remaining=155_648, pending=155_648) is Decision.ITERATE
    assert _next(schedule, remaining=147_456, pending=147_456) is Decision.SYNC
    # the sync found the idle guest's hot pages dirty again: still above, so iterate
    assert schedule.after_sync(pending=163_840, gate_open=True) is Decision.ITERATE
    assert schedule.after_sync(pending=16_384, gate_open=True) is Decision.COMPLETE


def test_7_2_looks_at_ram_and_8_0_at_everything_pending() -> None:
    old = PrecopySchedule(PROFILES["7.2"], threshold=100_000)
    new = PrecopySchedule(PROFILES["default"], threshold=100_000)
    # little RAM left, much device data
    assert _next(old, remaining=4096, pending=4096 + 10**6) is Decision.SYNC
    assert _next(new, remaining=4096, pending=4096 + 10**6) is Decision.ITERATE


@pytest.mark.parametrize("profile", ["default", "8.1", "10.0"])
def test_a_closed_gate_holds_the_switchover_and_paces_the_syncs(profile: str) -> None:
    schedule = PrecopySchedule(PROFILES[profile], threshold=1_000_000)
    closed = {"gate_open": False}
    assert _next(schedule, **closed, since_last_sync=0.01) is Decision.WAIT_ACK
    assert _next(schedule, **closed, since_last_sync=ACK_WAIT_SYNC) is Decision.SYNC
    assert schedule.after_sync(pending=0, gate_open=False) is Decision.WAIT_ACK
    assert schedule.after_sync(pending=8192, gate_open=False) is Decision.ITERATE
    # when the wait ends with the gate open: 10.0 switches over on that pass, 8.1 a pass later
    assert schedule.after_ack_wait(gate_open=True) is (profile == "10.0")
    assert not schedule.after_ack_wait(gate_open=False)
