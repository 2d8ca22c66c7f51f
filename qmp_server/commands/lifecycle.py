"""What a domain's life changes: power button, reset, wakeup, identity and the balloon.

The rules live in :mod:`qmp_server.engine.power` and :mod:`qmp_server.engine.balloon`; this
module maps the QMP commands onto them with QEMU's errors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qmp_server.commands.registry import command
from qmp_server.engine.balloon import NO_BALLOON
from qmp_server.errors import CommandError

if TYPE_CHECKING:
    from qmp_server.engine.vm import VirtualMachine

#: How long the modelled guest's balloon driver takes to reach a new target (seconds).
BALLOON_DELAY = 0.1
_DEVICE_NOT_ACTIVE = "DeviceNotActive"


@command("system_powerdown")
def system_powerdown(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    vm.power.powerdown()
    return None


@command("system_reset")
def system_reset(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    vm.power.reset()
    return None


@command("system_wakeup")
def system_wakeup(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    vm.power.wakeup()
    return None


@command("query-name")
def query_name(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    return {} if vm.name is None else {"name": vm.name}


@command("query-uuid")
def query_uuid(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    return {"UUID": vm.uuid}


@command("query-balloon")
def query_balloon(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    if vm.balloon is None:
        raise CommandError(NO_BALLOON, _DEVICE_NOT_ACTIVE)
    return {"actual": vm.balloon.actual}


@command("balloon")
def balloon(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    dev = vm.balloon
    if dev is None:
        raise CommandError(NO_BALLOON, _DEVICE_NOT_ACTIVE)
    value = int(args["value"])
    if value <= 0:
        # 7.2 names the parameter after its C variable, 10.0 after the QMP member (both
        # recorded); the 8.x profiles are not recorded: the switch is assumed at 8.1
        name = "value" if vm.profile.since(8, 1) else "target"
        raise CommandError(f"Parameter '{name}' expects a size")
    dev.set_target(value)

    timers = vm.timers

    def guest_driver() -> None:
        # the guest's driver inflates or deflates only while the guest runs
        if vm.running:
            if dev.guest_follows():
                vm.emit("BALLOON_CHANGE", {"actual": dev.actual})
        elif vm.runstate not in ("shutdown", "postmigrate") and timers is not None:
            timers.call_later(BALLOON_DELAY, guest_driver)

    if timers is not None:
        timers.call_later(BALLOON_DELAY, guest_driver)
    return None
