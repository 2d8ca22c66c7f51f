#!/usr/bin/env python3
"""Run the idle guest's compressed two-party migrations N times and print the byte counters.

    python tools/measure_idle_compression.py [--chroot /srv/trixie] [--server] [--runs 5]

The scenarios are the recorded two-party ones (``tests/conformance/two_party/scenarios``):
``multifd-zlib``, ``multifd-zstd`` (2 channels) and, for QEMU 7.2, ``compress`` (the legacy
compress threads): a 64 MiB ``pc -nodefaults`` guest migrated at 500 kB/s.  Against QEMU (7.2
by default, 10.0 with ``--chroot``) or, with ``--server``, against qmp-server with the
matching ``--compat``.  Prints one line per run: ``multifd-bytes``, ``transferred``,
``normal`` and the ``compression`` members, so QEMU's spread from run to run can be set
beside qmp-server's (``tests/conformance/two_party/test_idle_compression.py``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _recording import add_target_options, open_target
from conformance import _harness as h  # (tests/ is on sys.path via _recording)
from conformance.two_party import _tp_harness as tp


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_target_options(ap)
    ap.add_argument("--server", action="store_true", help="run qmp-server instead of QEMU")
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    opened = open_target(a)
    if opened is None:
        return 2
    target, version = opened
    if a.server:
        target = h.target_from_env(version)
    names = ["multifd-zlib", "multifd-zstd"] + (["compress"] if version == "7.2" else [])
    for name in names:
        scenario = tp.load_scenario(name)
        for i in range(a.runs):
            reply = tp.final_query_migrate(tp.run_scenario(target, scenario))
            if reply is None:
                print(f"{version} {name} run {i}: no final query-migrate", flush=True)
                continue
            ram = reply["ram"]
            print(
                f"{version} {target.kind} {name} run {i}: multifd-bytes {ram['multifd-bytes']} "
                f"transferred {ram['transferred']} normal {ram['normal']} "
                f"compression {reply.get('compression')}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
