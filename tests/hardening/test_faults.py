"""Faults during a ``tcp:`` migration, injected by a proxy inside the test (127.0.0.1 only).

Promise: every fault ends in a clear state with the guest intact on one side.

- stall, then ``migrate_cancel``: the source is ``cancelled``, its guest runs with the digest it
  had before; a retry to a fresh destination completes with equal digests.
- cut, truncate, corrupt a byte: the destination fails (exit status 1, QEMU 7.2), never
  completing with a different guest; the source ends ``failed`` with an ``error-desc`` and its
  guest keeps running, intact (same ``x-query-guest-digest`` as before).
- SIGTERM to either side: the other side fails cleanly; the signalled side exits 0.

The destination-side SIGKILL / source-side SIGKILL / cancel cases live in
``tests/runtime/test_migration.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from _figures import record
from _proxy import FaultProxy
from conftest import MiB, Rig, Side, exit_code
from server_process import free_port

COMMON = ("-m", "64M", "--guest-fill", "random")
#: 16 MiB/s: a 64 MiB guest takes ~4 s, so a fault at a few MiB lands mid-stream.
BANDWIDTH = 16 * MiB


async def _pair(rig: Rig) -> tuple[Side, Side, int, dict[str, Any]]:
    source = await rig.side(*COMMON)
    dest = await rig.side(*COMMON, "-incoming", "defer")
    for side in (source, dest):
        await side.caps(return_path=True)
    await source.params(max_bandwidth=BANDWIDTH)
    port = free_port()
    await dest.run("migrate-incoming", {"uri": f"tcp:127.0.0.1:{port}"})
    return source, dest, port, await source.digest()


async def _source_failed_intact(source: Side, before: dict[str, Any]) -> str:
    assert await source.wait_status("failed", "completed", "cancelled") == "failed"
    info = await source.run("query-migrate")
    assert info["status"] == "failed" and info["error-desc"], info
    assert await source.status() == "running"
    assert await source.digest() == before
    return str(info["error-desc"])


async def _dest_failed(dest: Side) -> bytes:
    # the destination fails its load and exits 1 (QEMU 7.2); it never reports completed
    assert await exit_code(dest.server) == 1
    statuses = [e["data"]["status"] for e in dest.events if e["event"] == "MIGRATION"]
    assert "completed" not in statuses, statuses
    return bytes(dest.server.stop()[1])


async def test_stall_then_cancel_then_retry(rig: Rig) -> None:
    source, dest, port, before = await _pair(rig)
    proxy = FaultProxy(port, mode="stall", at=4 * MiB)
    await proxy.start()
    try:
        await source.run("migrate", {"uri": proxy.uri})
        await asyncio.wait_for(proxy.fault_hit.wait(), 20)
        await asyncio.sleep(0.3)
        assert (await source.run("query-migrate"))["status"] == "active"
        assert await source.status() == "running"
        await source.run("migrate_cancel")
        assert await source.wait_status("cancelled", "failed", "completed") == "cancelled"
        assert await source.status() == "running"
        assert await source.digest() == before
    finally:
        await proxy.close()  # the destination now sees its stream end
    await _dest_failed(dest)
    # the source is usable: retry to a fresh destination over a unix socket
    dest2 = await rig.side(*COMMON, "-incoming", "defer")
    uri = f"unix:{rig.sockdir}/retry.sock"
    await dest2.run("migrate-incoming", {"uri": uri})
    await source.params(max_bandwidth=0)
    source.events.clear()
    await source.run("migrate", {"uri": uri})
    assert await source.wait_status("completed", "failed") == "completed"
    assert await dest2.wait_status("completed", "failed") == "completed"
    assert await dest2.digest() == before
    record("test_faults::stall_cancel_retry", faults_injected=proxy.injected,
           bytes_before_stall=proxy.forwarded, digests_compared=3,
           guest_bytes_compared=3 * 64 * MiB)  # fmt: skip


@pytest.mark.parametrize("mode", ["cut", "truncate"])
async def test_cut_or_truncated_stream(rig: Rig, mode: str) -> None:
    source, dest, port, before = await _pair(rig)
    proxy = FaultProxy(port, mode=mode, at=4 * MiB + 1234)
    await proxy.start()
    try:
        await source.run("migrate", {"uri": proxy.uri})
        await asyncio.wait_for(proxy.fault_hit.wait(), 20)
        err = await _dest_failed(dest)
        assert b"load of migration failed" in err
        desc = await _source_failed_intact(source, before)
    finally:
        await proxy.close()
    record(f"test_faults::{mode}", faults_injected=proxy.injected,
           bytes_forwarded=proxy.forwarded, digests_compared=1,
           guest_bytes_compared=64 * MiB)  # fmt: skip
    assert desc


#: header bytes, the first page record, deep inside page data
CORRUPT_AT = [9, 4096 + 77, 4 * MiB + 4321]


@pytest.mark.parametrize("offset", CORRUPT_AT)
async def test_corrupt_byte_is_detected(rig: Rig, offset: int) -> None:
    source, dest, port, before = await _pair(rig)
    proxy = FaultProxy(port, mode="corrupt", at=offset)
    await proxy.start()
    try:
        await source.run("migrate", {"uri": proxy.uri})
        await asyncio.wait_for(proxy.fault_hit.wait(), 20)
        err = await _dest_failed(dest)
        assert b"load of migration failed" in err, err
        if offset > 4096:  # inside page contents: the loader's RAM digest tells
            assert b"RAM digest mismatch" in err, err
        await _source_failed_intact(source, before)
    finally:
        await proxy.close()
    record(f"test_faults::corrupt@{offset}", faults_injected=proxy.injected,
           bytes_forwarded=proxy.forwarded, digests_compared=1,
           guest_bytes_compared=64 * MiB)  # fmt: skip


async def test_sigterm_destination(rig: Rig) -> None:
    source, dest, port, before = await _pair(rig)
    await source.run("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
    await source.wait_bytes(2 * MiB)
    dest.server.proc.send_signal(signal.SIGTERM)
    assert await exit_code(dest.server) == 0
    _, err = dest.server.stop()
    assert b"terminating on signal 15" in err
    await _source_failed_intact(source, before)
    record("test_faults::sigterm_destination", faults_injected=1, digests_compared=1,
           guest_bytes_compared=64 * MiB)  # fmt: skip


async def test_sigterm_source(rig: Rig) -> None:
    source, dest, port, _ = await _pair(rig)
    await source.run("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
    await source.wait_bytes(2 * MiB)
    source.server.proc.send_signal(signal.SIGTERM)
    assert await exit_code(source.server) == 0
    err = await _dest_failed(dest)
    assert b"load of migration failed" in err
    record("test_faults::sigterm_source", faults_injected=1)


@contextlib.contextmanager
def _tmpfs(options: str) -> Iterator[str]:
    """A private tmpfs (root only; skips otherwise)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a tmpfs")
    path = tempfile.mkdtemp(prefix="qmphard-fs-")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", path],
                          capture_output=True, check=False, timeout=10)  # fmt: skip
    if proc.returncode != 0:
        os.rmdir(path)
        pytest.skip(f"cannot mount a tmpfs: {proc.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], check=False, timeout=10)
        os.rmdir(path)


@pytest.mark.parametrize("fs", ["full", "read-only"])
@pytest.mark.parametrize("scheme", ["exec", "file"])
async def test_save_to_a_full_or_read_only_file_system(rig: Rig, fs: str, scheme: str) -> None:
    options = "size=1m" if fs == "full" else "size=1m,ro"
    with _tmpfs(options) as path:
        compat = ("--compat", "10.0") if scheme == "file" else ()
        source = await rig.side(*compat, *COMMON)
        before = await source.digest()
        image = f"{path}/guest.mig"
        uri = f"exec:cat > {image}" if scheme == "exec" else f"file:{image}"
        try:
            await source.run("migrate", {"uri": uri})
        except Exception as err:  # refused synchronously (file: open fails): also a clear end
            assert "Read-only" in str(err) or "No space" in str(err), err
            assert await source.status() == "running"
            assert await source.digest() == before
        else:
            desc = await _source_failed_intact(source, before)
            assert desc
    record(f"test_faults::{scheme}_{fs}_fs", faults_injected=1, digests_compared=1,
           guest_bytes_compared=64 * MiB)  # fmt: skip
