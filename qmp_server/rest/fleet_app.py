"""``create_fleet_app(fleet)``: one REST mirror, metrics and dashboard for every VM of a fleet.

Contract:

1. One app for the fleet, never one per VM: the per-VM routes (the same modules a one-VM
   process mounts, :func:`~qmp_server.rest.routes.include_vm_routes`) live under
   ``/api/v1/vms/{name}``; :meth:`~.fleet_state.FleetRest.context_for` resolves ``name`` per
   request to a :class:`~qmp_server.rest.deps.RestContext`, built on first use and cached
   until the VM leaves (``Fleet.on_vm_removed``).  An unknown name answers 404 ``NotFound``.
2. Every VM command runs through that VM's ``dispatcher.execute`` (same texts as its QMP
   monitor); adding and removing VMs runs the fleet monitor's own commands (``fleet-vm-add``,
   ``fleet-vm-remove``) through the fleet's dispatcher.
3. One event hub for the fleet (:mod:`.events` rule 5): VM events tagged with their VM, the
   fleet's own events (``FLEET_VM_ADDED``/``REMOVED``) tagged with the VM they name.
4. Each VM's command counts are kept from the moment the app exists (or the VM joins) and
   dropped when it leaves; :mod:`.fleet_metrics` exports them with the rest.
5. Auth is the one-VM mirror's: one token for the fleet, mutations need it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import Depends, FastAPI

from qmp_server.rest.app import new_app, token_of
from qmp_server.rest.fleet_state import FleetRest
from qmp_server.rest.limits import MAX_BODY_BYTES
from qmp_server.rest.policy import UriPolicy
from qmp_server.rest.routes import fleet as fleet_routes
from qmp_server.rest.routes import include_vm_routes

if TYPE_CHECKING:
    from qmp_server.runtime.fleet import Fleet

__all__ = ["VM_PREFIX", "create_fleet_app"]

VM_PREFIX = "/api/v1/vms/{name}"

_DESCRIPTION = """\
The REST mirror of a qmp-server fleet: `/api/v1/vms` lists, adds and removes VMs; every route
of the one-VM mirror is under `/api/v1/vms/{name}/` for that VM, with the same texts as its QMP
monitor.  Errors are `{"class": ..., "desc": ...}`.  Mutations need
`Authorization: Bearer <token>` (`--http-token-file`).  See docs/rest-api.md, "Fleet".
"""


def create_fleet_app(
    fleet: Fleet,
    *,
    token: str | None = None,
    policy: UriPolicy | None = None,
    max_body: int = MAX_BODY_BYTES,
) -> FastAPI:
    """The fleet's REST mirror (parameters as :func:`~qmp_server.rest.app.create_app`).

    :raise OSError: when the token file cannot be read or is empty.
    """
    options = fleet.options
    rest = FleetRest(fleet, token_of(options, token), policy or UriPolicy())
    app = new_app("qmp-server fleet REST mirror", _DESCRIPTION, options.http_cors, max_body,
                  ["GET", "PATCH", "POST", "DELETE"])  # fmt: skip
    app.state.rest = rest
    app.state.hub = rest.hub
    app.state.detach = rest.detach
    app.include_router(fleet_routes.router)
    include_vm_routes(app, VM_PREFIX, VM_PREFIX, [Depends(fleet_routes.vm_name)])
    return app
