"""The REST mirror against the real process: same answers as QMP, errors, auth, limits."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest
from conftest import RestServer
from prometheus_client.parser import text_string_to_metric_families
from qemu.qmp import ExecuteError, QMPClient

Start = Callable[..., RestServer]


async def _qmp(path: str) -> QMPClient:
    client = QMPClient("rest-test")
    await client.connect(path)
    return client


@pytest.mark.parametrize("compat", ["7.2", "default", "10.0"])
async def test_rest_answers_equal_qmp_answers(rest_server: Start, compat: str) -> None:
    server = rest_server(*(["--compat", compat] if compat != "default" else []), "-S")
    qmp = await _qmp(server.socket)
    try:
        async with httpx.AsyncClient(base_url=server.base_url) as http:
            for route, command in [
                ("/api/v1/capabilities", "query-migrate-capabilities"),
                ("/api/v1/parameters", "query-migrate-parameters"),
                ("/api/v1/status", "query-status"),
                ("/api/v1/schema", "query-qmp-schema"),
            ]:
                rest = (await http.get(route)).json()
                assert rest == await qmp.execute(command), route
            migration = (await http.get("/api/v1/migration")).json()
            assert migration["info"] == await qmp.execute("query-migrate") == {}
            assert migration["derived"]["status"] == "none"
            assert migration["derived"]["switchover-ack"] in {
                "unknown", "not-needed", "pending", "received"}  # fmt: skip
            # A change made over QMP shows at once over REST, and the other way round.
            await qmp.execute("cont")
            assert (await http.get("/api/v1/status")).json()["status"] == "running"
            reply = await http.post("/api/v1/qmp/query-status")
            assert reply.status_code == 200
            assert reply.json() == await qmp.execute("query-status")
    finally:
        await qmp.disconnect()


def test_reads_need_no_token_and_mutations_are_refused_without_one(rest_server: Start) -> None:
    server = rest_server()
    with server.client() as http:
        assert http.get("/healthz").json()["writable"] is False
        body = {"capabilities": [{"capability": "events", "state": True}]}
        for method, url, kwargs in [
            ("PATCH", "/api/v1/capabilities", {"json": body}),
            ("PATCH", "/api/v1/parameters", {"json": {"downtime-limit": 500}}),
            ("POST", "/api/v1/qmp/stop", {}),
            ("POST", "/api/v1/qmp/migrate", {"json": {"uri": "tcp:127.0.0.1:1"}}),
        ]:
            reply = http.request(method, url, headers=server.auth("anything"), **kwargs)
            assert reply.status_code == 403, url
            assert reply.json()["class"] == "Forbidden"
            assert set(reply.json()) == {"class", "desc"}
        assert http.post("/api/v1/qmp/query-migrate").status_code == 200
        assert http.get("/api/v1/status").json()["status"] == "running"  # stop did not run


def test_token_wrong_missing_and_right(rest_server: Start) -> None:
    server = rest_server(token=True)
    body = {"capabilities": [{"capability": "events", "state": True}]}
    with server.client() as http:
        assert http.get("/healthz").json()["writable"] is True
        missing = http.patch("/api/v1/capabilities", json=body)
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert missing.json()["class"] == "Unauthorized"
        wrong = http.patch("/api/v1/capabilities", json=body, headers=server.auth("nope"))
        assert wrong.status_code == 401
        basic = http.patch("/api/v1/capabilities", json=body,
                           headers={"Authorization": "Basic " + str(server.token)})
        assert basic.status_code == 401
        ok = http.patch("/api/v1/capabilities", json=body, headers=server.auth())
        assert ok.status_code == 200
        assert {"capability": "events", "state": True} in ok.json()
        params = http.patch("/api/v1/parameters", json={"downtime-limit": 1234},
                            headers=server.auth())  # fmt: skip
        assert params.status_code == 200 and params.json()["downtime-limit"] == 1234
        assert http.post("/api/v1/qmp/stop", headers=server.auth()).json() == {}
        assert http.get("/api/v1/status").json()["status"] == "paused"


def test_qmp_errors_become_http_errors(rest_server: Start) -> None:
    server = rest_server(token=True)
    auth = server.auth()
    with server.client(headers=auth) as http:
        unknown = http.post("/api/v1/qmp/no-such-command")
        assert unknown.status_code == 404
        assert unknown.json() == {"class": "CommandNotFound",
                                  "desc": "The command no-such-command has not been found"}
        bad = http.patch("/api/v1/capabilities", json={"capabilities": "x"})
        assert bad.status_code == 400
        assert bad.json() == {"class": "GenericError",
                              "desc": "Invalid parameter type for 'capabilities', expected: array"}
        rule = http.patch("/api/v1/capabilities", json={
            "capabilities": [{"capability": "precopy-initial-data", "state": True}]})
        assert rule.status_code == 400
        assert rule.json()["desc"] == (
            "Capability 'precopy-initial-data' requires capability 'return-path'")
        range_ = http.patch("/api/v1/parameters", json={"downtime-limit": 10**9})
        assert range_.status_code == 400 and range_.json()["class"] == "GenericError"
        extra = http.post("/api/v1/qmp/query-status", json={"bogus": 1})
        assert extra.status_code == 400
        assert extra.json()["desc"] == "Parameter 'bogus' is unexpected"
        for raw in (b"{not json", b"[1, 2]", b'"x"', b'{"a": NaN}'):
            reply = http.post("/api/v1/qmp/query-status", content=raw)
            assert reply.status_code == 400 and reply.json()["class"] == "BadRequest", raw
        assert http.get("/api/v1/nowhere").json() == {"class": "NotFound", "desc": "Not Found"}
        assert http.delete("/api/v1/capabilities").status_code == 405


def test_qmp_error_text_is_the_same_over_both(rest_server: Start) -> None:
    server = rest_server(token=True)

    async def run() -> None:
        qmp = await _qmp(server.socket)
        try:
            with pytest.raises(ExecuteError) as err:
                await qmp.execute("migrate-continue", {"state": "active"})
            async with httpx.AsyncClient(base_url=server.base_url, headers=server.auth()) as h:
                reply = await h.post("/api/v1/qmp/migrate-continue", json={"state": "active"})
            assert reply.status_code == 400
            assert reply.json()["desc"] == str(err.value)
        finally:
            await qmp.disconnect()

    asyncio.run(run())


def test_exec_and_file_uris_are_refused(rest_server: Start) -> None:
    server = rest_server(token=True)
    with server.client(headers=server.auth()) as http:
        for command, args in [
            ("migrate", {"uri": "exec:touch /tmp/qmp-server-pwned"}),
            ("migrate", {"uri": " exec:true"}),
            ("migrate", {"uri": "file:/tmp/qmp-server-out,offset=0"}),
            ("migrate-incoming", {"uri": "exec:true"}),
            ("migrate-recover", {"uri": "exec:true"}),
            ("human-monitor-command", {"command-line": "migrate -d exec:true"}),
        ]:
            reply = http.post(f"/api/v1/qmp/{command}", json=args)
            assert reply.status_code == 403, args
            assert reply.json()["class"] == "Forbidden"
            assert "refused over HTTP" in reply.json()["desc"]
        assert http.get("/api/v1/migration").json()["info"] == {}


def test_request_bodies_are_bounded(rest_server: Start) -> None:
    server = rest_server(token=True)
    with server.client(headers=server.auth()) as http:
        big = b'{"tls-creds": "' + b"x" * (2 << 20) + b'"}'
        reply = http.patch("/api/v1/parameters", content=big)
        assert reply.status_code == 413
        assert reply.json()["class"] == "PayloadTooLarge"

        def chunks():  # no Content-Length: counted as it arrives
            for _ in range(40):
                yield b" " * (64 << 10)

        reply = http.post("/api/v1/qmp/query-status", content=chunks())
        assert reply.status_code == 413
        assert http.get("/healthz").status_code == 200


def test_no_cors_unless_asked(rest_server: Start) -> None:
    plain = rest_server()
    origin = {"Origin": "http://dashboard.example"}
    with plain.client() as http:
        assert "access-control-allow-origin" not in http.get("/api/v1/status",
                                                             headers=origin).headers
    allowed = rest_server(cors="http://dashboard.example")
    with allowed.client() as http:
        reply = http.get("/api/v1/status", headers=origin)
        assert reply.headers["access-control-allow-origin"] == "http://dashboard.example"
        other = http.get("/api/v1/status", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def _families(text: str) -> dict[str, list]:
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        out[family.name] = family.samples
    return out


async def test_metrics_parse_and_count_commands(rest_server: Start) -> None:
    server = rest_server()
    qmp = await _qmp(server.socket)
    try:
        await qmp.execute("query-status")
        await qmp.execute("query-migrate-capabilities")
        with pytest.raises(ExecuteError):
            await qmp.execute("migrate-continue", {"state": "active"})
        async with httpx.AsyncClient(base_url=server.base_url) as http:
            reply = await http.get("/metrics")
            assert reply.status_code == 200
            assert reply.headers["content-type"].startswith("text/plain")
            families = _families(reply.text)
    finally:
        await qmp.disconnect()
    for name in [
        "qmpmig_migration_data_processed_bytes", "qmpmig_migration_data_remaining_bytes",
        "qmpmig_migration_data_total_bytes", "qmpmig_migration_dirty_memory_rate_bytes",
        "qmpmig_migration_transfer_rate_bytes", "qmpmig_migration_iterations",
        "qmpmig_migration_expected_downtime_seconds", "qmpmig_migration_downtime_seconds",
        "qmpmig_migration_status", "qmpmig_switchover_ack_pending", "qmpmig_qmp_commands",
        "qmpmig_qmp_connections",
    ]:
        assert name in families, name
    commands = {(s.labels["command"], s.labels["result"]): s.value
                for s in families["qmpmig_qmp_commands"] if s.name.endswith("_total")}
    assert commands[("query-status", "ok")] == 1
    assert commands[("query-migrate-capabilities", "ok")] == 1
    assert commands[("migrate-continue", "error")] == 1
    assert ("query-migrate", "ok") not in commands  # the scrape's own read is not counted
    status = {s.labels["status"]: s.value for s in families["qmpmig_migration_status"]}
    assert status["none"] == 1 and sum(status.values()) == 1
    assert families["qmpmig_qmp_connections"][0].value == 1


def test_healthz_and_openapi(rest_server: Start) -> None:
    server = rest_server()
    with server.client() as http:
        health = http.get("/healthz").json()
        assert health["status"] == "ok"
        doc = http.get("/api/openapi.json").json()
    paths = doc["paths"]
    for path in ["/api/v1/capabilities", "/api/v1/parameters", "/api/v1/migration",
                 "/api/v1/status", "/api/v1/schema", "/api/v1/events", "/metrics",
                 "/healthz", "/api/v1/qmp/migrate", "/api/v1/qmp/query-migrate"]:
        assert path in paths, path
    schemas = doc["components"]["schemas"]
    patch = paths["/api/v1/capabilities"]["patch"]
    body = patch["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["capabilities"]["items"] == {
        "$ref": "#/components/schemas/MigrationCapabilityStatus"}
    assert "precopy-initial-data" in schemas["MigrationCapability"]["enum"]
    ok = patch["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok["items"]["$ref"] == "#/components/schemas/MigrationCapabilityStatus"
    assert "MigrationInfo" in schemas and "ErrorBody" in schemas
    assert patch["security"] == [{"bearer": []}]
