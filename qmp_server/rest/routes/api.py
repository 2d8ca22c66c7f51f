"""Resources mirroring one QMP command each: capabilities, parameters, migration, status, schema.

Every handler is ``async`` so that it runs in the event loop thread, like the QMP monitors: the
dispatcher and the VM are never touched from another thread.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from qmp_server.rest.deps import Ctx, require_write
from qmp_server.rest.derive import derive_migration
from qmp_server.rest.routes._exec import execute, read_arguments

__all__ = ["router"]

router = APIRouter(tags=["migration"])


@router.get("/capabilities", summary="query-migrate-capabilities")
async def get_capabilities(ctx: Ctx) -> Any:
    return execute(ctx, "query-migrate-capabilities")


@router.patch("/capabilities", summary="migrate-set-capabilities, then the new capabilities",
              dependencies=[Depends(require_write)])  # fmt: skip
async def patch_capabilities(request: Request, ctx: Ctx) -> Any:
    execute(ctx, "migrate-set-capabilities", await read_arguments(request, required=True))
    return execute(ctx, "query-migrate-capabilities")


@router.get("/parameters", summary="query-migrate-parameters")
async def get_parameters(ctx: Ctx) -> Any:
    return execute(ctx, "query-migrate-parameters")


@router.patch("/parameters", summary="migrate-set-parameters, then the new parameters",
              dependencies=[Depends(require_write)])  # fmt: skip
async def patch_parameters(request: Request, ctx: Ctx) -> Any:
    execute(ctx, "migrate-set-parameters", await read_arguments(request, required=False))
    return execute(ctx, "query-migrate-parameters")


@router.get("/migration", summary="query-migrate plus derived progress, ETA and switchover ACK")
async def get_migration(ctx: Ctx) -> Any:
    info = execute(ctx, "query-migrate")
    ack = getattr(ctx.runtime.vm, "switchover_ack_state", None)
    return {"info": info, "derived": derive_migration(info if isinstance(info, dict) else {}, ack)}


@router.get("/status", summary="query-status (the runstate)")
async def get_status(ctx: Ctx) -> Any:
    return execute(ctx, "query-status")


@router.get("/schema", summary="query-qmp-schema (the loaded QAPI model)")
async def get_schema(ctx: Ctx) -> Any:
    return execute(ctx, "query-qmp-schema")
