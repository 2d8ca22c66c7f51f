"""The real server process on real sockets, driven by the clients users have."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from qemu.qmp import ExecuteError, QMPClient
from qemu.qmp.legacy import QEMUMonitorProtocol
from server_process import RawClient, ServerProcess, free_port

Start = Callable[..., ServerProcess]


async def test_qmpclient_ids_events_and_errors(qmp_server: Start) -> None:
    server = qmp_server("--compat", "7.2")
    qmp = QMPClient("test")
    await qmp.connect(server.socket)
    try:
        assert qmp.greeting is not None
        assert await qmp.execute("query-status") == {
            "status": "running",
            "singlestep": False,
            "running": True,
        }
        with qmp.listener("STOP") as listener:
            await qmp.execute("stop")
            event = await asyncio.wait_for(listener.get(), 5)
        assert event["event"] == "STOP"
        assert set(event["timestamp"]) == {"seconds", "microseconds"}
        with pytest.raises(ExecuteError) as err:
            await qmp.execute("no-such-command")
        assert err.value.error_class == "CommandNotFound"
        assert str(err.value) == "The command no-such-command has not been found"
    finally:
        await qmp.disconnect()


def test_legacy_protocol_without_ids(qmp_server: Start) -> None:
    server = qmp_server()
    with QEMUMonitorProtocol(server.socket) as mon:
        greeting = mon.connect()
        assert greeting["QMP"]["capabilities"] == ["oob"]
        reply = mon.cmd_obj({"execute": "query-status"})
        assert "id" not in reply and reply["return"]["status"] == "running"
        assert mon.cmd_obj({"execute": "stop"}) == {"return": {}}
        assert mon.pull_event(wait=5.0)["event"] == "STOP"


def test_qmp_shell_through_stdin(qmp_server: Start) -> None:
    server = qmp_server()
    shell = Path(sys.executable).parent / "qmp-shell"
    script = (
        "query-status\n"
        "migrate-set-capabilities capabilities="
        '[{"capability":"return-path","state":true},'
        '{"capability":"precopy-initial-data","state":true}]\n'
        "migrate-set-capabilities capabilities="
        '[{"capability":"return-path","state":false}]\n'
        "bogus-command\n"
    )
    out = subprocess.run(
        [str(shell), server.socket], input=script, capture_output=True, text=True, timeout=30
    ).stdout
    assert "Welcome to the QMP low-level shell!" in out
    assert "Connected to QEMU 8.0.50" in out
    assert '{"return": {"status": "running", "singlestep": false, "running": true}}' in out
    assert '{"return": {}}' in out
    assert (
        "Capability 'precopy-initial-data' requires capability 'return-path'" in out
    )
    assert "The command bogus-command has not been found" in out


def test_raw_socket_libvirt_and_qemu_qmp_framing(qmp_server: Start) -> None:
    server = qmp_server()
    c = RawClient(server.socket)
    assert c.line().startswith(b'{"QMP": {"version": ')
    c.send(b'{"execute":"qmp_capabilities","id":"libvirt-1"}\r\n')
    assert c.line() == b'{"return": {}, "id": "libvirt-1"}'
    # qemu.qmp style: no line ending at all, several requests in one write
    c.send(b'{"execute":"query-status","id":"__qmp#00000"}{"execute":"stop","id":2}')
    status, stop_event, stop_reply = c.lines(3)
    assert status == (
        b'{"return": {"status": "running", "singlestep": false, "running": true}, '
        b'"id": "__qmp#00000"}'
    )
    assert b'"event": "STOP"' in stop_event
    assert stop_reply == b'{"return": {}, "id": 2}'
    # an object split across writes, with libvirt's line ending
    c.send(b'{"execute":')
    c.send(b'"cont","id":"libvirt-2"}\r\n')
    assert b'"event": "RESUME"' in c.line()
    assert c.line() == b'{"return": {}, "id": "libvirt-2"}'


def test_pipelined_requests_are_answered_in_order(qmp_server: Start) -> None:
    server = qmp_server()
    c = RawClient(server.socket)
    c.line()
    c.send(b'{"execute":"qmp_capabilities"}')
    assert c.line() == b'{"return": {}}'
    n = 500
    c.send(b"".join(b'{"execute":"query-status","id":%d}' % i for i in range(n)))
    for i in range(n):
        assert c.line().endswith(b'"id": %d}' % i)


def test_events_reach_every_negotiated_monitor_and_only_those(qmp_server: Start) -> None:
    server = qmp_server(monitors=3)
    a, b, c = (RawClient(p) for p in [server.socket, *server.extra_sockets])
    for client in (a, b, c):
        client.line()
    for client in (a, b):
        client.send(b'{"execute":"qmp_capabilities"}')
        assert client.line() == b'{"return": {}}'
    a.send(b'{"execute":"stop"}')
    first, second = a.lines(2)
    assert b'"event": "STOP"' in first and second == b'{"return": {}}'
    assert b'"event": "STOP"' in b.line()
    c.send(b'{"execute":"query-status"}')  # c never negotiated: no event, negotiation error
    assert c.line() == (
        b'{"error": {"class": "CommandNotFound", '
        b"\"desc\": \"Expecting capabilities negotiation with 'qmp_capabilities'\"}}"
    )


def test_one_client_at_a_time_per_monitor(qmp_server: Start) -> None:
    server = qmp_server()
    first = RawClient(server.socket)
    first.line()
    first.send(b'{"execute":"qmp_capabilities"}')
    first.line()
    second = RawClient(server.socket, timeout=0.5)
    second.send(b'{"execute":"qmp_capabilities"}')
    with pytest.raises(TimeoutError):
        second.line()
    first.close()
    second.sock.settimeout(5)
    assert second.line().startswith(b'{"QMP"')
    assert second.line() == b'{"return": {}}'  # its early request was read after the greeting


def test_quit_sends_shutdown_then_return_and_removes_the_socket(qmp_server: Start) -> None:
    server = qmp_server()
    c = RawClient(server.socket)
    c.line()
    c.send(b'{"execute":"qmp_capabilities"}{"execute":"quit"}')
    lines = c.lines(3)
    assert lines[0] == b'{"return": {}}'
    assert b'"event": "SHUTDOWN"' in lines[1]
    assert b'"data": {"guest": false, "reason": "host-qmp-quit"}' in lines[1]
    assert lines[2] == b'{"return": {}}'
    assert server.proc.wait(10) == 0
    assert not os.path.exists(server.socket)


def test_sigterm_shuts_down_cleanly(qmp_server: Start) -> None:
    server = qmp_server()
    c = RawClient(server.socket)
    c.line()
    c.send(b'{"execute":"qmp_capabilities"}')
    c.line()
    server.proc.send_signal(signal.SIGTERM)
    assert b'"reason": "host-signal"' in c.line()
    assert server.proc.wait(10) == 0
    assert not os.path.exists(server.socket)


def test_unix_socket_is_private(qmp_server: Start) -> None:
    server = qmp_server()
    assert stat.S_IMODE(os.stat(server.socket).st_mode) == 0o600


async def test_tcp_monitor(qmp_server: Start, tmp_path: Path) -> None:
    port = free_port()
    server = qmp_server("-qmp", f"tcp:127.0.0.1:{port},server=on,wait=off")
    qmp = QMPClient("tcp")
    await qmp.connect(("127.0.0.1", port))
    try:
        version = await qmp.execute("query-version")
        assert version["qemu"] == {"major": 8, "minor": 0, "micro": 50}
    finally:
        await qmp.disconnect()
    server.stop()


async def test_connect_out_like_qmp_shell_wrap(tmp_path: Path) -> None:
    path = str(tmp_path / "wrap.sock")
    qmp = QMPClient("wrap")
    await qmp.start_server(path)
    argv = [sys.executable, "-m", "qmp_server", "-qmp", f"unix:{path}"]
    proc = subprocess.Popen(argv)  # noqa: ASYNC220 - the test only waits on it after accept()
    try:
        await asyncio.wait_for(qmp.accept(), 15)
        assert (await qmp.execute("query-status"))["status"] == "running"
        await qmp.execute("quit")
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(EOFError):  # the server hung up after quit, as QEMU does
            await qmp.disconnect()


def test_unknown_option_exits_1_with_a_qemu_style_message() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "qmp_server", "-bogus"], capture_output=True, text=True
    )
    assert run.returncode == 1
    assert run.stderr == "qmp-server: -bogus: invalid option\n"


def test_help_and_version() -> None:
    for flag, text in (("--help", "usage: qmp-server"), ("--version", "qmp-server ")):
        run = subprocess.run(
            [sys.executable, "-m", "qmp_server", flag], capture_output=True, text=True
        )
        assert run.returncode == 0 and run.stdout.startswith(text)
        json.dumps(run.stdout)
