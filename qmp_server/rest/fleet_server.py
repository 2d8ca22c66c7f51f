"""The fleet's REST mirror under uvicorn: ``start_fleet_http(fleet)``.

Same rules as :mod:`qmp_server.rest.server` (one loop, the process owns signals, the socket is
bound first, event streams end first on close), with the fleet's app
(:mod:`qmp_server.rest.fleet_app`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qmp_server.rest.fleet_app import create_fleet_app
from qmp_server.rest.server import HTTPServer, serve_app

if TYPE_CHECKING:
    from qmp_server.runtime.fleet import Fleet

__all__ = ["start_fleet_http"]


async def start_fleet_http(fleet: Fleet) -> HTTPServer:
    """Create the fleet's app, bind ``fleet.options.http`` and serve it in the running loop.

    :raise OSError: the address cannot be bound, or the token file cannot be read.
    """
    assert fleet.options.http is not None
    return await serve_app(create_fleet_app(fleet), *fleet.options.http)
