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
does not absorb); it writes nothing.  A control step that times out while
recording is an error.  See docs/conformance.md ("Two-party migration
transcripts").
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

RECORDER_VERSION = "1.0"

_REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_REPO / "tests"))

from conformance import _harness as h  # noqa: E402
from conformance.two_party import _tp_harness as tp  # noqa: E402


def record(target: Any, name: str, qemu: str, argv0: list[str]) -> dict[str, Any]:
    sc = tp.load_scenario(name)
    run = tp.run_scenario(target, sc, strict=True)
    v = tp.view(run, sc)
    return {
        "metadata": {
            "scenario": name,
            "qemu_version": h.qemu_version_line(qemu, target),
            "qemu_binary": qemu,
            "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "command": shlex.join(argv0),
            "qemu_command": shlex.join(
                [
                    *target.prefix,
                    "<argv>",
                    "-qmp",
                    ("tcp:127.0.0.1:<port>" if target.qmp_tcp else "unix:<TMP>/<side>.qmp")
                    + ",server=on,wait=off",
                ]
            ),
            "recorder_version": RECORDER_VERSION,
            "host": {"kernel": platform.release(), "machine": platform.machine()},
        },
        "scenario": sc,
        "run": run,
        "view": v,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--qemu", default=shutil.which("qemu-system-x86_64") or "/usr/bin/qemu-system-x86_64"
    )
    ap.add_argument("--scenario", action="append", help="scenario to record (repeatable)")
    ap.add_argument(
        "--chroot",
        metavar="DIR",
        help="run the QEMU installed in chroot DIR (e.g. QEMU 10.0 in Debian trixie, "
        "/proc and /dev bind-mounted), QMP over tcp:127.0.0.1; the default --out "
        "becomes the qemu-10.0 fixture directory",
    )
    ap.add_argument("--out", default=None)
    ap.add_argument("--check", action="store_true", help="record twice, compare, write nothing")
    args = ap.parse_args(argv)
    if args.chroot:
        target = h.chroot_target(args.chroot)
        args.qemu = f"{args.chroot}:/usr/bin/qemu-system-x86_64"
        why = h.target_available(target)
        if why:
            print(f"cannot run QEMU in {args.chroot}: {why}", file=sys.stderr)
            return 2
    else:
        if not os.path.exists(args.qemu):
            print(f"QEMU binary not found: {args.qemu}", file=sys.stderr)
            return 2
        target = h.qemu_target(args.qemu)
    version = "10.0" if args.chroot else "7.2"
    names = args.scenario or [
        n for n in tp.scenario_names() if version in tp.load_scenario(n).get("qemu", [version])
    ]
    outdir = Path(args.out or (tp.FIXTURE_DIR_100 if args.chroot else tp.FIXTURE_DIR))
    outdir.mkdir(parents=True, exist_ok=True)
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
            if diff:
                rc = 1
                print(f"UNSTABLE: {name}\n{diff}", file=sys.stderr)
            else:
                print(f"  {name}: stable", file=sys.stderr)
            continue
        path = outdir / f"{name}.json"
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, ensure_ascii=True)
            f.write("\n")
        print(f"wrote {path}", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
