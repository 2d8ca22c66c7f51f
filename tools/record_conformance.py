#!/usr/bin/env python3
"""Record QMP conformance fixtures from a real QEMU.

    python tools/record_conformance.py [--qemu /usr/bin/qemu-system-x86_64]
        [--group NAME ...] [--out tests/conformance/fixtures/qemu-7.2]
        [--check]

Runs every scenario of ``tests/conformance/scenarios/<group>.json`` against
the real QEMU and writes ``<out>/<group>.json``.  Fixture files are never
edited by hand: change the scenario and re-record.  ``--check`` records
twice and reports any scenario whose answers differ (after masking) between
the two runs, i.e. anything nondeterministic that must not be in a scenario.
See docs/conformance.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from _recording import add_target_options, h, metadata, open_target, write_fixture


def record_group(target: Any, group: str, qemu: str, argv0: list[str]) -> dict[str, Any]:
    scenarios = h.load_scenarios(group)
    out: list[dict[str, Any]] = []
    for sc in scenarios:
        entry: dict[str, Any] = {"name": sc["name"], "argv": sc.get("argv", [])}
        for k in ("replay", "note"):
            if k in sc:
                entry[k] = sc[k]
        if sc.get("startup"):
            entry["startup"] = True
            entry["result"] = h.run_startup(target, sc)
            if "wait" in sc:
                entry["wait"] = sc["wait"]
            shown = entry["result"]
        else:
            steps = h.record_session(target, sc)
            entry["steps"] = [s.to_json() for s in steps]
            shown = f"{sum(len(s.lines) for s in steps)} lines in {len(steps)} steps"
        print(f"  {group}/{sc['name']}: {shown}", file=sys.stderr)
        out.append(entry)
    return {
        "metadata": {
            "group": group,
            **metadata(target, qemu, argv0, "unix:<sock>"),
            "settle_default": h.DEFAULT_SETTLE,
            "line_format": "lines are exact reply lines without the terminator; "
            "crlf=true means every line ended with \\r\\n (else see eols)",
        },
        "scenarios": out,
    }


def _masked(entry: dict[str, Any]) -> Any:
    if entry.get("startup"):
        return entry["result"]
    return [[h.mask_line(ln) for ln in s["lines"]] for s in entry["steps"]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--group", action="append", help="scenario group to record (repeatable; default: all)"
    )
    add_target_options(ap)
    ap.add_argument(
        "--check",
        action="store_true",
        help="record twice and report differences instead of writing",
    )
    args = ap.parse_args(argv)

    opened = open_target(args)
    if opened is None:
        return 2
    target, version = opened
    groups = args.group or h.scenario_groups(version)
    outdir = Path(args.out or (h.FIXTURE_DIR_100 if args.chroot else h.FIXTURE_DIR))
    cmdline = [
        "python",
        "tools/record_conformance.py",
        *(argv if argv is not None else sys.argv[1:]),
    ]
    rc = 0
    for group in groups:
        print(f"recording {group} with {args.qemu}", file=sys.stderr)
        data = record_group(target, group, args.qemu, cmdline)
        if args.check:
            again = record_group(target, group, args.qemu, cmdline)
            for a, b in zip(data["scenarios"], again["scenarios"], strict=True):
                if _masked(a) != _masked(b):
                    rc = 1
                    print(f"UNSTABLE: {group}/{a['name']}", file=sys.stderr)
            continue
        path = outdir / f"{group}.json"
        write_fixture(path, data)
        print(f"wrote {path} ({len(data['scenarios'])} scenarios)", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
