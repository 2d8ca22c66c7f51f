#!/usr/bin/env python3
"""QMP request-rate benchmark: qmp-server (default and busy-polling) against QEMU 7.2.

    python benchmarks/bench_qmp_requests.py [--targets qmp-server,qmp-server-poll,qemu]
        [--rounds 3] [--sequential 10000] [--pipelined 20000] [--depth 64]
        [--poll-us 200] [--floor] [--client-poll] [--json]

For each target the benchmark starts a fresh process with
``-machine none -nodefaults -display none -qmp unix:<sock>,server=on,wait=off``
(qmp-server as ``python -m qmp_server``; ``qmp-server-poll`` adds ``--poll-us N``),
negotiates capabilities, warms up, then measures

* sequential: send one ``query-migrate-capabilities``, read its reply, repeat;
* pipelined: keep ``--depth`` requests in flight (the window refills as replies
  arrive) until all have been answered.

Targets run interleaved, ``--rounds`` times each (a fresh process every time); the report
gives the median and the range, and the ratios of the medians over QEMU's.  The load average
is recorded before and after: on a shared VM other processes move these figures a lot (see
``docs/performance.md``).

The client is a deliberately small raw-socket loop, identical for every target: no JSON
parsing of the replies, no qemu.qmp; a reply is counted per ``\\n`` and checked to be a
``return``.  By default it blocks in ``recv()`` like any real client.  ``--client-poll``
makes it spin on a non-blocking socket instead: an *analysis* mode that removes the client's
own wake-up latency from the round trip (for every target alike); it is not the headline
figure.  ``--floor`` adds ``asyncio-floor``: a trivial asyncio server (this file with
``--serve-floor``) that answers each request with a fixed reply of the same size, i.e. the
best any asyncio Python server can do on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
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
MODES = ("sequential", "pipelined")
DEFAULT_TARGETS = ("qmp-server", "qmp-server-poll", "qemu")


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

    def __init__(self, sock: socket.socket, spin: bool = False) -> None:
        self.sock = sock
        self.buf = b""
        self.spin = spin
        sock.setblocking(not spin)

    def _recv(self, size: int) -> bytes:
        if not self.spin:
            chunk = self.sock.recv(size)
        else:
            recv = self.sock.recv
            while True:
                try:
                    chunk = recv(size)
                    break
                except BlockingIOError:
                    continue
        if not chunk:
            raise ConnectionError("server closed the connection")
        return chunk

    def read_line(self) -> bytes:
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line, self.buf = self.buf[: i + 1], self.buf[i + 1 :]
                return line
            self.buf += self._recv(1 << 16)

    def read_replies(self) -> tuple[int, int]:
        """Receive once; return (#lines, #lines that are not a return)."""
        data = self.buf + self._recv(1 << 20)
        cut = data.rfind(b"\n") + 1
        self.buf = data[cut:]
        complete = data[:cut]
        n = complete.count(b"\n")
        ok = complete.count(b'{"return": ')
        return n, n - ok


def _sendall(sock: socket.socket, data: bytes) -> None:
    if sock.getblocking():
        sock.sendall(data)
        return
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view) :]
        except BlockingIOError:
            continue


def negotiate(sock: socket.socket, rd: LineReader) -> str:
    greeting = rd.read_line()
    _sendall(sock, b'{"execute":"qmp_capabilities"}\n')
    reply = rd.read_line()
    if not reply.startswith(b'{"return": {}'):
        raise RuntimeError(f"negotiation failed: {reply!r}")
    return greeting.decode(errors="replace").strip()


def bench_sequential(sock: socket.socket, rd: LineReader, n: int) -> float:
    send = sock.send  # the request is tiny: one send() always takes it whole
    read = rd.read_line
    t0 = time.perf_counter()
    for _ in range(n):
        if send(REQUEST) != len(REQUEST):
            raise RuntimeError("short send")
        line = read()
        if not line.startswith(b'{"return": '):
            raise RuntimeError(f"unexpected reply: {line[:200]!r}")
    return time.perf_counter() - t0


def bench_pipelined(sock: socket.socket, rd: LineReader, n: int, depth: int) -> float:
    sent = done = 0
    t0 = time.perf_counter()
    first = min(depth, n)
    _sendall(sock, REQUEST * first)
    sent = first
    while done < n:
        got, bad = rd.read_replies()
        if bad:
            raise RuntimeError("unexpected non-return reply while pipelining")
        done += got
        more = min(n - sent, depth - (sent - done))
        if more > 0:
            _sendall(sock, REQUEST * more)
            sent += more
    return time.perf_counter() - t0


def run_target(
    t: Target, n_seq: int, n_pipe: int, depth: int, client_poll: bool = False
) -> dict[str, Any]:
    sock = t.start()
    try:
        rd = LineReader(sock, spin=client_poll)
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
        "sequential": n_seq / seq if seq else None,
        "pipelined": n_pipe / pipe if pipe else None,
    }


def _qmp_server_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    return env


def make_target(name: str, qemu: str, poll_us: int) -> Target:
    if name == "qmp-server":
        return Target(name, [sys.executable, "-m", "qmp_server"], _qmp_server_env())
    if name == "qmp-server-poll":
        argv = [sys.executable, "-m", "qmp_server", "--poll-us", str(poll_us)]
        return Target(name, argv, _qmp_server_env())
    if name == "qemu":
        return Target(name, [qemu])
    if name == "asyncio-floor":
        return Target(name, [sys.executable, str(Path(__file__).resolve()), "--serve-floor"])
    raise SystemExit(f"unknown target {name!r} (use {', '.join(DEFAULT_TARGETS)}, asyncio-floor)")


# -- the asyncio floor server ----------------------------------------------------------------

_FLOOR_REPLY = (
    '{"return": ['
    + ", ".join(f'{{"state": false, "capability": "cap-{i:02d}"}}' for i in range(22))
    + "]}\r\n"
).encode()


class _FloorProtocol(asyncio.Protocol):
    """Answers every ``}``-terminated request with a fixed reply: no parsing, no encoding."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(b'{"QMP": {"version": {}, "capabilities": ["oob"]}}\r\n')
        self.negotiated = False

    def data_received(self, data: bytes) -> None:
        n = data.count(b"}")
        if not self.negotiated and n:
            self.negotiated = True
            self.transport.write(b'{"return": {}}\r\n')
            n -= 1
        if n:
            self.transport.write(_FLOOR_REPLY * n)


def serve_floor(argv: list[str]) -> int:
    spec = argv[argv.index("-qmp") + 1]
    path = spec.split(",", 1)[0].removeprefix("unix:")

    async def main() -> None:
        await asyncio.get_running_loop().create_unix_server(_FloorProtocol, path)
        await asyncio.Event().wait()

    asyncio.run(main())
    return 0


# -- reporting ---------------------------------------------------------------------------------


def _host_facts(qemu: str) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
    }
    with contextlib.suppress(OSError):
        facts["cpuidle_governor"] = (
            Path("/sys/devices/system/cpu/cpuidle/current_governor_ro").read_text().strip()
        )
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                facts["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([qemu, "--version"], capture_output=True, text=True, timeout=10)
        facts["qemu"] = out.stdout.splitlines()[0] if out.stdout else None
    return facts


def summarise(samples: list[float | None]) -> dict[str, Any]:
    vals = [v for v in samples if v]
    if not vals:
        return {"median": None, "min": None, "max": None, "samples": []}
    return {
        "median": statistics.median(vals),
        "min": min(vals),
        "max": max(vals),
        "samples": [round(v) for v in vals],
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--serve-floor" in argv:
        return serve_floor(argv)
    ap = argparse.ArgumentParser(description="QMP request-rate benchmark")
    ap.add_argument(
        "--targets",
        default=None,
        help="comma list of qmp-server,qmp-server-poll,qemu,asyncio-floor "
        "(default: the first three; qemu only if installed)",
    )
    ap.add_argument("--qemu", default=shutil.which("qemu-system-x86_64") or "qemu-system-x86_64")
    ap.add_argument("--rounds", type=int, default=3, help="fresh runs per target (median kept)")
    ap.add_argument("--sequential", type=int, default=10000, help="sequential request count")
    ap.add_argument("--pipelined", type=int, default=20000, help="pipelined request count")
    ap.add_argument("--depth", type=int, default=64, help="requests in flight when pipelining")
    ap.add_argument("--poll-us", type=int, default=200, help="--poll-us for qmp-server-poll")
    ap.add_argument("--floor", action="store_true", help="also run the asyncio-floor target")
    ap.add_argument(
        "--client-poll",
        action="store_true",
        help="analysis mode: the client spins instead of blocking in recv() (all targets)",
    )
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args(argv)

    if args.targets:
        names = [n.strip() for n in args.targets.split(",") if n.strip()]
    else:
        names = [n for n in DEFAULT_TARGETS if n != "qemu"]
        if shutil.which(args.qemu) or os.path.exists(args.qemu):
            names.append("qemu")
    if args.floor and "asyncio-floor" not in names:
        names.append("asyncio-floor")

    load_before = os.getloadavg()
    samples: dict[str, dict[str, list[float | None]]] = {n: {m: [] for m in MODES} for n in names}
    greetings: dict[str, str] = {}
    for rnd in range(args.rounds):
        order = names if rnd % 2 == 0 else list(reversed(names))  # spread drift evenly
        for name in order:
            r = run_target(
                make_target(name, args.qemu, args.poll_us),
                args.sequential,
                args.pipelined,
                args.depth,
                args.client_poll,
            )
            greetings[name] = r["greeting"]
            for mode in MODES:
                samples[name][mode].append(r[mode])
    load_after = os.getloadavg()

    results = {n: {m: summarise(samples[n][m]) for m in MODES} for n in names}
    ratios: dict[str, dict[str, float | None]] = {}
    if "qemu" in results:
        for name in names:
            if name == "qemu":
                continue
            ratios[name] = {}
            for mode in MODES:
                a = results[name][mode]["median"]
                b = results["qemu"][mode]["median"]
                ratios[name][mode] = a / b if a and b else None
    report = {
        "request": REQUEST.decode().strip(),
        "command": "python benchmarks/bench_qmp_requests.py " + " ".join(argv),
        "client": "spinning (--client-poll)" if args.client_poll else "blocking recv()",
        "rounds": args.rounds,
        "sequential_requests": args.sequential,
        "pipelined_requests": args.pipelined,
        "depth": args.depth,
        "poll_us": args.poll_us,
        "host": _host_facts(args.qemu),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "greetings": greetings,
        "results": results,
        "ratio_over_qemu": ratios,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    host = report["host"]
    print(
        f"request: {report['request']}   client: {report['client']}   "
        f"rounds: {args.rounds}   pipeline depth: {args.depth}"
    )
    print(
        f"host: {host.get('cpu', '?')}, {host['cpus']} CPUs, kernel {host['kernel']}, "
        f"Python {host['python']}; load avg {load_before[0]:.2f} -> {load_after[0]:.2f}"
    )
    width = max(len(n) for n in names) + 2
    header = f"{'target':<{width}}"
    for mode in MODES:
        header += f" {mode + ' req/s (median, min-max)':>36}"
    print(header)
    for name in names:
        line = f"{name:<{width}}"
        for mode in MODES:
            s = results[name][mode]
            cell = (
                "-"
                if s["median"] is None
                else (f"{s['median']:>8.0f} ({s['min']:.0f}-{s['max']:.0f})")
            )
            line += f" {cell:>36}"
        print(line)
    for name, by_mode in ratios.items():
        cells = "   ".join(
            f"{mode} {v:5.2f}x" if v else f"{mode} n/a" for mode, v in by_mode.items()
        )
        print(f"ratio {name}/qemu: {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
