"""The destination's multifd channels: one receiver thread per connection.

Why threads: a channel's work is the kernel's copy (``recv_into``), decompression and the
comparison with the baseline (C), which all release the GIL, so the channels load in
parallel; on the event loop they would take turns.  Contract: the destination's accept loop
hands every extra connection to :meth:`MultifdIncoming.add_connection` (it may come before
the main stream's ``MULTIFD_SETUP``); :meth:`~MultifdIncoming.setup` is called with that
record and the guest; page records of the main stream go through
:meth:`~MultifdIncoming.apply_main`; :meth:`~MultifdIncoming.wait_done` returns once every
channel ended properly, or raises the first channel's error.  Guest writes from the
channels and the main stream are serialised by one lock; the later round's copy of a page
wins (:class:`~qmp_server.engine.multifd.PageGenerations`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable

from qmp_server.engine.guest import GuestMemory
from qmp_server.engine.multifd import (
    ChannelRoster,
    Decompress,
    PageGenerations,
    apply_generation_event,
    packet_decoder,
)
from qmp_server.engine.stream import (
    NEED_DATA,
    ChannelHello,
    ChannelSync,
    EndOfStream,
    MultifdSetup,
    StreamDecoder,
    StreamError,
)
from qmp_server.runtime.channel import RECEIVE_BUFFER

__all__ = ["MultifdIncoming", "NewDecompressor"]

#: ``new(method)``: a channel's decompressor, ``decompress(data, count)`` (ValueError if bad)
NewDecompressor = Callable[[str], Callable[[bytes, int], bytes]]

_READ_SIZE = 1 << 20
#: the main stream carries no compressed packets
_MAIN = packet_decoder("none", None)


class MultifdIncoming:
    """The multifd channels of one incoming migration (``channels``: this side's
    ``multifd-channels``)."""

    def __init__(self, channels: int, new_decompressor: NewDecompressor) -> None:
        self.channels = channels
        self._new_decompressor = new_decompressor
        self._loop = asyncio.get_running_loop()
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._closed = False
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._roster = ChannelRoster(channels)
        self._ended = 0
        self._error: Exception | None = None
        self._changed = asyncio.Event()
        self._guest: GuestMemory | None = None
        self._rounds: PageGenerations | None = None
        self._setup: MultifdSetup | None = None
        #: the main stream's round (its last SYNC)
        self.main_generation = 0

    @property
    def connected(self) -> int:
        return len(self._socks)

    def add_connection(self, sock: socket.socket) -> None:
        """An extra connection: a channel; its thread waits for :meth:`setup`."""
        sock.setblocking(True)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        self._socks.append(sock)
        thread = threading.Thread(
            target=self._receive, args=(sock,), name="multifd-recv", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def setup(self, record: MultifdSetup, guest: GuestMemory) -> None:
        """The main stream's ``MULTIFD_SETUP``: the channels may load into ``guest``."""
        self._setup = record
        self._guest = guest
        self._rounds = PageGenerations(guest.page_count)
        self._ready.set()

    def apply_main(self, event: object) -> bool:
        """A page record of the main stream (zero pages the main thread found)."""
        guest, rounds = self._guest, self._rounds
        if guest is None or rounds is None:
            return False
        return apply_generation_event(guest, rounds, self.main_generation, event, _MAIN, self._lock)

    async def wait_done(self) -> None:
        """Until every channel of the source ended (raises the first channel error)."""
        while True:
            if self._error is not None:
                raise self._error
            if self._setup is not None and self._ended >= self._setup.channels:
                return
            self._changed.clear()
            await self._changed.wait()

    def close(self) -> None:
        self._closed = True
        self._ready.set()
        for sock in self._socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(timeout=5)
        for sock in self._socks:
            with contextlib.suppress(OSError):
                sock.close()

    # -- receiver threads -------------------------------------------------------------------
    def _notify(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            self._loop.call_soon_threadsafe(self._changed.set)

    def _receive(self, sock: socket.socket) -> None:
        try:
            self._load_channel(sock)
        except (StreamError, ValueError, OSError) as err:
            if not self._closed and self._error is None:
                self._error = err if isinstance(err, StreamError) else StreamError(str(err))
        else:
            with self._lock:
                self._ended += 1
        self._notify()

    def _load_channel(self, sock: socket.socket) -> None:
        decoder = StreamDecoder(zero_copy=True, channel=True)
        generation = 0
        decompress: Decompress = _MAIN
        while True:
            view = decoder.get_buffer(_READ_SIZE)
            decoder.buffer_updated(sock.recv_into(view))
            while (event := decoder.next_event()) is not NEED_DATA:
                if isinstance(event, ChannelHello):
                    decompress = self._hello(event)
                elif isinstance(event, ChannelSync):
                    generation = event.generation
                elif isinstance(event, EndOfStream):
                    return
                else:
                    guest, rounds = self._guest, self._rounds
                    assert guest is not None and rounds is not None
                    apply_generation_event(guest, rounds, generation, event, decompress, self._lock)

    def _hello(self, hello: ChannelHello) -> Decompress:
        """Check a channel's first record against the main stream (waits for its setup);
        the channel's decompressor (one stream per channel, as the source's)."""
        self._roster.check_id(hello)
        self._ready.wait()
        setup, guest = self._setup, self._guest
        if self._closed or setup is None or guest is None:
            raise StreamError("the migration ended")
        with self._lock:
            self._roster.admit(hello, setup, guest.size_bytes)
        method = setup.compression
        return packet_decoder(method, None if method == "none" else self._new_decompressor(method))
