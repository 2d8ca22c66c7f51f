"""``query-migrationthreads`` between two real processes: the names and order QEMU lists
(``fixtures/migration_threads/qemu-<v>.json``, recorded by ``tools/record_migration_threads.py``)
and, while the migration runs, ids that are real threads of the source process.

Ids differ on every run, so only names, order and presence are compared with the recording.
The source's bandwidth is kept low until the running queries are done, then raised so the
migration completes. Plain precopy and a cancel are two-party conformance scenarios
(``tests/conformance/two_party/scenarios/migrationthreads-*.json``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from migration_rig import MiB, Rig, Side
from qemu.qmp import ExecuteError

FIXTURES = Path(__file__).parent / "fixtures" / "migration_threads"


def recorded(version: str, case: str, side: str, phase: str) -> dict[str, Any]:
    data = json.loads((FIXTURES / f"qemu-{version}.json").read_text())
    (found,) = [c for c in data["cases"] if c["name"] == case]
    (query,) = [q for q in found["queries"] if q["side"] == side and q["phase"] == phase]
    return dict(query)


def recorded_names(version: str, case: str, side: str, phase: str) -> list[str]:
    return list(recorded(version, case, side, phase)["names"])


def tasks(side: Side) -> set[int]:
    return {int(t) for t in os.listdir(f"/proc/{side.server.proc.pid}/task")}


async def threads(side: Side) -> list[dict[str, Any]]:
    reply = await side.run("query-migrationthreads")
    assert isinstance(reply, list)
    for entry in reply:
        assert list(entry) == ["name", "thread-id"]
    return reply


async def slow_pair(rig: Rig, version: str, channels: int) -> tuple[Side, Side, str]:
    source, dest, uri = await rig.pair(
        "--compat", version, "-machine", "pc", "-m", "64", "-nodefaults",
        caps={"multifd": True} if channels else None, uri=rig.unix_uri(),
    )  # fmt: skip
    if channels:
        for side in (source, dest):
            await side.params(multifd_channels=channels)
    # 64 MiB at 1 MiB/s: active for a minute unless the bandwidth is raised
    await source.params(max_bandwidth=1 * MiB)
    return source, dest, uri


async def check_running(
    source: Side, dest: Side, uri: str, expected: list[str]
) -> list[dict[str, Any]]:
    """The running migration's threads: QEMU's names in QEMU's order, each a live task."""
    await source.run("migrate", {"uri": uri})
    await source.wait_status("active")
    listed = await threads(source)
    assert [t["name"] for t in listed] == expected
    live = tasks(source)
    ids = [t["thread-id"] for t in listed]
    assert all(i in live for i in ids), (ids, live)
    assert len(set(ids)) == len(ids)
    assert source.server.proc.pid not in ids  # never the main thread (QEMU's neither)
    for tid in ids:  # what users do with them: pin each one (here to the CPUs it has)
        os.sched_setaffinity(tid, os.sched_getaffinity(tid))
    assert await threads(dest) == []
    # the listing above was taken while active
    assert (await source.run("query-migrate"))["status"] == "active"
    return listed


async def test_multifd_threads_10_0(rig: Rig) -> None:
    """10.0, multifd with 2 channels: before, while active, after completion."""
    source, dest, uri = await slow_pair(rig, "10.0", 2)
    before = recorded("10.0", "multifd-2", "src", "before")["reply"]
    listening = recorded("10.0", "multifd-2", "dst", "listening")["reply"]
    assert await threads(source) == before["return"] == []
    assert await threads(dest) == listening["return"] == []
    expected = recorded_names("10.0", "multifd-2", "src", "active")
    assert expected == ["mig/src/send_1", "mig/src/send_0", "mig/src/main"]
    await check_running(source, dest, uri, expected)
    await source.params(max_bandwidth=10_000 * MiB)
    assert await source.wait_status("completed", "failed") == "completed"
    assert await dest.wait_status("completed", "failed") == "completed"
    assert recorded_names("10.0", "multifd-2", "src", "after-complete") == []
    assert await threads(source) == []
    assert await threads(dest) == []


async def test_multifd_threads_8_1(rig: Rig) -> None:
    """8.1 lists the same threads under their older names (QEMU's source history, not live)."""
    source, dest, uri = await slow_pair(rig, "8.1", 4)
    # the live 10.0 order of four senders varies with which one starts first; ours is the
    # order they start in: the last channel first, the main thread last
    shape = recorded_names("10.0", "multifd-4", "src", "active")
    assert sorted(shape[:-1]) == [f"mig/src/send_{i}" for i in range(4)]
    assert shape[-1] == "mig/src/main"
    listed = await check_running(
        source, dest, uri, [*(f"multifdsend_{i}" for i in (3, 2, 1, 0)), "live_migration"]
    )
    assert len(listed) == 5
    await source.run("migrate_cancel")
    assert await source.wait_status("cancelled", "failed") == "cancelled"
    assert await threads(source) == []


@pytest.mark.parametrize("version", ["7.2", "default"])
async def test_no_command_before_8_1(rig: Rig, version: str) -> None:
    """7.2 has no query-migrationthreads (recorded live), nor the 8.0.50 profile."""
    compat = ("--compat", version) if version != "default" else ()
    side = await rig.side(*compat, "-machine", "none", events=False)
    want = recorded("7.2", "multifd-2", "src", "active")["reply"]["error"]
    with pytest.raises(ExecuteError) as err:
        await side.run("query-migrationthreads")
    info = err.value.error.error
    assert (info.class_, info.desc) == (want["class"], want["desc"])


async def test_mapped_ram_multifd_lists_its_page_writers(rig: Rig, tmp_path: Path) -> None:
    """10.0, mapped-ram + multifd to a file: the channels' threads are the ones that write
    the pages at their places (live 10.0 lists send_1, send_0, main while active)."""
    source = await rig.side("--compat", "10.0", "-machine", "pc", "-m", "64", "-nodefaults")
    await source.caps(**{"mapped-ram": True, "multifd": True, "pause-before-switchover": True})
    await source.run("migrate", {"uri": f"file:{tmp_path / 'guest.sav'}"})
    await source.wait_status("pre-switchover")  # held there: the threads are still up
    listed = await threads(source)
    assert [t["name"] for t in listed] == ["mig/src/send_1", "mig/src/send_0", "mig/src/main"]
    ids = [t["thread-id"] for t in listed]
    assert all(i in tasks(source) for i in ids) and len(set(ids)) == 3
    await source.run("migrate-continue", {"state": "pre-switchover"})
    assert await source.wait_status("completed", "failed") == "completed"
    assert await threads(source) == []
