"""XBZRLE against plain precopy on a guest that keeps rewriting a few bytes of the same pages.

A guest that dirties pages faster than ``max-bandwidth`` carries them never converges in plain
precopy: every pass re-sends whole pages.  With ``xbzrle`` a re-sent page costs its delta (a
few dozen bytes for a 64-byte write), so the same bandwidth catches up.  The workload is
qmp-server's model (``--dirty-rate``, ``--dirty-write-bytes``, ``--dirty-working-set``): a real
QEMU's SeaBIOS guest writes almost nothing, so there is no QEMU row here; the QEMU comparison
of XBZRLE's counters on an idle guest is the live ``xbzrle`` two-party recording
(``tests/conformance/two_party``), where the cache misses and bytes are QEMU's own.

Printed per run: converged or not within ``--cap`` seconds, the time, ``transferred``, passes,
and the ``xbzrle-cache`` counters; the two modes alternate, ``--rounds`` times.

    .venv/bin/python benchmarks/bench_xbzrle.py [--rounds N] [--cap S] [--compat 7.2] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_migration import Proc, qmp_server_argv

MiB = 1 << 20
WORKLOAD = ("--dirty-rate", "8M", "--dirty-write-bytes", "64", "--dirty-working-set", "16M")


async def one_run(tmp: str, compat: str, xbzrle: bool, cap: float) -> dict[str, Any]:
    common = ["--compat", compat, "-machine", "pc", "-m", "256", "-nodefaults"]
    src = Proc(qmp_server_argv(*common, *WORKLOAD), f"{tmp}/src.sock")
    dst = Proc(qmp_server_argv(*common, "-incoming", "defer"), f"{tmp}/dst.sock")
    try:
        await src.connect()
        await dst.connect()
        caps = [{"capability": "xbzrle", "state": xbzrle}]
        await src.run("migrate-set-capabilities", {"capabilities": caps})
        await src.run("migrate-set-parameters", {"max-bandwidth": 4 * MiB})
        uri = f"unix:{tmp}/mig.sock"
        await dst.run("migrate-incoming", {"uri": uri})
        start = time.monotonic()
        await src.run("migrate", {"uri": uri})
        info: dict[str, Any] = {}
        while time.monotonic() - start < cap:
            info = await src.run("query-migrate")
            if info["status"] in ("completed", "failed"):
                break
            await asyncio.sleep(0.2)
        elapsed = time.monotonic() - start
        converged = info.get("status") == "completed"
        if converged:
            a, b = await src.run("x-query-guest-digest"), await dst.run("x-query-guest-digest")
            if a["ram"] != b["ram"]:
                raise RuntimeError("digests differ after migration")
        ram = info.get("ram", {})
        return {
            "xbzrle": xbzrle,
            "converged": converged,
            "seconds": round(elapsed, 2),
            "transferred": ram.get("transferred"),
            "passes": ram.get("dirty-sync-count"),
            "downtime_ms": info.get("downtime"),
            "xbzrle_cache": info.get("xbzrle-cache"),
        }
    finally:
        await src.close()
        await dst.close()


def print_table(runs: list[dict[str, Any]], cap: float) -> None:
    print(f"{'mode':<9} {'result':<22} {'time s':>7} {'transferred':>13} {'passes':>6} "
          f"{'xbzrle pages':>12} {'bytes':>9} {'miss':>6} {'enc rate':>8}")  # fmt: skip
    for r in runs:
        result = "completed" if r["converged"] else f"did not converge in {cap:g} s"
        cache = r["xbzrle_cache"] or {}
        print(
            f"{'xbzrle' if r['xbzrle'] else 'precopy':<9} {result:<22} {r['seconds']:>7} "
            f"{r['transferred'] or 0:>13,} {r['passes'] or 0:>6} "
            f"{cache.get('pages', '-'):>12} {cache.get('bytes', '-'):>9} "
            f"{cache.get('cache-miss', '-'):>6} {cache.get('encoding-rate', 0):>8.1f}"
        )


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    runs = []
    for _ in range(args.rounds):
        for mode in (False, True):
            with tempfile.TemporaryDirectory(prefix="bxb-") as tmp:
                runs.append(await one_run(tmp, args.compat, mode, args.cap))
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--cap", type=float, default=30.0, help="seconds before giving up")
    ap.add_argument("--compat", default="7.2")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    runs = asyncio.run(main_async(args))
    if args.json:
        print(json.dumps(runs, indent=1))
    else:
        print("256 MiB guest, 8 MiB/s of 64-byte writes within 16 MiB, max-bandwidth 4 MiB/s, "
              f"--compat {args.compat}")  # fmt: skip
        print_table(runs, args.cap)


if __name__ == "__main__":
    main()
