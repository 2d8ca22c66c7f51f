"""The host link model's decisions: one modelled NIC shared by a fleet's outgoing migrations.

Contract: pure arithmetic, no I/O and no clock (``now`` is an argument).  The pump
(:mod:`qmp_server.runtime.host_link`) reads bytes from the migration code's end of a
socketpair, tells a :class:`LinkDirection` how many bytes each connection has waiting
(:meth:`~LinkDirection.offer`), and asks it which of them go on the wire now
(:meth:`~LinkDirection.grants`); each :class:`Grant` says when its last byte reaches the far
end (``due``), and the pump delivers it to the real socket then.

Rules:

1. A link has two directions (full duplex), each with ``bandwidth`` bytes per second of its
   own: the migration streams out, the return paths in.  ``None`` is an unlimited link.
2. A direction sends one chunk at a time.  Connections with bytes waiting take turns, a
   *quantum* each (round robin), so ``n`` busy connections get ``bandwidth / n`` each, and a
   connection that needs less leaves the rest to the others (max-min fair, byte for byte).
3. A chunk of ``b`` bytes occupies the direction for ``b / bandwidth`` seconds from when the
   direction is free (an idle link keeps no credit: no burst after a pause); its last byte
   arrives ``latency`` seconds after it left (one way, the same for each direction).
4. Grants are made up to ``horizon`` seconds ahead, so the pump wakes once per few chunks,
   not once per chunk.
5. A connection's sender may be ahead of the wire by a queue (its socket buffer) of
   :func:`queue_bytes`: as on a real NIC, the migration code sees the link's pace once the
   queue is full, and the data queued at switchover is downtime; an unlimited buffer would
   let the source believe the whole stream had gone.

>>> d = LinkDirection(bandwidth=1000, latency=0.01, quantum=100)
>>> d.offer(1, 150); d.offer(2, 100)
>>> [(g.conn, g.nbytes, round(g.due, 3)) for g in d.grants(now=0.0)]
[(1, 100, 0.11)]
>>> [(g.conn, g.nbytes, round(g.due, 3)) for g in d.grants(now=0.1)]
[(2, 100, 0.21)]
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

from qmp_server.engine.sizes import parse_size

__all__ = [
    "Grant",
    "LinkDirection",
    "LinkModel",
    "link_model",
    "parse_latency",
    "quantum_for",
    "queue_bytes",
]

#: Chunk sizes: at least a page, at most what the pump reads at once.
MIN_QUANTUM = 4096
MAX_QUANTUM = 256 << 10
#: The time a quantum takes on the wire, when the bandwidth allows (finer: more wake-ups).
QUANTUM_TIME = 0.002
#: How far ahead grants are made (rule 4).
HORIZON = 0.005
#: A sender's queue in front of the wire: this much sending time, plus twice a round trip
#: (what TCP's send buffer grows to), at least :data:`MIN_QUEUE`.
QUEUE_TIME = 0.01
MIN_QUEUE = 64 << 10

_LATENCY = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(s|ms|us)")
_UNIT = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


def parse_latency(text: str) -> float:
    """A one-way latency (``2ms``, ``0.5ms``, ``150us``, ``1s``) in seconds.

    >>> parse_latency("2ms"), parse_latency("0.5ms"), parse_latency("150us")
    (0.002, 0.0005, 0.00015)

    :raise ValueError: not a number with one of the units s, ms, us.
    """
    found = _LATENCY.fullmatch(text.strip())
    if found is None:
        raise ValueError(f"'{text}' is not a latency (a number and a unit: s, ms or us)")
    return float(found.group(1)) * _UNIT[found.group(2)]


@dataclass(frozen=True)
class LinkModel:
    """The modelled NIC: bytes per second in each direction (None: unlimited), one-way latency."""

    bandwidth: int | None
    latency: float = 0.0


def link_model(bandwidth: str | None, latency: str | None) -> LinkModel | None:
    """The model ``--link-bandwidth`` / ``--link-latency`` ask for; None when neither is given.

    >>> link_model("125M", "2ms")
    LinkModel(bandwidth=131072000, latency=0.002)
    >>> link_model(None, None) is None
    True

    :raise ValueError: the text users see (naming the option).
    """
    if bandwidth is None and latency is None:
        return None
    rate = None
    if bandwidth is not None:
        try:
            rate = parse_size(bandwidth, name="link-bandwidth")
        except ValueError as err:
            raise ValueError(f"--link-bandwidth {bandwidth}: {err}") from None
        if rate <= 0:
            raise ValueError(f"--link-bandwidth {bandwidth}: must be more than 0 bytes/s")
    delay = 0.0
    if latency is not None:
        try:
            delay = parse_latency(latency)
        except ValueError as err:
            raise ValueError(f"--link-latency {latency}: {err}") from None
    return LinkModel(rate, delay)


def quantum_for(bandwidth: int | None) -> int:
    """The round robin's chunk: about :data:`QUANTUM_TIME` on the wire, within the limits.

    >>> quantum_for(None), quantum_for(1 << 20), quantum_for(125 << 20)
    (262144, 4096, 262144)
    """
    if bandwidth is None:
        return MAX_QUANTUM
    return max(MIN_QUANTUM, min(MAX_QUANTUM, int(bandwidth * QUANTUM_TIME)))


def queue_bytes(model: LinkModel) -> int | None:
    """How many bytes one connection may have written and not yet sent (rule 5).

    None on an unlimited link (the socket's own buffer applies).

    >>> queue_bytes(LinkModel(100 << 20, 0.001))
    1468006
    >>> queue_bytes(LinkModel(1 << 20, 0.0)), queue_bytes(LinkModel(None, 0.002))
    (65536, None)
    """
    if model.bandwidth is None:
        return None
    span = QUEUE_TIME + 4 * model.latency
    return max(MIN_QUEUE, int(model.bandwidth * span))


@dataclass(frozen=True, slots=True)
class Grant:
    """``nbytes`` of connection ``conn`` go on the wire; the last one arrives at ``due``."""

    conn: int
    nbytes: int
    due: float


class LinkDirection:
    """One direction of the link: waiting connections served round robin, at ``bandwidth``."""

    def __init__(
        self,
        bandwidth: int | None,
        latency: float = 0.0,
        *,
        quantum: int | None = None,
        horizon: float = HORIZON,
    ) -> None:
        self.bandwidth = bandwidth
        self.latency = latency
        self.quantum = quantum or quantum_for(bandwidth)
        self.horizon = horizon
        self._waiting: dict[int, int] = {}
        self._turns: deque[int] = deque()
        self._free_at = 0.0
        #: bytes granted so far (what crossed the link in this direction)
        self.bytes_total = 0

    def offer(self, conn: int, nbytes: int) -> None:
        """Connection ``conn`` has ``nbytes`` more waiting to be sent."""
        if nbytes <= 0:
            return
        before = self._waiting.get(conn, 0)
        self._waiting[conn] = before + nbytes
        if before == 0:
            self._turns.append(conn)

    def waiting(self, conn: int) -> int:
        """Bytes of ``conn`` offered and not granted yet."""
        return self._waiting.get(conn, 0)

    def forget(self, conn: int) -> None:
        """``conn`` is gone: what it had waiting is dropped."""
        if self._waiting.pop(conn, 0):
            self._turns.remove(conn)

    def busy(self) -> bool:
        """Whether any connection has bytes waiting."""
        return bool(self._turns)

    def grants(self, now: float) -> list[Grant]:
        """The chunks that go on the wire by ``now`` + horizon, in the order they are sent."""
        out: list[Grant] = []
        rate = self.bandwidth
        while self._turns and (rate is None or self._free_at <= now + self.horizon):
            conn = self._turns.popleft()
            waiting = self._waiting[conn]
            n = waiting if rate is None else min(self.quantum, waiting)
            start = max(now, self._free_at)
            end = start if rate is None else start + n / rate
            self._free_at = end
            if waiting > n:
                self._waiting[conn] = waiting - n
                self._turns.append(conn)
            else:
                del self._waiting[conn]
            self.bytes_total += n
            out.append(Grant(conn, n, end + self.latency))
        return out

    def next_deadline(self, now: float) -> float | None:
        """When :meth:`grants` will have something to give (None: nothing waits)."""
        if not self._turns:
            return None
        if self.bandwidth is None:
            return now
        return max(now, self._free_at - self.horizon)
