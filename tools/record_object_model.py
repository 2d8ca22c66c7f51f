#!/usr/bin/env python3
"""Record what a real QEMU answers about its object model, for ``engine/object_model.py``.

    python tools/record_object_model.py                      # QEMU 7.2 (/usr/bin)
    python tools/record_object_model.py --chroot /srv/trixie # QEMU 10.0 in a chroot

Starts the QEMU with the command line libvirt probes with (``-S -no-user-config -nodefaults
-nographic -machine none,accel=tcg``) and asks it everything libvirt's capability probe asks,
more generously than libvirt does (every type, every CPU model), so that any request a client
makes can be answered from the recording:

* ``qom-list-types`` with ``abstract: true`` (the full list in QEMU's order) and, for every
  type T, ``implements: T`` (stored inverted: per type, the types it implements);
* ``device-list-properties`` and ``qom-list-properties`` for every type, and for a name no
  type has (its error text, the name to be substituted);
* ``query-machines`` (and its argument variants where the version has arguments),
  ``query-cpu-definitions``, ``query-cpu-model-expansion`` for every expansion type and CPU
  model (plus a few with ``props`` and the error cases), ``query-command-line-options``
  (all, each option, unknown), ``query-target``, ``query-kvm``, ``query-tpm-*``,
  ``query-sev-capabilities``, ``query-sgx-capabilities``;
* a few derived answers (``checks``) that tests compare our derivations with;
* the text of ``-device help`` (from a separate run).

Replies are stored raw (``{"return": ...}`` or ``{"error": ...}``), so member order is QEMU's.
The engine loads a file on first use (about 0.1 s), not at start-up.
Output: ``qmp_server/data/object_model/qemu-VERSION.json.gz``; with ``--schema-fixture`` also
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

PROBE_ARGV = ["-S", "-no-user-config", "-nodefaults", "-nographic", "-machine", "none,accel=tcg"]
#: A type name no QEMU has: its errors are stored with this name, which the engine substitutes.
NO_SUCH = "qmp-server-no-such-type"
DATA_DIR = REPO / "qmp_server" / "data" / "object_model"
SCHEMA_FIXTURES = REPO / "tests" / "qapi" / "data"


class Monitor:
    """One QEMU started with the probe line and a QMP connection to it (restartable)."""

    def __init__(self, target: Any) -> None:
        self.target = target
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="objmodel-", dir=self.target.host_tmp())
        host_sock = os.path.join(self.dir, "qmp.sock")
        argv = [
            *self.target.prefix,
            *PROBE_ARGV,
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
    implements: dict[str, list[str]] = {n: [] for n in names}
    for parent in names:
        for t in _ok(mon.call("qom-list-types", {"implements": parent, "abstract": True})):
            implements[t["name"]].append(parent)
    print(f"  {len(names)} types", file=sys.stderr)
    device_props = {n: (mon.call("device-list-properties", {"typename": n})) for n in names}
    qom_props = {n: (mon.call("qom-list-properties", {"typename": n})) for n in names}
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
        "types": types,
        "implements": implements,
        "device-list-properties": device_props,
        "qom-list-properties": qom_props,
        "unknown": unknown,
        "cpu-model-expansion": expansions,
        "cpu-model-expansion-props": with_props,
        "checks": checks,
    }
    return data, schema


def device_help(target: Any) -> str:
    out = subprocess.run(
        [*target.prefix, "-device", "help"], capture_output=True, text=True, check=True
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
    data["device_help"] = device_help(target)
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
