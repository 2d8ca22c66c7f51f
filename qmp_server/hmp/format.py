"""HMP texts of QMP results, per emulated version (recorded from QEMU 7.2 and 10.0).

Every function takes the QMP answer (a dict as the handlers return it) and returns text with
``\\n`` line ends; the monitor turns them into ``\\r\\n``.  Layout facts, all from the
recordings in tests/conformance/fixtures/hmp:

* ``info migrate`` starts with the ``globals:`` block (7.2: ``decompress-error-check``;
  10.0: ``send-switchover-start``), then, once a migration ran, the status, times and RAM
  counters; counters that are zero are left out (dirty pages rate, precopy/downtime/postcopy
  ram), 10.0 no longer prints ``skipped``.
* ``info migrate_parameters`` prints the parameters the version has, in one fixed order, with
  their units; strings are quoted with ``'``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from qmp_server.profiles import Profile

__all__ = [
    "info_migrate",
    "info_migrate_capabilities",
    "info_migrate_parameters",
    "info_ramblock",
    "info_status",
    "info_version",
]


def _onoff(value: Any) -> str:
    return "on" if value else "off"


def info_status(status: Mapping[str, Any]) -> str:
    if status["running"]:
        return "VM status: running\n"
    state = status["status"]
    return "VM status: paused\n" if state == "paused" else f"VM status: paused ({state})\n"


def info_version(version: Mapping[str, Any]) -> str:
    q = version["qemu"]
    return f"{q['major']}.{q['minor']}.{q['micro']}{version['package']}\n"


def _globals(profile: Profile) -> list[str]:
    fourth = "send-switchover-start: on" if profile.since(10, 0) else "decompress-error-check: on"
    return [
        "globals:",
        "store-global-state: on",
        "only-migratable: off",
        "send-configuration: on",
        "send-section-footer: on",
        fourth,
        "clear-bitmap-shift: 18",
    ]


def info_migrate(profile: Profile, info: Mapping[str, Any]) -> str:
    lines = _globals(profile)
    if "status" in info:
        status = info["status"]
        head = f"Migration status: {status}"
        if status == "failed" and info.get("error-desc"):
            head += f" ({info['error-desc']})"
        lines.append(head)
        # printed with every status, 0 when QMP leaves it out (cancelled)
        lines.append(f"total time: {info.get('total-time', 0)} ms")
        if "expected-downtime" in info:
            lines.append(f"expected downtime: {info['expected-downtime']} ms")
        if "downtime" in info:
            lines.append(f"downtime: {info['downtime']} ms")
        if "setup-time" in info:
            lines.append(f"setup: {info['setup-time']} ms")
    ram = info.get("ram")
    if ram is not None:
        lines.append(f"transferred ram: {ram['transferred'] >> 10} kbytes")
        lines.append(f"throughput: {ram['mbps']:0.2f} mbps")
        lines.append(f"remaining ram: {ram['remaining'] >> 10} kbytes")
        lines.append(f"total ram: {ram['total'] >> 10} kbytes")
        lines.append(f"duplicate: {ram['duplicate']} pages")
        if not profile.since(9, 1) and "skipped" in ram:
            lines.append(f"skipped: {ram['skipped']} pages")
        elif not profile.since(9, 1):
            lines.append("skipped: 0 pages")
        lines.append(f"normal: {ram['normal']} pages")
        lines.append(f"normal bytes: {ram['normal-bytes'] >> 10} kbytes")
        lines.append(f"dirty sync count: {ram['dirty-sync-count']}")
        lines.append(f"page size: {ram['page-size'] >> 10} kbytes")
        lines.append(f"multifd bytes: {ram.get('multifd-bytes', 0) >> 10} kbytes")
        lines.append(f"pages-per-second: {ram.get('pages-per-second', 0)}")
        if ram.get("dirty-pages-rate"):
            lines.append(f"dirty pages rate: {ram['dirty-pages-rate']} pages")
        if ram.get("postcopy-requests"):
            lines.append(f"postcopy request count: {ram['postcopy-requests']}")
        for key, label in (
            ("precopy-bytes", "precopy ram"),
            ("downtime-bytes", "downtime ram"),
            ("postcopy-bytes", "postcopy ram"),
        ):
            if ram.get(key):
                lines.append(f"{label}: {ram[key] >> 10} kbytes")
        if ram.get("dirty-sync-missed-zero-copy"):
            missed = ram["dirty-sync-missed-zero-copy"]
            lines.append(f"Zero-copy-send fallbacks happened: {missed} times")
    xbzrle = info.get("xbzrle-cache")
    if xbzrle is not None:
        lines.append(f"cache size: {xbzrle['cache-size']} bytes")
        lines.append(f"xbzrle transferred: {xbzrle['bytes'] >> 10} kbytes")
        lines.append(f"xbzrle pages: {xbzrle['pages']} pages")
        lines.append(f"xbzrle cache miss: {xbzrle['cache-miss']} pages")
        lines.append(f"xbzrle cache miss rate: {xbzrle['cache-miss-rate']:0.2f}")
        lines.append(f"xbzrle encoding rate: {xbzrle.get('encoding-rate', 0):0.2f}")
        lines.append(f"xbzrle overflow: {xbzrle['overflow']}")
    compression = info.get("compression")
    if compression is not None:  # 7.2's compress
        lines.append(f"compression pages: {compression['pages']} pages")
        lines.append(f"compression busy: {compression['busy']}")
        lines.append(f"compression busy rate: {compression['busy-rate']:0.2f}")
        lines.append(f"compressed size: {compression['compressed-size'] >> 10} kbytes")
        lines.append(f"compression rate: {compression['compression-rate']:0.2f}")
    if info.get("cpu-throttle-percentage"):
        lines.append(f"cpu throttle percentage: {info['cpu-throttle-percentage']}")
    if "postcopy-blocktime" in info:
        lines.append(f"postcopy blocktime: {info['postcopy-blocktime']}")
    if "postcopy-vcpu-blocktime" in info:
        per_vcpu = ",".join(str(v) for v in info["postcopy-vcpu-blocktime"])
        lines.append(f"postcopy vcpu blocktime: {per_vcpu}")
    addresses = info.get("socket-address")
    if addresses:
        lines.append("socket address: [")
        for addr in addresses:
            if addr.get("type") in ("inet", "tcp"):
                lines.append(f"\ttcp:{addr['host']}:{addr['port']}")
            elif addr.get("type") == "unix":
                lines.append(f"\tunix:{addr['path']}")
        lines.append("]")
    return "".join(f"{line}\n" for line in lines)


def info_migrate_capabilities(caps: Sequence[Mapping[str, Any]]) -> str:
    return "".join(f"{c['capability']}: {_onoff(c['state'])}\n" for c in caps)


#: (parameter, unit) in the order QEMU prints them; a version prints those it has.
_PARAMETER_LINES: tuple[tuple[str, str], ...] = (
    ("announce-initial", " ms"),
    ("announce-max", " ms"),
    ("announce-rounds", ""),
    ("announce-step", " ms"),
    ("compress-level", ""),
    ("compress-threads", ""),
    ("compress-wait-thread", "bool"),
    ("decompress-threads", ""),
    ("throttle-trigger-threshold", ""),
    ("cpu-throttle-initial", ""),
    ("cpu-throttle-increment", ""),
    ("cpu-throttle-tailslow", "bool"),
    ("max-cpu-throttle", ""),
    ("tls-creds", "str"),
    ("tls-hostname", "str"),
    ("max-bandwidth", " bytes/second"),
    ("avail-switchover-bandwidth", " bytes/second"),
    ("downtime-limit", " ms"),
    ("x-checkpoint-delay", " ms"),
    ("block-incremental", "bool"),
    ("multifd-channels", ""),
    ("multifd-compression", ""),
    ("zero-page-detection", ""),
    ("xbzrle-cache-size", " bytes"),
    ("max-postcopy-bandwidth", ""),
    ("tls-authz", "str"),
    ("x-vcpu-dirty-limit-period", " ms"),
    ("vcpu-dirty-limit", " MB/s"),
    ("mode", ""),
    ("direct-io", "bool"),
)


def info_migrate_parameters(params: Mapping[str, Any]) -> str:
    out = []
    for name, unit in _PARAMETER_LINES:
        if name not in params:
            continue
        value = params[name]
        if unit == "bool":
            text = _onoff(value)
        elif unit == "str":
            text = f"'{value}'"
        else:
            text = f"{value}{unit}"
        out.append(f"{name}: {text}\n")
    return "".join(out)


#: Block names QEMU maps read-only (firmware and ROM blobs): the 10.0 ``RO`` column.  microvm
#: maps its BIOS writable (recorded).
def _read_only(name: str, microvm: bool = False) -> bool:
    if name == "pc.bios" and microvm:
        return False
    return name.startswith("/rom@") or name.endswith((".bios", ".rom")) or ".rom" in name


def info_ramblock(profile: Profile, blocks: Sequence[tuple[str, int, int, int]]) -> str:
    """``blocks``: (name, offset, used, max) in QEMU's list order (largest first).

    10.0 adds the host address and ``ro``/``rw``; the address here is a stable fake (QEMU's
    differs at every start anyway).
    """
    wide = profile.since(10, 0)
    head = f"{'Block Name':>24} {'PSize':>8}  {'Offset':>18} {'Used':>18} {'Total':>18}"
    if wide:
        head += f" {'HVA':>18}  RO"
    lines = [head]
    hva = 0x00007F0000000000
    microvm = any(b[0] == "microvm.ram" for b in blocks)
    for name, offset, used, size in blocks:
        line = f"{name:>24} {'4 KiB':>8}  0x{offset:016x} 0x{used:016x} 0x{size:016x}"
        if wide:
            line += f" 0x{hva:016x}  {'ro' if _read_only(name, microvm) else 'rw'}"
            hva += max(size, 1 << 21)
        lines.append(line)
    return "".join(f"{line}\n" for line in lines)
