"""The machine's RAM blocks and an idle guest's content, as the emulated QEMU lays them out.

A QEMU guest is not one RAM block: ``-M pc -m 64 -nodefaults`` registers ``pc.ram`` and five
firmware/ROM blocks (``pc.bios``, ``pc.rom``, the ACPI blobs), so ``ram.total`` is 532,480
bytes more than ``-m``; default devices add VGA memory and option ROMs.  And an idle SeaBIOS
guest is not zero: its firmware has written ~110 pages (the BIOS data area, tables in low
memory, its relocated code at the top of RAM, the ROMs), and its timer interrupt keeps
rewriting a few of them.  A migration of the same command line must show QEMU's ``total``,
``normal`` and ``duplicate``.

The facts come from recordings of real QEMU 7.2 and 10.0 (``tools/record_guest_layout.py``),
reduced by ``tools/derive_machine_layouts.py`` to ``qmp_server/data/machine_layouts.json``,
loaded here.  Rules:

1. **Family.**  The machine (``pc`` and its versioned names, ``q35``, ``microvm``, ``none``)
   and whether default devices are on (``-nodefaults`` turns them off).  QEMU 7.2's layout
   serves the 7.2, 8.0.50 (default) and 8.1 profiles, 10.0's the 10.0 profile.
2. **Blocks.**  The main RAM block has the ``-m`` size; the others have their recorded sizes.
   QEMU keeps its block list sorted by maximum size, largest first (ties in recorded order);
   the migration walks them in that order.  ``-M none`` has no default RAM size: without
   ``-m`` it has no block at all.
3. **Firmware pages.**  In the main block, the runs below 1 MiB are where they were recorded;
   the others are counted back from the end of the RAM below 4 GiB (SeaBIOS puts itself at
   the top of low memory: 3 GiB for a ``pc`` of 3.5 GiB or more, 2 GiB for a ``q35`` of 2.75
   GiB or more).  The recorded pc guests of 64 MiB to 4 GiB all follow this rule
   (``tests/engine/test_machine.py``).
4. **Hot pages.**  The low pages an idle guest keeps rewriting (the timer tick, the stack):
   the idle workload dirties them while the guest runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import numpy as np
import numpy.typing as npt

from qmp_server.engine.guest import PAGE_SIZE
from qmp_server.engine.idle_fill import FirmwareContent, content_table
from qmp_server.profiles import Profile

__all__ = ["MachineLayout", "RamBlock", "layout_for", "low_ram_pages", "machine_family"]

_LOW_PAGES = 256


@dataclass(frozen=True)
class RamBlock:
    """One RAM block: its QEMU name, used and maximum sizes, first page in the flat space."""

    name: str
    used: int
    max: int
    first_page: int

    @property
    def pages(self) -> int:
        return self.used // PAGE_SIZE


_RAM_ADDR_ALIGN = 256 << 10
#: fw_cfg blobs in the order the firmware tables are built
_FW_CFG_BLOBS = ("/rom@etc/acpi/tables", "/rom@etc/table-loader", "/rom@etc/acpi/rsdp")


@dataclass(frozen=True)
class MachineLayout:
    """The RAM of one emulated machine, flat: block after block in QEMU's order."""

    version: str
    family: str
    machine_type: str
    blocks: tuple[RamBlock, ...]
    #: sorted flat page indexes that are non-zero in an idle guest (rule 3)
    firmware_pages: npt.NDArray[np.int64] = field(repr=False)
    #: sorted flat page indexes an idle guest keeps rewriting (rule 4)
    hot_pages: npt.NDArray[np.int64] = field(repr=False)
    #: bytes of QEMU's configuration section (machine type name and framing)
    configuration_bytes: int = 0
    #: bytes QEMU writes after the RAM at the switchover: device state, EOF, description
    device_state_bytes: int = 0
    #: QEMU commands on the stream besides RAM and devices (10.0's switchover start)
    command_bytes: int = 0
    #: of ``device_state_bytes``, the JSON description at the end (not sent in postcopy)
    vmdesc_bytes: int = 0
    #: how each firmware page is filled (recorded compressibility; None: not recorded)
    firmware_content: FirmwareContent | None = field(default=None, repr=False)
    #: the firmware pages in the recorded table's order (blocks as recorded, pages ascending)
    firmware_order: npt.NDArray[np.int64] = field(
        default_factory=lambda: np.zeros(0, dtype=np.int64), repr=False
    )

    @property
    def total(self) -> int:
        """``ram.total``: the sum of the blocks' used sizes."""
        return sum(b.used for b in self.blocks)

    @property
    def page_count(self) -> int:
        return self.total // PAGE_SIZE

    def block_list(self) -> list[tuple[str, int]]:
        return [(b.name, b.used) for b in self.blocks]

    def info_ramblock(self) -> list[tuple[str, int, int, int]]:
        """``(name, offset, used, max)`` per block, in QEMU's list order (``info ramblock``).

        Offsets are QEMU's ram_addr space: the blocks get them in the order the machine
        registers them (main RAM, BIOS, ``pc.rom``, PCI devices by address with their option
        ROMs last, then the fw_cfg blobs), each on a 256 KiB boundary after the previous one's
        maximum size; this reproduces every recorded layout (``tests/hmp``).
        """

        def registration(block: RamBlock) -> tuple[int, str, int]:
            name = block.name
            if block is self.blocks[0]:
                return (0, "", 0)
            if name.endswith(".bios"):
                return (1, "", 0)
            if name == "pc.rom":
                return (2, "", 0)
            if name.startswith("/rom@"):  # firmware blobs, added when the machine is done
                return (4, "", _FW_CFG_BLOBS.index(name) if name in _FW_CFG_BLOBS else 9)
            # PCI devices, by address; a device's memory before its option ROM
            address, _, what = name.partition("/")
            return (3, address, 1 if what.endswith(".rom") else 0)

        offsets: dict[str, int] = {}
        next_free = 0
        for block in sorted(self.blocks, key=registration):
            offsets[block.name] = next_free
            next_free = -(-(next_free + block.max) // _RAM_ADDR_ALIGN) * _RAM_ADDR_ALIGN
        return [(b.name, offsets[b.name], b.used, b.max) for b in self.blocks]


@cache
def _table() -> dict[str, Any]:
    text = resources.files("qmp_server.data").joinpath("machine_layouts.json").read_text()
    table: dict[str, Any] = json.loads(text)
    return table


def machine_family(machine: str | None) -> str:
    """The recorded machine family of a ``-machine`` type (None: QEMU's default, ``pc``)."""
    kind = machine or "pc"
    if kind.startswith("pc-q35") or kind == "q35":
        return "q35"
    if kind in ("microvm", "none"):
        return kind
    return "pc"


def _version_key(profile: Profile) -> str:
    return "10.0" if profile.since(10, 0) else "7.2"


def low_ram_pages(family: str, ram_bytes: int) -> int:
    """Pages of the main RAM block below 4 GiB, where the firmware works (rule 3)."""
    if family == "pc" and ram_bytes >= 0xE0000000:
        return 0xC0000000 // PAGE_SIZE
    if family == "q35" and ram_bytes >= 0xB0000000:
        return 0x80000000 // PAGE_SIZE
    if family == "microvm" and ram_bytes > 0xC0000000:
        return 0xC0000000 // PAGE_SIZE
    return ram_bytes // PAGE_SIZE


def _runs_to_pages(runs: list[list[int]], first: int, limit: int) -> list[int]:
    pages: list[int] = []
    for start, count in runs:
        pages.extend(first + p for p in range(start, start + count) if 0 <= p < limit)
    return pages


def layout_for(
    profile: Profile,
    machine: str | None,
    ram_bytes: int | None,
    *,
    defaults: bool = False,
) -> MachineLayout:
    """The layout of ``-machine MACHINE -m RAM`` (None: not given) in ``profile``'s QEMU."""
    family = machine_family(machine)
    version = _version_key(profile)
    fams = _table()["versions"][version]["families"]
    key = f"{family}/{'defaults' if defaults else 'nodefaults'}"
    if key not in fams:  # no recording with default devices for this machine: without them
        key = f"{family}/nodefaults"
    rec = fams[key]
    if ram_bytes is None:
        ram_bytes = 0 if family == "none" else 128 << 20
    sizes: list[tuple[str, int, int]] = []
    for name, used, size in rec["blocks"]:
        if name == rec["main_block"]:
            if ram_bytes:
                sizes.append((name, ram_bytes, ram_bytes))
        else:
            sizes.append((name, int(used), int(size)))
    # rule 2: largest maximum first; Python's sort is stable (recorded order for ties)
    sizes.sort(key=lambda b: -b[2])
    blocks: list[RamBlock] = []
    first = 0
    for name, used, size in sizes:
        blocks.append(RamBlock(name, used, size, first))
        first += used // PAGE_SIZE
    per_block: dict[str, list[int]] = {}
    hot: list[int] = []
    for block in blocks:
        if block.name == rec["main_block"]:
            low = low_ram_pages(family, block.used)
            pages = _runs_to_pages(rec["main_start_runs"], block.first_page, block.pages)
            ends = [[low - back, count] for back, count in rec["main_end_runs"]]
            pages += _runs_to_pages(ends, block.first_page, block.pages)
        else:
            pages = _runs_to_pages(
                rec["block_runs"].get(block.name, []), block.first_page, block.pages
            )
        per_block[block.name] = sorted(set(pages))
        hot += _runs_to_pages(rec["hot_pages"].get(block.name, []), block.first_page, block.pages)
    # the content table's order: blocks as recorded (whatever -m does to their order)
    recorded = np.asarray(
        [p for name, *_ in rec["blocks"] for p in per_block.get(name, [])], dtype=np.int64
    )
    firmware_pages = np.unique(recorded)
    content = content_table(version, key, recorded.size)
    if content is not None and firmware_pages.size == recorded.size:
        content = content.reordered(np.argsort(recorded, kind="stable"))
    else:
        content = None
    return MachineLayout(
        version=version,
        family=key,
        machine_type=rec["machine_type"],
        blocks=tuple(blocks),
        firmware_pages=firmware_pages,
        firmware_content=content,
        firmware_order=recorded,
        hot_pages=np.unique(np.asarray(hot, dtype=np.int64)),
        configuration_bytes=int(rec["configuration_bytes"]),
        device_state_bytes=int(rec["device_state_bytes"]),
        command_bytes=int(rec["command_bytes"]),
        vmdesc_bytes=int(rec.get("vmdesc_bytes", 0)),
    )
