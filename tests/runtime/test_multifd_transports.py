"""Multifd over a transport without several channels: 10.0 refuses ``migrate`` at once,
7.2 starts and fails without an error-desc (live, docs/multifd-facts.md §8)."""

from __future__ import annotations

import pytest
from migration_rig import Rig


async def test_qemu_10_refuses_a_single_channel_transport(rig: Rig) -> None:
    source = await rig.side("--compat", "10.0", "-m", "64")
    await source.caps(multifd=True)
    for uri in ("exec:cat > /dev/null", "fd:nosuch"):
        with pytest.raises(Exception, match=r"Migration requires multi-channel URIs \(e.g. tcp\)"):
            await source.run("migrate", {"uri": uri})
    assert await source.run("query-migrate") == {}


async def test_qemu_72_fails_on_exec(rig: Rig) -> None:
    source = await rig.side("--compat", "7.2", "-m", "64")
    await source.caps(multifd=True)
    await source.run("migrate", {"uri": "exec:cat > /dev/null"})
    assert await source.wait_status("failed", "completed") == "failed"
    assert await source.run("query-migrate") == {"status": "failed"}
