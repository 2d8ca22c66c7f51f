"""QEMU's stream bytes, replayed: every recorded stream section through :class:`QemuStream`.

For each recorded run (``tests/engine/fixtures/guest_layout``), the pages QEMU put in each RAM
section are fed to the model in the same sections; the model must give QEMU's stream size and
its ``query-migrate`` byte counters exactly, and, for the bandwidth-limited runs, cut the first
period's section where QEMU cut it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qmp_server.engine.machine import layout_for
from qmp_server.engine.wire_cost import BlockMap, QemuStream
from qmp_server.profiles import PROFILES

RECORDINGS = Path(__file__).parent / "fixtures" / "guest_layout"


def _runs() -> list[Any]:
    cases = []
    for path in sorted(RECORDINGS.glob("qemu-*.json")):
        version = path.stem.removeprefix("qemu-")
        for name, config in json.loads(path.read_text())["configs"].items():
            for run_name, run in config["runs"].items():
                if run.get("status") == "completed":
                    cases.append(
                        pytest.param(
                            version, config["argv"], run, id=f"{version}-{name}-{run_name}"
                        )
                    )
    return cases


def _model(version: str, argv: str, device_state: int | None = None) -> tuple[QemuStream, Any]:
    words = argv.split()
    machine = words[words.index("-M") + 1]
    mem = int(words[words.index("-m") + 1]) << 20
    layout = layout_for(PROFILES[version], machine, mem, defaults="-nodefaults" not in words)
    stream = QemuStream(
        PROFILES[version],
        BlockMap(layout.block_list()),
        configuration_bytes=layout.configuration_bytes,
        device_state_bytes=layout.device_state_bytes if device_state is None else device_state,
    )
    return stream, layout


def _section_pages(layout: Any, section: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    first = {b.name: b.first_page for b in layout.blocks}
    pages: list[int] = []
    zero: list[bool] = []
    for block, start, count, kind, _ in section["runs"]:
        pages.extend(range(first[block] + start, first[block] + start + count))
        zero.extend([kind == "z"] * count)
    return np.asarray(pages, dtype=np.int64), np.asarray(zero, dtype=bool)


@pytest.mark.parametrize(("version", "argv", "run"), _runs())
def test_counters_equal_qemus(version: str, argv: str, run: dict[str, Any]) -> None:
    # the device state's size varies by a few bytes between runs (the recorded table has one)
    device_state = run["stream"]["device_state"]["bytes"]
    stream, layout = _model(version, argv, device_state)
    assert abs(layout.device_state_bytes - device_state) < device_state // 100
    stream.setup(return_path=False)
    for section in run["raw_runs"]:
        if section["kind"] == "START":
            continue
        pages, zero = _section_pages(layout, section)
        final = section["kind"] == "END"
        if final:
            stream.switchover()
        else:
            stream.begin_section()
        stream.add_pages(pages, stream.cost(pages, zero), downtime=final)
        stream.end_section(downtime=final, final=final)
    stream.complete()
    ram = json.loads(run["query_migrate"])["return"]["ram"]
    assert stream.flushed == run["stream"]["total_bytes"]
    assert stream.transferred == ram["transferred"]
    assert (
        stream.precopy_bytes + stream.downtime_bytes == ram["precopy-bytes"] + ram["downtime-bytes"]
    )
    assert stream.normal_pages == ram["normal"]
    assert stream.zero_pages == ram["duplicate"]


@pytest.mark.parametrize("version", ["7.2", "10.0"])
def test_the_rate_limit_cuts_the_first_section_where_qemu_did(version: str) -> None:
    recording = json.loads((RECORDINGS / f"qemu-{version}.json").read_text())
    config = recording["configs"]["pc-64"]
    run = config["runs"]["bw2M"]
    stream, layout = _model(version, config["argv"])
    stream.setup(return_path=False)
    parts = [s for s in run["raw_runs"] if s["kind"] == "PART"]
    everything = [_section_pages(layout, s) for s in run["raw_runs"] if s["kind"] != "START"]
    pages = np.concatenate([p for p, _ in everything])
    zero = np.concatenate([z for _, z in everything])
    stream.begin_section()
    sent = stream.fit(stream.cost(pages, zero), run["max_bandwidth"] // 10)
    assert sent == _section_pages(layout, parts[0])[0].size
