"""Multifd with zstd through the REST mirror: capabilities and parameters on both sides,
the migration, and the multifd bytes in query-migrate and in the Prometheus metrics."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
from conftest import RestServer
from prometheus_client.parser import text_string_to_metric_families
from test_rest_postcopy import _wait


async def test_multifd_zstd_over_rest(
    rest_server: Callable[..., RestServer], tmp_path: Path
) -> None:
    common = ("--compat", "10.0", "-m", "64M", "--guest-fill", "text")
    source = rest_server(*common, token=True)
    dest = rest_server(*common, "-incoming", "defer", token=True)
    caps = {"capabilities": [{"capability": "multifd", "state": True}]}
    params = {"multifd-channels": 3, "multifd-compression": "zstd"}
    async with (
        httpx.AsyncClient(base_url=source.base_url, timeout=10, headers=source.auth()) as src,
        httpx.AsyncClient(base_url=dest.base_url, timeout=10, headers=dest.auth()) as dst,
    ):
        for side in (src, dst):
            assert (await side.patch("/api/v1/capabilities", json=caps)).is_success
            assert (await side.patch("/api/v1/parameters", json=params)).is_success
        uri = f"unix:{tmp_path}/mig.sock"
        assert (await dst.post("/api/v1/qmp/migrate-incoming", json={"uri": uri})).is_success
        assert (await src.post("/api/v1/qmp/migrate", json={"uri": uri})).is_success
        done = await _wait(src, "completed", "failed")
        await _wait(dst, "completed", "failed")
        metrics = (await src.get("/metrics")).text
    assert done["derived"]["status"] == "completed"
    sent = done["info"]["ram"]["multifd-bytes"]
    assert 0 < sent < 32 << 20  # 64 MiB of text, zstd in the channels (10.0 counts written)
    families = {f.name: f.samples for f in text_string_to_metric_families(metrics)}
    assert families["qmpmig_migration_multifd_bytes"][0].value == sent
