"""A fault-injecting TCP proxy (asyncio, 127.0.0.1 only) for the migration stream.

Source -> proxy -> destination.  Faults apply to the source->destination direction at a byte
offset of the stream; the return path (destination->source) is forwarded untouched until a
fault closes the pair.

- ``pass``: forward everything.
- ``stall``: forward ``at`` bytes, then stop reading from the source (its send buffer fills).
- ``cut``: forward ``at`` bytes, then reset both connections.
- ``truncate``: forward ``at`` bytes, then send EOF to the destination and drop what follows.
- ``corrupt``: flip the bits of the byte at offset ``at``, forward everything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field

__all__ = ["FaultProxy"]

_LINGER_RST = struct.pack("ii", 1, 0)


@dataclass
class FaultProxy:
    upstream_port: int
    mode: str = "pass"
    at: int = 0
    forwarded: int = 0
    injected: int = 0
    fault_hit: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    @property
    def uri(self) -> str:
        return f"tcp:127.0.0.1:{self.port}"

    async def _serve(self, src_r: asyncio.StreamReader, src_w: asyncio.StreamWriter) -> None:
        try:
            dst_r, dst_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            src_w.close()
            return
        self._writers += [src_w, dst_w]
        loop = asyncio.get_running_loop()
        back = loop.create_task(self._pump_back(dst_r, src_w))
        self._tasks.add(back)
        try:
            await self._pump_forward(src_r, dst_w, src_w)
        finally:
            if self.mode != "stall":
                await asyncio.wait({back}, timeout=10)
            back.cancel()

    async def _pump_back(self, dst_r: asyncio.StreamReader, src_w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await dst_r.read(65536):
                src_w.write(data)
                await src_w.drain()
        with contextlib.suppress(OSError, RuntimeError):
            src_w.close()

    def _hit(self) -> None:
        self.injected += 1
        self.fault_hit.set()

    async def _pump_forward(
        self, src_r: asyncio.StreamReader, dst_w: asyncio.StreamWriter, src_w: asyncio.StreamWriter
    ) -> None:
        try:
            while data := await src_r.read(65536):
                start, end = self.forwarded, self.forwarded + len(data)
                if self.mode in ("stall", "cut", "truncate") and end > self.at:
                    keep = data[: max(0, self.at - start)]
                    dst_w.write(keep)
                    await dst_w.drain()
                    self.forwarded += len(keep)
                    self._hit()
                    if self.mode == "stall":
                        await asyncio.Event().wait()  # until the test cancels or ends
                    if self.mode == "cut":
                        for w in (src_w, dst_w):
                            sock = w.get_extra_info("socket")
                            if sock is not None:
                                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
                            w.transport.abort()
                        return
                    # truncate: EOF to the destination, keep draining the source
                    with contextlib.suppress(OSError):
                        dst_w.write_eof()
                    while await src_r.read(65536):
                        pass
                    return
                if self.mode == "corrupt" and start <= self.at < end and not self.injected:
                    buf = bytearray(data)
                    buf[self.at - start] ^= 0xFF
                    data = bytes(buf)
                    self._hit()
                dst_w.write(data)
                await dst_w.drain()
                self.forwarded = end
            with contextlib.suppress(OSError):
                dst_w.write_eof()
        except (OSError, ConnectionError):
            pass

    async def close(self) -> None:
        for w in self._writers:
            w.transport.abort()
        for t in self._tasks:
            t.cancel()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
