"""What one ``GET /metrics`` of a fleet costs the event loop, for N idle VMs.

Builds a fleet in this process (``--fleet-size N -- -m 64M``; the VMs are built, not served),
then times the fleet collector (``collect``: one pass over the VMs, ``query-migrate`` only for
those not idle) and the text exposition (``format``) over ``--rounds`` scrapes, and prints the
median of each, the size of the text and its sample count.  ``prometheus_client``'s
``generate_latest`` over the same collector is timed too, for comparison.  Nothing asserts.

    .venv/bin/python benchmarks/bench_fleet_metrics.py [--vms 1000] [--rounds 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from prometheus_client import CollectorRegistry, generate_latest

from qmp_server.cli import parse_args
from qmp_server.fleet.cli import parse_fleet_command_line
from qmp_server.rest.fleet_metrics import exposition
from qmp_server.rest.fleet_state import FleetRest
from qmp_server.rest.policy import UriPolicy
from qmp_server.runtime.fleet import Fleet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    line = parse_fleet_command_line(["--fleet-size", str(args.vms), "--", "-m", "64M"])
    options = parse_args(list(line.process_args))
    assert options is not None
    rest = FleetRest(Fleet(line.spec, options), None, UriPolicy())
    registry = CollectorRegistry(auto_describe=False)
    registry.register(rest.collector)
    collect, fmt, reference = [], [], []
    text = b""
    for _ in range(args.rounds):
        start = time.perf_counter()
        families = list(rest.collector.collect())
        middle = time.perf_counter()
        text = exposition(families)
        end = time.perf_counter()
        generate_latest(registry)
        collect.append(middle - start)
        fmt.append(end - middle)
        reference.append(time.perf_counter() - end)
    result = {
        "vms": args.vms,
        "collect-ms": round(statistics.median(collect) * 1000, 1),
        "format-ms": round(statistics.median(fmt) * 1000, 1),
        "generate-latest-ms": round(statistics.median(reference) * 1000, 1),
        "bytes": len(text),
        "samples": sum(1 for ln in text.splitlines() if not ln.startswith(b"#")),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>20}: {value}")


if __name__ == "__main__":
    main()
