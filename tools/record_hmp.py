#!/usr/bin/env python3
"""Record QEMU's human monitor (HMP) texts into the HMP replay fixtures.

Each session below is run twice against a real QEMU: once typed on an HMP socket
(``-monitor unix:...``: greeting banner, echo, prompt, line endings kept byte for byte) and once
through QMP's ``human-monitor-command``.  The result is written to
``tests/conformance/fixtures/hmp/qemu-<version>.json`` and replayed against qmp-server by
``tests/conformance/test_hmp_replay.py``.  Fixtures are never edited by hand: change a session
here and re-record.

    tools/record_hmp.py                       # QEMU 7.2 (/usr/bin/qemu-system-x86_64)
    tools/record_hmp.py --chroot /srv/trixie  # QEMU 10.0 of a Debian trixie chroot
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from conformance import _hmp  # noqa: E402

PC = ["-M", "pc", "-m", "64", "-nodefaults", "-display", "none"]
NONE = ["-M", "none", "-display", "none"]
SINK = '"exec:cat > /dev/null"'


def _lines(*lines: str) -> list[dict[str, Any]]:
    return [{"line": line} for line in lines]


_PARAMS_OK = (
    "migrate_set_parameter max-bandwidth 1G",
    "migrate_set_parameter max-bandwidth 12345",
    "migrate_set_parameter max-bandwidth 1.5M",
    "migrate_set_parameter downtime-limit 500",
    "migrate_set_parameter xbzrle-cache-size 128M",
    "migrate_set_parameter max-postcopy-bandwidth 10M",
    "migrate_set_parameter announce-initial 100",
    "migrate_set_parameter announce-rounds 7",
    "migrate_set_parameter cpu-throttle-initial 30",
    "migrate_set_parameter cpu-throttle-tailslow on",
    "migrate_set_parameter throttle-trigger-threshold 60",
    "migrate_set_parameter max-cpu-throttle 80",
    "migrate_set_parameter multifd-channels 4",
    "migrate_set_parameter multifd-compression zstd",
    "migrate_set_parameter multifd-zstd-level 5",
    "migrate_set_parameter tls-creds foo",
    "migrate_set_parameter tls-hostname example.org",
    "migrate_set_parameter tls-authz ''",
    "migrate_set_parameter x-checkpoint-delay 300",
    "migrate_set_parameter compress-level 9",
    "migrate_set_parameter compress-threads 4",
)
_PARAMS_BAD = (
    "migrate_set_parameter max-bandwidth 12x",
    "migrate_set_parameter max-bandwidth -1",
    "migrate_set_parameter downtime-limit abc",
    "migrate_set_parameter downtime-limit 99999999999",
    "migrate_set_parameter downtime-limit 1k",
    "migrate_set_parameter cpu-throttle-tailslow maybe",
    "migrate_set_parameter max-cpu-throttle 100",
    "migrate_set_parameter multifd-compression bogus",
    "migrate_set_parameter multifd-channels 0",
    "migrate_set_parameter nosuch-param 1",
    "migrate_set_parameter block-bitmap-mapping x",
    "migrate_set_parameter",
    "migrate_set_parameter max-bandwidth",
    "migrate_set_parameter max-bandwidth 1 2",
)
_CAPS = (
    "migrate_set_capability xbzrle on",
    "migrate_set_capability events on",
    "migrate_set_capability xbzrle off",
    "migrate_set_capability xbzrle maybe",
    "migrate_set_capability nosuch on",
    "migrate_set_capability",
    "migrate_set_capability xbzrle",
    "migrate_set_capability xbzrle on extra",
    "migrate_set_capability postcopy-ram on",
    "migrate_set_capability multifd on",
    "migrate_set_capability postcopy-preempt on",
    "migrate_set_capability return-path on",
    "migrate_set_capability switchover-ack on",
)

SESSIONS: list[dict[str, Any]] = [
    {
        "name": "pc-idle",
        "argv": PC,
        "steps": [
            *_lines(
                "",
                "info status",
                "info version",
                "info name",
                "info uuid",
                "info ramblock",
                "info migrate",
                "info migrate -a",
                "info migrate_capabilities",
                "info migrate_parameters",
                "foo",
                "info foo",
                "  info   status  ",
                "help migrate",
                "help migrate_set_parameter",
                "help nosuch",
                "help migrate_set_capability",
                "help migrate_cancel",
                "help migrate_continue",
                "help migrate_incoming",
                "help migrate_recover",
                "help migrate_pause",
                "help migrate_start_postcopy",
                "help stop",
                "help cont",
            ),
            {"send": "info status\r"},
            {"send": "info status\r\n"},
            {"send": "info status\n\n"},
        ],
    },
    {"name": "pc-capabilities", "argv": PC, "steps": _lines(*_CAPS, "info migrate_capabilities")},
    {
        "name": "pc-parameters",
        "argv": PC,
        "steps": _lines(
            *_PARAMS_OK, "info migrate_parameters", *_PARAMS_BAD, "info migrate_parameters"
        ),
    },
    {
        "name": "pc-parameter-parsing",
        "argv": PC,
        "steps": _lines(
            "migrate_set_parameter max-bandwidth 12",
            "info migrate_parameters",
            "migrate_set_parameter xbzrle-cache-size 1",
            "migrate_set_parameter multifd-channels abc",
            "migrate_set_parameter multifd-channels 256",
            "migrate_set_parameter announce-rounds x",
            "migrate_set_parameter x-checkpoint-delay abc",
            "migrate_set_parameter max-postcopy-bandwidth 2x",
            "migrate_set_parameter tls-creds",
            'migrate_set_parameter tls-creds "a b"',
            "migrate_set_parameter mode cpr-reboot",
            "migrate_set_parameter zero-page-detection none",
            "migrate_set_parameter direct-io on",
            "migrate_set_parameter avail-switchover-bandwidth 1G",
            "migrate_set_parameter vcpu-dirty-limit 5",
            "info migrate_parameters",
        ),
    },
    {
        "name": "pc-idle-commands",
        "argv": PC,
        "steps": _lines(
            "migrate_continue pre-switchover",
            "migrate_continue none",
            "migrate_continue bogus",
            "migrate_continue",
            "migrate_cancel",
            "migrate_cancel now",
            "migrate_start_postcopy",
            "migrate_pause",
            "migrate_recover tcp:127.0.0.1:1",
            "migrate_recover",
            "migrate_incoming tcp:127.0.0.1:0",
            "migrate",
            "migrate -x exec:true",
            "migrate -d bogus:uri",
            "migrate -r exec:true",
            "stop",
            "info status",
            "stop",
            "cont",
            "info status",
            "cont",
            "info status",
        ),
    },
    {
        "name": "none-idle",
        "argv": NONE,
        "steps": _lines("info status", "info ramblock", "info migrate", "info name"),
    },
    {
        "name": "named",
        "argv": [*PC, "-name", "guest1", "-uuid", "6b3e8a4c-58e1-4a4a-9e43-3e4c6c1f2a70"],
        "steps": _lines("info name", "info uuid"),
    },
    {
        "name": "migrate-active",
        "argv": ["-M", "pc", "-m", "1024", "-nodefaults", "-display", "none"],
        "steps": [
            *_lines("migrate_set_parameter max-bandwidth 1k", f"migrate -d {SINK}"),
            {"wait": ["active"]},
            {"line": "info migrate", "mask": True},
            *_lines(
                "info status",
                "migrate_set_capability xbzrle on",
                f"migrate -d {SINK}",
                "migrate_continue active",
            ),
            {"line": "migrate_cancel"},
            {"wait": ["cancelled"]},
            {"line": "info migrate", "mask": True},
            {"line": "info status"},
        ],
    },
    {
        "name": "migrate-complete",
        "argv": PC,
        "steps": [
            {"line": f"migrate {SINK}"},
            {"wait": ["completed"]},
            {"line": "info migrate", "mask": True},
            {"line": "info status"},
            {"line": "cont"},
            {"line": "info status"},
        ],
    },
    {
        "name": "migrate-pre-switchover",
        "argv": PC,
        "steps": [
            *_lines("migrate_set_capability pause-before-switchover on", f"migrate -d {SINK}"),
            {"wait": ["pre-switchover"]},
            {"line": "info migrate", "mask": True},
            {"line": "info status"},
            {"line": "migrate_continue active"},
            {"line": "migrate_continue pre-switchover"},
            {"wait": ["completed"]},
            {"line": "info status"},
        ],
    },
    {
        "name": "migrate-block",
        "argv": PC,
        "steps": [
            {"line": f"migrate -b {SINK}"},
            {"wait": ["completed", "failed", "none"]},
            {"line": "migrate -i exec:true"},
            {"line": "info status"},
        ],
    },
    {
        "name": "incoming-defer",
        "argv": [*PC, "-incoming", "defer"],
        "steps": [
            *_lines("info status", "info migrate", "migrate_incoming bogus:uri"),
            {"line": "migrate_incoming tcp:127.0.0.1:0"},
            {"line": "info migrate", "mask": True},
            *_lines("migrate_incoming tcp:127.0.0.1:0", "info status"),
            {"line": "info status", "cpu-index": 5},
            {"line": "info status", "cpu-index": -1},
            {"line": "info status", "cpu-index": 0},
        ],
    },
]


def _launcher(args: argparse.Namespace) -> tuple[_hmp.Launcher, str]:
    if args.chroot:
        return _hmp.Launcher(("chroot", args.chroot, "qemu-system-x86_64"), args.chroot), "10.0"
    return _hmp.Launcher((args.qemu,)), "7.2"


def record(args: argparse.Namespace) -> dict[str, Any]:
    launcher, version = _launcher(args)
    sessions = []
    qemu_version: Any = None
    for session in SESSIONS:
        if args.only and session["name"] not in args.only:
            continue
        print(f"recording {session['name']} ...", file=sys.stderr)
        hmp = _hmp.run_hmp(launcher, session["argv"], session["steps"])
        replies = _hmp.run_qmp(launcher, session["argv"], session["steps"])
        qemu_version = hmp["version"]
        steps = []
        for step, output, reply in zip(session["steps"], hmp["outputs"], replies, strict=True):
            entry = dict(step)
            if output is not None:
                entry["output"] = output
            if reply is not None:
                entry["qmp"] = reply
            steps.append(entry)
        sessions.append(
            {
                "name": session["name"],
                "argv": session["argv"],
                "greeting": hmp["greeting"],
                "steps": steps,
            }
        )
    version_line = subprocess.run(
        [*launcher.prefix, "--version"], capture_output=True, text=True, check=False
    ).stdout.splitlines()[0]
    return {
        "meta": {
            "qemu": version,
            "qemu_version": version_line,
            "query_version": qemu_version,
            "qemu_command": " ".join(
                [
                    *launcher.prefix,
                    "<argv>",
                    "-qmp",
                    "unix:<qmp>,server=on,wait=off",
                    "-monitor",
                    "unix:<hmp>,server=on,wait=off",
                ]
            ),
            "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "recorder": "tools/record_hmp.py",
        },
        "sessions": sessions,
    }


def help_data(fixture: dict[str, Any]) -> dict[str, str]:
    """The ``help CMD`` texts of a fixture (CMD known to that QEMU), as qmp-server loads them."""
    texts: dict[str, str] = {}
    for session in fixture["sessions"]:
        for step in session["steps"]:
            line = step.get("line", "")
            reply = step.get("qmp", {}).get("return")
            if line.startswith("help ") and reply and not reply.startswith("unknown command"):
                texts[line[5:].strip()] = reply.replace("\r\n", "\n")
    return texts


def write_help_data(fixture: dict[str, Any]) -> None:
    out = REPO / "qmp_server/data/hmp" / f"qemu-{fixture['meta']['qemu']}" / "help.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(help_data(fixture), f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {out}", file=sys.stderr)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--qemu", default="/usr/bin/qemu-system-x86_64")
    ap.add_argument("--chroot", metavar="DIR", help="run the QEMU of chroot DIR (10.0)")
    ap.add_argument("--only", nargs="*", help="sessions to record (prints, writes nothing)")
    ap.add_argument("--out", default=None)
    ap.add_argument(
        "--derive-help",
        metavar="FIXTURE",
        help="only rewrite qmp_server/data/hmp/*/help.json from a fixture",
    )
    args = ap.parse_args()
    if args.derive_help:
        with open(args.derive_help, encoding="utf-8") as f:
            write_help_data(json.load(f))
        return 0
    data = record(args)
    if args.only:
        json.dump(data, sys.stdout, indent=1)
        return 0
    out = Path(
        args.out or REPO / "tests/conformance/fixtures/hmp" / f"qemu-{data['meta']['qemu']}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, ensure_ascii=True)
        f.write("\n")
    print(f"wrote {out}", file=sys.stderr)
    write_help_data(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
