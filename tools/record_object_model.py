#!/usr/bin/env python3
"""Record what a real QEMU answers about its object model, for ``engine/object_model.py``.

    python tools/record_object_model.py                      # QEMU 7.2 (/usr/bin)
    python tools/record_object_model.py --chroot /srv/trixie # QEMU 10.0 in a chroot

Starts the QEMU with the command line libvirt probes with (``-S -no-user-config -nodefaults
-nographic -machine none,accel=tcg``) and asks it everything libvirt's capability probe asks,
more generously than libvirt does (every type, every CPU model), so that any request a client
makes can be answered from the recording:

* ``qom-list-types`` with ``abstract: true`` (the full list in QEMU's order, as a fresh QEMU
  answers), the same once the devices of loadable modules were looked up (``qxl`` ...), and,
  for every type T, ``implements: T`` (stored inverted: per type, the types it implements);
* ``device-list-properties`` and ``qom-list-properties`` for every type (module devices
  included), and for a name no type has (its error text, the name to be substituted);
* ``query-machines`` (and its argument variants where the version has arguments),
  ``query-cpu-definitions``, ``query-cpu-model-expansion`` for every expansion type and CPU
  model (plus a few with ``props``, libvirt's static-then-full sequence and the error
  cases), ``query-command-line-options`` (all, each option, unknown), ``query-target``,
  ``query-kvm``, ``query-tpm-*``, ``query-sev-capabilities``, ``query-sgx-capabilities``;
* with ``accel=kvm`` (when the host has /dev/kvm) the answers KVM changes: CPU definitions and
  libvirt's CPU expansions, SEV/SGX errors (host-dependent, see :func:`record_kvm`);
* a few derived answers (``checks``) that tests compare our derivations with;
* the text of ``-device help`` and of ``-device DRIVER,help`` for a few drivers (separate
  runs; the latter to check the text the engine builds).

Replies are stored raw (``{"return": ...}`` or ``{"error": ...}``), so member order is QEMU's.
The engine loads a file on first use (about 0.1 s), not at start-up.
Output: ``qmp_server/data/object_model/qemu-VERSION.json.gz`` and, derived from it, the small
``qemu-VERSION.devices.json.gz`` that ``-device`` checks against; with ``--schema-fixture`` also
the raw ``query-qmp-schema`` answer as ``tests/qapi/data/qemu-VERSION-qmp-schema.json.gz``.
Never edit the outputs: re-record.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gzip
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _recording import REPO, add_target_options, h, open_target

sys.path.insert(0, str(REPO))
from qmp_server.engine.object_model import ObjectModel

PROBE_ARGV = ["-S", "-no-user-config", "-nodefaults", "-nographic", "-machine", "none,accel=tcg"]
#: A type name no QEMU has: its errors are stored with this name, which the engine substitutes.
NO_SUCH = "qmp-server-no-such-type"
DATA_DIR = REPO / "qmp_server" / "data" / "object_model"
SCHEMA_FIXTURES = REPO / "tests" / "qapi" / "data"


class Monitor:
    """One QEMU started with the probe line and a QMP connection to it (restartable)."""

    def __init__(self, target: Any, accel: str = "tcg") -> None:
        self.target = target
        self.argv = [*PROBE_ARGV[:-1], f"none,accel={accel}"]
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="objmodel-", dir=self.target.host_tmp())
        host_sock = os.path.join(self.dir, "qmp.sock")
        argv = [
            *self.target.prefix,
            *self.argv,
            "-qmp",
            f"unix:{self.target.inside(host_sock)},server=on,wait=off",
        ]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(400):
            if os.path.exists(host_sock):
                break
            time.sleep(0.05)
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(host_sock)
        self.file = self.sock.makefile("rwb")
        self._read()
        self.call("qmp_capabilities")

    def stop(self) -> None:
        self.sock.close()
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for name in os.listdir(self.dir):
            os.unlink(os.path.join(self.dir, name))
        os.rmdir(self.dir)

    def _read(self) -> dict[str, Any]:
        while True:
            line = self.file.readline()
            if not line:
                raise EOFError("QEMU closed the monitor")
            msg: dict[str, Any] = json.loads(line)
            if "event" not in msg:
                return msg

    def call(self, name: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        """The raw reply; a QEMU that dies on the request is restarted (reply ``crashed``)."""
        req: dict[str, Any] = {"execute": name}
        if args is not None:
            req["arguments"] = args
        try:
            self.file.write(json.dumps(req).encode() + b"\n")
            self.file.flush()
            return self._read()
        except (EOFError, OSError):
            print(f"  QEMU died on {json.dumps(req)}; restarting", file=sys.stderr)
            self.stop()
            self.start()
            return {"crashed": True}


def _ok(reply: dict[str, Any]) -> Any:
    if "return" not in reply:
        raise RuntimeError(f"unexpected reply {reply}")
    return reply["return"]


def _arg_members(schema: list[dict[str, Any]], command: str) -> list[str]:
    by_name = {e["name"]: e for e in schema}
    return [m["name"] for m in by_name[by_name[command]["arg-type"]]["members"]]


def _enum_values(schema: list[dict[str, Any]], command: str, member: str) -> list[str]:
    by_name = {e["name"]: e for e in schema}
    arg = by_name[by_name[command]["arg-type"]]
    mtype = next(m["type"] for m in arg["members"] if m["name"] == member)
    return [m["name"] for m in by_name[mtype]["members"]]


def record(mon: Monitor) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    schema = _ok(mon.call("query-qmp-schema"))
    replies: dict[str, Any] = {}
    for name in (
        "query-target",
        "query-kvm",
        "query-tpm-models",
        "query-tpm-types",
        "query-sev-capabilities",
        "query-sgx-capabilities",
        "query-cpu-definitions",
        "query-machines",
        "query-command-line-options",
    ):
        replies[name] = mon.call(name)
    # Asked first, as QEMU answers before it loaded any module: a type lookup below can load
    # a module that brings an option with it (spice), answered only from then on.
    options: dict[str, Any] = {}
    for entry in [*_ok(replies["query-command-line-options"]), {"option": "spice"}]:
        args = {"option": entry["option"]}
        options[entry["option"]] = mon.call("query-command-line-options", args)
    machine_args: dict[str, Any] = {}
    for member in _arg_members(schema, "query-machines"):
        for value in (True, False):
            args = {member: value}
            machine_args[json.dumps(args)] = mon.call("query-machines", args)

    types = _ok(mon.call("qom-list-types", {"abstract": True}))
    names = [t["name"] for t in types]
    # qom-list-types loaded QEMU's modules (7.2: spice's, with its -spice option)
    loaded_options: dict[str, Any] = {"all": mon.call("query-command-line-options"), "options": {}}
    for entry in [*_ok(loaded_options["all"]), {"option": "spice"}]:
        args = {"option": entry["option"]}
        loaded_options["options"][entry["option"]] = mon.call("query-command-line-options", args)
    print(f"  {len(names)} types", file=sys.stderr)
    device_props = {n: (mon.call("device-list-properties", {"typename": n})) for n in names}
    qom_props = {n: (mon.call("qom-list-properties", {"typename": n})) for n in names}
    # Types of loadable modules (qxl, usb-host ...) are not listed until a request names
    # them; -device help names the devices among them.  Asking loads their module.
    module_devices = sorted(_listed(device_help(mon.target)) - set(names))
    for n in module_devices:
        device_props[n] = mon.call("device-list-properties", {"typename": n})
        qom_props[n] = mon.call("qom-list-properties", {"typename": n})
    loaded = _ok(mon.call("qom-list-types", {"abstract": True}))
    implements = {t["name"]: [] for t in loaded}
    for parent in implements:
        for t in _ok(mon.call("qom-list-types", {"implements": parent, "abstract": True})):
            implements[t["name"]].append(parent)
    print(f"  {len(module_devices)} module devices, {len(loaded)} types loaded", file=sys.stderr)

    unknown = {
        "device-list-properties": mon.call("device-list-properties", {"typename": NO_SUCH}),
        "qom-list-properties": mon.call("qom-list-properties", {"typename": NO_SUCH}),
        "query-command-line-options": mon.call("query-command-line-options", {"option": NO_SUCH}),
        "query-cpu-model-expansion": mon.call(
            "query-cpu-model-expansion", {"type": "full", "model": {"name": NO_SUCH}}
        ),
        "cpu-property": mon.call(
            "query-cpu-model-expansion",
            {"type": "full", "model": {"name": "max", "props": {NO_SUCH: True}}},
        ),
    }

    expansion_types = _enum_values(schema, "query-cpu-model-expansion", "type")
    models = [d["name"] for d in _ok(replies["query-cpu-definitions"])]
    expansions: dict[str, dict[str, Any]] = {}
    for kind in expansion_types:
        expansions[kind] = {
            m: (mon.call("query-cpu-model-expansion", {"type": kind, "model": {"name": m}}))
            for m in models
        }
    with_props: list[list[Any]] = []
    for kind in expansion_types:
        for model in (
            {"name": "max", "props": {"migratable": False}},
            {"name": "qemu64", "props": {"sse4.2": True, "svm": False}},
            {"name": "max", "props": {"sse4.2": "x"}},
        ):
            args = {"type": kind, "model": model}
            with_props.append([args, mon.call("query-cpu-model-expansion", args)])

    # libvirt's CPU probe: a static expansion, then the full expansion of its result.
    for name in ("max", "host", "qemu64"):
        for extra in ({}, {"migratable": False}):
            model: dict[str, Any] = {"name": name, **({"props": extra} if extra else {})}
            static = mon.call("query-cpu-model-expansion", {"type": "static", "model": model})
            with_props.append([{"type": "static", "model": model}, static])
            if "return" in static:
                args = {"type": "full", "model": static["return"]["model"]}
                with_props.append([args, mon.call("query-cpu-model-expansion", args)])

    checks: list[list[Any]] = []
    for args in (
        {},
        {"abstract": False},
        {"implements": "device"},
        {"implements": "pci-device", "abstract": True},
        {"implements": "memory-backend"},
        {"implements": "x86_64-cpu"},
        {"implements": "hotplug-handler", "abstract": True},
        {"implements": NO_SUCH},
    ):
        checks.append(["qom-list-types", args, mon.call("qom-list-types", args)])
    for option in ("machine", "drive", "device"):
        args = {"option": option}
        checks.append(
            ["query-command-line-options", args, mon.call("query-command-line-options", args)]
        )

    data = {
        "probe_argv": PROBE_ARGV,
        "no_such_name": NO_SUCH,
        "replies": replies,
        "query-machines-args": machine_args,
        "query-command-line-options": options,
        "query-command-line-options-loaded": loaded_options,
        "types": types,
        "types_with_modules": loaded,
        "implements": implements,
        "device-list-properties": device_props,
        "qom-list-properties": qom_props,
        "unknown": unknown,
        "cpu-model-expansion": expansions,
        "cpu-model-expansion-props": with_props,
        "checks": checks,
    }
    return data, schema


#: Devices whose ``-device DRIVER,help`` text is recorded, to check the text we build.
HELP_SAMPLES = (
    "piix3-usb-uhci", "virtio-balloon-pci", "virtio-net-pci", "e1000", "qxl",
    "virtio-blk-pci", "scsi-hd", "usb-tablet", "vfio-pci", "ich9-usb-ehci1",
    "pcie-root-port", "virtio-serial-pci", "isa-serial", "VGA", "nvdimm",
)  # fmt: skip


def record_kvm(mon: Monitor) -> dict[str, Any]:
    """The answers that change when KVM runs the guest (libvirt's first probe round).

    They depend on the recording host (its CPU, no SEV/SGX): recorded for reference and for
    ``-accel kvm`` lines, where qmp-server has no better answer.
    """
    kvm: dict[str, Any] = {"replies": {}, "cpu-model-expansion-props": []}
    for name in (
        "query-kvm",
        "query-cpu-definitions",
        "query-sev-capabilities",
        "query-sgx-capabilities",
    ):
        kvm["replies"][name] = mon.call(name)
    for name in ("max", "host"):
        for extra in ({}, {"migratable": False}):
            model: dict[str, Any] = {"name": name, **({"props": extra} if extra else {})}
            static = mon.call("query-cpu-model-expansion", {"type": "static", "model": model})
            kvm["cpu-model-expansion-props"].append([{"type": "static", "model": model}, static])
            if "return" in static:
                args = {"type": "full", "model": static["return"]["model"]}
                kvm["cpu-model-expansion-props"].append(
                    [args, mon.call("query-cpu-model-expansion", args)]
                )
    args = {
        "type": "full",
        "model": {"name": "host", "props": {"migratable": False, "hv-passthrough": True}},
    }
    kvm["cpu-model-expansion-props"].append([args, mon.call("query-cpu-model-expansion", args)])
    return kvm


def _listed(help_text: str) -> set[str]:
    return {ln.split('"', 2)[1] for ln in help_text.splitlines() if ln.startswith('name "')}


def device_help(target: Any, driver: str = "") -> str:
    arg = f"{driver},help" if driver else "help"
    out = subprocess.run(
        [*target.prefix, "-device", arg], capture_output=True, text=True, check=True
    )
    return out.stdout


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_target_options(ap)
    ap.add_argument(
        "--schema-fixture",
        action="store_true",
        help="also write the raw query-qmp-schema answer under tests/qapi/data",
    )
    args = ap.parse_args(argv)
    opened = open_target(args)
    if opened is None:
        return 2
    target, version = opened
    mon = Monitor(target)
    try:
        data, schema = record(mon)
    finally:
        mon.stop()
    if os.path.exists("/dev/kvm"):
        mon = Monitor(target, accel="kvm")
        try:
            data["kvm"] = record_kvm(mon)
        finally:
            mon.stop()
    data["device_help"] = device_help(target)
    data["device_help_samples"] = {d: device_help(target, d) for d in HELP_SAMPLES}
    data["metadata"] = {
        "qemu_version": h.qemu_version_line(args.qemu, target),
        "qemu_binary": args.qemu,
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": shlex.join(
            [
                "python",
                "tools/record_object_model.py",
                *(argv if argv is not None else sys.argv[1:]),
            ]
        ),
        "qemu_command": shlex.join(
            [*target.prefix, *PROBE_ARGV, "-qmp", "unix:<sock>,server=on,wait=off"]
        ),
        "host": {"kernel": platform.release(), "machine": platform.machine()},
    }
    out = Path(args.out) if args.out else DATA_DIR / f"qemu-{version}.json.gz"
    out.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(out, "wt", encoding="utf-8", compresslevel=9) as f:
        json.dump(data, f, ensure_ascii=True, separators=(",", ":"))
    print(f"wrote {out} ({out.stat().st_size} bytes)", file=sys.stderr)
    catalog = ObjectModel(data, version).device_catalog()
    small = out.with_name(f"qemu-{version}.devices.json.gz")
    with gzip.open(small, "wt", encoding="utf-8", compresslevel=9) as f:
        json.dump(catalog, f, ensure_ascii=True, separators=(",", ":"))
    print(f"wrote {small} ({small.stat().st_size} bytes)", file=sys.stderr)
    if args.schema_fixture:
        path = SCHEMA_FIXTURES / f"qemu-{version}-qmp-schema.json.gz"
        with gzip.open(path, "wt", encoding="utf-8", compresslevel=9) as f:
            json.dump(
                {"metadata": data["metadata"], "return": schema},
                f,
                ensure_ascii=True,
                separators=(",", ":"),
            )
        print(f"wrote {path} ({path.stat().st_size} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
