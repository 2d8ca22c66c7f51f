"""QEMU's precopy schedule: when to sync the dirty log, when to switch over, how much to send.

The runtime moves bytes; this core decides, from numbers only (no clock, no I/O), the way QEMU's
migration thread does each time round its loop (``migration_iteration_run`` and
``migration_rate_limit``; ``../shared/reference/qemu.md`` §8):

1. **Rate limit.**  ``max-bandwidth`` bytes per second become an allowance of one tenth of it
   per 100 ms period (``BUFFER_DELAY``), counted in QEMU's wire bytes
   (:mod:`qmp_server.engine.wire_cost`).  QEMU tests the limit before each page, so a period
   sends pages until the allowance is *exceeded* -- the page that crosses it still goes --
   then the thread sleeps to the end of the period.  Nothing is carried over: each period
   starts from zero.  ``max-bandwidth`` 0 is no limit.
2. **Convergence.**  ``pending`` is the RAM still to send (dirty pages × page size, whatever
   their content) plus device data.  Below the threshold (bandwidth × downtime-limit) the
   estimate is made exact: a dirty-log sync (a ``MIGRATION_PASS``).  If ``pending`` is then
   zero or still below the threshold -- and the switchover gate is open -- the source stops the
   guest and completes.
3. **The switchover gate** (switchover-ack, 8.1+): 8.1 and the precopy-initial-data series test
   it together with the convergence test at the top of an iteration; 10.0 tests it after the
   exact sync of the same iteration.  While it is closed and nothing is left to send, the
   source syncs about every 100 ms (:data:`ACK_WAIT_SYNC`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from qmp_server.profiles import Profile

__all__ = ["ACK_WAIT_SYNC", "Decision", "PrecopySchedule", "RateLimit"]

#: How long a source whose switchover waits for the ACK sleeps between dirty syncs (s).
ACK_WAIT_SYNC = 0.1
#: QEMU's XFER_LIMIT_RATIO: periods per second of the rate limit.
_PERIODS_PER_SECOND = 10
_UNLIMITED = 1 << 62


class RateLimit:
    """QEMU's per-period allowance, in QEMU's stream bytes (rule 1)."""

    def __init__(self, max_bandwidth: int) -> None:
        self.allowance = _UNLIMITED
        self.set_bandwidth(max_bandwidth)

    @property
    def unlimited(self) -> bool:
        return self.allowance >= _UNLIMITED

    def set_bandwidth(self, max_bandwidth: int) -> None:
        """``max-bandwidth`` bytes/s; QEMU applies a change from the next period on."""
        per_period = max_bandwidth // _PERIODS_PER_SECOND
        self.allowance = _UNLIMITED if per_period <= 0 else per_period

    def exceeded(self, used: int) -> bool:
        """QEMU: the limit is exceeded when the period's bytes are *above* the allowance."""
        return used > self.allowance


class Decision(enum.Enum):
    """What the source does at the top of an iteration of QEMU's loop."""

    COMPLETE = "complete"  # stop the guest and send the rest
    SYNC = "sync"  # make pending exact (a dirty sync), then ask :meth:`after_sync`
    ITERATE = "iterate"  # send a section: pages and device data, up to the rate limit
    WAIT_ACK = "wait-ack"  # converged, nothing left to send, the gate is closed


@dataclass
class PrecopySchedule:
    """The decisions of one outgoing precopy migration (rules 2 and 3)."""

    profile: Profile
    #: bandwidth × downtime-limit, bytes (0 until the first period ends)
    threshold: int = 0

    def _converged(self, pending: int) -> bool:
        return pending == 0 or pending < self.threshold

    def next(
        self, *, remaining: int, pending: int, gate_open: bool, since_last_sync: float
    ) -> Decision:
        """The top of an iteration: ``remaining`` RAM bytes and ``pending`` RAM + device bytes,
        as estimated (no sync)."""
        if pending == 0 and self.threshold == 0 and gate_open:
            # Nothing to send before the first period set a threshold: QEMU completes
            # without the exact sync (live 10.0, -machine none: PASS 1, active, STOP, PASS 2).
            return Decision.COMPLETE
        # 7.2 makes RAM exact when the RAM left is below the threshold; 8.0+ when the estimate is
        basis = pending if self.profile.since(8, 0) else remaining
        if self._converged(basis) and (gate_open or since_last_sync >= ACK_WAIT_SYNC):
            return Decision.SYNC
        if pending == 0:
            return Decision.WAIT_ACK
        return Decision.ITERATE

    def after_sync(self, *, pending: int, gate_open: bool) -> Decision:
        """After the exact sync: switch over, or go on."""
        if self._converged(pending) and gate_open:
            return Decision.COMPLETE
        return Decision.WAIT_ACK if pending == 0 else Decision.ITERATE

    def after_ack_wait(self, *, gate_open: bool) -> bool:
        """A wait for the ACK ended: 10.0 switches over on the pass it just made (it tests the
        gate after the exact sync; 8.1 at the top of the next iteration, one pass later)."""
        return self.profile.since(10, 0) and gate_open
