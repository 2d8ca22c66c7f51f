"""HMP against a real qmp-server process: qmp-shell -H, the -mon readline monitor, events, and
a fuzz of the command line over both paths (the server keeps answering QMP)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conformance import _hmp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_process import ServerProcess, free_port

QMP_SHELL = Path(sys.executable).with_name("qmp-shell")


def test_qmp_shell_hmp_mode(qmp_server: Callable[..., ServerProcess]) -> None:
    server = qmp_server("--compat", "10.0")
    typed = "info status\nmigrate_set_parameter max-bandwidth 1G\ninfo migrate_parameters\nfoo\n"
    out = subprocess.run(
        [str(QMP_SHELL), "-H", server.socket],
        input=typed,
        text=True,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert "VM status: running" in out.stdout, out
    assert "max-bandwidth: 1073741824 bytes/second" in out.stdout
    assert "unknown command: 'foo'" in out.stdout


def test_mon_readline_chardev_no_events(
    qmp_server: Callable[..., ServerProcess], sockdir: str
) -> None:
    path = os.path.join(sockdir, "hmp.sock")
    server = qmp_server(
        "--compat",
        "7.2",
        "-chardev",
        f"socket,id=h,path={path},server=on,wait=off",
        "-mon",
        "chardev=h,mode=readline",
        wait_for=[path],
    )
    hmp = _hmp.HMP(path)
    try:
        assert hmp.greeting.startswith("QEMU 7.2.0 monitor - type 'help' for more information\r\n")
        assert hmp.greeting.endswith("(qemu) ")
        out = hmp.send("stop\n")  # a STOP event goes to QMP monitors only
        assert out.endswith("\x1b[K\r\n(qemu) ")
        assert "VM status: paused\r\n(qemu) " in hmp.send("info status\n")
    finally:
        hmp.close()
    qmp = _hmp.QMP(server.socket)
    assert qmp.execute("query-status")["return"]["status"] == "paused"
    qmp.close()


_WORDS = st.sampled_from(
    [
        "info",
        "migrate_set_parameter",
        "migrate_set_capability",
        "migrate_continue",
        "migrate_incoming",
        "migrate_recover",
        "migrate_pause",
        "help",
        "status",
        "migrate",
        "migrate_parameters",
        "max-bandwidth",
        "tls-authz",
        "xbzrle",
        "on",
        "off",
        "5M",
        "-x",
        '"',
        "\\n",
        "\x1b[A",
        "\x7f",
        "\t",
        "é",
        "0",
        "-1",
    ]
)
_LINES = st.one_of(
    st.text(alphabet=st.characters(max_codepoint=0xFF, exclude_characters="\r\n\x1b"), max_size=40),
    st.lists(_WORDS, max_size=5).map(" ".join),
)


@pytest.fixture(scope="module")
def fuzz_target() -> Iterator[tuple[_hmp.Process, _hmp.QMP, _hmp.HMP]]:
    launcher = _hmp.Launcher((sys.executable, "-m", "qmp_server", "--compat", "7.2"))
    with _hmp.started(launcher, []) as process:
        qmp = _hmp.QMP(process.qmp_path)
        hmp = _hmp.HMP(process.hmp_path)
        yield process, qmp, hmp
        hmp.close()
        qmp.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(_LINES, min_size=1, max_size=8))
def test_fuzz_hmp_socket_and_human_monitor_command(
    fuzz_target: tuple[_hmp.Process, _hmp.QMP, _hmp.HMP], lines: list[str]
) -> None:
    """Every line gets a prompt back on the socket and a text (or a QMP error) through QMP;
    QMP still answers afterwards.  ``migrate`` lines that would migrate are left out."""
    process, qmp, hmp = fuzz_target
    lines = [ln for ln in lines if not ln.lstrip().startswith("migrate ")]
    for line in lines:
        assert hmp.send(line + "\n").endswith("(qemu) ")
        reply = qmp.execute("human-monitor-command", {"command-line": line})
        assert isinstance(reply.get("return"), str) or "error" in reply
    assert process.proc.poll() is None
    assert qmp.execute("query-status")["return"]["status"] in ("running", "paused")


def test_monitor_on_tcp(qmp_server: Callable[..., ServerProcess]) -> None:
    port = free_port()
    qmp_server("--compat", "10.0", "-monitor", f"tcp:127.0.0.1:{port},server=on,wait=off")
    deadline = time.monotonic() + 10
    while True:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    with sock:
        data = b""
        while not data.endswith(b"(qemu) "):
            data += sock.recv(4096)
        assert data == b"QEMU 10.0.0 monitor - type 'help' for more information\r\n(qemu) "
        sock.sendall(b"info version\r")
        data = b""
        while not data.endswith(b"(qemu) "):
            data += sock.recv(4096)
        assert b"\r\n10.0.0qmp-server " in data
