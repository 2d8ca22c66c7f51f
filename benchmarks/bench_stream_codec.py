"""Encode + decode throughput of the migration stream codec, in memory (no sockets).

Moves a whole guest (first pass: every page) from a source GuestMemory through
StreamEncoder -> StreamDecoder into a destination GuestMemory, 256 pages per batch, and
prints MB/s for: encode alone, decode+load alone, and both (MB = 10**6 bytes of guest RAM).

    .venv/bin/python benchmarks/bench_stream_codec.py [--size 1G] [--no-malloc-tuning]

Malloc tuning: glibc gives large freed blocks back to the kernel, and on this VM first-touch
page faults cost more than the codec; the runtime should raise M_MMAP_THRESHOLD and
M_TRIM_THRESHOLD at start-up as this script does (see ``tune_malloc``).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import time

from qmp_server.engine.guest import GuestMemory
from qmp_server.engine.sizes import parse_size
from qmp_server.engine.stream import (
    NEED_DATA,
    StreamDecoder,
    StreamEncoder,
    apply_ram_event,
    encode_guest_pages,
    guest_for_header,
)

BATCH = 256


def tune_malloc() -> bool:
    """Keep freed memory in the heap (M_TRIM_THRESHOLD=-1, M_MMAP_THRESHOLD=-3 in mallopt)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    ok_trim = libc.mallopt(-1, 1 << 30)
    ok_mmap = libc.mallopt(-3, 64 << 20)
    return bool(ok_trim and ok_mmap)


def run(size: int, fill: str) -> None:
    src = GuestMemory(size, fill="random" if fill == "random" else "zero", seed=42)
    src.mark_all_dirty()
    pages = src.sync_dirty()
    enc = StreamEncoder()
    dec = StreamDecoder()
    dst: GuestMemory | None = None
    wire_bytes = 0
    t_enc = t_dec = 0.0

    def feed(records: list[bytes]) -> None:
        nonlocal dst
        for rec in records:
            dec.receive_data(rec)
            while (event := dec.next_event()) is not NEED_DATA:
                if dst is None and dec.header is not None:
                    dst = guest_for_header(dec.header)
                    continue
                assert dst is not None
                apply_ram_event(dst, event)

    # Pipelined as a connection would be: encode a batch, decode it, next batch.
    feed([enc.header(ram_size=size, fill=src.fill, seed=src.seed, profile="bench")])
    for start in range(0, pages.size, BATCH):
        t0 = time.perf_counter()
        records = encode_guest_pages(enc, src, pages[start : start + BATCH])
        t1 = time.perf_counter()
        feed(records)
        t2 = time.perf_counter()
        t_enc += t1 - t0
        t_dec += t2 - t1
        wire_bytes += sum(len(r) for r in records)
    feed([enc.complete(src.digest(), ())])
    dec.receive_data(b"")
    assert dec.next_event() is NEED_DATA
    assert dst is not None and dst.digest() == src.digest(), "digest mismatch"
    mb = size / 1e6
    print(
        f"{fill:>6} {size >> 20:>6} MiB: wire {wire_bytes / 1e6:9.1f} MB | "
        f"encode {mb / t_enc:8.0f} MB/s ({t_enc * 1000:6.0f} ms) | "
        f"decode+load {mb / t_dec:8.0f} MB/s ({t_dec * 1000:6.0f} ms) | "
        f"both {mb / (t_enc + t_dec):8.0f} MB/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1G")
    parser.add_argument("--no-malloc-tuning", action="store_true")
    args = parser.parse_args()
    if not args.no_malloc_tuning:
        print("malloc tuned:", tune_malloc())
    size = parse_size(args.size)
    for fill in ("random", "zero"):
        run(size, fill)


if __name__ == "__main__":
    main()
