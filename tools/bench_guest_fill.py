"""Build 1 GiB of ``random`` and ``text`` baseline pages and print the speed (no assertions).

Why: the text fill must not make the source slower than the random one; this prints both,
with the C fast path and (``--numpy``) without it.

    python tools/bench_guest_fill.py [--gib 1] [--numpy]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from qmp_server.engine.guest import WORDS_PER_PAGE, _RandomBaseline
from qmp_server.engine.text_fill import TextBaseline

BATCH = 256


def measure(name: str, gen: _RandomBaseline | TextBaseline, pages: int) -> None:
    words = np.empty((BATCH, WORDS_PER_PAGE), dtype=np.uint64)
    t0 = time.perf_counter()
    for start in range(0, pages, BATCH):
        words = gen.run(start, BATCH)
    built = time.perf_counter() - t0
    t0 = time.perf_counter()
    for start in range(0, pages, BATCH):
        gen.compare_run(start, words)
    compared = time.perf_counter() - t0
    gib = pages * 4096 / (1 << 30)
    print(f"{name:14s} build {gib / built:6.2f} GiB/s   compare {gib / compared:6.2f} GiB/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--numpy", action="store_true", help="also time the numpy reference")
    args = ap.parse_args()
    pages = int(args.gib * (1 << 30)) // 4096
    measure("random (C)", _RandomBaseline(1), pages)
    measure("text (C)", TextBaseline(1), pages)
    if args.numpy:
        measure("random (numpy)", _RandomBaseline(1, accelerated=False), pages)
        measure("text (numpy)", TextBaseline(1, accelerated=False), pages)


if __name__ == "__main__":
    main()
