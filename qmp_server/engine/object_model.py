"""What the emulated QEMU says about its object model: types, properties, machines, CPU models.

Contract: pure (reads package data, no other I/O).  Every answer comes from a recording of the
real QEMU (``tools/record_object_model.py``: QEMU started with libvirt's probe line,
``-machine none,accel=tcg``), stored raw in ``qmp_server/data/object_model/qemu-V.json.gz``, so
members come in QEMU's order.  Which recording a profile uses is :mod:`.machine`'s rule: QEMU
10.0's for the 10.0 profile, QEMU 7.2's for 7.2, the default (8.0.50) and 8.1.  The 8.0.50 and
8.1 profiles therefore describe QEMU 7.2's types, machine types and CPU models (no
``pc-i440fx-8.1``, no ``acpi`` member): honest about where the data comes from rather than
invented.  The schema files describe the same structures (``'if': 'SINCE_10_0'``).

A file is loaded on first use (about 0.1 s), never at start-up.  Rules for what was not asked
verbatim at recording time:

* ``qom-list-types``: the full list (``abstract: true``) in QEMU's order, filtered; each type's
  ``implements`` set was recorded (its ancestors and interfaces, itself included).  The list
  is a fresh QEMU's: types of loadable modules (``qxl``, ``usb-host``) are not in it, but
  answer ``device-list-properties`` and ``-device`` (QEMU loads their module when a request
  names them; that the list then grows is not modelled);
* ``device-list-properties``/``qom-list-properties``: every type's reply was recorded; a name
  QEMU does not know gets the recorded unknown-name error with the name substituted.  A few
  types make the recorded QEMU abort on the request (``crashed``): we answer an error instead;
* ``query-command-line-options``: the full list and each option's reply, as a fresh QEMU
  answers (in QEMU, looking up a type of a loadable module can load the module and with it
  an option, ``spice``; that side effect is not modelled);
* ``query-cpu-model-expansion`` with ``props``: a recorded reply for exactly these arguments if
  there is one; otherwise the model's expansion without props, each given property checked
  against the CPU type's properties (unknown names and non-boolean values for boolean
  properties get QEMU's errors; other value types are not checked) and overlaid on the
  expansion under each of its names (aliases derived from the recording), a ``level`` left at
  its minimum following a given ``min-level``.  An approximation: QEMU's feature dependencies
  are not modelled; libvirt's own requests (a static expansion, then the full expansion of
  its result) were recorded verbatim.
* Accelerator-dependent answers (``query-cpu-definitions``' ``unavailable-features``,
  ``query-sev-capabilities``, ``query-sgx-capabilities``, libvirt's expansions of ``max`` and
  ``host``) are TCG's, or, when KVM is enabled (``query-kvm``), those recorded with
  ``accel=kvm`` on the recording host (its CPU, no SEV or SGX).
"""

from __future__ import annotations

import gzip
import json
from functools import cache
from importlib import resources
from typing import Any

from qmp_server.errors import CommandError
from qmp_server.profiles import Profile

__all__ = ["ObjectModel", "data_version", "object_model"]


def data_version(profile: Profile) -> str:
    """The QEMU version whose recording answers for ``profile`` (as engine/machine.py)."""
    return "10.0" if profile.since(10, 0) else "7.2"


def _for_encoder(value: Any) -> Any:
    """A copy of a recorded value whose objects come out of the wire encoder in the order
    they were recorded: QEMU prints a QDict bucket by bucket, the key inserted last first
    within a bucket, so inserting the recorded keys in reverse reproduces the recording."""
    if isinstance(value, dict):
        return {key: _for_encoder(value[key]) for key in reversed(value)}
    if isinstance(value, list):
        return [_for_encoder(item) for item in value]
    return value


def _answer(reply: dict[str, Any], version: str) -> Any:
    """The ``return`` of a recorded reply (a copy), or its error raised as QEMU's."""
    if "error" in reply:
        raise CommandError(reply["error"]["desc"], reply["error"]["class"])
    if "return" not in reply:
        raise CommandError(f"the recorded QEMU {version} aborts on this request")
    return _for_encoder(reply["return"])


class ObjectModel:
    """One recorded QEMU's object model; methods answer as that QEMU's QMP commands do."""

    def __init__(self, data: dict[str, Any], version: str) -> None:
        self.data = data
        #: "7.2" or "10.0": the recorded QEMU
        self.version = version
        self._nosuch: str = data["no_such_name"]
        self.types: list[dict[str, Any]] = data["types"]
        #: every type, those of loadable modules too (they load when a request names them)
        self._by_name = {t["name"]: t for t in data["types_with_modules"]}
        self._implements: dict[str, frozenset[str]] = {
            name: frozenset(parents) for name, parents in data["implements"].items()
        }
        self._cpu_typenames = {
            d["name"]: d["typename"] for d in data["replies"]["query-cpu-definitions"]["return"]
        }
        self._alias_cache: dict[str, str] | None = None

    # -- helpers --------------------------------------------------------------------------
    def _unknown(self, what: str, name: str) -> CommandError:
        error = self.data["unknown"][what]["error"]
        return CommandError(error["desc"].replace(self._nosuch, name), error["class"])

    def reply(self, command: str, *, kvm: bool = False) -> Any:
        """An argument-less command's recorded answer (``query-target``, ``query-tpm-*`` ...).

        ``kvm``: the guest runs under KVM; answers KVM changes come from the KVM recording.
        """
        if kvm and command in self.data.get("kvm", {}).get("replies", {}):
            return _answer(self.data["kvm"]["replies"][command], self.version)
        return _answer(self.data["replies"][command], self.version)

    def implements(self, typename: str, parent: str) -> bool:
        return parent in self._implements.get(typename, frozenset())

    def is_abstract(self, typename: str) -> bool:
        return bool(self._by_name.get(typename, {}).get("abstract"))

    # -- QMP commands ---------------------------------------------------------------------
    def qom_list_types(self, implements: str | None = None, abstract: bool = False) -> Any:
        return [
            _for_encoder(t) for t in self.types
            if (abstract or not t.get("abstract"))
            and (implements is None or implements in self._implements.get(t["name"], ()))
        ]  # fmt: skip

    def _per_type(self, command: str, typename: str) -> Any:
        reply = self.data[command].get(typename)
        if reply is None:
            raise self._unknown(command, typename)
        return _answer(reply, self.version)

    def device_list_properties(self, typename: str) -> Any:
        return self._per_type("device-list-properties", typename)

    def qom_list_properties(self, typename: str) -> Any:
        return self._per_type("qom-list-properties", typename)

    def query_machines(self, args: dict[str, Any]) -> Any:
        if not args:
            return self.reply("query-machines")
        return _answer(self.data["query-machines-args"][json.dumps(args)], self.version)

    def command_line_options(self, option: str | None = None, *, loaded: bool = False) -> Any:
        """``loaded``: a ``qom-list-types`` has loaded QEMU's modules (7.2: ``-spice``)."""
        if loaded:
            if option is None:
                return _answer(self.data["query-command-line-options-loaded"]["all"], self.version)
            table = self.data["query-command-line-options-loaded"]["options"]
        else:
            table = self.data["query-command-line-options"]
            if option is None:
                return self.reply("query-command-line-options")
        reply = table.get(option)
        if reply is None:
            raise self._unknown("query-command-line-options", option)
        return _answer(reply, self.version)

    def cpu_model_expansion(self, kind: str, model: dict[str, Any], *, kvm: bool = False) -> Any:
        """``query-cpu-model-expansion`` (see the module docstring for ``props``)."""
        recorded = self.data["cpu-model-expansion-props"]
        if kvm:
            recorded = self.data.get("kvm", {}).get("cpu-model-expansion-props", []) + recorded
        for args, reply in recorded:
            if args == {"type": kind, "model": model}:
                return _answer(reply, self.version)
        name = model["name"]
        if name not in self._cpu_typenames:
            raise self._unknown("query-cpu-model-expansion", name)
        expansion = _answer(self.data["cpu-model-expansion"][kind][name], self.version)
        if "props" not in model:
            return expansion
        props = model["props"]
        if not isinstance(props, dict):
            if self.version == "7.2":  # 7.2 ignores props that are not an object
                return expansion
            raise CommandError("Invalid parameter type for 'model.props', expected: object")
        typename = self._cpu_typenames[name]
        known = {p["name"]: p["type"] for p in self.qom_list_properties(typename)}
        expanded = expansion["model"].setdefault("props", {})
        before = dict(expanded)
        aliases = self._aliases()
        for key, value in props.items():
            if key not in known:
                desc = self.data["unknown"]["cpu-property"]["error"]["desc"]
                raise CommandError(
                    desc.replace("max-x86_64-cpu", typename).replace(self._nosuch, key)
                )
            if known[key] == "bool" and not isinstance(value, bool):
                where = f"model.props.{key}" if self.version == "10.0" else key
                raise CommandError(f"Invalid parameter type for '{where}', expected: boolean")
            canonical = aliases.get(key, key)
            for other in expanded:
                if aliases.get(other, other) == canonical:  # the feature under each name
                    expanded[other] = value
        for level in ("level", "xlevel", "xlevel2", "level-func7"):
            # a level QEMU derives from the features (left at the minimum) follows the minimum
            low = f"min-{level}"
            if (
                level not in props
                and low in props
                and level in before
                and before[level] == before.get(low)
            ):
                expanded[level] = props[low]
        return expansion

    def _aliases(self) -> dict[str, str]:
        """Other names of x86 features (``sse4_2``, ``i64``), to their canonical name.

        Derived from the recording: a name a full expansion shows but the static expansion
        never does is an alias of the one static name that has the same value in every
        recorded full expansion (spellings differing in ``-``, ``_``, ``.`` first).
        """
        if self._alias_cache is not None:
            return self._alias_cache
        full = [
            r["return"]["model"].get("props", {})
            for r in self.data["cpu-model-expansion"]["full"].values()
            if "return" in r
        ]
        static: set[str] = set()
        for r in self.data["cpu-model-expansion"]["static"].values():
            if "return" in r:
                static.update(r["return"]["model"].get("props", {}))
        vectors: dict[tuple[Any, ...], list[str]] = {}
        for name in sorted(static):
            if not all(isinstance(p.get(name, False), bool) for p in full):
                continue  # numbers and strings (levels, model-id) are no features
            vectors.setdefault(tuple(p.get(name) for p in full), []).append(name)
        by_spelling = {_feature_key(n): n for n in static}
        aliases: dict[str, str] = {}
        for name in full[0] if full else {}:
            if name in static:
                continue
            if _feature_key(name) in by_spelling:
                aliases[name] = by_spelling[_feature_key(name)]
                continue
            same = vectors.get(tuple(p.get(name) for p in full), [])
            if len(same) > 1:  # ambiguous: prefer the name that shares a prefix (pclmuldq)
                same = [n for n in same if n[:4] == name[:4]]
            if len(same) == 1:
                aliases[name] = same[0]
        self._alias_cache = aliases
        return aliases

    # -- -device --------------------------------------------------------------------------
    def device_help(self, driver: str | None = None) -> str:
        """``-device help`` (the recorded list) or ``-device DRIVER,help`` (its properties).

        A driver's text is built from its recorded ``device-list-properties`` the way QEMU
        prints it: lines sorted, ``name=<type>`` padded to 24 columns, `` - description``
        and `` (default: V)`` (10.0 shows booleans as on/off and strings bare).

        :raise CommandError: ``device-list-properties``' refusal of the driver, which QEMU
            prints (and exits with status 0).
        """
        if driver is None:
            text: str = self.data["device_help"]
            return text
        lines = []
        for prop in self.device_list_properties(driver):
            line = f"  {prop['name']}=<{prop['type']}>"
            if "description" in prop or "default-value" in prop:
                line = f"{line:<24} - {prop.get('description', '')}"
                if "default-value" in prop:
                    line += f" (default: {self._help_value(prop['default-value'])})"
            lines.append(line)
        return "\n".join([f"{driver} options:", *sorted(lines)]) + "\n"

    def _help_value(self, value: Any) -> str:
        if self.version == "10.0" and isinstance(value, bool):
            return "on" if value else "off"
        if self.version == "10.0" and isinstance(value, str):
            return value
        return json.dumps(value)

    def device_catalog(self) -> dict[str, Any]:
        """What ``-device`` needs, per device type (module devices included): whether it is
        abstract, whether a user can create it (``-device help`` lists it), its property
        names.  Written beside the recording as ``qemu-V.devices.json.gz`` (small, so a
        command line with ``-device`` does not load the whole recording)."""
        creatable = _listed_devices(self.data["device_help"])
        devices: dict[str, Any] = {}
        for name, entry in self._by_name.items():
            if not self.implements(name, "device"):
                continue
            reply = self.data["device-list-properties"].get(name, {})
            devices[name] = {
                "abstract": bool(entry.get("abstract")),
                "user_creatable": name in creatable,
                "properties": [p["name"] for p in reply.get("return", ())],
            }
        return {"version": self.version, "devices": devices}


def _feature_key(name: str) -> str:
    """x86 feature names come in spellings with '-', '_' and '.' (``sse4.2``, ``sse4_2``)."""
    return name.replace("_", "-").replace(".", "-")


def _listed_aliases(text: str) -> dict[str, str]:
    """``-device help``'s ``alias "virtio-serial"`` of ``name "virtio-serial-pci"``."""
    aliases = {}
    for line in text.splitlines():
        if line.startswith('name "') and ', alias "' in line:
            aliases[line.split(', alias "', 1)[1].split('"', 1)[0]] = line.split('"', 2)[1]
    return aliases


def device_aliases(version: str) -> dict[str, str]:
    """The short names QEMU's ``-device`` also takes (``virtio-net`` for ``virtio-net-pci``)."""
    return _listed_aliases(_load(version).device_help())


def type_names(version: str) -> frozenset[str]:
    """Every QOM type of the recorded QEMU (module types included)."""
    return frozenset(_load(version)._by_name)


def _listed_devices(text: str) -> frozenset[str]:
    names = set()
    for line in text.splitlines():
        if line.startswith('name "'):
            names.add(line.split('"', 2)[1])
    return frozenset(names)


@cache
def _load(version: str) -> ObjectModel:
    path = resources.files("qmp_server.data").joinpath("object_model", f"qemu-{version}.json.gz")
    with gzip.open(path.open("rb"), "rt", encoding="utf-8") as f:
        return ObjectModel(json.load(f), version)


def object_model(profile: Profile) -> ObjectModel:
    """The (lazily loaded, shared) object model of ``profile``'s recording."""
    return _load(data_version(profile))
