#!/usr/bin/env python3
"""Measure what QEMU writes with the ``mapped-ram`` capability over a ``file:`` URI.

    python tools/record_mapped_ram_layout.py [--chroot /srv/trixie]
        [--machine pc --machine q35] [--mem 64 --mem 128] [--multifd off|on|both]
        [--max-bandwidth BYTES] [--offset N] [--prefill BYTES] [--direct-io]
        [--dir DIR] [--delay S] [--load] [--strace-src] [--keep] [--json]

For every combination of machine, memory size and multifd (off/on) it starts one
idle SeaBIOS guest (``-accel tcg -nodefaults -display none``), turns on ``events``,
``mapped-ram`` (and ``multifd``), optionally sets ``direct-io`` and ``max-bandwidth``,
waits ``--delay`` seconds, migrates to ``file:DIR/mig-*.img[,offset=N]`` (DIR: a fresh
directory under the chroot's /tmp unless ``--dir``) and waits for ``completed``.  Then
it reports:

* the source's final ``query-migrate`` ``ram`` counters and its events;
* the file: apparent size (``st_size``), allocated bytes (``st_blocks * 512``) and
  ``du -k``, and the data extents found with ``SEEK_DATA`` / ``SEEK_HOLE``;
* the RAM block list as found in the file (our own reader, below): per block the
  offset of its record, name, used length, the four header fields that follow it
  (version, page size, bitmap offset, pages offset), the bits set in its bitmap,
  the pages lying in data extents and, of those, the non-zero ones whose bit is clear
  (written in an earlier pass, zero at the end); where the stream goes on after the
  last block's pages region and how many bytes follow;
* the arithmetic of the counters (bitmap bytes, ``precopy + downtime - normal*4096``,
  ``transferred - multifd-bytes``).

``--prefill BYTES`` writes a file of that many 0xAA bytes first (is it truncated, is
the part before ``offset`` kept?).  ``--strace-src`` traces the source's ``openat`` and
``pwrite`` calls with the host's strace (which opens use ``O_DIRECT``?).  ``--load``
then starts a destination (``-incoming defer``, same capabilities, ``-trace
enable=multifd_recv*``), traces its positional reads per thread with strace, loads the
file and reports its ``query-migrate``, ``query-status``, the reads per thread (the main
thread is the process id) and the multifd receive trace lines per event.

Stream format facts used by the reader (public format, own code): the file starts with
be32 ``QEVM``, be32 3; the RAM setup section is a START record (byte 0x01, be32
section id, one length byte + ``ram``, be32 instance, be32 version) followed by be64
``total | 0x04`` (MEM_SIZE), then per block one length byte + name and be64 used
length; with ``mapped-ram`` each block's record is followed by a packed 28-byte header
(be32 version, be64 page size, be64 bitmap offset, be64 pages offset), and the stream
itself jumps to ``pages offset + used length`` before the next block.  The bitmap (host
``unsigned long`` words, little-endian here) is written at the bitmap offset at the end.

Nothing here is an emulation; the output is for docs/multifd-facts.md (section 13).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from typing import Any

QEMU = "/usr/bin/qemu-system-x86_64"
MIB = 1 << 20


class Qmp:
    """A minimal QMP client over a unix socket: commands and the events seen meanwhile."""

    def __init__(self, path: str) -> None:
        deadline = time.monotonic() + 15
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.buf = b""
        self.events: list[dict[str, Any]] = []
        self._read()  # greeting
        self.cmd("qmp_capabilities")

    def _read(self, timeout: float = 60.0) -> dict[str, Any]:
        self.sock.settimeout(timeout)
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("monitor closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        obj: dict[str, Any] = json.loads(line)
        return obj

    def cmd(self, name: str, **args: Any) -> Any:
        msg: dict[str, Any] = {"execute": name}
        if args:
            msg["arguments"] = args
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            obj = self._read()
            if "event" in obj:
                self.events.append(obj)
                continue
            if "error" in obj:
                raise RuntimeError(f"{name}: {obj['error']}")
            return obj["return"]

    def wait_status(self, wanted: tuple[str, ...], timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info: dict[str, Any] = self.cmd("query-migrate")
            if info.get("status") in wanted:
                return info
            time.sleep(0.05)
        raise TimeoutError(f"status not in {wanted}")


def event_text(e: dict[str, Any]) -> str:
    """``MIGRATION:setup``, ``MIGRATION_PASS:1``, ``STOP:``."""
    data = e.get("data") or {}
    return f"{e['event']}:{data.get('status', data.get('pass', ''))}"


def start(chroot: str, tmp_in: str, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
    cmd = ["chroot", chroot, QEMU, *argv, "-qmp", f"unix:{tmp_in}/{name}.qmp,server=on,wait=off"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop(proc: subprocess.Popen[bytes]) -> str:
    if proc.poll() is None:
        proc.kill()
    _, err = proc.communicate(timeout=10)
    return err.decode(errors="replace")


def extents(path: str) -> list[tuple[int, int]]:
    """Data extents (start, end) of a file, by SEEK_DATA / SEEK_HOLE."""
    out: list[tuple[int, int]] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            hole = os.lseek(fd, data, os.SEEK_HOLE)
            out.append((data, hole))
            pos = hole
    finally:
        os.close(fd)
    return out


def read_blocks(data: bytes, start: int) -> dict[str, Any]:
    """The RAM block list of a mapped-ram stream that begins at ``start``."""
    magic, version = struct.unpack_from(">II", data, start)
    if magic != 0x5145564D or version != 3:
        raise ValueError(f"no QEVM header at {start}")
    needle = b"\x03ram"
    pos = data.index(needle, start)
    # START record: 0x01, be32 section id, len byte, "ram", be32 instance, be32 version
    rec = pos - 5
    if data[rec] != 0x01:
        raise ValueError("ram START record not found")
    pos += len(needle) + 8
    (total_flags,) = struct.unpack_from(">Q", data, pos)
    mem_size_at = pos
    pos += 8
    total = total_flags & ~0xFFF
    blocks = []
    seen = 0
    while seen < total:
        at = pos
        n = data[pos]
        name = data[pos + 1 : pos + 1 + n].decode()
        pos += 1 + n
        (used,) = struct.unpack_from(">Q", data, pos)
        pos += 8
        hdr_at = pos
        ver, page, bmap_off, pages_off = struct.unpack_from(">IQQQ", data, pos)
        pos += 28
        pages = used // page
        bmap_bytes = (pages + 63) // 64 * 8
        bits = data[bmap_off : bmap_off + bmap_bytes]
        set_bits = sum(bin(b).count("1") for b in bits)
        blocks.append(
            {
                "record_at": at,
                "name": name,
                "used_length": used,
                "header_at": hdr_at,
                "version": ver,
                "page_size": page,
                "bitmap_offset": bmap_off,
                "bitmap_bytes": bmap_bytes,
                "pages_offset": pages_off,
                "pages_offset_is_1MiB_aligned": pages_off % MIB == 0,
                "pages_offset_is_roundup": pages_off == -(-(bmap_off + bmap_bytes) // MIB) * MIB,
                "bitmap_bits_set": set_bits,
                "stream_resumes_at": pages_off + used,
            }
        )
        seen += used
        pos = pages_off + used
    return {
        "ram_start_record_at": rec,
        "mem_size_record_at": mem_size_at,
        "total_ram": total,
        "blocks": blocks,
        "after_blocks": pos,
        "bytes_after_blocks": len(data) - pos,
        "stream_bytes_before_first_block": blocks[0]["record_at"] - start if blocks else None,
        "block_record_bytes": [b["header_at"] + 28 - b["record_at"] for b in blocks],
        "next_bytes": data[pos : pos + 32].hex(),
    }


def stale_check(data: bytes, layout: dict[str, Any], ext: list[tuple[int, int]]) -> None:
    """Per block: pages lying in data extents, and those whose bitmap bit is clear
    although the file holds non-zero bytes there (a page written, then found zero)."""
    for b in layout["blocks"]:
        start, page = b["pages_offset"], b["page_size"]
        end = start + b["used_length"]
        bmap = data[b["bitmap_offset"] : b["bitmap_offset"] + b["bitmap_bytes"]]
        allocated = stale = 0
        for lo, hi in ext:
            lo, hi = max(lo, start), min(hi, end)
            for off in range(lo - (lo - start) % page, hi, page):
                idx = (off - start) // page
                allocated += 1
                if not bmap[idx // 8] >> (idx % 8) & 1 and any(data[off : off + page]):
                    stale += 1
        b["pages_in_data_extents"] = allocated
        b["nonzero_pages_with_bit_clear"] = stale


def run_one(
    chroot: str, machine: str, mem: int, multifd: bool, opts: argparse.Namespace
) -> dict[str, Any]:
    host_tmp = tempfile.mkdtemp(prefix="mrlayout-", dir=os.path.join(chroot, "tmp"))
    tmp_in = host_tmp[len(chroot.rstrip("/")) :]
    argv = ["-M", machine, "-accel", "tcg", "-m", str(mem), "-nodefaults", "-display", "none"]
    img = f"{opts.dir or tmp_in}/mig-{os.path.basename(host_tmp)}.img"
    host_img = chroot.rstrip("/") + img
    uri = f"file:{img}" + (f",offset={opts.offset}" if opts.offset else "")
    caps = ["events", "mapped-ram"] + (["multifd"] if multifd else [])
    result: dict[str, Any] = {
        "machine": machine,
        "mem": mem,
        "multifd": multifd,
        "uri": uri.replace(img, "<IMG>"),
    }
    if opts.prefill:
        with open(host_img, "wb") as f:
            f.write(b"\xaa" * opts.prefill)
        result["prefill"] = opts.prefill
    src = start(chroot, tmp_in, "src", argv)
    try:
        q = Qmp(f"{host_tmp}/src.qmp")
        q.cmd(
            "migrate-set-capabilities",
            capabilities=[{"capability": c, "state": True} for c in caps],
        )
        if opts.direct_io:
            q.cmd("migrate-set-parameters", **{"direct-io": True})
            result["direct_io"] = True
        if opts.max_bandwidth:
            q.cmd("migrate-set-parameters", **{"max-bandwidth": opts.max_bandwidth})
            result["max_bandwidth"] = opts.max_bandwidth
        time.sleep(opts.delay)
        log = f"{host_tmp}/src.strace"
        tracer = trace(src.pid, "openat,pwrite64,pwritev", log) if opts.strace_src else None
        q.cmd("migrate", uri=uri)
        info = q.wait_status(("completed", "failed"))
        if tracer is not None:
            end_trace(tracer)
            result["src_opens"] = open_summary(log, img)
        if info.get("error-desc"):
            result["error_desc"] = info["error-desc"].replace(img, "<IMG>")
        result["status"] = info["status"]
        result["ram"] = info.get("ram")
        result["total_time"] = info.get("total-time")
        result["events"] = [event_text(e) for e in q.events]
    finally:
        result["src_stderr"] = stop(src)
    if not os.path.exists(host_img):
        result["file"] = {"missing": True}
        result["layout"] = {"error": "no file"}
        shutil.rmtree(host_tmp, ignore_errors=True)
        return result
    st = os.stat(host_img)
    result["file"] = {
        "apparent_size": st.st_size,
        "allocated_bytes": st.st_blocks * 512,
        "du_k": subprocess.run(
            ["du", "-k", host_img], capture_output=True, text=True
        ).stdout.split()[0],
        "extents": extents(host_img),
    }
    with open(host_img, "rb") as f:
        data = f.read()
    begin = opts.offset or 0
    if opts.prefill:
        result["file"]["prefix_still_0xaa"] = data[:begin] == b"\xaa" * begin
        tail = data[-64:]
        result["file"]["last_64_bytes"] = tail.hex()
    try:
        layout = read_blocks(data, begin)
    except (ValueError, struct.error, IndexError) as e:
        layout = {"error": str(e)}
    result["layout"] = layout
    if "blocks" in layout:
        stale_check(data, layout, result["file"]["extents"])
    ram = result.get("ram") or {}
    if "blocks" in layout:
        bmap = sum(b["bitmap_bytes"] for b in layout["blocks"])
        bits = sum(b["bitmap_bits_set"] for b in layout["blocks"])
        result["arithmetic"] = {
            "bitmap_bytes_total": bmap,
            "bitmap_bits_set_total": bits,
            "normal": ram.get("normal"),
            "normal_x4096": (ram.get("normal") or 0) * 4096,
            "transferred_minus_multifd": (ram.get("transferred") or 0)
            - (ram.get("multifd-bytes") or 0),
            "precopy_plus_downtime": (ram.get("precopy-bytes") or 0)
            + (ram.get("downtime-bytes") or 0),
            "precopy_plus_downtime_minus_normal_bytes": (ram.get("precopy-bytes") or 0)
            + (ram.get("downtime-bytes") or 0)
            - (ram.get("normal") or 0) * 4096,
            "file_bytes_after_blocks": layout["bytes_after_blocks"],
        }
    if opts.load:
        result["load"] = load(chroot, tmp_in, host_tmp, argv, caps, uri)
    if not opts.keep:
        shutil.rmtree(host_tmp, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(host_img)
    else:
        result["kept"] = host_tmp
    return result


def load(
    chroot: str, tmp_in: str, host_tmp: str, argv: list[str], caps: list[str], uri: str
) -> dict[str, Any]:
    dst = start(
        chroot, tmp_in, "dst", [*argv, "-incoming", "defer", "-trace", "enable=multifd_recv*"]
    )
    out: dict[str, Any] = {}
    try:
        q = Qmp(f"{host_tmp}/dst.qmp")
        q.cmd(
            "migrate-set-capabilities",
            capabilities=[{"capability": c, "state": True} for c in caps],
        )
        log = f"{host_tmp}/dst.strace"
        tracer = trace(dst.pid, "pread64,preadv,preadv2", log)
        q.cmd("migrate-incoming", uri=uri)
        info = q.wait_status(("completed", "failed"))
        if tracer is not None:
            end_trace(tracer)
            out["preads"] = pread_summary(log, dst.pid)
        out["query_migrate"] = info
        out["query_status"] = q.cmd("query-status")
        time.sleep(0.3)
    finally:
        err = stop(dst)
    counts: dict[str, int] = {}
    samples: dict[str, str] = {}
    for ln in err.splitlines():
        # a "log" trace line names its event (multifd_recv_...) among its first words
        words = ln.replace(":", " ").split()
        key = next((w for w in words if w.startswith("multifd_recv")), words[0] if words else "")
        counts[key] = counts.get(key, 0) + 1
        samples.setdefault(key, ln)
    out["trace_counts"] = counts
    out["trace_samples"] = samples
    return out


def trace(pid: int, calls: str, log: str) -> subprocess.Popen[bytes] | None:
    """strace ``calls`` of process ``pid`` (and its threads) into ``log``; None without
    strace."""
    if not shutil.which("strace"):
        return None
    tracer = subprocess.Popen(
        ["strace", "-f", "-qq", "-p", str(pid), "-e", f"trace={calls}", "-o", log],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(1.0)  # attached to every thread before the migration starts
    return tracer


def end_trace(tracer: subprocess.Popen[bytes]) -> None:
    time.sleep(0.3)
    tracer.terminate()
    tracer.wait(timeout=10)


def open_summary(log: str, img: str) -> dict[str, Any]:
    """The source's opens of the migration file (flags) and its positional writes."""
    opens: list[str] = []
    writes = {"calls": 0, "errors": []}  # type: dict[str, Any]
    with open(log, encoding="utf-8", errors="replace") as f:
        for ln in f:
            if "openat(" in ln and img in ln:
                opens.append(ln.split("openat(", 1)[1].replace(img, "<IMG>").strip())
            elif "pwrite" in ln:
                writes["calls"] += 1
                if "= -1" in ln:
                    writes["errors"].append(ln.rsplit("= ", 1)[1].strip())
    return {"opens": opens, "pwrites": writes}


def pread_summary(log: str, main_pid: int) -> dict[str, Any]:
    """Per thread of the destination: how many positional reads, how many bytes they got."""
    per: dict[str, list[int]] = {}
    with open(log, encoding="utf-8", errors="replace") as f:
        for ln in f:
            parts = ln.split(None, 1)
            if len(parts) < 2 or "= " not in parts[1] or not parts[1].startswith("pread"):
                continue
            tid = "main" if parts[0] == str(main_pid) else f"thread {parts[0]}"
            got = parts[1].rsplit("= ", 1)[1].split()[0]
            acc = per.setdefault(tid, [0, 0])
            acc[0] += 1
            acc[1] += int(got) if got.lstrip("-").isdigit() and int(got) > 0 else 0
    return {k: {"calls": v[0], "bytes": v[1]} for k, v in per.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chroot", default="/srv/trixie")
    ap.add_argument("--machine", action="append")
    ap.add_argument("--mem", action="append", type=int)
    ap.add_argument("--multifd", choices=("off", "on", "both"), default="both")
    ap.add_argument("--max-bandwidth", type=int, default=0)
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--prefill", type=int, default=0)
    ap.add_argument("--delay", type=float, default=0.0, help="seconds between start and migrate")
    ap.add_argument("--load", action="store_true")
    ap.add_argument("--direct-io", action="store_true", help="migrate-set-parameters direct-io")
    ap.add_argument("--dir", help="directory of the file, as QEMU sees it (default: a tmp dir)")
    ap.add_argument("--strace-src", action="store_true", help="record the source's opens")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    machines = args.machine or ["pc", "q35"]
    mems = args.mem or [64, 128]
    mf = {"off": [False], "on": [True], "both": [False, True]}[args.multifd]
    results = []
    for machine in machines:
        for mem in mems:
            for multifd in mf:
                r = run_one(args.chroot, machine, mem, multifd, args)
                results.append(r)
                if not args.json:
                    summary(r)
    if args.json:
        json.dump(results, sys.stdout, indent=1)
        print()
    return 0


def summary(r: dict[str, Any]) -> None:
    ram = r.get("ram") or {}
    print(
        f"== -M {r['machine']} -m {r['mem']} multifd={'on' if r['multifd'] else 'off'} "
        f"{r['uri']} bw={r.get('max_bandwidth', 'default')} direct-io={r.get('direct_io', False)}"
        f": {r.get('status')} "
        f"in {r.get('total_time')} ms"
    )
    print("   events:", " ".join(r.get("events", [])))
    keys = (
        "transferred", "multifd-bytes", "precopy-bytes", "downtime-bytes", "normal",
        "duplicate", "normal-bytes", "dirty-sync-count", "total", "remaining",
    )  # fmt: skip
    print("   ram:", ", ".join(f"{k} {ram.get(k)}" for k in keys))
    f = r["file"]
    if f.get("missing"):
        print("   no file")
        return
    print(
        f"   file: size {f['apparent_size']}, allocated {f['allocated_bytes']} (du -k {f['du_k']})"
        f", {len(f['extents'])} extents"
    )
    for k in ("prefix_still_0xaa",):
        if k in f:
            print(f"   {k}: {f[k]}")
    lay = r["layout"]
    if "error" in lay:
        print("   layout error:", lay["error"])
    else:
        print(
            f"   ram START at {lay['ram_start_record_at']}, MEM_SIZE at "
            f"{lay['mem_size_record_at']}, total {lay['total_ram']}, "
            f"record bytes {lay['block_record_bytes']}"
        )
        for b in lay["blocks"]:
            print(
                f"   {b['name']:24} rec {b['record_at']:>9} used {b['used_length']:>9} "
                f"v{b['version']} page {b['page_size']} bitmap {b['bitmap_offset']:>9}"
                f"+{b['bitmap_bytes']:<5} pages {b['pages_offset']:>9} "
                f"(1MiB {b['pages_offset_is_1MiB_aligned']}, roundup "
                f"{b['pages_offset_is_roundup']}) bits {b['bitmap_bits_set']:>5} "
                f"-> {b['stream_resumes_at']} alloc {b.get('pages_in_data_extents')} "
                f"stale {b.get('nonzero_pages_with_bit_clear')}"
            )
        print(f"   after blocks: {lay['after_blocks']} (+{lay['bytes_after_blocks']}) "
              f"next {lay['next_bytes']}")  # fmt: skip
        print("   extents:", f["extents"])
        print("   arithmetic:", r.get("arithmetic"))
    if "load" in r:
        ld = r["load"]
        print("   load:", json.dumps(ld["query_migrate"]), json.dumps(ld["query_status"]))
        print("   recv trace:", ld["trace_counts"])
        print("   dst preads:", ld.get("preads"))
        for v in ld["trace_samples"].values():
            print("     ", v[:200])
    if r.get("src_opens"):
        print("   src opens:", r["src_opens"])
    if r.get("error_desc"):
        print("   error-desc:", r["error_desc"])
    if r.get("src_stderr"):
        print("   src stderr:", r["src_stderr"].strip())


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
