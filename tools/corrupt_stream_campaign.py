#!/usr/bin/env python3
"""A long corrupted-stream campaign against the migration stream's decoder and loader
(outside CI; CI runs a short one: tests/hardening/test_stream_campaign.py).

    python tools/corrupt_stream_campaign.py --count 100000 [--seed 1] [--json]

Each input builds a real migration of a small guest with the real encoders
(:mod:`qmp_server.engine.stream`): a precopy stream with several dirty-sync rounds, re-sent
pages, zero pages and XBZRLE deltas, a multifd migration (a main stream and 1-4 channel
streams, compression none, zlib or zstd, zero pages on the main stream or on the channels),
or a ``mapped-ram`` file (three blocks, pages written in place over several rounds, pages
that turned zero, the bitmaps at the end; 4 KiB alignment instead of QEMU's 1 MiB so the
damage lands on data).  It then damages one stream: bits flipped, a byte changed, the stream
cut, bytes inserted, deleted or repeated, a channel dropped, or one channel's stream given
twice; in a mapped-ram file, mostly where the file holds data (stream, bitmaps, pages).  The loader
(the destination's rules, without sockets: decode every stream, apply the page records in a
random interleaving of the channels, check the channels, the checksums and the RAM digest)
must then either refuse it (a ``StreamError`` or ``ValueError``) or end with exactly the
source's guest (a damaged page that a later round re-sent can be harmless).  Anything else
(another exception, or a loaded guest that differs from the source's) is a failure, printed
with its seed.  Prints the figures at the end.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from qmp_server.engine.compression import (  # noqa: E402
    MultifdCompressor,
    MultifdDecompressor,
)
from qmp_server.engine.guest import PAGE_SIZE, GuestMemory  # noqa: E402
from qmp_server.engine.mapped_ram import (  # noqa: E402
    MappedBitmap,
    plan_load,
    plan_region,
)
from qmp_server.engine.multifd import (  # noqa: E402
    ChannelRoster,
    PageGenerations,
    apply_generation_event,
    packet_decoder,
)
from qmp_server.engine.stream import (  # noqa: E402
    MAPPED_BLOCK_BYTES,
    NEED_DATA,
    ChannelHello,
    ChannelSync,
    Complete,
    EndOfStream,
    MappedBlock,
    MultifdSetup,
    StreamDecoder,
    StreamEncoder,
    StreamError,
    StreamHeader,
    SyncMarker,
    apply_ram_event,
    encode_guest_pages_parts,
    guest_for_header,
)
from qmp_server.engine.xbzrle import encode as encode_xbzrle  # noqa: E402

PAGES = 96
SESSION = b"campaign"
PACKET = 16  # pages per compressed packet (small guests: several packets per step)


@dataclass
class Migration:
    """The streams of one migration and the guest they must load into."""

    main: bytes
    channels: list[bytes] = field(default_factory=list)
    expected: str = ""  # the source's RAM digest
    kind: str = "precopy"
    #: a mapped-ram file: the ``(start, end)`` ranges that hold data (the damage's targets)
    data_ranges: list[tuple[int, int]] = field(default_factory=list)


def _change_pages(rng: random.Random, guest: GuestMemory, count: int) -> None:
    for index in rng.sample(range(PAGES), count):
        style = rng.random()
        if style < 0.2:
            guest.write_page(index, bytes(PAGE_SIZE))
        elif style < 0.6:  # a partial write: what XBZRLE is for
            page = bytearray(guest.read_page(index))
            at = rng.randrange(PAGE_SIZE - 64)
            page[at : at + 64] = rng.randbytes(64)
            guest.write_page(index, bytes(page))
        else:
            guest.write_page(index, rng.randbytes(PAGE_SIZE))


def _parts(parts: list[Any]) -> bytes:
    return b"".join(bytes(p) for p in parts)


def build_precopy(rng: random.Random) -> Migration:
    guest = GuestMemory(PAGES * PAGE_SIZE, rng.choice(["zero", "random"]), rng.randrange(1 << 32))
    enc = StreamEncoder()
    out = enc.header(ram_size=guest.size_bytes, fill=guest.fill, seed=guest.seed, profile="7.2")
    held: dict[int, bytes] = {}  # what the destination holds (XBZRLE's reference)
    pages = np.arange(PAGES, dtype=np.int64)
    rounds = rng.randint(2, 4)
    for round_ in range(1, rounds + 1):
        out += enc.sync(round_)
        for index in pages.tolist():
            content = guest.read_page(index)
            if index in held and rng.random() < 0.5:
                delta = encode_xbzrle(held[index], content)
                if delta is not None and 0 < len(delta) <= PAGE_SIZE:
                    out += enc.xbzrle(index, delta)
                    held[index] = content
                    continue
            out += _parts(encode_guest_pages_parts(enc, guest, [index]).parts)
            held[index] = content
        if rng.random() < 0.3:
            out += enc.checkpoint()
        if round_ < rounds:
            _change_pages(rng, guest, rng.randint(1, 12))
            pages = guest.sync_dirty()
    out += enc.complete(guest.digest(), [])
    return Migration(out, expected=guest.digest())


def build_multifd(rng: random.Random) -> Migration:
    guest = GuestMemory(PAGES * PAGE_SIZE, rng.choice(["zero", "random"]), rng.randrange(1 << 32))
    n = rng.randint(1, 4)
    method = rng.choice(["none", "zlib", "zstd"])
    zero_on_main = rng.random() < 0.5
    enc = StreamEncoder()
    main = enc.header(ram_size=guest.size_bytes, fill=guest.fill, seed=guest.seed, profile="7.2")
    main += enc.multifd_setup(n, method, SESSION) + enc.sync(1)
    encs = [StreamEncoder() for _ in range(n)]
    comps = [MultifdCompressor(method, 1) if method != "none" else None for _ in range(n)]
    chans = [e.channel_hello(i, n, SESSION, guest.size_bytes) + e.channel_sync(1)
             for i, e in enumerate(encs)]  # fmt: skip
    pages = np.arange(PAGES, dtype=np.int64)
    rounds = rng.randint(2, 4)
    for round_ in range(1, rounds + 1):
        if round_ > 1:
            main += enc.sync(round_)
            for i, e in enumerate(encs):
                chans[i] += e.channel_sync(round_)
        for off in range(0, pages.size, 24):
            step = pages[off : off + 24]
            zero = guest.zero_mask(step)
            if zero_on_main and zero.any():
                zeros = encode_guest_pages_parts(enc, guest, step[zero], zero=zero[zero])
                main += _parts(zeros.parts)
                step, zero = step[~zero], zero[~zero]
            if not step.size:
                continue
            i = rng.randrange(n)
            comp = comps[i]
            if comp is None:
                chans[i] += _parts(encode_guest_pages_parts(encs[i], guest, step, zero=zero).parts)
                continue
            chans[i] += _parts(
                encode_guest_pages_parts(encs[i], guest, step[zero], zero=zero[zero]).parts
            )
            normal = step[~zero]
            for p in range(0, normal.size, PACKET):
                idx = normal[p : p + PACKET]
                packet = comp.compress(guest.read_page_list(idx), int(idx.size))
                chans[i] += _parts(encs[i].compressed_parts(method, idx, packet))
        if round_ < rounds:
            _change_pages(rng, guest, rng.randint(1, 12))
            pages = guest.sync_dirty()
    main += enc.complete(guest.digest(), [])
    chans = [c + e.channel_end() for c, e in zip(chans, encs, strict=True)]
    return Migration(main, chans, guest.digest(), f"multifd-{n}-{method}")


MAPPED_BLOCKS = (64, 31, 1)  # pages per block (a bitmap word, a partial one, a single page)


def build_mapped(rng: random.Random) -> Migration:
    """A ``mapped-ram`` file: the stream with a gap after each block record for its bitmap and
    pages, pages written in place over several rounds, the bitmaps written at the end."""
    guest = GuestMemory(PAGES * PAGE_SIZE, rng.choice(["zero", "random"]), rng.randrange(1 << 32))
    enc = StreamEncoder()
    image = bytearray(enc.header(ram_size=guest.size_bytes, fill=guest.fill, seed=guest.seed,
                                 profile="10.0", mapped_ram=True))  # fmt: skip
    ranges = [(0, len(image))]
    regions = []
    first = 0
    for pages in MAPPED_BLOCKS:
        at = len(image)
        region = plan_region(first, pages, record_at=at, record_bytes=MAPPED_BLOCK_BYTES,
                             alignment=PAGE_SIZE)  # fmt: skip
        image += enc.mapped_block(region)
        ranges.append((at, len(image)))
        image += bytes(region.next_offset - len(image))
        regions.append(region)
        first += pages
    bitmap = MappedBitmap(PAGES)

    def write(index: int) -> None:
        region = next(r for r in regions if r.first_page <= index < r.first_page + r.pages)
        content = guest.read_page(index)
        zero = content == bytes(PAGE_SIZE)
        bitmap.mark(np.array([index]), np.array([zero]))
        if not zero:
            at = region.page_offset(index)
            image[at : at + PAGE_SIZE] = content
            ranges.append((at, at + PAGE_SIZE))

    rounds = rng.randint(1, 3)
    pages_now: list[int] = list(range(PAGES))
    tail = b""
    for round_ in range(1, rounds + 1):
        tail += enc.sync(round_)
        for index in pages_now:
            write(index)
        if round_ < rounds:
            _change_pages(rng, guest, rng.randint(1, 12))
            pages_now = guest.sync_dirty().tolist()
    for region in regions:
        raw = bitmap.block_bytes(region)
        image[region.bitmap_offset : region.bitmap_offset + len(raw)] = raw
        ranges.append((region.bitmap_offset, region.bitmap_offset + len(raw)))
    tail += enc.complete(guest.digest(), [])
    ranges.append((len(image), len(image) + len(tail)))
    image += tail
    return Migration(bytes(image), expected=guest.digest(), kind="mapped", data_ranges=ranges)


# ---- the loader ---------------------------------------------------------------------------


def _destination_guest(header: StreamHeader) -> GuestMemory:
    """The destination's RAM for a header: its own size, which the header must name (as
    ``runtime/migration_dest`` refuses a length mismatch before it builds anything)."""
    if header.ram_size != PAGES * PAGE_SIZE:
        raise StreamError(f"Length mismatch: {header.ram_size:#x} in != {PAGES * PAGE_SIZE:#x}")
    return guest_for_header(header)


def load_mapped(data: bytes, rng: random.Random) -> GuestMemory:
    """The destination's rules for a mapped-ram file (``runtime/mapped_ram.load_block``
    without threads): decode, and at each block record load its pages and go on after
    them; raises StreamError or ValueError."""
    dec = StreamDecoder()
    guest: GuestMemory | None = None
    complete: Complete | None = None
    pos = 0
    while True:
        step = rng.choice([1, 7, 512, 4096, 1 << 16, len(data)])
        piece = data[pos : pos + step]
        dec.receive_data(piece)
        pos += len(piece)
        while (event := dec.next_event()) is not NEED_DATA:
            if isinstance(event, StreamHeader):
                guest = _destination_guest(event)
            elif isinstance(event, MappedBlock):
                if guest is None:
                    raise StreamError("a block before the header")
                region = event.region
                raw = data[region.bitmap_offset : region.bitmap_offset
                           + (region.pages + 63) // 64 * 8]  # fmt: skip
                plan = plan_load(region, raw, piece_pages=8)
                for start, count in plan.zero_runs:
                    guest.load_zero_pages(start, count)
                for offset, first, count in plan.read_runs:
                    pages = data[offset : offset + count * PAGE_SIZE]
                    if len(pages) != count * PAGE_SIZE:
                        raise StreamError("mapped-ram file truncated")
                    guest.load_pages(first, pages)
                pos = region.next_offset
            elif isinstance(event, Complete):
                complete = event
            elif isinstance(event, EndOfStream):
                if guest is None or complete is None or guest.digest() != complete.ram_digest:
                    raise StreamError("RAM digest mismatch")
                return guest
            elif guest is not None:
                apply_ram_event(guest, event)
        if not piece:
            raise StreamError("stream truncated")


def _events(data: bytes, rng: random.Random, *, channel: bool) -> list[Any]:
    """Every event of ``data``, fed in random pieces (raises StreamError)."""
    dec = StreamDecoder(channel=channel)
    out: list[Any] = []
    pos = 0
    while pos < len(data):
        step = rng.choice([1, 7, 512, 4096, 1 << 16, len(data)])
        dec.receive_data(data[pos : pos + step])
        pos += step
        while (event := dec.next_event()) is not NEED_DATA:
            out.append(event)
    dec.receive_data(b"")
    while (event := dec.next_event()) is not NEED_DATA:
        out.append(event)
    return out


def load(m: Migration, rng: random.Random) -> GuestMemory:
    """The destination's rules without sockets; raises StreamError or ValueError."""
    if m.kind == "mapped":
        return load_mapped(m.main, rng)
    main = _events(m.main, rng, channel=False)
    if not main or main[0].__class__.__name__ != "StreamHeader":
        raise StreamError("no header")
    guest = _destination_guest(main[0])
    setup = next((e for e in main if isinstance(e, MultifdSetup)), None)
    if setup is None:
        if m.channels:
            raise StreamError("channels without a multifd setup")
        complete: Complete | None = None
        for event in main[1:]:
            if apply_ram_event(guest, event):
                continue
            if isinstance(event, Complete):
                complete = event
        if complete is None or guest.digest() != complete.ram_digest:
            raise StreamError("RAM digest mismatch")
        return guest
    roster = ChannelRoster(setup.channels)
    rounds = PageGenerations(guest.page_count)
    queues: list[list[tuple[int, Any]]] = []
    for data in m.channels:
        events = _events(data, rng, channel=True)
        hello = events[0]
        assert isinstance(hello, ChannelHello)
        roster.admit(hello, setup, guest.size_bytes)
        inflate = (
            MultifdDecompressor(setup.compression).decompress
            if setup.compression != "none"
            else None
        )
        decode = packet_decoder(setup.compression, inflate)
        generation = 0
        queue: list[tuple[int, Any]] = []
        for event in events[1:]:
            if isinstance(event, ChannelSync):
                generation = event.generation
            elif not isinstance(event, EndOfStream):
                queue.append((generation, (event, decode)))
        if not isinstance(events[-1], EndOfStream):
            raise StreamError("a channel without its end")
        queues.append(queue)
    if len(roster.seen) != setup.channels:
        raise StreamError("a channel is missing")
    main_round = 0
    complete = None
    main_queue: list[tuple[int, Any]] = []
    for event in main[1:]:
        if isinstance(event, SyncMarker):
            main_round = event.pass_number
        elif isinstance(event, Complete):
            complete = event
        else:
            main_queue.append((main_round, (event, packet_decoder("none", None))))
    queues.append(main_queue)
    # the channels' threads and the main stream, in a random interleaving
    while any(queues):
        queue = rng.choice([q for q in queues if q])
        generation, (event, decode) = queue.pop(0)
        apply_generation_event(guest, rounds, generation, event, decode)
    if complete is None or guest.digest() != complete.ram_digest:
        raise StreamError("RAM digest mismatch")
    return guest


# ---- damage -------------------------------------------------------------------------------


def damage(m: Migration, rng: random.Random) -> str:
    """Damage one stream of ``m`` in place; the kind of damage."""
    streams = [m.main, *m.channels]
    which = rng.randrange(len(streams))
    data = bytearray(streams[which])
    kind = rng.choice(["flip", "flip3", "byte", "cut", "insert", "delete", "repeat"]
                      + (["drop-channel", "twin-channel"] if m.channels else []))  # fmt: skip
    if kind == "drop-channel":
        del m.channels[rng.randrange(len(m.channels))]
        return kind
    if kind == "twin-channel":
        j = rng.randrange(len(m.channels))
        if len(m.channels) > 1:
            m.channels[rng.choice([k for k in range(len(m.channels)) if k != j])] = m.channels[j]
        else:
            m.channels.append(m.channels[j])
        return kind
    at = rng.randrange(len(data))
    if m.data_ranges and rng.random() < 0.9:  # a mapped-ram file: where it holds data
        start, end = rng.choice(m.data_ranges)
        at = rng.randrange(start, end)
    if kind in ("flip", "flip3"):
        for n in range(1 if kind == "flip" else 3):
            bit = at * 8 + rng.randrange(8) if n == 0 else rng.randrange(len(data) * 8)
            data[bit // 8] ^= 1 << (bit % 8)
    elif kind == "byte":
        data[at] = (data[at] + rng.randrange(1, 256)) % 256
    elif kind == "cut":
        del data[at:]
    elif kind == "insert":
        data[at:at] = rng.randbytes(rng.randint(1, 16))
    elif kind == "delete":
        del data[at : at + rng.randint(1, 64)]
    else:
        data[at:at] = data[at : at + rng.randint(1, 64)]
    if which == 0:
        m.main = bytes(data)
    else:
        m.channels[which - 1] = bytes(data)
    return kind


def run(count: int, seed: int) -> dict[str, Any]:
    outcomes: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    failures: list[str] = []
    streams = 0
    nbytes = 0
    start = time.monotonic()
    for i in range(count):
        rng = random.Random(seed * 1_000_003 + i)
        pick = rng.random()
        m = build_multifd(rng) if pick < 0.5 else build_mapped(rng) if pick < 0.7 else (
            build_precopy(rng)
        )
        if i < 50:  # the undamaged migration must load
            got = load(Migration(m.main, list(m.channels), m.expected, m.kind), rng)
            assert got.digest() == m.expected
        kind = damage(m, rng)
        kinds[f"{m.kind.split('-')[0]}:{kind}"] += 1
        streams += 1 + len(m.channels)
        nbytes += len(m.main) + sum(len(c) for c in m.channels)
        try:
            guest = load(m, rng)
        except (StreamError, ValueError):
            outcomes["refused"] += 1
            continue
        except Exception as err:
            outcomes["crash"] += 1
            failures.append(f"input {i} (seed {seed}): {kind} on {m.kind}: {err!r}")
            continue
        if guest.digest() == m.expected:
            outcomes["same guest"] += 1
        else:
            outcomes["WRONG GUEST"] += 1
            failures.append(f"input {i} (seed {seed}): {kind} on {m.kind}: a different guest")
    return {
        "inputs": count,
        "seed": seed,
        "streams": streams,
        "bytes": nbytes,
        "outcomes": dict(outcomes),
        "damage": dict(sorted(kinds.items())),
        "failures": failures[:20],
        "failed": len(failures),
        "seconds": round(time.monotonic() - start, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    result = run(args.count, args.seed)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['inputs']:,} damaged migrations ({result['streams']:,} streams, "
              f"{result['bytes']:,} bytes) in {result['seconds']} s, seed {result['seed']}")
        for name, n in sorted(result["outcomes"].items()):
            print(f"  {name}: {n:,}")
        print("  damage: " + ", ".join(f"{k} {v:,}" for k, v in result["damage"].items()))
        for line in result["failures"]:
            print("  FAILURE " + line)
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
