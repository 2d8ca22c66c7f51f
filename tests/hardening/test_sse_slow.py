"""An SSE subscriber that never reads is dropped by the stated policy; the others lose nothing.

Policy (``qmp_server/rest/events.py`` rule 2): a subscriber whose bounded queue
(``QUEUE_SIZE`` events) is full when an event arrives is disconnected and counted in
``qmpmig_http_event_subscribers_dropped``; other subscribers are never delayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket

import httpx
from _figures import record
from conftest import Rig, vm_rss_kib
from server_process import free_port
from test_load import _greet, _wait_http

from qmp_server.rest.events import QUEUE_SIZE

MAX_BATCHES = 500
PER_BATCH = 100  # stop+cont pairs: 200 events per batch (< QUEUE_SIZE: the fast reader keeps up)
RSS_BOUND_KIB = 128 * 1024


async def test_sse_subscriber_that_never_reads_is_dropped(rig: Rig) -> None:
    hport = free_port()
    base = f"http://127.0.0.1:{hport}"
    side = await rig.side("-m", "64M", "--http", f"127.0.0.1:{hport}", monitors=2)
    await _wait_http(base)
    pid = side.server.proc.pid
    rss_before = vm_rss_kib(pid)

    # the subscriber that never reads: a tiny receive buffer, a GET, then nothing
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    slow.connect(("127.0.0.1", hport))
    slow.sendall(b"GET /api/v1/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")

    seen: list[int] = []
    stop_at: list[int] = []

    async def dropped_count(client: httpx.AsyncClient) -> int:
        metrics = (await client.get("/metrics")).text
        for ln in metrics.splitlines():
            if ln.startswith("qmpmig_http_event_subscribers_dropped"):
                return int(float(ln.split()[-1]))
        raise AssertionError("no dropped-subscribers metric")

    hello = asyncio.Event()

    async def fast() -> None:
        timeout = httpx.Timeout(10, read=60)
        async with (
            httpx.AsyncClient(base_url=base, timeout=timeout) as client,
            client.stream("GET", "/api/v1/events") as resp,
        ):
            async for line in resp.aiter_lines():
                if line.startswith("event: hello"):
                    hello.set()
                if line.startswith("id:"):
                    seen.append(int(line.split(":", 1)[1]))
                    if stop_at and len(seen) >= stop_at[0]:
                        return

    reader_task = asyncio.create_task(fast())
    await asyncio.wait_for(hello.wait(), 20)
    reader, writer = await _greet(side.server.extra_sockets[0])
    batches = dropped = 0
    try:
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            while batches < MAX_BATCHES:
                writer.write(b'{"execute":"stop"}{"execute":"cont"}' * PER_BATCH)
                for _ in range(2 * PER_BATCH):
                    msg = json.loads(await asyncio.wait_for(reader.readline(), 30))
                    while "event" in msg:
                        msg = json.loads(await asyncio.wait_for(reader.readline(), 30))
                    assert msg == {"return": {}}
                batches += 1
                want = batches * PER_BATCH * 2
                for _ in range(3000):  # pace on the fast reader: never > 200 queued for it
                    if len(seen) >= want or reader_task.done():
                        break
                    await asyncio.sleep(0.005)
                if batches % 10 == 0 and dropped == 0:
                    dropped = await dropped_count(client)
                    if dropped:
                        after = batches + 10  # a few more: the others go on
                        stop_at.append(after * PER_BATCH * 2)
                if stop_at and batches * PER_BATCH * 2 >= stop_at[0]:
                    break
            stop_at.append(batches * PER_BATCH * 2)
            await asyncio.wait_for(reader_task, 30)
            dropped = await dropped_count(client)
    finally:
        writer.close()
        slow.close()
    total = batches * PER_BATCH * 2
    assert seen == list(range(seen[0], seen[0] + total))  # all, in order, no duplicate
    assert dropped >= 1, f"the never-reading subscriber was not dropped after {total} events"
    assert total > QUEUE_SIZE
    rss_after = vm_rss_kib(pid)
    assert rss_after - rss_before < RSS_BOUND_KIB
    assert await side.status() == "running"
    with contextlib.suppress(Exception):
        reader_task.cancel()
    record("test_sse_slow::never_reading_subscriber", sse_events_delivered=len(seen),
           slow_subscribers_dropped=dropped,
           rss_before_kib=rss_before, rss_after_kib=rss_after)  # fmt: skip
