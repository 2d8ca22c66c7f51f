"""The fleet's own routes: the VM list, adding and removing VMs, fleet-wide migrations and
events, health, metrics and the fleet dashboard.

Status codes: ``POST /api/v1/vms`` answers 201 once the new VM's monitors listen (a refused
command line: 400 with the fleet monitor's text; a VM that fails to start: 500);
``DELETE /api/v1/vms/{name}`` answers 204 once the VM has left (202 if it is still ending
after :data:`LEAVE_WAIT` seconds); an unknown VM is 404 ``NotFound`` on every route.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from prometheus_client import CONTENT_TYPE_LATEST

from qmp_server.fleet.commands import fleet_version
from qmp_server.rest.derive import derive_migration
from qmp_server.rest.errors import RestError
from qmp_server.rest.events import VMEvents
from qmp_server.rest.fleet_metrics import ENDED_STATUSES, exposition, migration_info
from qmp_server.rest.fleet_state import FleetRest
from qmp_server.rest.routes._exec import execute_on, read_arguments
from qmp_server.rest.routes.events import follow
from qmp_server.rest.routes.ops import TEXT_RESPONSE, static_page

__all__ = ["LEAVE_WAIT", "router", "vm_name"]

router = APIRouter(tags=["fleet"])

#: How long ``DELETE /api/v1/vms/{name}`` waits for the VM to leave before answering 202.
LEAVE_WAIT = 10.0


def get_fleet(request: Request) -> FleetRest:
    rest: FleetRest = request.app.state.rest
    return rest


Fleet = Annotated[FleetRest, Depends(get_fleet)]


def require_fleet_write(request: Request, rest: Fleet) -> None:
    rest.check_write(request.headers.get("authorization"))


def vm_name(rest: Fleet, name: Annotated[str, Path(description="the VM's name")]) -> None:
    """Dependency of every per-VM route: 404 unless VM ``name`` is in the fleet."""
    rest.instance(name)


@router.get("/healthz", summary="Liveness, whether the mirror accepts mutations, VM count")
async def healthz(rest: Fleet) -> dict[str, Any]:
    return {
        "status": "ok",
        "writable": rest.writable,
        "version": fleet_version(),
        "vms": len(rest.fleet.vms),
        "events-last-id": rest.hub.last_seq,
    }


@router.get("/metrics", summary="Prometheus metrics of every VM (label vm) and of the fleet",
            response_class=Response, responses=TEXT_RESPONSE)  # fmt: skip
async def metrics(rest: Fleet) -> Response:
    return Response(exposition(rest.collector.collect()), media_type=CONTENT_TYPE_LATEST)


@router.get("/", include_in_schema=False)
async def dashboard() -> HTMLResponse:
    return static_page("fleet.html")


@router.get("/api/v1/vms", summary="query-fleet: every VM, its run state, migration, monitors")
async def list_vms(rest: Fleet) -> Any:
    return execute_on(rest.fleet.dispatcher, "query-fleet", {})


@router.post("/api/v1/vms", status_code=201, dependencies=[Depends(require_fleet_write)],
             summary="fleet-vm-add {name, args}; answers once its monitors listen")  # fmt: skip
async def add_vm(request: Request, rest: Fleet) -> Any:
    args = await read_arguments(request, required=True)
    execute_on(rest.fleet.dispatcher, "fleet-vm-add", args)
    name = str(args["name"])
    if not await rest.fleet.started(name):
        raise RestError(500, f"VM '{name}' did not start (the fleet's log says why)",
                        "GenericError")  # fmt: skip
    instance = rest.instance(name)
    return JSONResponse(rest.fleet.vm_info(name, instance), 201,
                        headers={"Location": f"/api/v1/vms/{name}"})  # fmt: skip


@router.get("/api/v1/vms/{name}", summary="One VM as query-fleet lists it")
async def get_vm(rest: Fleet, name: str) -> Any:
    return rest.fleet.vm_info(name, rest.instance(name))


@router.delete("/api/v1/vms/{name}", status_code=204, response_class=Response,
               dependencies=[Depends(require_fleet_write)],
               summary="fleet-vm-remove (ends as on a signal); answers once it left")  # fmt: skip
async def remove_vm(rest: Fleet, name: str) -> Response:
    instance = rest.instance(name)
    execute_on(rest.fleet.dispatcher, "fleet-vm-remove", {"name": name})
    left = await rest.wait_removed(name, instance, LEAVE_WAIT)
    return Response(status_code=204 if left else 202)


def _migration(name: str, info: dict[str, Any], ack: Any) -> dict[str, Any]:
    d = derive_migration(info, ack)
    ram = info.get("ram") if isinstance(info.get("ram"), dict) else {}
    assert isinstance(ram, dict)
    return {
        "vm": name,
        "status": d["status"],
        "transferred-bytes": ram.get("transferred"),
        "total-bytes": d["total-bytes"],
        "remaining-bytes": d["remaining-bytes"],
        "progress-percent": d["progress-percent"],
        "throughput-bytes": d["transfer-rate-bytes"],
        "expected-downtime-ms": d["expected-downtime-ms"],
        "downtime-ms": d["downtime-ms"],
        "total-time-ms": info.get("total-time"),
        "switchover-ack": d["switchover-ack"],
    }


@router.get("/api/v1/migrations",
            summary="Every VM's outgoing migration (in flight or ended), link use")  # fmt: skip
async def migrations(rest: Fleet) -> dict[str, Any]:
    found = []
    in_flight = 0.0
    for name, instance in list(rest.fleet.vms.items()):
        if instance.migration.source_status == "none":
            continue
        entry = _migration(name, migration_info(rest, name),
                           getattr(instance.vm, "switchover_ack_state", None))  # fmt: skip
        if entry["status"] not in ENDED_STATUSES:
            in_flight += entry["throughput-bytes"] or 0.0
        found.append(entry)
    bandwidth, latency = rest.fleet.link_settings
    return {
        "link": {
            "bandwidth": bandwidth,
            "latency": latency,
            "bandwidth-bytes": rest.link_bandwidth_bytes(),
            "throughput-bytes": in_flight,
        },
        "migrations": found,
    }


@router.get("/api/v1/events", response_class=EventSourceResponse,
            summary="Every VM's QMP events and the fleet's, tagged; ?vm= filters")  # fmt: skip
async def fleet_events(
    rest: Fleet,
    vm: str | None = Query(default=None, description="only this VM's events"),
    last_event_id: str | None = Header(default=None, alias="Last-Event-ID"),
    since: str | None = Query(default=None, alias="last_event_id"),
) -> AsyncIterator[ServerSentEvent]:
    source = VMEvents(rest.hub, vm) if vm else rest.hub
    async for message in follow(source, last_event_id, since):
        yield message
