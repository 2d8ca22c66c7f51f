"""Differential test against a real QEMU (skipped when qemu-system-x86_64 is absent).

Random arguments for a few migration commands go to our validator and to QEMU; whenever either
reports an input-visitor error, both must report the same one.  The QEMU must be 7.2, the
version the texts and the hash orders are modelled on.
"""

from __future__ import annotations

import json
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qmp_server.errors import CommandError
from qmp_server.qapi import ArgumentValidator, Schema

from ._canon import canonical

QEMU = shutil.which("qemu-system-x86_64")
pytestmark = [pytest.mark.live_qemu, pytest.mark.slow,
              pytest.mark.skipif(QEMU is None, reason="no qemu-system-x86_64")]
VISITOR_TEXTS = ("is missing", "is unexpected", "Invalid parameter type", "expects uint",
                 "expects int", "does not accept value")


class _QMP:
    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(path)
        self.file = self.sock.makefile("rwb")
        self.read()
        self.call("qmp_capabilities")

    def read(self) -> dict[str, Any]:
        while True:
            msg: dict[str, Any] = json.loads(self.file.readline())
            if "event" not in msg:
                return msg

    def call(self, name: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        req: dict[str, Any] = {"execute": name}
        if args is not None:
            req["arguments"] = args
        self.file.write(json.dumps(req).encode() + b"\n")
        self.file.flush()
        return self.read()


@pytest.fixture(scope="module")
def qemu72() -> Iterator[_QMP]:
    assert QEMU is not None
    version = subprocess.run([QEMU, "--version"], capture_output=True, text=True).stdout
    if "version 7.2" not in version:
        pytest.skip(f"needs QEMU 7.2, found {version.splitlines()[0]}")
    tmp = tempfile.mkdtemp()
    path = str(Path(tmp) / "qmp.sock")
    proc = subprocess.Popen([QEMU, "-machine", "none", "-nodefaults", "-display", "none",
                             "-qmp", f"unix:{path},server=on,wait=off"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if Path(path).exists():
                break
            time.sleep(0.05)
        qmp = _QMP(path)
        yield qmp
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def _visitor_error(desc: str | None) -> str | None:
    if desc is None or not any(t in desc for t in VISITOR_TEXTS):
        return None
    if any(t in desc for t in ("between", "range", "power")):
        return None  # a semantic check that runs after the visit
    return desc


def _random_args(rnd: random.Random, schema: Schema, cmd: str) -> dict[str, Any]:
    def value(depth: int = 0) -> Any:
        kinds: list[Any] = [
            lambda: rnd.choice([0, 1, 255, 256, -1, 2**32, 2**63, 2**64 - 1, -(2**63)]),
            lambda: rnd.choice([1.5, 1.0, 1e20]), lambda: rnd.choice([True, False]),
            lambda: None, lambda: rnd.choice(["", "none", "zlib", "x"]),
            lambda: [value(depth + 1) for _ in range(rnd.randint(0, 2))] if depth < 3 else [],
            lambda: {rnd.choice(["node-name", "alias", "bitmaps", "name", "q"]): value(depth + 1)
                     for _ in range(rnd.randint(0, 3))} if depth < 3 else {},
        ]
        return rnd.choice(kinds)()

    if cmd == "migrate-set-parameters":
        setp = schema.lookup_type("MigrateSetParameters")
        names = [m.name for m in getattr(setp, "members", ())] + ["bogus", "zz", "x1"]
        return {rnd.choice(names): value() for _ in range(rnd.randint(1, 6))}
    if cmd == "migrate-set-capabilities":
        caps = [*schema.enum_members("MigrationCapability"), "bogus"]
        items: list[Any] = []
        for _ in range(rnd.randint(0, 3)):
            item: dict[str, Any] = {}
            if rnd.random() < 0.9:
                item["capability"] = rnd.choice(caps) if rnd.random() < 0.8 else value()
            if rnd.random() < 0.9:
                item["state"] = rnd.choice([True, False]) if rnd.random() < 0.8 else value()
            if rnd.random() < 0.15:
                item[rnd.choice(["x", "zz"])] = 1
            items.append(item if rnd.random() < 0.9 else value())
        args: dict[str, Any] = {"capabilities": items} if rnd.random() < 0.9 else {}
        if rnd.random() < 0.2:
            args[rnd.choice(["q", "p"])] = 1
        return args
    return {rnd.choice(["a", "b", "c", "dd", "eee"]): 1 for _ in range(rnd.randint(0, 5))}


def test_same_first_error_as_qemu(qemu72: _QMP, schema72: Schema) -> None:
    validator = ArgumentValidator(schema72)
    rnd = random.Random(7)
    mismatches = []
    for _ in range(600):
        cmd = rnd.choice(["migrate-set-parameters", "migrate-set-capabilities", "query-migrate"])
        args = _random_args(rnd, schema72, cmd)
        command = schema72.command(cmd)
        assert command is not None
        try:
            validator.validate(command, args)
            ours = None
        except CommandError as err:
            ours = err.desc
        theirs = _visitor_error(qemu72.call(cmd, args).get("error", {}).get("desc"))
        if ours != theirs:
            mismatches.append((cmd, args, ours, theirs))
    assert mismatches == []


def test_introspection_of_shared_commands(qemu72: _QMP, schema72: Schema) -> None:
    live = qemu72.call("query-qmp-schema")["return"]
    ours = schema72.introspect()
    live_names = {e["name"] for e in live}
    for e in ours:
        if e["meta-type"] in ("command", "event") and e["name"] in live_names:
            assert json.dumps(canonical(ours, e["name"])) == json.dumps(
                canonical(live, e["name"])), e["name"]
