#!/usr/bin/env python3
"""QMP request-rate benchmark: qmp-server against QEMU 7.2.

    python benchmarks/bench_qmp_requests.py [--targets qmp-server,qemu]
        [--sequential 20000] [--pipelined 20000] [--depth 64] [--json]

For each target the benchmark starts a fresh process with
``-machine none -nodefaults -display none -qmp unix:<sock>,server=on,wait=off``
(qmp-server as ``python -m qmp_server``), negotiates capabilities, warms up,
then measures

* sequential: send one ``query-migrate-capabilities``, read its reply, repeat;
* pipelined: keep ``--depth`` requests in flight (the window refills as
  replies arrive) until all have been answered.

The client is a deliberately small raw-socket loop (no JSON parsing of the
replies, no qemu.qmp), so that the client costs as little as possible.
A reply is counted per ``\\n``; each reply is checked to be a ``return``.
The same request bytes and the same counts are used for every target.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BASE_ARGV = ["-machine", "none", "-nodefaults", "-display", "none"]
REQUEST = b'{"execute":"query-migrate-capabilities"}\n'
WARMUP = 500


class Target:
    def __init__(self, name: str, argv: list[str], env: dict[str, str] | None = None):
        self.name = name
        self.argv = argv
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.tmp = tempfile.mkdtemp(prefix="qmpbench-", dir="/tmp")
        self.sock_path = os.path.join(self.tmp, "qmp.sock")

    def start(self) -> socket.socket:
        cmd = [*self.argv, *BASE_ARGV, "-qmp", f"unix:{self.sock_path},server=on,wait=off"]
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=self.env,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}): {err.strip()}")
            if os.path.exists(self.sock_path):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    s.connect(self.sock_path)
                    return s
                except (ConnectionRefusedError, FileNotFoundError):
                    s.close()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: no QMP socket after 30 s")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        shutil.rmtree(self.tmp, ignore_errors=True)


class LineReader:
    """Counts reply lines with as little work as possible."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def read_line(self) -> bytes:
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line, self.buf = self.buf[: i + 1], self.buf[i + 1 :]
                return line
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buf += chunk

    def read_replies(self) -> tuple[int, int]:
        """Receive once; return (#lines, #lines that are not a return)."""
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("server closed the connection")
        data = self.buf + chunk
        cut = data.rfind(b"\n") + 1
        self.buf = data[cut:]
        complete = data[:cut]
        n = complete.count(b"\n")
        ok = complete.count(b'{"return": ')
        return n, n - ok


def negotiate(sock: socket.socket, rd: LineReader) -> str:
    greeting = rd.read_line()
    sock.sendall(b'{"execute":"qmp_capabilities"}\n')
    reply = rd.read_line()
    if not reply.startswith(b'{"return": {}'):
        raise RuntimeError(f"negotiation failed: {reply!r}")
    return greeting.decode(errors="replace").strip()


def bench_sequential(sock: socket.socket, rd: LineReader, n: int) -> float:
    send = sock.sendall
    read = rd.read_line
    t0 = time.perf_counter()
    for _ in range(n):
        send(REQUEST)
        line = read()
        if not line.startswith(b'{"return": '):
            raise RuntimeError(f"unexpected reply: {line[:200]!r}")
    return time.perf_counter() - t0


def bench_pipelined(sock: socket.socket, rd: LineReader, n: int, depth: int) -> float:
    sent = done = 0
    t0 = time.perf_counter()
    first = min(depth, n)
    sock.sendall(REQUEST * first)
    sent = first
    while done < n:
        got, bad = rd.read_replies()
        if bad:
            raise RuntimeError("unexpected non-return reply while pipelining")
        done += got
        more = min(n - sent, depth - (sent - done))
        if more > 0:
            sock.sendall(REQUEST * more)
            sent += more
    return time.perf_counter() - t0


def run_target(t: Target, n_seq: int, n_pipe: int, depth: int) -> dict[str, Any]:
    sock = t.start()
    try:
        rd = LineReader(sock)
        greeting = negotiate(sock, rd)
        bench_sequential(sock, rd, WARMUP)
        seq = bench_sequential(sock, rd, n_seq) if n_seq else 0.0
        pipe = bench_pipelined(sock, rd, n_pipe, depth) if n_pipe else 0.0
    finally:
        sock.close()
        t.stop()
    return {
        "target": t.name,
        "greeting": greeting,
        "sequential": {
            "requests": n_seq,
            "seconds": seq,
            "req_per_s": n_seq / seq if seq else None,
        },
        "pipelined": {
            "requests": n_pipe,
            "depth": depth,
            "seconds": pipe,
            "req_per_s": n_pipe / pipe if pipe else None,
        },
    }


def make_targets(names: list[str], qemu: str) -> list[Target]:
    out = []
    for name in names:
        if name == "qmp-server":
            env = dict(os.environ)
            env["PYTHONPATH"] = str(REPO) + (
                os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
            )
            out.append(Target("qmp-server", [sys.executable, "-m", "qmp_server"], env))
        elif name == "qmp-server-poll":
            env = dict(os.environ)
            env["PYTHONPATH"] = str(REPO) + (
                os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
            )
            argv = [sys.executable, "-m", "qmp_server", "--poll-us", "200"]
            out.append(Target("qmp-server-poll", argv, env))
        elif name == "qemu":
            out.append(Target("qemu", [qemu]))
        else:
            raise SystemExit(f"unknown target {name!r} (use qmp-server, qemu)")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="QMP request-rate benchmark")
    ap.add_argument(
        "--targets",
        default=None,
        help="comma list of qmp-server,qemu (default: both; qemu only if installed)",
    )
    ap.add_argument("--qemu", default=shutil.which("qemu-system-x86_64") or "qemu-system-x86_64")
    ap.add_argument("--sequential", type=int, default=20000, help="sequential request count")
    ap.add_argument("--pipelined", type=int, default=20000, help="pipelined request count")
    ap.add_argument("--depth", type=int, default=64, help="requests in flight when pipelining")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args(argv)

    if args.targets:
        names = [n.strip() for n in args.targets.split(",") if n.strip()]
    else:
        names = ["qmp-server"]
        if shutil.which(args.qemu) or os.path.exists(args.qemu):
            names.append("qemu")
    results = []
    for t in make_targets(names, args.qemu):
        results.append(run_target(t, args.sequential, args.pipelined, args.depth))

    by = {r["target"]: r for r in results}
    ratio: dict[str, float | None] = {}
    if "qmp-server" in by and "qemu" in by:
        for mode in ("sequential", "pipelined"):
            a = by["qmp-server"][mode]["req_per_s"]
            b = by["qemu"][mode]["req_per_s"]
            ratio[mode] = a / b if a and b else None
    report = {
        "request": REQUEST.decode().strip(),
        "host": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
        },
        "results": results,
        "ratio_qmp_server_over_qemu": ratio,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"request: {report['request']}  (pipeline depth {args.depth})")
    print(f"{'target':<12} {'mode':<11} {'requests':>9} {'seconds':>9} {'req/s':>11}")
    for r in results:
        for mode in ("sequential", "pipelined"):
            m = r[mode]
            if not m["requests"]:
                continue
            print(
                f"{r['target']:<12} {mode:<11} {m['requests']:>9} {m['seconds']:>9.3f} "
                f"{m['req_per_s']:>11.0f}"
            )
    for mode, v in ratio.items():
        print(f"ratio qmp-server/QEMU {mode}: {v:.2f}" if v else f"ratio {mode}: n/a")
    return 0


if __name__ == "__main__":
    sys.exit(main())
