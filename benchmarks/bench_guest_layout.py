"""Same command line, same migration: QEMU and qmp-server side by side.

For each command line and ``max-bandwidth`` below, a real QEMU 7.2 (and QEMU 10.0 from a Debian
trixie chroot with ``--qemu10-chroot DIR``) and qmp-server (``--compat`` of the same version) are
started with exactly that command line, left to idle for ``--idle`` seconds, then migrated to
``exec:cat > /dev/null`` with the ``events`` capability on.  Printed per run: ``ram.total``,
``normal``, ``duplicate``, ``transferred``, ``precopy-bytes``, ``downtime-bytes``, passes and
``total-time``, QEMU's row above qmp-server's, rounds interleaved.  Nothing here asserts; the
tolerance documented for time-derived values is one rate-limit period (100 ms).

    .venv/bin/python benchmarks/bench_guest_layout.py [--rounds N] [--idle S] [--json]
        [--qemu10-chroot /srv/trixie]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient

ROOT = Path(__file__).resolve().parent.parent
QEMU = shutil.which("qemu-system-x86_64")

CASES: list[tuple[str, int]] = [
    ("-M pc -accel tcg -m 64 -nodefaults -vga none -display none", 2_000_000),
    ("-M pc -accel tcg -m 64 -nodefaults -vga none -display none", 500_000),
    ("-M pc -accel tcg -m 256 -nodefaults -vga none -display none", 2_000_000),
    ("-M q35 -accel tcg -m 128 -nodefaults -vga none -display none", 1_000_000),
    ("-M pc -accel tcg -m 64 -display none", 4_000_000),
    ("-M pc -accel tcg -m 64 -nodefaults -vga none -display none", 100_000),
]
FIELDS = ("total", "normal", "duplicate", "transferred", "precopy-bytes", "downtime-bytes")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _target(kind: str, chroot: str | None) -> tuple[list[str], bool]:
    """(command prefix, whether QMP goes over TCP)."""
    if kind == "qmp-server":
        return [str(ROOT / ".venv" / "bin" / "qmp-server")], False
    if kind == "qemu-10.0":
        assert chroot
        return ["chroot", chroot, "qemu-system-x86_64"], True
    assert QEMU
    return [QEMU], False


async def run_one(
    kind: str, version: str, argv: str, bandwidth: int, idle: float, chroot: str | None
) -> Any:
    prefix, tcp = _target(kind, chroot)
    workdir = tempfile.mkdtemp(prefix="bench-layout-")
    extra = []
    if kind == "qmp-server":
        extra = ["--compat", version]
    if tcp:
        port = _free_port()
        qmp, address = f"tcp:127.0.0.1:{port},server=on,wait=off", ("127.0.0.1", port)
    else:
        path = f"{workdir}/qmp.sock"
        qmp, address = f"unix:{path},server=on,wait=off", path  # type: ignore[assignment]
    proc = await asyncio.create_subprocess_exec(
        *prefix, *argv.split(), *extra, "-qmp", qmp,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = QMPClient(kind)
    try:
        for _ in range(200):
            try:
                await client.connect(address)
                break
            except Exception:  # not listening yet
                await asyncio.sleep(0.05)
        passes = 0

        async def count() -> None:
            nonlocal passes
            async for event in client.events:
                passes += event["event"] == "MIGRATION_PASS"

        counter = asyncio.create_task(count())
        await asyncio.sleep(idle)
        await client.execute(
            "migrate-set-capabilities",
            {"capabilities": [{"capability": "events", "state": True}]},
        )
        await client.execute("migrate-set-parameters", {"max-bandwidth": bandwidth})
        await client.execute("migrate", {"uri": "exec:cat > /dev/null"})
        deadline = time.monotonic() + 120
        info: dict[str, Any] = {}
        while time.monotonic() < deadline:
            info = dict(await client.execute("query-migrate"))  # type: ignore[call-overload]
            if info.get("status") in ("completed", "failed"):
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # 7.2 fills total-time in just after "completed"
        info = dict(await client.execute("query-migrate"))  # type: ignore[call-overload]
        counter.cancel()
        ram = info.get("ram", {})
        row = {f: ram.get(f) for f in FIELDS}
        row.update(status=info.get("status"), passes=passes, time=info.get("total-time"))
        return row
    finally:
        with contextlib.suppress(Exception):
            await client.disconnect()
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--idle", type=float, default=2.0)
    ap.add_argument("--qemu10-chroot", metavar="DIR")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    versions = ["7.2"] + (["10.0"] if args.qemu10_chroot else [])
    if QEMU is None:
        print("qemu-system-x86_64 not found: qmp-server rows only", file=sys.stderr)
    results: list[dict[str, Any]] = []
    for _ in range(args.rounds):
        for argv, bandwidth in CASES:
            for version in versions:
                kinds = ["qmp-server"] if QEMU is None else [f"qemu-{version}", "qmp-server"]
                for kind in kinds:
                    row = asyncio.run(
                        run_one(kind, version, argv, bandwidth, args.idle, args.qemu10_chroot)
                    )
                    row.update(kind=kind, version=version, argv=argv, bandwidth=bandwidth)
                    results.append(row)
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    head = f"{'who':<12}{'total':>11}{'normal':>7}{'dup':>8}{'transferred':>12}"
    head += f"{'precopy':>9}{'downtime':>9}{'pass':>5}{'ms':>7}"
    last = None
    for r in results:
        key = (r["argv"], r["bandwidth"], r["version"])
        if key != last:
            print(f"\n{r['argv']}  max-bandwidth {r['bandwidth']}  (QEMU {r['version']})")
            print(head)
            last = key
        who = "qmp-server" if r["kind"] == "qmp-server" else f"QEMU {r['version']}"
        print(
            f"{who:<12}{r['total']!s:>11}{r['normal']!s:>7}{r['duplicate']!s:>8}"
            f"{r['transferred']!s:>12}{r['precopy-bytes']!s:>9}{r['downtime-bytes']!s:>9}"
            f"{r['passes']:>5}{r['time']!s:>7}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
