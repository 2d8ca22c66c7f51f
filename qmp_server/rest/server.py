"""uvicorn inside the runtime's event loop: ``start_http(runtime)`` and ``HTTPServer.close()``.

Rules:

1. One loop: uvicorn runs as a task of the loop that runs the QMP monitors, so a REST request
   and a QMP command are never executed concurrently.
2. The runtime owns signals: uvicorn's own signal capture is switched off.
3. The listening socket is bound here, before uvicorn starts, so "address in use" is an
   ``OSError`` the runtime reports (uvicorn would call ``sys.exit`` instead).
4. Shutdown: the event streams end first (they would hold their connections open), then
   uvicorn stops accepting, waits up to :data:`GRACE_SECONDS` for requests, and cancels the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

import uvicorn

from qmp_server.rest.app import create_app, detach

if TYPE_CHECKING:
    from fastapi import FastAPI

    from qmp_server.runtime.runtime import Runtime

__all__ = ["GRACE_SECONDS", "HTTPServer", "serve_app", "start_http"]

logger = logging.getLogger(__name__)

GRACE_SECONDS = 2.0


class _EmbeddedServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets=sockets)
        finally:
            self.ready.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # rule 2
        yield


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError as err:
        sock.close()
        raise OSError(err.errno, f"--http {host}:{port}: {err.strerror}") from None
    return sock


class HTTPServer:
    """The running REST mirror; ``address`` is where it listens (the real port for ``:0``)."""

    def __init__(self, app: FastAPI, server: uvicorn.Server, sock: socket.socket,
                 task: asyncio.Task[None]) -> None:  # fmt: skip
        self.app = app
        self.server = server
        self.socket = sock
        self.task = task
        host, port = sock.getsockname()[:2]
        self.address: tuple[str, int] = (host, port)

    async def close(self) -> None:
        detach(self.app)
        self.server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self.task), GRACE_SECONDS + 1.0)
        except TimeoutError:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        except Exception:  # the server task failed; it was logged there
            logger.exception("REST server ended with an error")
        self.socket.close()


async def start_http(runtime: Runtime) -> HTTPServer:
    """Create the app, bind ``runtime.options.http`` and serve it in the running loop.

    :raise OSError: the address cannot be bound, or the token file cannot be read.
    """
    assert runtime.options.http is not None
    return await serve_app(create_app(runtime), *runtime.options.http)


async def serve_app(app: FastAPI, host: str, port: int) -> HTTPServer:
    """Bind ``host:port`` and serve ``app`` (one VM's or a fleet's) in the running loop; its
    event hub (``app.state.hub``) delivers events on this loop from then on.

    :raise OSError: the address cannot be bound, or the server did not start.
    """
    app.state.hub.bind_loop(asyncio.get_running_loop())
    sock = _bind(host, port)
    config = uvicorn.Config(
        app,
        log_config=None,  # leave the process's logging alone
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=int(GRACE_SECONDS),
        ws="none",
    )
    server = _EmbeddedServer(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]), name="rest-http")
    ready = asyncio.ensure_future(server.ready.wait())
    await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    ready.cancel()
    if task.done() or not server.started:
        sock.close()
        if task.done():
            task.result()  # re-raise what stopped it
        task.cancel()
        raise OSError(f"--http {host}:{port}: the REST server did not start")
    http = HTTPServer(app, server, sock, task)
    if port == 0:
        sys.stderr.write(f"qmp-server: REST mirror on http://{host}:{http.address[1]}/\n")
    return http
