"""``GET /healthz``, ``GET /metrics`` and the dashboard (``GET /`` and ``/static/*``)."""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from qmp_server.commands.control import version_info
from qmp_server.rest.deps import Ctx

__all__ = ["CSP", "STATIC_DIR", "TEXT_RESPONSE", "router", "static_page"]

router = APIRouter(tags=["operations"])

STATIC_DIR = resources.files("qmp_server.rest") / "static"
#: Everything the dashboard loads comes from qmp-server itself (no CDN, no inline script).
CSP = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'"


@router.get("/healthz", summary="Liveness, and whether the mirror accepts mutations")
async def healthz(ctx: Ctx) -> dict[str, Any]:
    vm = ctx.runtime.vm
    return {
        "status": "ok",
        "writable": ctx.writable,
        "version": version_info(vm),
        "events-last-id": ctx.hub.last_seq,
    }


TEXT_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/plain": {"schema": {"type": "string"}}}}
}


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses=TEXT_RESPONSE)  # fmt: skip
async def metrics(ctx: Ctx) -> Response:
    # async on purpose: the collector reads the VM, which lives in the event loop thread.
    return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def static_page(name: str) -> HTMLResponse:
    """A page of ``static/``, never cached, scripts only from qmp-server itself."""
    page = (STATIC_DIR / name).read_text(encoding="utf-8")
    return HTMLResponse(page, headers={"Cache-Control": "no-cache", "Content-Security-Policy": CSP})


@router.get("/", include_in_schema=False)
async def dashboard() -> HTMLResponse:
    return static_page("index.html")
