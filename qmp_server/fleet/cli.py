"""The fleet's command line: ``qmp-server --fleet FILE [PROCESS OPTIONS]`` or
``qmp-server --fleet-size N [--fleet-name TEMPLATE] [PROCESS OPTIONS] -- VM OPTIONS``.

Process options are those of :data:`~qmp_server.fleet.config.PROCESS_OPTIONS` (the fleet
monitor's ``-qmp``/``-chardev``/``-mon``, ``--http``..., ``-pidfile``, ``-daemonize``, the link
model); a VM's options go in the file, or after ``--`` in the flag form.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from qmp_server.errors import UsageError
from qmp_server.fleet.config import (
    PROCESS_OPTIONS,
    FleetSpec,
    fleet_of_size,
    parse_fleet_file,
)

__all__ = ["FleetCommandLine", "is_fleet_command_line", "parse_fleet_command_line"]

_FLEET_OPTIONS = ("fleet", "fleet-size", "fleet-name")


@dataclass(frozen=True)
class FleetCommandLine:
    """The fleet to run and the options of its process (as ``parse_args`` takes them)."""

    spec: FleetSpec
    process_args: tuple[str, ...]
    #: ``--link-bandwidth``: the bytes per second the fleet's migrations share (None: no limit)
    link_bandwidth: str | None = None
    #: ``--link-latency``: one-way latency added to every migration's data (e.g. ``2ms``)
    link_latency: str | None = None


def _option(arg: str) -> tuple[str, str | None]:
    name = arg.lstrip("-")
    if arg.startswith("--") and "=" in name:
        key, value = name.split("=", 1)
        return key, value
    return name, None


def is_fleet_command_line(argv: Sequence[str]) -> bool:
    """Whether ``argv`` asks for a fleet (before ``--``)."""
    for arg in argv:
        if arg == "--":
            return False
        if arg.startswith("--") and _option(arg)[0] in ("fleet", "fleet-size"):
            return True
    return False


def parse_fleet_command_line(argv: Sequence[str]) -> FleetCommandLine:
    """Split a fleet command line.

    :raise UsageError: an unknown or misplaced option, a bad file or count.
    """
    found: dict[str, str] = {}
    process: list[str] = []
    vm_args: list[str] | None = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            vm_args = list(argv[i:])
            break
        if not arg.startswith("-"):
            raise UsageError(f"{arg}: unexpected argument")
        name, value = _option(arg)
        takes_value = name in _FLEET_OPTIONS or PROCESS_OPTIONS.get(name, False)
        if name not in _FLEET_OPTIONS and name not in PROCESS_OPTIONS:
            raise UsageError(
                f"{arg}: not an option of the fleet process (a VM's options go in the fleet "
                "file, or after '--' with --fleet-size)"
            )
        if takes_value and value is None:
            if i >= len(argv):
                raise UsageError(f"{arg}: requires an argument")
            value = argv[i]
            i += 1
        if name in _FLEET_OPTIONS or name.startswith("link-"):
            assert value is not None
            found[name] = value
        else:
            process += [f"-{name}"] + ([value] if value is not None else [])
    spec = _spec(found, vm_args)
    file_link = dict(spec.link)
    return FleetCommandLine(
        spec=spec,
        process_args=spec.process_args + tuple(process),
        link_bandwidth=found.get("link-bandwidth", file_link.get("link-bandwidth")),
        link_latency=found.get("link-latency", file_link.get("link-latency")),
    )


def _spec(found: dict[str, str], vm_args: list[str] | None) -> FleetSpec:
    if "fleet" in found and "fleet-size" in found:
        raise UsageError("--fleet and --fleet-size exclude each other")
    if "fleet" in found:
        if vm_args:
            raise UsageError("--fleet FILE takes the VMs' options from the file, not after '--'")
        return parse_fleet_file(found["fleet"])
    try:
        count = int(found["fleet-size"])
    except ValueError:
        raise UsageError(f"--fleet-size {found['fleet-size']}: not a number") from None
    return fleet_of_size(count, vm_args or [], found.get("fleet-name", "vm{index}"))
