"""``python -m qmp_server.demo``: what precopy-initial-data / switchover-ack is for, in a minute.

Four qmp-server processes (``host-a`` .. ``host-d``) model four hosts.  One guest, with a
``vfio-sim`` device whose destination needs ``load-ms`` to allocate its resources, migrates
three times, driven exactly as ``qmp-migrate`` drives it (libvirt's sequence over qemu.qmp):

1. host-a -> host-b with the capability off: the destination starts loading the device's
   initial data only after the source stopped the guest, so that time is downtime;
2. host-b -> host-c with the capability on: the source waits for the destination's ACK over the
   return path before it stops the guest, so the load happens while the guest still runs.
3. host-c -> host-d (unless ``--no-postcopy``): the guest now dirties memory faster than the
   link carries it, so precopy cannot converge; after the first full pass the migration
   switches to postcopy (``--postcopy-after-precopy``), and the guest runs on host-d while its
   remaining pages arrive, the ones it touches first.

The first two downtimes are printed side by side, with the guest digests of each hop; the
third hop prints its downtime, the pages sent after the switch, the page requests and the
destination's blocktime.  The last two hosts keep serving afterwards (for qmp-shell, qmp-tui
and the dashboard) unless ``--exit``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from qemu.qmp import QMPClient

from qmp_server.engine.sizes import format_size, parse_size
from qmp_server.migrate_cli import (
    MigrateOptions,
    MigrationResult,
    Progress,
    run_migration,
)
from qmp_server.migrate_postcopy import blocktime_text

HOSTS = ("host-a", "host-b", "host-c", "host-d")
#: Hop 3: the guest's dirty rate on host-c, the link's bandwidth, and host-d's guest's rate.
POSTCOPY_DIRTY_RATE = "256M"
POSTCOPY_BANDWIDTH = "128M"
POSTCOPY_DEST_DIRTY_RATE = "16M"


@dataclass
class Host:
    name: str
    sock: str
    proc: subprocess.Popen[bytes]
    log: IO[bytes]
    http: str | None = None


def _free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise OSError("no free TCP port")


def _wait_listening(host: Host, http_port: int | None, timeout: float = 20.0) -> bool:
    """Wait for the QMP socket (and the HTTP port); False when the process exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if host.proc.poll() is not None:
            return False
        ready = os.path.exists(host.sock)
        if ready and http_port is not None:
            with socket.socket() as s:
                ready = s.connect_ex(("127.0.0.1", http_port)) == 0
        if ready:
            return True
        time.sleep(0.05)
    return False


def _start(name: str, run_dir: Path, args: list[str], http_port: int | None) -> Host:
    sock = str(run_dir / f"{name}.sock")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(sock)
    cmd = [sys.executable, "-m", "qmp_server", "-name", name, *args,
           "-qmp", f"unix:{sock},server=on,wait=off"]  # fmt: skip
    if http_port is not None:
        cmd += ["--http", f"127.0.0.1:{http_port}"]
    log = open(run_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed in _stop
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    host = Host(name, sock, proc, log)
    if not _wait_listening(host, http_port):
        _stop(host)
        if http_port is not None:  # the REST mirror may be unavailable: run without it
            return _start(name, run_dir, args, None)
        raise RuntimeError(f"qmp-server {name} did not start; see {run_dir / (name + '.log')}")
    if http_port is not None:
        host.http = f"http://127.0.0.1:{http_port}/"
    return host


def _stop(host: Host) -> None:
    if host.proc.poll() is None:
        host.proc.terminate()
        try:
            host.proc.wait(10)
        except subprocess.TimeoutExpired:
            host.proc.kill()
            host.proc.wait(5)
    host.log.close()


def _short(path: str) -> str:
    """``path`` relative to the working directory when it is below it."""
    try:
        return os.path.relpath(path) if not os.path.relpath(path).startswith("..") else path
    except ValueError:
        return path


def _tool(name: str) -> str:
    """How to run a console script of this environment: ``.venv/bin/NAME`` unless on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists() and shutil.which(name) != str(beside):
        return _short(str(beside))
    return name


def _command_line(options: MigrateOptions) -> str:
    words = [_tool("qmp-migrate"), "--source", _short(options.source),
             "--dest", _short(options.dest), "--uri", options.uri]  # fmt: skip
    if options.switchover_ack:
        words.append("--switchover-ack")
    if options.postcopy:
        words.append("--postcopy")
    if options.postcopy_after_precopy:
        words.append("--postcopy-after-precopy")
    if options.postcopy_blocktime:
        words.append("--postcopy-blocktime")
    if options.max_bandwidth is not None:
        words += ["--max-bandwidth", format_size(options.max_bandwidth).replace(" MiB", "M")]
    if options.max_postcopy_bandwidth is not None:
        size = format_size(options.max_postcopy_bandwidth).replace(" MiB", "M")
        words += ["--max-postcopy-bandwidth", size]
    return " ".join(shlex.quote(w) for w in words)


def _cell(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    return f"{value}{unit}"


def _table(off: MigrationResult, on: MigrationResult, ack: str) -> str:
    def row(label: str, a: str, b: str) -> str:
        return f"  {label:<24}{a:>16}{b:>16}"

    def size(result: MigrationResult, key: str) -> str:
        value = (result.final.get(key) or {}).get("transferred")
        return "-" if value is None else format_size(int(value))

    lines = [
        row("", f"{ack} off", f"{ack} on"),
        row("", "host-a→host-b", "host-b→host-c"),
        row("status", off.status, on.status),
        row("downtime", _cell(off.final.get("downtime"), " ms"),
            _cell(on.final.get("downtime"), " ms")),
        row("total time", _cell(off.final.get("total-time"), " ms"),
            _cell(on.final.get("total-time"), " ms")),
        row("transferred", size(off, "ram"), size(on, "ram")),
        row("of it VFIO data", size(off, "vfio"), size(on, "vfio")),
        row("guest digests equal", _cell(off.digests_equal), _cell(on.digests_equal)),
    ]  # fmt: skip
    return "\n".join(lines)


async def _demo(hosts: dict[str, Host], run_dir: Path) -> list[MigrationResult]:
    """The two migrations; stops at the first that does not complete."""
    logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)
    progress = Progress(sys.stdout)
    results: list[MigrationResult] = []
    hops = (("host-a", "host-b", False), ("host-b", "host-c", True))
    for number, (src, dst, ack) in enumerate(hops, 1):
        options = MigrateOptions(
            source=hosts[src].sock,
            dest=hosts[dst].sock,
            uri=f"unix:{_short(str(run_dir / f'mig-{src}-{dst}.sock'))}",
            switchover_ack=ack,
        )
        state = "ON" if ack else "OFF"
        print(f"\n{number}) {src} → {dst}, switchover ACK {state}")
        print(f"$ {_command_line(options)}")
        result = await run_migration(options, progress)
        results.append(result)
        if result.status != "completed":
            print(f"error: {result.error}")
            break
        print(
            f"   completed: downtime {result.final.get('downtime')} ms, "
            f"total {result.final.get('total-time')} ms"
        )
    return results


async def _set_dirty_rate(host: Host, rate: int) -> None:
    """``x-set-dirty-rate`` on a host (its monitor serves one client: connect, set, leave)."""
    client = QMPClient(f"demo-{host.name}")
    await client.connect(host.sock)
    try:
        await client.execute("x-set-dirty-rate", {"rate": rate})
    finally:
        await client.disconnect()


async def _postcopy_hop(hosts: dict[str, Host], run_dir: Path) -> MigrationResult:
    """Hop 3: a guest that outruns the link, switched to postcopy after the first pass."""
    await _set_dirty_rate(hosts["host-c"], parse_size(POSTCOPY_DIRTY_RATE))
    bandwidth = parse_size(POSTCOPY_BANDWIDTH)
    options = MigrateOptions(
        source=hosts["host-c"].sock,
        dest=hosts["host-d"].sock,
        uri=f"unix:{_short(str(run_dir / 'mig-host-c-host-d.sock'))}",
        switchover_ack=True,
        max_bandwidth=bandwidth,
        postcopy=True,
        postcopy_after_precopy=True,
        max_postcopy_bandwidth=bandwidth,
        postcopy_blocktime=True,
    )
    print(f"\n3) host-c → host-d, postcopy: the guest now dirties {POSTCOPY_DIRTY_RATE}/s, "
          f"the link carries {POSTCOPY_BANDWIDTH}/s")  # fmt: skip
    print(f"$ {_command_line(options)}")
    result = await run_migration(options, Progress(sys.stdout))
    if result.status != "completed":
        print(f"error: {result.error}")
        return result
    ram = result.final.get("ram") or {}
    print(f"   completed: downtime {result.final.get('downtime')} ms, "
          f"total {result.final.get('total-time')} ms")  # fmt: skip
    if result.in_postcopy:
        print(f"   switched to postcopy ({result.postcopy_reason}); "
              f"{format_size(int(ram.get('postcopy-bytes', 0)))} came after the switch, "
              f"{ram.get('postcopy-requests')} page requests from host-d's guest")  # fmt: skip
        blocked = blocktime_text(result.dest_final)
        if blocked is not None:
            print(f"   host-d's vCPUs waited for pages: {blocked}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="qmp-server-demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dir", default="run", help="where sockets and logs go (default ./run)")
    parser.add_argument("--exit", action="store_true", help="stop the servers at the end")
    parser.add_argument(
        "--http-port",
        type=int,
        default=8080,
        help="first dashboard port (default 8080; a free one if taken)",
    )
    parser.add_argument("--no-http", action="store_true", help="no REST mirror or dashboard")
    parser.add_argument(
        "--no-postcopy", action="store_true", help="skip hop 3 (host-c → host-d in postcopy)"
    )
    parser.add_argument("--memory", default="256M", help="guest RAM (default 256M)")
    parser.add_argument(
        "--initial-bytes",
        default="64M",
        help="the vfio-sim device's initial precopy data (default 64M)",
    )
    parser.add_argument(
        "--load-ms",
        type=int,
        default=2000,
        help="destination resource allocation time of the device (default 2000)",
    )
    parser.add_argument(
        "--dirty-rate", default="4M", help="bytes/s the guest dirties while it runs (default 4M)"
    )
    args = parser.parse_args(argv)  # fmt: skip
    run_dir = Path(args.dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    device = (f"vfio-sim,id=gpu0,initial-bytes={args.initial_bytes},state-bytes=4M,"
              f"load-ms={args.load_ms}")  # fmt: skip
    common = ["-m", args.memory, "-device", device]
    initial = format_size(parse_size(args.initial_bytes))
    print("qmp-server demo: one guest migrates twice, first without, then with the")
    print("switchover ACK (precopy-initial-data, released in QEMU 8.1 as switchover-ack).")
    if not args.no_postcopy:
        print("Then it migrates once more, switching to postcopy when precopy cannot converge.")
    print(f"The guest has {args.memory} of RAM (random content, dirtied at {args.dirty_rate}/s)")
    print(f"and a vfio-sim device with {initial} of initial precopy data; loading it on the")
    print(f"destination (resource allocation) takes {args.load_ms} ms.\n")
    hosts: dict[str, Host] = {}
    port = None if args.no_http else args.http_port
    try:
        for name in HOSTS[:3] if args.no_postcopy else HOSTS:
            extra = (["--guest-fill", "random", "--dirty-rate", args.dirty_rate]
                     if name == "host-a" else ["-incoming", "defer"])  # fmt: skip
            if name == "host-d":  # its guest touches pages while they still arrive
                extra += ["--dirty-rate", POSTCOPY_DEST_DIRTY_RATE]
            http = None if port is None or name == "host-a" else _free_port(port)
            hosts[name] = host = _start(name, run_dir, [*common, *extra], http)
            if http is not None:
                port = http + 1
            role = "source" if name == "host-a" else "-incoming defer"
            print(f"  started {name:<7} {role:<16} QMP {_short(host.sock)}")
        results = asyncio.run(_demo(hosts, run_dir))
        if len(results) != 2 or not all(r.digests_equal for r in results):
            return 1
        print("\nResult:")
        print(_table(results[0], results[1], "ACK"))
        saved = (results[0].final.get("downtime") or 0) - (results[1].final.get("downtime") or 0)
        print(f"\nWith the ACK the {args.load_ms} ms device load happened before the guest "
              f"stopped: {saved} ms less downtime.")  # fmt: skip
        _stop(hosts.pop("host-a"))
        if not args.no_postcopy:
            third = asyncio.run(_postcopy_hop(hosts, run_dir))
            if third.status != "completed" or not third.in_postcopy:
                return 1
            _stop(hosts.pop("host-b"))
        previous, current = list(hosts.values())[-2:]
        off_on = [previous, current]
        if args.exit:
            return 0
        print(f"\n{previous.name} (the guest's previous home) and {current.name} (where it runs "
              "now) keep serving;")  # fmt: skip
        print("Ctrl-C stops them. Connect with (one client per monitor, as in QEMU):")
        shell = _tool("qmp-shell")
        for host in off_on:
            print(f"  {shell} {_short(host.sock)}")
        dashboards = [f"{h.name}: {h.http}" for h in off_on if h.http]
        if dashboards:
            print("Dashboards: " + ", ".join(dashboards))
        elif not args.no_http:
            print("(no dashboard: this build's --http did not start; see the .log files)")
        print(f"Logs: {run_dir}/host-*.log", flush=True)
        while all(h.proc.poll() is None for h in hosts.values()):
            time.sleep(0.5)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        for host in hosts.values():
            _stop(host)


if __name__ == "__main__":
    sys.exit(main())
