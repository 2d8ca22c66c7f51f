"""The modelled guest as it runs in this process: the workload clock, and the allocator tuning.

Why a module of its own: the guest runs (and dirties its RAM and device state) whether or not
it migrates, on either side.  Contract: :class:`WorkloadTicker` advances the context's
workload and devices every 20 ms while the VM's runstate says so, and reports each batch of
dirtied pages to ``on_dirtied`` (the source's ``dirty-pages`` counters); :func:`tune_malloc` is
called once per process before the engine allocates its step arrays.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
import time
from collections.abc import Callable

from qmp_server.engine.guest import PAGE_SIZE, GuestMemory, Workload
from qmp_server.engine.machine import MachineLayout
from qmp_server.runtime.migration_context import MigrationContext

__all__ = ["WorkloadTicker", "guest_workload", "tune_malloc"]

#: How often the workload advances.
_TICK = 0.02
#: How often an idle guest (no dirty rate) that does not migrate advances: its timer tick only
#: marks pages dirty, which nobody reads until a migration starts (and :meth:`wake` then
#: returns to the fast tick at once).  A fleet of a thousand idle VMs costs 1,000 wake-ups
#: per second, not 50,000.
_IDLE_TICK = 1.0


@functools.cache
def tune_malloc() -> None:
    """Keep freed blocks in glibc's heap: the engine allocates and frees 8 MiB arrays per
    step, and first-touch page faults of fresh mmaps cost more than the work itself."""
    name = ctypes.util.find_library("c")
    if name is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(name)
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD (glibc's maximum on 64-bit)


def guest_workload(
    guest: GuestMemory,
    layout: MachineLayout,
    rate: int,
    *,
    seed: int,
    write_bytes: int = PAGE_SIZE,
    working_set: int = 0,
) -> Workload:
    """The guest's program: ``--dirty-rate`` bytes/s (writes of ``--dirty-write-bytes``),
    and an idle guest's timer tick.

    Only the ``idle`` content has firmware pages to tick in (the other fills model no firmware).
    """
    hot = layout.hot_pages if guest.fill == "idle" else None
    return Workload(
        guest,
        rate,
        seed=seed,
        now=time.monotonic(),
        hot_pages=hot,
        write_bytes=write_bytes,
        working_set=working_set,
    )


def _release(wakeup: asyncio.Future[None]) -> None:
    if not wakeup.done():
        wakeup.set_result(None)


class WorkloadTicker:
    """The task that lets the guest's workload and devices dirty memory as time passes."""

    def __init__(
        self,
        ctx: MigrationContext,
        on_dirtied: Callable[[int], None],
        busy: Callable[[], bool] = lambda: True,
    ) -> None:
        self.ctx = ctx
        self.on_dirtied = on_dirtied
        #: whether a migration is in flight (then the guest ticks fast whatever it does)
        self.busy = busy
        self._task: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Future[None] | None = None

    def wake(self) -> None:
        """Leave the idle tick now (a migration starts, the dirty rate changes)."""
        if self._wakeup is not None:
            _release(self._wakeup)

    def _fast(self) -> bool:
        ctx = self.ctx
        return bool(
            ctx.workload.rate or any(d.config.dirty_rate for d in ctx.devices) or self.busy()
        )

    async def _sleep(self) -> None:
        if self._fast():
            await asyncio.sleep(_TICK)
            return
        loop = asyncio.get_running_loop()
        self._wakeup = wakeup = loop.create_future()
        timer = loop.call_later(_IDLE_TICK, _release, wakeup)
        try:
            await wakeup
        finally:
            timer.cancel()
            self._wakeup = None

    def start(self) -> bool:
        """Start ticking; False if it already ticks."""
        if self._task is not None:
            return False
        self._task = asyncio.get_running_loop().create_task(self._run())
        return True

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def set_rate(self, rate: int, write_bytes: int | None = None) -> None:
        self.ctx.workload.set_rate(rate, time.monotonic())
        if write_bytes is not None:
            self.ctx.workload.set_write_bytes(write_bytes)
        self.wake()

    async def _run(self) -> None:
        ctx = self.ctx
        while True:
            await self._sleep()
            now = time.monotonic()
            running = ctx.vm.running
            workload = ctx.workload
            if workload.active or any(d.config.dirty_rate for d in ctx.devices):
                workload.set_running(running, now)
                dirtied = workload.advance(now)
                if dirtied:
                    self.on_dirtied(dirtied)
                for dev in ctx.devices:
                    dev.set_running(running, now)
