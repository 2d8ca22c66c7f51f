"""Two-party (source + destination) migration conformance: run, record, normalise.

A two-party scenario starts two processes of the same target (a real
``qemu-system-x86_64`` while recording, or ``qmp-server --compat 7.2`` on
replay), a *source* (``src``) and a *destination* (``dst``), each with its own
QMP monitor, and drives them with an ordered list of steps.  Every line each
side sends is recorded in arrival order, together with what was sent, the exit
status and the stderr of each side.

Comparison does not replay line counts (a running migration is not
deterministic line by line): both runs are reduced by :func:`view` to a
*normalised view* and the views must be equal.  What the normaliser removes
is listed in ``docs/conformance.md`` ("Two-party migration transcripts") and
in the docstrings below; nothing else is touched.

Scenario files live in ``two_party/scenarios/<name>.json``, fixtures
(written only by ``tools/record_two_party.py``) in
``two_party/fixtures/qemu-7.2/<name>.json``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import _harness as h

HERE = Path(__file__).resolve().parent
SCENARIO_DIR = HERE / "scenarios"
FIXTURE_DIR = HERE / "fixtures" / "qemu-7.2"
FIXTURE_DIR_100 = HERE / "fixtures" / "qemu-10.0"

SIDES = ("src", "dst")
#: Placeholder in scenario commands for the per-run temporary directory.
TMP_TOKEN = "@TMP@"
#: What the temporary directory becomes in recorded/normalised text.
TMP_MASK = "<TMP>"
#: Default timeout of wait_event / wait_status / expect_exit / a reply (s).
DEFAULT_TIMEOUT = 30.0
#: Interval between two query-migrate polls of wait_status (s).
POLL_INTERVAL = 0.05
#: Silence that ends the final drain of both monitors (s).
FINAL_SETTLE = 0.5

QUERY_MIGRATE = "query-migrate"

#: query-migrate members whose (numeric) values are counters, rates or
#: timings.  Their values are masked as <N>; the member itself, its position
#: and every other value stay compared.
#: ``page-size`` is *not* masked (it is a constant, 4096).
MASKED_NUMERIC_KEYS = (
    # top level
    "setup-time",
    "total-time",
    "downtime",
    "expected-downtime",
    "cpu-throttle-percentage",
    # ram / vfio / disk
    "transferred",
    "remaining",
    "total",
    "duplicate",
    "skipped",
    "normal",
    "normal-bytes",
    "dirty-pages-rate",
    "mbps",
    "dirty-sync-count",
    "postcopy-requests",
    "multifd-bytes",
    "pages-per-second",
    "precopy-bytes",
    "downtime-bytes",
    "postcopy-bytes",
    "dirty-sync-missed-zero-copy",
    # destination with postcopy-blocktime (ms of vCPU time spent waiting for pages)
    "postcopy-blocktime",
    # xbzrle-cache / compression
    "cache-size",
    "bytes",
    "pages",
    "cache-miss",
    "cache-miss-rate",
    "encoding-rate",
    "overflow",
    "busy",
    "busy-rate",
    "compressed-size",
    "compression-rate",
)
_NUM = r"-?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|inf|nan)"
_COUNTER_RE = re.compile(r'"(' + "|".join(map(re.escape, MASKED_NUMERIC_KEYS)) + r')": ' + _NUM)
#: query-migrate members whose value is a list of counters (one per vCPU): every number
#: in the list is masked, the list's length is kept.
MASKED_LIST_KEYS = ("postcopy-vcpu-blocktime",)
_LIST_RE = re.compile(r'"(' + "|".join(map(re.escape, MASKED_LIST_KEYS)) + r')": \[([^\]]*)\]')
_LIST_NUM_RE = re.compile(_NUM)
#: query-migrationthreads: the thread ids differ on every run
_THREAD_ID_RE = re.compile(r'("thread-id": )\d+')
#: a multifd sender's name (``mig/src/send_N``, ``multifdsend_N``) and its channel number
_SENDER_RE = re.compile(r"(?:send_|multifdsend_)(\d+)$")
_PASS_RE = re.compile(r'("event": "MIGRATION_PASS", "data": \{"pass": )\d+(\})')


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------


def scenario_names() -> list[str]:
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.json"))


def load_scenario(name: str) -> dict[str, Any]:
    with open(SCENARIO_DIR / f"{name}.json", encoding="utf-8") as f:
        sc: dict[str, Any] = json.load(f)
    if sc.get("name") != name:
        raise ValueError(f"{name}.json: name is {sc.get('name')!r}")
    return sc


def load_fixture(name: str, fixture_dir: Path = FIXTURE_DIR) -> dict[str, Any]:
    with open(fixture_dir / f"{name}.json", encoding="utf-8") as f:
        fx: dict[str, Any] = json.load(f)
    return fx


def command_text(cmd: Any, tmp: str) -> str:
    """The exact text a command step sends (always ending in one newline)."""
    text = cmd if isinstance(cmd, str) else json.dumps(cmd, separators=(",", ":"))
    text = text.replace(TMP_TOKEN, tmp)
    return text if text.endswith("\n") else text + "\n"


def command_name(text: str) -> str:
    with suppress(ValueError, AttributeError, TypeError):
        obj = json.loads(text)
        return str(obj.get("execute") or obj.get("exec-oob") or "?")
    return "?"


# --------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------


class StepFailed(RuntimeError):
    """A control step timed out or a side broke while recording."""


@dataclass
class Side:
    name: str
    proc: h.Process
    client: h.Client
    #: Everything that happened on this side, in order:
    #: {"sent": text, "step": i} / {"line": text, "eol": e} / {"eof": True}
    stream: list[dict[str, Any]] = field(default_factory=list)
    #: Index into ``stream`` up to which wait_event has consumed events.
    cursor: int = 0
    exit_status: int | None = None
    exited: bool = False

    def pump(self, timeout: float) -> bool:
        """Read once (up to ``timeout``); append complete lines.  False on silence."""
        if self.client.eof:
            time.sleep(min(timeout, 0.05))
            return False
        got = self.client._recv(max(timeout, 0.001))
        for raw in self.client._pop_lines():
            text, eol = h.split_line(raw)
            self.stream.append({"line": text, "eol": eol})
        if self.client.eof and not any(e.get("eof") for e in self.stream):
            if self.client.buf:
                text, eol = h.split_line(self.client.buf)
                self.client.buf = b""
                self.stream.append({"line": text, "eol": eol, "partial": True})
            self.stream.append({"eof": True})
        return got

    def wait_for(
        self, pred: Callable[[int, dict[str, Any]], bool], start: int, timeout: float
    ) -> int | None:
        """Index of the first stream entry >= start matching pred, reading as needed."""
        deadline = time.monotonic() + timeout
        i = start
        while True:
            while i < len(self.stream):
                if pred(i, self.stream[i]):
                    return i
                i += 1
            if self.client.eof:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.pump(min(remaining, 0.2))

    def command(self, text: str, step: int, timeout: float) -> dict[str, Any] | None:
        """Send a command and read up to its reply; returns the reply entry."""
        start = len(self.stream)
        self.stream.append({"sent": text, "step": step})
        try:
            self.client.send(text.encode("utf-8"))
        except OSError as e:
            self.stream.append({"send_error": type(e).__name__, "step": step})
            return None
        idx = self.wait_for(lambda _i, e: "line" in e and is_reply(e["line"]), start, timeout)
        return None if idx is None else self.stream[idx]


def parse_line(line: str) -> dict[str, Any] | None:
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def is_reply(line: str) -> bool:
    obj = parse_line(line)
    return obj is not None and ("return" in obj or "error" in obj)


def is_event(line: str, name: str | None = None) -> bool:
    obj = parse_line(line)
    return obj is not None and "event" in obj and (name is None or obj["event"] == name)


def _matches(obj: Any, pattern: Any) -> bool:
    if isinstance(pattern, dict):
        return isinstance(obj, dict) and all(
            k in obj and _matches(obj[k], v) for k, v in pattern.items()
        )
    return bool(obj == pattern)


def _start_side(target: h.Target, name: str, argv: list[str], tmp: str) -> Side:
    sock = os.path.join(tmp, f"{name}.qmp")
    proc = h.Process(target, argv, sock)
    try:
        proc.wait_socket()
        if target.connect_grace:
            time.sleep(target.connect_grace)
        client = h.Client(proc.endpoint)
    except BaseException:
        proc.stop()
        raise
    side = Side(name, proc, client)
    idx = side.wait_for(lambda _i, e: "line" in e, 0, 10.0)
    first = side.stream[idx]["line"] if idx is not None else None
    try:
        h._check_greeting_first(target, first)
    except h.StartupRace:
        client.close()
        proc.stop()
        raise
    return side


def run_scenario(
    target: h.Target, scenario: dict[str, Any], strict: bool = False
) -> dict[str, Any]:
    """Run a scenario, retrying QEMU's startup race; returns the raw transcript."""
    for attempt in range(h.PRE_GREETING_RETRIES + 1):
        try:
            return _run_once(target, scenario, strict)
        except h.StartupRace:
            if attempt == h.PRE_GREETING_RETRIES:
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


def _run_once(target: h.Target, scenario: dict[str, Any], strict: bool) -> dict[str, Any]:
    host_tmp = tempfile.mkdtemp(prefix="qmptp-", dir=target.host_tmp())
    # the temporary directory as the target sees it (differs inside a chroot)
    tmp = target.inside(host_tmp)
    sides: dict[str, Side] = {}
    results: list[dict[str, Any]] = []
    try:
        for name in SIDES:
            # the very same command line for QEMU and for qmp-server
            argv = list(scenario[name]["argv"])
            sides[name] = _start_side(target, name, argv, host_tmp)
        for i, step in enumerate(scenario["steps"]):
            res = _run_step(sides, i, step, tmp)
            results.append(res)
            if strict and (res.get("timeout") or res.get("error")):
                raise StepFailed(f"{scenario['name']} step {i} {json.dumps(step)}: {res}")
        # final drain: trailing events of both sides
        deadline = time.monotonic() + FINAL_SETTLE
        while time.monotonic() < deadline:
            for s in sides.values():
                s.pump(0.02)
        for s in sides.values():
            _reap(s)
    finally:
        stderrs = {}
        for name, s in sides.items():
            s.client.close()
            alive = s.proc.proc.poll() is None
            stderrs[name] = s.proc.stop()
            if alive:
                s.exited = False
        shutil.rmtree(host_tmp, ignore_errors=True)
    out: dict[str, Any] = {"steps": results, "sides": {}}
    for name, s in sides.items():
        out["sides"][name] = {
            "stream": mask_tmp_obj(s.stream, tmp),
            "exited": s.exited,
            "exit_status": s.exit_status,
            "stderr": h.normalise_stderr(stderrs[name], target.progs).replace(tmp, TMP_MASK),
        }
    return out


def _reap(s: Side) -> None:
    rc = s.proc.proc.poll()
    if rc is not None and not s.exited:
        s.exited, s.exit_status = True, rc


def _run_step(sides: dict[str, Side], i: int, step: dict[str, Any], tmp: str) -> dict[str, Any]:
    timeout = float(step.get("timeout", DEFAULT_TIMEOUT))
    for name in SIDES:
        if name in step:
            side = sides[name]
            reply = side.command(command_text(step[name], tmp), i, timeout)
            return {"reply": reply is not None} if reply is not None else {"timeout": True}
    if "wait_event" in step:
        spec = step["wait_event"]
        side = sides[spec["side"]]

        def pred(_i: int, e: dict[str, Any]) -> bool:
            obj = parse_line(e["line"]) if "line" in e else None
            return (
                obj is not None
                and obj.get("event") == spec["event"]
                and _matches(obj.get("data", {}), spec.get("data", {}))  # RESUME, STOP: no data
            )

        idx = side.wait_for(pred, side.cursor, timeout)
        if idx is None:
            return {"timeout": True}
        side.cursor = idx + 1
        return {"found": True}
    if "wait_status" in step:
        spec = step["wait_status"]
        side = sides[spec["side"]]
        want = spec["status"]
        wanted = want if isinstance(want, list) else [want]
        deadline = time.monotonic() + timeout
        polls = 0
        while time.monotonic() < deadline:
            polls += 1
            text = command_text({"execute": QUERY_MIGRATE}, tmp)
            start = len(side.stream)
            reply = side.command(text, i, max(0.1, deadline - time.monotonic()))
            side.stream[start]["poll"] = True
            if reply is None:
                return {"timeout": True, "polls": polls}
            obj = parse_line(reply["line"]) or {}
            status = (
                (obj.get("return") or {}).get("status")
                if isinstance(obj.get("return"), dict)
                else None
            )
            if status in wanted:
                side.stream[start]["poll"] = "final"
                return {"polls": polls, "status": status}
            time.sleep(POLL_INTERVAL)
        return {"timeout": True, "polls": polls}
    if "kill" in step:
        spec = step["kill"]
        side = sides[spec["side"]]
        sig = getattr(signal, spec.get("signal", "SIGKILL"))
        with suppress(ProcessLookupError):
            os.kill(side.proc.proc.pid, sig)
        return {"killed": spec.get("signal", "SIGKILL")}
    if "sleep" in step:
        end = time.monotonic() + float(step["sleep"])
        while time.monotonic() < end:
            for s in sides.values():
                s.pump(min(0.02, max(0.0, end - time.monotonic())))
        return {"slept": True}
    if "expect_exit" in step:
        side = sides[step["expect_exit"]["side"]]
        deadline = time.monotonic() + timeout
        while side.proc.proc.poll() is None and time.monotonic() < deadline:
            side.pump(0.05)
        rc = side.proc.proc.poll()
        if rc is None:
            return {"timeout": True}
        # read whatever is left until EOF
        end = time.monotonic() + 2.0
        while not side.client.eof and time.monotonic() < end:
            side.pump(0.05)
        side.exited, side.exit_status = True, rc
        return {"exit_status": rc}
    return {"error": f"unknown step {step!r}"}


def mask_tmp_obj(obj: Any, tmp: str) -> Any:
    if isinstance(obj, str):
        return obj.replace(tmp, TMP_MASK)
    if isinstance(obj, list):
        return [mask_tmp_obj(x, tmp) for x in obj]
    if isinstance(obj, dict):
        return {k: mask_tmp_obj(v, tmp) for k, v in obj.items()}
    return obj


# --------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------


def mask_counters(line: str) -> str:
    """Mask the counter/timing numbers of a query-migrate reply."""
    line = _LIST_RE.sub(
        lambda m: f'"{m.group(1)}": [' + _LIST_NUM_RE.sub("<N>", m.group(2)) + "]", line
    )
    return _COUNTER_RE.sub(lambda m: f'"{m.group(1)}": <N>', line)


def mask_threads(line: str) -> str:
    """A query-migrationthreads reply with its thread ids masked and its multifd senders in
    one order (the last channel first).

    QEMU lists a thread when it starts, newest first; which sender starts first is a race
    (10.0 gave send_1, send_0 mostly, send_0, send_1 sometimes).  The senders keep their
    places among the other entries (the main thread stays last); only their order among
    themselves is fixed.
    """
    obj = parse_line(line)
    if obj is not None and isinstance(obj.get("return"), list):
        entries = obj["return"]

        def channel(entry: Any) -> int | None:
            m = _SENDER_RE.search(str(entry.get("name", ""))) if isinstance(entry, dict) else None
            return int(m.group(1)) if m else None

        places = [i for i, e in enumerate(entries) if channel(e) is not None]
        senders = sorted((entries[i] for i in places), key=lambda e: -(channel(e) or 0))
        for i, entry in zip(places, senders, strict=True):
            entries[i] = entry
        line = json.dumps(obj)
    return _THREAD_ID_RE.sub(r"\1<N>", line)


def _eol(e: dict[str, Any]) -> str:
    return "" if e.get("eol") == "\r\n" else f"  [eol {e.get('eol')!r}]"


def normalise_events(lines: list[str]) -> list[str]:
    """Masked event lines with the MIGRATION_PASS rule applied.

    * the first MIGRATION_PASS of the side is kept verbatim (``{"pass": 1}``,
      the bitmap sync of the setup phase, always before ``active``);
    * every later MIGRATION_PASS *before the side's first STOP* is dropped:
      how many iterations precopy runs depends on bandwidth and timing;
    * every MIGRATION_PASS *after* that STOP (the final sync of the
      stop-and-copy phase) is kept, with its number masked as ``<N>``.
    Everything else (MIGRATION statuses, STOP, RESUME, SHUTDOWN, ...) is
    kept in order, only the timestamp masked.
    """
    out: list[str] = []
    seen_pass = seen_stop = False
    for ln in lines:
        masked = h.mask_line(ln)
        if is_event(ln, "MIGRATION_PASS"):
            if not seen_pass:
                seen_pass = True
                out.append(masked)
            elif seen_stop:
                out.append(_PASS_RE.sub(r"\1<N>\2", masked))
            continue
        if is_event(ln, "STOP"):
            seen_stop = True
        out.append(masked)
    return out


def view(run: dict[str, Any], scenario: dict[str, Any]) -> dict[str, list[str]]:
    """The normalised, comparable view of one run: per side, a list of strings."""
    steps = scenario["steps"]
    result: dict[str, list[str]] = {}
    for name in SIDES:
        side = run["sides"][name]
        stream = side["stream"]
        ev_lines: list[str] = []
        out: list[str] = []
        pending: dict[str, Any] | None = None  # the sent entry awaiting its reply
        before: list[str] = []  # events since the last send
        for e in stream:
            if "sent" in e:
                pending, before = e, []
                continue
            if e.get("eof"):
                out.append("connection closed")
                continue
            if "send_error" in e:
                out.append(f"step {e['step']}: send failed")
                continue
            ln = e["line"]
            if pending is not None and is_reply(ln):
                step_i = pending["step"]
                poll = pending.get("poll")
                if poll is not True:  # not an intermediate wait_status poll
                    sent = pending["sent"].rstrip("\n")
                    rep = h.mask_line(ln)
                    if command_name(sent) == QUERY_MIGRATE:
                        rep = mask_counters(rep)
                    elif command_name(sent) == "query-migrationthreads":
                        rep = mask_threads(rep)
                    label = "poll" if poll == "final" else "send"
                    out.append(f"step {step_i} {label} {sent}")
                    if steps[step_i].get("ordered"):
                        out.append(
                            "  events before the reply: " + " | ".join(normalise_events(before))
                        )
                    out.append(f"  reply {rep}{_eol(e)}")
                pending = None
                continue
            if is_event(ln):
                ev_lines.append(ln)
                before.append(ln)
                if _eol(e):
                    out.append(f"event with bad eol: {ln!r}{_eol(e)}")
                continue
            if ln.startswith('{"QMP": '):
                out.append(f"greeting {h.mask_line(ln)}{_eol(e)}")
                continue
            out.append(f"unexpected line {h.mask_line(ln)!r}{_eol(e)}")
        events = [f"event {x}" for x in normalise_events(ev_lines)]
        if side["exited"]:
            tail = [f"exited with status {side['exit_status']}"]
        else:
            tail = ["still running at the end"]
        tail.append(f"stderr {side['stderr']!r}")
        result[name] = events + out + tail
    steps_view = []
    for i, r in enumerate(run["steps"]):
        if r.get("timeout") or r.get("error"):
            steps_view.append(f"step {i} {json.dumps(steps[i])}: {json.dumps(r)}")
    result["control"] = steps_view
    return result


# --------------------------------------------------------------------------
# Exact counters (scenarios with "exact_counters": true)
# --------------------------------------------------------------------------

#: query-migrate members that derive from wall-clock time, and how close they must be:
#: ``(absolute, relative)`` means ``|actual - recorded| <= absolute + relative * |recorded|``;
#: ``None`` means only "present, with the same JSON type".  Every other member of the
#: source's final query-migrate must be equal (docs/conformance.md, "Exact counters").
TIME_TOLERANCE: dict[str, tuple[float, float] | None] = {
    "total-time": (100.0, 0.10),  # one rate-limit period (100 ms) plus 10 %
    "setup-time": (100.0, 0.0),
    "downtime": (100.0, 0.0),
    "expected-downtime": (100.0, 0.0),
    "mbps": (0.0, 0.15),
    "pages-per-second": None,
    "dirty-pages-rate": None,
}


class _Missing:
    def __repr__(self) -> str:
        return "(absent)"


MISSING: Any = _Missing()


def final_query_migrate(run: dict[str, Any], side: str = "src") -> dict[str, Any] | None:
    """The ``return`` of the side's last query-migrate command (intermediate polls excluded)."""
    last: dict[str, Any] | None = None
    pending: dict[str, Any] | None = None
    for e in run["sides"][side]["stream"]:
        if "sent" in e:
            pending = e
        elif pending is not None and "line" in e and is_reply(e["line"]):
            if command_name(pending["sent"]) == QUERY_MIGRATE and pending.get("poll") is not True:
                ret = (parse_line(e["line"]) or {}).get("return")
                last = ret if isinstance(ret, dict) else None
            pending = None
    return last


def migration_events(run: dict[str, Any], side: str) -> list[str]:
    """The side's MIGRATION statuses and MIGRATION_PASS numbers, in order (nothing masked)."""
    out: list[str] = []
    for e in run["sides"][side]["stream"]:
        obj = parse_line(e["line"]) if "line" in e else None
        if obj and obj.get("event") in ("MIGRATION", "MIGRATION_PASS"):
            data = obj.get("data") or {}
            out.append(str(data.get("status", data.get("pass"))))
    return out


def counter_differences(expected: Any, actual: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """Every member that differs (value or JSON type) between two query-migrate returns.

    Paths are dotted (``ram.normal``); a member present on one side only is ``MISSING`` on
    the other.
    """
    if isinstance(expected, dict) and isinstance(actual, dict):
        out: list[tuple[str, Any, Any]] = []
        for k in [*expected, *(k for k in actual if k not in expected)]:
            sub = f"{path}.{k}" if path else k
            out += counter_differences(expected.get(k, MISSING), actual.get(k, MISSING), sub)
        return out
    if type(expected) is not type(actual) or expected != actual:
        return [(path, expected, actual)]
    return []


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def counter_spread(scenario: dict[str, Any], version: str) -> dict[str, int]:
    """``counter_spread`` of an exact_counters scenario for QEMU ``version``: member path ->
    the largest difference between two runs of that QEMU (absent: QEMU was stable)."""
    spread: dict[str, int] = scenario.get("counter_spread", {}).get(version, {})
    return spread


def exact_counter_diffs(
    expected_run: dict[str, Any],
    actual_run: dict[str, Any],
    spread: dict[str, int],
    who: str = "qmp-server",
) -> list[str]:
    """What breaks the exact comparison of the source's final query-migrate (empty: none).

    Every member must be present with the same JSON type; counters must be equal, or differ
    by at most ``spread[path]`` (what QEMU showed between its own runs, the scenario's
    ``counter_spread``); the time-derived members (``TIME_TOLERANCE``) within their tolerance.
    Unless QEMU's ``dirty-sync-count`` varies (is in ``spread``), the MIGRATION statuses and
    MIGRATION_PASS numbers of each side must also be the same, in order, unmasked.
    """
    expected = final_query_migrate(expected_run)
    actual = final_query_migrate(actual_run)
    if expected is None:
        return ["the recording has no source query-migrate reply"]
    if actual is None:
        return [f"{who}: no source query-migrate reply"]
    out: list[str] = []
    for path, ev, av in counter_differences(expected, actual):
        what = f"{path}: QEMU {ev!r}, {who} {av!r}"
        member = path.rsplit(".", 1)[-1]
        if ev is MISSING or av is MISSING or type(ev) is not type(av):
            out.append(what + " (member or JSON type differs)")
        elif not _is_number(ev):
            out.append(what)
        elif member not in TIME_TOLERANCE:
            if abs(av - ev) > spread.get(path, 0):
                out.append(what + f" ({av - ev:+})")
        elif (rule := TIME_TOLERANCE[member]) is not None:
            allowed = rule[0] + rule[1] * abs(ev)
            if abs(av - ev) > allowed:
                out.append(what + f" (tolerance +-{allowed:g})")
    if "ram.dirty-sync-count" not in spread:
        for side in SIDES:
            ev, av = migration_events(expected_run, side), migration_events(actual_run, side)
            if ev != av:
                out.append(f"{side} MIGRATION statuses / passes: QEMU {' '.join(ev)}, "
                           f"{who} {' '.join(av)}")  # fmt: skip
    return out


# --------------------------------------------------------------------------
# Diffs
# --------------------------------------------------------------------------


def diff_views(
    expected: dict[str, list[str]],
    actual: dict[str, list[str]],
    who: str,
    recorded: str = "QEMU 7.2",
) -> str:
    import difflib

    parts = []
    for key in (*SIDES, "control"):
        a, b = expected.get(key, []), actual.get(key, [])
        if a != b:
            d = difflib.unified_diff(
                a, b, f"{key}: recorded ({recorded})", f"{key}: {who}", lineterm="", n=3
            )
            parts.append("\n".join(d))
    return "\n\n".join(parts)


def qemu_version_line(qemu: str) -> str:
    return h.qemu_version_line(qemu)


__all__ = [
    "SIDES",
    "TIME_TOLERANCE",
    "StepFailed",
    "counter_differences",
    "counter_spread",
    "diff_views",
    "exact_counter_diffs",
    "final_query_migrate",
    "load_fixture",
    "load_scenario",
    "migration_events",
    "run_scenario",
    "scenario_names",
    "view",
]
