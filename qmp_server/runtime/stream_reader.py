"""Reading a migration stream off a channel into the decoder, event by event.

Why a module of its own: the destination reads the same way before and after the switch to
postcopy (and on a recovery connection): receive straight into the decoder's buffer, hand out
every complete event, let the event loop run between big reads.  Contract:
:func:`stream_events` yields the decoder's events; page data of a ``zero_copy`` decoder is
valid until the consumer asks for the next event.  A peer that ends the stream early raises
:class:`~qmp_server.engine.stream.StreamError`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from qmp_server.engine.stream import NeedData, StreamDecoder, StreamError, StreamEvent
from qmp_server.runtime.channel import Channel

__all__ = ["stream_events"]


async def stream_events(
    channel: Channel,
    decoder: StreamDecoder,
    *,
    read_size: int,
    yield_bytes: int,
    on_data: Callable[[], None] | None = None,
) -> AsyncIterator[StreamEvent]:
    """The decoder's events as bytes arrive; ``on_data`` runs after each receive.

    Events the decoder already holds come first: a reader that takes over a decoder (the
    postcopy load after ``POSTCOPY_LISTEN``) must not wait for bytes that already came.
    """
    while True:
        event = decoder.next_event()
        if isinstance(event, NeedData):
            break
        yield event
    unyielded = 0
    while True:
        view = decoder.get_buffer(read_size)
        n = await channel.recv_into(view)
        del view
        decoder.buffer_updated(n)
        unyielded += n
        if on_data is not None:
            on_data()
        while True:
            event = decoder.next_event()
            if isinstance(event, NeedData):
                break
            yield event
        if n == 0:
            raise StreamError("Unexpected end of migration stream")
        if unyielded >= yield_bytes:
            unyielded = 0
            await asyncio.sleep(0)  # QMP and the return path run between big reads
