"""Host evacuation benchmark (issue 16's third target): fleet A's VMs moved to fleet B.

Two fleet processes on this machine, each standing for a host: A with ``--count`` VMs of
``--memory`` idle content (default 100 of 256 MiB), B empty.  ``examples/evacuate_host.py``'s
orchestrator moves them all, ``--concurrency`` at a time (default 8), over TCP, each
destination started paused (``--paused-start``) so that its digest is taken before its guest
runs again; then each destination is resumed and each source quit.  With
``--link-bandwidth`` (and ``--link-latency``) fleet A's migrations share that modelled NIC.

Printed: whether every guest digest was equal, whether every VM runs exactly once (on B, none
left on A), the total time, the per-VM downtime (min/median/max) and total time (median/max),
both fleets' RSS, and the link's counters.  Nothing here asserts; the exit status is 0 when
every VM moved with equal digests.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_fleet_evacuate.py [--count N]
        [--concurrency N] [--memory SIZE] [--link-bandwidth SIZE] [--link-latency T] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from evacuate_host import Evacuation, Outcome


def write_fleets(tmp: str, count: int, memory: str) -> None:
    lines = [
        "[fleet]", f'qmp = "unix:{tmp}/a/fleet.sock,server=on,wait=off"',
        "[defaults]", f'm = "{memory}"',
        f'qmp = "unix:{tmp}/a/{{name}}.sock,server=on,wait=off"',
        "[[vm]]", 'name = "vm{index}"', f"count = {count}",
    ]  # fmt: skip
    for fleet, text in (("a", lines), ("b", lines[:2])):
        os.makedirs(f"{tmp}/{fleet}")
        Path(f"{tmp}/{fleet}.toml").write_text(
            "\n".join(text).replace(f"{tmp}/a/", f"{tmp}/{fleet}/") + "\n"
        )


def start(tmp: str, fleet: str, extra: list[str]) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "qmp_server", "--fleet", f"{tmp}/{fleet}.toml", *extra]
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def query(path: str, command: str) -> Any:
    qmp = QMPClient("bench")
    await qmp.connect(path)
    try:
        return await qmp.execute(command)
    finally:
        await qmp.disconnect()


def wait_for_socket(path: str, proc: subprocess.Popen[bytes]) -> None:
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise SystemExit(f"fleet exited with status {proc.returncode}")
        time.sleep(0.05)


async def wait_for_vms(path: str, count: int) -> None:
    """Until the fleet lists ``count`` VMs (they are listed once built, then start)."""
    while True:
        if len(await query(path, "query-fleet")) >= count:
            return
        await asyncio.sleep(0.1)


async def bench(args: argparse.Namespace, tmp: str) -> dict[str, Any]:
    write_fleets(tmp, args.count, args.memory)
    link = []
    if args.link_bandwidth:
        link += ["--link-bandwidth", args.link_bandwidth]
    if args.link_latency:
        link += ["--link-latency", args.link_latency]
    a, b = start(tmp, "a", link), start(tmp, "b", [])
    try:
        wait_for_socket(f"{tmp}/a/vm{args.count - 1}.sock", a)  # they start in order
        wait_for_socket(f"{tmp}/b/fleet.sock", b)
        await wait_for_vms(f"{tmp}/a/fleet.sock", args.count)
        rss_before = rss_mib(a.pid), rss_mib(b.pid)
        digests: dict[str, bool] = {}

        async def verify(name: str, src: QMPClient, dst: QMPClient) -> None:
            same = await src.execute("x-query-guest-digest") == await dst.execute(
                "x-query-guest-digest"
            )
            digests[name] = bool(same)

        options = argparse.Namespace(
            source=f"{tmp}/a/fleet.sock", dest=f"{tmp}/b/fleet.sock", only=None,
            concurrency=args.concurrency, paused=True, migrate_host="127.0.0.1", timeout=60,
            dest_qmp=f"unix:{tmp}/b/{{name}}.sock,server=on,wait=off",
        )  # fmt: skip
        t0 = time.monotonic()
        outcomes: list[Outcome] = await Evacuation(options, verify).run()
        elapsed = time.monotonic() - t0
        left = await query(f"{tmp}/a/fleet.sock", "query-fleet")
        for _ in range(100):  # each source leaves fleet A once its quit is through
            if not left:
                break
            await asyncio.sleep(0.1)
            left = await query(f"{tmp}/a/fleet.sock", "query-fleet")
        moved = await query(f"{tmp}/b/fleet.sock", "query-fleet")
        link_info = await query(f"{tmp}/a/fleet.sock", "query-fleet-link")
        rss_after = rss_mib(a.pid), rss_mib(b.pid)
    finally:
        for proc in (a, b):
            proc.terminate()
        for proc in (a, b):
            proc.wait(30)
    names = [f"vm{i}" for i in range(args.count)]
    on_b = [vm["name"] for vm in moved if vm["status"] == "running"]
    done = [o for o in outcomes if o.status == "completed"]
    downtimes = sorted(o.downtime or 0 for o in done)
    totals = sorted(o.total or 0 for o in done)
    return {
        "vms": args.count, "memory": args.memory, "concurrency": args.concurrency,
        "link-bandwidth": args.link_bandwidth, "link-latency": args.link_latency,
        "completed": len(done),
        "failed": {o.name: o.error for o in outcomes if o.status != "completed"},
        "digests-equal": len(digests) == args.count and all(digests.values()),
        "running-exactly-once": sorted(on_b) == sorted(names) and not left,
        "left-on-a": len(left),
        "total-s": round(elapsed, 2),
        "downtime-ms": {"min": downtimes[0], "median": statistics.median(downtimes),
                        "max": downtimes[-1]} if downtimes else None,
        "total-time-ms": {"median": statistics.median(totals), "max": totals[-1]}
        if totals else None,
        "rss-mib": {"a-before": round(rss_before[0]), "b-before": round(rss_before[1]),
                    "a-after": round(rss_after[0]), "b-after": round(rss_after[1])},
        "link": link_info,
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100, help="VMs in fleet A (100)")
    parser.add_argument("--concurrency", type=int, default=8, help="migrations at a time (8)")
    parser.add_argument("--memory", default="256M", help="each VM's -m (256M)")
    parser.add_argument("--link-bandwidth", help="fleet A's --link-bandwidth (default: none)")
    parser.add_argument("--link-latency", help="fleet A's --link-latency (default: none)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="qmp-evac-") as tmp:
        result = asyncio.run(bench(args, tmp))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        link = f", link {args.link_bandwidth or 'unlimited'}/s" if args.link_bandwidth else ""
        link += f" +{args.link_latency}" if args.link_latency else ""
        print(f"evacuate {args.count} idle VMs of {args.memory}, {args.concurrency} at a time"
              f"{link}")  # fmt: skip
        for key, value in result.items():
            if key not in ("vms", "memory", "concurrency", "link-bandwidth", "link-latency"):
                print(f"  {key:<22}{value}")
    good = result["digests-equal"] and result["running-exactly-once"]
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
