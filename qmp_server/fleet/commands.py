"""The fleet monitor's commands (``schema/fleet.json``), over a :class:`FleetControl`.

Pure: the handlers only call the control, which the fleet process implements, so the QMP
monitor and the REST mirror add and remove VMs through the same code and texts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from qmp_server import __version__
from qmp_server.commands import control as _control  # noqa: F401  (registers query-commands)
from qmp_server.commands.registry import HANDLERS, Handler

if TYPE_CHECKING:
    from qmp_server.engine.fds import MonitorFds
    from qmp_server.qapi import Schema

__all__ = ["FLEET_HANDLERS", "FleetControl", "FleetTarget", "fleet_version"]


class FleetControl(Protocol):
    """What the fleet process offers its monitor."""

    def vm_infos(self) -> list[dict[str, Any]]: ...

    def link_info(self) -> dict[str, Any]: ...

    def add_vm(self, name: str, args: list[str]) -> None: ...

    def remove_vm(self, name: str) -> None: ...

    def request_quit(self) -> None: ...


@dataclass
class FleetTarget:
    """What the dispatcher hands the fleet's handlers (in place of a VM)."""

    schema: Schema
    control: FleetControl
    cur_fds: MonitorFds | None = field(default=None)


def fleet_version() -> dict[str, Any]:
    """query-version of the fleet monitor: qmp-server's own version (it emulates no QEMU)."""
    parts = [int(p) if p.isdigit() else 0 for p in __version__.split(".")[:3]]
    major, minor, micro = [*parts, 0, 0, 0][:3]
    return {"qemu": {"major": major, "minor": minor, "micro": micro},
            "package": f"qmp-server {__version__} fleet"}  # fmt: skip


def _query_fleet(target: FleetTarget, args: dict[str, Any]) -> Any:
    return target.control.vm_infos()


def _query_link(target: FleetTarget, args: dict[str, Any]) -> Any:
    return target.control.link_info()


def _add(target: FleetTarget, args: dict[str, Any]) -> Any:
    target.control.add_vm(args["name"], list(args.get("args", [])))
    return None


def _remove(target: FleetTarget, args: dict[str, Any]) -> Any:
    target.control.remove_vm(args["name"])
    return None


def _quit(target: FleetTarget, args: dict[str, Any]) -> Any:
    target.control.request_quit()
    return None


def _version(target: FleetTarget, args: dict[str, Any]) -> Any:
    return fleet_version()


#: The fleet schema's handlers: its own, and the generic introspection ones.
FLEET_HANDLERS: Mapping[str, Handler] = {
    "query-commands": HANDLERS["query-commands"],
    "query-qmp-schema": HANDLERS["query-qmp-schema"],
    "query-version": _version,  # type: ignore[dict-item]
    "quit": _quit,  # type: ignore[dict-item]
    "query-fleet": _query_fleet,  # type: ignore[dict-item]
    "query-fleet-link": _query_link,  # type: ignore[dict-item]
    "fleet-vm-add": _add,  # type: ignore[dict-item]
    "fleet-vm-remove": _remove,  # type: ignore[dict-item]
}
