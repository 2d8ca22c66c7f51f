"""Prometheus metrics for ``GET /metrics``, in a registry of our own (never the global one).

Names follow ``ecosystem.md`` §6.2 (prefix ``qmpmig_``, base units, counters ``_total``).
Migration gauges are computed at scrape time from one ``query-migrate`` answer, run through the
dispatcher like any other command; that internal read is not counted in
``qmpmig_qmp_commands_total`` (a scrape must not change what it measures).  Every other
command, from any QMP monitor or from REST, is counted by a dispatcher observer.

One VM's samples are written by :func:`add_vm_samples` into a :class:`Families` whose leading
labels are empty for a one-VM process and ``("vm",)`` for a fleet
(:mod:`qmp_server.rest.fleet_metrics`), so both export the same families from the same code.
The command counter is a plain dict (:class:`CommandCounts`) so that a fleet can drop a removed
VM's series.

A scrape runs in the event loop thread (the ``/metrics`` route is ``async``), so reading the
VM needs no lock.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from qmp_server.errors import CommandError
from qmp_server.rest.derive import derive_migration

if TYPE_CHECKING:
    from qmp_server.rest.events import EventSource
    from qmp_server.runtime.vm_instance import VMInstance

__all__ = ["CommandCounts", "Families", "RestMetrics", "VMSamples", "add_vm_samples",
           "migration_statuses"]  # fmt: skip

#: MigrationStatus values exported when the schema has no such enum (it always has).
_FALLBACK_STATUSES = ("none", "setup", "cancelling", "cancelled", "active", "completed", "failed")


def migration_statuses(runtime: VMInstance) -> tuple[str, ...]:
    try:
        return tuple(runtime.vm.schema.enum_members("MigrationStatus"))
    except KeyError:
        return _FALLBACK_STATUSES


_Family = GaugeMetricFamily | CounterMetricFamily


class Families:
    """The metric families of one scrape, each sample led by the values of ``labels``."""

    def __init__(self, labels: Sequence[str] = ()) -> None:
        self.labels = tuple(labels)
        self._families: dict[str, _Family] = {}
        self._keys: dict[tuple[str, ...], dict[str, str]] = {}

    def _family(self, kind: type[_Family], name: str, doc: str,
                labels: Sequence[str]) -> _Family:  # fmt: skip
        family = self._families.get(name)
        if family is None:
            family = kind(name, doc, labels=[*self.labels, *labels])
            self._families[name] = family
        return family

    def _add(self, family: _Family, suffix: str, key: Sequence[str], value: float | None,
             labels: Sequence[str], values: Sequence[str]) -> None:  # fmt: skip
        # Samples appended directly (add_metric's cost shows at 20,000 samples per scrape);
        # the samples of one VM share its label dict (nobody mutates a sample's labels).
        if labels:
            names = dict(zip((*self.labels, *labels), (*key, *values), strict=True))
        else:
            shared = tuple(key)
            names = self._keys.get(shared) or self._keys.setdefault(
                shared, dict(zip(self.labels, key, strict=True))
            )
        number = 0.0 if value is None else float(value)
        family.samples.append(Sample(family.name + suffix, names, number, None))

    def gauge(self, name: str, doc: str, key: Sequence[str], value: float | None,
              labels: Sequence[str] = (), values: Sequence[str] = ()) -> None:  # fmt: skip
        """One sample (None counts as 0) of gauge ``name``, labelled ``key`` + ``values``."""
        family = self._family(GaugeMetricFamily, name, doc, labels)
        self._add(family, "", key, value, labels, values)

    def counter(self, name: str, doc: str, key: Sequence[str], value: float | None,
                labels: Sequence[str] = (), values: Sequence[str] = ()) -> None:  # fmt: skip
        family = self._family(CounterMetricFamily, name, doc, labels)
        self._add(family, "_total", key, value, labels, values)

    def declare(self, name: str, doc: str, labels: Sequence[str] = (), *,
                counter: bool = False) -> None:  # fmt: skip
        """Export family ``name`` even when no VM adds a sample to it."""
        self._family(CounterMetricFamily if counter else GaugeMetricFamily, name, doc, labels)

    def __iter__(self) -> Iterator[Metric]:
        return iter(self._families.values())


class CommandCounts:
    """QMP commands executed on one VM, by ``(command, result)``: a dispatcher observer."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}
        #: set while a scrape runs its own query-migrate (a scrape must not count itself)
        self.internal = False

    def observe(self, command: str, ok: bool) -> None:
        if not self.internal:
            key = (command, "ok" if ok else "error")
            self.counts[key] = self.counts.get(key, 0) + 1

    def query_migrate(self, runtime: VMInstance) -> dict[str, Any]:
        """``query-migrate`` run through the dispatcher, uncounted ({} when it fails)."""
        self.internal = True
        try:
            info = runtime.dispatcher.execute("query-migrate", {})
        except CommandError:
            info = {}
        finally:
            self.internal = False
        return info if isinstance(info, dict) else {}


@dataclass(frozen=True, slots=True)
class VMSamples:
    """What one VM's samples are read from."""

    runtime: VMInstance
    counts: CommandCounts
    events: EventSource
    statuses: tuple[str, ...]


def _sub(info: dict[str, Any], name: str) -> dict[str, Any]:
    value = info.get(name)
    return value if isinstance(value, dict) else {}


#: (counter?, family, help, where, member, divisor): ``where`` is a member of query-migrate
#: read verbatim, or ``derived`` (:func:`~qmp_server.rest.derive.derive_migration`).
_Row = tuple[bool, str, str, str, str, float]
_MIGRATION_ROWS: tuple[_Row, ...] = (
    (False, "qmpmig_migration_data_processed_bytes",
     "RAM bytes sent so far (query-migrate ram.transferred)", "ram", "transferred", 1),
    (False, "qmpmig_migration_multifd_bytes",
     "Bytes sent on the multifd channels (ram.multifd-bytes)", "ram", "multifd-bytes", 1),
    (False, "qmpmig_migration_xbzrle_bytes", "XBZRLE delta bytes sent (xbzrle-cache.bytes)",
     "xbzrle-cache", "bytes", 1),
    (False, "qmpmig_migration_compressed_bytes",
     "7.2 compress: compressed page bytes (compression.compressed-size)", "compression",
     "compressed-size", 1),
    (False, "qmpmig_migration_data_remaining_bytes", "RAM bytes still to send (ram.remaining)",
     "derived", "remaining-bytes", 1),
    (False, "qmpmig_migration_data_total_bytes", "Guest RAM size being migrated (ram.total)",
     "derived", "total-bytes", 1),
    (False, "qmpmig_migration_dirty_memory_rate_bytes",
     "Guest dirty rate in bytes/s (dirty-pages-rate * page-size)", "derived",
     "dirty-rate-bytes", 1),
    (False, "qmpmig_migration_transfer_rate_bytes",
     "Migration bandwidth in bytes/s (ram.mbps * 1e6 / 8)", "derived", "transfer-rate-bytes", 1),
    (True, "qmpmig_migration_iterations",
     "Dirty-bitmap sync passes of the current migration (ram.dirty-sync-count)", "derived",
     "iteration", 1),
    (False, "qmpmig_migration_expected_downtime_seconds",
     "Expected downtime while active (expected-downtime / 1000)", "derived",
     "expected-downtime-ms", 1000),
    (False, "qmpmig_migration_downtime_seconds",
     "Actual downtime of the completed migration (downtime / 1000)", "derived", "downtime-ms",
     1000),
    (False, "qmpmig_migration_progress_ratio",
     "Derived progress, (total - remaining) / total, 0..1", "derived", "progress-percent", 100),
)  # fmt: skip
_POSTCOPY_ROWS: tuple[_Row, ...] = (
    (False, "qmpmig_migration_postcopy_bytes",
     "RAM bytes sent after the switch to postcopy (ram.postcopy-bytes)", "derived",
     "postcopy-bytes", 1),
    (True, "qmpmig_migration_postcopy_requests",
     "Page requests the destination made in postcopy (ram.postcopy-requests)", "derived",
     "postcopy-requests", 1),
    (False, "qmpmig_migration_postcopy_blocktime_seconds",
     "Destination time with every vCPU blocked on a missing page (postcopy-blocktime / 1000)",
     "derived", "postcopy-blocktime-ms", 1000),
)  # fmt: skip


def add_vm_samples(out: Families, key: Sequence[str], src: VMSamples,
                   info: dict[str, Any], *, one_hot: bool = True) -> None:  # fmt: skip
    """Write one VM's samples, from its ``query-migrate`` answer ``info``.

    :param one_hot: the status family has a sample per MigrationStatus (1 for the current
        one); without it (a fleet: 1,000 VMs) only the current status's sample is written.
    """
    runtime = src.runtime
    commands = "qmpmig_qmp_commands"
    out.declare(commands, "QMP commands executed, by name and result", ("command", "result"),
                counter=True)  # fmt: skip
    for (command, result), count in src.counts.counts.items():
        out.counter(commands, "", key, count, ("command", "result"), (command, result))
    d = derive_migration(info, getattr(runtime.vm, "switchover_ack_state", None))
    sources = {"derived": d, "ram": _sub(info, "ram"), "xbzrle-cache": _sub(info, "xbzrle-cache"),
               "compression": _sub(info, "compression")}  # fmt: skip

    def write(table: tuple[_Row, ...]) -> None:
        for counter, name, doc, where, member, divisor in table:
            value = sources[where].get(member)
            number = None if value is None else value / divisor
            (out.counter if counter else out.gauge)(name, doc, key, number)

    write(_MIGRATION_ROWS)
    status_doc = "Migration status (1 for the current one)"
    current = d["status"]
    for name in src.statuses if one_hot else (current,):
        out.gauge("qmpmig_migration_status", status_doc, key, 1.0 if name == current else 0.0,
                  ("status",), (str(name),))  # fmt: skip
    write(_POSTCOPY_ROWS)
    out.gauge("qmpmig_switchover_ack_pending",
              "1 while the switchover waits for the destination's ACK", key,
              1.0 if d["switchover-ack"] == "pending" else 0.0)  # fmt: skip
    out.gauge("qmpmig_qmp_connections", "Clients connected to the QMP monitors", key,
              sum(len(m.connections()) for m in runtime.monitors))  # fmt: skip
    out.gauge("qmpmig_http_event_subscribers", "Open server-sent-event streams", key,
              src.events.subscriber_count)  # fmt: skip
    out.counter("qmpmig_http_event_subscribers_dropped",
                "SSE subscribers disconnected because their queue was full", key,
                src.events.dropped_subscribers)  # fmt: skip


class _VMCollector(Collector):
    def __init__(self, src: VMSamples) -> None:
        self._src = src

    def collect(self) -> Iterator[Metric]:
        out = Families()
        add_vm_samples(out, (), self._src, self._src.counts.query_migrate(self._src.runtime))
        return iter(out)


class RestMetrics:
    """One VM's registry: its command counts and the scrape-time collector.

    :param counts: the counts to export (a fleet keeps them per VM); by default new ones,
        which :meth:`observe` feeds.
    """

    def __init__(self, runtime: VMInstance, events: EventSource,
                 counts: CommandCounts | None = None) -> None:  # fmt: skip
        self.registry = CollectorRegistry(auto_describe=False)
        self.counts = counts or CommandCounts()
        self.registry.register(
            _VMCollector(VMSamples(runtime, self.counts, events, migration_statuses(runtime)))
        )

    def observe(self, command: str, ok: bool) -> None:
        """The dispatcher observer: count one executed command."""
        self.counts.observe(command, ok)
