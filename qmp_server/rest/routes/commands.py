"""``POST /api/v1/qmp/{command}``: any QMP command, with its JSON arguments as the body.

The answer is the command's return value (``{}`` for commands without one).  Queries need no
token; every other command is a mutation (see :mod:`qmp_server.rest.deps`).  The OpenAPI
document lists one path per command (:mod:`qmp_server.rest.openapi`), so this route itself is
left out of it.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from qmp_server.rest.deps import Ctx, is_read_only_command
from qmp_server.rest.routes._exec import execute, read_arguments

__all__ = ["router"]

router = APIRouter(tags=["qmp"])


@router.post("/qmp/{command}", include_in_schema=False)
async def run_command(command: str, request: Request, ctx: Ctx) -> Any:
    if not is_read_only_command(command):
        ctx.check_write(request.headers.get("authorization"))
    return execute(ctx, command, await read_arguments(request, required=False))
