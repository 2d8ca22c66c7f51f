"""benchmarks/bench_fleet.py runs end to end at tiny scale, so it cannot rot.

Only the report's shape is checked: tests never assert on times.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_fleet.py"


def test_bench_fleet_tiny() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--count", "4", "--migrations", "1", "--memory", "64M",
         "--singles", "2", "--idle-seconds", "0.3", "--settle", "0.2"],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for row in ("all monitors greeting (s)", "total RSS (GiB)", "total PSS (GiB)",
                "fleet, no migration", "fleet, 1 migrations", "asyncio floor"):  # fmt: skip
        assert row in out, out
    # the migration really happened: the source completed, the destination runs
    assert "source->destination status: completed->running" in out, out
