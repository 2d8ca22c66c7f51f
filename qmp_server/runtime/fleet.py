"""A fleet: many VMs in one process (``qmp-server --fleet FILE``, ``--fleet-size N``).

Contract: every VM is a :class:`~qmp_server.runtime.vm_instance.VMInstance` built from the
command line a single qmp-server would get, so its monitors answer byte for byte as that
process would; what VMs have in common is shared by the process (the compiled schema, the
guest's baseline), so an idle VM costs a few hundred kilobytes.  A VM that ends (``quit``, a
guest power-off, a failed incoming migration) leaves the fleet, the others run on.  The fleet
monitor (``schema/fleet.json``: ``query-fleet``, ``fleet-vm-add``, ``fleet-vm-remove``) and the
REST mirror add and remove VMs through the same methods.  A signal ends every VM (each sees
``SHUTDOWN``), then the process.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from qmp_server.cli import Options, parse_args
from qmp_server.commands.dispatch import Dispatcher
from qmp_server.engine.link import link_model
from qmp_server.errors import CommandError, UsageError
from qmp_server.fleet.commands import FLEET_HANDLERS, FleetTarget, fleet_version
from qmp_server.fleet.config import FleetSpec, check_name
from qmp_server.qapi import ArgumentValidator, Schema, load_schema
from qmp_server.runtime.host_link import HostLink
from qmp_server.runtime.monitor import QMPMonitor
from qmp_server.runtime.process import ProcessRunner, on_signals
from qmp_server.runtime.vm_instance import (
    SCHEMA_PATH,
    VMInstance,
    broadcast_event,
    make_event,
    stderr_line,
)

__all__ = ["FLEET_SCHEMA_PATH", "Fleet", "monitor_address"]

FLEET_SCHEMA_PATH = SCHEMA_PATH.with_name("fleet.json")

#: Options that belong to the fleet process, not to one of its VMs.
_PROCESS_ONLY = ("daemonize", "pidfile", "http", "http-token-file", "http-cors", "poll-us")
#: How many VMs start between two turns of the loop (the monitors of the first already serve).
_START_BATCH = 32


def monitor_address(monitor: QMPMonitor) -> str:
    """Where a monitor listens, with the port a ``tcp:...:0`` monitor was given."""
    spec = monitor.spec
    if spec.kind == "tcp" and isinstance(monitor.address, tuple):
        return f"tcp:{monitor.address[0]}:{monitor.address[1]}"
    return spec.describe()


class Fleet:
    """The VMs of one process, the fleet monitor(s), signals and the REST mirror."""

    def __init__(
        self,
        spec: FleetSpec,
        options: Options,
        *,
        link_bandwidth: str | None = None,
        link_latency: str | None = None,
    ) -> None:
        #: the process's own options (fleet monitors, --http, -pidfile, -daemonize)
        self.options = options
        #: the host link model's settings (``--link-bandwidth``, ``--link-latency``)
        self.link_settings = (link_bandwidth, link_latency)
        try:
            model = link_model(link_bandwidth, link_latency)
        except ValueError as err:
            raise UsageError(str(err)) from None
        #: the modelled NIC every VM's outgoing migration connections share (None: none)
        self.link = HostLink(model) if model is not None else None
        self.schema: Schema = load_schema(FLEET_SCHEMA_PATH, frozenset())
        self.dispatcher = Dispatcher(
            FleetTarget(self.schema, self),  # type: ignore[arg-type]
            ArgumentValidator(self.schema),
            handlers=FLEET_HANDLERS,
        )
        self.monitors = [
            QMPMonitor(s, self.dispatcher, self.greeting, self._after_input)
            for s in options.monitors
        ]
        #: the VMs by name, in the order they were added
        self.vms: dict[str, VMInstance] = {}
        #: listening monitor address -> the VM that has it
        self._addresses: dict[str, str] = {}
        #: each VM's command line ({name} replaced): query-fleet's ``args``
        self.vm_args: dict[str, tuple[str, ...]] = {}
        #: called with every fleet event and with ``(vm name, event)`` for every VM event
        self.event_listeners: list[Any] = []
        self.vm_event_listeners: list[Any] = []
        #: called with a VM when it joins or leaves (the REST mirror's per-VM state)
        self.on_vm_added: list[Any] = []
        self.on_vm_removed: list[Any] = []
        self._started: dict[str, asyncio.Task[bool]] = {}
        self._stopping: asyncio.Event | None = None
        self._serving = False
        self.exit_code = 0
        self.http: Any = None
        self.process = ProcessRunner(
            daemonize=options.daemonize, pidfile=options.pidfile, poll_us=options.poll_us
        )
        for vm in spec.vms:
            self._build(vm.name, list(vm.args))

    # -- building and ending VMs --------------------------------------------------------
    def _build(self, name: str, args: list[str]) -> VMInstance:
        """Create VM ``name`` from its command line (not started yet).

        :raise UsageError: ``NAME: reason``, the text a single qmp-server would print.
        """
        try:
            check_name(name)
        except ValueError as err:
            raise UsageError(str(err)) from None
        if name in self.vms:
            raise UsageError(f"a VM named '{name}' is already in the fleet")
        for arg in args:
            option = arg.lstrip("-").partition("=")[0]
            if arg.startswith("-") and option in _PROCESS_ONLY:
                raise UsageError(f"{name}: {arg} is an option of the fleet, not of a VM")
        args = [a.replace("{name}", name) for a in args]
        try:
            options = parse_args(args)
        except UsageError as err:
            raise UsageError(f"{name}: {err}") from None
        if options is None:
            raise UsageError(f"{name}: help and version options do not start a VM")
        claimed = self._claim_addresses(name, options)
        instance = VMInstance(
            options, on_end=self._vm_ended, prefix=f"qmp-server: {name}: ", fleet_name=name
        )
        self._addresses.update(claimed)
        listeners = self.vm_event_listeners

        def relay(event: dict[str, Any]) -> None:
            for listener in listeners:
                listener(name, event)

        instance.event_listeners.append(relay)
        instance.migration.ctx.link = self.link
        self.vms[name] = instance
        self.vm_args[name] = tuple(args)
        for hook in self.on_vm_added:
            hook(name, instance)
        return instance

    def _claim_addresses(self, name: str, options: Options) -> dict[str, str]:
        """The listening addresses of VM ``name``'s monitors, none of them another VM's (a
        template without ``{name}`` would make every VM take over the same socket).

        :raise UsageError: the monitor and the VM that has its address.
        """
        claimed: dict[str, str] = {}
        for spec in [*options.monitors, *options.hmp_monitors]:
            if not spec.server or spec.kind == "fd" or (spec.kind == "tcp" and not spec.port):
                continue
            key = os.path.abspath(spec.path) if spec.kind == "unix" else spec.describe()
            owner = self._addresses.get(key) or claimed.get(key)
            if owner is not None:
                raise UsageError(f"{name}: {spec.describe()}: VM '{owner}' already listens there")
            claimed[key] = name
        return claimed

    async def _start_vm(self, name: str, instance: VMInstance) -> bool:
        try:
            ok = await instance.start()
        except OSError as err:
            stderr_line(f"{instance.prefix}{err}\n")
            ok = False
        if ok:
            self._emit("FLEET_VM_ADDED", {"name": name})
        else:
            instance.exit_code = instance.exit_code or 1
            await self._reap(instance)
        return ok

    def _vm_ended(self, instance: VMInstance) -> None:
        if self._serving:
            asyncio.get_running_loop().create_task(self._reap(instance))

    async def _reap(self, instance: VMInstance) -> None:
        """A VM ended: flush its last replies and events, close it, tell the fleet."""
        name = instance.fleet_name
        await asyncio.sleep(0)
        await instance.close()
        if self.vms.get(name) is not instance:
            return
        del self.vms[name]
        self.vm_args.pop(name, None)
        self._started.pop(name, None)
        for key in [k for k, owner in self._addresses.items() if owner == name]:
            del self._addresses[key]
        reason = instance.vm.shutdown_reason if not instance.exit_code else None
        self._emit("FLEET_VM_REMOVED", {"name": name, "reason": reason or "failed"})
        for hook in self.on_vm_removed:
            hook(name, instance)

    # -- what the fleet monitor and the REST mirror call (FleetControl) ----------------------
    def vm_infos(self) -> list[dict[str, Any]]:
        return [self.vm_info(name, vm) for name, vm in self.vms.items()]

    def vm_info(self, name: str, instance: VMInstance) -> dict[str, Any]:
        migration = instance.migration
        return {
            "name": name,
            "status": instance.vm.runstate,
            "migration": migration.source_status,
            "incoming": migration.incoming_status,
            "monitors": [
                monitor_address(m) for m in instance.monitors if isinstance(m, QMPMonitor)
            ],
            "args": list(self.vm_args.get(name, ())),
        }

    def link_info(self) -> dict[str, Any]:
        if self.link is None:
            return {"modelled": False, "latency-ns": 0, "transmitted": 0, "received": 0,
                    "connections": 0}  # fmt: skip
        return self.link.info()

    def add_vm(self, name: str, args: list[str]) -> None:
        """Build VM ``name`` now and start it (FLEET_VM_ADDED once its monitors listen).

        :raise CommandError: the reason the VM cannot be built.
        """
        if self._stopping is None or self._stopping.is_set():
            raise CommandError("The fleet is not running")
        try:
            instance = self._build(name, args)
        except UsageError as err:
            raise CommandError(str(err)) from None
        loop = asyncio.get_running_loop()
        self._started[name] = loop.create_task(self._start_vm(name, instance))

    async def started(self, name: str) -> bool:
        """Wait until VM ``name`` listens (True) or failed to start (False)."""
        task = self._started.get(name)
        return True if task is None else await asyncio.shield(task)

    def remove_vm(self, name: str) -> None:
        """End VM ``name`` as a signal ends a process (SHUTDOWN, reason ``host-signal``).

        :raise CommandError: no such VM.
        """
        instance = self.vms.get(name)
        if instance is None or instance.ended:
            raise CommandError(f"VM '{name}' is not in the fleet")
        instance.vm.request_shutdown("host-signal")
        instance.end()

    def request_quit(self) -> None:
        self._shutdown_all("host-qmp-quit")

    # -- the fleet's own monitor ------------------------------------------------------------
    def greeting(self) -> dict[str, Any]:
        return {"QMP": {"version": fleet_version(), "capabilities": ["oob"]}}

    def _emit(self, name: str, data: dict[str, Any]) -> None:
        broadcast_event(make_event(name, data), self.monitors, self.event_listeners)

    def _after_input(self) -> None:
        pass

    # -- the process ------------------------------------------------------------------------
    def _shutdown_all(self, reason: str) -> None:
        for instance in list(self.vms.values()):
            instance.vm.request_shutdown(reason)
        if self._stopping is not None:
            self._stopping.set()

    def _on_signal(self, signum: int) -> None:
        stderr_line(f"qmp-server: terminating on signal {signum}\n")
        self._shutdown_all("host-signal")

    async def _start_all(self) -> bool:
        for number, (name, instance) in enumerate(list(self.vms.items()), 1):
            try:
                ok = await instance.start()
            except OSError as err:
                stderr_line(f"{instance.prefix}{err}\n")
                ok = False
            if not ok:
                self.exit_code = 1
                return False
            self._emit("FLEET_VM_ADDED", {"name": name})
            if number % _START_BATCH == 0:
                await asyncio.sleep(0)  # the monitors already listening serve meanwhile
        return True

    async def serve(self) -> None:
        self._stopping = asyncio.Event()
        on_signals(self._on_signal)
        try:
            for monitor in self.monitors:
                await monitor.start()
            if self.options.http is not None:
                from qmp_server.rest.fleet_server import start_fleet_http

                self.http = await start_fleet_http(self)
            if not await self._start_all():
                return
            self._serving = True
            self.process.detach()
            await self._stopping.wait()
            await asyncio.sleep(0)  # let transports flush what is queued
        finally:
            self._serving = False
            if self.http is not None:
                await self.http.close()
            for instance in list(self.vms.values()):
                await instance.close()
            if self.link is not None:
                self.link.close()
            for monitor in self.monitors:
                await monitor.close()

    def run(self) -> int:
        """Serve until ``quit`` on the fleet monitor or a signal; the exit status."""
        return self.process.run(self.serve, lambda: self.exit_code)
