"""The QOM tree of a started domain, as ``qom-list`` and ``qom-get`` show it.

Pure.  The object model of the emulated QEMU (the CPU's ~450 properties and their values, the
default devices' properties, ``/machine``'s property list) comes from data recorded from the
real QEMU 7.2 and 10.0 by ``tools/record_domain_model.py``
(``qmp_server/data/domain_model/qemu-<version>.json.gz``); this module builds the tree of the
machine actually started from it:

* ``/machine/unattached/device[N]``: one CPU per ``-smp`` vCPU.  vCPU 0 is ``device[0]``,
  vCPU k > 0 is ``device[k+1]`` (QEMU creates one other unattached object in between);
  the topology properties (``apic-id``, ``socket-id``, ...) are computed, the rest recorded.
* ``/machine/peripheral``: one ``child<DRIVER>`` per ``-device`` with an id.  QEMU keeps
  children in a GLib hash table and ``qom-list`` prepends each property it visits, so the
  answer is ``type`` and then the children in reverse hash-slot order.
* ``/machine/peripheral/ID``: the recorded property list of that driver (``guest-stats`` of
  ``virtio-balloon-pci`` for ``virsh dommemstat``).

Errors are QEMU's: an unknown path is ``DeviceNotFound`` "Device 'PATH' not found", an unknown
property ``GenericError`` "Property 'TYPE.NAME' not found".  Paths outside these (e.g. the
rest of ``/machine/unattached``) are not modelled and answer as unknown.
"""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from qmp_server.engine.topology import Topology
from qmp_server.errors import CommandError
from qmp_server.profiles import Profile
from qmp_server.qapi._hashorder import ghash_order

__all__ = ["DomainModel", "QomTree", "cpu_qom_path", "device_identity", "load_model"]

_TYPE_ENTRY = {"name": "type", "type": "string"}
_TOPOLOGY_PROPS = ("socket-id", "die-id", "core-id", "thread-id")
_DEVICE_PATH = re.compile(r"/machine/unattached/device\[(\d+)\]")


def cpu_qom_path(index: int) -> str:
    """The QOM path of vCPU ``index`` (``device[1]`` is not a CPU in QEMU's pc/q35)."""
    return f"/machine/unattached/device[{index if index == 0 else index + 1}]"


def _reinsert(value: Any) -> Any:
    """A recorded value with every object's keys in the order QEMU inserted them.

    The recording holds QEMU's output order; the encoder puts keys sharing a QDict bucket
    last-inserted first, so inserting them in reverse output order gives the same bytes.
    """
    if isinstance(value, dict):
        return {k: _reinsert(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reinsert(v) for v in value]
    return value


@dataclass(frozen=True)
class DomainModel:
    """The recorded object model of one QEMU version."""

    machines: dict[str, Any]
    devices: dict[str, Any]
    chardev_backends: list[dict[str, str]] = field(default_factory=list)


@cache
def load_model(folder: str) -> DomainModel:
    """Load ``qemu-7.2`` or ``qemu-10.0`` (cached: every server loads it once)."""
    data = resources.files("qmp_server.data").joinpath("domain_model", f"{folder}.json.gz")
    with data.open("rb") as raw, gzip.open(raw, "rt", encoding="ascii") as f:
        recorded = json.load(f)
    return DomainModel(
        machines=recorded["machines"],
        devices=recorded["devices"],
        chardev_backends=recorded.get("chardev-backends", []),
    )


def model_for(profile: Profile) -> DomainModel:
    """The recording that stands for ``profile`` (QEMU 7.2's for versions before 10.0)."""
    return load_model("qemu-10.0" if profile.since(10, 0) else "qemu-7.2")


def device_identity(text: str) -> tuple[str, str | None]:
    """(driver, id) of a ``-device`` value, key=value or JSON form."""
    if text.lstrip().startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError:
            return "", None
        driver, dev_id = obj.get("driver", ""), obj.get("id")
        return str(driver), None if dev_id is None else str(dev_id)
    parts = re.split(r"(?<!,),(?!,)", text)
    driver = ""
    dev_id = None
    for i, part in enumerate(parts):
        key, sep, value = part.partition("=")
        if i == 0 and not sep:
            driver = key
        elif key == "driver":
            driver = value
        elif key == "id":
            dev_id = value.replace(",,", ",")
    return driver, dev_id


class QomTree:
    """The modelled part of the QOM tree of one started machine."""

    def __init__(
        self,
        model: DomainModel,
        family: str,
        topology: Topology,
        devices: list[tuple[str, str | None]],
    ) -> None:
        self.model = model
        self.machine = model.machines.get(family)
        self.topology = topology
        #: id -> driver of every -device with an id, in creation order
        self.peripherals = {dev_id: driver for driver, dev_id in devices if dev_id}
        has_cpus = self.machine is not None and "cpu" in self.machine
        self._cpus = {cpu_qom_path(i): i for i in range(topology.cpus)} if has_cpus else {}

    def defaults(self, command: str) -> list[Any]:
        """What ``command`` answers for the machine's default devices (no ``-nodefaults``).

        Recorded with one vCPU; every further vCPU is created before the default devices
        and moves their ``/machine/unattached/device[N]`` up by one.
        """
        if self.machine is None or "defaults" not in self.machine:
            return []
        shift = self.topology.cpus - 1

        def moved(match: re.Match[str]) -> str:
            index = int(match.group(1))
            return f"/machine/unattached/device[{index + shift if index else 0}]"

        text = json.dumps(self.machine["defaults"].get(command, []))
        return [_reinsert(v) for v in json.loads(_DEVICE_PATH.sub(moved, text))]

    @property
    def cpu_type(self) -> str:
        """The vCPUs' QOM type; empty for a machine without modelled vCPUs (``none``)."""
        if self.machine is None or "cpu" not in self.machine:
            return ""
        return str(self.machine["cpu"]["type"])

    def hotplug_refusal(self) -> CommandError | None:
        """QEMU's error for ``query-hotpluggable-cpus`` on a machine without CPU hotplug."""
        if self.machine is None or "hotpluggable-cpus" not in self.machine:
            return None
        error = self.machine["hotpluggable-cpus"]["error"]
        return CommandError(error["desc"], error["class"])

    def _object(self, path: str) -> tuple[str, list[dict[str, Any]]]:
        """(QOM type, property list) of ``path``; raises DeviceNotFound."""
        if path == "/machine/peripheral":
            children = [
                {"name": name, "type": f"child<{self.peripherals[name]}>"}
                for name in reversed(ghash_order(self.peripherals))
            ]
            return "container", [_TYPE_ENTRY, *children]
        if self.machine is not None:
            if path == "/machine":
                return "machine", list(self.machine["machine"])
            if path in self._cpus:
                return self.cpu_type, list(self.machine["cpu"]["list"])
            if path.startswith("/machine/peripheral/"):
                dev_id = path[len("/machine/peripheral/") :]
                driver = self.peripherals.get(dev_id)
                if driver is not None:
                    recorded = self.model.devices.get(driver)
                    return driver, list(recorded["list"]) if recorded else [_TYPE_ENTRY]
        raise CommandError(f"Device '{path}' not found", "DeviceNotFound")

    def list(self, path: str) -> list[dict[str, Any]]:
        """``qom-list PATH``."""
        return self._object(path)[1]

    def get(self, path: str, prop: str) -> Any:
        """``qom-get PATH PROPERTY``: the value, or QEMU's error as CommandError."""
        qom_type, props = self._object(path)
        if not any(p["name"] == prop for p in props):
            raise CommandError(f"Property '{qom_type}.{prop}' not found")
        if prop == "type":
            return qom_type
        if path == "/machine/peripheral":
            return f"/machine/peripheral/{prop}"
        assert self.machine is not None
        if path in self._cpus:
            index = self._cpus[path]
            if prop == "apic-id":
                return self.topology.apic_id(index)
            if prop in _TOPOLOGY_PROPS:
                return self.topology.ids(index)[prop]
            return _answer(self.machine["cpu"]["get"].get(prop))
        if path.startswith("/machine/peripheral/"):
            recorded = self.model.devices.get(qom_type)
            if recorded is not None:
                return _answer(recorded["get"].get(prop))
        raise CommandError(f"Property '{qom_type}.{prop}' not found")


def _answer(recorded: dict[str, Any] | None) -> Any:
    if recorded is None:
        raise CommandError("property not recorded")
    if "error" in recorded:
        raise CommandError(recorded["error"]["desc"], recorded["error"]["class"])
    return _reinsert(recorded["return"])
