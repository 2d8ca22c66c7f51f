"""Postcopy between two real processes: the switch, page requests, blocktime, digests.

The destination guest runs while its RAM is still arriving; a workload that writes pages on
the destination makes it fault, request pages over the return path and wait for them.  What
the source guest held when it stopped must be what the destination received: the destination
checks the source's RAM digest against the content it received (its own guest's writes set
aside) before it reports ``completed``; with an idle destination the digests are equal.
"""

from __future__ import annotations

from typing import Any

import pytest
from migration_rig import MiB, Rig, Side

VERSIONS = ["7.2", "10.0"]


async def _postcopy_pair(
    rig: Rig, version: str, *, dst_rate: int, blocktime: bool = False
) -> tuple[Side, Side, str]:
    source, dest, uri = await rig.pair(
        "--compat", version, "-machine", "pc", "-m", "64", "-nodefaults",
        caps={"postcopy_ram": True},
        dst_caps={"postcopy_ram": True, "postcopy_blocktime": blocktime},
        uri=rig.unix_uri(),
    )  # fmt: skip
    # precopy cannot converge: 4 MiB/s dirtied, 1 MiB/s sent
    await source.run("x-set-dirty-rate", {"rate": 4 * MiB})
    await source.params(max_bandwidth=1 * MiB, max_postcopy_bandwidth=4 * MiB)
    if dst_rate:
        await dest.run("x-set-dirty-rate", {"rate": dst_rate})
    return source, dest, uri


async def _switch(source: Side, dest: Side, uri: str) -> None:
    await source.run("migrate", {"uri": uri})
    await source.wait_status("active")
    await source.run("migrate-start-postcopy")
    await source.wait_status("postcopy-active")
    await dest.wait_event("RESUME")


def _ram(info: dict[str, Any]) -> dict[str, Any]:
    ram: dict[str, Any] = info["ram"]
    return ram


@pytest.mark.parametrize("version", VERSIONS)
async def test_faults_are_requested_and_nothing_is_lost(rig: Rig, version: str) -> None:
    source, dest, uri = await _postcopy_pair(rig, version, dst_rate=2 * MiB, blocktime=True)
    await _switch(source, dest, uri)
    assert await source.status() == "finish-migrate"
    assert await dest.status() == "running"
    assert await source.wait_status("completed", "failed", "postcopy-paused") == "completed"
    assert await dest.wait_status("completed", "failed", "postcopy-paused") == "completed"
    ram = _ram(await source.run("query-migrate"))
    assert ram["postcopy-requests"] > 0  # the destination's writes faulted
    assert ram["postcopy-bytes"] > 0 and ram["precopy-bytes"] > 0
    assert ram["transferred"] >= ram["postcopy-bytes"] + ram["precopy-bytes"]
    info = await dest.run("query-migrate")
    assert info["status"] == "completed"
    assert info["postcopy-blocktime"] >= 0
    assert len(info["postcopy-vcpu-blocktime"]) == 1
    assert await source.status() == "postmigrate"
    assert await dest.status() == "running"


@pytest.mark.parametrize("version", VERSIONS)
async def test_idle_destination_holds_the_stopped_source_guest(rig: Rig, version: str) -> None:
    source, dest, uri = await _postcopy_pair(rig, version, dst_rate=0)
    await _switch(source, dest, uri)
    stopped = await source.digest()  # the source's guest stays stopped from here on
    assert await dest.wait_status("completed", "failed", "postcopy-paused") == "completed"
    assert (await dest.digest())["ram"] == stopped["ram"]
    assert "postcopy-blocktime" not in await dest.run("query-migrate")


@pytest.mark.parametrize("side", ["src", "dst"])
async def test_pause_and_recover(rig: Rig, side: str) -> None:
    source, dest, uri = await _postcopy_pair(rig, "10.0", dst_rate=0)
    await source.params(max_postcopy_bandwidth=200_000)  # long enough to pause it
    await _switch(source, dest, uri)
    stopped = await source.digest()
    await (source if side == "src" else dest).run("migrate-pause")
    assert await source.wait_status("postcopy-paused") == "postcopy-paused"
    assert await dest.wait_status("postcopy-paused") == "postcopy-paused"
    assert await dest.status() == "running"  # the guest runs on through the pause
    paused = await source.run("query-migrate")
    sent_before = _ram(paused)["postcopy-bytes"]
    new_uri = rig.unix_uri()
    await dest.run("migrate-recover", {"uri": new_uri})
    await source.params(max_postcopy_bandwidth=0)
    source.mark()
    dest.mark()
    await source.run("migrate", {"uri": new_uri, "resume": True})
    assert await source.wait_status("completed", "postcopy-paused") == "completed"
    assert await dest.wait_status("completed", "postcopy-paused") == "completed"
    assert (await dest.digest())["ram"] == stopped["ram"]
    done = _ram(await source.run("query-migrate"))
    # the pages sent before the pause were not sent again: the whole guest costs once
    assert done["postcopy-bytes"] >= sent_before
    assert done["duplicate"] + done["normal"] <= 2 * (64 * MiB // 4096)


async def test_cancel_refused_in_postcopy_on_10(rig: Rig) -> None:
    source, dest, uri = await _postcopy_pair(rig, "10.0", dst_rate=0)
    await source.params(max_postcopy_bandwidth=100_000)
    await _switch(source, dest, uri)
    with pytest.raises(Exception, match=r"Postcopy migration in progress, cannot cancel\."):
        await source.run("migrate_cancel")
    await source.params(max_postcopy_bandwidth=0)
    assert await source.wait_status("completed", "failed") == "completed"


@pytest.mark.parametrize("version", ["8.1", "10.0"])
async def test_postcopy_waits_for_the_switchover_ack_and_carries_devices(
    rig: Rig, version: str
) -> None:
    """A vfio-sim device that needs 400 ms to allocate on the destination: with
    ``switchover-ack`` the switch to postcopy waits for its ACK (as QEMU 10.0 gates it, live),
    then the device's state travels before the destination runs, and its digest matches."""
    device = ("-device", "vfio-sim,id=nic0,initial-bytes=2M,state-bytes=64K,load-ms=400")
    caps = {"postcopy_ram": True, "return_path": True, "switchover_ack": True}
    source, dest, uri = await rig.pair(
        "--compat", version, "-machine", "pc", "-m", "64", "-nodefaults", *device,
        caps=caps, uri=rig.unix_uri(),
    )  # fmt: skip
    await source.params(max_bandwidth=64 * MiB)
    await source.run("x-set-dirty-rate", {"rate": 2 * MiB})
    await source.run("migrate", {"uri": uri})
    await source.wait_status("active")
    await source.run("migrate-start-postcopy")
    assert await source.wait_status("postcopy-active", "completed") == "postcopy-active"
    assert await dest.wait_status("completed", "failed") == "completed"
    assert await source.wait_status("completed", "failed") == "completed"
    src_digest = await source.digest()
    assert (await dest.digest())["devices"] == src_digest["devices"]
    info = await source.run("query-migrate")
    assert info["vfio"]["transferred"] >= 2 * MiB


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_postcopy_that_arrives_in_one_read_completes(rig: Rig, version: str) -> None:
    """An idle guest switched at once: the whole postcopy phase (LISTEN, RUN, the last pages,
    COMPLETE) reaches the destination in one read, and the postcopy loader must take the
    events already decoded before it waits for more (it used to wait for ever)."""
    source, dest, uri = await rig.pair(
        "--compat", version, "-machine", "pc", "-m", "1024", "-nodefaults",
        caps={"postcopy_ram": True}, uri=rig.unix_uri(),
    )  # fmt: skip
    for _ in range(3):
        source.mark()
        dest.mark()
        await source.run("migrate", {"uri": uri})
        await source.wait_status("active")
        await source.run("migrate-start-postcopy")
        assert await source.wait_status("completed", "failed", within=15) == "completed"
        assert await dest.wait_status("completed", "failed", within=15) == "completed"
        source, dest, uri = await rig.pair(
            "--compat", version, "-machine", "pc", "-m", "1024", "-nodefaults",
            caps={"postcopy_ram": True}, uri=rig.unix_uri(),
        )  # fmt: skip
