"""Migration benchmarks: two real processes on loopback, driven over QMP.

(a) The cover letter's experiment: a ``vfio-sim`` device with 300 MB of initial data and 1480 ms
    of destination resource allocation (``load-ms=1480``), migrated with the switchover-ACK
    capability off and on; the two downtimes side by side with upstream's (1900 ms vs 420 ms,
    mlx5 VFIO device, real hardware).
(b) Throughput: a 1 GiB guest of random content and a 1 GiB and a 4 GiB guest of zero pages,
    qmp-server against real QEMU 7.2 (``qemu-system-x86_64``) in the same run when installed.

How QEMU is made comparable:

* both sides run ``-machine pc -accel tcg -nodefaults -display none -S`` (a stopped guest: no
  dirtying, so only the transfer is measured), migrate over ``tcp:127.0.0.1``, with
  ``max-bandwidth`` raised to 100 GB/s (QEMU's default is 128 MiB/s, as ours);
* random content on QEMU: the source's RAM is a ``memory-backend-file`` on a file of random
  bytes in /dev/shm (generated once; its page cache is warm), so 1 GiB of incompressible,
  non-zero pages is sent; the destination's RAM is ``memory-backend-ram,prealloc=on``, as in
  the issue's reference figure (~0.7 s, ~1.6 GB/s on a 2-core machine);
* zero pages on QEMU: the plain ``-m`` RAM of a guest that never ran (the firmware is not even
  executed under ``-S``), i.e. all zero pages but the ROMs;
* qmp-server runs ``--guest-fill random`` (every page distinct, pseudo-random; see
  ``engine/guest.py``) or ``zero``, and reports QEMU's ``query-migrate`` fields.

The figure compared is ``total-time`` from ``query-migrate`` on the source (QEMU's own
measurement, from ``migrate`` to completion); GB/s is RAM size / total-time (GB = 10**9 B).

    .venv/bin/python benchmarks/bench_migration.py [--json] [--no-qemu] [--repeat N]
        [--only ack|throughput]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient

ROOT = Path(__file__).resolve().parent.parent
GiB = 1 << 30
QEMU = shutil.which("qemu-system-x86_64")
UPSTREAM = {"off": 1900, "on": 420}
#: QEMU 7.2 reference figures from issue 4 (2-core machine, preallocated destination).
REFERENCE = {"random-1G": 700, "zero-1G": 110, "zero-4G": 400}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _exists(path: str) -> bool:
    return os.path.exists(path)


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


class Proc:
    """A qmp-server or QEMU process with a QMP unix socket."""

    def __init__(self, argv: Sequence[str], sock: str) -> None:
        self.sock = sock
        self.proc = subprocess.Popen(
            [*argv, "-qmp", f"unix:{sock},server=on,wait=off"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.qmp = QMPClient(os.path.basename(sock))

    async def connect(self) -> None:
        deadline = time.monotonic() + 30
        while not _exists(self.sock):
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"process exited: {err}")
            if time.monotonic() > deadline:
                raise TimeoutError(self.sock)
            await asyncio.sleep(0.01)
        for attempt in range(100):  # the socket file exists a moment before listen()
            try:
                await self.qmp.connect(self.sock)
                return
            except Exception:
                if attempt == 99:
                    raise
                self.qmp = QMPClient(os.path.basename(self.sock))
                await asyncio.sleep(0.02)

    async def run(self, cmd: str, args: dict[str, Any] | None = None) -> Any:
        return await self.qmp.execute(cmd, args)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.qmp.disconnect(), 5)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def migrate(
    src: Proc,
    dst: Proc,
    uri: str,
    *,
    caps: dict[str, bool],
    incoming: bool,
    bandwidth: int | None = None,
) -> dict[str, Any]:
    """Set caps on both, max-bandwidth (100 GB/s by default), migrate, wait for completion;
    query-migrate."""
    capabilities = [{"capability": k, "state": v} for k, v in caps.items()]
    for side in (src, dst):
        if capabilities:
            await side.run("migrate-set-capabilities", {"capabilities": capabilities})
    await src.run("migrate-set-parameters", {"max-bandwidth": bandwidth or 100_000_000_000})
    if incoming:
        await dst.run("migrate-incoming", {"uri": uri})
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def watch() -> None:
        async for event in src.qmp.events:  # no polling: it would load both processes
            data: dict[str, Any] = dict(event.get("data") or {})  # type: ignore[call-overload]
            if event["event"] == "MIGRATION" and data.get("status") in (
                "completed", "failed", "cancelled"
            ):  # fmt: skip
                done.set_result(None)
                return

    watcher = asyncio.get_running_loop().create_task(watch())
    cpu0 = cpu_seconds(src.proc.pid), cpu_seconds(dst.proc.pid)
    start = time.monotonic()
    await src.run("migrate", {"uri": uri})
    try:
        await asyncio.wait_for(done, 300)
    finally:
        watcher.cancel()
    wall_ms = int((time.monotonic() - start) * 1000)
    info = dict(await src.run("query-migrate"))
    if not info.get("total-time"):  # QEMU occasionally reports 0: use the wall clock
        info["total-time"] = wall_ms
    info["wall-ms"] = wall_ms
    if info["status"] != "completed":
        raise RuntimeError(f"migration ended {info}")
    # the destination has finished too once the source completed (QEMU: shortly after)
    for _ in range(2000):
        dinfo = await dst.run("query-migrate")
        if dinfo.get("status") in ("completed", "failed"):
            break
        await asyncio.sleep(0.005)
    info["cpu-s"] = {"source": cpu_seconds(src.proc.pid) - cpu0[0],
                     "destination": cpu_seconds(dst.proc.pid) - cpu0[1]}  # fmt: skip
    return info


def qmp_server_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "qmp_server", *args]


async def run_qmp_server(
    tmp: str, size: str, fill: str, *, device: str | None = None, ack: bool | None = None
) -> dict[str, Any]:
    common = ["-m", size, "--guest-fill", fill]
    if device:
        common += ["-device", device]
    src = Proc(qmp_server_argv(*common), f"{tmp}/src.sock")
    dst = Proc(qmp_server_argv(*common, "-incoming", "defer"), f"{tmp}/dst.sock")
    try:
        await src.connect()
        await dst.connect()
        caps = {"events": True}
        if ack is not None:
            caps.update({"return-path": True, "precopy-initial-data": ack})
        info = await migrate(src, dst, f"tcp:127.0.0.1:{free_port()}", caps=caps, incoming=True)
        a, b = await src.run("x-query-guest-digest"), await dst.run("x-query-guest-digest")
        if a != b:
            raise RuntimeError("digests differ after migration")
        return info
    finally:
        await src.close()
        await dst.close()


def random_file(size: int) -> str:
    path = f"/dev/shm/qmp-bench-random-{size}"
    if not os.path.exists(path) or os.path.getsize(path) != size:
        with open(path + ".tmp", "wb") as f:
            for _ in range(size // (64 << 20)):
                f.write(os.urandom(64 << 20))
        os.replace(path + ".tmp", path)
    return path


async def run_qemu(tmp: str, size: int, fill: str) -> dict[str, Any]:
    assert QEMU is not None
    mb = f"{size >> 20}M"
    base = [QEMU, "-machine", "pc,memory-backend=ram", "-accel", "tcg", "-m", mb,
            "-nodefaults", "-display", "none", "-S"]  # fmt: skip
    if fill == "random":
        src_ram = f"memory-backend-file,id=ram,size={mb},mem-path={random_file(size)},share=on"
    else:
        src_ram = f"memory-backend-ram,id=ram,size={mb}"
    dst_ram = f"memory-backend-ram,id=ram,size={mb},prealloc=on"
    port = free_port()
    uri = f"tcp:127.0.0.1:{port}"
    src = Proc([*base, "-object", src_ram], f"{tmp}/qsrc.sock")
    dst = Proc([*base, "-object", dst_ram, "-incoming", uri], f"{tmp}/qdst.sock")
    try:
        await src.connect()
        await dst.connect()
        return await migrate(src, dst, uri, caps={"events": True}, incoming=False)
    finally:
        await src.close()
        await dst.close()


def _median_run(results: list[dict[str, Any]]) -> dict[str, Any]:
    ordered = sorted(results, key=lambda r: r["total-time"])
    return ordered[len(ordered) // 2]


async def bench_ack(tmp: str, repeat: int) -> dict[str, Any]:
    device = "vfio-sim,id=vf0,initial-bytes=300M,state-bytes=4M,load-ms=1480"
    out: dict[str, Any] = {}
    for mode, ack in (("off", False), ("on", True)):
        runs = [await run_qmp_server(tmp, "1G", "zero", device=device, ack=ack)
                for _ in range(repeat)]  # fmt: skip
        downtimes = [r["downtime"] for r in runs]
        out[mode] = {
            "downtime_ms": statistics.median(downtimes),
            "downtimes_ms": downtimes,
            "total_time_ms": statistics.median(r["total-time"] for r in runs),
            "vfio_transferred": runs[0].get("vfio", {}).get("transferred"),
            "upstream_downtime_ms": UPSTREAM[mode],
        }
    return out


def _cpu(run: dict[str, Any]) -> float:
    return float(run["cpu-s"]["source"] + run["cpu-s"]["destination"])


async def bench_throughput(tmp: str, repeat: int, qemu: bool) -> dict[str, Any]:
    """Rounds interleave qmp-server and QEMU so that both see the same load."""
    cases = [("random-1G", GiB, "random"), ("zero-1G", GiB, "zero"), ("zero-4G", 4 * GiB, "zero")]
    out: dict[str, Any] = {}
    for name, size, fill in cases:
        row: dict[str, Any] = {"size": size, "reference_qemu_ms": REFERENCE[name]}
        runs: list[dict[str, Any]] = []
        qruns: list[dict[str, Any]] = []
        for _ in range(repeat):
            runs.append(await run_qmp_server(tmp, f"{size >> 20}M", fill))
            if qemu and QEMU is not None:
                qruns.append(await run_qemu(tmp, size, fill))
        ours = _median_run(runs)
        row["qmp_server_ms"] = ours["total-time"]
        row["qmp_server_all_ms"] = [r["total-time"] for r in runs]
        row["qmp_server_downtime_ms"] = ours["downtime"]
        row["qmp_server_gbps"] = size / ours["total-time"] / 1e6
        row["qmp_server_cpu_s"] = statistics.median(_cpu(r) for r in runs)
        if qruns:
            theirs = _median_run(qruns)
            row["qemu_ms"] = theirs["total-time"]
            row["qemu_all_ms"] = [r["total-time"] for r in qruns]
            row["qemu_gbps"] = size / theirs["total-time"] / 1e6
            row["qemu_cpu_s"] = statistics.median(_cpu(r) for r in qruns)
            row["ratio_qemu_over_ours"] = theirs["total-time"] / max(ours["total-time"], 1)
        out[name] = row
    return out


def print_tables(result: dict[str, Any]) -> None:
    if "ack" in result:
        ack = result["ack"]
        print("(a) vfio-sim, 300 MB initial data, load-ms=1480: downtime")
        print(f"    {'switchover-ack':<16}{'qmp-server':>12}{'upstream (mlx5)':>18}")
        for mode in ("off", "on"):
            r = ack[mode]
            print(f"    {mode:<16}{r['downtime_ms']:>9} ms{r['upstream_downtime_ms']:>15} ms")
        off, on = ack["off"]["downtime_ms"], ack["on"]["downtime_ms"]
        print(f"    improvement: {off / max(on, 1):.1f}x (upstream {1900 / 420:.1f}x)")
    if "throughput" in result:
        print("(b) migration total-time (query-migrate), median; GB/s = size / total-time")
        head = f"    {'case':<11}{'qmp-server':>16}{'QEMU 7.2 here':>18}{'QEMU/ours':>11}"
        print(head + f"{'issue ref':>11}")
        for name, r in result["throughput"].items():
            ours = f"{r['qmp_server_ms']} ms {r['qmp_server_gbps']:.2f}"
            if "qemu_ms" in r:
                theirs = f"{r['qemu_ms']} ms {r['qemu_gbps']:.2f}"
                ratio = f"{r['ratio_qemu_over_ours']:.2f}x"
            else:
                theirs, ratio = "n/a", "n/a"
            print(f"    {name:<11}{ours:>16}{theirs:>18}{ratio:>11}"
                  f"{r['reference_qemu_ms']:>8} ms")  # fmt: skip
        print("    CPU seconds (source + destination) per run, median: less sensitive to load")
        print(f"    {'case':<11}{'qmp-server':>16}{'QEMU 7.2 here':>18}")
        for name, r in result["throughput"].items():
            theirs = f"{r['qemu_cpu_s']:.2f} s" if "qemu_cpu_s" in r else "n/a"
            print(f"    {name:<11}{r['qmp_server_cpu_s']:>14.2f} s{theirs:>18}")


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"qemu": QEMU if not args.no_qemu else None, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="qmpbench-") as tmp:
        if args.only in (None, "ack"):
            result["ack"] = await bench_ack(tmp, args.repeat)
        if args.only in (None, "throughput"):
            result["throughput"] = await bench_throughput(tmp, args.repeat, not args.no_qemu)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--no-qemu", action="store_true", help="skip real QEMU")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case (median)")
    parser.add_argument("--only", choices=("ack", "throughput"))
    args = parser.parse_args()
    os.chdir(ROOT)
    result = asyncio.run(main_async(args))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_tables(result)


if __name__ == "__main__":
    main()
