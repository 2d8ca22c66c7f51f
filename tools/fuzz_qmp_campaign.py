#!/usr/bin/env python3
"""A long QMP fuzz campaign against one qmp-server process (outside CI; CI runs a short one).

    python tools/fuzz_qmp_campaign.py --count 1000000 [--seed 1] [--compat 10.0] [--json]

Starts ``python -m qmp_server`` with a unix monitor, negotiates, reads the server's own
``query-qmp-schema`` and then sends ``--count`` generated inputs on one connection:

* requests for every command the schema lists, with arguments generated from its introspected
  argument type — right, wrong-typed, missing, extra and oversized members;
* those requests' JSON text mutated (bytes flipped, cut, duplicated, junk inserted);
* random JSON values that are not requests, and random bytes.

After each input it sends ``0xFF`` (QMP's parser reset, which no JSON state survives) and a
sync request, and reads up to the sync's answer: every line in between must be a QMP
``return``, ``error`` (with a class and a text) or event.  Every 1,000 inputs a second
connection checks that the server still answers ``query-status``.  The process must never die.
Commands that end the process or start a migration (``quit``, ``migrate``, HMP ``q``...) are
not sent: they would stop the campaign, not test it.  Prints the figures at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

#: commands that end the process or reach outside it: left out on purpose
EXCLUDED = frozenset({
    "quit", "migrate", "migrate-incoming", "migrate-recover", "system_powerdown",
    "x-exit-preconfig", "getfd", "add-fd",
})  # fmt: skip
#: HMP lines starting with these words are not sent through human-monitor-command
HMP_EXCLUDED = ("q", "quit", "migrate", "migrate_incoming", "migrate_recover", "system_powerdown")


class Client:
    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(30)
        self.sock.connect(path)
        self.buf = b""
        self.line()  # greeting
        self.send(b'{"execute":"qmp_capabilities"}')
        self.line()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def call(self, name: str, **args: Any) -> Any:
        self.send(json.dumps({"execute": name, "arguments": args, "id": "call"}).encode())
        while True:
            msg = json.loads(self.line())
            if msg.get("id") == "call":
                return msg["return"]


class Generator:
    """Inputs from the introspected schema; deterministic for a seed."""

    def __init__(self, schema: list[dict[str, Any]], rng: random.Random) -> None:
        self.rng = rng
        self.types = {e["name"]: e for e in schema}
        self.commands = [e for e in schema if e["meta-type"] == "command"
                         and e["name"] not in EXCLUDED]  # fmt: skip

    def value(self, type_name: str, depth: int = 0) -> Any:
        r = self.rng
        if r.random() < 0.05 or depth > 4:
            return self.junk_value()
        t = self.types.get(type_name)
        if t is None:
            return self.junk_value()
        meta = t["meta-type"]
        if meta == "builtin":
            return self.builtin(t["json-type"])
        if meta == "enum":
            values = t.get("values") or [m["name"] for m in t.get("members", [])]
            return r.choice(values) if values and r.random() < 0.9 else self.word()
        if meta == "array":
            return [self.value(t["element-type"], depth + 1) for _ in range(r.randint(0, 3))]
        if meta == "alternate":
            return self.value(r.choice(t["members"])["type"], depth + 1)
        if meta == "object":
            return self.obj(t, depth)
        return self.junk_value()

    def obj(self, t: dict[str, Any], depth: int) -> dict[str, Any]:
        r = self.rng
        out: dict[str, Any] = {}
        for m in t.get("members", []):
            if "default" in m and r.random() < 0.4:  # optional: often left out
                continue
            if r.random() < 0.03:
                continue  # a required member missing, sometimes
            out[m["name"]] = self.value(m["type"], depth + 1)
        for variant in t.get("variants", []):
            if out.get(t.get("tag")) == variant["case"]:
                out.update(self.value(variant["type"], depth + 1) or {})
        if r.random() < 0.05:
            out[self.word()] = self.junk_value()
        return out

    def builtin(self, json_type: str) -> Any:
        r = self.rng
        if json_type == "int":
            return r.choice([0, 1, -1, 2**31, 2**63 - 1, -(2**63), 2**64, r.randint(-9, 10**12)])
        if json_type == "number":
            return r.choice([0.5, -1e308, 1e308, float(r.randint(0, 100))])
        if json_type == "boolean":
            return r.random() < 0.5
        if json_type == "string":
            return self.word()
        if json_type == "null":
            return None
        return self.junk_value()

    def word(self) -> str:
        r = self.rng
        pool = ["", "a", "none", "tcp:127.0.0.1:1", "unix:/nonexistent", "exec:true", "\u00e9",
                "x" * r.randint(0, 3000), "info migrate", "info status", "help", "\\", "\u0000",
                "/machine", "/machine/unattached/device[0]", "realized", "-1", "1G", "on"]
        return r.choice(pool)

    def junk_value(self) -> Any:
        r = self.rng
        return r.choice([None, True, 0, -1, 2**70, 1.5, "", "s", [], {}, [[[]]], {"a": {"b": []}}])

    def request(self) -> dict[str, Any]:
        r = self.rng
        cmd = r.choice(self.commands)
        args = self.value(cmd["arg-type"])
        if cmd["name"] == "human-monitor-command" and isinstance(args, dict):
            line = str(args.get("command-line", ""))
            if line.split(" ", 1)[0] in HMP_EXCLUDED:
                args["command-line"] = "info status"
        msg: dict[str, Any] = {"execute": cmd["name"]}
        if args or r.random() < 0.5:
            msg["arguments"] = args
        if r.random() < 0.7:
            msg["id"] = r.choice([r.randint(0, 10**6), "x", [1], {"a": 1}, None])
        if r.random() < 0.03:
            msg["exec-oob"] = msg.pop("execute")
        return msg

    def one(self) -> bytes:
        r = self.rng
        kind = r.random()
        if kind < 0.6:
            return json.dumps(self.request()).encode()
        if kind < 0.85:
            data = bytearray(json.dumps(self.request()).encode())
            for _ in range(r.randint(1, 4)):
                op = r.randrange(4)
                pos = r.randrange(len(data) + 1)
                if op == 0 and data:
                    data[min(pos, len(data) - 1)] ^= 1 << r.randrange(8)
                elif op == 1:
                    del data[pos:]
                elif op == 2:
                    data[pos:pos] = data[: r.randint(0, 40)]
                else:
                    data[pos:pos] = r.choice([b"{", b"}", b"[", b'"', b"\\u", b"1e9999", b"\x00"])
            return bytes(data).replace(b"\xff", b"")
        if kind < 0.93:
            return json.dumps(self.junk_value()).encode()
        return bytes(r.randrange(255) for _ in range(r.randint(1, 64)))


def _check_line(line: bytes, stats: dict[str, int]) -> None:
    try:
        msg = json.loads(line)
    except ValueError:
        # an id beyond a double is echoed as inf, as QEMU's %.17g prints it
        msg = json.loads(line.replace(b"inf", b"null").replace(b"nan", b"null"))
    if not isinstance(msg, dict) or not ({"return", "error", "event"} & set(msg)):
        raise AssertionError(f"not a QMP answer: {line[:300]!r}")
    if "error" in msg:
        err = msg["error"]
        assert isinstance(err, dict) and err.get("class") and err.get("desc"), line
        stats["errors"] += 1
    elif "return" in msg:
        stats["returns"] += 1
    else:
        stats["events"] += 1


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def campaign(count: int, seed: int, compat: str | None) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="qmp-fuzz-"))
    sock = str(tmp / "qmp.sock")
    argv = [sys.executable, "-m", "qmp_server", "-M", "pc", "-m", "16", "-no-shutdown",
            "-nodefaults", "-qmp", f"unix:{sock},server=on,wait=off",
            "-qmp", f"unix:{sock}.2,server=on,wait=off"]  # fmt: skip
    if compat:
        argv += ["--compat", compat]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE)
    for _ in range(300):
        if os.path.exists(sock + ".2"):
            break
        time.sleep(0.05)
    client, other = Client(sock), Client(sock + ".2")
    gen = Generator(client.call("query-qmp-schema"), random.Random(seed))
    stats = {"inputs": 0, "bytes": 0, "returns": 0, "errors": 0, "events": 0, "reconnects": 0,
             "health_checks": 0}  # fmt: skip
    rss_start = _rss_kib(proc.pid)
    start = time.monotonic()
    batch = 64
    n = 0
    while n < count:
        frames = []
        for k in range(min(batch, count - n)):
            data = gen.one()
            stats["bytes"] += len(data)
            frames.append(data + b"\xff" + b'{"execute":"query-status","id":"sync-%d"}' % (n + k))
        last = n + len(frames) - 1
        try:
            client.send(b"".join(frames))
            want = b'"id": "sync-%d"' % last
            while True:
                line = client.line()
                _check_line(line, stats)
                if want in line:
                    break
        except (ConnectionError, TimeoutError) as err:
            if proc.poll() is not None:
                raise AssertionError(f"server died ({proc.returncode}) at input {n}") from err
            stats["reconnects"] += 1
            client = Client(sock)
        n += len(frames)
        stats["inputs"] = n
        if n // 1000 != (n - len(frames)) // 1000:
            status = other.call("query-status")
            assert status["status"] in ("running", "paused", "shutdown", "prelaunch"), status
            stats["health_checks"] += 1
        if n % 100_000 < batch:
            print(f"  {n:,} inputs, {time.monotonic() - start:.0f} s", file=sys.stderr)
    elapsed = time.monotonic() - start
    alive = proc.poll() is None
    rss = _rss_kib(proc.pid) if alive else 0
    proc.terminate()
    proc.wait(10)
    return {**stats, "seed": seed, "seconds": round(elapsed, 1), "server_alive": alive,
            "rss_kib_at_start": rss_start, "rss_kib_at_end": rss,
            "commands_in_schema": len(gen.commands)}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--compat", default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    result = campaign(args.count, args.seed, args.compat)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>20}: {value:,}" if isinstance(value, int) and not isinstance(value, bool)
                  else f"{key:>20}: {value}")  # fmt: skip
    return 0 if result["server_alive"] else 1


if __name__ == "__main__":
    sys.exit(main())
