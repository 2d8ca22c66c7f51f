"""The ``migration`` object's ``-global`` properties: table, value parsing, start-up check.

Contract: pure.  :data:`PROPERTIES` lists, per profile, the properties QEMU's ``migration``
object has (capability presets ``x-<cap>``, parameter presets, and the others such as
``store-global-state``).  :func:`parse_value` turns the command-line text into a value with
QEMU's string-visitor rules and texts.  :func:`apply_globals` applies ``-global`` triples in
order and runs the start-up check the way ``migration_object_check`` does (parameters first,
then capabilities against an all-false old set).  Every error is a
:class:`~qmp_server.errors.UsageError` whose ``str`` is exactly what QEMU prints after
``qemu-system-x86_64: `` (the CLI prints ``qmp-server: <text>`` and exits 1); a hint QEMU
prints on the following lines is included after a newline.

Facts checked live on QEMU 7.2.22:

* bool accepts exactly on/yes/true/y and off/no/false/n (lower case);
* integers are C ``strtoull`` base 0 (``0x10``, ``010`` is octal, ``+3``, ``-1`` wraps) and a
  non-number says ``expects uint64`` even for a uint8 property; range errors say ``uint8_t`` /
  ``uint32_t``;
* sizes are QEMU's ``qemu_strtosz``: decimal (``010`` is ten) or hex integer part, optional
  fraction (needs a suffix unless it is zero), suffix B/K/M/G/T/P/E in either case;
* a later ``-global`` for the same property wins; a driver other than ``migration`` only
  produces a warning ("global foo.bar has invalid class name").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from qmp_server._types import UINT64_MAX
from qmp_server.engine.capabilities import CapsContext, capability_names, check_capabilities
from qmp_server.engine.host import HostInfo
from qmp_server.engine.parameters import check_parameters, default_parameters, parameter_specs
from qmp_server.engine.sizes import SizeError, qemu_strtosz
from qmp_server.errors import UsageError
from qmp_server.profiles import Profile

__all__ = [
    "SIZE_HINT",
    "GlobalsResult",
    "PropSpec",
    "apply_globals",
    "parse_size",
    "parse_strtoull",
    "parse_value",
    "property_specs",
]

SIZE_HINT = (
    "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
    "and exabytes, respectively."
)

_ENUMS: dict[str, tuple[str, ...]] = {
    "MultiFDCompression": ("none", "zlib", "zstd"),
    "MigMode": ("normal", "cpr-reboot", "cpr-transfer"),
    "ZeroPageDetection": ("none", "legacy", "multifd"),
}
_UINT_BITS = {"uint8": 8, "uint32": 32, "uint64": 64}


@dataclass(frozen=True, slots=True)
class PropSpec:
    """One property: ``kind`` is ``cap``, ``param`` or ``other``; ``target`` the capability
    or parameter name it presets (the property name itself for ``other``)."""

    name: str
    qapi_type: str
    kind: str
    target: str
    default: Any = None


# The non-parameter properties, per profile, in QEMU's declaration order.
_OTHER_72 = (
    ("store-global-state", "bool", True),
    ("send-configuration", "bool", True),
    ("send-section-footer", "bool", True),
    ("decompress-error-check", "bool", True),
    ("x-clear-bitmap-shift", "uint8", 18),
    ("x-postcopy-preempt-break-huge", "bool", True),
)
_OTHER_81 = (
    ("store-global-state", "bool", True),
    ("send-configuration", "bool", True),
    ("send-section-footer", "bool", True),
    ("decompress-error-check", "bool", True),
    ("multifd-flush-after-each-section", "bool", False),
    ("x-clear-bitmap-shift", "uint8", 18),
    ("x-preempt-pre-7-2", "bool", False),
)
_OTHER_100 = (
    ("store-global-state", "bool", True),
    ("send-configuration", "bool", True),
    ("send-section-footer", "bool", True),
    ("send-switchover-start", "bool", True),
    ("multifd-flush-after-each-section", "bool", False),
    ("x-clear-bitmap-shift", "uint8", 18),
    ("x-preempt-pre-7-2", "bool", False),
    ("multifd-clean-tls-termination", "bool", True),
)
_OTHERS = {"7.2": _OTHER_72, "8.0.50": _OTHER_72, "8.1": _OTHER_81, "10.0": _OTHER_100}

#: Capabilities without a property (QEMU never defined one for them).
_NO_CAP_PROPERTY = frozenset(
    {
        "pause-before-switchover",
        "dirty-bitmaps",
        "postcopy-blocktime",
        "late-block-activate",
        "x-ignore-shared",
        "validate-uuid",
    }
)
#: Capabilities whose property name is not ``x-<name>``.
_CAP_PROPERTY_NAME = {"x-colo": "x-colo", "mapped-ram": "mapped-ram"}
#: QEMU declares x-postcopy-preempt right after x-postcopy-ram, out of enum order.
_CAP_PROPERTY_ORDER_FIRST = ("postcopy-ram", "postcopy-preempt")


def _cap_properties(profile: Profile, host: HostInfo) -> list[PropSpec]:
    names = [c for c in capability_names(profile) if c not in _NO_CAP_PROPERTY]
    # declaration order: enum order, except that postcopy-preempt follows postcopy-ram
    names.remove("postcopy-preempt")
    names.insert(names.index("postcopy-ram") + 1, "postcopy-preempt")
    out = []
    for cap in names:
        if cap == "zero-copy-send" and not host.linux:
            continue
        prop = _CAP_PROPERTY_NAME.get(cap, f"x-{cap}")
        out.append(PropSpec(prop, "bool", "cap", cap, False))
    return out


def property_specs(profile: Profile, host: HostInfo | None = None) -> tuple[PropSpec, ...]:
    """Every property of the ``migration`` object in ``profile``, in declaration order."""
    host = host or HostInfo()
    params = [
        PropSpec(s.prop, s.qapi_type, "param", s.name, s.default)
        for s in parameter_specs(profile)
        if s.prop is not None
    ]
    others = [PropSpec(n, t, "other", n, d) for n, t, d in _OTHERS[profile.name]]
    if profile.name in ("7.2", "8.0.50"):
        # 7.2 declares x-postcopy-preempt-break-huge between announce-step and tls-creds.
        split = next(i for i, p in enumerate(params) if p.name == "tls-creds")
        ordered = [*others[:-1], *params[:split], others[-1], *params[split:]]
    else:
        ordered = [*others, *params]
    return (*ordered, *_cap_properties(profile, host))


# -- value parsing ---------------------------------------------------------------------------

_BOOL_WORDS = {"on": True, "yes": True, "true": True, "y": True}
_BOOL_WORDS.update({"off": False, "no": False, "false": False, "n": False})
_STRTOULL = re.compile(r"[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)\Z")


def parse_strtoull(text: str) -> int | None:
    """C ``strtoull(text, &end, 0)`` requiring the whole text: the value, or None.

    A leading ``-`` wraps modulo 2**64 as C does; too many digits give None (ERANGE).

    >>> parse_strtoull("0x10"), parse_strtoull("010"), parse_strtoull("-1") == 2**64 - 1
    (16, 8, True)
    """
    m = _STRTOULL.match(text)
    if m is None:
        return None
    sign, digits = m.groups()
    if digits[:2] in ("0x", "0X"):
        value = int(digits[2:], 16)
    elif digits.startswith("0") and len(digits) > 1:
        value = int(digits, 8)
    else:
        value = int(digits)
    if value > UINT64_MAX:
        return None
    return (-value) % (1 << 64) if sign == "-" else value


def parse_size(text: str) -> int:
    """QEMU's ``qemu_strtosz`` (default unit bytes): see :func:`.sizes.qemu_strtosz`.

    :raise ValueError: with ``args[0]`` ``"range"`` (too big) or ``"invalid"``.

    >>> parse_size("1.5M"), parse_size("0x10"), parse_size("010k"), parse_size("1.0")
    (1572864, 16, 10240, 1)
    """
    try:
        return qemu_strtosz(text)
    except SizeError as exc:
        raise ValueError("range" if exc.out_of_range else "invalid") from None


#: A number with a minus sign, as strtoull() reads it (leading white space allowed).
_NEGATIVE = re.compile(r"[ \t\n\v\f\r]*-[0-9]")


def parse_value(prop: str, qapi_type: str, text: str, profile: Profile | None = None) -> Any:
    """Parse ``text`` for property ``prop`` of ``qapi_type`` as QEMU's -global does.

    ``profile`` selects version differences: since QEMU 10.0 (as recorded) a size
    with a minus sign is out of range (``parse_uint()`` rejects negative numbers with
    ERANGE) instead of being an invalid size.

    :raise UsageError: with QEMU's text after the ``can't apply global ...: `` prefix.
    """
    if qapi_type == "bool":
        if text in _BOOL_WORDS:
            return _BOOL_WORDS[text]
        raise UsageError(f"Parameter '{prop}' expects 'on' or 'off'")
    if qapi_type in _UINT_BITS:
        value = parse_strtoull(text)
        if value is None:
            raise UsageError(f"Parameter '{prop}' expects uint64")
        bits = _UINT_BITS[qapi_type]
        if value >= 1 << bits:
            raise UsageError(f"Parameter '{prop}' expects uint{bits}_t")
        return value
    if qapi_type == "size":
        if profile is not None and profile.since(10, 0) and _NEGATIVE.match(text):
            raise UsageError(f"Value '{text}' is out of range for parameter '{prop}'")
        try:
            return parse_size(text)
        except ValueError as exc:
            if exc.args[0] == "range":
                raise UsageError(f"Value '{text}' is out of range for parameter '{prop}'") from None
            raise UsageError(
                f"Parameter '{prop}' expects a non-negative number below 2^64\n{SIZE_HINT}"
            ) from None
    if qapi_type in _ENUMS:
        if text in _ENUMS[qapi_type]:
            return text
        raise UsageError(f"Parameter '{prop}' does not accept value '{text}'")
    return text  # str


# -- applying -global ------------------------------------------------------------------------


@dataclass(slots=True)
class GlobalsResult:
    """What the ``-global`` options produced: capabilities, parameters, other properties."""

    capabilities: dict[str, bool]
    parameters: dict[str, Any]
    others: dict[str, Any]
    #: warnings QEMU prints (``qemu-system-x86_64: warning: <text>``) without failing.
    warnings: list[str] = field(default_factory=list)


def apply_globals(
    profile: Profile,
    host: HostInfo,
    globals_: Iterable[tuple[str, str, str]],
    *,
    incoming: str | None = None,
    known_class: Callable[[str], bool] = lambda name: False,
) -> GlobalsResult:
    """Apply ``(driver, property, value)`` triples in order, then run QEMU's start-up check.

    ``known_class``: whether the emulated QEMU has a QOM type of that name; a ``-global`` of
    another class than ``migration`` is accepted silently for one (``kvm-pit.lost_tick_policy``
    on Proxmox's command line), and warned about otherwise, as QEMU does.

    :param incoming: the ``-incoming`` argument: with it the runstate is ``inmigrate`` when
        the capabilities are checked (postcopy-ram needs userfaultfd then; checked live).
    :raise UsageError: the first failing ``-global`` (in command-line order), else the
        parameter check, else the capability check.
    """
    specs = {p.name: p for p in property_specs(profile, host)}
    caps = dict.fromkeys(capability_names(profile), False)
    params = default_parameters(profile)
    others = {p.name: p.default for p in specs.values() if p.kind == "other"}
    warnings: list[str] = []
    warned: set[str] = set()
    for driver, prop, text in globals_:
        if driver != "migration":
            key = f"{driver}.{prop}"
            if known_class(driver):
                continue
            if key not in warned:
                warned.add(key)
                warnings.append(f"global {key} has invalid class name")
            continue
        prefix = f"can't apply global {driver}.{prop}={text}: "
        spec = specs.get(prop)
        if spec is None:
            raise UsageError(f"{prefix}Property 'migration.{prop}' not found")
        try:
            value = parse_value(prop, spec.qapi_type, text, profile)
        except UsageError as exc:
            raise UsageError(prefix + str(exc)) from None
        if spec.kind == "cap":
            caps[spec.target] = value
        elif spec.kind == "param":
            params[spec.target] = value
        else:
            others[spec.target] = value
    check_startup(profile, host, caps, params, incoming=incoming)
    return GlobalsResult(caps, params, others, warnings)


def check_startup(
    profile: Profile,
    host: HostInfo,
    caps: Mapping[str, bool],
    params: Mapping[str, Any],
    *,
    incoming: str | None = None,
) -> None:
    """``migration_object_check``: the parameters, then the capabilities from all-false.

    :raise UsageError: with the first error text.
    """
    err = check_parameters(profile, params, {}, caps)
    if err is None:
        old = dict.fromkeys(caps, False)
        ctx = CapsContext(
            inmigrate=incoming is not None,
            multifd_compression=str(params.get("multifd-compression", "none")),
            tls_creds=str(params.get("tls-creds", "")),
        )
        err = check_capabilities(profile, host, old, caps, ctx)
    if err is not None:
        raise UsageError(err)
