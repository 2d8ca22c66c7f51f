"""The HMP command table: each command's arguments (our own specs, after QEMU's behaviour) and
how it maps onto QMP commands.

Which commands and flags exist depends on the emulated version: ``migrate -b``/``-i`` (block
migration) exist up to 9.0 and, since qmp-server models no drives, migrate like a plain
``migrate`` (as QEMU does for a guest without disks) with 7.2's trailing newline after a
synchronous run.  ``migrate_set_parameter`` parses each value the way QEMU's HMP does
(recorded): ``max-bandwidth`` as a size in MiB by default (``Invalid
size``), the other sizes and 64-bit counters as byte sizes, small integers with range checks
(``expects uint8_t``), booleans, strings and enum names.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from qmp_server.engine.sizes import SIZE_HINT, SizeError, qemu_strtosz
from qmp_server.errors import CommandError
from qmp_server.hmp import format as fmt
from qmp_server.hmp.parser import Arg
from qmp_server.profiles import Profile

if TYPE_CHECKING:
    from qmp_server.hmp.interpreter import HMPInterpreter, HMPResult

__all__ = ["HMPCommand", "command_table"]

Runner = Callable[["HMPInterpreter", dict[str, Any], bool], "HMPResult"]

_INT64_MAX = (1 << 63) - 1
_SYNC_REFUSED = "terminal does not allow synchronous migration, continuing detached\n"


@dataclass(frozen=True)
class HMPCommand:
    name: str
    args: tuple[Arg, ...]
    run: Runner
    help: str | None = None


def _result(text: str = "", **kw: Any) -> HMPResult:
    from qmp_server.hmp.interpreter import HMPResult

    return HMPResult(text, **kw)


# -- info ---------------------------------------------------------------------------------
def _info_status(h: HMPInterpreter, a: dict[str, Any], i: bool) -> HMPResult:
    return _result(fmt.info_status(h.execute("query-status")))


def _info_version(h: HMPInterpreter, a: dict[str, Any], i: bool) -> HMPResult:
    return _result(fmt.info_version(h.execute("query-version")))


def _has(h: HMPInterpreter, name: str) -> bool:
    return h.ctx.vm.schema.command(name) is not None


def _info_name(h: HMPInterpreter, a: dict[str, Any], i: bool) -> HMPResult:
    name = h.execute("query-name").get("name") if _has(h, "query-name") else h.ctx.name
    return _result(f"{name}\n" if name else "")


def _info_uuid(h: HMPInterpreter, a: dict[str, Any], i: bool) -> HMPResult:
    if _has(h, "query-uuid"):
        return _result(f"{h.execute('query-uuid')['UUID']}\n")
    return _result(f"{h.ctx.uuid or '00000000-0000-0000-0000-000000000000'}\n")


def _info_ramblock(h: HMPInterpreter, a: dict[str, Any], i: bool) -> HMPResult:
    return _result(fmt.info_ramblock(h.ctx.vm.profile, h.ctx.ramblocks))


def _info_migrate(h: HMPInterpreter, a: dict[str, Any], i: bool) -> HMPResult:
    return _result(fmt.info_migrate(h.ctx.vm.profile, h.execute("query-migrate")))


def _info_caps(h: HMPInterpreter, a: dict[str, Any], i: bool) -> HMPResult:
    return _result(fmt.info_migrate_capabilities(h.execute("query-migrate-capabilities")))


def _info_params(h: HMPInterpreter, a: dict[str, Any], i: bool) -> HMPResult:
    return _result(fmt.info_migrate_parameters(h.execute("query-migrate-parameters")))


# -- migration ----------------------------------------------------------------------------
def _enum(h: HMPInterpreter, enum: str, value: str) -> str:
    if value not in h.ctx.vm.schema.enum_members(enum):
        raise CommandError(f"invalid parameter value: {value}")
    return value


def _set_capability(h: HMPInterpreter, a: dict[str, Any], i: bool) -> HMPResult:
    cap = _enum(h, "MigrationCapability", a["capability"])
    h.execute(
        "migrate-set-capabilities", {"capabilities": [{"capability": cap, "state": a["state"]}]}
    )
    return _result()


def _size_error(name: str) -> CommandError:
    return CommandError(f"Parameter '{name}' expects a non-negative number below 2^64\n{SIZE_HINT}")


def _parse_uint(name: str, text: str, bits: int) -> int:
    try:
        value = int(text, 16) if text[:2].lower() == "0x" else int(text, 10)
    except ValueError:
        raise CommandError(f"Parameter '{name}' expects uint64") from None
    if value < 0:
        value += 1 << 64
    if not 0 <= value < 1 << 64:
        raise CommandError(f"Parameter '{name}' expects uint64")
    if bits < 64 and value >= 1 << bits:
        raise CommandError(f"Parameter '{name}' expects uint{bits}_t")
    return value


_MIB_SIZES = frozenset({"max-bandwidth"})
_UINT_BITS = {"uint8": 8, "uint16": 16, "uint32": 32}


def _parameter_value(h: HMPInterpreter, name: str, text: str) -> Any:
    """The QMP value of ``migrate_set_parameter NAME TEXT`` (QEMU's per-type parsing)."""
    schema = h.ctx.vm.schema
    obj: Any = schema.lookup_type("MigrateSetParameters")
    member = obj.member(name) if obj is not None else None
    if member is None:
        raise CommandError(f"invalid parameter value: {name}")
    if name == "block-bitmap-mapping":
        raise CommandError("The block-bitmap-mapping parameter can only be set through QMP")
    type_name = getattr(member.type, "name", "")
    if name in _MIB_SIZES:
        try:
            value = qemu_strtosz(text, 20)
        except SizeError:
            value = -1
        if not 0 <= value <= _INT64_MAX:
            raise CommandError(f"Invalid size {text}")
        return value
    if type_name in ("size", "uint64"):
        try:
            return qemu_strtosz(text, 0)
        except SizeError:
            raise _size_error(name) from None
    if type_name in _UINT_BITS:
        return _parse_uint(name, text, _UINT_BITS[type_name])
    if type_name == "bool":
        if text not in ("on", "off", "yes", "no", "true", "false"):
            raise CommandError(f"Parameter '{name}' expects 'on' or 'off'")
        return text in ("on", "yes", "true")
    if type_name in ("StrOrNull", "str"):
        return text
    values = schema.enum_members(type_name)
    if text not in values:
        raise CommandError(f"Parameter '{name}' does not accept value '{text}'")
    return text


def _set_parameter(h: HMPInterpreter, a: dict[str, Any], i: bool) -> HMPResult:
    name = a["parameter"]
    value = _parameter_value(h, name, a["value"])
    h.execute("migrate-set-parameters", {name: value})
    return _result()


def _migrate(h: HMPInterpreter, a: dict[str, Any], interactive: bool) -> HMPResult:
    args: dict[str, Any] = {"uri": a["uri"]}
    if a.get("resume"):
        args["resume"] = True
    h.execute("migrate", args)
    if a.get("detach"):
        return _result()
    if not interactive:
        return _result(_SYNC_REFUSED)
    block = bool(a.get("blk") or a.get("inc"))
    return _result(wait_migration=True, block=block)


def _simple(qmp: str) -> Runner:
    def run(h: HMPInterpreter, a: dict[str, Any], i: bool) -> HMPResult:
        h.execute(qmp, {})
        return _result()

    return run


def _with_uri(qmp: str) -> Runner:
    def run(h: HMPInterpreter, a: dict[str, Any], i: bool) -> HMPResult:
        h.execute(qmp, {"uri": a["uri"]})
        return _result()

    return run


def _continue(h: HMPInterpreter, a: dict[str, Any], i: bool) -> HMPResult:
    state = _enum(h, "MigrationStatus", a["state"])
    h.execute("migrate-continue", {"state": state})
    return _result()


def _help(h: HMPInterpreter, a: dict[str, Any], i: bool) -> HMPResult:
    name = a.get("name")
    texts = help_texts(h.ctx.vm.profile)
    if name is None:
        # QEMU lists every command; qmp-server lists the recorded texts of those it has
        # (enough for qmp-shell -H's completion, which reads the first word of each line)
        return _result("".join(texts[n] for n in h.commands if n in texts))
    if name in texts:
        return _result(texts[name])
    return _result(f"unknown command: '{name}'\n")


@cache
def help_texts(profile: Profile) -> dict[str, str]:
    """``help CMD`` texts recorded from the emulated QEMU (tools/record_hmp.py)."""
    folder = "qemu-10.0" if profile.since(10, 0) else "qemu-7.2"
    data = resources.files("qmp_server.data").joinpath("hmp", folder, "help.json")
    try:
        texts: dict[str, str] = json.loads(data.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    return texts


_S = "s"
_URI = (Arg("uri", _S),)


def command_table(profile: Profile) -> tuple[dict[str, HMPCommand], dict[str, HMPCommand]]:
    """(commands, info subcommands) of the emulated version."""
    block = not profile.since(9, 1)
    flags = "dbir" if block else "dr"
    names = ("detach", "blk", "inc", "resume") if block else ("detach", "resume")
    cmds = [
        HMPCommand("migrate", (Arg("flags", "-", flags=flags, names=names), *_URI), _migrate),
        HMPCommand("migrate_cancel", (), _simple("migrate_cancel")),
        HMPCommand("migrate_continue", (Arg("state", _S),), _continue),
        HMPCommand("migrate_incoming", _URI, _with_uri("migrate-incoming")),
        HMPCommand("migrate_recover", _URI, _with_uri("migrate-recover")),
        HMPCommand("migrate_pause", (), _simple("migrate-pause")),
        HMPCommand("migrate_start_postcopy", (), _simple("migrate-start-postcopy")),
        HMPCommand(
            "migrate_set_capability", (Arg("capability", _S), Arg("state", "b")), _set_capability
        ),
        HMPCommand(
            "migrate_set_parameter", (Arg("parameter", _S), Arg("value", _S)), _set_parameter
        ),
        HMPCommand("stop", (), _simple("stop")),
        HMPCommand("cont", (), _simple("cont")),
        HMPCommand("s", (), _simple("stop")),  # QEMU's aliases ("stop|s", "cont|c")
        HMPCommand("c", (), _simple("cont")),
        HMPCommand("help", (Arg("name", _S, optional=True),), _help),
        HMPCommand("?", (Arg("name", _S, optional=True),), _help),
    ]
    infos = [
        HMPCommand("status", (), _info_status),
        HMPCommand("version", (), _info_version),
        HMPCommand("name", (), _info_name),
        HMPCommand("uuid", (), _info_uuid),
        HMPCommand("ramblock", (), _info_ramblock),
        HMPCommand("migrate", (), _info_migrate),
        HMPCommand("migrate_capabilities", (), _info_caps),
        HMPCommand("migrate_parameters", (), _info_params),
    ]
    return {c.name: c for c in cmds}, {c.name: c for c in infos}
