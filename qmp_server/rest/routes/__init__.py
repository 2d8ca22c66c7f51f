"""The route modules; :func:`include_vm_routes` mounts them for one VM (or each VM of a fleet)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI

__all__ = ["include_vm_routes"]


def include_vm_routes(app: FastAPI, api_prefix: str, ops_prefix: str,
                      dependencies: Sequence[Any] = ()) -> None:  # fmt: skip
    """Mount every per-VM route: the resources under ``api_prefix``, health, metrics and the
    dashboard under ``ops_prefix`` (``/api/v1`` and ``""`` for a one-VM process; a fleet
    mounts both under ``/api/v1/vms/{name}``)."""
    from qmp_server.rest.routes import api, commands, events, ops

    for module in (api, commands, events):
        app.include_router(module.router, prefix=api_prefix, dependencies=list(dependencies))
    app.include_router(ops.router, prefix=ops_prefix, dependencies=list(dependencies))
