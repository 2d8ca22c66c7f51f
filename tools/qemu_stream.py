"""Byte breakdown of a QEMU migration stream file (as QEMU 7.2 and 10.0 write it).

Our own reader, written from the published format facts, for streams saved with
``migrate "exec:cat > FILE"``.  It reads

* the file header: be32 magic ``QEVM``, be32 version 3;
* the CONFIGURATION record: byte 0x07, be32 length, machine type name, optionally
  followed by subsections (byte 0x05 ...; none are written by default);
* COMMAND records: byte 0x08, be16 command, be16 length, data (QEMU 10.0 writes
  command 11 with no data just before the RAM END section);
* the section records: START (0x01) and FULL (0x04) = type, be32 section id, 1 length
  byte + id string, be32 instance id, be32 version id; PART (0x02) and END (0x03) =
  type, be32 section id; each section ends with a footer: byte 0x7e + be32 section id;
* inside the "ram" sections, records of be64 ``offset | flags``: ZERO 0x02 (one fill
  byte follows), MEM_SIZE 0x04 (followed by each block's 1 length byte, name, be64
  used length), PAGE 0x08 (4096 bytes follow), EOS 0x10 (end of the section's RAM
  data), CONTINUE 0x20 (no block name; without it, 1 length byte + name follow the
  header), MULTIFD_FLUSH 0x200 (QEMU >= 8.1 with multifd).

Parsing of the RAM stops at the first FULL section: everything from there to the end
of the file is reported as device state (the non-iterable devices' FULL sections,
the EOF byte 0x00 and the JSON VM description record 0x06 + be32 length + JSON).
Device sections are delimited heuristically (by their footers) for a per-device size.

Usage: ``python tools/qemu_stream.py FILE [--json] [--pages]``.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from dataclasses import dataclass, field
from typing import Any

MAGIC = 0x5145564D  # "QEVM"
VERSION = 3

SEC_EOF = 0x00
SEC_START = 0x01
SEC_PART = 0x02
SEC_END = 0x03
SEC_FULL = 0x04
SUBSECTION = 0x05
VMDESCRIPTION = 0x06
CONFIGURATION = 0x07
COMMAND = 0x08
FOOTER = 0x7E

KIND = {SEC_START: "START", SEC_PART: "PART", SEC_END: "END", SEC_FULL: "FULL"}

F_ZERO = 0x02
F_MEM_SIZE = 0x04
F_PAGE = 0x08
F_EOS = 0x10
F_CONTINUE = 0x20
F_XBZRLE = 0x40
F_HOOK = 0x80
F_COMPRESS = 0x100
F_MULTIFD_FLUSH = 0x200

PAGE_SIZE = 4096
FLAG_MASK = PAGE_SIZE - 1


class StreamError(ValueError):
    pass


@dataclass
class PageRun:
    """Consecutive pages of one block, of one kind, each taking ``bytes_each`` bytes."""

    block: str
    first: int  # page index in the block
    count: int
    zero: bool
    bytes_each: int  # 8 header (+1+len(name) if named) (+1 zero fill | +4096 data)
    named: bool  # the block name was written (only ever true for the first page)

    @property
    def nbytes(self) -> int:
        return self.count * self.bytes_each

    def to_json(self) -> list[Any]:
        return [self.block, self.first, self.count, "z" if self.zero else "n", self.bytes_each]


@dataclass
class RamSection:
    kind: str  # START | PART | END
    section_id: int
    offset: int  # file offset of the section's type byte
    header_bytes: int
    footer_bytes: int = 0
    eos_bytes: int = 0
    mem_size_bytes: int = 0  # START only: the MEM_SIZE record and the block list
    flush_bytes: int = 0  # MULTIFD_FLUSH records
    other_bytes: int = 0  # any other RAM record without a page (HOOK)
    runs: list[PageRun] = field(default_factory=list)

    @property
    def overhead_bytes(self) -> int:
        return (
            self.header_bytes
            + self.footer_bytes
            + self.eos_bytes
            + self.mem_size_bytes
            + self.flush_bytes
            + self.other_bytes
        )

    @property
    def zero_pages(self) -> int:
        return sum(r.count for r in self.runs if r.zero)

    @property
    def normal_pages(self) -> int:
        return sum(r.count for r in self.runs if not r.zero)

    @property
    def page_bytes(self) -> int:
        return sum(r.nbytes for r in self.runs)

    @property
    def nbytes(self) -> int:
        return self.overhead_bytes + self.page_bytes

    def summary(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "section_id": self.section_id,
            "offset": self.offset,
            "bytes": self.nbytes,
            "overhead": {
                "header": self.header_bytes,
                "footer": self.footer_bytes,
                "eos": self.eos_bytes,
                "mem_size": self.mem_size_bytes,
                "multifd_flush": self.flush_bytes,
                "other": self.other_bytes,
                "total": self.overhead_bytes,
            },
            "zero_pages": self.zero_pages,
            "normal_pages": self.normal_pages,
            "page_bytes": self.page_bytes,
        }


@dataclass
class DeviceSection:
    name: str
    section_id: int
    instance_id: int
    version_id: int
    offset: int
    nbytes: int  # header + body + footer


@dataclass
class Stream:
    total_bytes: int
    header_bytes: int  # magic + version
    configuration_bytes: int
    machine: str | None
    blocks: list[tuple[str, int]]  # (name, used_length) from MEM_SIZE, in sending order
    ram_total: int  # the value of the MEM_SIZE record
    ram_sections: list[RamSection]
    other_sections: list[dict[str, Any]]  # non-RAM iterable sections (not parsed)
    commands: list[dict[str, Any]]  # QEMU_VM_COMMAND records (0x08, be16 cmd, be16 len, data)
    device_offset: int  # file offset of the first FULL section (or EOF byte)
    device_bytes: int  # from device_offset to the end of the file
    devices: list[DeviceSection]
    device_sections_bytes: int  # sum of the FULL sections found
    eof_bytes: int
    vmdesc_bytes: int  # 0x06 + be32 + JSON
    unparsed_tail: int  # device-state bytes not attributed to a section/EOF/vmdesc

    # -- derived -------------------------------------------------------------

    def ram_bytes(self) -> int:
        return sum(s.nbytes for s in self.ram_sections)

    def block_pages(self) -> dict[str, int]:
        return {n: (u + PAGE_SIZE - 1) // PAGE_SIZE for n, u in self.blocks}

    def iter_pages(self) -> Any:
        """(section_index, block, page_index, zero, bytes) for every page, in stream order."""
        for si, sec in enumerate(self.ram_sections):
            for r in sec.runs:
                for i in range(r.count):
                    yield si, r.block, r.first + i, r.zero, r.bytes_each

    def rounds(self) -> list[list[tuple[int, PageRun]]]:
        """The page runs split into rounds over RAM: a new round starts when the
        position (block order, page index) does not advance (the sender wrapped)."""
        order = {n: i for i, (n, _) in enumerate(self.blocks)}
        out: list[list[tuple[int, PageRun]]] = [[]]
        last: tuple[int, int] | None = None
        for si, sec in enumerate(self.ram_sections):
            for r in sec.runs:
                pos = (order.get(r.block, len(order)), r.first)
                if last is not None and pos <= last:
                    out.append([])
                out[-1].append((si, r))
                last = (pos[0], r.first + r.count - 1)
        return out if out[0] else []

    def breakdown(self) -> dict[str, Any]:
        ram = self.ram_sections
        pages_zero = sum(s.zero_pages for s in ram)
        pages_normal = sum(s.normal_pages for s in ram)
        named = sum(1 for s in ram for r in s.runs if r.named)
        return {
            "total_bytes": self.total_bytes,
            "header_bytes": self.header_bytes,
            "configuration_bytes": self.configuration_bytes,
            "machine": self.machine,
            "ram_total": self.ram_total,
            "blocks": [[n, u] for n, u in self.blocks],
            "ram_section_bytes": self.ram_bytes(),
            "ram_overhead_bytes": sum(s.overhead_bytes for s in ram),
            "ram_page_bytes": sum(s.page_bytes for s in ram),
            "pages_zero": pages_zero,
            "pages_normal": pages_normal,
            "pages_named": named,
            "ram_sections": [s.summary() for s in ram],
            "other_iterable_sections": self.other_sections,
            "commands": self.commands,
            "command_bytes": sum(c["bytes"] for c in self.commands),
            "device_state": {
                "offset": self.device_offset,
                "bytes": self.device_bytes,
                "sections_bytes": self.device_sections_bytes,
                "eof_bytes": self.eof_bytes,
                "vmdesc_bytes": self.vmdesc_bytes,
                "unattributed_bytes": self.unparsed_tail,
                "devices": [[d.name, d.instance_id, d.version_id, d.nbytes] for d in self.devices],
            },
        }


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.d = data
        self.p = 0

    def u8(self) -> int:
        if self.p >= len(self.d):
            raise StreamError(f"unexpected end of stream at {self.p}")
        v: int = self.d[self.p]
        self.p += 1
        return v

    def be32(self) -> int:
        v: int = struct.unpack_from(">I", self.d, self.p)[0]
        self.p += 4
        return v

    def be64(self) -> int:
        v: int = struct.unpack_from(">Q", self.d, self.p)[0]
        self.p += 8
        return v

    def raw(self, n: int) -> bytes:
        if self.p + n > len(self.d):
            raise StreamError(f"unexpected end of stream at {self.p} (+{n})")
        v = self.d[self.p : self.p + n]
        self.p += n
        return v

    def name(self) -> str:
        return self.raw(self.u8()).decode("ascii", "backslashreplace")


def _skip_config_subsections(r: _Reader) -> None:
    """Configuration subsections (not written by default): skip the known ones."""
    while r.p < len(r.d) and r.d[r.p] == SUBSECTION:
        r.u8()
        name = r.name()
        r.be32()  # version
        if name.endswith("/target-page-bits"):
            r.be32()
        elif name.endswith("/capabilities"):
            for _ in range(r.be32()):
                r.name()
        elif name.endswith("/uuid"):
            r.raw(16)
        else:
            raise StreamError(f"unknown configuration subsection {name!r} at {r.p}")


def _read_ram_records(r: _Reader, sec: RamSection, st: dict[str, Any]) -> None:
    """Read RAM records up to and including EOS."""
    runs = sec.runs
    while True:
        start = r.p
        word = r.be64()
        flags = word & FLAG_MASK
        addr = word & ~FLAG_MASK
        if flags & F_MEM_SIZE:
            st["ram_total"] = addr
            while True:
                n = r.u8()
                name = r.raw(n).decode("ascii", "backslashreplace")
                used = r.be64()
                st["blocks"].append((name, used))
                got = sum(u for _, u in st["blocks"])
                if got >= addr:
                    break
            sec.mem_size_bytes += r.p - start
            # MEM_SIZE never carries other flags together with it
            continue
        if flags & F_EOS:
            sec.eos_bytes += 8
            return
        if flags & F_MULTIFD_FLUSH:
            sec.flush_bytes += 8
            continue
        if flags & (F_ZERO | F_PAGE):
            named = not flags & F_CONTINUE
            if named:
                st["block"] = r.name()
            elif st["block"] is None:
                raise StreamError(f"CONTINUE page without a block at {start}")
            if flags & F_ZERO:
                r.u8()
                zero = True
            else:
                content = r.raw(PAGE_SIZE)
                zero = False
                if "page_data" in st:
                    st["page_data"].append((st["block"], addr // PAGE_SIZE, content))
            nbytes = r.p - start
            idx = addr // PAGE_SIZE
            block = st["block"]
            last = runs[-1] if runs else None
            if (
                last is not None
                and not named
                and not last.named
                and last.block == block
                and last.zero == zero
                and last.bytes_each == nbytes
                and last.first + last.count == idx
            ):
                last.count += 1
            else:
                runs.append(PageRun(block, idx, 1, zero, nbytes, named))
            continue
        if flags & F_HOOK:
            sec.other_bytes += 8
            continue
        raise StreamError(f"unsupported RAM record flags 0x{flags:x} at {start}")


def _find_device_sections(data: bytes, start: int) -> tuple[list[DeviceSection], int, int, int]:
    """Delimit the FULL sections from ``start`` by their footers (heuristic).

    Returns (devices, offset after the last section found, eof bytes, vmdesc bytes).
    """
    devices: list[DeviceSection] = []
    p = start
    n = len(data)

    def header_at(q: int) -> tuple[int, str, int, int, int] | None:
        if q + 14 > n or data[q] != SEC_FULL:
            return None
        sid = struct.unpack_from(">I", data, q + 1)[0]
        ln = data[q + 5]
        if ln == 0 or q + 6 + ln + 8 > n:
            return None
        raw = data[q + 6 : q + 6 + ln]
        if not all(32 <= c < 127 for c in raw):
            return None
        inst, ver = struct.unpack_from(">II", data, q + 6 + ln)
        return sid, raw.decode("ascii"), inst, ver, q + 6 + ln + 8

    def vmdesc_at(q: int) -> int:
        """Size of a VM description record at q (0 if none)."""
        if q + 5 <= n and data[q] == VMDESCRIPTION:
            ln: int = struct.unpack_from(">I", data, q + 1)[0]
            if q + 5 + ln == n and data[q + 5 : q + 6] == b"{":
                return 5 + ln
        return 0

    while True:
        h = header_at(p)
        if h is None:
            break
        sid, name, inst, ver, body = h
        foot = struct.pack(">BI", FOOTER, sid)
        q = body
        found = -1
        while True:
            q = data.find(foot, q)
            if q < 0:
                break
            nxt = q + 5
            if header_at(nxt) is not None or (
                nxt < n and data[nxt] == SEC_EOF and (nxt + 1 == n or vmdesc_at(nxt + 1))
            ):
                found = q
                break
            q += 1
        if found < 0:
            break
        devices.append(DeviceSection(name, sid, inst, ver, p, found + 5 - p))
        p = found + 5
    eof = 0
    vmdesc = 0
    if p < n and data[p] == SEC_EOF:
        eof = 1
        vmdesc = vmdesc_at(p + 1)
    return devices, p, eof, vmdesc


def parse(data: bytes, page_data: list[tuple[str, int, bytes]] | None = None) -> Stream:
    """The stream's layout; ``page_data``, if given, receives ``(block, page, bytes)`` for
    every normal page record in stream order."""
    r = _Reader(data)
    if len(data) < 8 or r.be32() != MAGIC:
        raise StreamError("not a QEMU migration stream (no QEVM magic)")
    ver = r.be32()
    if ver != VERSION:
        raise StreamError(f"unsupported stream version {ver}")
    header_bytes = r.p
    machine = None
    if r.p < len(data) and data[r.p] == CONFIGURATION:
        r.u8()
        machine = r.raw(r.be32()).decode("ascii", "backslashreplace")
        _skip_config_subsections(r)
    configuration_bytes = r.p - header_bytes

    names: dict[int, str] = {}
    st: dict[str, Any] = {"blocks": [], "ram_total": 0, "block": None}
    if page_data is not None:
        st["page_data"] = page_data
    ram_sections: list[RamSection] = []
    others: list[dict[str, Any]] = []
    commands: list[dict[str, Any]] = []
    device_offset = len(data)
    while r.p < len(data):
        off = r.p
        t = data[off]
        if t in (SEC_START, SEC_FULL):
            r.u8()
            sid = r.be32()
            name = r.name()
            r.be32()  # instance id
            r.be32()  # version id
            if t == SEC_FULL:
                r.p = off
                device_offset = off
                break
            names[sid] = name
        elif t in (SEC_PART, SEC_END):
            r.u8()
            sid = r.be32()
            name = names.get(sid, "?")
        elif t == SEC_EOF:
            device_offset = off
            break
        elif t == COMMAND:
            r.u8()
            cmd = struct.unpack_from(">H", data, r.p)[0]
            r.p += 2
            ln = struct.unpack_from(">H", data, r.p)[0]
            r.p += 2 + ln
            commands.append(
                {
                    "offset": off,
                    "command": cmd,
                    "bytes": r.p - off,
                    "before_section": len(ram_sections),
                }
            )
            continue
        else:
            raise StreamError(f"unexpected record type 0x{t:02x} at {off}")
        hdr = r.p - off
        if name != "ram":
            raise StreamError(
                f"iterable section {name!r} (id {sid}) at {off}: only 'ram' is understood"
            )
        sec = RamSection(KIND[t], sid, off, hdr)
        _read_ram_records(r, sec, st)
        if r.p < len(data) and data[r.p] == FOOTER:
            fsid = struct.unpack_from(">I", data, r.p + 1)[0]
            if fsid != sid:
                raise StreamError(f"footer for section {fsid} closes section {sid} at {r.p}")
            r.p += 5
            sec.footer_bytes = 5
        ram_sections.append(sec)

    devices, _after, eof, vmdesc = _find_device_sections(data, device_offset)
    dev_bytes = len(data) - device_offset
    sec_bytes = sum(d.nbytes for d in devices)
    return Stream(
        total_bytes=len(data),
        header_bytes=header_bytes,
        configuration_bytes=configuration_bytes,
        machine=machine,
        blocks=list(st["blocks"]),
        ram_total=st["ram_total"],
        ram_sections=ram_sections,
        other_sections=others,
        commands=commands,
        device_offset=device_offset,
        device_bytes=dev_bytes,
        devices=devices,
        device_sections_bytes=sec_bytes,
        eof_bytes=eof,
        vmdesc_bytes=vmdesc,
        unparsed_tail=dev_bytes - sec_bytes - eof - vmdesc,
    )


def parse_file(path: str) -> Stream:
    with open(path, "rb") as f:
        return parse(f.read())


# ---------------------------------------------------------------------------
# Page-level summaries
# ---------------------------------------------------------------------------


def runs_of(indexes: Any) -> list[list[int]]:
    """Sorted page indexes -> [[first, count], ...]."""
    out: list[list[int]] = []
    for i in sorted(indexes):
        if out and out[-1][0] + out[-1][1] == i:
            out[-1][1] += 1
        elif out and out[-1][0] + out[-1][1] > i:
            continue  # duplicate
        else:
            out.append([i, 1])
    return out


def page_analysis(s: Stream) -> dict[str, Any]:
    """First-round non-zero pages per block, re-sent pages, per-round counts."""
    rounds = s.rounds()
    kinds = [f"{sec.kind}#{i}" for i, sec in enumerate(s.ram_sections)]
    first_nonzero: dict[str, list[int]] = {n: [] for n, _ in s.blocks}
    first_zero_count: dict[str, int] = {n: 0 for n, _ in s.blocks}
    first_sent: dict[str, int] = {n: 0 for n, _ in s.blocks}
    for _si, r in rounds[0] if rounds else []:
        first_sent[r.block] = first_sent.get(r.block, 0) + r.count
        if r.zero:
            first_zero_count[r.block] = first_zero_count.get(r.block, 0) + r.count
        else:
            first_nonzero.setdefault(r.block, []).extend(range(r.first, r.first + r.count))
    later: list[dict[str, Any]] = []
    for ri, rnd in enumerate(rounds[1:], start=2):
        per_block: dict[str, dict[str, list[int]]] = {}
        secs: list[str] = []
        for si, r in rnd:
            d = per_block.setdefault(r.block, {"zero": [], "normal": []})
            d["zero" if r.zero else "normal"].extend(range(r.first, r.first + r.count))
            if kinds[si] not in secs:
                secs.append(kinds[si])
        later.append(
            {
                "round": ri,
                "sections": secs,
                "pages": sum(r.count for _, r in rnd),
                "blocks": {
                    b: {k: runs_of(v) for k, v in d.items() if v} for b, d in per_block.items()
                },
            }
        )
    return {
        "rounds": len(rounds),
        "first_round": {
            b: {
                "sent": first_sent.get(b, 0),
                "zero": first_zero_count.get(b, 0),
                "nonzero": len(first_nonzero.get(b, [])),
                "nonzero_runs": runs_of(first_nonzero.get(b, [])),
            }
            for b, _ in s.blocks
        },
        "resent": later,
    }


def raw_runs(s: Stream) -> list[dict[str, Any]]:
    """Each RAM section with its page runs [block, first, count, z|n, bytes_each]."""
    return [{**sec.summary(), "runs": [r.to_json() for r in sec.runs]} for sec in s.ram_sections]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file")
    ap.add_argument("--json", action="store_true", help="print the breakdown as JSON")
    ap.add_argument("--pages", action="store_true", help="include every page run")
    a = ap.parse_args(argv)
    s = parse_file(a.file)
    out = s.breakdown()
    out["pages"] = page_analysis(s)
    if a.pages:
        out["runs"] = raw_runs(s)
    if a.json:
        json.dump(out, sys.stdout, indent=1)
        print()
        return 0
    print(
        f"total {s.total_bytes} bytes; header {s.header_bytes}; "
        f"configuration {s.configuration_bytes} ({s.machine})"
    )
    print(f"MEM_SIZE total {s.ram_total}: " + ", ".join(f"{n}={u}" for n, u in s.blocks))
    for i, sec in enumerate(s.ram_sections):
        print(
            f"  [{i}] {sec.kind:5} @{sec.offset}: {sec.nbytes} bytes, overhead "
            f"{sec.overhead_bytes}, zero {sec.zero_pages}, normal {sec.normal_pages}"
        )
        if a.pages:
            for r in sec.runs:
                print(
                    f"      {r.block} [{r.first}..+{r.count}) "
                    f"{'zero' if r.zero else 'normal'} {r.bytes_each} B each"
                )
    for c in s.commands:
        print(
            f"  COMMAND {c['command']} @{c['offset']}: {c['bytes']} bytes "
            f"(before RAM section [{c['before_section']}])"
        )
    print(
        f"device state @{s.device_offset}: {s.device_bytes} bytes = sections "
        f"{s.device_sections_bytes} ({len(s.devices)}) + EOF {s.eof_bytes} + vmdesc "
        f"{s.vmdesc_bytes} + unattributed {s.unparsed_tail}"
    )
    pa = out["pages"]
    print(f"rounds: {pa['rounds']}")
    for b, d in pa["first_round"].items():
        print(f"  {b}: sent {d['sent']} nonzero {d['nonzero']} {d['nonzero_runs'][:12]}")
    for rd in pa["resent"]:
        print(
            f"  round {rd['round']} ({','.join(rd['sections'])}): {rd['pages']} pages "
            f"{json.dumps(rd['blocks'])[:300]}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
