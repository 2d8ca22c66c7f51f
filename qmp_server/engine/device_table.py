"""``-device``: which devices the command line created, as the emulated QEMU accepts them.

Contract: pure.  :func:`parse_device_option` reads one ``-device`` argument in either of QEMU's
forms, key=value (``piix3-usb-uhci,id=usb,bus=pci.0,addr=0x1.0x2``; the first item without
``=`` is the driver, ``,,`` is a literal comma) or JSON (``{"driver": "piix3-usb-uhci", "id":
"usb", ...}``, what libvirt writes for a QEMU whose schema has ``device.json``).
:meth:`DeviceTable.add` checks the device against the recorded QEMU's type list
(:mod:`.object_model`) and remembers it, so that commands can look devices up by id.

What QEMU checks here, with its texts (recorded live from 7.2 and 10.0, identical):

* ``'X' is not a valid device model name``: no such type, or not a device;
* ``Parameter 'driver' expects a non-abstract device type`` / ``... a pluggable device type``
  (a device users cannot create, e.g. ``i440FX-pcihost``);
* ``Parameter 'driver' is missing``; ``Property 'DRIVER.NAME' not found``;
* ``Parameter 'id' expects an identifier`` (key=value form only; QEMU adds a hint line);
* ``Duplicate ID 'X' for device`` between two key=value devices, ``Duplicate device ID 'X'``
  when a JSON device is involved (QEMU reports it on the JSON one);
* a short-form boolean (``,foo`` meaning ``foo=on``) draws QEMU's deprecation warning.

Not modelled: buses and slots (QEMU refuses ``piix3-usb-uhci`` on ``-machine none`` for want
of a PCI bus; we accept it), property values (only names are checked).  ``vfio-sim`` is ours
(see :mod:`.devices`); it goes through the same table.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import cache
from importlib import resources
from typing import Any

from qmp_server.engine.devices import VfioSimConfig, parse_device
from qmp_server.engine.object_model import data_version, device_aliases
from qmp_server.profiles import Profile

__all__ = [
    "DeviceCatalog",
    "DeviceError",
    "DeviceSpec",
    "DeviceTable",
    "device_catalog",
    "load_devices",
    "parse_device_option",
]

_ID_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]*\Z")
_ID_HINT = "Identifiers consist of letters, digits, '-', '.', '_', starting with a letter."
#: Properties every device takes besides its own (QEMU's -device handles them itself).
_COMMON = frozenset({"id", "bus", "driver"})


class DeviceError(ValueError):
    """A ``-device`` QEMU refuses; ``str()`` is QEMU's message including ``-device TEXT: ``.

    ``warnings``: what QEMU printed before refusing (set by :func:`load_devices`).
    """

    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """One ``-device``: its driver, id and other properties, as given on the command line."""

    driver: str
    id: str | None
    #: the other properties in command-line order (strings, or JSON values in JSON form)
    props: dict[str, Any] = field(default_factory=dict)
    #: the option text as given
    text: str = ""
    json: bool = False
    #: deprecation warnings QEMU prints for this option (without the program prefix)
    warnings: tuple[str, ...] = ()


def _split_keyval(text: str) -> list[str]:
    items: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "," and text[i + 1 : i + 2] == ",":
            current.append(",")
            i += 2
            continue
        if ch == ",":
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    items.append("".join(current))
    return items


def parse_device_option(text: str) -> DeviceSpec:
    """Split ``-device TEXT`` into driver, id and properties (no type check yet).

    :raise DeviceError: QEMU's text for a malformed option.
    """
    where = f"-device {text}: "
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise DeviceError(f"{where}JSON parse error, premature EOI") from None
        if not isinstance(value, dict):
            raise DeviceError(f"{where}'{text}' is not a valid device model name")
        props = dict(value)
        driver = props.pop("driver", None)
        if not isinstance(driver, str):
            raise DeviceError(f"{where}Parameter 'driver' is missing")
        dev_id = props.pop("id", None)
        return DeviceSpec(driver, None if dev_id is None else str(dev_id), props, text, True)
    items = _split_keyval(text)
    driver_name: str | None = None
    props = {}
    warnings: list[str] = []
    for index, item in enumerate(items):
        name, eq, raw = item.partition("=")
        if not eq and index == 0:
            driver_name = item
            continue
        if not eq:
            warnings.append(
                f"{where}warning: short-form boolean option '{name}' deprecated\n"
                f"Please use {name}=on instead"
            )
            raw = "on"
        if name == "driver":
            driver_name = raw
        else:
            props[name] = raw
    if driver_name is None:
        raise DeviceError(f"{where}Parameter 'driver' is missing")
    dev_id = props.pop("id", None)
    if dev_id is not None and not _ID_RE.match(dev_id):
        raise DeviceError(f"{where}Parameter 'id' expects an identifier\n{_ID_HINT}")
    return DeviceSpec(driver_name, dev_id, props, text, False, tuple(warnings))


class DeviceCatalog:
    """The device types of one recorded QEMU, as ``-device`` checks them.

    Loaded from ``qemu-V.devices.json.gz``, which ``tools/record_object_model.py`` derives
    from the recording (:meth:`.ObjectModel.device_catalog`).
    """

    def __init__(self, data: dict[str, Any]) -> None:
        self.version: str = data["version"]
        self.devices: dict[str, dict[str, Any]] = data["devices"]

    def resolve(self, driver: str) -> str:
        """The type ``-device DRIVER`` creates: DRIVER, or the device an alias names."""
        if driver in self.devices:
            return driver
        return device_aliases(self.version).get(driver, driver)

    def check(self, driver: str) -> str | None:
        """QEMU's refusal of ``-device DRIVER`` before any property is looked at, or None."""
        entry = self.devices.get(driver)
        if entry is None:  # no such type, or not a device
            return f"'{driver}' is not a valid device model name"
        if entry["abstract"]:
            return "Parameter 'driver' expects a non-abstract device type"
        if not entry["user_creatable"]:
            return "Parameter 'driver' expects a pluggable device type"
        return None

    def property_names(self, driver: str) -> frozenset[str]:
        """Properties ``-device DRIVER,...`` takes besides QEMU's own ``id``, ``bus``."""
        return frozenset(self.devices.get(driver, {}).get("properties", ()))


@cache
def _catalog(version: str) -> DeviceCatalog:
    name = f"qemu-{version}.devices.json.gz"
    path = resources.files("qmp_server.data").joinpath("object_model", name)
    with gzip.open(path.open("rb"), "rt", encoding="utf-8") as f:
        return DeviceCatalog(json.load(f))


def device_catalog(profile: Profile) -> DeviceCatalog:
    """The (cached) device catalog of ``profile``'s recording."""
    return _catalog(data_version(profile))


class DeviceTable:
    """The devices of the command line, in order, and by id (``vm.devices``).

    Other commands look devices up here (``qom-list /machine/peripheral``, the balloon).
    """

    def __init__(self) -> None:
        self.devices: list[DeviceSpec] = []
        self.by_id: dict[str, DeviceSpec] = {}

    def __iter__(self) -> Iterator[DeviceSpec]:
        return iter(self.devices)

    def __len__(self) -> int:
        return len(self.devices)

    def get(self, dev_id: str) -> DeviceSpec | None:
        return self.by_id.get(dev_id)

    def of_driver(self, driver: str) -> list[DeviceSpec]:
        return [d for d in self.devices if d.driver == driver]

    def add(self, spec: DeviceSpec, catalog: DeviceCatalog | None) -> None:
        """Check ``spec`` as QEMU would (``catalog``: None for our ``vfio-sim``) and keep it.

        :raise DeviceError: QEMU's refusal.
        """
        where = f"-device {spec.text}: "
        if spec.id is not None and spec.id in self.by_id:
            other = self.by_id[spec.id]
            if spec.json or other.json:
                culprit = spec if spec.json else other
                raise DeviceError(f"-device {culprit.text}: Duplicate device ID '{spec.id}'")
            raise DeviceError(f"{where}Duplicate ID '{spec.id}' for device")
        if catalog is not None:
            spec = replace(spec, driver=catalog.resolve(spec.driver))
            error = catalog.check(spec.driver)
            if error is not None:
                raise DeviceError(where + error)
            known = catalog.property_names(spec.driver) | _COMMON
            for name in spec.props:
                if name not in known:
                    raise DeviceError(f"{where}Property '{spec.driver}.{name}' not found")
        self.devices.append(spec)
        if spec.id is not None:
            self.by_id[spec.id] = spec


def load_devices(texts: list[str], profile: Profile) -> tuple[DeviceTable, list[VfioSimConfig]]:
    """The table of every ``-device`` of the command line, and the ``vfio-sim`` configs.

    The profile's device catalog is loaded only when a device other than ``vfio-sim`` is given.

    :raise DeviceError: the first option QEMU would refuse.
    """
    table = DeviceTable()
    configs: list[VfioSimConfig] = []
    warnings: list[str] = []
    for text in texts:
        spec = parse_device_option(text)
        warnings.extend(spec.warnings)
        try:
            if spec.driver == "vfio-sim" and not spec.json:
                try:
                    configs.append(parse_device(text))
                except ValueError as err:
                    raise DeviceError(f"-device {text}: {err}") from None
                table.add(spec, None)
            else:
                table.add(spec, device_catalog(profile))
        except DeviceError as err:
            err.warnings = tuple(warnings)
            raise
    return table, configs
