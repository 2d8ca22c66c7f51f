"""Pure pieces of the REST mirror: derived fields, URI policy, error mapping, body limit."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from qmp_server.cli import parse_args
from qmp_server.errors import CommandError
from qmp_server.rest.app import create_app
from qmp_server.rest.derive import derive_migration
from qmp_server.rest.errors import RestError, status_for
from qmp_server.rest.policy import UriPolicy, check_uris
from qmp_server.runtime.runtime import Runtime


def _ram(**kw: float) -> dict[str, float]:
    base = {"total": 1000, "remaining": 1000, "transferred": 0, "mbps": 0.0,
            "dirty-pages-rate": 0, "page-size": 4096, "dirty-sync-count": 1}  # fmt: skip
    base.update(kw)
    return base


@pytest.mark.parametrize(("status", "ram", "percent"), [
    ("setup", None, 0.0),
    ("active", _ram(remaining=1000), 0.0),
    ("active", _ram(remaining=400), 60.0),
    ("active", _ram(remaining=1500), 0.0),        # clamped: dirtied faster than sent
    ("active", _ram(remaining=-5), 100.0),        # clamped the other way
    ("active", _ram(total=0, remaining=0), None),
    ("completed", _ram(remaining=0), 100.0),
    ("completed", None, 100.0),
    ("failed", None, None),
    ("cancelled", None, None),
])  # fmt: skip
def test_progress_formula(status: str, ram: dict[str, float] | None,
                          percent: float | None) -> None:  # fmt: skip
    info = {"status": status} | ({"ram": ram} if ram else {})
    assert derive_migration(info, None)["progress-percent"] == percent


def test_eta_uses_the_net_drain_rate() -> None:
    # 8 Mbit/s = 1e6 bytes/s; dirty 100 pages/s * 4096 = 409600 bytes/s -> net 590400 bytes/s
    d = derive_migration({"status": "active", "ram": _ram(
        total=10**7, remaining=590400 * 3, mbps=8.0, **{"dirty-pages-rate": 100})}, "received")
    assert d["transfer-rate-bytes"] == 1e6
    assert d["dirty-rate-bytes"] == 409600
    assert d["eta-seconds"] == pytest.approx(3.0)
    assert d["switchover-ack"] == "received"
    stalled = derive_migration({"status": "active", "ram": _ram(
        mbps=1.0, **{"dirty-pages-rate": 1000})}, None)
    assert stalled["eta-seconds"] is None and stalled["switchover-ack"] == "unknown"
    done = derive_migration({"status": "completed", "downtime": 140, "ram": _ram(remaining=0)},
                            "not-needed")  # fmt: skip
    assert done["eta-seconds"] is None and done["downtime-ms"] == 140.0
    assert derive_migration({"status": "active"}, "bogus")["switchover-ack"] == "unknown"


@pytest.mark.parametrize("args", [
    {"uri": "exec:cat"},
    {"uri": "EXEC:cat"},
    {"channels": [{"channel-type": "main", "addr": {"transport": "exec", "args": ["cat"]}}]},
    {"uri": "file:/tmp/out"},
    {"channels": [{"channel-type": "main",
                   "addr": {"transport": "file", "filename": "/x", "offset": 0}}]},
])  # fmt: skip
def test_refused_uris(args: dict[str, object]) -> None:
    with pytest.raises(RestError) as err:
        check_uris("migrate", args, UriPolicy())
    assert err.value.status == 403 and err.value.error_class == "Forbidden"


def test_file_uris_inside_a_configured_directory(tmp_path: Path) -> None:
    policy = UriPolicy(file_dir=tmp_path)
    check_uris("migrate", {"uri": f"file:{tmp_path}/state.bin,offset=0"}, policy)
    check_uris("migrate-incoming", {"uri": "file:state.bin"}, policy)
    for bad in (f"file:{tmp_path}/../x", "file:/etc/passwd"):
        with pytest.raises(RestError):
            check_uris("migrate", {"uri": bad}, policy)
    check_uris("query-migrate", {"uri": "exec:ignored"}, UriPolicy())  # not a URI command


def test_status_mapping() -> None:
    assert status_for(CommandError("x", "DeviceNotFound")) == 404
    assert status_for(CommandError("x", "DeviceNotActive")) == 409
    assert status_for(CommandError("There's a migration process in progress")) == 409
    assert status_for(CommandError("anything else")) == 400


async def test_in_process_app_with_a_small_body_limit() -> None:
    options = parse_args([])
    assert options is not None
    runtime = Runtime(options)
    app = create_app(runtime, token="t", max_body=64)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        auth = {"Authorization": "Bearer t"}
        reply = await http.patch("/api/v1/parameters", json={"tls-creds": "x" * 100},
                                 headers=auth)  # fmt: skip
        assert reply.status_code == 413
        reply = await http.patch("/api/v1/parameters", json={"downtime-limit": 400},
                                 headers=auth)  # fmt: skip
        assert reply.status_code == 200 and reply.json()["downtime-limit"] == 400
        assert (await http.get("/")).headers["content-security-policy"].startswith(
            "default-src 'self'")
        assert (await http.get("/static/dashboard.js")).status_code == 200
    listeners = len(runtime.event_listeners)
    from qmp_server.rest.app import detach

    detach(app)
    assert len(runtime.event_listeners) == listeners - 1


def test_fastapi_is_not_imported_without_http() -> None:
    import subprocess
    import sys

    code = ("import sys; from qmp_server.cli import parse_args; "
            "from qmp_server.runtime.runtime import Runtime; Runtime(parse_args([])); "
            "import qmp_server.rest; "
            "print(any(m.split('.')[0] in ('fastapi', 'starlette', 'uvicorn', 'pydantic') "
            "for m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_postcopy_fields() -> None:
    idle = derive_migration({"status": "active", "ram": _ram()}, None)
    assert idle["postcopy"] is False and idle["postcopy-bytes"] is None
    paused = derive_migration({"status": "postcopy-paused", "ram": _ram(
        **{"postcopy-bytes": 4096, "postcopy-requests": 3})}, None)  # fmt: skip
    assert paused["postcopy"] is True
    assert (paused["postcopy-bytes"], paused["postcopy-requests"]) == (4096, 3)
    done = derive_migration({"status": "completed", "ram": _ram(**{"postcopy-bytes": 1})}, None)
    assert done["postcopy"] is True  # a completed migration that went through postcopy
    dest = derive_migration({"status": "completed", "postcopy-blocktime": 12,
                             "postcopy-vcpu-blocktime": [12, 3]}, None)  # fmt: skip
    assert dest["postcopy-blocktime-ms"] == 12 and dest["postcopy-vcpu-blocktime-ms"] == [12, 3]
    assert dest["postcopy"] is False  # the destination's answer has no RAM counters
