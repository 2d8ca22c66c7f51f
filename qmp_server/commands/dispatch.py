"""QMP request dispatch: one parsed message in, one reply object out (or none).

Pure: the adapter feeds it values from :class:`~qmp_server.wire.parser.JSONStreamer` and writes
what it returns with :func:`~qmp_server.wire.encoder.encode_line`.

Rules (QEMU's monitor and dispatcher, reproduced from behaviour):

1. Request members are checked in QDict iteration order; the first failure wins.  ``id`` is
   echoed unchanged whenever the request was an object, on success and on error.
2. While a monitor negotiates, only ``qmp_capabilities`` exists and every CommandNotFound
   error reads ``Expecting capabilities negotiation with 'qmp_capabilities'``.
3. Arguments are validated against the command's QAPI type before its handler runs.
4. A reply is ``{"return": ...}`` (``{}`` when the handler returns None) or
   ``{"error": {"class", "desc"}}``, then ``id``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qmp_server.commands.registry import HANDLERS, Handler
from qmp_server.errors import COMMAND_NOT_FOUND, GENERIC_ERROR, CommandError
from qmp_server.wire.encoder import Encoded, qdict_order
from qmp_server.wire.parser import ParseError

if TYPE_CHECKING:
    from qmp_server.engine.fds import MonitorFds
    from qmp_server.engine.vm import VirtualMachine
    from qmp_server.qapi import ArgumentValidator

__all__ = ["Dispatcher", "MonitorState", "error_reply"]

#: the members of an in-band request, none of which can fail when well-formed
_PLAIN_KEYS = frozenset({"execute", "arguments", "id"})
_NO_ARGS: dict[str, Any] = {}

NEGOTIATION_EXPECTED = "Expecting capabilities negotiation with 'qmp_capabilities'"
NEGOTIATION_DONE = "Capabilities negotiation is already complete, command ignored"


@dataclass(slots=True)
class MonitorState:
    """Per-connection QMP state; a new connection starts a new one (QEMU resets on open)."""

    oob_offered: bool = True
    negotiated: bool = False
    oob_enabled: bool = False
    #: descriptors passed over the connection (unix sockets only; None elsewhere)
    fds: MonitorFds | None = None


def error_reply(desc: str, error_class: str = GENERIC_ERROR) -> dict[str, Any]:
    return {"error": {"class": error_class, "desc": desc}}


class Dispatcher:
    """Routes requests to handlers; shared by every monitor of one VM (and the REST mirror)."""

    def __init__(
        self,
        vm: VirtualMachine,
        validator: ArgumentValidator,
        handlers: Mapping[str, Handler] | None = None,
    ) -> None:
        self.vm = vm
        self.schema = vm.schema
        self.validator = validator
        self.handlers = HANDLERS if handlers is None else handlers
        missing = [n for n in self.schema.commands if n not in self.handlers]
        missing = [n for n in missing if n != "qmp_capabilities"]
        if missing:
            raise RuntimeError(f"schema commands without a handler: {', '.join(missing)}")
        #: observers called as ``hook(command_name, ok)`` after every executed command
        self.observers: list[Any] = []

    # -- the monitor's view -------------------------------------------------------------
    def dispatch(self, message: Any, mon: MonitorState) -> dict[str, Any] | None:
        """Answer one message read from a monitor."""
        if isinstance(message, ParseError):
            return error_reply(message.desc)
        reply = self._dispatch(message, mon)
        if not mon.negotiated:
            error = reply.get("error")
            if error is not None and error["class"] == COMMAND_NOT_FOUND:
                del error["desc"]
                error["desc"] = NEGOTIATION_EXPECTED
        return reply

    def _dispatch(self, request: Any, mon: MonitorState) -> dict[str, Any]:
        if not isinstance(request, dict):
            return error_reply("QMP input must be a JSON object")
        has_id = "id" in request
        try:
            name, oob = self._check_request(request, mon.oob_enabled)
            reply: dict[str, Any] = {"return": self._execute(name, oob, request, mon)}
        except CommandError as err:
            reply = error_reply(err.desc, err.error_class)
        if has_id:
            reply["id"] = request["id"]
        return reply

    @staticmethod
    def _check_request(request: dict[str, Any], allow_oob: bool) -> tuple[str, bool]:
        name = request.get("execute")
        if (
            type(name) is str
            and request.keys() <= _PLAIN_KEYS
            and type(request.get("arguments", _NO_ARGS)) is dict
        ):
            return name, False  # a well-formed request: no member can fail (rule 1)
        exec_key: str | None = None
        for key in qdict_order(tuple(request)):
            value = request[key]
            if key == "execute" or (key == "exec-oob" and allow_oob):
                if not isinstance(value, str):
                    raise CommandError(f"QMP input member '{key}' must be a string")
                if exec_key is not None:
                    raise CommandError(f"QMP input member '{key}' clashes with '{exec_key}'")
                exec_key = key
            elif key == "arguments":
                if not isinstance(value, dict):
                    raise CommandError("QMP input member 'arguments' must be an object")
            elif key != "id":
                raise CommandError(f"QMP input member '{key}' is unexpected")
        if exec_key is None:
            raise CommandError("QMP input lacks member 'execute'")
        return request[exec_key], exec_key == "exec-oob"

    def _execute(self, name: str, oob: bool, request: dict[str, Any], mon: MonitorState) -> Any:
        command = self.schema.command(name)
        if command is None or (not mon.negotiated and name != "qmp_capabilities"):
            raise CommandError(f"The command {name} has not been found", COMMAND_NOT_FOUND)
        if oob and not command.allow_oob:
            raise CommandError(f"The command {name} does not support OOB")
        args = self.validator.validate(command, request.get("arguments", {}))
        ok = False
        try:
            if name == "qmp_capabilities":
                self._qmp_capabilities(args, mon)
                result: Any = None
            else:
                self.vm.cur_fds = mon.fds
                try:
                    result = self.handlers[name](self.vm, args)
                finally:
                    self.vm.cur_fds = None
            ok = True
        finally:
            for hook in self.observers:
                hook(name, ok)
        return {} if result is None else result

    def execute(self, name: str, args: dict[str, Any]) -> Any:
        """Run a command outside any monitor (the REST mirror): same checks, same handlers."""
        mon = MonitorState(negotiated=True)
        reply = self._dispatch({"execute": name, "arguments": args}, mon)
        if "error" in reply:
            raise CommandError(reply["error"]["desc"], reply["error"]["class"])
        result = reply["return"]
        return result.value if isinstance(result, Encoded) else result

    @staticmethod
    def _qmp_capabilities(args: dict[str, Any], mon: MonitorState) -> None:
        if mon.negotiated:
            raise CommandError(NEGOTIATION_DONE, COMMAND_NOT_FOUND)
        wanted = args.get("enable", [])
        missing = [cap for cap in wanted if not (cap == "oob" and mon.oob_offered)]
        if missing:
            raise CommandError(f"Capability {', '.join(missing)} not available")
        mon.oob_enabled = "oob" in wanted
        mon.negotiated = True
