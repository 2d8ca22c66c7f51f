#!/usr/bin/env python3
"""Record what real QEMUs print for ``-M help``, ``-cpu help``, ``-accel help``, ``-version``.

    python tools/record_help_texts.py [--qemu72 BINARY] [--chroot DIR] [--only 7.2|10.0]

QEMU 7.2 is the Debian binary (``/usr/bin/qemu-system-x86_64``); QEMU 10.0 runs inside a
Debian trixie chroot (default ``/srv/trixie``).  Each text is stdout exactly as printed (the
command must exit 0 and write nothing to stderr) and goes to
``qmp_server/data/help/qemu-<version>/{machine,cpu,accel,version}.txt``; ``qmp-server``
prints these files for ``-M help``, ``-cpu help``, ``-accel help`` and (the copyright line
of) ``-version``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "qmp_server" / "data" / "help"

#: file name -> the arguments that print it
TEXTS = {
    "machine.txt": ["-M", "help"],
    "cpu.txt": ["-cpu", "help"],
    "accel.txt": ["-accel", "help"],
    "version.txt": ["-version"],
}


def record(name: str, prefix: list[str]) -> None:
    folder = OUT / f"qemu-{name}"
    folder.mkdir(parents=True, exist_ok=True)
    for filename, args in TEXTS.items():
        run = subprocess.run([*prefix, *args], capture_output=True, timeout=60, check=False)
        if run.returncode != 0 or run.stderr:
            sys.exit(f"{' '.join([*prefix, *args])}: status {run.returncode}: {run.stderr!r}")
        (folder / filename).write_bytes(run.stdout)
        print(f"{folder / filename}: {len(run.stdout.splitlines())} lines")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--qemu72", default="/usr/bin/qemu-system-x86_64")
    parser.add_argument("--chroot", default="/srv/trixie", help="QEMU 10.0's Debian chroot")
    parser.add_argument("--only", choices=("7.2", "10.0"))
    args = parser.parse_args()
    targets = {
        "7.2": [args.qemu72],
        "10.0": ["chroot", args.chroot, "qemu-system-x86_64"],
    }
    for name, prefix in targets.items():
        if args.only in (None, name):
            record(name, prefix)
    return 0


if __name__ == "__main__":
    sys.exit(main())
