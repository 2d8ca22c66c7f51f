#!/usr/bin/env python3
"""Record what a real QEMU answers to ``query-migrationthreads`` around a migration.

    python tools/record_migration_threads.py                          # QEMU 7.2
    python tools/record_migration_threads.py --chroot /srv/trixie     # QEMU 10.0
        [--out tests/runtime/fixtures/migration_threads/qemu-<v>.json]

Thread ids differ on every run, so besides the raw replies the fixture says, for every
reply, whether each ``thread-id`` was a task of that QEMU process (``/proc/PID/task``) and
what that task's name (``comm``) was. The tests compare names, order and presence, never the
numbers. Cases: plain precopy, multifd with 2 and 4 channels (queried before, while active on
both sides, after completion), a cancel and a failure (the destination killed) while active.
The bandwidth is kept low while querying and raised to let the migration complete. Fixtures
are never edited by hand: re-run this script.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _recording import REPO, add_target_options, metadata, open_target, write_fixture
from conformance import _harness as h
from conformance.two_party import _tp_harness as tp

FIXTURE_DIR = REPO / "tests" / "runtime" / "fixtures" / "migration_threads"
GUEST_ARGV = ["-machine", "pc", "-accel", "tcg", "-m", "1024", "-nodefaults", "-display", "none"]
#: bytes/s while querying: slow enough that the migration is still active several queries later
SLOW = 1_000_000
FAST = 10_000_000_000
TIMEOUT = 60.0


def _cmd(
    side: tp.Side, execute: str, arguments: dict[str, Any] | None = None, errors: bool = False
) -> Any:
    """The ``return`` of one command; its whole reply (error included) with ``errors``."""
    msg: dict[str, Any] = {"execute": execute}
    if arguments is not None:
        msg["arguments"] = arguments
    entry = side.command(json.dumps(msg), 0, TIMEOUT)
    if entry is None:
        raise tp.StepFailed(f"{side.name}: no reply to {execute}")
    obj = json.loads(entry["line"])
    if errors:
        return obj
    if "error" in obj:
        raise tp.StepFailed(f"{side.name}: {execute}: {obj['error']}")
    return obj["return"]


def _status(side: tp.Side) -> str:
    return str(_cmd(side, "query-migrate").get("status", "none"))


def _wait_status(side: tp.Side, wanted: tuple[str, ...]) -> str:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        st = _status(side)
        if st in wanted:
            return st
        time.sleep(0.05)
    raise tp.StepFailed(f"{side.name}: status never became one of {wanted}")


def _comm(pid: int, tid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
    except OSError:
        return None


def _threads(side: tp.Side, phase: str) -> dict[str, Any]:
    """One query-migrationthreads, with the status around it and a check of every thread-id."""
    pid = side.proc.proc.pid
    before = _status(side)
    answer = _cmd(side, "query-migrationthreads", errors=True)
    after = _status(side)
    reply = answer.get("return", [])
    tasks = [
        {"thread-id": t["thread-id"], "comm": _comm(pid, t["thread-id"])}
        for t in reply
        if isinstance(t, dict) and "thread-id" in t
    ]
    return {
        "phase": phase,
        "side": side.name,
        "status_before": before,
        "status_after": after,
        "reply": answer,
        "names": [t.get("name") for t in reply],
        "in_proc_task": [t["comm"] is not None for t in tasks],
        "comm": [t["comm"] for t in tasks],
        "pid_is_tid": [t["thread-id"] == pid for t in tasks],
    }


def _all_comms(side: tp.Side) -> list[str]:
    """The names of every task of the process (what exists besides the listed threads)."""
    pid = side.proc.proc.pid
    out = []
    for tid in sorted(int(t) for t in os.listdir(f"/proc/{pid}/task")):
        c = _comm(pid, tid)
        if c is not None:
            out.append(c)
    return out


def run_case(target: h.Target, name: str, channels: int, end: str) -> dict[str, Any]:
    """One migration: ``channels`` 0 is plain precopy; ``end`` is complete, cancel or fail."""
    host_tmp = tempfile.mkdtemp(prefix="qmpthr-", dir=target.host_tmp())
    tmp = target.inside(host_tmp)
    sides: dict[str, tp.Side] = {}
    queries: list[dict[str, Any]] = []
    tasks: dict[str, list[str]] = {}
    dst_alive = False
    try:
        # debug-threads=on names QEMU's threads in /proc (comm), which the fixture records
        argv = [*GUEST_ARGV, "-name", "guest,debug-threads=on"]
        sides["src"] = tp._start_side(target, "src", argv, host_tmp)
        sides["dst"] = tp._start_side(target, "dst", [*argv, "-incoming", "defer"], host_tmp)
        src, dst = sides["src"], sides["dst"]
        for s in (src, dst):
            _cmd(s, "qmp_capabilities")
            if channels:
                _cmd(
                    s,
                    "migrate-set-capabilities",
                    {"capabilities": [{"capability": "multifd", "state": True}]},
                )
                _cmd(s, "migrate-set-parameters", {"multifd-channels": channels})
        _cmd(src, "migrate-set-parameters", {"max-bandwidth": SLOW})
        queries.append(_threads(src, "before"))
        queries.append(_threads(dst, "before"))
        uri = f"unix:{tmp}/mig.sock"
        _cmd(dst, "migrate-incoming", {"uri": uri})
        queries.append(_threads(dst, "listening"))
        _cmd(src, "migrate", {"uri": uri})
        _wait_status(src, ("active",))
        time.sleep(0.5)
        queries.append(_threads(src, "active"))
        queries.append(_threads(dst, "active"))
        tasks["src-active"] = _all_comms(src)
        tasks["dst-active"] = _all_comms(dst)
        if end == "complete":
            _cmd(src, "migrate-set-parameters", {"max-bandwidth": FAST})
            _wait_status(src, ("completed",))
            _wait_status(dst, ("completed",))
        elif end == "cancel":
            _cmd(src, "migrate_cancel")
            _wait_status(src, ("cancelled",))
        else:
            os.kill(dst.proc.proc.pid, signal.SIGKILL)
            _wait_status(src, ("failed",))
        time.sleep(0.5)
        queries.append(_threads(src, "after-" + end))
        tasks["src-after"] = _all_comms(src)
        # the destination of a cancelled migration exits (exit-on-error) or stays up
        time.sleep(0.5)
        dst_alive = end != "fail" and dst.proc.proc.poll() is None
        if dst_alive:
            queries.append(_threads(dst, "after-" + end))
            tasks["dst-after"] = _all_comms(dst)
    finally:
        for s in sides.values():
            s.client.close()
            s.proc.stop()
        shutil.rmtree(host_tmp, ignore_errors=True)
    return {
        "name": name,
        "multifd_channels": channels,
        "end": end,
        "queries": queries,
        "dst_alive_after": dst_alive,
        "task_names": tasks,
    }


CASES = [
    ("precopy", 0, "complete"),
    ("multifd-2", 2, "complete"),
    ("multifd-4", 4, "complete"),
    ("precopy-cancel", 0, "cancel"),
    ("multifd-2-cancel", 2, "cancel"),
    ("precopy-fail", 0, "fail"),
    ("multifd-2-fail", 2, "fail"),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_target_options(ap)
    ap.add_argument("--case", action="append", help="record only this case (repeatable)")
    args = ap.parse_args(argv)
    opened = open_target(args)
    if opened is None:
        return 2
    target, version = opened
    cmdline = [
        "python",
        "tools/record_migration_threads.py",
        *(argv if argv is not None else sys.argv[1:]),
    ]
    cases = []
    for name, channels, end in CASES:
        if args.case and name not in args.case:
            continue
        case = run_case(target, name, channels, end)
        for q in case["queries"]:
            print(f"  {name} {q['side']} {q['phase']}: {q['names']} {q['comm']}", file=sys.stderr)
        cases.append(case)
    out = Path(args.out or FIXTURE_DIR / f"qemu-{version}.json")
    data = {
        "metadata": metadata(target, args.qemu, cmdline, "unix:<TMP>/<side>.qmp"),
        "guest_argv": GUEST_ARGV,
        "cases": cases,
    }
    write_fixture(out, data)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
