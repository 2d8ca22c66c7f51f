#!/usr/bin/env python3
"""Derive the machine layout table qmp-server loads at start-up from QEMU's recordings.

    python tools/derive_machine_layouts.py [--recordings DIR] [--out FILE]

Input: the recordings of ``tools/record_guest_layout.py`` (one JSON per QEMU version, in
``tests/engine/fixtures/guest_layout/``).  Output: ``qmp_server/data/machine_layouts.json``,
small enough to read at every start: per QEMU version and per machine family (``pc``, ``q35``,
``microvm``, ``none``, each with or without default devices), the RAM blocks in QEMU's order,
the pages an idle guest's firmware made non-zero (the main RAM's split into runs counted from
its start and runs counted back from the end of the RAM below 4 GiB, which is how SeaBIOS
places them whatever ``-m`` is), the pages an idle guest keeps dirtying, and the stream bytes
QEMU writes besides RAM pages (configuration section, device state, commands).

Never edit the output by hand: re-record, then run this again.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from qmp_server.engine.machine import low_ram_pages  # noqa: E402

RECORDINGS = REPO / "tests" / "engine" / "fixtures" / "guest_layout"
OUT = REPO / "qmp_server" / "data" / "machine_layouts.json"
#: The RAM below 1 MiB: runs there are counted from the start of the main RAM block.
LOW_PAGES = 256
#: Which recorded configuration stands for which family (the lowest -m of each family wins).
FAMILIES = {
    "pc-64": "pc/nodefaults",
    "pc-64-defaults": "pc/defaults",
    "q35-128": "q35/nodefaults",
    "q35-64-defaults": "q35/defaults",
    "microvm-64": "microvm/nodefaults",
    "none-64": "none/nodefaults",
}


def _ram_mib(argv: str) -> int:
    words = argv.split()
    return int(words[words.index("-m") + 1])


def derive_family(name: str, config: dict[str, Any]) -> dict[str, Any]:
    machine = FAMILIES[name].split("/")[0]
    summary = config["summary"]
    blocks = summary["blocks"]
    main = blocks[0][0] if machine != "none" else "ram"
    ram_bytes = _ram_mib(config["argv"]) << 20
    low = low_ram_pages(machine, ram_bytes)
    runs = summary["nonzero_first_round"]
    start_runs: list[list[int]] = []
    end_runs: list[list[int]] = []
    for first, count in runs.get(main, []):
        if first < LOW_PAGES:
            start_runs.append([first, count])
        else:
            end_runs.append([low - first, count])
    bw = config["runs"].get("bw2M") or next(iter(config["runs"].values()))
    stream = bw["stream"]
    hot: dict[str, list[list[int]]] = {}
    for entry in bw["pages"].get("resent") or []:
        for block, kinds in entry.get("blocks", {}).items():
            for first, count in kinds.get("normal", []):
                if block == main and first >= LOW_PAGES:
                    continue  # top-of-RAM pages move with -m: only the fixed low ones
                hot.setdefault(block, []).append([first, count])
    return {
        "recorded_from": config["argv"],
        "machine_type": stream["machine"],
        "configuration_bytes": stream["configuration_bytes"],
        "main_block": main,
        "blocks": [
            [b_name, None if b_name == main else used, None if b_name == main else size]
            for b_name, used, size in blocks
        ],
        "main_start_runs": start_runs,
        "main_end_runs": end_runs,
        "block_runs": {b: r for b, r in runs.items() if b != main and r},
        "hot_pages": hot,
        "device_state_bytes": stream["device_state"]["bytes"],
        "vmdesc_bytes": stream["device_state"]["vmdesc_bytes"],
        "command_bytes": stream.get("command_bytes", 0),
    }


def derive(recordings: Path) -> dict[str, Any]:
    out: dict[str, Any] = {
        "comment": "Derived by tools/derive_machine_layouts.py from QEMU recordings; do not edit",
        "versions": {},
    }
    for path in sorted(recordings.glob("qemu-*.json")):
        version = path.stem.removeprefix("qemu-")
        data = json.loads(path.read_text())
        fams: dict[str, Any] = {}
        for name, family in FAMILIES.items():
            if name in data["configs"]:
                fams[family] = derive_family(name, data["configs"][name])
        out["versions"][version] = {"qemu": data["metadata"]["qemu_version"], "families": fams}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recordings", type=Path, default=RECORDINGS)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    table = derive(args.recordings)
    if not table["versions"]:
        print(f"no recordings in {args.recordings}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(table, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
