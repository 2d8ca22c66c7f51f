"""The fleet's REST mirror (placeholder until the fleet routes land)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qmp_server.runtime.fleet import Fleet

__all__ = ["start_fleet_http"]


async def start_fleet_http(fleet: Fleet) -> Any:
    raise OSError("--http is not available for a fleet yet")
