"""Run one HMP command line: parse it, call the QMP command layer, format the answer.

Rules (recorded from QEMU 7.2 and 10.0, tests/conformance/fixtures/hmp):

1. A blank line does nothing; an unknown command prints ``unknown command: 'NAME'`` (``'info
   NAME'`` for an unknown ``info`` subcommand).
2. An argument error prints the parser's line and ``Try "help CMD" for more information``.
3. An error from the QMP command layer prints ``Error: DESC`` (every line of DESC).
4. Text uses ``\\n``; the monitors turn it into ``\\r\\n`` (:func:`crlf`).

Pure: commands run through ``HMPContext.execute`` (the dispatcher's, so validation, rules and
error texts are the QMP monitors' own).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from qmp_server.errors import CommandError
from qmp_server.hmp.parser import HMPParseError, Scanner, parse_args

if TYPE_CHECKING:
    from qmp_server.engine.vm import VirtualMachine
    from qmp_server.hmp.table import HMPCommand

__all__ = ["HMPContext", "HMPInterpreter", "HMPResult", "crlf"]


@dataclass
class HMPContext:
    """What HMP commands reach: the VM, the QMP command layer and start-up facts."""

    vm: VirtualMachine
    execute: Callable[[str, dict[str, Any]], Any]
    name: str | None = None
    uuid: str | None = None
    #: (name, offset, used, max) of every RAM block, in QEMU's list order
    ramblocks: Sequence[tuple[str, int, int, int]] = ()


@dataclass
class HMPResult:
    """The text of one command, and whether the monitor must wait for a migration (a ``migrate``
    without ``-d`` on a terminal); ``block`` adds the newline QEMU 7.2 prints after a block
    migration's progress line."""

    text: str = ""
    wait_migration: bool = False
    block: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def crlf(text: str) -> str:
    """Monitor output: every ``\\n`` goes out as ``\\r\\n``."""
    return text.replace("\n", "\r\n")


class HMPInterpreter:
    """The command table of one emulated version, bound to one VM."""

    def __init__(self, ctx: HMPContext) -> None:
        from qmp_server.hmp.table import command_table

        self.ctx = ctx
        self.commands, self.info_commands = command_table(ctx.vm.profile)

    def run(self, line: str, *, interactive: bool) -> HMPResult:
        """Execute one line; ``interactive`` is False for ``human-monitor-command``."""
        scanner = Scanner(line)
        scanner.skip_blanks()
        if scanner.at_end():
            return HMPResult()
        name = scanner.word()
        table = self.commands
        label = name
        if name == "info":
            scanner.skip_blanks()
            sub = scanner.word()
            table = self.info_commands
            name, label = sub, f"info {sub}"
            if not sub:
                return HMPResult()  # QEMU lists the info commands here (not recorded)
        cmd = table.get(name)
        if cmd is None:
            return HMPResult(f"unknown command: '{label}'\n")
        try:
            args = parse_args(name, cmd.args, scanner)
        except HMPParseError as err:
            return HMPResult(f'{err.text}\nTry "help {label}" for more information\n')
        try:
            return cmd.run(self, args, interactive)
        except CommandError as err:
            return HMPResult(f"Error: {err.desc}\n")

    def execute(self, name: str, args: dict[str, Any] | None = None) -> Any:
        return self.ctx.execute(name, args or {})

    def help(self, name: str) -> str:
        cmd = self.commands.get(name)
        if cmd is None or cmd.help is None:
            return f"unknown command: '{name}'\n"
        return f"{cmd.help}\n"

    def lookup(self, name: str) -> HMPCommand | None:
        return self.commands.get(name)
