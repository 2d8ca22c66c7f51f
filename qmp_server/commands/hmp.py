"""``human-monitor-command``: one HMP line run through QMP.

The HMP interpreter (:mod:`qmp_server.hmp`) is attached to the VM by the runtime as
``vm.hmp`` (it needs the dispatcher, which sits above the handlers).  Through QMP, a
``migrate`` without ``-d`` cannot wait, and says so, as QEMU does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qmp_server.commands.registry import command
from qmp_server.errors import CommandError

if TYPE_CHECKING:
    from qmp_server.engine.vm import VirtualMachine


@command("human-monitor-command")
def human_monitor_command(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    from qmp_server.hmp.interpreter import crlf

    interpreter = getattr(vm, "hmp", None)
    if interpreter is None:
        raise CommandError("qmp-server: no human monitor in this process")
    if args.get("cpu-index", 0) != 0:
        raise CommandError("Parameter 'cpu-index' expects a CPU number")
    return crlf(interpreter.run(str(args["command-line"]), interactive=False).text)
