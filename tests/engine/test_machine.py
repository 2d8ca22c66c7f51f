"""Machine layouts against QEMU's recordings: every recorded command line, both versions.

The recordings (``tests/engine/fixtures/guest_layout/qemu-*.json``, by
``tools/record_guest_layout.py``) hold what QEMU's own stream carried: the blocks and the
non-zero pages of the first pass.  The derived table must reproduce them for every recorded
``-m``, not only the one it was derived from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qmp_server.engine.guest import PAGE_SIZE
from qmp_server.engine.machine import layout_for, machine_family
from qmp_server.profiles import PROFILES

RECORDINGS = Path(__file__).parent / "fixtures" / "guest_layout"


def _cases() -> list[tuple[str, str, dict[str, Any]]]:
    cases = []
    for path in sorted(RECORDINGS.glob("qemu-*.json")):
        version = path.stem.removeprefix("qemu-")
        for name, config in json.loads(path.read_text())["configs"].items():
            cases.append((version, name, config))
    return cases


def _argv_layout(version: str, argv: str) -> Any:
    words = argv.split()
    machine = words[words.index("-M") + 1]
    mem = int(words[words.index("-m") + 1]) << 20
    return layout_for(PROFILES[version], machine, mem, defaults="-nodefaults" not in words)


@pytest.mark.parametrize(("version", "name", "config"), _cases(), ids=lambda v: str(v)[:24])
def test_layout_reproduces_the_recording(version: str, name: str, config: dict[str, Any]) -> None:
    layout = _argv_layout(version, config["argv"])
    summary = config["summary"]
    assert [[b.name, b.used, b.max] for b in layout.blocks] == summary["blocks"]
    assert layout.total == summary["ram_total"]
    expected: list[int] = []
    for block in layout.blocks:
        for first, count in summary["nonzero_first_round"].get(block.name, []):
            expected.extend(range(block.first_page + first, block.first_page + first + count))
    assert layout.firmware_pages.tolist() == sorted(expected)


def test_recordings_are_there() -> None:
    versions = {c[0] for c in _cases()}
    assert versions == {"7.2", "10.0"}


def test_families_and_defaults() -> None:
    assert machine_family(None) == "pc"
    assert machine_family("pc-i440fx-7.2") == "pc"
    assert machine_family("pc-q35-10.0") == "q35"
    none = layout_for(PROFILES["7.2"], "none", None)
    assert none.blocks == () and none.total == 0
    default = layout_for(PROFILES["default"], None, None)
    assert default.blocks[0].name == "pc.ram" and default.blocks[0].used == 128 << 20
    assert default.total == (128 << 20) + 532480


def test_small_ram_sorts_blocks_by_size() -> None:
    layout = layout_for(PROFILES["7.2"], "pc", 8 << 20, defaults=True)
    names = [b.name for b in layout.blocks]
    assert names.index("0000:00:02.0/vga.vram") < names.index("pc.ram")
    assert all(0 <= p < layout.page_count for p in layout.firmware_pages.tolist())


def test_hot_pages_are_firmware_pages_of_the_low_ram() -> None:
    layout = layout_for(PROFILES["7.2"], "pc", 64 << 20)
    assert layout.hot_pages.tolist() == [0, 6, 232, 233]
    assert np.isin(layout.hot_pages, layout.firmware_pages).all()
    assert layout.total // PAGE_SIZE == layout.page_count
