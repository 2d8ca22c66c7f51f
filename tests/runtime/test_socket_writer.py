"""SocketWriter: the source's writer thread (order, back-pressure, errors, shutdown)."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Iterator

import pytest

from qmp_server.engine.guest import GuestMemory
from qmp_server.engine.page_run import PageRun
from qmp_server.runtime.socket_writer import SocketWriter, recv_nowait

MiB = 1 << 20


def _reader(sock: socket.socket, into: bytearray) -> threading.Thread:
    def run() -> None:
        while chunk := sock.recv(1 << 20):
            into.extend(chunk)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


async def test_bytes_arrive_in_order_and_drain_waits_for_them() -> None:
    ours, theirs = socket.socketpair()
    got = bytearray()
    reader = _reader(theirs, got)
    writer = SocketWriter(ours, asyncio.get_running_loop(), limit=2 * MiB)
    sent = bytearray()
    for n in range(40):
        parts = [memoryview(bytes([n]) * 1000), memoryview(os.urandom(n * 4099))]
        sent += b"".join(parts)
        await writer.send(parts, sum(p.nbytes for p in parts))
    await writer.drain()
    writer.stop()
    ours.shutdown(socket.SHUT_WR)
    await asyncio.to_thread(reader.join, 10)
    assert bytes(got) == bytes(sent)
    ours.close()
    theirs.close()


async def test_send_waits_while_more_than_the_limit_is_queued() -> None:
    ours, theirs = socket.socketpair()
    writer = SocketWriter(ours, asyncio.get_running_loop(), limit=1 * MiB)
    blob = memoryview(bytes(4 * MiB))
    task = asyncio.ensure_future(writer.send([blob], blob.nbytes))
    await asyncio.sleep(0.2)
    assert not task.done()  # nobody reads: 4 MiB cannot leave the queue
    got = bytearray()
    reader = _reader(theirs, got)
    await asyncio.wait_for(task, 10)
    await asyncio.wait_for(writer.drain(), 10)
    writer.stop()
    ours.shutdown(socket.SHUT_WR)
    await asyncio.to_thread(reader.join, 10)
    assert len(got) == 4 * MiB
    ours.close()
    theirs.close()


async def test_a_write_error_is_raised_by_the_next_send() -> None:
    ours, theirs = socket.socketpair()
    writer = SocketWriter(ours, asyncio.get_running_loop(), limit=1 * MiB)
    theirs.close()
    with pytest.raises(OSError) as info:
        for _ in range(50):
            await writer.send([memoryview(bytes(MiB))], MiB)
        await writer.drain()
    assert info.value.errno in (32, 104)  # EPIPE or ECONNRESET, what QEMU's text is built from
    ours.close()


async def test_close_wakes_a_thread_blocked_on_a_stalled_peer() -> None:
    ours, theirs = socket.socketpair()
    writer = SocketWriter(ours, asyncio.get_running_loop(), limit=64 * MiB)
    await writer.send([memoryview(bytes(16 * MiB))], 16 * MiB)  # the thread blocks in sendmsg
    await asyncio.sleep(0.1)
    writer.close()
    with pytest.raises(OSError):
        await asyncio.wait_for(writer.drain(), 10)
    await asyncio.to_thread(writer._thread.join, 10)
    assert not writer._thread.is_alive()
    ours.close()
    theirs.close()


async def test_recv_nowait_never_blocks_a_blocking_socket() -> None:
    ours, theirs = socket.socketpair()
    SocketWriter(ours, asyncio.get_running_loop()).stop()
    assert ours.getblocking()
    with pytest.raises(BlockingIOError):
        recv_nowait(ours, 10)
    theirs.sendall(b"ack")
    assert recv_nowait(ours, 10) == b"ack"
    ours.close()
    theirs.close()


async def test_close_fails_a_waiting_drain_even_when_the_thread_is_idle() -> None:
    ours, theirs = socket.socketpair()
    writer = SocketWriter(ours, asyncio.get_running_loop(), limit=64 * MiB)
    await writer.send([memoryview(bytes(16 * MiB))], 16 * MiB)
    drain = asyncio.ensure_future(writer.drain())
    await asyncio.sleep(0.1)
    assert not drain.done()
    writer.close()
    with pytest.raises(BrokenPipeError):
        await asyncio.wait_for(drain, 10)
    with pytest.raises(BrokenPipeError):
        await writer.send([memoryview(b"x")], 1)
    ours.close()
    theirs.close()


async def test_a_page_run_is_built_by_the_writer_thread_in_its_place() -> None:
    guest = GuestMemory(64 * 4096, fill="random", seed=5)
    guest.write_page(3, b"\x07" * 4096)
    ours, theirs = socket.socketpair()
    got = bytearray()
    reader = _reader(theirs, got)
    writer = SocketWriter(ours, asyncio.get_running_loop())
    run = PageRun(guest, 2, 10)
    await writer.send([memoryview(b"head"), run, memoryview(b"tail")], 8 + run.nbytes)
    await writer.drain()
    writer.stop()
    ours.shutdown(socket.SHUT_WR)
    await asyncio.to_thread(reader.join, 10)
    assert bytes(got) == b"head" + guest.read_pages(2, 10) + b"tail"
    ours.close()
    theirs.close()


async def test_a_page_run_that_fails_to_build_fails_the_writer() -> None:
    class Broken(PageRun):
        def pieces(self, scratch: object) -> Iterator[memoryview]:
            raise RuntimeError("no pages")

    ours, theirs = socket.socketpair()
    writer = SocketWriter(ours, asyncio.get_running_loop())
    run = Broken(GuestMemory(16 * 4096), 0, 4)
    await writer.send([run], run.nbytes)
    with pytest.raises(OSError, match="no pages"):
        await asyncio.wait_for(writer.drain(), 10)
    writer.close()
    ours.close()
    theirs.close()
