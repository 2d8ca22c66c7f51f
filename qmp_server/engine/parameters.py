"""Migration parameters: the per-version table, QEMU's range checks and the query view.

Contract: pure data plus pure functions.  :data:`PARAMETERS` lists, per profile, every member
of the MigrationParameters struct in schema order (the ``query-migrate-parameters`` order),
with its QAPI type, default and the ``-global migration.*`` property that presets it.
:func:`check_parameters` is QEMU's ``migrate_params_check`` run on *current overlaid with the
request*: the first error text, or ``None``.  Neighbours: :mod:`qmp_server.engine.config`
(stores the values), :mod:`qmp_server.engine.properties` (command-line presets), the QAPI
schema (``MigrationParameters`` / ``MigrateSetParameters``: same names and order).

Rule 1: range errors name the parameter with underscores (``'downtime_limit'``) except
``x-vcpu-dirty-limit-period``, exactly as QEMU spells them.
Rule 2: ``tls-*: null`` in a request means ``""``.
Rule 3 (quirk, 7.2 to 8.2): ``migrate-set-parameters`` silently ignores ``multifd-zlib-level``
and ``multifd-zstd-level``: they are neither checked nor stored (fixed in 9.0; the
``-global`` properties always worked).  Verified live on 7.2.

>>> from qmp_server.profiles import PROFILES
>>> p = PROFILES["7.2"]
>>> check_parameters(p, default_parameters(p), {"downtime-limit": 2000001})
"Parameter 'downtime_limit' expects an integer in the range of 0 to (2000 * 1000) ms"
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from qmp_server.profiles import Profile

__all__ = [
    "BLOCK_BITMAP_MAPPING",
    "PARAMETERS",
    "TARGET_PAGE_SIZE",
    "TLS_PARAMETERS",
    "ParamSpec",
    "check_bitmap_mapping",
    "check_parameters",
    "default_parameters",
    "ignores_multifd_levels",
    "merge_request",
    "parameter_specs",
    "query_view",
]

BLOCK_BITMAP_MAPPING = "block-bitmap-mapping"
TLS_PARAMETERS = ("tls-creds", "tls-hostname", "tls-authz")
#: x86's target page size: the lower bound of xbzrle-cache-size.
TARGET_PAGE_SIZE = 4096
_MAX_DOWNTIME = 2000 * 1000


@dataclass(frozen=True, slots=True)
class ParamSpec:
    """One MigrationParameters member.

    ``qapi_type`` is the type in MigrationParameters (``str`` for the tls-* members, which
    MigrateSetParameters takes as StrOrNull).  ``prop`` is the ``-global migration.<prop>``
    property that presets it, None when there is none.  ``default`` is None only for
    ``block-bitmap-mapping``, which ``query-migrate-parameters`` reports only once set.
    """

    name: str
    qapi_type: str
    default: Any
    prop: str | None


def _p(name: str, qapi_type: str, default: Any, prop: str | None = "") -> ParamSpec:
    return ParamSpec(name, qapi_type, default, name if prop == "" else prop)


_ANNOUNCE = (
    _p("announce-initial", "size", 50),
    _p("announce-max", "size", 550),
    _p("announce-rounds", "size", 5),
    _p("announce-step", "size", 100),
)
_COMPRESS = (
    _p("compress-level", "uint8", 1, "x-compress-level"),
    _p("compress-threads", "uint8", 8, "x-compress-threads"),
    _p("compress-wait-thread", "bool", True, "x-compress-wait-thread"),
    _p("decompress-threads", "uint8", 2, "x-decompress-threads"),
)
_THROTTLE = (
    _p("throttle-trigger-threshold", "uint8", 50, "x-throttle-trigger-threshold"),
    _p("cpu-throttle-initial", "uint8", 20, "x-cpu-throttle-initial"),
    _p("cpu-throttle-increment", "uint8", 10, "x-cpu-throttle-increment"),
    _p("cpu-throttle-tailslow", "bool", False, "x-cpu-throttle-tailslow"),
)
_TLS = (
    _p("tls-creds", "str", ""),
    _p("tls-hostname", "str", ""),
    _p("tls-authz", "str", ""),
)
_MAX_BANDWIDTH = _p("max-bandwidth", "size", 128 << 20, "x-max-bandwidth")
_DOWNTIME = (
    _p("downtime-limit", "uint64", 300, "x-downtime-limit"),
    _p("x-checkpoint-delay", "uint32", 20000),
)
_MIDDLE = (
    _p("xbzrle-cache-size", "size", 64 << 20),
    _p("max-postcopy-bandwidth", "size", 0),
    _p("max-cpu-throttle", "uint8", 99),
    _p("multifd-compression", "MultiFDCompression", "none"),
    _p("multifd-zlib-level", "uint8", 1),
)
_BBM = _p(BLOCK_BITMAP_MAPPING, "BitmapMigrationNodeAliasList", None, None)
_DIRTY_LIMIT = (
    _p("x-vcpu-dirty-limit-period", "uint64", 1000),
    _p("vcpu-dirty-limit", "uint64", 1),
)

_P72 = (
    *_ANNOUNCE,
    *_COMPRESS,
    *_THROTTLE,
    *_TLS,
    _MAX_BANDWIDTH,
    *_DOWNTIME,
    _p("block-incremental", "bool", False, None),
    _p("multifd-channels", "uint8", 2),
    *_MIDDLE,
    _p("multifd-zstd-level", "uint8", 1),
    _BBM,
)

#: MigrationParameters members per profile name, in schema order.
PARAMETERS: dict[str, tuple[ParamSpec, ...]] = {
    "7.2": _P72,
    "8.0.50": _P72,
    "8.1": (*_P72, *_DIRTY_LIMIT),
    "10.0": (
        *_ANNOUNCE,
        *_THROTTLE,
        *_TLS,
        _MAX_BANDWIDTH,
        _p("avail-switchover-bandwidth", "size", 0),
        *_DOWNTIME,
        _p("multifd-channels", "uint8", 2),
        *_MIDDLE,
        _p("multifd-qatzip-level", "uint8", 1),
        _p("multifd-zstd-level", "uint8", 1),
        _BBM,
        *_DIRTY_LIMIT,
        _p("mode", "MigMode", "normal"),
        _p("zero-page-detection", "ZeroPageDetection", "multifd"),
        _p("direct-io", "bool", False, None),
    ),
}

_IGNORED_LEVELS = ("multifd-zlib-level", "multifd-zstd-level")


def parameter_specs(profile: Profile) -> tuple[ParamSpec, ...]:
    """The MigrationParameters members of ``profile`` in schema order."""
    return PARAMETERS[profile.name]


def default_parameters(profile: Profile) -> dict[str, Any]:
    """Every parameter at its default, schema order; block-bitmap-mapping is left out."""
    return {s.name: s.default for s in parameter_specs(profile) if s.default is not None}


def ignores_multifd_levels(profile: Profile) -> bool:
    """True where migrate-set-parameters drops multifd-zlib/zstd-level (before QEMU 9.0)."""
    return not profile.since(9, 0)


def merge_request(
    profile: Profile, current: Mapping[str, Any], request: Mapping[str, Any]
) -> dict[str, Any]:
    """``current`` overlaid with ``request`` the way QEMU's test-apply step does it.

    tls-* ``None`` becomes ``""``; the multifd level quirk (module docstring, rule 3) applies.
    """
    merged = dict(current)
    skip = _IGNORED_LEVELS if ignores_multifd_levels(profile) else ()
    for name, value in request.items():
        if name in skip:
            continue
        if name in TLS_PARAMETERS and value is None:
            value = ""
        merged[name] = value
    return merged


def query_view(profile: Profile, values: Mapping[str, Any]) -> dict[str, Any]:
    """The ``query-migrate-parameters`` return value: schema order, mapping only once set."""
    out: dict[str, Any] = {}
    for spec in parameter_specs(profile):
        if spec.name in values:
            out[spec.name] = values[spec.name]
    return out


# -- the checks ------------------------------------------------------------------------------


def _expects(name: str, text: str) -> str:
    return f"Parameter '{name}' expects {text}"


_Rule = tuple[str, Callable[[int, Mapping[str, Any]], bool], str]


def _range(param: str, lo: int | None, hi: int | None, text: str, label: str = "") -> _Rule:
    def bad(v: int, _m: Mapping[str, Any]) -> bool:
        return (lo is not None and v < lo) or (hi is not None and v > hi)

    return (param, bad, _expects(label or param.replace("-", "_"), text))


_R_COMPRESS = (
    _range("compress-level", None, 9, "a value between 0 and 9"),
    _range("compress-threads", 1, None, "a value between 1 and 255"),
    _range("decompress-threads", 1, None, "a value between 1 and 255"),
)
_R_THROTTLE = (
    _range("throttle-trigger-threshold", 1, 100, "an integer in the range of 1 to 100"),
    _range("cpu-throttle-initial", 1, 99, "an integer in the range of 1 to 99"),
    _range("cpu-throttle-increment", 1, 99, "an integer in the range of 1 to 99"),
)
# max-bandwidth / avail-switchover-bandwidth > SIZE_MAX cannot happen on a 64-bit host.
_R_DOWNTIME = _range(
    "downtime-limit", None, _MAX_DOWNTIME, "an integer in the range of 0 to (2000 * 1000) ms"
)
_R_CHANNELS = _range("multifd-channels", 1, None, "a value between 1 and 255")
_R_ZLIB = _range("multifd-zlib-level", None, 9, "a value between 0 and 9")
_R_QATZIP = _range("multifd-qatzip-level", 1, 9, "a value between 1 and 9")
_R_ZSTD = _range("multifd-zstd-level", None, 20, "a value between 0 and 20")


def _bad_cache(v: int, _m: Mapping[str, Any]) -> bool:
    return v < TARGET_PAGE_SIZE or v & (v - 1) != 0


def _bad_max_throttle(v: int, m: Mapping[str, Any]) -> bool:
    return v < int(m["cpu-throttle-initial"]) or v > 99


_R_TAIL = (
    (
        "xbzrle-cache-size",
        _bad_cache,
        _expects("xbzrle_cache_size", "a power of two no less than the target page size"),
    ),
    (
        "max-cpu-throttle",
        _bad_max_throttle,
        _expects("max_cpu_throttle", "an integer in the range of cpu_throttle_initial to 99"),
    ),
    _range("announce-initial", None, 100000, "a value between 0 and 100000"),
    _range("announce-max", None, 100000, "a value between 0 and 100000"),
    _range("announce-rounds", None, 1000, "a value between 0 and 1000"),
    _range("announce-step", 1, 10000, "a value between 0 and 10000"),
)
_R_PERIOD = _range(
    "x-vcpu-dirty-limit-period",
    1,
    1000,
    "a value between 1 and 1000",
    label="x-vcpu-dirty-limit-period",
)


def _rules_before_mapping(profile: Profile) -> tuple[_Rule, ...]:
    if profile.name == "10.0":
        return (
            *_R_THROTTLE,
            _R_DOWNTIME,
            _R_CHANNELS,
            _R_ZLIB,
            _R_QATZIP,
            _R_ZSTD,
            *_R_TAIL,
        )
    return (*_R_COMPRESS, *_R_THROTTLE, _R_DOWNTIME, _R_CHANNELS, _R_ZLIB, _R_ZSTD, *_R_TAIL)


def check_parameters(
    profile: Profile,
    current: Mapping[str, Any],
    request: Mapping[str, Any],
    capabilities: Mapping[str, bool] | None = None,
) -> str | None:
    """QEMU's ``migrate_params_check`` on ``current`` overlaid with ``request``.

    :param current: every stored parameter (as :func:`default_parameters` shapes them).
    :param request: validated MigrateSetParameters arguments (tls-* may be ``None``).
    :param capabilities: the *stored* capabilities (zero-copy-send, mapped-ram rules).
    :return: the first error text, or ``None`` when the whole request may be applied.
    """
    caps = capabilities or {}
    merged = merge_request(profile, current, request)
    for name, bad, text in _rules_before_mapping(profile):
        if name in merged and bad(int(merged[name]), merged):
            return text
    if BLOCK_BITMAP_MAPPING in merged:
        err = check_bitmap_mapping(merged[BLOCK_BITMAP_MAPPING])
        if err is not None:
            return f"Invalid mapping given for block-bitmap-mapping: {err}"
    if caps.get("zero-copy-send") and (
        merged.get("multifd-compression", "none") != "none" or merged.get("tls-creds")
    ):
        return "Zero copy only available for non-compressed non-TLS multifd migration"
    if caps.get("mapped-ram") and (
        # QEMU tests the *stored* parameters here, not the merged ones.
        current.get("multifd-compression", "none") != "none" or current.get("tls-creds")
    ):
        return "Mapped-ram only available for non-compressed non-TLS multifd migration"
    if profile.since(8, 1):
        if int(merged["x-vcpu-dirty-limit-period"]) not in range(1, 1001):
            return _R_PERIOD[2]
        if int(merged["vcpu-dirty-limit"]) < 1:
            if profile.since(9, 0):
                return "Parameter 'vcpu_dirty_limit' must be greater than 1 MB/s"
            return _expects("vcpu_dirty_limit", "is invalid, it must greater then 1 MB/s")
    return None


# -- block-bitmap-mapping ----------------------------------------------------------------------

_WELLFORMED = re.compile(r"[A-Za-z][A-Za-z0-9._-]*\Z")
_MAX_ALIAS = 255


def check_bitmap_mapping(mapping: list[Mapping[str, Any]]) -> str | None:
    """Validate a BitmapMigrationNodeAliasList: the text QEMU puts after its prefix.

    QEMU builds the name->alias map first and the alias->name map second, so a duplicate
    alias is only reported once the whole list has passed the name checks (verified on 7.2).
    """
    for by_alias in (False, True):
        nodes: set[str] = set()
        for entry in mapping:
            node_name, alias = str(entry["node-name"]), str(entry["alias"])
            if not _WELLFORMED.match(alias):
                return f"The node alias '{alias}' is not well-formed"
            if len(alias.encode()) > _MAX_ALIAS:
                return f"The node alias '{alias}' is longer than {_MAX_ALIAS} bytes"
            key = alias if by_alias else node_name
            if key in nodes:
                if by_alias:
                    return f"The node alias '{alias}' is used twice"
                return f"The node name '{node_name}' is mapped twice"
            nodes.add(key)
            bitmaps: set[str] = set()
            for bitmap in entry.get("bitmaps", []):
                name, balias = str(bitmap["name"]), str(bitmap["alias"])
                if len(balias.encode()) > _MAX_ALIAS:
                    return f"The bitmap alias '{balias}' is longer than {_MAX_ALIAS} bytes"
                bkey = balias if by_alias else name
                if bkey in bitmaps:
                    if by_alias:
                        return f"The bitmap alias '{alias}'/'{balias}' is used twice"
                    return f"The bitmap '{node_name}'/'{name}' is mapped twice"
                bitmaps.add(bkey)
    return None
