"""Prometheus metrics of a fleet: every one-VM family with a ``vm`` label, plus fleet gauges.

Cost per scrape (1,000 VMs): one pass over the VMs; ``query-migrate`` runs only for the VMs
whose source or incoming migration is not ``none`` (an idle VM's answer is ``{}``, and its
samples are derived from that without running the command); the status family has one sample
per VM (its current status), not one per MigrationStatus value.  About twenty samples per VM;
:func:`exposition` writes them as ``generate_latest`` would, byte for byte, several times
faster (a scrape runs in the event loop that serves the monitors).

Fleet families (no ``vm`` label): ``qmpmig_fleet_vms{state}`` (VMs by run state, every
RunState value), ``qmpmig_fleet_migrations_in_flight{direction}`` (``outgoing``: source side
between ``setup`` and its end; ``incoming``: destination side likewise),
``qmpmig_fleet_link_bandwidth_bytes`` (``--link-bandwidth`` in bytes/s, 0 when unset) and
``qmpmig_fleet_http_event_subscribers`` (SSE streams not filtered to one VM).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from qmp_server.rest.metrics import Families, add_vm_samples

if TYPE_CHECKING:
    from qmp_server.rest.fleet_state import FleetRest

__all__ = ["ENDED_STATUSES", "FleetCollector", "exposition", "migration_info"]

#: Migration statuses that are not "in flight".
ENDED_STATUSES = frozenset({"none", "completed", "failed", "cancelled"})
_RUN_STATES = ("debug", "inmigrate", "internal-error", "io-error", "paused", "postmigrate",
               "prelaunch", "finish-migrate", "restore-vm", "running", "save-vm", "shutdown",
               "suspended", "watchdog", "guest-panicked", "colo")  # fmt: skip


def migration_info(rest: FleetRest, name: str) -> dict[str, Any]:
    """VM ``name``'s ``query-migrate`` answer, uncounted; ``{}`` without running it when idle."""
    instance = rest.fleet.vms[name]
    migration = instance.migration
    if migration.source_status == "none" and migration.incoming_status == "none":
        return {}
    return rest.counts_for(name).query_migrate(instance)


class FleetCollector(Collector):
    def __init__(self, rest: FleetRest) -> None:
        self._rest = rest

    def collect(self) -> Iterator[Metric]:
        rest = self._rest
        out = Families(("vm",))
        states = dict.fromkeys(_RUN_STATES, 0)
        outgoing = incoming = 0
        for name, instance in list(rest.fleet.vms.items()):
            add_vm_samples(out, (name,), rest.samples_for(name), migration_info(rest, name),
                           one_hot=False)  # fmt: skip
            state = instance.vm.runstate
            states[state] = states.get(state, 0) + 1
            outgoing += instance.migration.source_status not in ENDED_STATUSES
            incoming += instance.migration.incoming_status not in ENDED_STATUSES
        yield from out
        fleet = Families()
        for state, count in states.items():
            fleet.gauge("qmpmig_fleet_vms", "VMs of the fleet by run state", (), count,
                        ("state",), (state,))  # fmt: skip
        doc = "Migrations between setup and their end, by side"
        fleet.gauge("qmpmig_fleet_migrations_in_flight", doc, (), outgoing,
                    ("direction",), ("outgoing",))  # fmt: skip
        fleet.gauge("qmpmig_fleet_migrations_in_flight", doc, (), incoming,
                    ("direction",), ("incoming",))  # fmt: skip
        fleet.gauge("qmpmig_fleet_link_bandwidth_bytes",
                    "The host link's bandwidth in bytes/s (--link-bandwidth; 0: unset)", (),
                    rest.link_bandwidth_bytes())  # fmt: skip
        fleet.gauge("qmpmig_fleet_http_event_subscribers",
                    "Open fleet-wide server-sent-event streams (not filtered to one VM)", (),
                    rest.hub.subscribers_by_vm().get(None, 0))  # fmt: skip
        yield from fleet


_go_float: Callable[[float], str] = floatToGoString


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def exposition(families: Iterable[Metric]) -> bytes:
    """The Prometheus text format (0.0.4) of gauge and counter ``families``, as
    ``prometheus_client.generate_latest`` writes it (labels sorted, values Go-formatted)."""
    out: list[str] = []
    escaped: dict[str, str] = {}
    numbers: dict[float, str] = {}
    for family in families:
        name = family.name + "_total" if family.type == "counter" else family.name
        doc = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {name} {doc}\n# TYPE {name} {family.type}\n")
        for sample in family.samples:
            value = numbers.get(sample.value)
            if value is None:
                value = numbers[sample.value] = _go_float(sample.value)
            if not sample.labels:
                out.append(f"{sample.name} {value}\n")
                continue
            parts = []
            for key, text in sorted(sample.labels.items()):
                quoted = escaped.get(text)
                if quoted is None:
                    quoted = escaped[text] = _escape(text)
                parts.append(f'{key}="{quoted}"')
            out.append(f"{sample.name}{{{','.join(parts)}}} {value}\n")
    return "".join(out).encode()
