"""Prometheus metrics for ``GET /metrics``, in a registry of our own (never the global one).

Names follow ``ecosystem.md`` §6.2 (prefix ``qmpmig_``, base units, counters ``_total``).
Migration gauges are computed at scrape time from one ``query-migrate`` answer, run through the
dispatcher like any other command; that internal read is not counted in
``qmpmig_qmp_commands_total`` (a scrape must not change what it measures).  Every other
command, from any QMP monitor or from REST, is counted by a dispatcher observer.

A scrape runs in the event loop thread (the ``/metrics`` route is ``async``), so reading the
VM needs no lock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from qmp_server.errors import CommandError
from qmp_server.rest.derive import derive_migration

if TYPE_CHECKING:
    from qmp_server.rest.events import EventHub
    from qmp_server.runtime.runtime import Runtime

__all__ = ["RestMetrics"]

#: MigrationStatus values exported when the schema has no such enum (it always has).
_FALLBACK_STATUSES = ("none", "setup", "cancelling", "cancelled", "active", "completed", "failed")


class _MigrationCollector(Collector):
    def __init__(self, snapshot: Callable[[], dict[str, Any]], runtime: Runtime,
                 hub: EventHub) -> None:  # fmt: skip
        self._snapshot = snapshot
        self._runtime = runtime
        self._hub = hub
        try:
            self._statuses = tuple(runtime.vm.schema.enum_members("MigrationStatus"))
        except KeyError:
            self._statuses = _FALLBACK_STATUSES

    def collect(self) -> Iterator[Metric]:
        try:
            info = self._snapshot()
        except CommandError:
            info = {}
        d = derive_migration(info, getattr(self._runtime.vm, "switchover_ack_state", None))
        ram = info.get("ram") if isinstance(info.get("ram"), dict) else {}
        assert isinstance(ram, dict)

        def gauge(name: str, doc: str, value: float | None) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], 0.0 if value is None else float(value))
            return g

        yield gauge("qmpmig_migration_data_processed_bytes",
                    "RAM bytes sent so far (query-migrate ram.transferred)",
                    ram.get("transferred"))  # fmt: skip
        yield gauge("qmpmig_migration_multifd_bytes",
                    "Bytes sent on the multifd channels (ram.multifd-bytes)",
                    ram.get("multifd-bytes"))  # fmt: skip
        xbzrle = info.get("xbzrle-cache") if isinstance(info.get("xbzrle-cache"), dict) else {}
        compression = info.get("compression") if isinstance(info.get("compression"), dict) else {}
        assert isinstance(xbzrle, dict) and isinstance(compression, dict)
        yield gauge(
            "qmpmig_migration_xbzrle_bytes",
            "XBZRLE delta bytes sent (xbzrle-cache.bytes)",
            xbzrle.get("bytes"),
        )
        yield gauge("qmpmig_migration_compressed_bytes",
                    "7.2 compress: compressed page bytes (compression.compressed-size)",
                    compression.get("compressed-size"))  # fmt: skip
        yield gauge(
            "qmpmig_migration_data_remaining_bytes",
            "RAM bytes still to send (ram.remaining)",
            d["remaining-bytes"],
        )
        yield gauge(
            "qmpmig_migration_data_total_bytes",
            "Guest RAM size being migrated (ram.total)",
            d["total-bytes"],
        )
        yield gauge("qmpmig_migration_dirty_memory_rate_bytes",
                    "Guest dirty rate in bytes/s (dirty-pages-rate * page-size)",
                    d["dirty-rate-bytes"])  # fmt: skip
        yield gauge("qmpmig_migration_transfer_rate_bytes",
                    "Migration bandwidth in bytes/s (ram.mbps * 1e6 / 8)",
                    d["transfer-rate-bytes"])  # fmt: skip
        iterations = CounterMetricFamily(
            "qmpmig_migration_iterations",
            "Dirty-bitmap sync passes of the current migration (ram.dirty-sync-count)",
        )
        iterations.add_metric([], float(d["iteration"] or 0))
        yield iterations
        expected = d["expected-downtime-ms"]
        yield gauge("qmpmig_migration_expected_downtime_seconds",
                    "Expected downtime while active (expected-downtime / 1000)",
                    None if expected is None else expected / 1000)  # fmt: skip
        downtime = d["downtime-ms"]
        yield gauge("qmpmig_migration_downtime_seconds",
                    "Actual downtime of the completed migration (downtime / 1000)",
                    None if downtime is None else downtime / 1000)  # fmt: skip
        progress = d["progress-percent"]
        yield gauge("qmpmig_migration_progress_ratio",
                    "Derived progress, (total - remaining) / total, 0..1",
                    None if progress is None else progress / 100)  # fmt: skip
        status = GaugeMetricFamily(
            "qmpmig_migration_status",
            "Migration status (1 for the current one)",
            labels=["status"],
        )
        current = d["status"]
        for name in self._statuses:
            status.add_metric([name], 1.0 if name == current else 0.0)
        yield status
        yield gauge("qmpmig_migration_postcopy_bytes",
                    "RAM bytes sent after the switch to postcopy (ram.postcopy-bytes)",
                    d["postcopy-bytes"])  # fmt: skip
        requests = CounterMetricFamily(
            "qmpmig_migration_postcopy_requests",
            "Page requests the destination made in postcopy (ram.postcopy-requests)",
        )
        requests.add_metric([], float(d["postcopy-requests"] or 0))
        yield requests
        blocktime = d["postcopy-blocktime-ms"]
        yield gauge("qmpmig_migration_postcopy_blocktime_seconds",
                    "Destination time with every vCPU blocked on a missing page "
                    "(postcopy-blocktime / 1000)",
                    None if blocktime is None else blocktime / 1000)  # fmt: skip
        yield gauge("qmpmig_switchover_ack_pending",
                    "1 while the switchover waits for the destination's ACK",
                    1.0 if d["switchover-ack"] == "pending" else 0.0)  # fmt: skip
        yield gauge(
            "qmpmig_qmp_connections",
            "Clients connected to the QMP monitors",
            sum(len(m.connections()) for m in self._runtime.monitors),
        )
        yield gauge(
            "qmpmig_http_event_subscribers",
            "Open server-sent-event streams",
            self._hub.subscriber_count,
        )
        dropped = CounterMetricFamily(
            "qmpmig_http_event_subscribers_dropped",
            "SSE subscribers disconnected because their queue was full",
        )
        dropped.add_metric([], float(self._hub.dropped_subscribers))
        yield dropped


class RestMetrics:
    """The registry, the command counter and the scrape-time collector."""

    def __init__(self, runtime: Runtime, hub: EventHub) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no ``*_created`` series: this process owns prometheus_client
        self.registry = CollectorRegistry(auto_describe=False)
        self.commands = Counter(
            "qmpmig_qmp_commands",
            "QMP commands executed, by name and result",
            ["command", "result"],
            registry=self.registry,
        )
        self._runtime = runtime
        self._internal = False
        self.registry.register(_MigrationCollector(self._query_migrate, runtime, hub))

    def observe(self, command: str, ok: bool) -> None:
        """The dispatcher observer: count one executed command."""
        if not self._internal:
            self.commands.labels(command=command, result="ok" if ok else "error").inc()

    def _query_migrate(self) -> dict[str, Any]:
        self._internal = True
        try:
            info = self._runtime.dispatcher.execute("query-migrate", {})
        finally:
            self._internal = False
        return info if isinstance(info, dict) else {}
