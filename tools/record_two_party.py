#!/usr/bin/env python3
"""Record two-party (source + destination) migration transcripts from a real QEMU.

    python tools/record_two_party.py [--qemu /usr/bin/qemu-system-x86_64]
        [--scenario NAME ...] [--out tests/conformance/two_party/fixtures/qemu-7.2]
        [--check]

Runs every scenario of ``tests/conformance/two_party/scenarios/<name>.json``
against two real QEMU processes and writes ``<out>/<name>.json`` with the raw
per-side transcript and its normalised view.  Fixtures are never edited by
hand.  ``--check`` records every scenario twice and reports any whose
normalised views differ between the two runs (i.e. anything the normaliser
does not absorb) and, for ``exact_counters`` scenarios, prints every member of
the source's final query-migrate that differed and fails on what the exact
comparison would not accept; it writes nothing.  A control step that times out while
recording is an error.  See docs/conformance.md ("Two-party migration
transcripts").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from _recording import add_target_options, metadata, open_target, write_fixture
from conformance.two_party import _tp_harness as tp


def record(target: Any, name: str, qemu: str, argv0: list[str]) -> dict[str, Any]:
    sc = tp.load_scenario(name)
    run = tp.run_scenario(target, sc, strict=True)
    v = tp.view(run, sc)
    return {
        "metadata": {
            "scenario": name,
            **metadata(target, qemu, argv0, "unix:<TMP>/<side>.qmp"),
        },
        "scenario": sc,
        "run": run,
        "view": v,
    }


def _counter_check(first: dict[str, Any], again: dict[str, Any], version: str) -> str:
    """For an exact_counters scenario: print how the source's final query-migrate differed
    between the two recordings; return what breaks the exact comparison ("" if nothing)."""
    a, b = (tp.final_query_migrate(x["run"]) or {} for x in (first, again))
    for path, x, y in tp.counter_differences(a, b):
        print(f"    {path}: {x!r} / {y!r}", file=sys.stderr)
    spread = tp.counter_spread(first["scenario"], version)
    bad = tp.exact_counter_diffs(first["run"], again["run"], spread, "second recording")
    return "\n\nexact counters:\n" + "\n".join(bad) if bad else ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", action="append", help="scenario to record (repeatable)")
    add_target_options(ap)
    ap.add_argument("--check", action="store_true", help="record twice, compare, write nothing")
    args = ap.parse_args(argv)
    opened = open_target(args)
    if opened is None:
        return 2
    target, version = opened
    names = args.scenario or [
        n for n in tp.scenario_names() if version in tp.load_scenario(n).get("qemu", [version])
    ]
    outdir = Path(args.out or (tp.FIXTURE_DIR_100 if args.chroot else tp.FIXTURE_DIR))
    cmdline = ["python", "tools/record_two_party.py", *(argv if argv is not None else sys.argv[1:])]
    rc = 0
    for name in names:
        data = record(target, name, args.qemu, cmdline)
        print(
            f"  {name}: " + ", ".join(f"{k} {len(v)}" for k, v in data["view"].items()),
            file=sys.stderr,
        )
        if args.check:
            again = record(target, name, args.qemu, cmdline)
            diff = tp.diff_views(data["view"], again["view"], "second recording")
            if data["scenario"].get("exact_counters"):
                diff += _counter_check(data, again, version)
            if diff:
                rc = 1
                print(f"UNSTABLE: {name}\n{diff}", file=sys.stderr)
            else:
                print(f"  {name}: stable", file=sys.stderr)
            continue
        path = outdir / f"{name}.json"
        write_fixture(path, data)
        print(f"wrote {path}", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
