"""getfd / closefd / add-fd / remove-fd / query-fdsets: descriptors passed over SCM_RIGHTS.

The descriptors a command can take are those of the monitor connection it came from
(``vm.cur_fds``, set by the dispatcher); the rules are in :mod:`qmp_server.engine.fds`.  A
command from the REST mirror has no connection and so never carries a descriptor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qmp_server.commands.registry import command
from qmp_server.engine.fds import NO_FD, MonitorFds
from qmp_server.errors import CommandError

if TYPE_CHECKING:
    from qmp_server.engine.vm import VirtualMachine


def _monitor(vm: VirtualMachine) -> MonitorFds:
    if vm.cur_fds is None:
        raise CommandError(NO_FD)
    return vm.cur_fds


@command("getfd")
def getfd(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    mon = _monitor(vm)
    mon.named.add(str(args["fdname"]), mon.received.take())
    return None


@command("closefd")
def closefd(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    name = str(args["fdname"])
    if vm.cur_fds is None:
        raise CommandError(f"File descriptor named '{name}' not found")
    vm.cur_fds.named.close(name)
    return None


@command("add-fd")
def add_fd(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    fd = _monitor(vm).received.take()
    return vm.fdsets.add(fd, args.get("fdset-id"), args.get("opaque"))


@command("remove-fd")
def remove_fd(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    vm.fdsets.remove(int(args["fdset-id"]), args.get("fd"))
    return None


@command("query-fdsets")
def query_fdsets(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    return vm.fdsets.query()
