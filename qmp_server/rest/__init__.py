"""The REST mirror and live dashboard (``--http``): FastAPI over the same command layer as QMP.

Nothing is imported here on purpose: the runtime imports :mod:`qmp_server.rest.server` only when
``--http`` is given, so a process without it never pays for FastAPI, Starlette or pydantic.

Modules: :mod:`.app` (``create_app(runtime)``), :mod:`.server` (uvicorn in the runtime's loop),
:mod:`.deps` (the one dependency that reaches the runtime, and auth), :mod:`.errors` (QMP error
→ HTTP status), :mod:`.events` (SSE hub: history ring, bounded subscribers),
:mod:`.metrics` (Prometheus), :mod:`.derive` (progress, ETA), :mod:`.policy` (what HTTP may not
ask for), :mod:`.openapi` (QAPI JSON Schema → OpenAPI), :mod:`.limits` (request body bound) and
``routes/``.  The reference is ``docs/rest-api.md``.
"""
