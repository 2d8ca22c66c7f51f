"""``info ramblock`` of every recorded machine layout equals what QEMU printed for it.

The guest-layout recordings (``tests/engine/fixtures/guest_layout``) hold QEMU 7.2's and 10.0's
own ``info ramblock`` for 11 command lines each (pc 64 MiB to 4 GiB with and without default
devices, q35, microvm, none).  10.0's host-address column differs at every start: masked.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from qmp_server.engine.machine import layout_for
from qmp_server.hmp.format import info_ramblock
from qmp_server.profiles import PROFILES

RECORDINGS = Path(__file__).resolve().parents[1] / "engine" / "fixtures" / "guest_layout"
_HVA = re.compile(r" 0x[0-9a-f]{16}  (r[ow])$", re.M)


def _cases() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path.stem.removeprefix("qemu-"), name, config)
        for path in sorted(RECORDINGS.glob("qemu-*.json"))
        for name, config in json.loads(path.read_text())["configs"].items()
    ]


@pytest.mark.parametrize(("version", "name", "config"), _cases(), ids=lambda v: str(v)[:24])
def test_info_ramblock_equals_qemus(version: str, name: str, config: dict[str, Any]) -> None:
    words = config["argv"].split()
    machine = words[words.index("-M") + 1]
    memory = int(words[words.index("-m") + 1]) << 20
    layout = layout_for(PROFILES[version], machine, memory, defaults="-nodefaults" not in words)
    ours = info_ramblock(PROFILES[version], layout.info_ramblock())
    theirs = config["runs"]["idle"]["info_ramblock"].replace("\r\n", "\n")
    assert _HVA.sub(r" HVA  \1", ours) == _HVA.sub(r" HVA  \1", theirs)
