"""A postcopy connection cut at random points: both sides pause, recovery completes, and the
destination holds exactly the guest the source stopped.

The cut is made by the test's proxy (``_proxy.py``, both directions reset) at a random byte
offset of the postcopy phase; recovery goes through a second proxy that does not cut.  Never
``failed``: postcopy's guest lives on the destination, and only a recovery can finish it.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from _figures import record
from _proxy import FaultProxy
from conftest import MiB, Rig
from server_process import free_port

#: seeds of the cut offsets (each a different point of the postcopy stream)
SEEDS = [1, 2, 3, 4]


@pytest.mark.parametrize("seed", SEEDS)
async def test_cut_during_postcopy_then_recover(rig: Rig, seed: int) -> None:
    rng = random.Random(seed)
    version = rng.choice(["7.2", "10.0"])
    common = ("--compat", version, "-machine", "pc", "-m", "64", "-nodefaults")
    source = await rig.side(*common)
    dest = await rig.side(*common, "-incoming", "defer")
    for side in (source, dest):
        await side.caps(postcopy_ram=True)
    await source.run("x-set-dirty-rate", {"rate": 4 * MiB})
    # the destination's guest writes too: page requests cross the cut
    dst_rate = rng.choice([0, 1 * MiB])
    await dest.run("x-set-dirty-rate", {"rate": dst_rate})
    await source.params(max_bandwidth=1 * MiB, max_postcopy_bandwidth=400_000)
    port = free_port()
    await dest.run("migrate-incoming", {"uri": f"tcp:127.0.0.1:{port}"})
    proxy = FaultProxy(port)
    again = FaultProxy(0)
    await proxy.start()
    try:
        await source.run("migrate", {"uri": proxy.uri})
        await source.wait_status("active")
        await source.run("migrate-start-postcopy")
        await dest.wait_event("RESUME")
        stopped = await source.digest()
        proxy.at = proxy.forwarded + rng.randrange(1, 300_000)
        proxy.mode = "cut"
        await asyncio.wait_for(proxy.fault_hit.wait(), 30)
        assert await source.wait_status("postcopy-paused", "failed") == "postcopy-paused"
        assert await dest.wait_status("postcopy-paused", "failed") == "postcopy-paused"
        assert await dest.status() == "running"
        port2 = free_port()
        await dest.run("migrate-recover", {"uri": f"tcp:127.0.0.1:{port2}"})
        again = FaultProxy(port2)
        await again.start()
        source.mark()
        dest.mark()
        await source.params(max_postcopy_bandwidth=0)
        await source.run("migrate", {"uri": again.uri, "resume": True})
        assert await source.wait_status("completed", "postcopy-paused") == "completed"
        assert await dest.wait_status("completed", "postcopy-paused") == "completed"
        # the destination checked what it received against the source's RAM digest; with an
        # idle destination guest the digests are equal too
        if not dst_rate:
            assert (await dest.digest())["ram"] == stopped["ram"]
    finally:
        await proxy.close()
        await again.close()
    record(f"test_postcopy_faults::cut-{seed}-{version}", cut_after=proxy.forwarded,
           recovered_bytes=again.forwarded)  # fmt: skip
