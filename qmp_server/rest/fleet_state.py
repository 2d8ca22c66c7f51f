"""The fleet REST mirror's state: per-VM contexts, command counts, the event hub.

See :mod:`qmp_server.rest.fleet_app` for the contract (rules 1, 3 and 4 live here).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from fastapi import Request

from qmp_server.rest.deps import RestContext, check_token
from qmp_server.rest.errors import RestError
from qmp_server.rest.events import EventHub, VMEvents
from qmp_server.rest.fleet_metrics import FleetCollector
from qmp_server.rest.metrics import CommandCounts, RestMetrics, VMSamples, migration_statuses
from qmp_server.rest.policy import UriPolicy

if TYPE_CHECKING:
    from qmp_server.runtime.fleet import Fleet
    from qmp_server.runtime.vm_instance import VMInstance

__all__ = ["FleetRest", "not_in_fleet"]


def not_in_fleet(name: str) -> RestError:
    return RestError(404, f"VM '{name}' is not in the fleet")


class FleetRest:
    """The fleet app's state (``app.state.rest``): a :class:`~.deps.ContextSource`."""

    def __init__(self, fleet: Fleet, token: str | None, policy: UriPolicy) -> None:
        self.fleet = fleet
        self.token = token
        self.policy = policy
        self.hub = EventHub()
        #: the fleet's metrics (``GET /metrics`` writes them with ``fleet_metrics.exposition``)
        self.collector = FleetCollector(self)
        self._counts: dict[str, tuple[VMInstance, CommandCounts]] = {}
        self._contexts: dict[str, RestContext] = {}
        self._statuses: dict[int, tuple[str, ...]] = {}
        self._leaving: dict[str, list[asyncio.Future[None]]] = {}
        for name, instance in fleet.vms.items():
            self._added(name, instance)
        fleet.on_vm_added.append(self._added)
        fleet.on_vm_removed.append(self._removed)
        fleet.vm_event_listeners.append(self.hub.publish_vm)
        fleet.event_listeners.append(self._fleet_event)

    # -- VMs joining and leaving (rule 4) ---------------------------------------------------
    def _added(self, name: str, instance: VMInstance) -> None:
        counts = CommandCounts()
        instance.dispatcher.observers.append(counts.observe)
        self._counts[name] = (instance, counts)

    def _removed(self, name: str, instance: VMInstance) -> None:
        entry = self._counts.get(name)
        if entry is not None and entry[0] is instance:
            del self._counts[name]
            if entry[1].observe in instance.dispatcher.observers:
                instance.dispatcher.observers.remove(entry[1].observe)
        ctx = self._contexts.get(name)
        if ctx is not None and ctx.runtime is instance:
            del self._contexts[name]
        if name not in self.fleet.vms:
            self.hub.close_vm(name)
        for waiter in self._leaving.pop(name, []):
            if not waiter.done():
                waiter.set_result(None)

    async def wait_removed(self, name: str, instance: VMInstance, seconds: float) -> bool:
        """Wait until VM ``name`` (``instance``) has left the fleet; False after ``seconds``."""
        if self.fleet.vms.get(name) is not instance:
            return True
        waiter = asyncio.get_running_loop().create_future()
        self._leaving.setdefault(name, []).append(waiter)
        try:
            await asyncio.wait_for(waiter, seconds)
        except TimeoutError:
            return self.fleet.vms.get(name) is not instance
        return True

    def _fleet_event(self, event: dict[str, Any]) -> None:
        data = event.get("data")
        name = data.get("name") if isinstance(data, dict) else None
        self.hub.publish_vm(name if isinstance(name, str) else None, event)

    @property
    def writable(self) -> bool:
        return self.token is not None

    def check_write(self, authorization: str | None) -> None:
        check_token(self.token, authorization)

    def detach(self) -> None:
        """Unsubscribe from the fleet and its VMs, end every event stream."""
        fleet = self.fleet
        for hooks, hook in ((fleet.on_vm_added, self._added), (fleet.on_vm_removed, self._removed),
                            (fleet.vm_event_listeners, self.hub.publish_vm),
                            (fleet.event_listeners, self._fleet_event)):  # fmt: skip
            if hook in hooks:
                hooks.remove(hook)
        for name, (instance, _counts) in list(self._counts.items()):
            self._removed(name, instance)
        self.hub.close()

    # -- per-VM state (rule 1) ----------------------------------------------------------------
    def instance(self, name: str) -> VMInstance:
        """VM ``name``; :raise RestError: 404 when it is not in the fleet."""
        instance = self.fleet.vms.get(name)
        if instance is None or instance.ended:
            raise not_in_fleet(name)
        return instance

    def counts_for(self, name: str) -> CommandCounts:
        instance = self.fleet.vms[name]
        entry = self._counts.get(name)
        if entry is None or entry[0] is not instance:  # joined before a hook could see it
            self._added(name, instance)
            entry = self._counts[name]
        return entry[1]

    def samples_for(self, name: str) -> VMSamples:
        instance = self.fleet.vms[name]
        schema_id = id(instance.vm.schema)  # one compiled schema per profile, shared
        statuses = self._statuses.get(schema_id)
        if statuses is None:
            statuses = self._statuses[schema_id] = migration_statuses(instance)
        return VMSamples(instance, self.counts_for(name), VMEvents(self.hub, name), statuses)

    def context_for(self, request: Request) -> RestContext:
        name = str(request.path_params.get("name", ""))
        instance = self.instance(name)
        ctx = self._contexts.get(name)
        if ctx is None or ctx.runtime is not instance:
            events = VMEvents(self.hub, name)
            metrics = RestMetrics(instance, events, self.counts_for(name))
            ctx = RestContext(instance, events, metrics, self.token, self.policy)
            self._contexts[name] = ctx
        return ctx

    def link_bandwidth_bytes(self) -> int | None:
        """``--link-bandwidth`` in bytes/s as the fleet's link model has it (query-fleet-link),
        None when the link is not limited."""
        bandwidth = self.fleet.link_info().get("bandwidth")
        return int(bandwidth) if bandwidth is not None else None
