"""``calc-dirty-rate`` / ``query-dirty-rate``: measuring how fast the guest dirties memory.

The answer's shape and the checks are QEMU's (recorded live, 7.2 and 10.0); the measurement
is taken from the modelled guest: the workload's count of written pages before and after the
measuring period, turned into the number of distinct pages that many random writes touch
(``N * (1 - exp(-writes / N))`` over ``N`` guest pages, what QEMU's page sampling and dirty
bitmap estimate), then into MB/s as QEMU reports it.

QEMU facts kept here:

* checks in order: a measurement already running, the period (7.2: ``calc-time`` 1-60 s;
  8.2+: 50-60000 ms with ``calc-time-unit``), ``sample-pages`` (page-sampling only, 128-16384),
  then the dirty-ring mode, which needs KVM's dirty ring (this model is TCG);
* ``start-time``: 7.2 reports seconds of QEMU's realtime clock (host monotonic), 10.0 wall
  clock seconds;
* ``sample-pages`` shows 512 while a dirty-bitmap measurement runs and 0 once it is done;
* QEMU 7.2 crashes (SIGSEGV) on the dirty-ring and dirty-bitmap modes under TCG: qmp-server
  answers as 10.0 does instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from qmp_server.errors import CommandError
from qmp_server.profiles import Profile

__all__ = ["DEFAULT_SAMPLE_PAGES", "DirtyRateMeter", "distinct_pages"]

DEFAULT_SAMPLE_PAGES = 512
PAGE_SIZE = 4096
_MIB = 1 << 20

#: ``counter()`` -> (pages written so far, guest pages)
PageCounter = Callable[[], "tuple[int, int]"]


def distinct_pages(writes: int, pages: int) -> float:
    """The expected number of distinct pages ``writes`` random page writes dirty."""
    if pages <= 0 or writes <= 0:
        return 0.0
    return pages * -math.expm1(-writes / pages)


class DirtyRateMeter:
    """The state of the last measurement (one per VM, as QEMU's)."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.status = "unstarted"
        self.start_time = 0
        self.calc_ms = 0
        self.sample_pages = 0
        self.mode = "page-sampling"
        self.dirty_rate: int | None = None
        self._start_count = 0

    def check(self, args: dict[str, Any]) -> tuple[int, int, str]:
        """Validate a ``calc-dirty-rate`` call; returns (period in ms, sample pages, mode).

        :raise CommandError: with QEMU's text.
        """
        if self.status == "measuring":
            raise CommandError("the dirty rate is already being measured.")
        calc_time = int(args["calc-time"])
        if self.profile.since(8, 2):
            unit = args.get("calc-time-unit", "second")
            calc_ms = calc_time * 1000 if unit == "second" else calc_time
            if not 50 <= calc_ms <= 60000:
                raise CommandError("Calculation time is out of range [50ms, 60000ms].")
        else:
            if not 1 <= calc_time <= 60:
                raise CommandError("calc-time is out of range[1, 60].")
            calc_ms = calc_time * 1000
        mode = str(args.get("mode", "page-sampling"))
        sample_pages = DEFAULT_SAMPLE_PAGES
        if "sample-pages" in args:
            if mode != "page-sampling":
                raise CommandError("sample-pages is used only in page-sampling mode")
            sample_pages = int(args["sample-pages"])
            if not 128 <= sample_pages <= 16384:
                raise CommandError("sample-pages is out of range[128, 16384].")
        if mode == "dirty-ring":
            raise CommandError("mode dirty-ring is not enabled, use other method instead.")
        return calc_ms, sample_pages, mode

    def start(
        self, calc_ms: int, sample_pages: int, mode: str, *, start_time: int, pages_written: int
    ) -> None:
        self.status = "measuring"
        self.calc_ms = calc_ms
        self.sample_pages = sample_pages
        self.mode = mode
        self.start_time = start_time
        self.dirty_rate = None
        self._start_count = pages_written

    def finish(self, pages_written: int, guest_pages: int) -> None:
        """The period is over: the rate in MB/s from the pages the guest wrote meanwhile."""
        writes = max(0, pages_written - self._start_count)
        dirtied_mb = distinct_pages(writes, guest_pages) * PAGE_SIZE / _MIB
        self.dirty_rate = int(dirtied_mb * 1000 / self.calc_ms) if self.calc_ms else 0
        if self.mode == "dirty-bitmap":
            self.sample_pages = 0
        self.status = "measured"

    def info(self, unit: str = "second") -> dict[str, Any]:
        """``query-dirty-rate``'s answer (members in schema order; the encoder orders them)."""
        answer: dict[str, Any] = {}
        if self.status == "measured" and self.dirty_rate is not None:
            answer["dirty-rate"] = self.dirty_rate
        answer["status"] = self.status
        answer["start-time"] = self.start_time
        answer["calc-time"] = self.calc_ms // 1000 if unit == "second" else self.calc_ms
        if self.profile.since(8, 2):
            answer["calc-time-unit"] = unit
        answer["sample-pages"] = self.sample_pages
        answer["mode"] = self.mode
        return answer
