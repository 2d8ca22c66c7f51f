"""Multifd decisions, pure: where pages go, and which copy of a page wins on the destination.

Why a module: with ``multifd`` the source's pages leave on several connections at once, so
the destination receives them out of order.  A page sent in one dirty-sync round and again
in a later round may arrive on two channels in either order; the later round must win.  QEMU
orders them with a sync point on every channel at every dirty sync.  qmp-server keeps the
same sync records (``CHANNEL_SYNC``, docs/stream-format.md) but does not stall the channels
on them: each page carries the round it was sent in (its channel's last sync), and
:class:`PageGenerations` admits a copy only if no later round's copy was loaded before it.

Where zero pages go is a per-version fact (QEMU 7.2 and ``zero-page-detection=legacy``: the
main thread finds them and sends them on the main channel; 9.0+ ``multifd``: the channels'
threads find them and send them in their packets without data; ``none``: not looked for,
sent with their data): :class:`qmp_server.engine.multifd_cost.ZeroPages`, with the rest of
what QEMU's channels count.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import numpy.typing as npt

from qmp_server.engine.guest import PAGE_SIZE, GuestMemory
from qmp_server.engine.stream import (
    ChannelHello,
    CompressedPages,
    MultifdSetup,
    RamList,
    RamRun,
    StreamError,
    ZeroList,
    ZeroRun,
)

__all__ = [
    "ChannelRoster",
    "PageGenerations",
    "apply_generation_event",
    "new_session",
    "packet_decoder",
]

#: ``decompress(method, data, count)``: ``count`` pages, or ValueError
Decompress = Callable[[str, bytes, int], bytes]


def new_session() -> bytes:
    """An 8-byte id that ties a migration's channels to its main stream."""
    return os.urandom(8)


class PageGenerations:
    """The dirty-sync round of the copy each page holds, on the destination.

    A copy of round ``g`` is admitted when the page holds no copy of a later round; within a
    round the source sends a page at most once, so the order of equal rounds never matters.
    """

    def __init__(self, page_count: int) -> None:
        self._round = np.zeros(page_count, dtype=np.uint32)

    def admit(self, indexes: npt.NDArray[np.int64], generation: int) -> npt.NDArray[np.bool_]:
        """Which of ``indexes`` (distinct) to load for a copy of ``generation``; records it."""
        ok: npt.NDArray[np.bool_] = self._round[indexes] <= generation
        self._round[indexes[ok]] = generation
        return ok

    def admit_run(self, start: int, count: int, generation: int) -> npt.NDArray[np.bool_] | None:
        """:meth:`admit` for pages ``start .. start+count-1``; None when all are admitted."""
        rounds = self._round[start : start + count]
        ok: npt.NDArray[np.bool_] = rounds <= generation
        if ok.all():
            rounds[:] = generation
            return None
        rounds[ok] = generation
        return ok


class ChannelRoster:
    """The destination's check of the channels that connect: each id once, below its own
    ``multifd-channels``, of the main stream's session and RAM size."""

    def __init__(self, channels: int) -> None:
        self.channels = channels
        self.seen: set[int] = set()

    def check_id(self, hello: ChannelHello) -> None:
        """What the destination can check before the main stream's setup arrived."""
        if hello.channel_id >= self.channels:
            raise StreamError(
                f"multifd: received channel id {hello.channel_id} is greater than "
                f"number of channels {self.channels}"
            )

    def admit(self, hello: ChannelHello, setup: MultifdSetup, ram_size: int) -> None:
        """The rest, once the setup is known; records the channel."""
        self.check_id(hello)
        if hello.session != setup.session or hello.channel_id in self.seen:
            raise StreamError(f"multifd: unexpected channel {hello.channel_id}")
        if hello.ram_size != ram_size:
            raise StreamError(f"multifd: channel {hello.channel_id} has a RAM size mismatch")
        self.seen.add(hello.channel_id)


def packet_decoder(method: str, inflate: Callable[[bytes, int], bytes] | None) -> Decompress:
    """A channel's ``decompress`` for apply_generation_event: ``inflate`` (the channel's
    decompressor, None without compression) for packets of the migration's ``method``."""

    def decompress(kind: str, data: bytes, count: int) -> bytes:
        if inflate is None or kind != method:
            raise ValueError(f"a {kind} packet in a migration with compression {method}")
        return inflate(data, count)

    return decompress


def _pick(data: bytes | bytearray | memoryview, ok: npt.NDArray[np.bool_]) -> bytes:
    """The pages of ``data`` where ``ok`` is true, concatenated."""
    view = memoryview(data)
    return b"".join(view[i * PAGE_SIZE : (i + 1) * PAGE_SIZE] for i in np.flatnonzero(ok))


def apply_generation_event(
    guest: GuestMemory,
    rounds: PageGenerations,
    generation: int,
    event: object,
    decompress: Decompress,
    lock: AbstractContextManager[object] | None = None,
) -> bool:
    """Load a page record of round ``generation`` into ``guest``, leaving out the pages that
    already hold a later round's copy; False for an event that is not a page record.

    ``lock`` guards ``guest`` and ``rounds`` when channels load at once: the costly parts
    (decompression, the comparison of a run with its baseline) run outside it.

    :raise ValueError: a COMPRESSED packet that does not decompress to its pages.
    """
    if isinstance(event, RamRun):
        count = len(event.data) // PAGE_SIZE
        differs = guest.run_differs(event.start, event.data)
        with lock or nullcontext():
            ok = rounds.admit_run(event.start, count, generation)
            if ok is None:
                guest.load_pages(event.start, event.data, differs)
            else:
                idx = np.arange(event.start, event.start + count, dtype=np.int64)
                guest.load_page_list(idx[ok], _pick(event.data, ok))
        return True
    if isinstance(event, CompressedPages):
        idx = np.asarray(event.indexes, dtype=np.int64)
        data = decompress(event.compression, event.data, idx.size)
        if np.unique(idx).size != idx.size:
            raise ValueError("a page listed twice in one record")
        with lock or nullcontext():
            ok = rounds.admit(idx, generation)
            guest.load_page_list(idx[ok], data if ok.all() else _pick(data, ok))
        return True
    with lock or nullcontext():
        return _apply_small(guest, rounds, generation, event)


def _apply_small(
    guest: GuestMemory, rounds: PageGenerations, generation: int, event: object
) -> bool:
    if isinstance(event, ZeroRun):
        ok = rounds.admit_run(event.start, event.count, generation)
        if ok is None:
            guest.load_zero_pages(event.start, event.count)
        else:
            idx = np.arange(event.start, event.start + event.count, dtype=np.int64)
            guest.load_zero_page_list(idx[ok])
    elif isinstance(event, RamList):
        idx = np.asarray(event.indexes, dtype=np.int64)
        if np.unique(idx).size != idx.size:
            raise ValueError("a page listed twice in one record")
        ok = rounds.admit(idx, generation)
        guest.load_page_list(idx[ok], event.data if ok.all() else _pick(event.data, ok))
    elif isinstance(event, ZeroList):
        idx = np.asarray(event.indexes, dtype=np.int64)
        if np.unique(idx).size != idx.size:
            raise ValueError("a page listed twice in one record")
        guest.load_zero_page_list(idx[rounds.admit(idx, generation)])
    else:
        return False
    return True
