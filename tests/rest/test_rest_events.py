"""Server-sent events: order, ids, Last-Event-ID replay, gaps, the overflow policy, shutdown."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from conftest import RestServer
from httpx_sse import ServerSentEvent, aconnect_sse
from qemu.qmp import QMPClient

from qmp_server.rest.events import EventHub

Start = Callable[..., RestServer]


async def _next(events: AsyncIterator[ServerSentEvent], wait: float = 5.0) -> ServerSentEvent:
    return await asyncio.wait_for(events.__anext__(), wait)


async def _take(events: AsyncIterator[ServerSentEvent], n: int) -> list[ServerSentEvent]:
    return [await _next(events) for _ in range(n)]


async def test_sse_delivers_events_in_order_and_replays_after_reconnect(
    rest_server: Start,
) -> None:
    server = rest_server(token=True)
    qmp = QMPClient("sse-test")
    await qmp.connect(server.socket)
    try:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
            async with aconnect_sse(http, "GET", "/api/v1/events") as source:
                assert source.response.headers["content-type"].startswith("text/event-stream")
                events = source.aiter_sse()
                hello = await _next(events)
                assert hello.event == "hello" and hello.id == ""
                assert json.loads(hello.data)["last-id"] == 0
                await qmp.execute("migrate-set-capabilities", {
                    "capabilities": [{"capability": "events", "state": True}]})
                await qmp.execute("stop")
                await qmp.execute("cont")
                reply = await http.post("/api/v1/qmp/stop", headers=server.auth())
                assert reply.status_code == 200
                got = await _take(events, 3)
            assert [e.event for e in got] == ["STOP", "RESUME", "STOP"]
            assert [int(e.id) for e in got] == [1, 2, 3]
            payload = json.loads(got[0].data)
            assert payload["data"] == {}
            assert set(payload["timestamp"]) == {"seconds", "microseconds"}
            assert abs(payload["timestamp"]["seconds"] - time.time()) < 60

            # Disconnected: these happen while nobody listens.
            for command in ("cont", "stop", "cont", "stop", "cont"):
                await qmp.execute(command)
            headers = {"Last-Event-ID": got[-1].id}
            async with aconnect_sse(http, "GET", "/api/v1/events", headers=headers) as source:
                events = source.aiter_sse()
                assert (await _next(events)).event == "hello"
                missed = await _take(events, 5)
                await qmp.execute("stop")
                live = await _next(events)
        assert [e.event for e in missed] == ["RESUME", "STOP", "RESUME", "STOP", "RESUME"]
        assert [int(e.id) for e in missed] == [4, 5, 6, 7, 8]
        assert (live.event, live.id) == ("STOP", "9")
    finally:
        await qmp.disconnect()


async def test_two_subscribers_see_the_same_sequence(rest_server: Start) -> None:
    server = rest_server()
    qmp = QMPClient("sse-test")
    await qmp.connect(server.socket)
    try:
        async with (
            httpx.AsyncClient(base_url=server.base_url, timeout=10) as http,
            aconnect_sse(http, "GET", "/api/v1/events") as a,
            aconnect_sse(http, "GET", "/api/v1/events?last_event_id=0") as b,
        ):
            ea, eb = a.aiter_sse(), b.aiter_sse()
            assert (await _next(ea)).event == (await _next(eb)).event == "hello"
            for _ in range(3):
                await qmp.execute("stop")
                await qmp.execute("cont")
            seq_a = [(e.event, e.id) for e in await _take(ea, 6)]
            seq_b = [(e.event, e.id) for e in await _take(eb, 6)]
        assert seq_a == seq_b
        assert [name for name, _ in seq_a] == ["STOP", "RESUME"] * 3
    finally:
        await qmp.disconnect()


def test_sigterm_with_an_open_stream_exits_promptly(rest_server: Start) -> None:
    server = rest_server()

    async def open_stream() -> None:
        async with (
            httpx.AsyncClient(base_url=server.base_url, timeout=10) as http,
            aconnect_sse(http, "GET", "/api/v1/events") as source,
        ):
            events = source.aiter_sse()
            assert (await _next(events)).event == "hello"
            started = time.monotonic()
            server.process.proc.terminate()
            with pytest.raises((StopAsyncIteration, httpx.HTTPError)):
                while True:
                    await _next(events, 10)
            assert time.monotonic() - started < 5

    asyncio.run(open_stream())
    assert server.process.proc.wait(10) == 0


# -- the hub itself (in-process) ----------------------------------------------------------------
def _event(name: str, **data: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"event": name, "timestamp": {"seconds": 1, "microseconds": 2}}
    if data:
        out["data"] = data
    return out


async def test_slow_subscriber_is_disconnected_and_can_resume_from_history() -> None:
    hub = EventHub(history=64, queue_size=4)
    slow = hub.subscribe()
    fast = hub.subscribe()
    received = []
    for i in range(10):
        hub.publish(_event("MIGRATION_PASS", **{"pass": i + 1}))
        item = await fast.next()
        assert item is not None
        received.append(item.seq)
    assert received == list(range(1, 11))
    assert slow.overflowed and hub.dropped_subscribers == 1 and hub.subscriber_count == 1
    drained = []
    while (item := await slow.next()) is not None:
        drained.append(item.seq)
    assert drained == [1, 2, 3, 4]  # what was queued is still delivered, then the stream ends
    resumed = hub.subscribe(last_id=drained[-1])
    assert resumed.gap is None
    replay = [(await resumed.next()) for _ in range(6)]
    assert [e.seq for e in replay if e] == [5, 6, 7, 8, 9, 10]
    assert replay[0] is not None and replay[0].payload() == {
        "data": {"pass": 5}, "timestamp": {"seconds": 1, "microseconds": 2}}


async def test_history_is_bounded_and_a_gap_is_reported() -> None:
    hub = EventHub(history=3, queue_size=8)
    for _ in range(7):
        hub.publish(_event("STOP"))
    assert [e.seq for e in hub.history] == [5, 6, 7]
    sub = hub.subscribe(last_id=1)
    assert sub.gap == (2, 4)
    assert [(await sub.next()).seq for _ in range(3)] == [5, 6, 7]  # type: ignore[union-attr]
    hub.close()
    assert await sub.next() is None
    assert await hub.subscribe().next() is None  # subscriptions after close end at once


async def test_events_from_another_thread_are_moved_to_the_loop() -> None:
    hub = EventHub()
    hub.bind_loop(asyncio.get_running_loop())
    sub = hub.subscribe()
    await asyncio.to_thread(hub.publish, _event("RESUME"))
    item = await asyncio.wait_for(sub.next(), 2)
    assert item is not None and item.name == "RESUME" and item.seq == 1
