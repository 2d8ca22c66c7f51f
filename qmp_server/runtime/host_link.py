"""The host link model's pump: a fleet's outgoing migration connections through one modelled NIC.

Why a pump: the migration code, its writer threads and its own rate limiting stay exactly
as they are, and the destination simply sees a slower network.  :meth:`HostLink.attach`
takes the real, connected socket and gives the migration code one end of a socketpair
instead; tasks on the event loop read what the migration code writes at the other end, ask
the link's decisions (:class:`~qmp_server.engine.link.LinkDirection`: round robin between
connections, the bandwidth, the latency) when each chunk leaves and arrives, and write it to
the real socket then; the return path comes back the same way through the receive direction.

Contract: one :class:`HostLink` per fleet (``--link-bandwidth``, ``--link-latency``), shared
by every connection :func:`~qmp_server.runtime.channel.connect` opens for its VMs (tcp and
unix: main channel, multifd channels, postcopy preempt).  End of stream is passed on once
what came before it arrived; an error on either socket closes both (the migration code sees
it as it would see the real connection fail).  :meth:`HostLink.close` ends every pump.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
from collections import deque
from typing import Any

from qmp_server.engine.link import LinkDirection, LinkModel, queue_bytes

__all__ = ["HostLink"]

logger = logging.getLogger(__name__)

#: Bytes a connection may hold in the pump before they are granted, on an unlimited link
#: (a limited one: half its :func:`~qmp_server.engine.link.queue_bytes`, the socketpair's
#: buffer in front of the pump the other half).
_QUEUE = 512 << 10
#: The socketpair's buffer and the writer's queue on an unlimited link (channel.py's).
_SOCK_BUF = 4 << 20
_WRITER_LIMIT = 8 << 20
#: Chunks due within this much of the first are written together.
_SLACK = 0.0005
#: The most one receive takes, and the buffers one sendmsg gathers.
_READ = 1 << 20
_IOV_MAX = 512


class _Flow:
    """One direction of one connection: read from ``src``, deliver to ``dst`` when due.

    What was read is kept as the received buffers (views, never joined or copied again); a
    grant takes its bytes from the front, and delivery hands them to ``sendmsg`` as they are.
    """

    def __init__(
        self, link: LinkDirection, wake: asyncio.Event, conn: int, src: socket.socket,
        dst: socket.socket, queue: int,
    ) -> None:  # fmt: skip
        self.link = link
        self.queue = queue
        self.wake_link = wake
        self.conn = conn
        self.src = src
        self.dst = dst
        self.loop = asyncio.get_running_loop()
        self.waiting: deque[memoryview] = deque()  # read, not granted yet
        self.waiting_bytes = 0
        self.in_flight: deque[tuple[float, list[memoryview]]] = deque()  # granted: (due, data)
        self.ended = False  # src reached its end
        self.space = asyncio.Event()
        self.arrived = asyncio.Event()

    def grant(self, nbytes: int, due: float) -> None:
        parts: list[memoryview] = []
        self.waiting_bytes -= nbytes
        while nbytes:
            view = self.waiting.popleft()
            if view.nbytes > nbytes:
                self.waiting.appendleft(view[nbytes:])
                view = view[:nbytes]
            parts.append(view)
            nbytes -= view.nbytes
        self.in_flight.append((due, parts))
        self.arrived.set()
        self.space.set()

    async def read(self) -> None:
        while True:
            room = self.queue - self.waiting_bytes
            if room <= 0:
                self.space.clear()
                await self.space.wait()
                continue
            data = await self.loop.sock_recv(self.src, min(room, _READ))
            if not data:
                self.ended = True
                self.arrived.set()
                return
            self.waiting.append(memoryview(data))
            self.waiting_bytes += len(data)
            self.link.offer(self.conn, len(data))
            self.wake_link.set()

    async def deliver(self) -> None:
        """Write each chunk when it is due; pass the end of stream on after the last one."""
        while True:
            if not self.in_flight:
                if self.ended and not self.waiting_bytes:
                    with contextlib.suppress(OSError):
                        self.dst.shutdown(socket.SHUT_WR)
                    return
                self.arrived.clear()
                await self.arrived.wait()
                continue
            due = self.in_flight[0][0]
            delay = due - self.loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            limit = self.loop.time() + _SLACK
            parts: deque[memoryview] = deque()
            while self.in_flight and self.in_flight[0][0] <= limit:
                parts.extend(self.in_flight.popleft()[1])
            await self._send(parts)

    async def _send(self, parts: deque[memoryview]) -> None:
        """Gather-write every part (``sendmsg``), waiting while the socket is full."""
        while parts:
            try:
                sent = self.dst.sendmsg(list(itertools.islice(parts, _IOV_MAX)))
            except (BlockingIOError, InterruptedError):
                await self._writable()
                continue
            while sent:
                head = parts[0]
                if head.nbytes <= sent:
                    sent -= head.nbytes
                    parts.popleft()
                else:
                    parts[0] = head[sent:]
                    sent = 0

    async def _writable(self) -> None:
        fut: asyncio.Future[None] = self.loop.create_future()
        fd = self.dst.fileno()

        def ready() -> None:
            if not fut.done():
                fut.set_result(None)

        self.loop.add_writer(fd, ready)
        try:
            await fut
        finally:
            self.loop.remove_writer(fd)


class _Connection:
    """The two flows of one attached socket, and their end."""

    def __init__(self, link: HostLink, conn: int, real: socket.socket, far: socket.socket):
        self.conn = conn
        self.real = real
        self.far = far
        self.out = _Flow(link.transmit, link.wake[0], conn, far, real, link.pump_queue)
        self.back = _Flow(link.receive, link.wake[1], conn, real, far, link.pump_queue)
        self.task = asyncio.get_running_loop().create_task(self._run(link))

    async def _run(self, link: HostLink) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                for flow in (self.out, self.back):
                    group.create_task(flow.read())
                    group.create_task(flow.deliver())
        except* OSError:
            pass  # one side failed: closing both shows it to the other
        finally:
            link.transmit.forget(self.conn)
            link.receive.forget(self.conn)
            link.connections.pop(self.conn, None)
            for sock in (self.real, self.far):
                with contextlib.suppress(OSError):
                    sock.close()


class HostLink:
    """A fleet's modelled NIC: every attached connection shares its two directions."""

    def __init__(self, model: LinkModel) -> None:
        self.model = model
        self.transmit = LinkDirection(model.bandwidth, model.latency)
        self.receive = LinkDirection(model.bandwidth, model.latency)
        queue = queue_bytes(model)
        #: what each connection may queue: in the pump, and in the socketpair in front of it
        #: (the value given to SO_SNDBUF, which Linux doubles)
        self.pump_queue = _QUEUE if queue is None else max(queue // 2, 4096)
        self.socket_buffer = _SOCK_BUF if queue is None else max(queue // 4, 4096)
        #: what the migration code's writer thread may hold before the sender waits: on a
        #: limited link little, so the source sees the link's pace as QEMU's blocking
        #: writes do (and what is queued at switchover stays a small part of the downtime)
        self.writer_limit = _WRITER_LIMIT if queue is None else max(queue // 4, 4096)
        self.connections: dict[int, _Connection] = {}
        self.wake = (asyncio.Event(), asyncio.Event())
        self._ids = itertools.count(1)
        self._schedulers: list[asyncio.Task[None]] = []

    async def attach(self, real: socket.socket) -> socket.socket:
        """Route connected socket ``real`` through the link; returns the socket to use instead."""
        if not self._schedulers:
            loop = asyncio.get_running_loop()
            self._schedulers = [
                loop.create_task(self._schedule(self.transmit, self.wake[0], "out")),
                loop.create_task(self._schedule(self.receive, self.wake[1], "back")),
            ]
        ours, far = socket.socketpair()
        for sock in (real, far):
            sock.setblocking(False)
        if real.family in (socket.AF_INET, socket.AF_INET6):
            real.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = next(self._ids)
        self.connections[conn] = _Connection(self, conn, real, far)
        return ours

    async def _schedule(self, direction: LinkDirection, wake: asyncio.Event, side: str) -> None:
        """Hand out the direction's grants as they fall due (rule 4 of engine.link)."""
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            for grant in direction.grants(now):
                connection = self.connections.get(grant.conn)
                if connection is not None:
                    flow = connection.out if side == "out" else connection.back
                    flow.grant(grant.nbytes, grant.due)
            deadline = direction.next_deadline(loop.time())
            wake.clear()
            if deadline is None:
                await wake.wait()
            elif deadline > loop.time():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), deadline - loop.time())
            else:
                await asyncio.sleep(0)

    def info(self) -> dict[str, Any]:
        """query-fleet-link's answer (schema/fleet.json FleetLinkInfo)."""
        out: dict[str, Any] = {"modelled": True}
        if self.model.bandwidth is not None:
            out["bandwidth"] = self.model.bandwidth
        out["latency-ns"] = round(self.model.latency * 1e9)
        out["transmitted"] = self.transmit.bytes_total
        out["received"] = self.receive.bytes_total
        out["connections"] = len(self.connections)
        return out

    def close(self) -> None:
        """End every pump and the schedulers (the fleet is ending)."""
        for task in self._schedulers:
            task.cancel()
        self._schedulers = []
        for connection in list(self.connections.values()):
            connection.task.cancel()
