#!/usr/bin/env python3
"""Record how the non-zero pages of an idle SeaBIOS guest compress (numbers only, no bytes).

    python tools/record_idle_content.py [--chroot /srv/trixie] [--only pc-64 ...] [--out FILE]

For each command line (the guest-layout matrix of ``tools/record_guest_layout.py``), this boots
QEMU exactly as that recorder does, lets the guest idle 3 s, migrates to a file, and reads the
page contents out of QEMU's stream (``tools/qemu_stream.py``).  For every non-zero page of the
first round over RAM, in stream order, it records numbers only: the page's own zlib stream
size at level 1 (what 7.2's ``compress`` sends per page) and 6, its zstd frame size at level 1
(multifd's default), how many distinct byte values and zero bytes it has.  It also records the
size of the pages compressed in one zlib / zstd stream at level 1 (the context a multifd
channel keeps between pages).  The page bytes themselves are never written anywhere.

The result goes to ``tests/engine/fixtures/idle_content/qemu-<version>.json``; the per-page
zlib-1 sizes are what ``tools/derive_idle_sizes.py`` ships in
``qmp_server/data/idle_page_sizes.json``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import shlex
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any

import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent))

import qemu_stream as qs
import record_guest_layout as rgl
from _recording import REPO, add_target_options, open_target
from conformance import _harness as h  # (tests/ is on sys.path via _recording)
from derive_machine_layouts import FAMILIES as LAYOUT_FAMILIES

RECORDER_VERSION = "1.0"
OUT_DIR = REPO / "tests" / "engine" / "fixtures" / "idle_content"
#: guest-layout configuration -> machine family (derive_machine_layouts; -M none has no firmware)
FAMILIES = {name: family for name, family in LAYOUT_FAMILIES.items() if name != "none-64"}
IDLE_S = 3.0


def _stream_sizes(pages: list[bytes]) -> dict[str, int]:
    """The pages through one compression stream each (a multifd channel's context)."""
    z = zlib.compressobj(1)
    zbytes = sum(len(z.compress(p)) for p in pages) + len(z.flush(zlib.Z_SYNC_FLUSH))
    c = zstandard.ZstdCompressor(level=1).compressobj()
    sbytes = sum(len(c.compress(p)) for p in pages) + len(
        c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    )
    return {"zlib1": zbytes, "zstd1": sbytes}


def in_stream(pages: list[bytes]) -> list[list[int]]:
    """Per page: [zlib-1, zstd-1] bytes it adds to one stream of all the pages in stream
    order, each page flushed (what it costs after the pages before it)."""
    z = zlib.compressobj(1)
    c = zstandard.ZstdCompressor(level=1).compressobj()
    return [
        [
            len(z.compress(p)) + len(z.flush(zlib.Z_SYNC_FLUSH)),
            len(c.compress(p)) + len(c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)),
        ]
        for p in pages
    ]


def page_facts(page: bytes) -> list[int]:
    """[zlib-1, zlib-6, zstd-1, distinct byte values, zero bytes] of one page."""
    return [
        len(zlib.compress(page, 1)),
        len(zlib.compress(page, 6)),
        len(zstandard.ZstdCompressor(level=1).compress(page)),
        len(set(page)),
        page.count(0),
    ]


def copy_of(pages: list[bytes]) -> list[list[int]]:
    """Per page: [the earlier page (stream order) that helps zstd most, the page's zstd-1 size
    with that page as dictionary] ([-1, own size] for the first page): SeaBIOS copies
    itself (the shadowed BIOS below 1 MiB, its relocated code, the ACPI tables), and a
    channel's long zstd window finds those copies."""
    dicts = [
        zstandard.ZstdCompressor(
            level=1,
            dict_data=zstandard.ZstdCompressionDict(p, dict_type=zstandard.DICT_TYPE_RAWCONTENT),
        )
        for p in pages
    ]
    out: list[list[int]] = []
    for i, page in enumerate(pages):
        best = [-1, len(zstandard.ZstdCompressor(level=1).compress(page))]
        for j in range(i):
            n = len(dicts[j].compress(page))
            if n < best[1]:
                best = [j, n]
        out.append(best)
    return out


def record(target: Any, name: str) -> dict[str, Any]:
    argv, what = rgl.MATRIX[name]
    with tempfile.TemporaryDirectory() as d:
        keep = os.path.join(d, "stream.bin")
        res = rgl.run_one(target, argv, IDLE_S, None, keep)
        with open(keep, "rb") as f:
            data = f.read()
    got: list[tuple[str, int, bytes]] = []
    qs.parse(data, got)
    seen: set[tuple[str, int]] = set()
    first: list[tuple[str, int, bytes]] = []
    for block, page, content in got:
        if (block, page) in seen:
            break  # the first round ends where a page comes again
        seen.add((block, page))
        first.append((block, page, content))
    pages = [c for _, _, c in first]
    copies = copy_of(pages)
    costs = in_stream(pages)
    facts = [
        [b, p, *page_facts(c), *cp, *cost]
        for (b, p, c), cp, cost in zip(first, copies, costs, strict=True)
    ]
    return {
        "what": what,
        "argv": shlex.join(argv),
        "family": FAMILIES.get(name),
        "normal_pages": len(first),
        "query_migrate": res.get("query_migrate"),
        "pages": facts,
        "sum_own_streams": {
            "zlib1": sum(f[2] for f in facts),
            "zlib6": sum(f[3] for f in facts),
            "zstd1": sum(f[4] for f in facts),
        },
        "one_stream": _stream_sizes(pages),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_target_options(ap)
    ap.add_argument("--only", nargs="*", help="configuration names (default: all)")
    a = ap.parse_args()
    opened = open_target(a)
    if opened is None:
        return 2
    target, version = opened
    out = Path(a.out) if a.out else OUT_DIR / f"qemu-{version}.json"
    doc: dict[str, Any] = {
        "metadata": {
            "qemu_version": h.qemu_version_line(a.qemu, target),
            "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "recorder": "tools/record_idle_content.py",
            "recorder_version": RECORDER_VERSION,
            "command": shlex.join([sys.argv[0], *sys.argv[1:]]),
            "idle_s": IDLE_S,
            "zlib": zlib.ZLIB_RUNTIME_VERSION,
            "zstd": zstandard.ZSTD_VERSION,
            "pages": "[block, page, zlib-1 size, zlib-6 size, zstd-1 size, distinct byte "
            "values, zero bytes, best earlier page (index in this list, -1: none), zstd-1 "
            "size with that page as dictionary, zlib-1 and zstd-1 bytes added to one stream "
            "of the pages] per non-zero page of the first round, stream order",
        },
        "configs": {},
    }
    for name in a.only or list(FAMILIES):
        doc["configs"][name] = record(target, name)
        c = doc["configs"][name]
        print(f"[{version}] {name}: {c['normal_pages']} pages, own {c['sum_own_streams']}, "
              f"one stream {c['one_stream']}", file=sys.stderr, flush=True)  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        f.write(rgl.dump_compact(doc) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
