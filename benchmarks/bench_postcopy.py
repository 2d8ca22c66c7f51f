"""Postcopy benchmarks: two real processes on a unix socket, driven over QMP.

(a) **Precopy cannot converge.**  A 1 GiB guest of random content (``--guest-fill random``, every
    page distinct) whose workload dirties more than ``max-bandwidth`` sends (default 64 MiB/s
    dirtied, 32 MiB/s sent), migrated by qmp-server ``--compat 7.2`` and ``--compat 10.0``:

    * *postcopy-after-precopy*, as ``virsh migrate --postcopy --postcopy-after-precopy`` does it:
      ``postcopy-ram`` on both sides, ``postcopy-blocktime`` on the destination, and
      ``migrate-start-postcopy`` once the first full pass is done (``MIGRATION_PASS`` 2, i.e.
      ``dirty-sync-count`` >= 2).  The destination's workload dirties too (16 MiB/s by default),
      so its guest touches pages it does not hold yet, faults and requests them.  Printed: time
      of the precopy phase, time to ``postcopy-active``, ``total-time``, the source's
      ``downtime``, ``postcopy-bytes``, ``postcopy-requests`` and the destination's
      ``postcopy-blocktime``;
    * the same migration in precopy only, cancelled after ``--cap`` seconds ("did not converge").

    This is not how QEMU users run QEMU: only qmp-server's workload model (``--guest-fill
    random`` on both command lines, ``x-set-dirty-rate``) gives a guest a fixed dirty rate.
    The issue asks for exactly that guest, so these rows have no QEMU counterpart.

(b) **Stream throughput.**  The same random 1 GiB guest, idle on both sides, ``max-bandwidth``
    and ``max-postcopy-bandwidth`` 0 (unlimited), migrated in precopy and with
    ``migrate-start-postcopy`` at ``active``: MB/s of precopy (RAM size / total-time) and of the
    postcopy stream (postcopy-bytes / time from ``postcopy-active`` to completion).

(c) **Same command line as QEMU.**  A real QEMU 7.2 and qmp-server ``--compat 7.2`` (and QEMU
    10.0 from a Debian trixie chroot with ``--qemu10-chroot DIR`` beside ``--compat 10.0``), both
    run ``-machine pc -accel tcg -m 1024 -nodefaults -display none`` (the destination with
    ``-incoming defer``), an idle guest, no qmp-server-only option; postcopy-after-precopy with
    the bandwidths of (a).  QEMU's idle guest is mostly zero pages.

Rounds interleave every row so that all see the same load.  Nothing here asserts.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_postcopy.py [--rounds N] [--json]
        [--qemu10-chroot /srv/trixie] [--no-qemu] [--cap S] [--dirty-rate B] [--bandwidth B]
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20
GiB = 1 << 30
QEMU = shutil.which("qemu-system-x86_64")
COMMON = ["-machine", "pc", "-accel", "tcg", "-m", "1024", "-nodefaults", "-display", "none"]
FINAL = ("completed", "failed", "cancelled")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A qmp-server or QEMU process, its QMP client and the events it sent (with arrival times)."""

    def __init__(self, argv: Sequence[str], qmp: str, address: str | tuple[str, int]) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [*argv, "-qmp", qmp], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, env=env,
        )  # fmt: skip
        self.address = address
        self.qmp = QMPClient("bench")
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                await self.qmp.connect(self.address)
                break
            except Exception:
                if self.proc.poll() is not None:
                    err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                    raise RuntimeError(f"process exited: {err}") from None
                if time.monotonic() > deadline:
                    raise
                self.qmp = QMPClient("bench")
                await asyncio.sleep(0.05)
        self._task = asyncio.get_running_loop().create_task(self._collect())

    async def _collect(self) -> None:
        async for event in self.qmp.events:
            self.events.append((time.monotonic(), dict(event)))
            self.arrived.set()

    async def run(self, cmd: str, args: dict[str, Any] | None = None) -> Any:
        return await self.qmp.execute(cmd, args)

    async def wait(self, name: str, values: Sequence[Any] = (), *, key: str = "status",
                   within: float = 600) -> tuple[float, Any]:  # fmt: skip
        """(arrival time, value) of the first event ``name`` whose ``data[key]`` is in values."""
        deadline = time.monotonic() + within
        seen = 0
        while True:
            for at, ev in self.events[seen:]:
                value = (ev.get("data") or {}).get(key)
                if ev["event"] == name and (not values or value in values):
                    return at, value
            seen = len(self.events)
            self.arrived.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {name} {values}")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), left)

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.qmp.disconnect(), 5)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Pair:
    """How to start a source and a destination of one kind, and where they meet."""

    kind: str  # "qmp-server", "qemu-7.2" or "qemu-10.0"
    version: str
    tmp: str
    chroot: str | None = None
    started: list[Proc] = field(default_factory=list)

    def start(self, name: str, argv: Sequence[str]) -> Proc:
        if self.kind == "qmp-server":
            prefix = [sys.executable, "-m", "qmp_server", "--compat", self.version]
        elif self.kind == "qemu-10.0":
            assert self.chroot
            prefix = ["chroot", self.chroot, "qemu-system-x86_64"]
        else:
            assert QEMU
            prefix = [QEMU]
        if self.kind == "qemu-10.0":  # QMP over TCP: no path to translate into the chroot
            port = _free_port()
            proc = Proc([*prefix, *argv], f"tcp:127.0.0.1:{port},server=on,wait=off",
                        ("127.0.0.1", port))  # fmt: skip
        else:
            path = f"{self.tmp}/{name}.sock"
            proc = Proc([*prefix, *argv], f"unix:{path},server=on,wait=off", path)
        self.started.append(proc)
        return proc

    def migration_uri(self) -> str:
        """A unix socket path both processes see (inside the chroot for QEMU 10.0)."""
        name = f"qmp-bench-postcopy-{os.getpid()}-{time.monotonic_ns()}.sock"
        if self.kind == "qemu-10.0":
            assert self.chroot
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self.chroot}/tmp/{name}")
            return f"unix:/tmp/{name}"
        return f"unix:{self.tmp}/{name}"

    async def close(self) -> None:
        for proc in self.started:
            await proc.close()


def _caps(**caps: bool) -> dict[str, Any]:
    return {"capabilities": [{"capability": k.replace("_", "-"), "state": v}
                             for k, v in caps.items()]}  # fmt: skip


async def migrate_once(
    pair: Pair,
    argv: Sequence[str],
    *,
    bandwidth: int,
    postcopy_bandwidth: int,
    switch: str | None,
    src_dirty: int = 0,
    dst_dirty: int = 0,
    cap: float = 600,
) -> dict[str, Any]:
    """One migration; ``switch`` is None (precopy only), "pass2" or "active"."""
    src = pair.start("src", argv)
    dst = pair.start("dst", [*argv, "-incoming", "defer"])
    try:
        await src.connect()
        await dst.connect()
        postcopy = switch is not None
        await src.run("migrate-set-capabilities", _caps(events=True, postcopy_ram=postcopy))
        await dst.run(
            "migrate-set-capabilities",
            _caps(events=True, postcopy_ram=postcopy, postcopy_blocktime=postcopy),
        )
        params = {"max-bandwidth": bandwidth}
        if postcopy:
            params["max-postcopy-bandwidth"] = postcopy_bandwidth
        await src.run("migrate-set-parameters", params)
        if src_dirty:
            await src.run("x-set-dirty-rate", {"rate": src_dirty})
        if dst_dirty:
            await dst.run("x-set-dirty-rate", {"rate": dst_dirty})
        uri = pair.migration_uri()
        await dst.run("migrate-incoming", {"uri": uri})
        start = time.monotonic()
        await src.run("migrate", {"uri": uri})
        row: dict[str, Any] = {}
        if switch is not None:
            if switch == "pass2":  # the first full pass is done: libvirt's moment
                waiters = [asyncio.ensure_future(src.wait("MIGRATION_PASS", [2], key="pass")),
                           asyncio.ensure_future(src.wait("MIGRATION", FINAL))]  # fmt: skip
            else:
                waiters = [asyncio.ensure_future(src.wait("MIGRATION", ["active"])),
                           asyncio.ensure_future(src.wait("MIGRATION", FINAL))]  # fmt: skip
            done, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            if waiters[0] in done:
                info = await src.run("query-migrate")
                row["sync-at-switch"] = info.get("ram", {}).get("dirty-sync-count")
                row["switch-s"] = time.monotonic() - start
                await src.run("migrate-start-postcopy")
                waiters = [asyncio.ensure_future(src.wait("MIGRATION", ["postcopy-active"])),
                           asyncio.ensure_future(src.wait("MIGRATION", FINAL))]  # fmt: skip
                done, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                for task in pending:
                    task.cancel()
                if waiters[0] in done:
                    row["postcopy-active-s"] = waiters[0].result()[0] - start
        try:
            end, status = await src.wait("MIGRATION", FINAL, within=cap)
        except TimeoutError:
            info = await src.run("query-migrate")
            row.update(ram=info.get("ram", {}), converged=False, total_s=time.monotonic() - start)
            if postcopy:  # a postcopy that never ends is a bug: say where it stuck
                dinfo = await dst.run("query-migrate")
                row["status"] = f"stuck: {info['status']}/{dinfo.get('status')} after {cap:g} s"
                return row
            row["status"] = f"not converged in {cap:g} s"
            with contextlib.suppress(Exception):
                await src.run("migrate_cancel")
            return row
        row["wall-s"] = end - start
        row["converged"] = status == "completed"
        await asyncio.sleep(0.3)  # 7.2 fills total-time in just after "completed"
        info = await src.run("query-migrate")
        row.update(status=info["status"], ram=info.get("ram", {}))
        row["total-time"] = info.get("total-time")
        row["downtime"] = info.get("downtime")
        with contextlib.suppress(TimeoutError):
            await dst.wait("MIGRATION", FINAL, within=60)
        dinfo = await dst.run("query-migrate")
        row["blocktime"] = dinfo.get("postcopy-blocktime")
        row["vcpu-blocktime"] = dinfo.get("postcopy-vcpu-blocktime")
        row["dst-status"] = dinfo.get("status")
        return row
    finally:
        await pair.close()
        pair.started.clear()


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    ram = row.get("ram", {})
    out = {
        k: row.get(k)
        for k in (
            "status",
            "dst-status",
            "sync-at-switch",
            "total-time",
            "downtime",
            "blocktime",
            "vcpu-blocktime",
            "converged",
        )
    }
    out["precopy_s"] = row.get("switch-s")
    out["postcopy_active_s"] = row.get("postcopy-active-s")
    out["wall_s"] = row.get("wall-s", row.get("total_s"))
    for k in (
        "postcopy-bytes",
        "postcopy-requests",
        "precopy-bytes",
        "downtime-bytes",
        "transferred",
        "dirty-sync-count",
        "normal",
        "duplicate",
    ):
        out[k] = ram.get(k)
    if row.get("postcopy-active-s") is not None and row.get("wall-s"):
        phase = row["wall-s"] - row["postcopy-active-s"]
        out["postcopy_phase_s"] = phase
        out["postcopy_mbps"] = (ram.get("postcopy-bytes") or 0) / max(phase, 1e-6) / 1e6
    if row.get("total-time") and ram.get("transferred"):
        out["mbps"] = ram["transferred"] / row["total-time"] / 1e3
    return out


async def round_once(args: argparse.Namespace, tmp: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    random_argv = [*COMMON, "--guest-fill", "random"]
    versions = ["7.2", "10.0"]

    async def add(section: str, label: str, pair: Pair, argv: list[str], **kw: Any) -> None:
        t0 = time.monotonic()
        r = _summary(await migrate_once(pair, argv, **kw))
        r.update(section=section, label=label, kind=pair.kind, version=pair.version)
        rows.append(r)
        print(f"  {section} {label} {pair.kind} {pair.version}: {r['status']} "
              f"({time.monotonic() - t0:.0f} s)", file=sys.stderr)  # fmt: skip

    for version in versions:  # (a)
        pair = Pair("qmp-server", version, tmp)
        await add("a", "postcopy-after-precopy", pair, random_argv, bandwidth=args.bandwidth,
                  postcopy_bandwidth=args.bandwidth, switch="pass2", cap=3 * args.cap,
                  src_dirty=args.dirty_rate, dst_dirty=args.dst_dirty_rate)  # fmt: skip
        await add(
            "a",
            "precopy only",
            pair,
            random_argv,
            bandwidth=args.bandwidth,
            postcopy_bandwidth=0,
            switch=None,
            src_dirty=args.dirty_rate,
            cap=args.cap,
        )
    for version in versions:  # (b)
        pair = Pair("qmp-server", version, tmp)
        await add("b", "precopy", pair, random_argv, bandwidth=0, postcopy_bandwidth=0, switch=None)
        await add(
            "b",
            "postcopy at active",
            pair,
            random_argv,
            bandwidth=0,
            postcopy_bandwidth=0,
            switch="active",
            cap=30,
        )
    refs = [("qemu-7.2", "7.2")] if QEMU and not args.no_qemu else []
    if args.qemu10_chroot and not args.no_qemu:
        refs.append(("qemu-10.0", "10.0"))
    for kind, version in refs:  # (c)
        for label, switch in (("after precopy", "pass2"), ("at active", "active")):
            for who in (kind, "qmp-server"):
                pair = Pair(who, version, tmp, args.qemu10_chroot)
                await add(
                    "c",
                    label,
                    pair,
                    list(COMMON),
                    bandwidth=args.bandwidth,
                    postcopy_bandwidth=args.bandwidth,
                    switch=switch,
                    cap=30,
                )
    return rows


def _stuck(rows: list[dict[str, Any]]) -> str:
    """A note on runs that never ended (their figures are left out of the medians)."""
    stuck = [r["status"] for r in rows if str(r["status"]).startswith("stuck")]
    return f"  [{len(stuck)}/{len(rows)} {stuck[0]}]" if stuck else ""


def _median(rows: list[dict[str, Any]], key: str) -> Any:
    values = [r[key] for r in rows if isinstance(r.get(key), (int, float))
              and not str(r["status"]).startswith("stuck")]  # fmt: skip
    if not values:
        return None
    return statistics.median(values)


def _fmt(value: Any, unit: str = "", digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


def print_tables(result: dict[str, Any]) -> None:
    rows = result["rows"]
    n = result["rounds"]
    print(
        f"1 GiB guest; medians of {n} round(s); times from `migrate`; "
        f"MiB/s = 2**20 B/s, MB/s = 10**6 B/s"
    )
    bw = result["bandwidth"] / MiB
    print(
        f"\n(a) random guest, source dirties {result['dirty_rate'] / MiB:g} MiB/s, "
        f"destination {result['dst_dirty_rate'] / MiB:g} MiB/s, max-bandwidth and "
        f"max-postcopy-bandwidth {bw:g} MiB/s"
    )
    head = (
        f"    {'qmp-server':<11}{'mode':<25}{'precopy':>9}{'->pc-act':>9}{'total':>9}"
        f"{'downtime':>9}{'pc-bytes':>14}{'requests':>9}{'blocktime':>10}"
    )
    print(head)
    for version in ("7.2", "10.0"):
        for label in ("postcopy-after-precopy", "precopy only"):
            sel = [r for r in rows if r["section"] == "a" and r["version"] == version
                   and r["label"] == label]  # fmt: skip
            if not sel:
                continue
            if label == "precopy only" and not any(r["converged"] for r in sel):
                cap = result["cap"]
                sync = _median(sel, "dirty-sync-count")
                print(
                    f"    {version:<11}{label:<25}did not converge in {cap:g} s "
                    f"({len(sel)}/{len(sel)} runs; {_fmt(sync)} passes, "
                    f"{_fmt(_median(sel, 'transferred') / 1e9, ' GB', 2)} sent)"
                )
                continue
            print(
                f"    {version:<11}{label:<25}"
                f"{_fmt(_median(sel, 'precopy_s'), ' s', 1):>9}"
                f"{_fmt(_median(sel, 'postcopy_active_s'), ' s', 1):>9}"
                f"{_fmt(_median(sel, 'total-time'), ' ms'):>9}"
                f"{_fmt(_median(sel, 'downtime'), ' ms'):>9}"
                f"{_fmt(_median(sel, 'postcopy-bytes')):>14}"
                f"{_fmt(_median(sel, 'postcopy-requests')):>9}"
                f"{_fmt(_median(sel, 'blocktime'), ' ms'):>10}{_stuck(sel)}"
            )
    print("\n(b) random guest, idle, bandwidth unlimited: stream throughput")
    print(
        f"    {'qmp-server':<11}{'precopy MB/s':>14}{'postcopy MB/s':>15}"
        f"{'precopy total':>15}{'postcopy total':>16}"
    )
    for version in ("7.2", "10.0"):
        pre = [r for r in rows if r["section"] == "b" and r["version"] == version
               and r["label"] == "precopy"]  # fmt: skip
        post = [r for r in rows if r["section"] == "b" and r["version"] == version
                and r["label"] != "precopy"]  # fmt: skip
        if not pre:
            continue
        print(
            f"    {version:<11}{_fmt(_median(pre, 'mbps'), '', 0):>14}"
            f"{_fmt(_median(post, 'postcopy_mbps'), '', 0):>15}"
            f"{_fmt(_median(pre, 'total-time'), ' ms'):>15}"
            f"{_fmt(_median(post, 'total-time'), ' ms'):>16}{_stuck(post)}"
        )
    sel_c = [r for r in rows if r["section"] == "c"]
    if sel_c:
        print(
            f"\n(c) same command line `{' '.join(COMMON)}` (+ `-incoming defer`), idle guest, "
            f"postcopy-after-precopy, {bw:g} MiB/s"
        )
        print(
            f"    {'switch':<15}{'who':<16}{'in pc':>6}{'->pc-act':>9}{'total':>9}"
            f"{'downtime':>9}{'pc-bytes':>12}{'precopy-bytes':>14}{'requests':>9}"
        )
        for label in ("after precopy", "at active"):
            for version in ("7.2", "10.0"):
                for kind in (f"qemu-{version}", "qmp-server"):
                    sel = [r for r in sel_c if r["kind"] == kind and r["version"] == version
                           and r["label"] == label]  # fmt: skip
                    if not sel:
                        continue
                    _print_c(label, kind, version, sel)


def _print_c(label: str, kind: str, version: str, sel: list[dict[str, Any]]) -> None:
    who = f"QEMU {version}" if kind != "qmp-server" else f"qmp-server {version}"
    # how many runs reached postcopy-active (an idle guest may converge before the switch)
    switched = sum(r["postcopy_active_s"] is not None for r in sel)
    print(
        f"    {label:<15}{who:<16}{f'{switched}/{len(sel)}':>6}"
        f"{_fmt(_median(sel, 'postcopy_active_s'), ' s', 2):>9}"
        f"{_fmt(_median(sel, 'total-time'), ' ms'):>9}"
        f"{_fmt(_median(sel, 'downtime'), ' ms'):>9}"
        f"{_fmt(_median(sel, 'postcopy-bytes')):>12}"
        f"{_fmt(_median(sel, 'precopy-bytes')):>14}"
        f"{_fmt(_median(sel, 'postcopy-requests')):>9}{_stuck(sel)}"
    )


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {
        "rounds": args.rounds, "cap": args.cap, "bandwidth": args.bandwidth,
        "dirty_rate": args.dirty_rate, "dst_dirty_rate": args.dst_dirty_rate,
        "cpus": os.cpu_count(), "rows": [],
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="qmpbench-pc-") as tmp:
        for n in range(args.rounds):
            print(f"round {n + 1}/{args.rounds}", file=sys.stderr)
            result["rows"] += await round_once(args, tmp)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--no-qemu", action="store_true", help="skip real QEMU (section c)")
    parser.add_argument("--qemu10-chroot", metavar="DIR", help="QEMU 10.0 in this chroot too")
    parser.add_argument("--cap", type=float, default=60, help="precopy-only time cap, s")
    parser.add_argument("--dirty-rate", type=int, default=64 * MiB, help="source, B/s")
    parser.add_argument("--dst-dirty-rate", type=int, default=16 * MiB, help="destination, B/s")
    parser.add_argument("--bandwidth", type=int, default=32 * MiB, help="B/s, pre- and postcopy")
    args = parser.parse_args()
    os.chdir(ROOT)
    result = asyncio.run(main_async(args))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_tables(result)


if __name__ == "__main__":
    main()
