"""XBZRLE between two real processes: a guest that rewrites a few bytes of the same pages
converges with xbzrle where plain precopy at that bandwidth keeps re-sending whole pages."""

from __future__ import annotations

import pytest
from migration_rig import MiB, Rig

WORKLOAD = ("--dirty-rate", "8M", "--dirty-write-bytes", "64", "--dirty-working-set", "16M")


@pytest.mark.parametrize("version", ["7.2", "10.0"])
async def test_xbzrle_deltas_carry_a_partial_write_workload(rig: Rig, version: str) -> None:
    source, dest, uri = await rig.pair(
        "--compat", version, "-machine", "pc", "-m", "256", "-nodefaults",
        src=WORKLOAD, caps={"xbzrle": True}, uri=rig.unix_uri(),
    )  # fmt: skip
    await source.params(max_bandwidth=4 * MiB)
    await source.run("migrate", {"uri": uri})
    assert await source.wait_status("completed", "failed", within=60) == "completed"
    assert await dest.wait_status("completed", "failed") == "completed"
    info = await source.run("query-migrate")
    cache = info["xbzrle-cache"]
    assert cache["cache-size"] == 64 * MiB
    assert cache["pages"] > 0 and cache["cache-miss"] > 0
    assert 0 < cache["bytes"] < cache["pages"] * 4096  # deltas, far smaller than pages
    assert (await dest.digest())["ram"] == (await source.digest())["ram"]


async def test_xbzrle_cache_members_only_with_the_capability(rig: Rig) -> None:
    source, _dest, uri = await rig.pair(
        "--compat", "7.2", "-machine", "pc", "-m", "64", "-nodefaults", uri=rig.unix_uri()
    )
    await source.run("migrate", {"uri": uri})
    assert await source.wait_status("completed", "failed") == "completed"
    assert "xbzrle-cache" not in await source.run("query-migrate")


async def test_dirty_write_options_are_checked(rig: Rig) -> None:
    source = await rig.side("--compat", "7.2", "-m", "64")
    with pytest.raises(Exception, match="write-bytes"):
        await source.run("x-set-dirty-rate", {"rate": 1024, "write-bytes": 5000})
    await source.run("x-set-dirty-rate", {"rate": 1024, "write-bytes": 16})
