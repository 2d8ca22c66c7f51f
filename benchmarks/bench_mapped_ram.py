"""mapped-ram benchmark: save a guest to a file and restore it, qmp-server against QEMU 10.0.

Three cases, each a save (``migrate file:``) then a restore (``migrate-incoming file:`` into a
fresh ``-incoming defer`` process) of the same 1 GiB guest of random content (``--size``):

* ``plain``: a ``file:`` migration without ``mapped-ram`` (the stream, the reference);
* ``mapped-ram``: pages at fixed offsets of the file, written by one thread;
* ``mapped-ram+multifd``: the same with ``multifd``, ``multifd-channels`` 2 (``--channels``).

qmp-server runs ``--compat 10.0``; QEMU 10.0 runs from a Debian trixie chroot
(``--qemu10-chroot``, default /srv/trixie, QMP over TCP as in ``bench_postcopy.py``), both with
``-machine pc -accel tcg -m 1G -nodefaults -display none -S`` and events on both sides,
``max-bandwidth`` 100 GB/s on the source.  Rounds interleave every case and both emulators so
that all see the same load.

How QEMU gets the same RAM content (as in ``bench_multifd.py``): the source's RAM is a
``memory-backend-file`` (``share=on``) on qmp-server's own baseline for ``--guest-fill random``
and seed 1 (``tools/dump_guest_fill.py``), while qmp-server runs ``--guest-fill random`` with
that seed; both save the very same bytes.  The baseline lives in the chroot's ``/dev/shm``
(the host's /dev/shm is a tmpfs mounted over the devtmpfs that the chroot's /dev binds, so it
is not visible there; the chroot's /dev/shm is RAM all the same); it is generated once per
run and removed at exit (``--keep-baseline`` to keep it).  The guest is **stopped** (``-S``,
both sides): nothing dirties, only the save is measured.  QEMU's destination RAM is
``memory-backend-ram,prealloc=on`` (allocated before the clock starts, as in
``bench_multifd.py``); qmp-server's destination is ``--guest-fill random`` too, and its RAM
digest (``x-query-guest-digest``) after the restore must equal the source's.

Figures:

* save: ``total-time`` from the source's ``query-migrate`` after ``completed``;
* restore: wall clock from ``migrate-incoming`` to the destination's ``MIGRATION completed``
  event (the capabilities and ``multifd-channels`` are set before, not timed);
* the CPU time (user + system, all threads, from /proc) the source spent saving and the
  destination restoring (medians);
* the file's apparent size (``st_size``) and allocated size (``st_blocks * 512``): the plain
  stream holds every page back to back, mapped-ram leaves 1 MiB-aligned holes.

The files are on the real disk (a temporary directory under the chroot's /var/tmp, seen by
qmp-server from outside and by QEMU from inside; ``--dir`` for another), one at a time,
removed after each restore.  Nothing is dropped from the page cache: the restore reads what
the save just wrote, mostly from the cache (with the disk's writeback of the save possibly
still running), as a save followed at once by a restore does on any host.

Why ``--settle`` (3 s by default, before each save and each restore, after the process is
up and configured, not timed; the save's is preceded by a ``sync`` of the previous rounds'
writes, which drops nothing from the cache): on the development VM (Firecracker, a
``virtio_balloon`` with free page reporting) memory the kernel freed a moment ago (the
previous round's page cache, removed with its file) is handed back to the host after about
2 s, and touching it again costs a fault in the host: the same save took 0.6 s or 2.8 s of
mostly system time depending on how soon it followed the previous one (QEMU's as much as
qmp-server's).  QEMU starts in a few tens of ms, qmp-server (a Python process) in about a
second, so without a pause QEMU would more often reuse the freed memory: the pause puts both
in the same state.  ``--settle 0`` to see it.

The ratio printed is QEMU's median time over qmp-server's: > 1 means qmp-server is faster.

    .venv/bin/python benchmarks/bench_mapped_ram.py [--rounds N] [--channels N] [--size 1G]
        [--qemu10-chroot /srv/trixie] [--no-qemu] [--dir DIR] [--keep-baseline] [--settle S]
        [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_migration import cpu_seconds
from bench_multifd import SEED
from bench_postcopy import FINAL, Pair, Proc

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("qmp-server", "qemu-10.0")
#: seconds a save or a restore may take before the run is given up
TIMEOUT = 300
#: every process started, so that none outlives the benchmark whatever happens
STARTED: list[Proc] = []


def _kill_all() -> None:
    for proc in STARTED:
        if proc.proc.poll() is None:
            proc.proc.kill()
            with contextlib.suppress(Exception):
                proc.proc.wait(5)


def baseline_file(directory: str, size: str) -> str:
    """qmp-server's ``random`` baseline (seed 1) as a file in ``directory``."""
    path = f"{directory}/qmp-bench-mapped-ram-random-{size}-{SEED}"
    if not os.path.exists(path):
        subprocess.run(
            [sys.executable, str(ROOT / "tools" / "dump_guest_fill.py"), "--fill", "random",
             "--size", size, "--seed", str(SEED), path + ".tmp"],
            check=True, stdout=sys.stderr,
        )  # fmt: skip
        os.replace(path + ".tmp", path)
    return path


def cases(channels: int) -> list[tuple[str, dict[str, bool], dict[str, Any]]]:
    """(name, capabilities, parameters) of each case, the same on both sides."""
    return [
        ("plain", {"events": True}, {}),
        ("mapped-ram", {"events": True, "mapped-ram": True}, {}),
        (f"mapped-ram+multifd {channels}", {"events": True, "mapped-ram": True, "multifd": True},
         {"multifd-channels": channels}),
    ]  # fmt: skip


class Setup:
    """What a run needs to start either emulator and to name its file for both."""

    def __init__(self, args: argparse.Namespace, sockets: str, data: str, shm: str) -> None:
        self.args = args
        self.sockets = sockets
        self.data = data  # the files' directory, as seen from here
        self.shm = shm  # the baseline's directory, as seen from here
        self.chroot = args.qemu10_chroot

    def inside(self, path: str) -> str:
        """``path`` as QEMU in the chroot sees it."""
        assert path.startswith(self.chroot + "/"), path
        return path[len(self.chroot) :]

    def argv(self, kind: str, role: str) -> list[str]:
        size = self.args.size
        common = ["-accel", "tcg", "-m", size, "-nodefaults", "-display", "none", "-S"]
        if kind == "qmp-server":
            argv = ["-machine", "pc", *common, "--guest-fill", "random"]
        elif role == "src":
            path = self.inside(baseline_file(self.shm, size))
            ram = f"memory-backend-file,id=ram,size={size},mem-path={path},share=on"
            argv = ["-machine", "pc,memory-backend=ram", *common, "-object", ram]
        else:
            ram = f"memory-backend-ram,id=ram,size={size},prealloc=on"
            argv = ["-machine", "pc,memory-backend=ram", *common, "-object", ram]
        return [*argv, "-incoming", "defer"] if role == "dst" else argv

    def start(self, kind: str, role: str) -> tuple[Pair, Proc]:
        pair = Pair(kind, "10.0", self.sockets, self.chroot)
        proc = pair.start(f"{kind}-{role}", self.argv(kind, role))
        STARTED.append(proc)
        return pair, proc


async def _configure(proc: Proc, caps: dict[str, bool], params: dict[str, Any]) -> None:
    capabilities = [{"capability": k, "state": v} for k, v in caps.items()]
    await proc.run("migrate-set-capabilities", {"capabilities": capabilities})
    if params:
        await proc.run("migrate-set-parameters", params)


async def run_case(
    setup: Setup, kind: str, name: str, caps: dict[str, bool], params: dict[str, Any]
) -> dict[str, Any]:
    """One save and one restore of ``kind``: their times and the file's sizes."""
    path = f"{setup.data}/{kind}-{name.replace(' ', '-').replace('+', '-')}.img"
    uri = f"file:{path if kind == 'qmp-server' else setup.inside(path)}"
    row: dict[str, Any] = {}
    pair, src = setup.start(kind, "src")
    try:
        await src.connect()
        await _configure(src, caps, {**params, "max-bandwidth": 100_000_000_000})
        os.sync()
        await asyncio.sleep(setup.args.settle)
        cpu = cpu_seconds(src.proc.pid)
        start = time.monotonic()
        await src.run("migrate", {"uri": uri})
        _, status = await src.wait("MIGRATION", FINAL, within=TIMEOUT)
        row["save-wall-ms"] = (time.monotonic() - start) * 1000
        row["save-cpu-s"] = cpu_seconds(src.proc.pid) - cpu
        info: dict[str, Any] = {}
        for _ in range(100):  # QEMU may fill total-time in just after the event
            info = await src.run("query-migrate")
            if info.get("total-time") or status != "completed":
                break
            await asyncio.sleep(0.01)
        if status != "completed":
            raise RuntimeError(f"{kind} {name}: save ended {status}: {info}")
        row["save-ms"] = info["total-time"]
        st = os.stat(path)
        row["apparent"] = st.st_size
        row["allocated"] = st.st_blocks * 512
        if kind == "qmp-server":
            row["digest"] = await src.run("x-query-guest-digest")
    finally:
        await pair.close()
    pair, dst = setup.start(kind, "dst")
    try:
        await dst.connect()
        await _configure(dst, caps, params)
        await asyncio.sleep(setup.args.settle)
        cpu = cpu_seconds(dst.proc.pid)
        start = time.monotonic()
        await dst.run("migrate-incoming", {"uri": uri})
        end, status = await dst.wait("MIGRATION", FINAL, within=TIMEOUT)
        row["restore-ms"] = (end - start) * 1000
        row["restore-cpu-s"] = cpu_seconds(dst.proc.pid) - cpu
        if status != "completed":
            err = ""
            if dst.proc.poll() is not None and dst.proc.stderr:
                err = dst.proc.stderr.read().decode()
            raise RuntimeError(f"{kind} {name}: restore ended {status} {err}")
        row["dst-status"] = (await dst.run("query-status"))["status"]
        if kind == "qmp-server" and await dst.run("x-query-guest-digest") != row.pop("digest"):
            raise RuntimeError(f"{kind} {name}: RAM digests differ after the restore")
    finally:
        await pair.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return row


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 1), "min": round(min(values), 1),
            "max": round(max(values), 1)}  # fmt: skip


def summarize(runs: dict[tuple[str, str], list[dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for (name, kind), rows in runs.items():
        entry = out.setdefault(name, {})
        entry[kind] = {
            "save-ms": _stats([r["save-ms"] for r in rows]),
            "restore-ms": _stats([r["restore-ms"] for r in rows]),
            "save-rounds-ms": [r["save-ms"] for r in rows],
            "restore-rounds-ms": [round(r["restore-ms"]) for r in rows],
            "save-cpu-s": round(statistics.median(r["save-cpu-s"] for r in rows), 2),
            "restore-cpu-s": round(statistics.median(r["restore-cpu-s"] for r in rows), 2),
            "apparent": rows[0]["apparent"],
            "allocated": statistics.median(r["allocated"] for r in rows),
            "dst-status": rows[0]["dst-status"],
        }
    for entry in out.values():
        ours, theirs = entry.get("qmp-server"), entry.get("qemu-10.0")
        if ours and theirs:
            entry["ratio"] = {
                phase: round(theirs[phase]["median"] / max(ours[phase]["median"], 1e-9), 2)
                for phase in ("save-ms", "restore-ms")
            }
    return out


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    kinds = [k for k in KINDS if k == "qmp-server" or not args.no_qemu]
    where = args.dir or (f"{args.qemu10_chroot}/var/tmp" if "qemu-10.0" in kinds else "/var/tmp")
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    load = os.getloadavg()
    with contextlib.ExitStack() as stack:
        sockets = stack.enter_context(tempfile.TemporaryDirectory(prefix="qmpbench-mr-"))
        data = stack.enter_context(tempfile.TemporaryDirectory(prefix="qmpbench-mr-", dir=where))
        shm = f"{args.qemu10_chroot}/dev/shm"
        if "qemu-10.0" in kinds:
            if not data.startswith(args.qemu10_chroot + "/"):
                raise SystemExit(f"--dir must be inside {args.qemu10_chroot} for QEMU 10.0")
            path = baseline_file(shm, args.size)
            if not args.keep_baseline:
                stack.callback(os.unlink, path)
        setup = Setup(args, sockets, data, shm)
        for n in range(args.rounds):
            for name, caps, params in cases(args.channels):
                for kind in kinds:
                    t0 = time.monotonic()
                    row = await run_case(setup, kind, name, caps, params)
                    runs.setdefault((name, kind), []).append(row)
                    print(f"round {n + 1}/{args.rounds} {name:<22} {kind:<10}: save "
                          f"{row['save-ms']:>5} ms, restore {row['restore-ms']:>6.0f} ms "
                          f"({time.monotonic() - t0:.1f} s)", file=sys.stderr)  # fmt: skip
    return {
        "size": args.size,
        "rounds": args.rounds,
        "channels": args.channels,
        "directory": where,
        "load-before": load,
        "cases": summarize(runs),
    }


def _mib(n: float) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def print_table(result: dict[str, Any]) -> None:
    print(f"{result['size']} guest, random content, stopped; {result['rounds']} round(s); "
          f"files in {result['directory']}; page cache not dropped")  # fmt: skip
    print("save = source total-time; restore = migrate-incoming to MIGRATION completed (wall);"
          " ratio = QEMU / qmp-server (> 1: qmp-server faster)")  # fmt: skip
    for name, entry in result["cases"].items():
        print(f"\n{name}")
        print(f"    {'':<9}{'qmp-server median (min-max)':>30}{'QEMU 10.0 median (min-max)':>30}"
              f"{'ratio':>7}")  # fmt: skip
        for phase, label in (("save-ms", "save"), ("restore-ms", "restore")):
            cells = []
            for kind in KINDS:
                s = entry.get(kind, {}).get(phase)
                cells.append(f"{s['median']:.0f} ms ({s['min']:.0f}-{s['max']:.0f})" if s else "-")
            ratio = entry.get("ratio", {}).get(phase)
            print(f"    {label:<9}{cells[0]:>30}{cells[1]:>30}"
                  f"{f'{ratio:.2f}' if ratio else '-':>7}")  # fmt: skip
        for key, label in (("save-cpu-s", "save CPU"), ("restore-cpu-s", "rest. CPU")):
            cells = [f"{entry[k][key]:.2f} s" if k in entry else "-" for k in KINDS]
            print(f"    {label:<9}{cells[0]:>30}{cells[1]:>30}")
        for key in ("apparent", "allocated"):
            cells = [_mib(entry[k][key]) if k in entry else "-" for k in KINDS]
            print(f"    {key:<9}{cells[0]:>30}{cells[1]:>30}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--channels", type=int, default=2)
    ap.add_argument("--size", default="1G")
    ap.add_argument("--qemu10-chroot", default="/srv/trixie", metavar="DIR")
    ap.add_argument("--no-qemu", action="store_true")
    ap.add_argument("--dir", help="where the files go (inside the chroot for QEMU)")
    ap.add_argument(
        "--keep-baseline",
        action="store_true",
        help="keep QEMU's RAM file in the chroot's /dev/shm for the next run",
    )
    ap.add_argument(
        "--settle",
        type=float,
        default=3.0,
        help="seconds of quiet before each save and restore (see the docstring)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    args.qemu10_chroot = args.qemu10_chroot.rstrip("/")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.chdir(ROOT)

    async def guarded() -> dict[str, Any]:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, task.cancel)
        return await bench(args)

    try:
        result = asyncio.run(guarded())
    except (asyncio.CancelledError, KeyboardInterrupt):
        print("interrupted: processes stopped, files removed", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        _kill_all()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)


if __name__ == "__main__":
    main()
