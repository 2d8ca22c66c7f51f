"""Postcopy through the REST mirror: the switch, a pause, the recovery, and what both sides show.

Both processes serve the mirror; every postcopy command goes through
``POST /api/v1/qmp/{command}`` with the bearer token, as the dashboard's buttons send them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from conftest import RestServer
from prometheus_client.parser import text_string_to_metric_families

MiB = 1 << 20


async def _wait(http: httpx.AsyncClient, *statuses: str) -> dict[str, Any]:
    """``GET /api/v1/migration`` until ``derived.status`` is one of ``statuses`` (30 s)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:
        answer: dict[str, Any] = (await http.get("/api/v1/migration")).json()
        if answer["derived"]["status"] in statuses:
            return answer
        assert loop.time() < deadline, answer
        await asyncio.sleep(0.02)


async def test_postcopy_pause_and_recovery_over_rest(
    rest_server: Callable[..., RestServer], tmp_path: Path
) -> None:
    source = rest_server("-m", "64M", "--guest-fill", "random", token=True)
    dest = rest_server("-m", "64M", "-incoming", "defer", "--dirty-rate", "1M", token=True)
    caps = [{"capability": name, "state": True} for name in ("events", "postcopy-ram")]
    async with (
        httpx.AsyncClient(base_url=source.base_url, timeout=10, headers=source.auth()) as src,
        httpx.AsyncClient(base_url=dest.base_url, timeout=10, headers=dest.auth()) as dst,
    ):
        assert (await src.patch("/api/v1/capabilities", json={"capabilities": caps})).is_success
        blocktime = [*caps, {"capability": "postcopy-blocktime", "state": True}]
        reply = await dst.patch("/api/v1/capabilities", json={"capabilities": blocktime})
        assert reply.is_success
        reply = await src.patch(
            "/api/v1/parameters", json={"max-bandwidth": MiB, "max-postcopy-bandwidth": MiB}
        )
        assert reply.is_success
        uri = f"unix:{tmp_path}/mig.sock"
        assert (await dst.post("/api/v1/qmp/migrate-incoming", json={"uri": uri})).is_success
        assert (await src.post("/api/v1/qmp/migrate", json={"uri": uri})).is_success
        await _wait(src, "active")
        reply = await src.post("/api/v1/qmp/migrate-start-postcopy")
        assert reply.status_code == 200 and reply.json() == {}

        answer = await _wait(src, "postcopy-active")
        assert answer["derived"]["postcopy"] is True
        assert answer["derived"]["postcopy-bytes"] is not None
        dest_view = await _wait(dst, "postcopy-active")
        assert dest_view["derived"]["postcopy"] is True
        assert dest_view["derived"]["postcopy-blocktime-ms"] is None  # only at completion

        # a recovery before any pause is refused with QEMU's text
        refused = await dst.post("/api/v1/qmp/migrate-recover", json={"uri": uri})
        assert refused.status_code == 400
        assert refused.json() == {
            "class": "GenericError",
            "desc": "Migrate recover can only be run when postcopy is paused.",
        }

        assert (await src.post("/api/v1/qmp/migrate-pause")).json() == {}
        await _wait(src, "postcopy-paused")
        paused = await _wait(dst, "postcopy-paused")
        assert paused["derived"]["postcopy"] is True
        metrics = (await src.get("/metrics")).text
        families = {f.name: f.samples for f in text_string_to_metric_families(metrics)}
        states = {s.labels["status"]: s.value for s in families["qmpmig_migration_status"]}
        assert states["postcopy-paused"] == 1

        recover = f"unix:{tmp_path}/recover.sock"
        assert (await dst.post("/api/v1/qmp/migrate-recover", json={"uri": recover})).is_success
        resume = {"uri": recover, "resume": True}
        assert (await src.post("/api/v1/qmp/migrate", json=resume)).is_success
        await _wait(src, "postcopy-active", "completed")
        reply = await src.patch("/api/v1/parameters", json={"max-postcopy-bandwidth": 256 * MiB})
        assert reply.is_success

        done = await _wait(src, "completed")
        dest_done = await _wait(dst, "completed")
        metrics = (await dst.get("/metrics")).text
        src_metrics = (await src.get("/metrics")).text

    d = done["derived"]
    assert d["postcopy"] is True and d["postcopy-bytes"] > 32 * MiB
    assert d["postcopy-requests"] == done["info"]["ram"]["postcopy-requests"]
    dd = dest_done["derived"]
    assert dd["postcopy-blocktime-ms"] == dest_done["info"]["postcopy-blocktime"]
    assert dd["postcopy-vcpu-blocktime-ms"] == dest_done["info"]["postcopy-vcpu-blocktime"]
    families = {f.name: f.samples for f in text_string_to_metric_families(metrics)}
    blocked = families["qmpmig_migration_postcopy_blocktime_seconds"][0].value
    assert blocked == dd["postcopy-blocktime-ms"] / 1000
    families = {f.name: f.samples for f in text_string_to_metric_families(src_metrics)}
    assert families["qmpmig_migration_postcopy_bytes"][0].value == d["postcopy-bytes"]
    requests = families["qmpmig_migration_postcopy_requests"]
    assert requests[0].value == d["postcopy-requests"]
