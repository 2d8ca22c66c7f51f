"""Command name -> handler table shared by the QMP monitors and the REST mirror.

A handler is a plain function ``handler(vm, args) -> JSON value`` that raises
:class:`~qmp_server.errors.CommandError` with QEMU's class and text.  ``args`` have already been
validated (and normalised, e.g. negative uint64 wrapped) against the command's QAPI argument type
by the dispatcher, so a handler only checks what QEMU checks *after* its input visitor.  A handler
that returns ``None`` answers ``{"return": {}}``, as QEMU does for commands without 'returns'.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias

from qmp_server._types import JSONValue

if TYPE_CHECKING:
    from qmp_server.engine.vm import VirtualMachine

__all__ = ["HANDLERS", "Handler", "command"]

Handler: TypeAlias = Callable[["VirtualMachine", dict[str, Any]], JSONValue]

#: Every command implemented by qmp-server, by QMP name.  Which of them a client can reach is
#: decided by the loaded schema (a command the emulated version lacks is not in the schema).
HANDLERS: dict[str, Handler] = {}


def command(name: str) -> Callable[[Handler], Handler]:
    """Register ``func`` as the handler of QMP command ``name``."""

    def register(func: Handler) -> Handler:
        if name in HANDLERS:
            raise RuntimeError(f"command {name!r} registered twice")
        HANDLERS[name] = func
        return func

    return register
