"""The host link pump (runtime/host_link.py) in one process: bytes cross intact and in order,
both directions, the end of a stream is passed on, a broken peer closes the migration's end,
and connections share the modelled bandwidth."""

from __future__ import annotations

import asyncio
import os
import socket

from qmp_server.engine.link import LinkModel
from qmp_server.runtime.host_link import HostLink


async def recv_all(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    out = bytearray()
    while chunk := await loop.sock_recv(sock, 1 << 20):
        out += chunk
    return bytes(out)


async def send_all(sock: socket.socket, data: bytes) -> None:
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, data)
    sock.shutdown(socket.SHUT_WR)


async def attached(link: HostLink) -> tuple[socket.socket, socket.socket]:
    """(the migration code's end, the far peer's end) of a connection through ``link``."""
    real, peer = socket.socketpair()
    peer.setblocking(False)
    ours = await link.attach(real)
    ours.setblocking(False)
    return ours, peer


async def test_bytes_cross_intact_both_ways_and_the_end_is_passed_on() -> None:
    link = HostLink(LinkModel(None, 0.001))
    ours, peer = await attached(link)
    stream, answer = os.urandom(3 << 20), b"ACK" * 10
    got = await asyncio.gather(
        send_all(ours, stream), recv_all(peer), send_all(peer, answer), recv_all(ours)
    )
    assert got[1] == stream and got[3] == answer
    assert link.info()["transmitted"] == len(stream)
    assert link.info()["received"] == len(answer)
    for _ in range(100):  # both directions ended: the pump closes and forgets the connection
        if not link.connections:
            break
        await asyncio.sleep(0.01)
    assert link.info()["connections"] == 0
    link.close()
    ours.close()
    peer.close()


async def test_a_peer_that_goes_away_ends_the_migrations_end() -> None:
    link = HostLink(LinkModel(64 << 20, 0.0))
    ours, peer = await attached(link)
    peer.close()
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(10):
        while True:  # the far end's error closes ours: writes fail, or a read sees the end
            try:
                await loop.sock_sendall(ours, b"x" * 65536)
                if await asyncio.wait_for(loop.sock_recv(ours, 1), 0.05) == b"":
                    break
            except TimeoutError:
                continue
            except OSError:
                break
    link.close()
    ours.close()


async def test_two_connections_share_the_bandwidth_fairly() -> None:
    link = HostLink(LinkModel(4 << 20, 0.0))  # 4 MiB/s: the link sets the pace, not the CPU
    pairs = [await attached(link) for _ in range(2)]
    size = 1 << 20
    loop = asyncio.get_running_loop()
    done: dict[int, float] = {}

    async def one(i: int, ours: socket.socket, peer: socket.socket) -> bytes:
        send = asyncio.ensure_future(send_all(ours, bytes([i]) * size))
        data = await recv_all(peer)
        done[i] = loop.time()
        await send
        return data

    start = loop.time()
    got = await asyncio.gather(*(one(i, *pair) for i, pair in enumerate(pairs)))
    assert got == [bytes([0]) * size, bytes([1]) * size]
    # both finish together, near the end of the 2 MiB over 4 MiB/s (never before it)
    first, last = sorted(done.values())
    assert last - start >= 0.45
    assert (first - start) > 0.8 * (last - start)
    link.close()
    for ours, peer in pairs:
        ours.close()
        peer.close()
