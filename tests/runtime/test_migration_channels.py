"""``channels`` and ``exit-on-error`` (QEMU 8.2+/9.1+, ``--compat 10.0``) with real migrations.

A migration named by ``channels`` runs through the same engine as one named by ``uri``: the
guest digests must match after socket (inet, unix), exec and file channels.  With
``migrate-incoming`` ``exit-on-error: false`` a failed load leaves the destination process up,
``failed`` with QEMU 10.0's error-desc (tests/conformance/two_party/.../exit-on-error-false.json
is the live transcript).  No test asserts wall-clock speed.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
from migration_rig import MiB, Rig, Side
from qemu.qmp import ExecuteError
from server_process import free_port

COMPAT = ("--compat", "10.0")


def _main(addr: dict[str, Any]) -> dict[str, Any]:
    return {"channels": [{"channel-type": "main", "addr": addr}]}


@pytest.mark.parametrize("kind", ["inet", "unix"])
async def test_socket_channels_on_both_sides(rig: Rig, kind: str) -> None:
    common = (*COMPAT, "-m", "64M", "--guest-fill", "random")
    source = await rig.side(*common, "--dirty-rate", "2M")
    dest = await rig.side(*common, "-incoming", "defer")
    if kind == "inet":
        port = str(free_port())
        addr = {"transport": "socket", "type": "inet", "host": "127.0.0.1", "port": port}
        listening = {"type": "inet", "host": "127.0.0.1", "port": port, "ipv4": True}
    else:
        path = f"{rig.sockdir}/chan.sock"
        addr = {"transport": "socket", "type": "unix", "path": path}
        listening = {"type": "unix", "path": path}
    await dest.run("migrate-incoming", _main(addr))
    assert await dest.run("query-migrate") == {"status": "setup", "socket-address": [listening]}
    await source.params(max_bandwidth=0)
    source.mark()
    await source.run("migrate", _main(addr))
    assert await source.wait_status("completed", "failed") == "completed"
    assert await dest.wait_status("completed", "failed") == "completed"
    assert source.names()[-1] == "completed" and "device" in source.names()  # 10.0 order
    assert await source.digest() == await dest.digest()
    assert await dest.status() == "running"


@pytest.mark.parametrize("transport", ["exec", "file"])
async def test_exec_and_file_channels_save_and_restore(
    rig: Rig, tmp_path: Path, transport: str
) -> None:
    image = tmp_path / "guest.mig"
    common = (*COMPAT, "-m", "64M", "--guest-fill", "random")
    save: dict[str, Any]
    load: dict[str, Any]
    if transport == "exec":
        # an argument vector, not a shell command line: the quoting must survive
        save = {"transport": "exec", "args": ["/bin/sh", "-c", 'cat > "$0"', str(image)]}
        load = {"transport": "exec", "args": ["cat", str(image)]}
    else:
        save = load = {"transport": "file", "filename": str(image), "offset": 8192}
    source = await rig.side(*common, "--dirty-rate", "2M")
    await source.params(max_bandwidth=0)
    await source.run("migrate", _main(save))
    assert await source.wait_status("completed", "failed") == "completed"
    saved = await source.digest()
    if transport == "file":
        with image.open("rb") as f:
            assert f.read(8192) == bytes(8192)  # the stream starts at the offset
    dest = await rig.side(*common, "-incoming", "defer")
    await dest.run("migrate-incoming", _main(load))
    assert await dest.wait_status("completed", "failed") == "completed"
    assert await dest.digest() == saved


async def test_channel_errors_are_qemu_texts(rig: Rig) -> None:
    source = await rig.side(*COMPAT)
    dest = await rig.side(*COMPAT, "-incoming", "defer")
    unix = {"transport": "socket", "type": "unix", "path": f"{rig.sockdir}/x.sock"}
    main = {"channel-type": "main", "addr": unix}
    cases = [
        (source, "migrate", {"channels": []}, "need either 'uri' or 'channels' argument"),
        (source, "migrate", {"uri": "unix:/x", **_main(unix)},
         "need either 'uri' or 'channels' argument"),
        (source, "migrate", {"channels": [main, main]},
         "Channel list has more than one main entry"),
        (source, "migrate", _main({"transport": "socket", "type": "inet", "port": "1"}),
         "Parameter 'channels[0].addr.host' is missing"),
        (dest, "migrate-incoming", {"channels": [main, main]},
         "Channel list must have only one entry, for type 'main'"),
        (dest, "migrate-incoming", {"exit-on-error": False},
         "need either 'uri' or 'channels' argument"),
    ]  # fmt: skip
    for side, cmd, args, text in cases:
        with pytest.raises(ExecuteError) as exc:
            await side.run(cmd, args)
        assert str(exc.value) == text, (cmd, args)
    assert await source.run("query-migrate") == {}
    assert await dest.run("query-migrate") == {}


async def _source_killed_mid_stream(rig: Rig, exit_on_error: bool) -> Side:
    """A destination loading with ``exit-on-error`` whose source is SIGKILLed mid-stream."""
    common = (*COMPAT, "-m", "128M", "--guest-fill", "random")
    source = await rig.side(*common)
    dest = await rig.side(*common, "-incoming", "defer")
    uri = rig.unix_uri()
    await dest.run("migrate-incoming", {"uri": uri, "exit-on-error": exit_on_error})
    await source.params(max_bandwidth=32 * MiB)
    await source.run("migrate", {"uri": uri})
    await source.wait_query(lambda i: i.get("status") == "active"
                            and i["ram"]["transferred"] > 4 * MiB)  # fmt: skip
    source.server.proc.send_signal(signal.SIGKILL)
    assert await dest.wait_status("failed", "completed", within=10) == "failed"
    return dest


async def test_exit_on_error_false_keeps_the_destination(rig: Rig) -> None:
    dest = await _source_killed_mid_stream(rig, exit_on_error=False)
    assert await dest.run("query-migrate") == {
        "status": "failed", "error-desc": "load of migration failed: Invalid argument"}
    assert await dest.status() == "inmigrate"
    with pytest.raises(ExecuteError) as exc:
        await dest.run("migrate-incoming", {"uri": rig.unix_uri()})
    assert str(exc.value) == "The incoming migration has already been started"
    assert dest.server.proc.poll() is None  # still serving
    _, err = dest.server.stop()
    assert b"check_section_footer" in err and b"load of migration failed" not in err


async def test_exit_on_error_default_still_exits(rig: Rig) -> None:
    dest = await _source_killed_mid_stream(rig, exit_on_error=True)
    assert dest.server.proc.wait(10) == 1
