#!/usr/bin/env python3
"""Record what a started QEMU domain shows of its object model, for ``qom-list``/``qom-get``.

    python tools/record_domain_model.py [--qemu72 BINARY] [--chroot DIR] [--only 7.2|10.0]

Starts the real QEMU the way libvirt 9.0 starts a minimal domain (``-S -accel tcg -cpu qemu64
-nodefaults -m 64`` with its two default devices, ``piix3-usb-uhci`` id ``usb`` and
``virtio-balloon-pci`` id ``balloon0``), once per machine family (``pc``, ``q35``), and records:

* ``qom-list /machine`` and ``/machine/peripheral``;
* the CPU ``/machine/unattached/device[0]``: ``qom-list`` and ``qom-get`` of every property
  (the answer as QEMU gave it: ``{"return": ...}`` or ``{"error": ...}``), which is what
  libvirt reads at domain start;
* each default device under ``/machine/peripheral/ID``: ``qom-list`` and ``qom-get`` of every
  property (``guest-stats`` of the balloon is what ``virsh dommemstat`` reads);
* ``query-chardev-backends`` (the build's backend drivers);
* without ``-nodefaults`` (and without devices): the default drives QEMU creates
  (``query-block``, ``query-blockstats``) and its default character devices
  (``query-chardev``, the QMP monitor's own entry left out).

The result goes to ``qmp_server/data/domain_model/qemu-<version>.json.gz`` (loaded by
``qmp_server/engine/qom_tree.py``).  The introspection of the commands a started domain
answers (``query-qmp-schema`` restricted to :data:`SCHEMA_COMMANDS` and every type they reach)
goes to ``tests/commands/fixtures/domain-schema-qemu-<version>.json.gz`` for
``tests/commands/test_domain_schema.py``.  QEMU 10.0 runs in a Debian trixie chroot (default
``/srv/trixie``).  Never edit the outputs by hand: re-record.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import gzip
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DATA_OUT = REPO / "qmp_server" / "data" / "domain_model"
SCHEMA_OUT = REPO / "tests" / "commands" / "fixtures"

#: The commands whose introspection the schema fixture keeps.
SCHEMA_COMMANDS = (
    "query-chardev",
    "query-chardev-backends",
    "query-hotpluggable-cpus",
    "query-cpus-fast",
    "qom-list",
    "qom-get",
    "query-iothreads",
    "query-named-block-nodes",
    "query-block",
    "query-blockstats",
    "query-memory-devices",
    "query-memdev",
)

#: machine family -> (the -machine value libvirt gives, the PCI root bus)
MACHINES = {"pc": ("pc", "pci.0"), "q35": ("q35", "pcie.0")}

#: driver -> (id, address) of the default devices libvirt adds to a minimal domain
DEVICES = {"piix3-usb-uhci": ("usb", "0x1.0x2"), "virtio-balloon-pci": ("balloon0", "0x2")}


class Monitor:
    """A blocking QMP client: one command at a time, events skipped."""

    def __init__(self, path: str) -> None:
        deadline = time.monotonic() + 20
        while True:
            self.sock = socket.socket(socket.AF_UNIX)
            try:
                self.sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.file = self.sock.makefile("rb")
        self.file.readline()  # greeting
        self.execute("qmp_capabilities")

    def execute(self, name: str, **arguments: Any) -> dict[str, Any]:
        request: dict[str, Any] = {"execute": name}
        if arguments:
            request["arguments"] = arguments
        self.sock.sendall(json.dumps(request).encode() + b"\n")
        while True:
            reply: dict[str, Any] = json.loads(self.file.readline())
            if "event" not in reply:
                return reply

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def _argv(machine: str, bus: str) -> list[str]:
    argv = ["-S", "-machine", f"{machine},usb=off,dump-guest-core=off", "-accel", "tcg",
            "-cpu", "qemu64", "-m", "64", "-smp", "1,sockets=1,cores=1,threads=1",
            "-display", "none", "-no-user-config", "-nodefaults"]  # fmt: skip
    for driver, (dev_id, addr) in DEVICES.items():
        argv += ["-device", f"{driver},id={dev_id},bus={bus},addr={addr}"]
    return argv


def _object(mon: Monitor, path: str) -> dict[str, Any]:
    listing = mon.execute("qom-list", path=path)["return"]
    answers = {p["name"]: mon.execute("qom-get", path=path, property=p["name"]) for p in listing}
    return {"list": listing, "get": answers}


def _reachable(schema: list[dict[str, Any]], roots: tuple[str, ...]) -> list[dict[str, Any]]:
    by_name = {e["name"]: e for e in schema}
    keep: list[str] = []
    todo = [r for r in roots if r in by_name]
    while todo:
        name = todo.pop(0)
        if name in keep:
            continue
        keep.append(name)
        entry = by_name[name]
        refs: list[str] = []
        for key in ("arg-type", "ret-type", "element-type"):
            if key in entry:
                refs.append(entry[key])
        # object and alternate members carry a type; enum members (10.0) only a name
        refs.extend(m["type"] for m in entry.get("members", []) if "type" in m)
        refs.extend(v["type"] for v in entry.get("variants", []))
        todo.extend(r for r in refs if r not in keep)
    return [by_name[n] for n in keep]


@contextlib.contextmanager
def _started(prefix: list[str], tmp_base: str, inside: str, argv: list[str]) -> Iterator[Monitor]:
    """A QEMU started with ``argv`` and a QMP monitor on a temporary unix socket."""
    tmp = tempfile.mkdtemp(prefix="domain-model-", dir=tmp_base)
    sock = os.path.join(tmp, "qmp.sock")
    inner = sock[len(inside) :] if inside else sock
    cmd = [*prefix, *argv, "-qmp", f"unix:{inner},server=on,wait=off"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        mon = Monitor(sock)
        yield mon
        mon.execute("quit")
        mon.close()
    finally:
        if proc.poll() is None:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def record(version: str, prefix: list[str], tmp_base: str, inside: str) -> None:
    model: dict[str, Any] = {"machines": {}, "devices": {}}
    schema: list[dict[str, Any]] = []
    for family, (machine, bus) in MACHINES.items():
        with _started(prefix, tmp_base, inside, _argv(machine, bus)) as mon:
            cpu = _object(mon, "/machine/unattached/device[0]")
            model["machines"][family] = {
                "argv": _argv(machine, bus),
                "machine": mon.execute("qom-list", path="/machine")["return"],
                "peripheral": mon.execute("qom-list", path="/machine/peripheral")["return"],
                "cpu": {"type": cpu["get"]["type"]["return"], **cpu},
            }
            if family == "pc":
                for driver, (dev_id, _) in DEVICES.items():
                    model["devices"][driver] = {
                        "id": dev_id,
                        **_object(mon, f"/machine/peripheral/{dev_id}"),
                    }
                model["chardev-backends"] = mon.execute("query-chardev-backends")["return"]
                schema = mon.execute("query-qmp-schema")["return"]
                version_line = mon.execute("query-version")["return"]
    # -machine none: no vCPU, no CPU hotplug (query-hotpluggable-cpus is refused)
    none_argv = ["-machine", "none", "-nodefaults", "-display", "none"]
    with _started(prefix, tmp_base, inside, none_argv) as mon:
        model["machines"]["none"] = {
            "argv": none_argv,
            "machine": mon.execute("qom-list", path="/machine")["return"],
            "hotpluggable-cpus": mon.execute("query-hotpluggable-cpus"),
        }
    for family, (machine, _bus) in MACHINES.items():
        argv = ["-S", "-machine", machine, "-accel", "tcg", "-cpu", "qemu64", "-m", "64",
                "-display", "none", "-no-user-config"]  # fmt: skip
        with _started(prefix, tmp_base, inside, argv) as mon:
            chardevs = mon.execute("query-chardev")["return"]
            model["machines"][family]["defaults"] = {
                "argv": argv,
                "query-block": mon.execute("query-block")["return"],
                "query-blockstats": mon.execute("query-blockstats")["return"],
                "query-chardev": [c for c in chardevs if c["label"] != "compat_monitor0"],
            }
    model["metadata"] = {
        "qemu": version_line,
        "recorded": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": f"python tools/record_domain_model.py --only {version}",
        "binary": " ".join(prefix),
    }
    DATA_OUT.mkdir(parents=True, exist_ok=True)
    _write(DATA_OUT / f"qemu-{version}.json.gz", model)
    subset = {"metadata": model["metadata"], "schema": _reachable(schema, SCHEMA_COMMANDS)}
    SCHEMA_OUT.mkdir(parents=True, exist_ok=True)
    _write(SCHEMA_OUT / f"domain-schema-qemu-{version}.json.gz", subset)


def _write(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=1, ensure_ascii=True) + "\n"
    # mtime=0: re-recording the same answers gives the same bytes
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write(text.encode("ascii"))
    print(f"{path}: {len(text)} bytes of JSON")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--qemu72", default="/usr/bin/qemu-system-x86_64")
    parser.add_argument("--chroot", default="/srv/trixie", help="QEMU 10.0's Debian chroot")
    parser.add_argument("--only", choices=("7.2", "10.0"))
    args = parser.parse_args()
    if args.only in (None, "7.2"):
        record("7.2", [args.qemu72], "/tmp", "")
    if args.only in (None, "10.0"):
        chroot = args.chroot.rstrip("/")
        record("10.0", ["chroot", chroot, "qemu-system-x86_64"], f"{chroot}/tmp", chroot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
