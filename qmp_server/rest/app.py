"""``create_app(runtime)``: the FastAPI application of the REST mirror and dashboard.

Contract: the app reaches the runtime only through ``app.state.rest`` (a
:class:`~qmp_server.rest.deps.RestContext`, read by the one dependency ``get_context``; a
fleet's app keeps a ``ContextSource`` there instead, :mod:`.fleet_app`) and runs
every command through ``runtime.dispatcher.execute``, so REST and QMP share validation, handlers
and error texts.  Creating the app subscribes the event hub to ``runtime.event_listeners`` and
the metrics to ``runtime.dispatcher.observers``; :func:`detach` undoes both.

Neighbours: :mod:`.server` runs the app under uvicorn in the runtime's event loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from qmp_server import __version__
from qmp_server.rest.deps import RestContext, load_token
from qmp_server.rest.errors import HTTP_CLASSES, RestError, error_body
from qmp_server.rest.events import EventHub
from qmp_server.rest.limits import MAX_BODY_BYTES, BodyLimitMiddleware
from qmp_server.rest.metrics import RestMetrics
from qmp_server.rest.openapi import build_openapi
from qmp_server.rest.policy import UriPolicy
from qmp_server.rest.routes import include_vm_routes, ops

if TYPE_CHECKING:
    from qmp_server.cli import Options
    from qmp_server.runtime.runtime import Runtime

__all__ = ["create_app", "detach", "new_app", "token_of"]

_DESCRIPTION = """\
A mirror of qmp-server's QMP command layer over HTTP.  Every resource runs the same command,
with the same validation and error texts, as a QMP monitor would.  Errors are
`{"class": ..., "desc": ...}`.  Mutations need `Authorization: Bearer <token>` and are refused
unless qmp-server was started with `--http-token-file`.  See docs/rest-api.md.
"""


async def _rest_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RestError)
    return JSONResponse(error_body(exc.error_class, exc.desc), exc.status, headers=exc.headers)


def _allowed_methods(request: Request) -> str:
    """Every method some route accepts for this path (Starlette names only the first route's)."""
    methods: set[str] = set()
    for route in request.app.routes:
        if isinstance(route, APIRoute) and route.path_regex.match(request.url.path):
            methods |= route.methods or set()
    return ", ".join(sorted(methods))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    cls = HTTP_CLASSES.get(exc.status_code, "GenericError")
    desc = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request)
    return JSONResponse(error_body(cls, desc), exc.status_code, headers=headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = jsonable_encoder(exc.errors())
    first = errors[0] if errors else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    desc = f"{where}: {first.get('msg', 'invalid request')}" if where else "invalid request"
    return JSONResponse(error_body("BadRequest", desc), 400)


def token_of(options: Options, token: str | None) -> str | None:
    """``token``, or the one in ``--http-token-file`` (None: the mirror is read-only)."""
    if token is None and options.http_token_file:
        return load_token(options.http_token_file)
    return token


def new_app(title: str, description: str, cors: Sequence[str] | None, max_body: int,
            methods: list[str]) -> FastAPI:  # fmt: skip
    """An app with the mirror's error bodies, static files, body bound and CORS, no routes."""
    app = FastAPI(
        title=title,
        version=__version__,
        description=description,
        docs_url="/api/docs",
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    app.add_exception_handler(RestError, _rest_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.mount("/static", StaticFiles(directory=str(Path(str(ops.STATIC_DIR)))), name="static")
    app.add_middleware(BodyLimitMiddleware, limit=max_body)
    if cors:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors),
            allow_methods=methods,
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
        )
    return app


def create_app(
    runtime: Runtime,
    *,
    token: str | None = None,
    policy: UriPolicy | None = None,
    max_body: int = MAX_BODY_BYTES,
) -> FastAPI:
    """The REST mirror for ``runtime``.

    :param token: the bearer token; by default read from ``runtime.options.http_token_file``
        (None there: read-only).
    :param policy: which ``file:`` migrations HTTP may ask for (default: none).
    :param max_body: request body bound in bytes (413 beyond).
    :raise OSError: when the token file cannot be read or is empty.
    """
    options = runtime.options
    token = token_of(options, token)
    hub = EventHub()
    ctx = RestContext(runtime, hub, RestMetrics(runtime, hub), token, policy or UriPolicy())
    app = new_app("qmp-server REST mirror", _DESCRIPTION, options.http_cors, max_body,
                  ["GET", "PATCH", "POST"])  # fmt: skip
    app.state.rest = ctx
    app.state.hub = hub
    include_vm_routes(app, "/api/v1", "")

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            skeleton = get_openapi(title=app.title, version=app.version,
                                   description=app.description, routes=app.routes)  # fmt: skip
            app.openapi_schema = build_openapi(skeleton, runtime.vm.schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    runtime.event_listeners.append(hub.publish)
    runtime.dispatcher.observers.append(ctx.metrics.observe)

    def unsubscribe() -> None:
        if hub.publish in runtime.event_listeners:
            runtime.event_listeners.remove(hub.publish)
        if ctx.metrics.observe in runtime.dispatcher.observers:
            runtime.dispatcher.observers.remove(ctx.metrics.observe)
        hub.close()

    app.state.detach = unsubscribe
    return app


def detach(app: FastAPI) -> None:
    """Unsubscribe the app from its runtime (or fleet) and end every event stream."""
    app.state.detach()
