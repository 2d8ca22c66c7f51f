"""Postcopy, as numbers: which pages are still owed, which the destination guest waits for.

No clock and no I/O: times are inputs.  The runtime (``runtime/postcopy_source.py`` and
``runtime/postcopy_dest.py``) moves the bytes.  Facts from live QEMU 7.2 and 10.0 runs are in
``docs/postcopy-facts.md``; what is modelled rather than measured is said here.

Rules:

1. **The switch.**  When the source stops its guest, every page the destination does not hold
   in its final state is *owed*: pages never sent, and pages dirtied since they were sent (the
   final dirty sync).  The destination discards those (a bitmap, :func:`bitmap_of`) and may
   run its guest at once.
2. **The background stream** sends owed pages in QEMU's walk order, from the page after the
   last one precopy sent, wrapping at the end of RAM.  A page the destination *requests* goes
   before the walk.  Each owed page is sent once (the source's guest is stopped: it cannot
   change again).
3. **Faults** (modelled): the destination guest's workload touches pages; a touch of a page
   still owed blocks the vCPU that made it until the page arrives, and is requested from the
   source (one request per run of consecutive pages).  A write to a page waiting for its
   content is applied once the content arrived.  ``postcopy-blocktime`` is the time during
   which every vCPU was blocked, ``postcopy-vcpu-blocktime`` each vCPU's blocked time, in ms.
   The workload is one stream of writes: a fault blocks the vCPU it is attributed to (round
   robin), and the workload stalls while any vCPU it needs is blocked -- with one vCPU, QEMU's
   definition exactly.
4. **Nothing lost**: the destination keeps the content each page had when it arrived (or from
   precopy) before its own guest first overwrites it, so at the end it can check the source's
   RAM digest against what it received, however much its guest wrote since.
5. **Recovery**: after a broken connection the destination tells the source which pages it
   still misses; the source owes exactly those (pages that were in flight are sent again,
   pages received are not).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from qmp_server.engine.guest import GuestMemory, page_runs

__all__ = [
    "PageRequests",
    "PostcopyFaults",
    "PostcopySendPlan",
    "bitmap_of",
    "indexes_of",
]

Pages = npt.NDArray[np.int64]


def bitmap_of(indexes: npt.ArrayLike, page_count: int) -> bytes:
    """The pages as a bitmap, 1 bit per page, least significant bit first."""
    bits = np.zeros(page_count, dtype=np.uint8)
    bits[np.asarray(indexes, dtype=np.int64)] = 1
    return np.packbits(bits, bitorder="little").tobytes()


def indexes_of(bitmap: bytes, page_count: int) -> Pages:
    """The sorted page indexes set in a :func:`bitmap_of` bitmap."""
    bits = np.unpackbits(np.frombuffer(bitmap, dtype=np.uint8), bitorder="little")
    return np.flatnonzero(bits[:page_count]).astype(np.int64)


def _requests(pages: Pages) -> list[tuple[int, int]]:
    return [(int(start), int(count)) for start, count in page_runs(pages)]


@dataclass
class PostcopySendPlan:
    """The source's owed pages (rules 1, 2 and 5)."""

    page_count: int
    #: 1 where the page is still owed to the destination
    owed: npt.NDArray[np.uint8]
    #: the walk: owed pages in the order the background stream visits them
    order: Pages
    cursor: int = 0
    #: requested pages not sent yet, oldest first
    urgent: deque[Pages] = field(default_factory=deque)
    #: ``postcopy-requests``: request messages received
    requests: int = 0

    @classmethod
    def at_switch(
        cls, page_count: int, owed_pages: npt.ArrayLike, last_sent: int
    ) -> PostcopySendPlan:
        owed = np.zeros(page_count, dtype=np.uint8)
        owed[np.asarray(owed_pages, dtype=np.int64)] = 1
        # the bitmap sorts and dedupes in one pass (np.unique of 262,144 pages took 0.3-0.5 s
        # inside the switch's downtime here)
        pages = np.flatnonzero(owed).astype(np.int64)
        return cls(page_count, owed, _walk_order(pages, last_sent))

    @property
    def remaining(self) -> int:
        return int(np.count_nonzero(self.owed))

    def request(self, start: int, count: int) -> None:
        """A REQ_PAGES message: those pages jump the queue (the ones still owed)."""
        self.requests += 1
        end = min(start + count, self.page_count)
        if start >= end:
            return
        pages = np.arange(start, end, dtype=np.int64)
        pages = pages[self.owed[pages] == 1]
        if pages.size:
            self.urgent.append(pages)

    def next_pages(self, limit: int) -> tuple[Pages, bool]:
        """Up to ``limit`` owed pages to send next, and whether they were requested.

        The pages are not taken: call :meth:`sent` with what went out.
        """
        while self.urgent:
            head = self.urgent[0]
            head = head[self.owed[head] == 1]
            if head.size:
                self.urgent[0] = head
                return head[:limit], True
            self.urgent.popleft()
        self._skip_sent()
        window = self.order[self.cursor : self.cursor + 4 * limit]
        while window.size:
            keep = window[self.owed[window] == 1]
            if keep.size:
                return keep[:limit], False
            self.cursor += window.size
            self._skip_sent()
            window = self.order[self.cursor : self.cursor + 4 * limit]
        return np.zeros(0, dtype=np.int64), False

    def sent(self, pages: Pages) -> None:
        self.owed[pages] = 0
        while self.urgent and not np.any(self.owed[self.urgent[0]]):
            self.urgent.popleft()
        self._skip_sent()

    def _skip_sent(self) -> None:
        """Move the walk's cursor to its next owed page."""
        order = self.order
        while self.cursor < order.size:
            window = order[self.cursor : self.cursor + 4096]
            owed = np.flatnonzero(self.owed[window])
            if owed.size:
                self.cursor += int(owed[0])
                return
            self.cursor += window.size

    def resume(self, missing: Pages, last_sent: int) -> None:
        """Recovery (rule 5): owe exactly what the destination misses."""
        self.owed[:] = 0
        self.owed[missing] = 1
        self.order = _walk_order(missing, last_sent)
        self.cursor = 0
        self.urgent.clear()


def _walk_order(pages: Pages, last_sent: int) -> Pages:
    """``pages`` (sorted) rotated to start after ``last_sent``, as QEMU's walk goes on."""
    if last_sent < 0 or pages.size == 0:
        return pages
    split = int(np.searchsorted(pages, last_sent, side="right"))
    return np.concatenate((pages[split:], pages[:split]))


@dataclass
class PageRequests:
    """What a fault asks of the source: runs of pages (``start``, ``count``)."""

    runs: list[tuple[int, int]]


class PostcopyFaults:
    """The destination guest's view of postcopy (rules 3 and 4).

    :param guest: the RAM being loaded (it runs while pages are still missing).
    :param missing: the pages discarded at the switch, sorted.
    :param vcpus: how many vCPUs the blocked times are kept for.
    :param request: called with new requests (the runtime sends them over the return path).
    """

    def __init__(
        self,
        guest: GuestMemory,
        missing: npt.ArrayLike,
        vcpus: int,
        request: Callable[[PageRequests], None],
    ) -> None:
        self.guest = guest
        count = guest.page_count
        self.missing = np.zeros(count, dtype=np.uint8)
        self.missing[np.asarray(missing, dtype=np.int64)] = 1
        self.requested = np.zeros(count, dtype=np.uint8)
        self.request = request
        self.vcpus = max(1, vcpus)
        #: page -> what the guest wrote while it waited for the page's content
        self._deferred: dict[int, bytes] = {}
        #: page -> content as received, kept before the guest first overwrote it (rule 4)
        self._received: dict[int, bytes] = {}
        self._waiting: set[int] = set()
        self._blocked_since: float | None = None
        self._blocked_vcpu = 0
        self._faults = 0
        self.blocktime_ms = 0.0
        self.vcpu_blocktime_ms = [0.0] * self.vcpus

    # -- what the source sends ---------------------------------------------------------
    @property
    def missing_count(self) -> int:
        return int(np.count_nonzero(self.missing))

    def missing_bitmap(self) -> bytes:
        return np.packbits(self.missing, bitorder="little").tobytes()

    def wanted(self, pages: Pages) -> npt.NDArray[np.bool_]:
        """Which of the arriving ``pages`` to load: those still missing (a page the guest may
        already have written is never overwritten by a late copy)."""
        wanted: npt.NDArray[np.bool_] = self.missing[pages] == 1
        return wanted

    def received(self, pages: Pages, now: float) -> None:
        """``pages`` (loaded into the guest) arrived: apply deferred writes, unblock."""
        if pages.size == 0:
            return
        self.missing[pages] = 0
        self.requested[pages] = 0
        if self._deferred:
            for page in pages.tolist():
                data = self._deferred.pop(page, None)
                if data is not None:
                    self._keep_received(page)
                    self.guest.write_page(page, data)
        if self._waiting:
            self._waiting.difference_update(pages.tolist())
            if not self._waiting:
                self._unblock(now)

    # -- what the guest does -----------------------------------------------------------
    @property
    def blocked(self) -> bool:
        return bool(self._waiting)

    def touch(self, pages: Pages, now: float) -> npt.NDArray[np.bool_]:
        """The workload touches ``pages``: the mask of those present; missing ones block the
        vCPU (and are requested unless they already were)."""
        present: npt.NDArray[np.bool_] = self.missing[pages] == 0
        if present.all():
            return present
        absent = np.unique(pages[~present])
        fresh = absent[self.requested[absent] == 0]
        self.requested[fresh] = 1
        if not self._waiting:
            self._blocked_since = now
            self._blocked_vcpu = self._faults % self.vcpus
            self._faults += 1
        self._waiting.update(absent.tolist())
        if fresh.size:
            self.request(PageRequests(_requests(fresh)))
        return present

    def write(self, pages: Pages, data: bytes, now: float) -> None:
        """The workload writes whole pages (``data``: their contents in order)."""
        present = self.touch(pages, now)
        size = len(data) // max(1, pages.size)
        for k in np.flatnonzero(~present).tolist():
            self._deferred[int(pages[k])] = data[k * size : (k + 1) * size]
        here = pages[present]
        if here.size:
            for page in np.unique(here).tolist():
                self._keep_received(page)
            if present.all():
                self.guest.write_page_list(pages, data)
            else:
                picked = b"".join(
                    data[k * size : (k + 1) * size] for k in np.flatnonzero(present).tolist()
                )
                self.guest.write_page_list(here, picked)

    def pending_requests(self) -> PageRequests:
        """Recovery: every page requested and not received, to ask again."""
        return PageRequests(_requests(np.flatnonzero(self.requested).astype(np.int64)))

    # -- accounting ------------------------------------------------------------------------
    def _keep_received(self, page: int) -> None:
        if page not in self._received:
            self._received[page] = self.guest.read_page(page)

    def _unblock(self, now: float) -> None:
        if self._blocked_since is None:
            return
        ms = max(0.0, now - self._blocked_since) * 1000
        self._blocked_since = None
        self.vcpu_blocktime_ms[self._blocked_vcpu] += ms
        if self.vcpus == 1:
            self.blocktime_ms += ms

    def blocktime(self, now: float) -> tuple[int, list[int]]:
        """``postcopy-blocktime`` and ``postcopy-vcpu-blocktime`` (ms) so far."""
        total = self.blocktime_ms
        per = list(self.vcpu_blocktime_ms)
        if self._blocked_since is not None:
            extra = max(0.0, now - self._blocked_since) * 1000
            per[self._blocked_vcpu] += extra
            if self.vcpus == 1:
                total += extra
        return int(total), [int(v) for v in per]

    def received_digest(self) -> str:
        """The digest of RAM as received (rule 4): the guest's writes set aside."""
        guest = self.guest
        now_content = {page: guest.read_page(page) for page in self._received}
        for page, data in self._received.items():
            guest.write_page(page, data)
        try:
            return guest.digest()
        finally:
            for page, data in now_content.items():
                guest.write_page(page, data)
