"""Soak: run the hardening load test N times in a row and print the figures of each round.

    .venv/bin/python benchmarks/soak.py --rounds 5

Each round is ``tests/hardening/test_load.py`` (16 pipelining monitors, REST poller, two SSE
subscribers, a never-reading client, a migration between two processes), bounded in time like
every test.  A round that fails stops the soak with its exit status.  Figures, not speeds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ROOT / "artifacts" / "reliability-figures.json"
KEY = "test_load::during_migration"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    totals = {"qmp_requests_answered": 0, "rest_requests": 0, "sse_events": 0}
    for n in range(1, args.rounds + 1):
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             "tests/hardening/test_load.py"],
            cwd=ROOT, timeout=600, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            print(f"round {n}: FAILED ({proc.returncode})")
            return proc.returncode
        fig = json.loads(FIGURES.read_text())[KEY]
        for key in totals:
            totals[key] += int(fig[key])
        print(f"round {n}: {json.dumps(fig, sort_keys=True)}")
    print(f"{args.rounds} rounds: {json.dumps(totals, sort_keys=True)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
