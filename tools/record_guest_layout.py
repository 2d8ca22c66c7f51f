#!/usr/bin/env python3
"""Record the guest RAM layout and idle-guest content of real QEMU machines.

    python tools/record_guest_layout.py [--chroot /srv/trixie] [--only NAME ...]
        [--runs idle,early,bw2M,bw500k] [--keep-streams DIR] [--out FILE]

For each command line of the matrix below, this starts QEMU with exactly that
command line plus one ``-qmp`` monitor, turns the ``events`` capability on, waits
until the SeaBIOS guest idles (or migrates early, as test scripts do), records
``info ramblock``, migrates to ``exec:cat > FILE`` and records every MIGRATION /
MIGRATION_PASS event and the exact ``query-migrate`` reply at completion (the first
"completed" poll, and a settled one 0.2 s later).  The
stream file is then broken down by ``tools/qemu_stream.py``: the blocks, the
non-zero pages of the first round over RAM as runs ``[[first_page, count], ...]``,
the pages sent again (dirtied during the migration), and the bytes of every part.

QEMU 7.2 is the Debian one (default); QEMU 10.0 runs in a Debian trixie chroot
(``--chroot DIR``, /proc and /dev bind-mounted, QMP over tcp:127.0.0.1).  The
result goes to ``qmp_server/data/guest_layout/qemu-<version>.json``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import qemu_stream as qs
from _recording import REPO, add_target_options, open_target
from conformance import _harness as h  # (tests/ is on sys.path via _recording)

RECORDER_VERSION = "1.0"
OUT_DIR = REPO / "tests" / "engine" / "fixtures" / "guest_layout"


def _pc(
    mem: int, machine: str = "pc", extra: tuple[str, ...] = ("-nodefaults", "-vga", "none")
) -> list[str]:
    return ["-M", machine, "-accel", "tcg", "-m", str(mem), *extra, "-display", "none"]


#: name -> (command line, what it is for)
MATRIX: dict[str, tuple[list[str], str]] = {
    "pc-64": (_pc(64), "pc, 64 MiB, no default devices"),
    "pc-128": (_pc(128), "pc, 128 MiB, no default devices"),
    "pc-256": (_pc(256), "pc, 256 MiB, no default devices"),
    "pc-1024": (_pc(1024), "pc, 1 GiB, no default devices"),
    "pc-4096": (_pc(4096), "pc, 4 GiB (3 GiB below 4G, 1 GiB above), no default devices"),
    "pc-64-defaults": (
        ["-M", "pc", "-accel", "tcg", "-m", "64", "-display", "none"],
        "pc, 64 MiB, default devices (VGA + e1000 NIC)",
    ),
    "pc-64-nodefaults-only": (
        ["-M", "pc", "-accel", "tcg", "-m", "64", "-nodefaults", "-display", "none"],
        "pc, 64 MiB, -nodefaults without -vga none",
    ),
    "q35-128": (_pc(128, "q35"), "q35, 128 MiB, no default devices"),
    "q35-64-defaults": (
        ["-M", "q35", "-accel", "tcg", "-m", "64", "-display", "none"],
        "q35, 64 MiB, default devices",
    ),
    "microvm-64": (
        ["-M", "microvm", "-accel", "tcg", "-m", "64", "-nodefaults", "-display", "none"],
        "microvm, 64 MiB, qboot firmware",
    ),
    "none-64": (
        ["-M", "none", "-accel", "tcg", "-m", "64", "-display", "none"],
        "-M none with -m 64",
    ),
}

#: name -> (seconds from QEMU start to `migrate`, max-bandwidth or None)
RUNS: dict[str, tuple[float, int | None]] = {
    "idle": (3.0, None),
    "early": (0.5, None),
    "bw2M": (3.0, 2_000_000),
    "bw500k": (3.0, 500_000),
    "idle-repeat": (3.0, None),
}
DEFAULT_RUNS = ["idle", "early", "bw2M", "bw500k"]
#: Configurations that get an extra "idle-repeat" run (is the layout deterministic?).
REPEAT = {"pc-64", "q35-128"}

MIGRATE_TIMEOUT = 120.0


class Qmp:
    """A minimal synchronous QMP client that keeps every event with its arrival time."""

    def __init__(self, endpoint: str | tuple[str, int]) -> None:
        self.c = h.Client(endpoint)
        self.events: list[tuple[float, dict[str, Any]]] = []
        while True:
            line = self._line(10.0)
            if line.startswith('{"QMP"'):
                self.greeting = line
                break
            self._event(line)

    def _line(self, timeout: float) -> str:
        got = self.c.read_lines(1, timeout)
        if not got:
            raise RuntimeError("QMP: no line (timeout or EOF)")
        text: str = h.split_line(got[0])[0]
        return text

    def _event(self, line: str) -> bool:
        d = json.loads(line)
        if "event" in d:
            self.events.append((time.monotonic(), d))
            return True
        return False

    def cmd(self, name: str, args: dict[str, Any] | None = None) -> tuple[Any, str]:
        msg: dict[str, Any] = {"execute": name}
        if args is not None:
            msg["arguments"] = args
        self.c.send(json.dumps(msg).encode() + b"\n")
        while True:
            line = self._line(30.0)
            if not self._event(line):
                d = json.loads(line)
                if "error" in d:
                    raise RuntimeError(f"{name}: {d['error']}")
                return d["return"], line

    def close(self) -> None:
        self.c.close()


_RAMBLOCK_RE = re.compile(
    r"^\s*(\S+)\s+(\d+\s+\S+)\s+0x([0-9a-fA-F]+)\s+0x([0-9a-fA-F]+)\s+0x([0-9a-fA-F]+)"
)


def parse_ramblock(text: str) -> list[list[Any]]:
    """``info ramblock`` rows as [name, page size, offset, used, max]."""
    out: list[list[Any]] = []
    for ln in text.splitlines():
        m = _RAMBLOCK_RE.match(ln)
        if m:
            out.append(
                [
                    m.group(1),
                    m.group(2),
                    int(m.group(3), 16),
                    int(m.group(4), 16),
                    int(m.group(5), 16),
                ]
            )
    return out


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/children", encoding="ascii") as f:
                kids += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return kids


def _wait_stream(path: str, pid: int, timeout: float = 30.0) -> None:
    """Wait until the exec: child (sh / cat) has exited and the file stops growing."""
    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        size = os.path.getsize(path) if os.path.exists(path) else -1
        if not _children(pid) and size == last:
            return
        last = size
        time.sleep(0.1)


def _rel_events(q: Qmp, t0: float) -> list[list[Any]]:
    out: list[list[Any]] = []
    for t, ev in q.events:
        if ev["event"] not in ("MIGRATION", "MIGRATION_PASS", "STOP", "RESUME"):
            continue
        ts = ev.get("timestamp", {})
        out.append(
            [
                round((t - t0) * 1000.0, 1),
                ev["event"],
                ev.get("data", {}),
                ts.get("seconds", 0) * 1_000_000 + ts.get("microseconds", 0),
            ]
        )
    if out:  # QEMU's own timestamps, in ms relative to the first event
        base = out[0][3]
        for e in out:
            e[3] = round((e[3] - base) / 1000.0, 3)
    return out


def run_one(
    target: Any,
    argv: list[str],
    wait_s: float,
    bandwidth: int | None,
    keep: str | None,
) -> dict[str, Any]:
    """Start QEMU, migrate to a file, return everything recorded."""
    res: dict[str, Any] = {"wait_s": wait_s, "max_bandwidth": bandwidth}
    with h.tmp_socket_dir(target.host_tmp()) as d:
        sock = os.path.join(d, "qmp.sock")
        stream = os.path.join(d, "stream.bin")
        t_start = time.monotonic()
        proc = h.Process(target, argv, sock)
        try:
            proc.wait_socket()
            time.sleep(target.connect_grace)
            q = Qmp(proc.endpoint)
            try:
                q.cmd("qmp_capabilities")
                q.cmd(
                    "migrate-set-capabilities",
                    {"capabilities": [{"capability": "events", "state": True}]},
                )
                if bandwidth is not None:
                    q.cmd("migrate-set-parameters", {"max-bandwidth": bandwidth})
                rb_any, _ = q.cmd("human-monitor-command", {"command-line": "info ramblock"})
                rb = str(rb_any)
                res["info_ramblock"] = rb
                res["blocks"] = parse_ramblock(rb)
                delay = t_start + wait_s - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                # drain events that arrived while idle (RESUME at start-up etc.)
                q.c.collect(0.01)
                for raw in q.c._pop_lines():
                    q._event(h.split_line(raw)[0])
                pre_events = len(q.events)
                t_mig = time.monotonic()
                res["migrate_at_s"] = round(t_mig - t_start, 3)
                q.cmd("migrate", {"uri": f"exec:cat > {target.inside(stream)}"})
                polls = 0
                last_active = None
                while True:
                    r, line = q.cmd("query-migrate")
                    polls += 1
                    st = r.get("status")
                    if st in ("completed", "failed", "cancelled"):
                        res["query_migrate"] = line
                        res["status"] = st
                        break
                    if st == "active":
                        last_active = line
                    if time.monotonic() - t_mig > MIGRATE_TIMEOUT:
                        raise RuntimeError(f"migration not finished after {MIGRATE_TIMEOUT}s")
                    time.sleep(0.01)
                res["migration_wall_ms"] = round((time.monotonic() - t_mig) * 1000.0, 1)
                res["query_migrate_polls"] = polls
                res["last_active_query_migrate"] = last_active
                time.sleep(0.2)
                # the first "completed" reply can still lack the final times (7.2 showed
                # total-time 0, downtime 0, mbps 0 when polled at the switch): ask again
                _, settled = q.cmd("query-migrate")
                res["query_migrate_settled"] = settled
                res["query_migrate_changed"] = settled != res["query_migrate"]
                q.c.collect(0.05)
                for raw in q.c._pop_lines():
                    q._event(h.split_line(raw)[0])
                q.events = q.events[pre_events:]
                res["events"] = _rel_events(q, t_mig)
                _wait_stream(stream, proc.proc.pid)
            finally:
                q.close()
        finally:
            res["stderr"] = proc.stop()
        with open(stream, "rb") as f:
            data = f.read()
        if keep:
            os.makedirs(os.path.dirname(keep), exist_ok=True)
            with open(keep, "wb") as f:
                f.write(data)
    s = qs.parse(data)
    res["stream"] = s.breakdown()
    del res["stream"]["ram_sections"]  # the same summaries head each raw_runs entry
    res["pages"] = qs.page_analysis(s)
    res["raw_runs"] = qs.raw_runs(s)
    return res


def summarize(cfg: dict[str, Any]) -> dict[str, Any]:
    """What a config's runs say in brief: blocks, first-round content, differences."""
    runs = cfg["runs"]
    base = runs.get("idle") or next(iter(runs.values()), None)
    if not base or "error" in base:
        return {}
    max_by_name = {b[0]: b[4] for b in base["blocks"]}
    out: dict[str, Any] = {
        "ram_total": json.loads(base["query_migrate"])["return"].get("ram", {}).get("total"),
        "blocks": [[n, u, max_by_name.get(n)] for n, u in base["stream"]["blocks"]],
        "nonzero_first_round": {
            b: d["nonzero_runs"] for b, d in base["pages"]["first_round"].items()
        },
        "nonzero_pages": {b: d["nonzero"] for b, d in base["pages"]["first_round"].items()},
    }

    def pageset(run: dict[str, Any]) -> dict[str, set[int]]:
        return {
            b: {i for f, c in d["nonzero_runs"] for i in range(f, f + c)}
            for b, d in run["pages"]["first_round"].items()
        }

    ref = pageset(base)
    diffs: dict[str, Any] = {}
    for name, run in runs.items():
        if run is base or "error" in run:
            continue
        other = pageset(run)
        dd: dict[str, Any] = {}
        for b in sorted(set(ref) | set(other)):
            a, o = ref.get(b, set()), other.get(b, set())
            if a != o:
                dd[b] = {
                    "only_in_" + name: qs.runs_of(o - a),
                    "only_in_idle": qs.runs_of(a - o),
                }
        diffs[name] = dd or "same non-zero pages"
    out["first_round_vs_idle"] = diffs
    out["resent_pages"] = {
        name: [
            {"round": r["round"], "sections": r["sections"], "pages": r["pages"]}
            for r in run["pages"]["resent"]
        ]
        for name, run in runs.items()
        if "error" not in run
    }
    return out


def _firmware_packages(target: Any) -> dict[str, str]:
    cmd = ["dpkg-query", "-W", "-f", "${Package} ${Version}\\n"]
    pkgs = ["qemu-system-x86", "qemu-system-data", "seabios", "ipxe-qemu"]
    if target.chroot:
        cmd = ["chroot", target.chroot, *cmd]
    try:
        out = subprocess.run([*cmd, *pkgs], capture_output=True, text=True, check=False).stdout
    except OSError:
        return {}
    return dict(ln.split(" ", 1) for ln in out.splitlines() if " " in ln)


def dump_compact(obj: Any, level: int = 0) -> str:
    """JSON with one key per line, but short flat objects, lists of scalars and lists of
    short lists (page runs) on one line."""
    pad = " " * level
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        flat = json.dumps(obj, ensure_ascii=True)
        if len(flat) <= 160 and not any(isinstance(v, dict) for v in obj.values()):
            return flat
        items = [f"{pad} {json.dumps(k)}: {dump_compact(v, level + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(obj, list):
        if all(
            not isinstance(x, dict) and (not isinstance(x, list) or len(json.dumps(x)) < 200)
            for x in obj
        ):
            return json.dumps(obj, ensure_ascii=True)
        return "[\n" + ",\n".join(f"{pad} {dump_compact(x, level + 1)}" for x in obj) + f"\n{pad}]"
    return json.dumps(obj, ensure_ascii=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_target_options(ap)
    ap.add_argument("--only", nargs="*", help="configuration names (default: all)")
    ap.add_argument("--runs", default=",".join(DEFAULT_RUNS))
    ap.add_argument("--keep-streams", metavar="DIR", help="keep each stream file in DIR")
    a = ap.parse_args()
    opened = open_target(a)
    if opened is None:
        return 2
    target, version = opened
    out = Path(a.out) if a.out else OUT_DIR / f"qemu-{version}.json"
    names = a.only or list(MATRIX)
    run_names = [r for r in a.runs.split(",") if r]
    doc: dict[str, Any] = {
        "metadata": {
            "qemu_version": h.qemu_version_line(a.qemu, target),
            "packages": _firmware_packages(target),
            "qemu_binary": a.qemu,
            "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "recorder": "tools/record_guest_layout.py",
            "recorder_version": RECORDER_VERSION,
            "command": shlex.join([sys.argv[0], *sys.argv[1:]]),
            "qemu_command": shlex.join(
                [
                    *target.prefix,
                    "<argv>",
                    "-qmp",
                    ("tcp:127.0.0.1:<port>" if target.qmp_tcp else "unix:<TMP>/qmp.sock")
                    + ",server=on,wait=off",
                ]
            ),
            "migrate_uri": "exec:cat > <TMP>/stream.bin",
            "runs": {
                r: {"migrate_after_start_s": RUNS[r][0], "max_bandwidth": RUNS[r][1]}
                for r in [*run_names, "idle-repeat"]
            },
            "blocks": "info ramblock rows: [name, page size, offset, used, max]",
            "page_runs": "[first_page, count]; raw_runs rows are "
            "[block, first_page, count, z|n, wire bytes per page]",
            "rounds": "a round ends where the sender wraps around RAM (stream order); "
            "round 1 is the bulk pass",
        },
        "configs": {},
    }
    for name in names:
        argv, what = MATRIX[name]
        cfg: dict[str, Any] = {"what": what, "argv": shlex.join(argv), "runs": {}}
        todo = list(run_names) + (["idle-repeat"] if name in REPEAT else [])
        for rn in todo:
            wait_s, bw = RUNS[rn]
            keep = (
                os.path.join(a.keep_streams, f"qemu-{version}", f"{name}.{rn}.bin")
                if a.keep_streams
                else None
            )
            t = time.monotonic()
            try:
                res = run_one(target, argv, wait_s, bw, keep)
            except Exception as e:  # recorded; the matrix goes on
                res = {"error": f"{type(e).__name__}: {e}"}
            cfg["runs"][rn] = res
            qm = res.get("query_migrate", res.get("error", ""))
            print(
                f"[{version}] {name} {rn}: {time.monotonic() - t:.1f}s {qm[:160]}",
                file=sys.stderr,
                flush=True,
            )
        cfg["summary"] = summarize(cfg)
        doc["configs"][name] = cfg
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", encoding="utf-8") as f:
            f.write(dump_compact(doc) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
