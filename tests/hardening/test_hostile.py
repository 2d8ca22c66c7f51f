"""Hostile input: malformed options exit 1 with a clear message; random bytes on one QMP
connection never crash the server nor affect another connection."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from _figures import record
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_process import RawClient, ServerProcess

# ---- command-line options ----------------------------------------------------------------------

BAD_OPTIONS: list[tuple[list[str], str]] = [
    (["-global"], "-global: requires an argument"),
    (["-global", "nodot"], "Invalid parameter 'nodot'"),
    (["-global", "migration.x-nope=1"], "Property 'migration.x-nope' not found"),
    (["-global", "migration.multifd-channels=abc"], "expects uint64"),
    (["-device"], "-device: requires an argument"),
    (["-device", "vfio-sim"], "Parameter 'id' is missing"),
    (["-device", "nosuch,id=a"], "'nosuch' is not a valid device model name"),
    (["-device", "vfio-sim,id=a,initial-bytes=zz"], "Parameter 'initial-bytes' expects size"),
    (["-device", "vfio-sim,id=a", "-device", "vfio-sim,id=a"], "Duplicate ID 'a' for device"),
    (["-qmp"], "-qmp: requires an argument"),
    (["-qmp", "bogus:x"], "'bogus:x' is not a valid char driver"),
    (["-qmp", "tcp:127.0.0.1:notaport,server=on"], "error parsing port in address"),
    (["-qmp", "unix:"], "'path' required"),
    (["-qmp", "unix:/nonexistent-dir/q.sock,server=on,wait=off"],
     "Failed to bind socket to '/nonexistent-dir/q.sock': No such file or directory"),
    (["-m"], "-m: requires an argument"),
    (["-m", "banana"], "Parameter 'size' expects a non-negative number below 2^64"),
    (["-m", "-5"], "Parameter 'size' expects a non-negative number below 2^64"),
    (["-m", "99999999T"], "Parameter 'size' expects a non-negative number below 2^64"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "message"), BAD_OPTIONS, ids=lambda v: " ".join(v)
                         if isinstance(v, list) else "")  # fmt: skip
def test_malformed_option_exits_1(argv: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "qmp_server", *argv],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert err.startswith("qmp-server: "), err
    assert message in err, err
    assert "Traceback" not in err
    record("test_hostile::malformed_options", options_tried=len(BAD_OPTIONS))


# ---- random bytes on a QMP socket --------------------------------------------------------------

SEEDS = [
    b'{"execute":',
    b"}}}}]]]",
    b"[" * 1100 + b"]" * 1100,  # deeper than QEMU's nesting limit
    b'{"execute":"qmp_capabilities","arguments":{"enable":["oob"]}}',
    b'{"exec-oob":"migrate-pause"}',
    b'{"execute":"query-status","id":' + b"9" * 400 + b"}",
    b'"\\u0000\\ud800"',
    b"\xff\xfe\xc0\xaf{}",
    b"\x00" * 64,
    b"'single' {'execute':'query-status'}",
    b'{"execute":"migrate","arguments":{"uri":"tcp:127.0.0.1:1"},"id":[1,{"a":null}]}',
    b'{"execute":"migrate-set-parameters","arguments":{"downtime-limit":1e400}}',
    b'{"execute":"x-query-guest-digest","control":{"run-oob":true}}',
    b"1.0e" + b"9" * 64 + b" -0 true false null",
    b'{"a":"' + b"x" * 70000 + b'"}',
]
SAFE_EXTRA = b"\r\n"


def _mutate(item: tuple[bytes, int, int]) -> bytes:
    seed, pos, value = item
    if not seed:
        return seed
    buf = bytearray(seed)
    buf[pos % len(buf)] = value
    return bytes(buf)


INPUTS = st.one_of(
    st.binary(max_size=4096),
    st.sampled_from(SEEDS),
    st.tuples(st.sampled_from(SEEDS), st.integers(0, 1 << 20), st.integers(0, 255)).map(_mutate),
    st.lists(st.sampled_from(SEEDS), max_size=6).map(b"".join),
)

Start = Callable[..., ServerProcess]


def _qmp_json(line: bytes, data: bytes) -> dict[str, object]:
    """Parse one answer.  An ``id`` that overflowed a double is echoed as ``inf``/``nan``, as
    QEMU's ``%.17g`` does (not strict JSON, but QEMU's bytes): tolerated here."""
    try:
        msg = json.loads(line)
    except ValueError:
        fixed = re.sub(rb"(?<![\w\"])-?(inf|nan)(?![\w\"])", b"null", line)
        try:
            msg = json.loads(fixed)
        except ValueError:
            raise AssertionError(f"not JSON: {line[:200]!r} after {data[:200]!r}") from None
    assert isinstance(msg, dict), line
    return msg


def _drain(client: RawClient) -> list[bytes]:
    """The complete lines the server sent so far (waits briefly)."""
    client.sock.settimeout(0.02)
    try:
        while chunk := client.sock.recv(1 << 20):
            client.buf += chunk
    except (TimeoutError, BlockingIOError, ConnectionError):
        pass
    lines: list[bytes] = client.buf.split(b"\r\n")
    client.buf = lines.pop()
    return lines


def test_random_bytes_never_crash_nor_disturb_others(qmp_server: Start, tmp_path: Path) -> None:
    server = qmp_server("-m", "64M", monitors=2)
    other = RawClient(server.extra_sockets[0])
    assert b"QMP" in other.line()
    other.send(b'{"execute":"qmp_capabilities"}')
    assert json.loads(other.line()) == {"return": {}}
    stats = {"inputs": 0, "bytes": 0, "answers": 0, "other_answers": 0}

    @settings(max_examples=250, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(data=INPUTS, negotiate=st.booleans())
    def one(data: bytes, negotiate: bool) -> None:
        client = RawClient(server.socket)
        try:
            assert b"QMP" in client.line()
            if negotiate:
                client.send(b'{"execute":"qmp_capabilities"}')
                assert json.loads(client.line()) == {"return": {}}
            client.send(data)
            for line in _drain(client):
                msg = _qmp_json(line, data)
                assert set(msg) & {"return", "error", "event"}, msg
                error = msg.get("error")
                if error is not None:
                    assert isinstance(error, dict) and error["class"] and error["desc"], msg
                stats["answers"] += 1
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may close a connection after a fatal lexer error: allowed
        finally:
            client.close()
        stats["inputs"] += 1
        stats["bytes"] += len(data)
        # another connection is unaffected
        n = stats["inputs"]
        other.send(json.dumps({"execute": "query-status", "id": n}).encode())
        while True:
            reply = json.loads(other.line())
            if "event" not in reply:
                break
        assert reply == {"return": {"status": "running", "singlestep": False,
                                    "running": True}, "id": n}, reply  # fmt: skip
        stats["other_answers"] += 1
        assert server.proc.poll() is None

    one()
    other.close()
    assert server.proc.poll() is None
    with socket.socket(socket.AF_UNIX) as probe:  # the fuzzed monitor still accepts clients
        probe.settimeout(5)
        probe.connect(server.socket)
        assert b"QMP" in probe.recv(4096)
    record("test_hostile::random_bytes", inputs_tried=stats["inputs"],
           bytes_sent=stats["bytes"], answers_checked=stats["answers"],
           other_connection_answers=stats["other_answers"])  # fmt: skip
