"""What the two recorders share: the QEMU target options, fixture metadata, writing a fixture.

``tools/record_conformance.py`` (single-monitor sessions) and ``tools/record_two_party.py``
(source + destination transcripts) record from the same QEMUs the same way: the Debian QEMU 7.2
by default, or the QEMU 10.0 of a Debian trixie chroot with ``--chroot DIR``.
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from conformance import _harness as h  # noqa: E402

RECORDER_VERSION = "1.0"


def add_target_options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--qemu", default=shutil.which("qemu-system-x86_64") or "/usr/bin/qemu-system-x86_64"
    )
    ap.add_argument(
        "--chroot",
        metavar="DIR",
        help="run the QEMU installed in chroot DIR (e.g. QEMU 10.0 in Debian trixie, "
        "/proc and /dev bind-mounted), QMP over tcp:127.0.0.1; the default --out "
        "becomes the qemu-10.0 fixture directory",
    )
    ap.add_argument("--out", default=None)


def open_target(args: argparse.Namespace) -> tuple[Any, str] | None:
    """The QEMU to record from and its version ("7.2" or "10.0"); None (reported) if absent.

    Sets ``args.qemu`` to ``DIR:/usr/bin/qemu-system-x86_64`` for a chroot.
    """
    if args.chroot:
        target = h.chroot_target(args.chroot)
        args.qemu = f"{args.chroot}:/usr/bin/qemu-system-x86_64"
        why = h.target_available(target)
        if why:
            print(f"cannot run QEMU in {args.chroot}: {why}", file=sys.stderr)
            return None
        return target, "10.0"
    if not os.path.exists(args.qemu):
        print(f"QEMU binary not found: {args.qemu}", file=sys.stderr)
        return None
    return h.qemu_target(args.qemu), "7.2"


def metadata(target: Any, qemu: str, argv0: list[str], unix_qmp: str) -> dict[str, Any]:
    """Who recorded a fixture, from which QEMU, how (``unix_qmp``: the QMP socket shown)."""
    qmp = "tcp:127.0.0.1:<port>" if target.qmp_tcp else unix_qmp
    return {
        "qemu_version": h.qemu_version_line(qemu, target),
        "qemu_binary": qemu,
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": shlex.join(argv0),
        "qemu_command": shlex.join(
            [*target.prefix, "<argv>", "-qmp", qmp + ",server=on,wait=off"]
        ),
        "recorder_version": RECORDER_VERSION,
        "host": {"kernel": platform.release(), "machine": platform.machine()},
    }


def write_fixture(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, ensure_ascii=True)
        f.write("\n")
