"""Control commands: version, introspection, runstate (stop/cont/query-status) and quit.

Runstate rules follow QEMU: ``stop`` only acts on a running guest (STOP event, ``paused``; a
destination still waiting for its migration just drops autostart); ``cont`` emits RESUME and
runs the guest unless it is already running, refuses while a migration is finishing, and on a
destination that is still ``inmigrate`` only sets autostart.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qmp_server.commands.registry import command
from qmp_server.errors import CommandError

if TYPE_CHECKING:
    from qmp_server.engine.vm import VirtualMachine

_NEEDS_RESET = frozenset({"internal-error", "shutdown", "guest-panicked"})


def version_info(vm: VirtualMachine) -> dict[str, Any]:
    major, minor, micro = vm.profile.version
    return {
        "qemu": {"major": major, "minor": minor, "micro": micro},
        "package": vm.profile.package,
    }


@command("query-version")
def query_version(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    return version_info(vm)


@command("query-commands")
def query_commands(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    # QEMU prepends each registered command to the list: the answer is in reverse order.
    return [{"name": name} for name in reversed(list(vm.schema.commands))]


@command("query-qmp-schema")
def query_qmp_schema(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    return vm.schema.introspect()


@command("query-status")
def query_status(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    info: dict[str, Any] = {"running": vm.running}
    if not vm.profile.since(9, 1):
        info["singlestep"] = False
    info["status"] = vm.runstate
    return info


@command("stop")
def stop(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    if vm.runstate == "inmigrate":
        vm.autostart = False
    else:
        vm.stop("paused")
    return None


@command("cont")
def cont(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    if vm.runstate in _NEEDS_RESET:
        raise CommandError("Resetting the Virtual Machine is required")
    if vm.runstate == "suspended":
        return None
    if vm.runstate == "finish-migrate":
        raise CommandError("Migration is not finalized yet")
    if vm.runstate == "inmigrate":
        vm.autostart = True
    else:
        vm.start()
    return None


@command("quit")
def quit_(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    vm.request_shutdown("host-qmp-quit")
    return None
