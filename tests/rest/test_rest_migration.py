"""The REST mirror while a real migration between two processes runs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
from conftest import RestServer
from httpx_sse import aconnect_sse
from prometheus_client.parser import text_string_to_metric_families
from qemu.qmp import QMPClient
from server_process import ServerProcess, free_port

#: ``-m 128M`` with default devices: pc.ram, VGA memory and the ROMs (QEMU 7.2 blocks)
PC_128M_TOTAL = 151855104
MiB = 1 << 20
IN_PROGRESS = "There's a migration process in progress"


def _names(events: list[tuple[str, dict[str, Any]]]) -> list[str]:
    out = []
    for name, data in events:
        if name == "MIGRATION":
            out.append(data["status"])
        elif name == "MIGRATION_PASS":
            out.append(f"PASS {data['pass']}")
        elif name in ("STOP", "RESUME"):
            out.append(name)
    return out


async def test_migration_seen_over_rest_sse_and_metrics(
    rest_server: Callable[..., RestServer], qmp_server: Callable[..., ServerProcess]
) -> None:
    source = rest_server("-m", "128M", "--guest-fill", "random", "--dirty-rate", "4M",
                         token=True)  # fmt: skip
    dest = qmp_server("-m", "128M", "-incoming", "defer")
    src, dst = QMPClient("src"), QMPClient("dst")
    await src.connect(source.socket)
    await dst.connect(dest.socket)
    qmp_events: list[tuple[str, dict[str, Any]]] = []
    sse_events: list[tuple[str, dict[str, Any], int]] = []

    async def watch_qmp() -> None:
        async for event in src.events:
            qmp_events.append((event["event"], event.get("data", {})))

    watcher = asyncio.get_running_loop().create_task(watch_qmp())
    try:
        async with httpx.AsyncClient(base_url=source.base_url, timeout=10,
                                     headers=source.auth()) as http:  # fmt: skip
            reply = await http.patch("/api/v1/capabilities", json={
                "capabilities": [{"capability": "events", "state": True}]})
            assert reply.status_code == 200
            reply = await http.patch("/api/v1/parameters", json={"max-bandwidth": 48 * MiB})
            assert reply.json()["max-bandwidth"] == 48 * MiB
            uri = f"tcp:127.0.0.1:{free_port()}"
            await dst.execute("migrate-incoming", {"uri": uri})

            async with aconnect_sse(http, "GET", "/api/v1/events") as stream:
                events = stream.aiter_sse()
                assert (await asyncio.wait_for(events.__anext__(), 5)).event == "hello"

                async def collect() -> None:
                    async for message in events:
                        payload = json.loads(message.data)
                        sse_events.append((message.event, payload["data"], int(message.id)))
                        if message.event == "MIGRATION" and payload["data"]["status"] in (
                            "completed", "failed", "cancelled"):
                            return

                collector = asyncio.get_running_loop().create_task(collect())
                await src.execute("migrate", {"uri": uri})

                # While it runs: REST sits between two QMP answers taken around it.
                samples = 0
                while samples < 3:
                    q1 = await src.execute("query-migrate")
                    rest = (await http.get("/api/v1/migration")).json()
                    q2 = await src.execute("query-migrate")
                    if q1.get("status") != "active" or q2.get("status") != "active":
                        await asyncio.sleep(0.02)
                        if q2.get("status") in ("completed", "failed"):
                            break
                        continue
                    info = rest["info"]
                    assert info["status"] == "active"
                    assert q1["ram"]["total"] == info["ram"]["total"] == PC_128M_TOTAL
                    assert (q1["ram"]["transferred"] <= info["ram"]["transferred"]
                            <= q2["ram"]["transferred"])  # fmt: skip
                    derived = rest["derived"]
                    assert 0 <= derived["progress-percent"] <= 100
                    assert derived["status"] == "active"
                    for route, command in [("/api/v1/capabilities", "query-migrate-capabilities"),
                                           ("/api/v1/parameters", "query-migrate-parameters"),
                                           ("/api/v1/status", "query-status")]:
                        assert (await http.get(route)).json() == await src.execute(command)
                    busy = await http.patch("/api/v1/capabilities", json={
                        "capabilities": [{"capability": "xbzrle", "state": True}]})
                    if busy.status_code != 409:  # it may have completed in between
                        assert (await src.execute("query-migrate"))["status"] != "active"
                    else:
                        assert busy.json() == {"class": "GenericError", "desc": IN_PROGRESS}
                    samples += 1
                    await asyncio.sleep(0.1)
                await asyncio.wait_for(collector, 30)

            final = (await http.get("/api/v1/migration")).json()
            metrics = (await http.get("/metrics")).text
        await asyncio.sleep(0.1)
    finally:
        watcher.cancel()
        await src.disconnect()
        await dst.disconnect()

    assert samples >= 1, "never saw the migration active"
    names = _names([(n, d) for n, d, _ in sse_events])
    assert names[:3] == ["setup", "PASS 1", "active"], names
    assert names[-1] == "completed" and "STOP" in names
    assert names == _names(qmp_events)[: len(names)]  # same events, same order as over QMP
    ids = [i for _, _, i in sse_events]
    assert ids == list(range(ids[0], ids[0] + len(ids)))

    assert final["info"]["status"] == "completed"
    d = final["derived"]
    assert d["progress-percent"] == 100.0 and d["downtime-ms"] is not None
    assert d["iteration"] == final["info"]["ram"]["dirty-sync-count"] >= 1

    families = {f.name: f.samples for f in text_string_to_metric_families(metrics)}
    status = {s.labels["status"]: s.value for s in families["qmpmig_migration_status"]}
    assert status["completed"] == 1
    assert families["qmpmig_migration_data_total_bytes"][0].value == PC_128M_TOTAL
    assert families["qmpmig_migration_data_remaining_bytes"][0].value == 0
    assert families["qmpmig_migration_downtime_seconds"][0].value > 0
    assert families["qmpmig_migration_iterations"][0].value == d["iteration"]
