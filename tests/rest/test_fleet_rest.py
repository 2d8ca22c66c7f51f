"""The fleet's REST mirror against one real fleet process (``--fleet-size 3``) per module.

Every answer is compared with what the VM's (or the fleet's) own QMP monitor says.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fleet_process import LINK_BANDWIDTH, FleetServer, start_fleet
from httpx_sse import ServerSentEvent, aconnect_sse
from prometheus_client.parser import text_string_to_metric_families
from qemu.qmp import ExecuteError, QMPClient
from server_process import free_port

from qmp_server.rest.events import EventHub

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetServer]:
    server = start_fleet(tmp_path_factory.mktemp("fleet"))
    yield server
    server.stop()


async def _qmp(path: str, command: str, args: dict[str, Any] | None = None) -> Any:
    client = QMPClient("fleet-test")
    await client.connect(path)
    try:
        return await client.execute(command, args)
    finally:
        await client.disconnect()


def _add(http: httpx.Client, fleet: FleetServer, name: str, *extra: str) -> httpx.Response:
    return http.post("/api/v1/vms", headers=fleet.auth(),
                     json={"name": name, "args": fleet.vm_args(name, *extra)})  # fmt: skip


def _metrics(text: str) -> dict[str, list[Any]]:
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


async def test_vm_list_is_the_fleet_monitors_query_fleet(fleet: FleetServer) -> None:
    with fleet.client() as http:
        listed = http.get("/api/v1/vms").json()
        assert listed == await _qmp(fleet.socket, "query-fleet")
        assert [vm["name"] for vm in listed][:3] == ["vm0", "vm1", "vm2"]
        one = http.get("/api/v1/vms/vm1").json()
        assert one == listed[1] and one["monitors"] == [f"unix:{fleet.vm_socket('vm1')}"]


async def test_per_vm_routes_answer_for_that_vm(fleet: FleetServer) -> None:
    with fleet.client() as http:
        for path, command in (("status", "query-status"),
                              ("parameters", "query-migrate-parameters"),
                              ("capabilities", "query-migrate-capabilities")):  # fmt: skip
            expected = await _qmp(fleet.vm_socket("vm2"), command)
            assert http.get(f"/api/v1/vms/vm2/{path}").json() == expected
        reply = http.post("/api/v1/vms/vm2/qmp/query-version")
        assert reply.json() == await _qmp(fleet.vm_socket("vm2"), "query-version")
        assert http.get("/api/v1/vms/vm2/migration").json()["derived"]["status"] == "none"
        assert http.get("/api/v1/vms/vm2/healthz").json()["writable"] is True
        assert any(e["name"] == "query-status" for e in http.get("/api/v1/vms/vm2/schema").json())

        # A mutation needs the token, and changes that VM only.
        body = {"max-bandwidth": 12345678}
        assert http.patch("/api/v1/vms/vm2/parameters", json=body).status_code == 401
        assert http.post("/api/v1/vms/vm2/qmp/stop").status_code == 401
        patched = http.patch("/api/v1/vms/vm2/parameters", json=body, headers=fleet.auth())
        assert patched.status_code == 200 and patched.json()["max-bandwidth"] == 12345678
        other = await _qmp(fleet.vm_socket("vm1"), "query-migrate-parameters")
        assert other["max-bandwidth"] != 12345678

        # The VM's own errors, mapped as the one-VM mirror maps them.
        bad = http.post("/api/v1/vms/vm2/qmp/no-such-command", headers=fleet.auth())
        assert bad.status_code == 404
        assert bad.json() == {"class": "CommandNotFound",
                              "desc": "The command no-such-command has not been found"}  # fmt: skip
        refused = http.post("/api/v1/vms/vm2/qmp/migrate", headers=fleet.auth(),
                            json={"uri": "exec:true"})  # fmt: skip
        assert refused.status_code == 403


async def test_unknown_vm_is_404_on_every_route(fleet: FleetServer) -> None:
    gone = {"class": "NotFound", "desc": "VM 'nope' is not in the fleet"}
    with fleet.client() as http:
        for method, path in (("GET", "/api/v1/vms/nope"), ("GET", "/api/v1/vms/nope/status"),
                             ("GET", "/api/v1/vms/nope/events"),
                             ("GET", "/api/v1/vms/nope/metrics"),
                             ("POST", "/api/v1/vms/nope/qmp/query-status"),
                             ("GET", "/api/v1/vms/nope/"),
                             ("DELETE", "/api/v1/vms/nope")):  # fmt: skip
            reply = http.request(method, path, headers=fleet.auth())
            assert (reply.status_code, reply.json()) == (404, gone), path


async def test_add_and_remove_a_vm(fleet: FleetServer) -> None:
    with fleet.client() as http:
        assert http.post("/api/v1/vms", json={"name": "x", "args": []}).status_code == 401
        created = _add(http, fleet, "added")
        assert created.status_code == 201, created.text
        assert created.headers["location"] == "/api/v1/vms/added"
        assert created.json()["name"] == "added" and created.json()["status"] == "running"
        # Its monitor listens when the answer comes.
        assert (await _qmp(fleet.vm_socket("added"), "query-status"))["status"] == "running"
        assert http.get("/api/v1/vms/added/status").json()["status"] == "running"

        again = _add(http, fleet, "added")
        duplicate = {"class": "GenericError", "desc": "a VM named 'added' is already in the fleet"}
        assert (again.status_code, again.json()) == (400, duplicate)
        missing = http.post("/api/v1/vms", headers=fleet.auth(), json={"args": []})
        assert missing.status_code == 400
        assert missing.json()["desc"] == await _fleet_error("fleet-vm-add", {"args": []}, fleet)
        bad = http.post("/api/v1/vms", headers=fleet.auth(),
                        json={"name": "bad", "args": ["-m", "lots"]})  # fmt: skip
        assert bad.status_code == 400 and bad.json()["desc"].startswith("bad: ")
        unbindable = ["-m", "64M", "-qmp", "unix:/nonexistent/dir/x.sock,server=on,wait=off"]
        failed = http.post("/api/v1/vms", headers=fleet.auth(),
                           json={"name": "broken", "args": unbindable})  # fmt: skip
        assert (failed.status_code, failed.json()["class"]) == (500, "GenericError")
        assert http.get("/api/v1/vms/broken").status_code == 404

        assert http.delete("/api/v1/vms/added").status_code == 401
        assert http.delete("/api/v1/vms/added", headers=fleet.auth()).status_code == 204
        assert http.get("/api/v1/vms/added/status").status_code == 404
        assert "added" not in [vm["name"] for vm in http.get("/api/v1/vms").json()]
        assert not Path(fleet.vm_socket("added")).exists()  # noqa: ASYNC240


async def _fleet_error(command: str, args: dict[str, Any], fleet: FleetServer) -> str:
    try:
        await _qmp(fleet.socket, command, args)
    except ExecuteError as err:
        return str(err.error.error.desc)
    raise AssertionError(f"{command} did not fail")


async def _events_until(events: AsyncIterator[ServerSentEvent], name: str) -> list[Any]:
    seen: list[Any] = []
    while True:
        message = await asyncio.wait_for(events.__anext__(), 10)
        if message.event not in ("hello", "gap"):
            seen.append((message.event, json.loads(message.data)))
        if message.event == name:
            return seen


async def test_events_are_tagged_and_filtered_by_vm(fleet: FleetServer) -> None:
    async with httpx.AsyncClient(base_url=fleet.base_url, timeout=10) as http:
        # History: a stream opened late replays the fleet's events, filtered.
        async with aconnect_sse(http, "GET", "/api/v1/events?vm=vm1&last_event_id=0") as sse:
            seen = await _events_until(sse.aiter_sse(), "FLEET_VM_ADDED")
            assert seen[-1][1]["vm"] == "vm1" and seen[-1][1]["data"] == {"name": "vm1"}
        async with (aconnect_sse(http, "GET", "/api/v1/vms/vm0/events") as one,
                    aconnect_sse(http, "GET", "/api/v1/events") as every):  # fmt: skip
            one_events, all_events = one.aiter_sse(), every.aiter_sse()
            for events in (one_events, all_events):
                assert (await events.__anext__()).event == "hello"
            await _qmp(fleet.vm_socket("vm1"), "stop")
            await _qmp(fleet.vm_socket("vm0"), "stop")
            await _qmp(fleet.vm_socket("vm0"), "cont")
            every_seen = [(e, p["vm"]) for e, p in await _events_until(all_events, "RESUME")]
            assert every_seen == [("STOP", "vm1"), ("STOP", "vm0"), ("RESUME", "vm0")]
            one_seen = [(e, p["vm"]) for e, p in await _events_until(one_events, "RESUME")]
            assert one_seen == [("STOP", "vm0"), ("RESUME", "vm0")]
        await _qmp(fleet.vm_socket("vm1"), "cont")


async def test_a_removed_vms_stream_ends_with_its_removal(fleet: FleetServer) -> None:
    with fleet.client() as sync:
        assert _add(sync, fleet, "leaving").status_code == 201
    async with (httpx.AsyncClient(base_url=fleet.base_url, timeout=10) as http,
                aconnect_sse(http, "GET", "/api/v1/vms/leaving/events") as sse):  # fmt: skip
        events = sse.aiter_sse()
        assert (await events.__anext__()).event == "hello"
        gone = await http.delete("/api/v1/vms/leaving", headers=fleet.auth())
        assert gone.status_code == 204
        names = [message.event async for message in events]  # ends: the VM left
    assert names == ["SHUTDOWN", "FLEET_VM_REMOVED"]


def test_hub_filters_replay_and_live_events_by_vm() -> None:
    hub = EventHub(history=8)
    hub.publish_vm("a", {"event": "STOP"})
    hub.publish_vm("b", {"event": "STOP"})
    sub = hub.subscribe(0, "b")
    hub.publish_vm("a", {"event": "RESUME"})
    hub.publish_vm("b", {"event": "RESUME"})
    assert [(e.seq, e.name, e.vm) for e in sub._queue] == [(2, "STOP", "b"), (4, "RESUME", "b")]
    assert hub.subscribers_by_vm() == {"b": 1}
    assert sub._queue[0].payload()["vm"] == "b"
    hub.close_vm("b")  # the VM left: its streams end after what they queued
    assert sub.closed and len(sub._queue) == 2 and hub.subscribers_by_vm() == {}


async def test_metrics_have_a_vm_label_and_fleet_gauges(fleet: FleetServer) -> None:
    with fleet.client() as http:
        http.post("/api/v1/vms/vm2/qmp/query-migrate")
        fleet_text = http.get("/metrics").text
        one_text = http.get("/api/v1/vms/vm2/metrics").text
    families = _metrics(fleet_text)
    one = _metrics(one_text)
    per_vm = {name for name in families if not name.startswith("qmpmig_fleet_")}
    assert per_vm == set(one)  # the same families as one VM's
    for name in per_vm:
        for sample in families[name]:
            assert "vm" in sample.labels, (name, sample)
        for sample in one[name]:
            assert "vm" not in sample.labels, (name, sample)
    vms = {s.labels["vm"] for s in families["qmpmig_migration_data_total_bytes"]}
    assert {"vm0", "vm1", "vm2"} <= vms
    counted = {(s.labels["vm"], s.labels["command"]): s.value
               for s in families["qmpmig_qmp_commands"]}  # fmt: skip
    assert counted[("vm2", "query-migrate")] >= 1
    by_state = {s.labels["state"]: s.value for s in families["qmpmig_fleet_vms"]}
    assert by_state["running"] == len(vms) and sum(by_state.values()) == len(vms)
    directions = {s.labels["direction"] for s in families["qmpmig_fleet_migrations_in_flight"]}
    assert [s.value for s in families["qmpmig_fleet_link_bandwidth_bytes"]] == [1 << 30]
    assert directions == {"incoming", "outgoing"}
    status = [s for s in families["qmpmig_migration_status"] if s.labels["vm"] == "vm0"]
    assert [(s.labels["status"], s.value) for s in status] == [("none", 1.0)]


async def test_a_migration_inside_the_fleet_shows_in_migrations(fleet: FleetServer) -> None:
    with fleet.client() as http:
        assert _add(http, fleet, "src").status_code == 201
        assert _add(http, fleet, "dst", "-incoming", "defer").status_code == 201
        uri = f"tcp:127.0.0.1:{free_port()}"
        auth = fleet.auth()
        fast = {"max-bandwidth": 1 << 30}
        assert http.patch("/api/v1/vms/src/parameters", headers=auth, json=fast).is_success
        assert http.post("/api/v1/vms/dst/qmp/migrate-incoming", headers=auth,
                         json={"uri": uri}).status_code == 200  # fmt: skip
        assert http.post("/api/v1/vms/src/qmp/migrate", headers=auth,
                         json={"uri": uri}).status_code == 200  # fmt: skip
        for _ in range(400):
            answer = http.get("/api/v1/migrations").json()
            entry = next(m for m in answer["migrations"] if m["vm"] == "src")
            if entry["status"] == "completed":
                break
            await asyncio.sleep(0.05)
        assert entry["status"] == "completed" and entry["downtime-ms"] is not None
        info = await _qmp(fleet.vm_socket("src"), "query-migrate")
        assert entry["total-bytes"] == info["ram"]["total"] and entry["progress-percent"] == 100
        assert entry["transferred-bytes"] == info["ram"]["transferred"]
        assert entry["downtime-ms"] == info["downtime"]
        link = answer["link"]
        assert (link["bandwidth"], link["latency"]) == (LINK_BANDWIDTH, None)
        assert link["bandwidth-bytes"] == 1 << 30 and link["throughput-bytes"] >= 0
        assert [m["vm"] for m in answer["migrations"]] == ["src"]
        assert http.get("/api/v1/vms/src/status").json()["status"] == "postmigrate"
        for name in ("src", "dst"):
            assert http.delete(f"/api/v1/vms/{name}", headers=auth).status_code == 204


def test_openapi_documents_the_fleet_and_per_vm_paths(fleet: FleetServer) -> None:
    with fleet.client() as http:
        doc = http.get("/api/openapi.json").json()
    paths = doc["paths"]
    assert {"/api/v1/vms", "/api/v1/vms/{name}", "/api/v1/migrations", "/api/v1/events",
            "/api/v1/vms/{name}/status", "/api/v1/vms/{name}/events"} <= set(paths)  # fmt: skip
    params = paths["/api/v1/vms/{name}/status"]["get"]["parameters"]
    assert [p["name"] for p in params if p["in"] == "path"] == ["name"]
