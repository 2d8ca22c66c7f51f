"""Migration state and statistics as QEMU keeps and reports them; no I/O, time is an input.

Contract: :class:`SourceMigration` and :class:`IncomingMigration` hold one side's status,
counters and timings; the asyncio driver (``runtime/migration_io.py``) moves bytes and calls
them.  Neighbours: the command layer reads :meth:`MigrationInfo` through the driver.

Rules (QEMU 7.2 unless a profile says otherwise; reference §5 and §8):

1. A status change emits ``MIGRATION {"status"}`` only while the ``events`` capability is on;
   a destination's ``setup`` at migrate-incoming is emitted regardless before 10.0.
2. Counters are updated once per 100 ms period: bandwidth = bytes sent in the period / ms;
   the switchover threshold = bandwidth × downtime-limit; ``expected-downtime`` starts at
   downtime-limit and is recomputed only when pages are being dirtied and more than 10000
   bytes moved in the period.
3. ``query-migrate`` shows QEMU's members for each state: ``setup`` alone; running states add
   times, expected downtime and ``ram``; ``completed`` has ``downtime`` and no expected
   downtime; ``failed`` shows ``error-desc``; ``cancelled`` the status alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from qmp_server.engine.compression import LegacyCompressStats
from qmp_server.engine.guest import PAGE_SIZE
from qmp_server.engine.multifd_cost import MultifdAccount
from qmp_server.engine.wire_cost import QemuStream
from qmp_server.engine.xbzrle import XbzrleSender
from qmp_server.profiles import Profile

__all__ = [
    "BUFFER_DELAY",
    "IncomingMigration",
    "RamCounters",
    "SourceMigration",
    "StatusEmitter",
    "in_schema_order",
]

#: QEMU's counter period (BUFFER_DELAY, 100 ms), in seconds.
BUFFER_DELAY = 0.1
_BUFFER_MS = round(BUFFER_DELAY * 1000)


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


#: States of the outgoing side in which the rate/period statistics are reported.
_ACTIVE_LIKE = frozenset(
    {"active", "cancelling", "postcopy-active", "postcopy-paused", "postcopy-recover",
     "postcopy-recover-setup", "pre-switchover", "device"}
)  # fmt: skip

#: The postcopy states (QEMU 10.0 reports them with the switch's downtime, live).
_POSTCOPY = frozenset(
    {"postcopy-active", "postcopy-paused", "postcopy-recover", "postcopy-recover-setup"}
)

StatusEmitter = Callable[[str, "dict[str, Any] | None"], None]


@dataclass
class RamCounters:
    """``MigrationStats`` (the ``ram`` member of ``query-migrate``)."""

    total: int = 0
    transferred: int = 0
    precopy_bytes: int = 0
    downtime_bytes: int = 0
    duplicate: int = 0
    normal: int = 0
    remaining: int = 0
    dirty_sync_count: int = 0
    dirty_pages_rate: int = 0
    mbps: float = 0.0
    pages_per_second: int = 0
    postcopy_requests: int = 0
    postcopy_bytes: int = 0
    multifd_bytes: int = 0
    dirty_sync_missed_zero_copy: int = 0

    def as_qapi(self, profile: Profile) -> dict[str, Any]:
        # Inserted in MigrationStats schema order: the encoder derives QEMU's key order.
        ram: dict[str, Any] = {
            "transferred": self.transferred,
            "remaining": self.remaining,
            "total": self.total,
            "duplicate": self.duplicate,
        }
        if not profile.since(9, 1):
            ram["skipped"] = 0
        ram.update(
            {
                "normal": self.normal,
                "normal-bytes": self.normal * PAGE_SIZE,
                "dirty-pages-rate": self.dirty_pages_rate,
                "mbps": float(self.mbps),
                "dirty-sync-count": self.dirty_sync_count,
                "postcopy-requests": self.postcopy_requests,
                "page-size": PAGE_SIZE,
                "multifd-bytes": self.multifd_bytes,
                "pages-per-second": self.pages_per_second,
                "precopy-bytes": self.precopy_bytes,
                "downtime-bytes": self.downtime_bytes,
                "postcopy-bytes": self.postcopy_bytes,
                "dirty-sync-missed-zero-copy": self.dirty_sync_missed_zero_copy,
            }
        )
        return ram


@dataclass
class _Period:
    start: float
    #: stream bytes and pages sent when the period began
    base_bytes: int = 0
    base_pages: int = 0
    dirty_pages: int = 0


@dataclass
class SourceMigration:
    """The outgoing migration of one VM (QEMU's ``MigrationState``)."""

    profile: Profile
    emit: StatusEmitter
    events_enabled: Callable[[], bool]
    status: str = "none"
    start_time: float = 0.0
    setup_time_ms: int | None = None
    total_time_ms: int | None = None
    downtime_ms: int | None = None
    expected_downtime_ms: int = 300
    error_desc: str | None = None
    ram: RamCounters = field(default_factory=RamCounters)
    vfio_transferred: int | None = None
    throttle_percentage: int = 0
    #: bytes per millisecond measured over the last complete period
    bandwidth: float = 0.0
    threshold: int = 0
    switchover_acked: bool = False
    dirty_bytes_last_sync: int = 0
    #: the bytes QEMU's stream holds so far, as its bandwidth measure sees them
    stream_bytes: int = 0
    #: the ``xbzrle-cache`` members while the capability is on (engine/xbzrle.py)
    xbzrle: XbzrleSender | None = None
    #: 7.2's ``compression`` member while the ``compress`` capability is on
    compression: LegacyCompressStats | None = None
    _period: _Period | None = None
    _pages_sent: int = 0
    #: when the dirty-page rate was last computed (QEMU: at most once a second)
    _rate_since: float | None = None
    _rate_pages: int = 0
    #: pages processed at the last rate update (7.2's compression rates)
    _rate_pages_sent: int = 0

    # -- status -------------------------------------------------------------------------
    def set_status(self, new: str) -> None:
        if new == self.status:
            return
        self.status = new
        if self.events_enabled():
            self.emit("MIGRATION", {"status": new})

    def begin(self, now: float, ram_total: int, downtime_limit_ms: int) -> None:
        """``migrate`` accepted: QEMU's migrate_init, then ``setup``."""
        self.start_time = now
        self.setup_time_ms = self.total_time_ms = self.downtime_ms = None
        self.error_desc = None
        self.ram = RamCounters(total=ram_total)
        self.vfio_transferred = None
        self.throttle_percentage = 0
        self.bandwidth = 0.0
        self.threshold = 0
        self.expected_downtime_ms = downtime_limit_ms
        self.switchover_acked = False
        self.dirty_bytes_last_sync = 0
        self.stream_bytes = 0
        self._period = _Period(now)
        self._pages_sent = 0
        self._rate_since = None
        self._rate_pages = 0
        self._rate_pages_sent = 0
        self.set_status("setup")

    def activate(self, now: float) -> None:
        self.setup_time_ms = int((now - self.start_time) * 1000)
        self.set_status("active")

    def fail(self, desc: str | None, now: float) -> None:
        self.error_desc = desc
        self.total_time_ms = int((now - self.start_time) * 1000)
        self.set_status("failed")

    # -- counters -------------------------------------------------------------------------
    def account(self, stream: QemuStream, multifd: MultifdAccount | None = None) -> None:
        """Take the byte and page counters from QEMU's stream as the source built it, and
        from QEMU's multifd channels when they carry the pages."""
        ram = self.ram
        ram.transferred = stream.transferred
        ram.precopy_bytes = stream.precopy_bytes
        ram.downtime_bytes = stream.downtime_bytes
        ram.postcopy_bytes = stream.postcopy_bytes
        ram.normal = stream.normal_pages
        ram.duplicate = stream.zero_pages
        # mapped-ram's channels (wire_cost rule 5): counted, not rate limited
        self.stream_bytes = stream.rate_bytes + stream.channel_bytes
        ram.multifd_bytes = stream.channel_bytes
        if multifd is not None:
            counters = multifd.counters(stream)
            ram.transferred = counters["transferred"]
            ram.normal = counters["normal"]
            ram.duplicate = counters["duplicate"]
            ram.multifd_bytes = counters["multifd-bytes"]
            ram.dirty_sync_missed_zero_copy = counters["dirty-sync-missed-zero-copy"]
            self.stream_bytes += multifd.multifd_bytes
        self._pages_sent = ram.normal + ram.duplicate
        if self.compression is not None:
            self._pages_sent += self.compression.pages

    def count_sent(
        self, nbytes: int, zero_pages: int, normal_pages: int, *, downtime: bool
    ) -> None:
        """Count bytes without a stream model (every byte is a RAM byte)."""
        ram = self.ram
        ram.transferred += nbytes
        if downtime:
            ram.downtime_bytes += nbytes
        else:
            ram.precopy_bytes += nbytes
        ram.duplicate += zero_pages
        ram.normal += normal_pages
        self._pages_sent += zero_pages + normal_pages
        self.stream_bytes += nbytes

    def count_device_bytes(self, nbytes: int) -> None:
        """``vfio.transferred``: the device data's payload."""
        self.vfio_transferred = (self.vfio_transferred or 0) + nbytes

    def count_dirtied(self, pages: int) -> None:
        if self._period is not None:
            self._period.dirty_pages += pages

    def note_sync(self, now: float, dirty_pages: int = 0, remaining_bytes: int = 0) -> int:
        """A dirty-bitmap sync (a pass): returns the pass number for MIGRATION_PASS.

        ``dirty_pages``: how many pages the sync found newly dirty; ``remaining_bytes``: what
        is left to send after it.  QEMU recomputes ``dirty-pages-rate`` (pages per second)
        only when a second has passed since it last did (the first sync starts the clock).
        """
        self.ram.dirty_sync_count += 1
        if self._rate_since is None:
            self._rate_since = now
        else:
            self._rate_pages += dirty_pages
            elapsed = now - self._rate_since
            if elapsed >= 1.0:
                self.ram.dirty_pages_rate = int(self._rate_pages / elapsed)
                if self.xbzrle is not None:
                    self.xbzrle.update_rates()
                if self.compression is not None:
                    self.compression.update_rates(self._pages_sent - self._rate_pages_sent)
                    self._rate_pages_sent = self._pages_sent
                self._rate_pages = 0
                self._rate_since = now
        # 7.2 estimates the downtime from what remains; 8.1+ from what the sync found dirty
        if self.profile.since(8, 1):
            self.dirty_bytes_last_sync = dirty_pages * PAGE_SIZE
        else:
            self.dirty_bytes_last_sync = remaining_bytes
        return self.ram.dirty_sync_count

    def period_left(self, now: float) -> float:
        """Seconds until the current counter period ends (0 when none runs)."""
        if self._period is None:
            return 0.0
        return max(0.0, self._period.start + BUFFER_DELAY - now)

    def period_due(self, now: float) -> bool:
        """QEMU reads a millisecond clock: the period ends when 100 whole ms have passed."""
        return self._period is not None and _ms(now) - _ms(self._period.start) >= _BUFFER_MS

    def update_period(self, now: float, downtime_limit_ms: int) -> None:
        """QEMU's migration_update_counters: bandwidth, threshold, mbps, expected downtime."""
        period = self._period
        if period is None:
            return
        # whole milliseconds, as QEMU's clock gives them (a bandwidth over 100 ms, not 100.7)
        elapsed_ms = max(_ms(now) - _ms(period.start), 1)
        transferred = self.stream_bytes - period.base_bytes
        pages = self._pages_sent - period.base_pages
        self.bandwidth = transferred / elapsed_ms
        self.threshold = int(self.bandwidth * downtime_limit_ms)
        self.ram.mbps = transferred * 8 / (elapsed_ms / 1000.0) / 1e6
        self.ram.pages_per_second = int(pages / (elapsed_ms / 1000.0))
        if self.ram.dirty_pages_rate and transferred > 10000 and self.bandwidth > 0:
            self.expected_downtime_ms = int(self.dirty_bytes_last_sync / self.bandwidth)
        self._period = _Period(now, self.stream_bytes, self._pages_sent)

    def complete(self, now: float, downtime_start: float | None) -> None:
        """``downtime_start`` None: the downtime was set at the switch (postcopy)."""
        if downtime_start is not None:
            self.downtime_ms = max(int((now - downtime_start) * 1000), 0)
        self.total_time_ms = int((now - self.start_time) * 1000)
        # QEMU: every stream byte over the time after setup (ms), in megabits per second
        transfer_ms = max(self.total_time_ms - (self.setup_time_ms or 0), 1)
        self.ram.mbps = self.stream_bytes * 8 / transfer_ms / 1000
        self.ram.remaining = 0
        self.set_status("completed")

    # -- query-migrate -----------------------------------------------------------------
    def info(self, now: float) -> dict[str, Any]:
        status = self.status
        if status == "none":
            return {}
        info: dict[str, Any] = {"status": status}
        if status == "setup":
            return info
        if status in _ACTIVE_LIKE:
            info["total-time"] = int((now - self.start_time) * 1000)
            if status in _POSTCOPY and self.profile.since(10, 0):
                # 10.0 shows the switch's downtime instead of the estimate (live)
                info["downtime"] = self.downtime_ms or 0
                if self.error_desc is not None and status == "postcopy-paused":
                    info["error-desc"] = self.error_desc
            else:
                info["expected-downtime"] = self.expected_downtime_ms
            if self.setup_time_ms is not None:
                info["setup-time"] = self.setup_time_ms
            info["ram"] = self.ram.as_qapi(self.profile)
            if self.xbzrle is not None:
                info["xbzrle-cache"] = self.xbzrle.stats.as_qapi()
            if self.compression is not None:
                info["compression"] = self.compression.as_qapi()
            if self.vfio_transferred is not None:
                info["vfio"] = {"transferred": self.vfio_transferred}
            if self.throttle_percentage:
                info["cpu-throttle-percentage"] = self.throttle_percentage
            return in_schema_order(info)
        if status == "completed":
            info["total-time"] = self.total_time_ms or 0
            info["downtime"] = self.downtime_ms or 0
            info["setup-time"] = self.setup_time_ms or 0
            info["ram"] = self.ram.as_qapi(self.profile)
            if self.xbzrle is not None:
                info["xbzrle-cache"] = self.xbzrle.stats.as_qapi()
            if self.compression is not None:
                info["compression"] = self.compression.as_qapi()
            if self.vfio_transferred is not None:
                info["vfio"] = {"transferred": self.vfio_transferred}
            return in_schema_order(info)
        if status in ("failed", "cancelled") and self.error_desc is not None:
            info["error-desc"] = self.error_desc
        return info


#: MigrationInfo members in schema order (QEMU inserts them in this order).
_INFO_ORDER = (
    "status", "ram", "disk", "vfio", "xbzrle-cache", "total-time", "expected-downtime",
    "downtime", "setup-time", "cpu-throttle-percentage", "error-desc", "blocked-reasons",
    "postcopy-blocktime", "postcopy-vcpu-blocktime", "compression", "socket-address",
)  # fmt: skip


def in_schema_order(info: dict[str, Any]) -> dict[str, Any]:
    return {k: info[k] for k in _INFO_ORDER if k in info}


@dataclass
class IncomingMigration:
    """The incoming side (QEMU's ``MigrationIncomingState``)."""

    profile: Profile
    emit: StatusEmitter
    events_enabled: Callable[[], bool]
    status: str = "none"
    socket_address: list[dict[str, Any]] | None = None
    started: bool = False
    error_desc: str | None = None
    #: ``postcopy-blocktime`` and ``postcopy-vcpu-blocktime`` (ms) of a completed postcopy
    #: whose destination had the ``postcopy-blocktime`` capability
    blocktime: tuple[int, list[int]] | None = None

    def announce_setup(self) -> None:
        """migrate-incoming: 7.2 announces ``setup`` whatever the events capability says."""
        if not self.profile.since(10, 0) or self.events_enabled():
            self.emit("MIGRATION", {"status": "setup"})
        if self.profile.since(10, 0):
            self.status = "setup"

    def set_status(self, new: str) -> None:
        if new == self.status:
            return
        self.status = new
        if self.events_enabled():
            self.emit("MIGRATION", {"status": new})

    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = {}
        if self.status != "none":
            info["status"] = self.status
        if self.socket_address is not None and self.status not in ("completed", "failed"):
            info["socket-address"] = self.socket_address
        if self.status == "failed" and self.error_desc is not None:
            # seen only when migrate-incoming had exit-on-error false (9.1+)
            info["error-desc"] = self.error_desc
        if self.status == "completed" and self.blocktime is not None:
            # only once completed, in both versions (live)
            info["postcopy-blocktime"] = self.blocktime[0]
            info["postcopy-vcpu-blocktime"] = list(self.blocktime[1])
        return info
