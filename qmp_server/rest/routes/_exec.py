"""Running one command for a route, and reading JSON request bodies."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from qmp_server.commands.dispatch import Dispatcher
from qmp_server.errors import CommandError
from qmp_server.rest.deps import RestContext
from qmp_server.rest.errors import RestError, from_command_error
from qmp_server.rest.policy import check_uris

__all__ = ["execute", "execute_on", "read_arguments"]


def execute(ctx: RestContext, name: str, args: dict[str, Any] | None = None) -> Any:
    """Run ``name`` through the dispatcher (same validation and handler as QMP).

    :raise RestError: the QMP error mapped to its HTTP status, or a policy refusal.
    """
    arguments = {} if args is None else args
    check_uris(name, arguments, ctx.policy)
    return execute_on(ctx.runtime.dispatcher, name, arguments)


def execute_on(dispatcher: Dispatcher, name: str, args: dict[str, Any]) -> Any:
    """Run ``name`` on ``dispatcher`` (a VM's, or the fleet monitor's).

    :raise RestError: the QMP error mapped to its HTTP status.
    """
    try:
        return dispatcher.execute(name, args)
    except CommandError as err:
        raise from_command_error(err) from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def read_arguments(request: Request, *, required: bool) -> dict[str, Any]:
    """The request body as a JSON object; an empty body is ``{}`` unless ``required``.

    :raise RestError: 400 when the body is not a JSON object.
    """
    raw = await request.body()
    if not raw.strip():
        if required:
            raise RestError(400, "The request body must be a JSON object")
        return {}
    try:
        value = json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise RestError(400, f"The request body is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise RestError(400, "The request body must be a JSON object")
    return value
