"""``GET /api/v1/events``: QMP events as server-sent events.

Each QMP event is one SSE message: ``event:`` the QMP event name, ``id:`` its sequence number,
``data:`` ``{"data": <QMP data or {}>, "timestamp": {"seconds", "microseconds"}}``.  Two
messages of our own, with lowercase names so they cannot clash with QMP's: ``hello`` opens every
stream (``{"last-id": N, "history": size}``; no ``id:``, so a browser's Last-Event-ID is kept),
and ``gap`` (``{"first": a, "last": b}``) precedes a replay when the events a..b have already
left the history ring.  ``Last-Event-ID`` (header, or the ``last_event_id`` query parameter for
a first connection) replays what came after it.  Overflow and history: :mod:`..events`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Header, Query
from fastapi.sse import EventSourceResponse, ServerSentEvent

from qmp_server.rest.deps import Ctx
from qmp_server.rest.events import EventSource, Subscription

__all__ = ["RETRY_MS", "follow", "parse_id", "router", "stream"]

router = APIRouter(tags=["events"])

RETRY_MS = 2000


def parse_id(*candidates: str | None) -> int | None:
    for text in candidates:
        if text is not None and text.strip().isdigit():
            return int(text.strip())
    return None


async def stream(sub: Subscription, last_seq: int, size: int) -> AsyncIterator[ServerSentEvent]:
    try:
        hello = {"last-id": last_seq, "history": size}
        yield ServerSentEvent(event="hello", raw_data=json.dumps(hello), retry=RETRY_MS)
        if sub.gap is not None:
            gap = {"first": sub.gap[0], "last": sub.gap[1]}
            yield ServerSentEvent(event="gap", raw_data=json.dumps(gap))
        while (item := await sub.next()) is not None:
            yield ServerSentEvent(
                event=item.name, id=str(item.seq), raw_data=json.dumps(item.payload())
            )
    finally:
        sub.close()


@router.get("/events", response_class=EventSourceResponse,
            summary="QMP events as server-sent events")  # fmt: skip
async def get_events(
    ctx: Ctx,
    last_event_id: str | None = Header(default=None, alias="Last-Event-ID"),
    since: str | None = Query(default=None, alias="last_event_id"),
) -> AsyncIterator[ServerSentEvent]:
    async for message in follow(ctx.hub, last_event_id, since):
        yield message


def follow(source: EventSource, last_event_id: str | None,
           since: str | None) -> AsyncIterator[ServerSentEvent]:  # fmt: skip
    """The SSE messages of a new subscription to ``source``, after the id the client gave."""
    sub = source.subscribe(parse_id(last_event_id, since))
    return stream(sub, source.last_seq, source.history_size)
