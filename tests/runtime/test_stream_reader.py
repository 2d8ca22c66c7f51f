"""The destination's stream reader hands out what the decoder already holds before it waits."""

from __future__ import annotations

import asyncio
from typing import Any

from qmp_server.engine.guest import PAGE_SIZE
from qmp_server.engine.stream import StreamDecoder, StreamEncoder, ZeroRun
from qmp_server.runtime.stream_reader import stream_events


class _SilentChannel:
    """A peer that has sent everything: a receive never returns."""

    async def recv_into(self, view: memoryview) -> int:
        await asyncio.Event().wait()
        return 0


async def test_buffered_events_come_before_any_receive() -> None:
    enc = StreamEncoder()
    wire = enc.header(ram_size=16 * PAGE_SIZE, fill="zero", seed=0, profile="7.2")
    wire += enc.zero_run(0, 4) + enc.zero_run(4, 4)
    decoder = StreamDecoder()
    decoder.receive_data(wire)
    decoder.next_event()  # the previous reader took the header and stopped there
    channel: Any = _SilentChannel()
    got = []

    async def read() -> None:
        async for event in stream_events(channel, decoder, read_size=64, yield_bytes=1 << 20):
            got.append(event)
            if len(got) == 2:
                return

    await asyncio.wait_for(read(), 2)
    assert got == [ZeroRun(0, 4), ZeroRun(4, 4)]
