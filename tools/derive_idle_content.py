#!/usr/bin/env python3
"""Reduce the idle-content recordings to the table qmp-server loads (numbers only).

    python tools/derive_idle_content.py

Reads ``tests/engine/fixtures/idle_content/qemu-{7.2,10.0}.json`` (``tools/
record_idle_content.py``) and writes ``qmp_server/data/idle_page_content.json``: per QEMU
version and machine family, per firmware page of the layout (``qmp_server/engine/machine.py``,
``firmware_order``: blocks as recorded, pages ascending), how many random bytes and how many
token bytes it holds (so that it compresses alone with zlib level 1 and with zstd level 1 to
its recorded sizes) and the firmware page it copies (``qmp_server/engine/idle_fill.py``).

A page is a copy when QEMU's pages in one zstd stream cost it less than ``COPY_RATIO`` of its
own size (SeaBIOS's shadowed BIOS, relocated code and ACPI tables: 0 % to 20 %; other pages
stay above 50 %); it copies the earlier page that helps zstd most as a dictionary, which must
bring it under ``SOURCE_RATIO`` (1 % for a page-aligned copy; about 45 % for 7.2's relocated
code, which straddles two pages).  A page that repeats another but that the stream did not
find stays its own: the level-1 match finder forgets what lies too far back (in QEMU 10.0's
``pc``, ``pc.bios`` pages 41-44 repeat RAM pages 233-236 but cost their full size).
A page of the layout that the recording lacks gets the median sizes.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import zlib  # noqa: E402
from functools import cache  # noqa: E402

import numpy as np  # noqa: E402
import zstandard  # noqa: E402

from qmp_server.engine.idle_fill import PAGE_SIZE, shape_page  # noqa: E402
from qmp_server.engine.machine import layout_for  # noqa: E402
from qmp_server.profiles import resolve_profile  # noqa: E402

FIXTURES = REPO / "tests" / "engine" / "fixtures" / "idle_content"
OUT = REPO / "qmp_server" / "data" / "idle_page_content.json"
PROFILES = {"7.2": "7.2", "10.0": "10.0"}
COPY_RATIO = 0.25
SOURCE_RATIO = 0.6


_SAMPLE = np.random.default_rng(0).integers(0, 256, PAGE_SIZE, dtype=np.uint8)


@cache
def _measure(keep: int, tokens: int) -> tuple[int, int]:
    """(zlib-1, zstd-1) size of a page of that shape, on a fixed sample ``R`` (the sizes
    hardly depend on which random bytes they are)."""
    raw = _SAMPLE.copy()
    shape_page(raw, keep, tokens)
    page = raw.tobytes()
    return len(zlib.compress(page, 1)), len(zstandard.ZstdCompressor(level=1).compress(page))


def _keep_for(zlib_size: int, tokens: int) -> int:
    """The most random bytes (besides ``tokens``) whose page zlib-compresses to at most
    ``zlib_size`` (at least 8)."""
    lo, hi = 8, PAGE_SIZE - tokens
    if hi < lo:
        return max(0, hi)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _measure(mid, tokens)[0] <= zlib_size:
            lo = mid
        else:
            hi = mid - 1
    return lo


def shape_for(zlib_size: int, zstd_size: int) -> tuple[int, int]:
    """``(keep, tokens)`` whose page compresses to about the recorded sizes: tokens raise
    the zstd size at a given zlib size, so bisect on them."""
    lo, hi = 0, PAGE_SIZE - 8
    while lo < hi:  # the most tokens that still leave room for the zlib size
        mid = (lo + hi + 1) // 2
        if _measure(8, mid)[0] <= zlib_size:
            lo = mid
        else:
            hi = mid - 1
    room = lo
    lo, hi = 0, room
    while lo < hi:  # ... and that leave enough random bytes to reach it
        mid = (lo + hi + 1) // 2
        if _measure(PAGE_SIZE - mid, mid)[0] >= zlib_size - 8:
            lo = mid
        else:
            hi = mid - 1
    lo, hi = 0, lo
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _measure(_keep_for(zlib_size, mid), mid)[1] <= zstd_size:
            lo = mid
        else:
            hi = mid - 1
    return _keep_for(zlib_size, lo), lo


def _argv_layout(version: str, argv: str) -> Any:
    args = shlex.split(argv)
    machine = args[args.index("-M") + 1]
    memory = int(args[args.index("-m") + 1]) << 20
    return layout_for(
        resolve_profile(PROFILES[version]), machine, memory, defaults="-nodefaults" not in args
    )


def derive(version: str, cfg: dict[str, Any]) -> dict[str, Any]:
    layout = _argv_layout(version, cfg["argv"])
    by_key: dict[tuple[str, int], int] = {}
    rows = cfg["pages"]
    for i, row in enumerate(rows):
        by_key[(row[0], row[1])] = i
    flat_to_key: list[tuple[str, int]] = []
    for page in layout.firmware_order.tolist():
        block = next(b for b in layout.blocks if b.first_page <= page < b.first_page + b.pages)
        flat_to_key.append((block.name, page - block.first_page))
    by_size = sorted(rows, key=lambda r: r[2])
    median = (by_size[len(rows) // 2][2], by_size[len(rows) // 2][4]) if rows else (PAGE_SIZE,) * 2
    ordinal = {key: k for k, key in enumerate(flat_to_key)}
    keep: list[int] = []
    tokens: list[int] = []
    source: list[int] = []
    missing = 0
    for k, key in enumerate(flat_to_key):
        i = by_key.get(key)
        if i is None:
            missing += 1
            k_t = shape_for(*median)
            keep.append(k_t[0])
            tokens.append(k_t[1])
            source.append(k)
            continue
        row = rows[i]
        k_t = shape_for(row[2], row[4])
        keep.append(k_t[0])
        tokens.append(k_t[1])
        src = k
        j, with_dict, in_stream = row[7], row[8], row[10]
        if j >= 0 and with_dict < SOURCE_RATIO * row[4] and in_stream < COPY_RATIO * row[4]:
            other = ordinal.get((rows[j][0], rows[j][1]))
            if other is not None and other != k:
                src = source[other] if other < k else other
        source.append(src)
    # a copy repeats its source whole: same kept length; sources are never copies themselves
    for k, s in enumerate(source):
        if s != k:
            if source[s] != s:
                source[k] = source[s]
            keep[k], tokens[k] = keep[source[k]], tokens[source[k]]
    return {
        "recorded_from": cfg["argv"],
        "recorded_pages": len(rows),
        "missing": missing,
        "keep": keep,
        "tokens": tokens,
        "source": source,
    }


def main() -> int:
    doc: dict[str, Any] = {
        "comment": "Derived by tools/derive_idle_content.py from tools/record_idle_content.py "
        "recordings; do not edit",
        "versions": {},
    }
    for version in ("7.2", "10.0"):
        path = FIXTURES / f"qemu-{version}.json"
        if not path.exists():
            continue
        rec = json.loads(path.read_text())
        fams: dict[str, Any] = {}
        for cfg in rec["configs"].values():
            if cfg.get("family"):
                fams[cfg["family"]] = derive(version, cfg)
                d = fams[cfg["family"]]
                copies = sum(1 for k, s in enumerate(d["source"]) if s != k)
                print(f"{version} {cfg['family']}: {len(d['keep'])} pages, {copies} copies, "
                      f"{d['missing']} not recorded", file=sys.stderr)  # fmt: skip
        doc["versions"][version] = {"qemu": rec["metadata"]["qemu_version"], **fams}
    text = json.dumps(doc, separators=(",", ":"))
    OUT.write_text(text.replace(',"', ',\n"') + "\n")
    print(f"wrote {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
