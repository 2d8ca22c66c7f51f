"""What QEMU's multifd channels would carry and count: ``multifd-bytes`` and the page counters.

The counterpart of :mod:`qmp_server.engine.wire_cost` for ``multifd``: qmp-server moves pages
its own way, but ``query-migrate`` must show what QEMU's channels would have counted for the
same pages.  Facts (recorded live from QEMU 7.2 and 10.0 with their ``multifd_*`` traces, and
read in their ``migration/``; ``docs/multifd-facts.md`` says which is which):

1. **Packets.**  Pages are queued in the migration thread's walk order.  A packet holds pages
   of one RAM block, at most :data:`PAGES_PER_PACKET` (512 KiB of 4 KiB pages); it is sent
   when it is full, when a page of another block is queued, and at every sync.  Every packet
   has the same header size, :data:`PACKET_BYTES`: 320 bytes of fields and the offset array
   for all 128 pages, whether used or not.  The payload follows: the normal pages (4096 bytes
   each), or their zlib/zstd output (one stream per channel, flushed at the end of each packet).
2. **Zero pages** (:class:`ZeroPages`).  7.2, and 10.0 with ``zero-page-detection`` ``legacy``:
   the migration thread finds them and sends them on the main channel as before (a 9-byte
   record, plus the block name when the block changes); only normal pages are queued.  10.0
   ``multifd`` (the default): every dirty page is queued; the channel finds the zero ones and
   lists them in the packet, without data.  ``none``: every page is sent as a normal page.
3. **Syncs.**  A sync sends the pending packet, then one packet with the SYNC flag and no
   pages on every channel.  7.2 syncs at the end of the setup and of every RAM section
   (iteration or final).  8.0+ syncs at the end of the setup and each time the walk over the
   dirty bitmap runs past the last RAM block (``find_dirty_block``): once per pass, and also
   for a search that finds nothing; and it writes an 8-byte ``MULTIFD_FLUSH`` flag on the main
   channel each time (not a RAM byte: in ``transferred``, not in ``precopy-bytes``).
4. **Counting.**  7.2 counts in the migration thread, as pages are queued: ``normal`` per page,
   ``multifd-bytes`` per packet as 4096 per page + :data:`PACKET_BYTES` (compressed or not).
   10.0 counts in the channels, as packets are written: the header plus the real payload
   (compressed size), the 64-byte initial packet of each channel, and ``normal``/``duplicate``
   per packet, so pages still queued are not counted yet.
5. **transferred.**  QEMU adds ``multifd-bytes`` to what the main channel counts
   (:attr:`QemuStream.transferred <qmp_server.engine.wire_cost.QemuStream.transferred>`: 7.2 its
   RAM bytes, 10.0 every byte it flushed).  ``normal-bytes`` is ``normal`` x 4096.
6. **Zero copy** (``zero-copy-send``).  A channel sends a packet's header with a plain write
   and its normal pages with ``MSG_ZEROCOPY`` (a packet without normal pages sends none).  At
   every sync, after handing the SYNC packet to a channel, the migration thread flushes the
   channel's socket: it waits for the kernel's completions of what it queued, and counts one
   ``dirty-sync-missed-zero-copy`` if the kernel copied all of it (over loopback it always
   does); a channel that sent no normal page since the last flush counts nothing.  Live, a
   64 MiB idle guest at 500 kB/s: 10.0 counts 2, 3 and 5 with 1, 2 and 4 channels (this
   model: 2, 3, 4); 7.2, which syncs every section, 4, 5-6 and 6 (this model: 3, 5, 7):
   which channel gets which packet, and when a section ends, are timing in QEMU.

API (pure, no I/O)::

    rules = MultifdRules.for_profile(profile, zero_page_detection="multifd")
    acct = MultifdAccount(rules, blocks, channels=2, payload=None)
    acct.start()                          # channels connected: initial packets (10.0)
    acct.sync()                           # end of the setup (both versions)
    packets = acct.queue(pages, zero)     # pages in walk order, ``zero`` their zero mask
    on_main = acct.main_mask(zero)        # the pages QEMU sends on the main channel instead
    qemu.add_pages(pages[on_main], qemu.cost(pages[on_main], zero[on_main]), downtime=...)
    acct.sync()                           # 7.2: end of each RAM section; 8.0+: each wrap,
    qemu.multifd_flush()                  #   with its flag on the main channel (rule 3)
    acct.multifd_bytes, acct.counters(qemu)

``payload(packet)`` returns the bytes after the header of a data packet (the compressor's
output for zlib/zstd, per channel); by default 4096 per normal page.  ``queue`` and ``sync``
return the :class:`Packet` objects they completed, in order, for a data plane to send.
Channels are given round robin, as QEMU does while every channel keeps up.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from qmp_server.engine.guest import PAGE_SIZE
from qmp_server.engine.wire_cost import BlockMap, QemuStream
from qmp_server.profiles import Profile

__all__ = [
    "FLUSH_FLAG_BYTES",
    "INITIAL_PACKET_BYTES",
    "PACKET_BYTES",
    "PAGES_PER_PACKET",
    "MultifdAccount",
    "MultifdRules",
    "Packet",
    "ZeroPages",
    "packet_share",
]

#: MULTIFD_PACKET_SIZE (512 KiB) in 4 KiB pages
PAGES_PER_PACKET = 128
#: the packet's fixed fields: magic, version, flags, pages_alloc, normal_pages,
#: next_packet_size (4 bytes each), packet_num (8), 7.2: unused[4] / 10.0: zero_pages,
#: unused32, unused64[3] (32 bytes), the block name (256)
PACKET_FIELDS_BYTES = 6 * 4 + 8 + 32 + 256
#: every packet, data or SYNC: the fields and the full-size offset array (rule 1)
PACKET_BYTES = PACKET_FIELDS_BYTES + 8 * PAGES_PER_PACKET
#: MultiFDInit_t: magic, version, uuid[16], id, 7 + 32 unused bytes (counted from 8.1)
INITIAL_PACKET_BYTES = 4 + 4 + 16 + 1 + 7 + 32
#: RAM_SAVE_FLAG_MULTIFD_FLUSH on the main channel, 8.0+ (rule 3)
FLUSH_FLAG_BYTES = 8


class ZeroPages(enum.Enum):
    """Where zero pages are found and sent (rule 2); the values are ``zero-page-detection``'s."""

    MAIN = "legacy"
    IN_PACKET = "multifd"
    NONE = "none"


@dataclass(frozen=True)
class MultifdRules:
    """One QEMU version's multifd behaviour (rules 2-4)."""

    zero_pages: ZeroPages
    #: rule 4: counted by the channels as written (8.1+), else by the migration thread as queued
    counts_in_channels: bool
    #: rule 3: a sync at the end of every RAM section (7.2) rather than at every wrap (8.0+)
    sync_per_section: bool
    #: rule 3: 8.0+ writes MULTIFD_FLUSH on the main channel at every sync
    flush_flag: bool

    @classmethod
    def for_profile(cls, profile: Profile, zero_page_detection: str = "multifd") -> MultifdRules:
        """The rules of ``profile``; ``zero_page_detection`` is the 9.0+ parameter (earlier
        versions always find zero pages in the migration thread)."""
        zero = ZeroPages(zero_page_detection) if profile.since(9, 0) else ZeroPages.MAIN
        return cls(
            zero_pages=zero,
            counts_in_channels=profile.since(8, 1),
            sync_per_section=not profile.since(8, 0),
            flush_flag=profile.since(8, 0),
        )


@dataclass(frozen=True)
class Packet:
    """One multifd packet as QEMU would send it."""

    channel: int
    #: the RAM block's index in the :class:`BlockMap` (-1: a SYNC packet)
    block: int
    #: flat page indexes of the normal pages, then of the zero pages (rule 2)
    normal: npt.NDArray[np.int64] = field(repr=False)
    zero: npt.NDArray[np.int64] = field(repr=False)
    sync: bool = False

    @property
    def raw_payload(self) -> int:
        return int(self.normal.size) * PAGE_SIZE


_EMPTY = np.zeros(0, dtype=np.int64)


class MultifdAccount:
    """QEMU's multifd packets and counters for one outgoing migration (rules 1-5)."""

    def __init__(
        self,
        rules: MultifdRules,
        blocks: BlockMap,
        channels: int,
        payload: Callable[[Packet], int] | None = None,
        *,
        zero_copy: bool = False,
    ) -> None:
        if channels < 1:
            raise ValueError("multifd needs at least one channel")
        self.rules = rules
        self.blocks = blocks
        self.channels = channels
        self._payload = payload
        self._next_channel = 0
        # the pending packet: its block and page indexes so far (normal / zero)
        self._block = -1
        self._normal: list[npt.NDArray[np.int64]] = []
        self._zero: list[npt.NDArray[np.int64]] = []
        self._pending = 0
        #: ``multifd-bytes``
        self.multifd_bytes = 0
        #: packets sent, SYNC packets among them (initial packets not included)
        self.packets = 0
        self.sync_packets = 0
        #: syncs done, hence MULTIFD_FLUSH flags owed to the main channel (8.0+)
        self.syncs = 0
        #: pages the channels account for (rule 4: queued in 7.2, written in 10.0)
        self.normal = 0
        self.duplicate = 0
        #: rule 6: ``zero-copy-send``; per channel, data packets sent and flushed
        self.zero_copy = zero_copy
        self._zc_sent = [0] * channels
        self._zc_flushed = [0] * channels
        #: ``dirty-sync-missed-zero-copy``
        self.missed_zero_copy = 0

    # -- events ---------------------------------------------------------------------------
    def start(self) -> None:
        """The channels are connected: each sends its initial packet (counted from 8.1)."""
        if self.rules.counts_in_channels:
            self.multifd_bytes += self.channels * INITIAL_PACKET_BYTES

    def queue(
        self, pages: npt.NDArray[np.int64], zero: npt.NDArray[np.bool_], *, packets: bool = True
    ) -> list[Packet]:
        """Queue ``pages`` (flat indexes in walk order, ``zero`` their zero mask).

        Returns the packets completed on the way (``packets`` False: count only, faster:
        a data plane that moves pages its own way needs only the counters).  Under
        :attr:`ZeroPages.MAIN` the zero pages are not queued: the caller sends them on the
        main channel (:meth:`main_mask`).
        """
        mode = self.rules.zero_pages
        if mode is ZeroPages.MAIN:
            keep = ~zero
            pages, zero = pages[keep], zero[keep]
        elif mode is ZeroPages.NONE:
            zero = np.zeros(pages.size, dtype=bool)
        out: list[Packet] = []
        if pages.size == 0:
            return out
        block = self.blocks.block_of(pages)
        if not packets and self._payload is None and not np.any(block != block[0]):
            self._count_run(int(block[0]), zero)
            return out
        cuts = np.flatnonzero(block[1:] != block[:-1]) + 1
        starts = np.concatenate(([0], cuts))
        ends = np.concatenate((cuts, [pages.size]))
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            b = int(block[s])
            if b != self._block and self._pending:
                out.append(self._send())
            self._block = b
            while s < e:
                take = min(e - s, PAGES_PER_PACKET - self._pending)
                seg, zseg = pages[s : s + take], zero[s : s + take]
                self._normal.append(seg[~zseg])
                self._zero.append(seg[zseg])
                self._pending += take
                s += take
                if not self.rules.counts_in_channels:
                    self.normal += int(take - np.count_nonzero(zseg))
                if self._pending == PAGES_PER_PACKET:
                    out.append(self._send())
        return out

    def main_mask(self, zero: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
        """Which of the queued pages QEMU sends on the main channel (rule 2)."""
        if self.rules.zero_pages is ZeroPages.MAIN:
            return zero.copy()
        return np.zeros(zero.size, dtype=bool)

    def sync(self, *, kernel_copied: bool = True) -> list[Packet]:
        """A sync (rule 3): the pending packet, then a SYNC packet on every channel, each
        followed by its zero-copy flush (rule 6; ``kernel_copied``: the data plane's sockets
        saw the kernel copy what they sent with ``MSG_ZEROCOPY``)."""
        out = [self._send()] if self._pending else []
        for ch in range(self.channels):
            out.append(Packet(ch, -1, _EMPTY, _EMPTY, sync=True))
            self.multifd_bytes += PACKET_BYTES
            if self.zero_copy:
                self._flush(ch, kernel_copied)
        self.packets += self.channels
        self.sync_packets += self.channels
        self.syncs += 1
        return out

    def compressed(self, raw: int, actual: int) -> None:
        """The data plane compressed ``raw`` bytes of pages to ``actual`` bytes: 8.1+ counts
        what the channels wrote (7.2 the raw size, already counted, rule 4)."""
        if self.rules.counts_in_channels:
            self.multifd_bytes += actual - raw

    # -- counters ---------------------------------------------------------------------------
    @property
    def pending_pages(self) -> int:
        """Pages queued in the packet not sent yet."""
        return self._pending

    @property
    def flush_flag_bytes(self) -> int:
        """What the syncs added to the main channel (8.0+: one flag each)."""
        return self.syncs * FLUSH_FLAG_BYTES if self.rules.flush_flag else 0

    def counters(self, main: QemuStream) -> dict[str, int]:
        """``query-migrate``'s ``ram`` counters that multifd changes, with the main channel's
        stream model (fed the main-channel pages and :meth:`QemuStream.multifd_flush`)."""
        normal = main.normal_pages + self.normal
        return {
            "transferred": main.transferred + self.multifd_bytes,
            "duplicate": main.zero_pages + self.duplicate,
            "normal": normal,
            "normal-bytes": normal * PAGE_SIZE,
            "multifd-bytes": self.multifd_bytes,
            "dirty-sync-missed-zero-copy": self.missed_zero_copy,
        }

    # -- internals ---------------------------------------------------------------------------
    def _flush(self, channel: int, kernel_copied: bool) -> None:
        """A channel's zero-copy flush (rule 6)."""
        sent, flushed = self._zc_sent[channel], self._zc_flushed[channel]
        self._zc_flushed[channel] = sent
        if sent == flushed:
            return  # nothing to flush
        if kernel_copied:
            self.missed_zero_copy += 1

    # -- packets ---------------------------------------------------------------------------
    def _count_run(self, block: int, zero: npt.NDArray[np.bool_]) -> None:
        """:meth:`queue` of pages of one block, counters only (the packets' arithmetic)."""
        if block != self._block and self._pending:
            self._send()
        self._block = block
        # the pending packet as a placeholder of zero pages whose normal ones are counted
        pend_normal = sum(int(a.size) for a in self._normal)
        pend_zero = self._pending - pend_normal
        flags = np.concatenate((np.ones(pend_normal, bool), np.zeros(pend_zero, bool), ~zero))
        n = flags.size
        full = n // PAGES_PER_PACKET
        if not self.rules.counts_in_channels:
            self.normal += int(np.count_nonzero(~zero))
        if full:
            normal_per = np.add.reduceat(
                flags[: full * PAGES_PER_PACKET],
                np.arange(0, full * PAGES_PER_PACKET, PAGES_PER_PACKET),
            )
            normal_total = int(normal_per.sum())
            self.multifd_bytes += full * PACKET_BYTES + normal_total * PAGE_SIZE
            if self.rules.counts_in_channels:
                self.normal += normal_total
                self.duplicate += full * PAGES_PER_PACKET - normal_total
            if self.zero_copy:
                for k in np.flatnonzero(normal_per).tolist():
                    self._zc_sent[(self._next_channel + k) % self.channels] += 1
            self.packets += full
            self._next_channel = (self._next_channel + full) % self.channels
        rest = flags[full * PAGES_PER_PACKET :]
        k = int(np.count_nonzero(rest))
        self._normal = [np.zeros(k, np.int64)] if k else []
        self._zero = [np.zeros(rest.size - k, np.int64)] if rest.size - k else []
        self._pending = int(rest.size)

    def _send(self) -> Packet:
        normal = np.concatenate(self._normal) if self._normal else _EMPTY
        zero = np.concatenate(self._zero) if self._zero else _EMPTY
        packet = Packet(self._next_channel, self._block, normal, zero)
        if self.zero_copy and normal.size:
            self._zc_sent[packet.channel] += 1
        self._next_channel = (self._next_channel + 1) % self.channels
        self._normal, self._zero, self._pending = [], [], 0
        if self.rules.counts_in_channels:
            payload = packet.raw_payload
            if self._payload is not None and normal.size:
                payload = self._payload(packet)
            self.multifd_bytes += PACKET_BYTES + payload
            self.normal += int(normal.size)
            self.duplicate += int(zero.size)
        else:
            # 7.2: counted as queued, uncompressed, whatever the method (rule 4)
            self.multifd_bytes += PACKET_BYTES + packet.raw_payload
        self.packets += 1
        return packet


def packet_share(zero: npt.NDArray[np.bool_], rules: MultifdRules) -> npt.NDArray[np.int64]:
    """What each queued page adds to the channels' bytes, its packet's header spread over the
    packet's pages: for a rate limit tested before every page (8.1+ charges packets as they
    are written, so a step's pages are charged as they go)."""
    data = np.where(zero & (rules.zero_pages is not ZeroPages.NONE), 0, PAGE_SIZE)
    return (data + PACKET_BYTES // PAGES_PER_PACKET).astype(np.int64)
