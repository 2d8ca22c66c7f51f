"""Postcopy recovery as libvirt 9.0 drives it: the resumed channel is a getfd descriptor.

``virsh migrate --postcopy-resume`` connects to the destination's ``migrate-recover`` address
itself, hands the socket to the source with ``getfd`` (name ``migrate``) and sends
``migrate`` with ``uri: "fd:migrate"`` and ``resume: true``.  A real QEMU 7.2 under libvirt
resumes over that descriptor (see tests/libvirt/test_virsh_postcopy.py).
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from migration_rig import MiB, Rig
from server_process import free_port
from test_postcopy_two_process import _switch


async def test_resume_over_a_getfd_socket(rig: Rig, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)  # the servers' cwd: nothing may be written there
    port = free_port()
    source, dest, _ = await rig.pair(
        "--compat", "7.2", "-machine", "pc", "-m", "32", "-nodefaults",
        caps={"postcopy_ram": True}, uri=f"tcp:[::]:{port}",
    )  # fmt: skip
    await source.run("x-set-dirty-rate", {"rate": 4 * MiB})
    await source.params(max_bandwidth=1 * MiB, max_postcopy_bandwidth=200_000)
    await _switch(source, dest, f"tcp:127.0.0.1:{port}")
    await source.run("migrate-pause")
    assert await dest.wait_status("postcopy-paused") == "postcopy-paused"
    await dest.run("migrate-recover", {"uri": f"tcp:[::]:{port}"})
    await source.params(max_postcopy_bandwidth=0)
    with socket.create_connection(("127.0.0.1", port)) as conn:
        source.qmp.send_fd_scm(conn.fileno())
        await source.run("getfd", {"fdname": "migrate"})
    source.mark()
    dest.mark()
    await source.run("migrate", {"uri": "fd:migrate", "resume": True})
    assert await source.wait_status("completed", "postcopy-paused", within=8) == "completed"
    assert await dest.wait_status("completed", "postcopy-paused", within=8) == "completed"
