#!/usr/bin/env python3
"""Fleet benchmark: issue 16's targets for one fleet process of N VMs.

    python benchmarks/bench_fleet.py [--count 1000] [--memory 1G] [--migrations 20]
        [--singles 10] [--pollers 4] [--dirty-rate 4M] [--dirty-working-set 32M]
        [--idle-seconds 5] [--json]

1. Start-up and memory.  ``python -m qmp_server --fleet-size N -qmp FLEET -- -m SIZE -qmp
   unix:DIR/{name}.sock,server=on,wait=off``: the time from the process's start until every
   one of the N monitors has sent its greeting (the client connects to every socket as soon
   as it exists), then, once idle, the process's VmRSS (``/proc/PID/status``) and PSS
   (``/proc/PID/smaps_rollup``).  In the same run, ``--singles`` single qmp-server processes
   with the same VM options are started together; their start time and memory are printed,
   and extrapolated to N.
2. Monitor latency under migration.  ``--migrations`` VMs of the fleet are replaced (through
   the fleet monitor: ``fleet-vm-remove``, ``fleet-vm-add``) by VMs with the same options plus a
   guest workload (``--dirty-rate`` within ``--dirty-working-set``, which makes each migration
   take a few seconds) and a second monitor that drives their migration, so the fleet still
   has N VMs, each polled on its first monitor.  A second fleet process holds the
   destinations (``-incoming defer``, then ``migrate-incoming tcp:127.0.0.1:PORT``).  While
   the migrations run, ``--pollers`` concurrent clients send ``query-status`` round-robin to
   every one of the N monitors (connections kept open) and time each answer; the same is
   measured with no migration running (the workloads still dirtying), and against the asyncio
   floor: a bare asyncio unix server, in its own process, that answers the same request with
   the same bytes over N connections.

The benchmark only prints (tests never assert times).  Targets (issue 16): RSS <= 2 GiB, all
greetings within 10 s, p99 <= 50 ms under 20 migrations.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
QUERY_STATUS = b'{"execute": "query-status"}\n'
CAPABILITIES = b'{"execute": "qmp_capabilities"}\n'
GIB = 1 << 30
TARGET_RSS = 2 * GIB
TARGET_GREETING_S = 10.0
TARGET_P99_MS = 50.0

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def parse_size(text: str) -> int:
    """``64M``, ``1G``, ``4096``: bytes."""
    m = re.fullmatch(r"(\d+)([KMGT]?)i?B?", text.strip(), re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r}: not a size")
    return int(m.group(1)) << (10 * " KMGT".index(m.group(2).upper() or " "))


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


#: ``--profile FILE``: the source fleet runs under cProfile, which writes FILE at its exit
PROFILE: list[str] = []


def _server(args: list[str], log: Path, profile: bool = False) -> subprocess.Popen[bytes]:
    runner = ["-m", "cProfile", "-o", PROFILE[0]] if profile and PROFILE else []
    with log.open("ab") as err:
        return subprocess.Popen(
            [sys.executable, *runner, "-m", "qmp_server", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
            env=_env(), start_new_session=True,
        )  # fmt: skip


def memory_of(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of a process, in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(status.split("VmRSS:", 1)[1].split()[0]) << 10
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    pss = int(rollup.split("\nPss:", 1)[1].split()[0]) << 10
    return rss, pss


class CpuShare:
    """The CPU a process used over a block, as a share of one CPU (1.0: a core all along):
    below 1 while its loop is busy, the machine's other load took the difference."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.share = 0.0

    def _cpu(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> CpuShare:
        self._start = (self._cpu(), time.monotonic())
        return self

    def __exit__(self, *exc: object) -> None:
        cpu, wall = self._cpu() - self._start[0], time.monotonic() - self._start[1]
        self.share = cpu / wall if wall > 0 else 0.0


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- QMP over asyncio streams ------------------------------------------------------------------


async def connect(
    path: str, proc: subprocess.Popen[bytes], start: float, patience: float = 120
) -> tuple[Conn, float]:
    """Connect as soon as the socket exists; the connection and when its greeting arrived."""
    deadline = time.monotonic() + patience
    while True:
        try:
            reader, writer = await asyncio.open_unix_connection(path, limit=1 << 22)
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited ({proc.returncode}) before {path}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"{path}: no monitor after {patience} s") from None
            await asyncio.sleep(0.02)
    greeting = await reader.readline()
    if not greeting.startswith(b'{"QMP"'):
        raise RuntimeError(f"{path}: not a greeting: {greeting[:80]!r}")
    return (reader, writer), time.monotonic() - start


async def reply(reader: asyncio.StreamReader) -> bytes:
    """The next answer (events in between are skipped)."""
    while True:
        line = await reader.readline()
        if not line:
            raise RuntimeError("monitor closed the connection")
        if line.startswith((b'{"return"', b'{"error"')):
            return line


async def execute(conn: Conn, command: str, **arguments: Any) -> Any:
    msg: dict[str, Any] = {"execute": command}
    if arguments:
        msg["arguments"] = arguments
    conn[1].write(json.dumps(msg).encode() + b"\n")
    answer = json.loads(await reply(conn[0]))
    if "error" in answer:
        raise RuntimeError(f"{command}: {answer['error']}")
    return answer["return"]


async def negotiate(conns: list[Conn]) -> None:
    for _, writer in conns:
        writer.write(CAPABILITIES)
    await asyncio.gather(*(reply(r) for r, _ in conns))


def close(conns: list[Conn]) -> None:
    for _, writer in conns:
        writer.close()


# -- polling -----------------------------------------------------------------------------------


async def poll(
    conns: list[Conn], pollers: int, *, sweeps: int, until: asyncio.Event | None = None
) -> list[float]:
    """Round-robin ``query-status`` over every connection: at least ``sweeps`` passes, and
    on until ``until`` is set.  Each connection has at most one request in flight."""
    free: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(conns)):
        free.put_nowait(i)
    budget = sweeps * len(conns)
    latencies: list[float] = []

    async def worker() -> None:
        while len(latencies) < budget or (until is not None and not until.is_set()):
            i = await free.get()
            reader, writer = conns[i]
            t0 = time.perf_counter()
            writer.write(QUERY_STATUS)
            await reply(reader)
            latencies.append(time.perf_counter() - t0)
            free.put_nowait(i)

    await asyncio.gather(*(worker() for _ in range(min(pollers, len(conns)))))
    return latencies


def percentiles(latencies: list[float]) -> dict[str, float]:
    ms = sorted(x * 1000 for x in latencies)
    if not ms:
        return {"n": 0, "p50": 0.0, "p99": 0.0, "max": 0.0}
    return {
        "n": len(ms),
        "p50": ms[len(ms) // 2],
        "p99": ms[min(len(ms) - 1, int(len(ms) * 0.99))],
        "max": ms[-1],
    }


# -- the asyncio floor -------------------------------------------------------------------------


class _Floor(asyncio.Protocol):
    reply = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(b'{"QMP": {"version": {}, "capabilities": ["oob"]}}\r\n')

    def data_received(self, data: bytes) -> None:
        self.transport.write(self.reply * data.count(b"\n"))


def serve_floor(path: str, answer: bytes) -> None:
    """The floor server: every request line gets ``answer`` (no parsing, no encoding)."""
    _Floor.reply = answer

    async def main() -> None:
        await asyncio.get_running_loop().create_unix_server(_Floor, path, backlog=4096)
        await asyncio.Event().wait()

    asyncio.run(main())


# -- the run -----------------------------------------------------------------------------------


@dataclass
class Results:
    count: int
    memory: str
    fleet_greeting_s: float = 0.0
    fleet_rss: int = 0
    fleet_pss: int = 0
    singles: int = 0
    single_greeting_s: list[float] = field(default_factory=list)
    singles_all_greeting_s: float = 0.0
    single_rss: list[int] = field(default_factory=list)
    single_pss: list[int] = field(default_factory=list)
    latency: dict[str, dict[str, float]] = field(default_factory=dict)
    migrations: list[dict[str, Any]] = field(default_factory=list)
    migration_wall_s: float = 0.0
    dirty: str = ""
    load_start: float = field(default_factory=lambda: os.getloadavg()[0])


def vm_options(args: argparse.Namespace) -> list[str]:
    return ["-m", args.memory]


async def measure_singles(args: argparse.Namespace, tmp: Path, res: Results) -> None:
    """``--singles`` one-VM processes started together: each one's greeting time and memory."""
    res.singles = min(args.singles, args.count)
    procs, paths = [], []
    start = time.monotonic()
    for i in range(res.singles):
        path = str(tmp / f"single{i}.sock")
        paths.append(path)
        procs.append(
            _server([*vm_options(args), "-qmp", f"unix:{path},server=on,wait=off"],
                    tmp / "singles.log")
        )  # fmt: skip
    try:
        got = await asyncio.gather(
            *(connect(p, pr, start) for p, pr in zip(paths, procs, strict=True))
        )
        res.single_greeting_s = [t for _, t in got]
        res.singles_all_greeting_s = max(res.single_greeting_s)
        await asyncio.sleep(args.settle)
        for proc in procs:
            rss, pss = memory_of(proc.pid)
            res.single_rss.append(rss)
            res.single_pss.append(pss)
        close([c for c, _ in got])
    finally:
        for proc in procs:
            stop(proc)


_T0 = time.monotonic()


def _progress(text: str) -> None:
    print(f"[{time.monotonic() - _T0:6.1f} s] {text}", flush=True)


async def run(args: argparse.Namespace, tmp: Path) -> Results:
    res = Results(args.count, args.memory)
    log = tmp / "fleet.log"
    n, m = args.count, min(args.migrations, args.count)
    fleet_sock = str(tmp / "fleet.sock")
    start = time.monotonic()
    fleet = _server(
        ["--fleet-size", str(n), "-qmp", f"unix:{fleet_sock},server=on,wait=off", "--",
         *vm_options(args), "-qmp", f"unix:{tmp}/{{name}}.sock,server=on,wait=off"],
        log, profile=True,
    )  # fmt: skip
    dest: subprocess.Popen[bytes] | None = None
    floor: subprocess.Popen[bytes] | None = None
    try:
        # 1. every greeting, then the idle process's memory
        got = await asyncio.gather(*(connect(f"{tmp}/vm{i}.sock", fleet, start) for i in range(n)))
        res.fleet_greeting_s = max(t for _, t in got)
        conns = [c for c, _ in got]
        await asyncio.sleep(args.settle)
        res.fleet_rss, res.fleet_pss = memory_of(fleet.pid)
        _progress(f"fleet: {n} greetings in {res.fleet_greeting_s:.2f} s")
        await measure_singles(args, tmp, res)

        # 2. replace m VMs by migrating ones (same options, a workload, a control monitor)
        control, _ = await connect(fleet_sock, fleet, time.monotonic())
        await negotiate([control])
        close(conns[:m])
        extra = ["--dirty-rate", args.dirty_rate, "--dirty-working-set", args.dirty_working_set]
        res.dirty = " ".join(extra)
        for i in range(m):
            await execute(control, "fleet-vm-remove", name=f"vm{i}")
        for i in range(m):
            await execute(
                control, "fleet-vm-add", name=f"mig{i}",
                args=[*vm_options(args), *extra,
                      "-qmp", f"unix:{tmp}/{{name}}.sock,server=on,wait=off",
                      "-qmp", f"unix:{tmp}/{{name}}.ctl.sock,server=on,wait=off"],
            )  # fmt: skip
        _progress(f"{m} VMs replaced by migrating ones")
        t = time.monotonic()
        mig = [(await connect(f"{tmp}/mig{i}.sock", fleet, t))[0] for i in range(m)]
        ctl = [(await connect(f"{tmp}/mig{i}.ctl.sock", fleet, t))[0] for i in range(m)]
        conns = mig + conns[m:]
        await negotiate(conns + ctl)
        _progress("all monitors negotiated")

        dest = _server(
            ["--fleet-size", str(m), "--fleet-name", "dst{index}", "--", *vm_options(args),
             "-incoming", "defer", "-qmp", f"unix:{tmp}/{{name}}.sock,server=on,wait=off"],
            tmp / "dest.log",
        )  # fmt: skip
        t = time.monotonic()
        dst = [(await connect(f"{tmp}/dst{i}.sock", dest, t))[0] for i in range(m)]
        await negotiate(dst)
        _progress(f"destination fleet of {m} VMs ready")

        # the same request's answer, for the floor server
        conns[-1][1].write(QUERY_STATUS)
        answer = await reply(conns[-1][0])

        # no migration: a warm-up pass, then the measured passes
        await poll(conns, args.pollers, sweeps=1)
        idle_until = asyncio.Event()
        asyncio.get_running_loop().call_later(args.idle_seconds, idle_until.set)
        with CpuShare(fleet.pid) as cpu:
            lat = await poll(conns, args.pollers, sweeps=2, until=idle_until)
        res.latency["fleet, no migration"] = {**percentiles(lat), "cpu": cpu.share}
        _progress("no-migration pass done")

        # m migrations, polled until every one has ended
        ports = _free_ports(m)
        for i in range(m):
            await execute(dst[i], "migrate-incoming", uri=f"tcp:127.0.0.1:{ports[i]}")
        done = asyncio.Event()
        t_mig = time.monotonic()
        with CpuShare(fleet.pid) as cpu:
            for i in range(m):
                await execute(ctl[i], "migrate", uri=f"tcp:127.0.0.1:{ports[i]}")
            watcher = asyncio.create_task(_watch(ctl, done, args.migration_timeout))
            lat = await poll(conns, args.pollers, sweeps=1, until=done)
            res.migrations = await watcher
        res.migration_wall_s = time.monotonic() - t_mig
        res.latency[f"fleet, {m} migrations"] = {**percentiles(lat), "cpu": cpu.share}
        _progress(f"{m} migrations ended")
        for i in range(m):
            status = await execute(dst[i], "query-status")
            res.migrations[i]["dest"] = status["status"]
        close(conns + ctl + dst + [control])

        # the floor: same request, same answer, N connections to one asyncio server
        floor_sock = str(tmp / "floor.sock")
        floor = subprocess.Popen(  # noqa: ASYNC220  (returns at once: nothing to wait for)
            [sys.executable, __file__, "--serve-floor", floor_sock, "--answer", answer.hex()],
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        t = time.monotonic()
        fconns = [(await connect(floor_sock, floor, t))[0] for _ in range(n)]
        await poll(fconns, args.pollers, sweeps=1)
        floor_until = asyncio.Event()
        asyncio.get_running_loop().call_later(args.idle_seconds, floor_until.set)
        with CpuShare(floor.pid) as cpu:
            lat = await poll(fconns, args.pollers, sweeps=2, until=floor_until)
        res.latency["asyncio floor"] = {**percentiles(lat), "cpu": cpu.share}
        close(fconns)
    finally:
        for proc in (fleet, dest, floor):
            if proc is not None:
                stop(proc)
    return res


async def _watch(ctl: list[Conn], done: asyncio.Event, limit: float) -> list[dict[str, Any]]:
    """query-migrate on each migrating VM's control monitor until all have ended (those still
    running after ``limit`` seconds are cancelled)."""
    final: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + limit
    while len(final) < len(ctl):
        if time.monotonic() > deadline:
            _progress("migration timeout: migrate_cancel on those still running")
            for i, conn in enumerate(ctl):
                if i not in final:
                    await execute(conn, "migrate_cancel")
            deadline = float("inf")
        for i, conn in enumerate(ctl):
            if i in final:
                continue
            info = await execute(conn, "query-migrate")
            if info.get("status") in ("completed", "failed", "cancelled"):
                final[i] = {
                    "status": info["status"],
                    "total_ms": info.get("total-time"),
                    "downtime_ms": info.get("downtime"),
                    "transferred": info.get("ram", {}).get("transferred"),
                }
        await asyncio.sleep(0.2)
    done.set()
    return [final[i] for i in range(len(ctl))]


def _free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


# -- report ------------------------------------------------------------------------------------


def report(res: Results, args: argparse.Namespace) -> None:
    n, k = res.count, res.singles
    mean_rss = statistics.mean(res.single_rss) if res.single_rss else 0
    mean_pss = statistics.mean(res.single_pss) if res.single_pss else 0
    batches = -(-n // k) if k else 0
    load = os.getloadavg()
    print()
    print(f"Fleet benchmark: {n} VMs of -m {res.memory}, {os.cpu_count()} CPUs, "
          f"load {res.load_start:.2f} at the start, {load[0]:.2f} at the end")  # fmt: skip
    print()
    print(f"{'':34} {'one fleet':>14} {f'{n} singles (from {k})':>24}  target")
    ok = "ok" if res.fleet_greeting_s <= TARGET_GREETING_S else "MISSED"
    print(
        f"{'all monitors greeting (s)':34} {res.fleet_greeting_s:>14.2f} "
        f"{res.singles_all_greeting_s * batches:>24.1f}  <= {TARGET_GREETING_S:.0f} s {ok}"
    )
    ok = "ok" if res.fleet_rss <= TARGET_RSS else "MISSED"
    print(
        f"{'total RSS (GiB)':34} {res.fleet_rss / GIB:>14.2f} {mean_rss * n / GIB:>24.1f}"
        f"  <= 2 GiB {ok}"
    )
    print(f"{'total PSS (GiB)':34} {res.fleet_pss / GIB:>14.2f} {mean_pss * n / GIB:>24.1f}")
    print(f"{'per VM RSS (MiB)':34} {res.fleet_rss / n / 2**20:>14.2f} "
          f"{mean_rss / 2**20:>24.1f}")  # fmt: skip
    print(f"  singles: {k} started together, all greeting in {res.singles_all_greeting_s:.2f} s "
          f"(each {min(res.single_greeting_s, default=0):.2f}-"
          f"{max(res.single_greeting_s, default=0):.2f} s); N singles = "
          f"{batches} such batches, RSS x N")  # fmt: skip
    print()
    print(f"query-status round trip, {args.pollers} concurrent pollers over {n} monitors (ms):")
    print(f"{'':28} {'requests':>9} {'p50':>8} {'p99':>8} {'max':>8} {'server CPU':>11}")
    for name, p in res.latency.items():
        mark = ""
        if "migrations" in name:
            mark = "  <= 50 ms " + ("ok" if p["p99"] <= TARGET_P99_MS else "MISSED")
        print(
            f"{name:28} {p['n']:>9} {p['p50']:>8.2f} {p['p99']:>8.2f} {p['max']:>8.2f} "
            f"{p.get('cpu', 0) * 100:>10.0f}%{mark}"
        )
    print()
    print(f"migrations: {len(res.migrations)} over TCP to a second fleet process, guest workload "
          f"{res.dirty}; all ended in {res.migration_wall_s:.1f} s")  # fmt: skip
    statuses = sorted({f"{m['status']}->{m.get('dest')}" for m in res.migrations})
    totals = [m["total_ms"] for m in res.migrations if m["total_ms"] is not None]
    downs = [m["downtime_ms"] for m in res.migrations if m["downtime_ms"] is not None]
    print(f"  source->destination status: {', '.join(statuses)}")
    if totals:
        print(
            f"  total-time ms: min {min(totals)} median {statistics.median(totals):.0f} "
            f"max {max(totals)}; downtime ms: median "
            f"{statistics.median(downs) if downs else 0:.0f} max {max(downs, default=0)}"
        )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--serve-floor":
        serve_floor(argv[1], bytes.fromhex(argv[argv.index("--answer") + 1]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=1000, help="VMs in the fleet (default 1000)")
    ap.add_argument("--memory", default="1G", help="each VM's -m (default 1G)")
    ap.add_argument("--migrations", type=int, default=20, help="concurrent migrations (20)")
    ap.add_argument("--singles", type=int, default=10, help="single processes to compare (10)")
    ap.add_argument("--pollers", type=int, default=4, help="concurrent query-status clients")
    ap.add_argument("--dirty-rate", default="4M", help="migrating guests' dirty rate (4M)")
    ap.add_argument("--dirty-working-set", default="32M",
                    help="where the migrating guests write (32M; at most -m)")  # fmt: skip
    ap.add_argument(
        "--idle-seconds",
        type=float,
        default=5.0,
        help="how long the no-migration and floor passes poll, at least (5)",
    )
    ap.add_argument("--settle", type=float, default=2.0,
                    help="seconds idle before memory is read (2)")  # fmt: skip
    ap.add_argument(
        "--migration-timeout",
        type=float,
        default=180,
        help="cancel migrations still running after this many seconds (180)",
    )
    ap.add_argument(
        "--profile",
        metavar="FILE",
        help="run the source fleet under cProfile, its stats written to FILE",
    )
    ap.add_argument("--logs", metavar="DIR", help="keep the servers' stderr logs in DIR")
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = ap.parse_args(argv)
    if args.profile:
        PROFILE.append(str(Path(args.profile).resolve()))
    if args.count < 1 or args.migrations < 1:
        ap.error("--count and --migrations must be at least 1")
    if parse_size(args.dirty_working_set) > parse_size(args.memory):
        args.dirty_working_set = args.memory
    # N monitors + N clients + the singles: more descriptors than the usual 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 4 * args.count + 256))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    # a SIGTERM (a CI timeout) still stops the servers this run started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="benchfleet-", dir="/tmp"))
    try:
        res = asyncio.run(run(args, tmp))
    except BaseException:
        for name in ("fleet.log", "dest.log", "singles.log"):
            with contextlib.suppress(OSError):
                sys.stderr.write((tmp / name).read_text()[-3000:])
        raise
    finally:
        if args.logs:
            Path(args.logs).mkdir(parents=True, exist_ok=True)
            for log in tmp.glob("*.log"):
                shutil.copy(log, args.logs)
        shutil.rmtree(tmp, ignore_errors=True)
    report(res, args)
    if args.json:
        print(json.dumps(res.__dict__, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
