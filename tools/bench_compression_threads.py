"""Do multifd compressors run in parallel threads?  Prints throughput for 1..N threads.

Why: a multifd channel's compressor runs in that channel's worker thread; the channels only
use several cores if zlib / zstandard release the GIL while they work.  Each thread owns one
compressor (one channel) and compresses the same number of 128-page packets of the ``text``
fill.  Near-linear scaling up to the core count, and a pure-Python thread running at full speed
beside a compressing thread, mean the GIL is released.  No assertions.

    python tools/bench_compression_threads.py [--threads 2] [--packets 64] [--level 1]
"""

from __future__ import annotations

import argparse
import functools
import threading
import time
from collections.abc import Callable

from qmp_server.engine.compression import PAGE_SIZE, Method, MultifdCompressor, MultifdDecompressor
from qmp_server.engine.guest import baseline_words

PACKET_PAGES = 128


def run(method: Method, threads: int, packets: list[bytes], level: int, decompress: bool) -> float:
    """MiB/s of page data over all threads."""
    work: list[list[bytes]] = []
    for _ in range(threads):
        comp = MultifdCompressor(method, level)
        work.append([comp.compress(p, PACKET_PAGES) for p in packets])

    def compress_all() -> None:
        comp = MultifdCompressor(method, level)
        for p in packets:
            comp.compress(p, PACKET_PAGES)

    def decompress_all(k: int) -> None:
        dec = MultifdDecompressor(method)
        for z in work[k]:
            dec.decompress(z, PACKET_PAGES)

    pool = [threading.Thread(target=decompress_all, args=(k,)) if decompress
            else threading.Thread(target=compress_all) for k in range(threads)]  # fmt: skip
    t0 = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    took = time.perf_counter() - t0
    return threads * len(packets) * PACKET_PAGES * PAGE_SIZE / took / (1 << 20)


def compress_packets(comp: MultifdCompressor, packets: list[bytes]) -> None:
    for p in packets:
        comp.compress(p, PACKET_PAGES)


def probe(work: Callable[[], None]) -> float:
    """Iterations per second of a pure-Python loop while ``work`` runs in another thread.

    If ``work`` held the GIL the loop would nearly stop; compared with the loop's speed
    beside a sleeping thread this is the share of the time the GIL was free.
    """
    done = threading.Event()

    def target() -> None:
        work()
        done.set()

    thread = threading.Thread(target=target)
    t0 = time.perf_counter()
    thread.start()
    n = 0
    while not done.is_set():
        n += 1
    took = time.perf_counter() - t0
    thread.join()
    return n / took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--packets", type=int, default=64)
    ap.add_argument("--level", type=int, default=1)
    args = ap.parse_args()
    packets = [baseline_words("text", 1, k * PACKET_PAGES, PACKET_PAGES).tobytes()
               for k in range(args.packets)]  # fmt: skip
    idle = probe(lambda: time.sleep(0.5))
    for method in ("zlib", "zstd"):
        m: Method = method  # type: ignore[assignment]
        comp = MultifdCompressor(m, args.level)
        share = probe(functools.partial(compress_packets, comp, packets)) / idle
        print(f"{method}: a Python thread runs at {share:.0%} of its speed beside a compressor")
    for method in ("zlib", "zstd"):
        for decompress in (False, True):
            what = "decompress" if decompress else "compress"
            base = run(method, 1, packets, args.level, decompress)  # type: ignore[arg-type]
            line = f"{method} {what:10s} 1 thread {base:7.0f} MiB/s"
            for n in range(2, args.threads + 1):
                rate = run(method, n, packets, args.level, decompress)  # type: ignore[arg-type]
                line += f" | {n} threads {rate:7.0f} MiB/s ({rate / base:.2f}x)"
            print(line)


if __name__ == "__main__":
    main()
