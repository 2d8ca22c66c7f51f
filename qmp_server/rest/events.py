"""Fan-out of QMP events to server-sent-event subscribers, with a bounded history for replay.

Rules:

1. Every QMP event the runtime emits gets the next sequence number (1, 2, ...), which is its
   SSE ``id:``, and goes into a history ring of :data:`HISTORY_SIZE` entries.
2. A subscriber has a bounded queue of :data:`QUEUE_SIZE` events.  **Overflow policy:** a
   subscriber whose queue is full when an event arrives is *disconnected*: it is removed from
   the hub, its stream ends after the events already queued, and the drop is counted
   (``dropped_subscribers``).  It loses nothing if it reconnects with ``Last-Event-ID`` while
   the missed events are still in the ring, which is larger than a queue.  Slow readers never
   delay or grow memory for anyone else.
3. ``subscribe(last_id)`` replays the ring entries after ``last_id`` before live events, with no
   gap and no duplicate (replay and registration happen in the same synchronous step).  When
   ``last_id`` is older than the ring, :attr:`Subscription.gap` says which ids were lost.
4. The hub is used from the event loop thread only; :meth:`EventHub.publish` called from
   another thread is handed to the loop with ``call_soon_threadsafe``.
5. Fleet: one hub for the whole fleet, every event tagged with the VM it is about
   (:meth:`EventHub.publish_vm`; the payload then has ``"vm"``).  ``subscribe(vm=NAME)`` sees
   only that VM's events (numbers stay the fleet's: a per-VM stream has gaps in its ids, and its
   replay is the ring filtered).  Subscribers are kept by the VM they follow, so an event costs
   only the streams that want it, however many VMs have one open.  :class:`VMEvents` is that
   filtered view with the interface a one-VM route uses (:class:`EventSource`).
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["HISTORY_SIZE", "QUEUE_SIZE", "EventHub", "EventSource", "SequencedEvent",
           "Subscription", "VMEvents"]  # fmt: skip

HISTORY_SIZE = 1024
QUEUE_SIZE = 256


@dataclass(frozen=True, slots=True)
class SequencedEvent:
    """One QMP event with its sequence number."""

    seq: int
    name: str
    data: dict[str, Any]
    timestamp: dict[str, int]
    #: the VM the event is about (fleet hubs only)
    vm: str | None = None

    def payload(self) -> dict[str, Any]:
        """What goes into SSE ``data:``: the QMP data and timestamp (and the VM's name)."""
        if self.vm is None:
            return {"data": self.data, "timestamp": self.timestamp}
        return {"vm": self.vm, "data": self.data, "timestamp": self.timestamp}


class Subscription:
    """One SSE client's view of the hub; iterate with :meth:`next`."""

    def __init__(self, hub: EventHub, limit: int, vm: str | None = None) -> None:
        self._hub = hub
        self._limit = limit
        #: only this VM's events (rule 5); None: all
        self.vm = vm
        self._queue: deque[SequencedEvent] = deque()
        self._wakeup = asyncio.Event()
        self.closed = False
        #: Set when the hub disconnected this subscriber for not reading (rule 2).
        self.overflowed = False
        #: ``(first_lost, last_lost)`` when the requested replay was older than the ring.
        self.gap: tuple[int, int] | None = None

    def _offer(self, event: SequencedEvent) -> bool:
        if len(self._queue) >= self._limit:
            self.overflowed = True
            self._close()
            return False
        self._queue.append(event)
        self._wakeup.set()
        return True

    def _close(self) -> None:
        self.closed = True
        self._wakeup.set()

    async def next(self) -> SequencedEvent | None:
        """The next event; None once the subscription is closed and drained."""
        while not self._queue:
            if self.closed:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._queue.popleft()

    def close(self) -> None:
        """Leave the hub (the client went away)."""
        self._hub._discard(self)
        self._close()


class EventHub:
    """Numbered history ring plus bounded per-subscriber queues (see the module rules)."""

    def __init__(self, history: int = HISTORY_SIZE, queue_size: int = QUEUE_SIZE) -> None:
        self.history: deque[SequencedEvent] = deque(maxlen=history)
        self.queue_size = queue_size
        self.last_seq = 0
        self.dropped_subscribers = 0
        #: drops of VM-filtered subscribers, by VM (rule 5)
        self.dropped_by_vm: dict[str, int] = {}
        #: the subscribers by the VM they follow (None: every event), so that an event is
        #: offered only to the streams that want it
        self._subscribers: dict[str | None, set[Subscription]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.get_ident()
        self.closed = False

    @property
    def subscriber_count(self) -> int:
        return sum(len(subs) for subs in self._subscribers.values())

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Remember the loop (and its thread) events must be delivered on."""
        self._loop = loop
        self._thread = threading.get_ident()

    @property
    def history_size(self) -> int:
        return self.history.maxlen or 0

    def publish(self, event: dict[str, Any]) -> None:
        """A runtime event listener: number, remember and fan out one QMP event dict."""
        self.publish_vm(None, event)

    def publish_vm(self, vm: str | None, event: dict[str, Any]) -> None:
        """:meth:`publish` for an event about VM ``vm`` (a fleet's ``vm_event_listeners``)."""
        if self._loop is not None and threading.get_ident() != self._thread:
            self._loop.call_soon_threadsafe(self.publish_vm, vm, event)
            return
        data = event.get("data")
        self.last_seq += 1
        item = SequencedEvent(
            self.last_seq,
            str(event.get("event")),
            data if isinstance(data, dict) else {},
            dict(event.get("timestamp") or {}),
            vm,
        )
        self.history.append(item)
        wanted = list(self._subscribers.get(None, ()))
        if vm is not None:
            wanted += self._subscribers.get(vm, ())
        for sub in wanted:
            if not sub._offer(item):
                self._discard(sub)
                self.dropped_subscribers += 1
                if sub.vm is not None:
                    self.dropped_by_vm[sub.vm] = self.dropped_by_vm.get(sub.vm, 0) + 1

    def subscribe(self, last_id: int | None = None, vm: str | None = None) -> Subscription:
        """A new subscriber (to ``vm``'s events only, if given); with ``last_id``, the ring's
        later events are queued first.

        Replay beyond the queue bound is allowed (it is bounded by the ring).
        """
        sub = Subscription(self, self.queue_size, vm)
        if self.closed:
            sub._close()
            return sub
        if last_id is not None and last_id < self.last_seq:
            oldest = self.history[0].seq if self.history else self.last_seq + 1
            if last_id + 1 < oldest:
                sub.gap = (last_id + 1, oldest - 1)
            sub._queue.extend(
                e for e in self.history if e.seq > last_id and (vm is None or e.vm == vm)
            )
        self._subscribers.setdefault(vm, set()).add(sub)
        return sub

    def _discard(self, sub: Subscription) -> None:
        subs = self._subscribers.get(sub.vm)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subscribers[sub.vm]

    def subscribers_by_vm(self) -> dict[str | None, int]:
        """How many streams follow each VM (None: the unfiltered ones)."""
        return {vm: len(subs) for vm, subs in self._subscribers.items()}

    def close_vm(self, vm: str) -> None:
        """End the streams filtered to ``vm`` (it left the fleet) after what they have queued."""
        for sub in self._subscribers.pop(vm, set()):
            sub._close()
        self.dropped_by_vm.pop(vm, None)

    def close(self) -> None:
        """End every stream (server shutdown); later subscriptions end at once."""
        self.closed = True
        for subs in self._subscribers.values():
            for sub in subs:
                sub._close()
        self._subscribers.clear()


class EventSource(Protocol):
    """What the one-VM routes and metrics read from their events: a hub or a :class:`VMEvents`."""

    @property
    def last_seq(self) -> int: ...

    @property
    def history_size(self) -> int: ...

    @property
    def subscriber_count(self) -> int: ...

    @property
    def dropped_subscribers(self) -> int: ...

    def subscribe(self, last_id: int | None = None) -> Subscription: ...


class VMEvents:
    """One VM's events in a fleet's hub (rule 5), as an :class:`EventSource`."""

    def __init__(self, hub: EventHub, vm: str) -> None:
        self.hub = hub
        self.vm = vm

    @property
    def last_seq(self) -> int:
        return self.hub.last_seq

    @property
    def history_size(self) -> int:
        return self.hub.history_size

    @property
    def subscriber_count(self) -> int:
        return len(self.hub._subscribers.get(self.vm, ()))

    @property
    def dropped_subscribers(self) -> int:
        return self.hub.dropped_by_vm.get(self.vm, 0)

    def subscribe(self, last_id: int | None = None) -> Subscription:
        return self.hub.subscribe(last_id, self.vm)
