"""The fleet file (TOML) and the ``--fleet-size N -- OPTIONS`` form, made into command lines.

Every VM of a fleet is exactly what ``qmp-server OPTIONS`` would run, so the file only says
which options each VM gets.  Rules:

1. A table's keys are qmp-server option names without the dash (``m``, ``qmp``, ``compat``,
   ``guest-fill``, ``device``...).  A string or number is the option's argument, ``true`` a
   flag (``S = true`` is ``-S``; ``false`` leaves it out), a list repeats the option.
   ``args`` is a list of raw options appended as given.
2. ``[defaults]`` applies to every ``[[vm]]``; a key of the entry replaces the default's.
3. A ``[[vm]]`` entry has a ``name`` and an optional ``count`` (default 1).  In names and in
   every argument, ``{name}`` is the VM's name, ``{index}`` its number within the entry (from
   0) and ``{fleet_index}`` its number in the fleet.
4. Nothing is added to a VM's options: ``query-name`` answers what ``-name`` says (for the
   fleet name, ``args = ["-name", "{name}"]`` in ``[defaults]``).
5. ``[fleet]`` holds the process's own options (the fleet monitor's ``qmp``, ``http``,
   ``http-token-file``, ``pidfile``, ``daemonize``, ``link-bandwidth``...); the same options
   on the command line win.
6. Names are 1-64 characters of ``A-Z a-z 0-9 _ . -``, unique in the fleet.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qmp_server.errors import UsageError

__all__ = [
    "PROCESS_OPTIONS",
    "FleetSpec",
    "VMSpec",
    "check_name",
    "expand",
    "fleet_of_size",
    "parse_fleet_file",
    "parse_fleet_text",
    "table_to_args",
]

#: Options of the fleet process (rule 5), with whether they take an argument.
PROCESS_OPTIONS: dict[str, bool] = {
    "qmp": True, "chardev": True, "mon": True, "http": True, "http-token-file": True,
    "http-cors": True, "pidfile": True, "daemonize": False, "poll-us": True,
    "link-bandwidth": True, "link-latency": True,
}  # fmt: skip

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_FIELD = re.compile(r"\{([a-z_]*)\}")
_FIELDS = ("name", "index", "fleet_index")


@dataclass(frozen=True)
class VMSpec:
    """One VM of a fleet: its name and its qmp-server command line."""

    name: str
    args: tuple[str, ...]


@dataclass(frozen=True)
class FleetSpec:
    """The VMs of a fleet and the process options its file gives."""

    vms: tuple[VMSpec, ...]
    process_args: tuple[str, ...] = ()
    #: ``link-bandwidth`` / ``link-latency`` of ``[fleet]`` (the host link model)
    link: tuple[tuple[str, str], ...] = ()


def check_name(name: str) -> str:
    """Rule 6 for one name.

    :raise ValueError: the text users see.
    """
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"VM name '{name}' must be 1-64 characters of letters, digits, '_', '.' and '-'"
        )
    return name


def expand(template: str, **fields: Any) -> str:
    """Rule 3's substitution (only the known fields; ``{{`` and ``}}`` are not special)."""

    def field(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in _FIELDS:
            raise ValueError(
                f"unknown field '{{{key}}}' in '{template}' (known: {{name}}, {{index}}, "
                "{fleet_index})"
            )
        if key not in fields:
            raise ValueError(f"'{{{key}}}' cannot be used in '{template}'")
        return str(fields[key])

    return _FIELD.sub(field, template)


def _scalar(key: str, value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{where}: '{key}' must be a string, a number, true/false or a list")
    return str(value)


def table_to_args(table: Mapping[str, Any], where: str) -> list[str]:
    """Rule 1 for one table (``name``, ``count`` and ``args`` are left to the caller)."""
    out: list[str] = []
    for key, value in table.items():
        if key in ("name", "count", "args"):
            continue
        option = f"-{key}"
        if isinstance(value, bool):
            if value:
                out.append(option)
        elif isinstance(value, list):
            for item in value:
                out += [option, _scalar(key, item, where)]
        else:
            out += [option, _scalar(key, value, where)]
    return out


def _raw_args(table: Mapping[str, Any], where: str) -> list[str]:
    raw = table.get("args", [])
    if not isinstance(raw, list) or not all(isinstance(a, str) for a in raw):
        raise ValueError(f"{where}: 'args' must be a list of strings")
    return list(raw)


def _vm_specs(entries: Sequence[Any], defaults: Mapping[str, Any]) -> list[VMSpec]:
    vms: list[VMSpec] = []
    for number, entry in enumerate(entries, 1):
        where = f"[[vm]] #{number}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: must be a table")
        merged = {**defaults, **entry}
        count = merged.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"{where}: 'count' must be a positive integer")
        template = merged.get("name", "vm{fleet_index}")
        if not isinstance(template, str):
            raise ValueError(f"{where}: 'name' must be a string")
        if count > 1 and "{index}" not in template and "{fleet_index}" not in template:
            raise ValueError(f"{where}: {count} VMs need '{{index}}' in their name")
        args = table_to_args(merged, where) + _raw_args(merged, where)
        for index in range(count):
            fleet_index = len(vms)
            name = check_name(expand(template, index=index, fleet_index=fleet_index))
            fields = {"name": name, "index": index, "fleet_index": fleet_index}
            vms.append(VMSpec(name, tuple(expand(a, **fields) for a in args)))
    return vms


def _check_unique(vms: Sequence[VMSpec]) -> None:
    seen: set[str] = set()
    for vm in vms:
        if vm.name in seen:
            raise ValueError(f"two VMs are named '{vm.name}'")
        seen.add(vm.name)


def _process_args(table: Any) -> tuple[list[str], list[tuple[str, str]]]:
    """The ``[fleet]`` table: the process's options, and the link model's."""
    if not isinstance(table, dict):
        raise ValueError("[fleet] must be a table")
    unknown = sorted(k for k in table if k not in PROCESS_OPTIONS)
    if unknown:
        raise ValueError(
            f"[fleet]: '{unknown[0]}' is not a fleet option (a VM's option belongs in "
            "[defaults] or [[vm]])"
        )
    link = {k: v for k, v in table.items() if k.startswith("link-")}
    rest = {k: v for k, v in table.items() if not k.startswith("link-")}
    return table_to_args(rest, "[fleet]"), [(k, _scalar(k, v, "[fleet]")) for k, v in link.items()]


def parse_fleet_text(text: str, source: str = "<fleet>") -> FleetSpec:
    """The fleet a TOML text describes.

    :raise UsageError: ``SOURCE: reason`` for a TOML error or a rule broken.
    """
    try:
        doc = tomllib.loads(text)
        unknown = sorted(k for k in doc if k not in ("fleet", "defaults", "vm"))
        if unknown:
            raise ValueError(f"unknown table '{unknown[0]}' (known: fleet, defaults, vm)")
        defaults = doc.get("defaults", {})
        if not isinstance(defaults, dict) or "name" in defaults or "count" in defaults:
            raise ValueError("[defaults] must be a table without 'name' and 'count'")
        entries = doc.get("vm", [])
        if not isinstance(entries, list):
            raise ValueError("'vm' must be an array of tables ([[vm]])")
        vms = _vm_specs(entries, defaults)
        _check_unique(vms)
        process, link = _process_args(doc.get("fleet", {}))
    except (tomllib.TOMLDecodeError, ValueError) as err:
        raise UsageError(f"{source}: {err}") from None
    return FleetSpec(tuple(vms), tuple(process), tuple(link))


def parse_fleet_file(path: str) -> FleetSpec:
    """:func:`parse_fleet_text` of a file.

    :raise UsageError: the file cannot be read, or what :func:`parse_fleet_text` raises.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"--fleet {path}: {getattr(err, 'strerror', None) or err}") from None
    return parse_fleet_text(text, path)


def fleet_of_size(count: int, vm_args: Sequence[str], name: str = "vm{index}") -> FleetSpec:
    """The flag form: ``count`` VMs of the same options (rule 3's fields in them).

    :raise UsageError: a bad count, name or field.
    """
    if count < 1:
        raise UsageError("--fleet-size must be a positive integer")
    try:
        vms = _vm_specs([{"name": name, "count": count, "args": list(vm_args)}], {})
    except ValueError as err:
        raise UsageError(str(err)) from None
    return FleetSpec(tuple(vms))
