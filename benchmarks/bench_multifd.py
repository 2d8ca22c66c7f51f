"""Multifd and compression benchmarks: qmp-server against real QEMU 7.2 in the same run.

(a) Throughput: a 1 GiB guest of random content, bandwidth unlimited, one channel (plain
    precopy) and ``multifd`` with 2 channels (``--channels`` to change), qmp-server and QEMU
    in interleaved rounds.
    With ``--floor``, each round also moves the same bytes over as many bare loopback
    connections (``benchmarks/socket_floor.py``: no pages built or compared, no protocol),
    the bound no migration here can beat.
(b) Compression: a 1 GiB guest of compressible (text-like) content over a link capped at
    50 MB/s (``max-bandwidth``), without compression and with multifd zlib and zstd (2
    channels, default levels); the compression ratio is the RAM's size over the bytes sent.

How QEMU gets the same content: the source's RAM is a ``memory-backend-file`` on a file
holding qmp-server's own baseline for that fill and seed (``tools/dump_guest_fill.py``,
generated once in /dev/shm), so both send the very same bytes; the guest is stopped (``-S``:
only the transfer is measured); both destinations are ``-incoming defer`` so the
capabilities and parameters are set before they listen, as ``multifd`` requires.

The link of (b) is a TCP proxy in this process that lets 50 MB/s through from the source to
the destination, shared by all the connections of a migration (``max-bandwidth`` would not
do: QEMU 7.2 charges multifd packets to it uncompressed, so compression could not win
there); it counts the bytes that really crossed, and the ratio is the RAM size over them.

The figure compared is ``total-time`` from the source's ``query-migrate``.

    .venv/bin/python benchmarks/bench_multifd.py [--rounds N] [--only throughput|compression]
        [--channels N] [--no-qemu] [--floor] [--size 1G] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench_migration import Proc, free_port, migrate, qmp_server_argv

ROOT = Path(__file__).resolve().parent.parent
QEMU = shutil.which("qemu-system-x86_64")
SEED = 1
#: the compression case's link (max-bandwidth, bytes/s)
LINK = 50_000_000


def fill_file(fill: str, size: str) -> str:
    """qmp-server's baseline of ``fill`` as a file (for QEMU's memory-backend-file)."""
    path = f"/dev/shm/qmp-bench-{fill}-{size}-{SEED}"
    if not os.path.exists(path):
        subprocess.run(
            [sys.executable, str(ROOT / "tools" / "dump_guest_fill.py"), "--fill", fill,
             "--size", size, "--seed", str(SEED), path + ".tmp"],
            check=True,
        )  # fmt: skip
        os.replace(path + ".tmp", path)
    return path


def _setup(channels: int, compression: str | None) -> tuple[dict[str, bool], dict[str, Any]]:
    caps: dict[str, bool] = {"events": True}
    params: dict[str, Any] = {}
    if channels > 1 or compression:
        caps["multifd"] = True
        params["multifd-channels"] = channels
    if compression:
        params["multifd-compression"] = compression
    return caps, params


class Link:
    """A TCP proxy standing for a network link of ``rate`` bytes/s, shared by every
    connection through it (the main channel and the multifd channels), in the source to
    destination direction; the return path is not limited.  It counts the bytes that
    really crossed: what compression saved, whatever the emulator reports."""

    def __init__(self, rate: int, target_port: int) -> None:
        self.rate = rate
        self.target_port = target_port
        self.bytes = 0
        self._next = 0.0
        self._server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        await asyncio.gather(self._pump(reader, up_w, limited=True),
                             self._pump(up_r, writer, limited=False),
                             return_exceptions=True)  # fmt: skip

    async def _pump(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, limited: bool) -> None:
        loop = asyncio.get_running_loop()
        try:
            while data := await r.read(256 << 10):
                if limited:
                    self.bytes += len(data)
                    now = loop.time()
                    self._next = max(self._next, now) + len(data) / self.rate
                    if self._next > now:
                        await asyncio.sleep(self._next - now)
                w.write(data)
                await w.drain()
        finally:
            w.close()


async def run_case(
    kind: str, tmp: str, size: str, fill: str, channels: int, compression: str | None,
    link: int | None,
) -> dict[str, Any]:  # fmt: skip
    """One migration of ``kind`` (qmp-server or qemu); query-migrate of the source (and
    ``link-bytes``: what crossed the link, when there is one)."""
    if kind == "qemu":
        assert QEMU is not None
        base = [QEMU, "-machine", "pc,memory-backend=ram", "-accel", "tcg", "-m", size,
                "-nodefaults", "-display", "none", "-S"]  # fmt: skip
        path = fill_file(fill, size)
        src_ram = f"memory-backend-file,id=ram,size={size},mem-path={path},share=on"
        dst_ram = f"memory-backend-ram,id=ram,size={size},prealloc=on"
        src = Proc([*base, "-object", src_ram], f"{tmp}/qsrc.sock")
        dst = Proc([*base, "-object", dst_ram, "-incoming", "defer"], f"{tmp}/qdst.sock")
    else:
        common = ["-machine", "pc", "-m", size, "-nodefaults", "-S", "--guest-fill", fill]
        src = Proc(qmp_server_argv(*common), f"{tmp}/src.sock")
        dst = Proc(qmp_server_argv(*common, "-incoming", "defer"), f"{tmp}/dst.sock")
    try:
        await src.connect()
        await dst.connect()
        caps, params = _setup(channels, compression)
        for side in (src, dst):
            if params:
                await side.run("migrate-set-parameters", params)
        port = free_port()
        uri = f"tcp:127.0.0.1:{port}"
        capabilities = [{"capability": k, "state": v} for k, v in caps.items()]
        await dst.run("migrate-set-capabilities", {"capabilities": capabilities})
        await dst.run("migrate-incoming", {"uri": uri})
        proxy = None
        if link is not None:
            proxy = Link(link, port)
            await proxy.start()
            uri = f"tcp:127.0.0.1:{proxy.port}"
        try:
            info = await migrate(src, dst, uri, caps=caps, incoming=False)
        finally:
            if proxy is not None:
                await proxy.close()
        if proxy is not None:
            info["link-bytes"] = proxy.bytes
        if kind != "qemu":
            a, b = await src.run("x-query-guest-digest"), await dst.run("x-query-guest-digest")
            if a != b:
                raise RuntimeError("digests differ after migration")
        return info
    finally:
        await src.close()
        await dst.close()


def socket_floor(connections: int, size: str) -> dict[str, Any]:
    """benchmarks/socket_floor.py in a process of its own, as a query-migrate look-alike."""
    out = subprocess.run(
        [sys.executable, str(Path(__file__).parent / "socket_floor.py"), "--connections",
         str(connections), "--size", size, "--json"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    floor = json.loads(out)
    return {"total-time": floor["ms"], "ram": {}, "cpu-s": {"source": floor["cpu-s"],
                                                          "destination": 0.0}}  # fmt: skip


def _row(runs: list[dict[str, Any]], size_bytes: int) -> dict[str, Any]:
    times = [r["total-time"] for r in runs]
    ram = runs[0]["ram"]
    sent = runs[0].get("link-bytes") or ram.get("transferred", 0)
    return {
        "total-time-ms": statistics.median(times),
        "rounds-ms": times,
        "GB/s": round(size_bytes / statistics.median(times) / 1e6, 2),
        "cpu-s": round(statistics.median(
            r["cpu-s"]["source"] + r["cpu-s"]["destination"] for r in runs), 2),
        "transferred": sent,
        "multifd-bytes": ram.get("multifd-bytes", 0),
        "ratio": round(size_bytes / sent, 2) if sent else None,
        "link-bytes": runs[0].get("link-bytes"),
    }  # fmt: skip


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    size_bytes = int(args.size[:-1]) << {"M": 20, "G": 30}[args.size[-1]]
    kinds = ["qmp-server"] + (["qemu"] if QEMU and not args.no_qemu else [])
    cases: list[tuple[str, str, int, str | None, int | None]] = []
    if args.only in (None, "throughput"):
        cases += [("random 1 channel", "random", 1, None, None),
                  (f"random multifd {args.channels}", "random", args.channels, None, None)]
    if args.only in (None, "compression"):
        cases += [("text 50MB/s none", "text", 1, None, LINK),
                  ("text 50MB/s zlib", "text", args.channels, "zlib", LINK),
                  ("text 50MB/s zstd", "text", args.channels, "zstd", LINK)]  # fmt: skip
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-multifd-") as tmp:
        for _ in range(args.rounds):
            for name, fill, channels, comp, bw in cases:
                for kind in kinds:
                    info = await run_case(kind, tmp, args.size, fill, channels, comp, bw)
                    runs.setdefault((name, kind), []).append(info)
                if args.floor and bw is None:
                    runs.setdefault((name, "floor"), []).append(socket_floor(channels, args.size))
    return {
        "size": args.size,
        "rounds": args.rounds,
        "results": {f"{n} | {k}": _row(r, size_bytes) for (n, k), r in runs.items()},
    }


def print_table(result: dict[str, Any]) -> None:
    print(f"{result['size']} guest; medians of {result['rounds']} round(s); total-time from "
          "query-migrate; ratio = RAM size / bytes sent (over the link if any)")  # fmt: skip
    print(f"    {'case':<22} {'target':<11} {'total-time':>10} {'GB/s':>6} {'CPU s':>6} "
          f"{'sent':>13} {'ratio':>6}")  # fmt: skip
    res = result["results"]
    for key, row in res.items():
        case, kind = key.split(" | ")
        print(f"    {case:<22} {kind:<11} {row['total-time-ms']:>8} ms {row['GB/s']:>6} "
              f"{row['cpu-s']:>6} {row['transferred']:>13,} {row['ratio'] or '':>6}")
    for key, row in res.items():
        case, kind = key.split(" | ")
        other = res.get(f"{case} | qemu")
        if kind == "qmp-server" and other:
            speed = other["total-time-ms"] / row["total-time-ms"]
            print(f"    {case}: qmp-server {speed:.2f}x QEMU's speed")
        floor = res.get(f"{case} | floor")
        if kind in ("qmp-server", "qemu") and floor:
            share = floor["total-time-ms"] / row["total-time-ms"]
            print(f"    {case}: {kind} at {share:.2f}x the socket floor's speed")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", choices=["throughput", "compression"])
    ap.add_argument("--channels", type=int, default=2)
    ap.add_argument("--size", default="1G")
    ap.add_argument("--no-qemu", action="store_true")
    ap.add_argument("--floor", action="store_true",
                    help="also the socket floor (benchmarks/socket_floor.py) of each case")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    result = asyncio.run(bench(args))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)


if __name__ == "__main__":
    main()
