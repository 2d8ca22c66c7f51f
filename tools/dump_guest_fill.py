"""Write a guest fill's baseline (the RAM content at boot) to a file.

Why: a benchmark against real QEMU needs QEMU's RAM to hold the same bytes as qmp-server's
guest, e.g. to compare compression ratios.  QEMU maps the file as its RAM with

    qemu-system-x86_64 -m 1G -object memory-backend-file,id=ram0,size=1G,mem-path=OUT,share=off \\
        -machine pc,memory-backend=ram0 ...

(checked with QEMU 7.2 paused with ``-S``: ``xp`` at guest-physical address A shows the file's
bytes at offset A), while ``qmp-server -m 1G --guest-fill text`` holds the same bytes (its
guest seed is 1, this tool's default ``--seed``).

    python tools/dump_guest_fill.py --fill text --size 1G /tmp/text-1g.ram
"""

from __future__ import annotations

import argparse
import sys
import time

from qmp_server.engine.guest import PAGE_SIZE, Fill, baseline_words
from qmp_server.engine.sizes import parse_size

BATCH_PAGES = 4096  # 16 MiB per write


def dump(fill: Fill, size: int, seed: int, out: str) -> float:
    """Write ``size`` bytes of the ``fill`` baseline to ``out``; returns the seconds taken."""
    pages = size // PAGE_SIZE
    t0 = time.perf_counter()
    with open(out, "wb") as f:
        for start in range(0, pages, BATCH_PAGES):
            count = min(BATCH_PAGES, pages - start)
            f.write(baseline_words(fill, seed, start, count).tobytes())
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fill", choices=("text", "random", "zero"), required=True)
    ap.add_argument("--size", required=True, help="RAM size, QEMU syntax (1G, 512M, ...)")
    ap.add_argument("--seed", type=int, default=1, help="guest seed (qmp-server uses 1)")
    ap.add_argument("out")
    args = ap.parse_args()
    try:
        size = parse_size(args.size, "M")
    except ValueError as exc:
        print(f"dump_guest_fill: {exc}", file=sys.stderr)
        return 2
    if size % PAGE_SIZE:
        print("dump_guest_fill: the size must be a multiple of 4 KiB", file=sys.stderr)
        return 2
    took = dump(args.fill, size, args.seed, args.out)
    print(f"{args.out}: {size} bytes of {args.fill} (seed {args.seed}) in {took:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
