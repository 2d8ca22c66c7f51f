"""calc-dirty-rate / query-dirty-rate, and the dirty-limit commands (refused under TCG).

The measurement is :class:`~qmp_server.engine.dirty_rate.DirtyRateMeter`'s; the period ends
through ``vm.timers``.  The dirty-limit texts are QEMU 7.2's and 10.0's under TCG (recorded).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qmp_server.commands.registry import command
from qmp_server.errors import CommandError

if TYPE_CHECKING:
    from qmp_server.engine.vm import VirtualMachine

_NEEDS_DIRTY_RING = (
    "dirty page limit feature requires KVM with accelerator property 'dirty-ring-size' set'"
)


def _pages(vm: VirtualMachine) -> tuple[int, int]:
    return (0, 0) if vm.guest_pages is None else vm.guest_pages()


@command("calc-dirty-rate")
def calc_dirty_rate(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    meter = vm.dirty_meter
    calc_ms, sample_pages, mode = meter.check(args)
    timers = vm.timers
    if timers is None:
        start_time = 0
    elif vm.profile.since(8, 2):
        start_time = int(timers.wall())
    else:
        start_time = int(timers.monotonic())
    meter.start(calc_ms, sample_pages, mode, start_time=start_time, pages_written=_pages(vm)[0])

    def done() -> None:
        written, total = _pages(vm)
        meter.finish(written, total)

    if _pages(vm)[1] == 0:
        done()  # no guest RAM (-M none): QEMU's measurement ends at once
    elif timers is not None:
        timers.call_later(calc_ms / 1000, done)
    return None


@command("query-dirty-rate")
def query_dirty_rate(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    return vm.dirty_meter.info(str(args.get("calc-time-unit", "second")))


@command("set-vcpu-dirty-limit")
def set_vcpu_dirty_limit(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    raise CommandError(_NEEDS_DIRTY_RING)


@command("cancel-vcpu-dirty-limit")
def cancel_vcpu_dirty_limit(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    return None  # QEMU returns quietly when there is no dirty ring to limit


@command("query-vcpu-dirty-limit")
def query_vcpu_dirty_limit(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    return []
