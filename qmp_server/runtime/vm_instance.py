"""One emulated VM: what a single qmp-server process is, without the process around it.

A :class:`VMInstance` owns the VM, its migration driver, dispatcher, human monitor and QMP/HMP
monitors.  The process that hosts it (:class:`~qmp_server.runtime.runtime.Runtime` for one VM,
:class:`~qmp_server.runtime.fleet.Fleet` for many) starts and closes it and learns through
``on_end`` that it ended (``quit``, a guest power-off, a failed incoming migration).

What is identical between VMs is built once per process: the compiled schema of a profile
(:func:`schema_for`), the guest's baseline generator and firmware map
(:mod:`qmp_server.engine.guest`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sys
import time
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from qmp_server import commands as _commands  # noqa: F401  (handlers register on import)
from qmp_server.cli import Options
from qmp_server.commands import control as _control  # noqa: F401
from qmp_server.commands import dirty_rate as _dirty_rate  # noqa: F401
from qmp_server.commands import domain as _domain  # noqa: F401
from qmp_server.commands import fds as _fds  # noqa: F401
from qmp_server.commands import hmp as _hmp  # noqa: F401
from qmp_server.commands import lifecycle as _lifecycle  # noqa: F401
from qmp_server.commands import migration as _migration  # noqa: F401
from qmp_server.commands import migration_config as _migration_config  # noqa: F401
from qmp_server.commands import object_model as _object_model  # noqa: F401
from qmp_server.commands.control import version_info
from qmp_server.commands.dispatch import Dispatcher
from qmp_server.engine.balloon import balloon_from_devices
from qmp_server.engine.config import MigrationConfig
from qmp_server.engine.device_table import DeviceError, load_devices
from qmp_server.engine.devices import DeviceLoadError
from qmp_server.engine.guest import GuestMemory
from qmp_server.engine.host import DEFAULT_HOST, HostInfo
from qmp_server.engine.machine import layout_for, machine_family
from qmp_server.engine.power import PowerControl, PowerOptions
from qmp_server.engine.vm import VirtualMachine
from qmp_server.errors import CommandError, UsageError
from qmp_server.hmp.interpreter import HMPContext, HMPInterpreter
from qmp_server.qapi import ArgumentValidator, Schema, load_schema
from qmp_server.runtime.domain_runtime import build_domain, chardev_state, start_threads
from qmp_server.runtime.guest_chardevs import GuestChardev, frontend_opens
from qmp_server.runtime.hmp_monitor import HMPMonitor
from qmp_server.runtime.migration_io import MigrationController
from qmp_server.runtime.monitor import QMPMonitor
from qmp_server.runtime.vcpu_threads import IdleThreads
from qmp_server.wire.encoder import encode_line

__all__ = [
    "SCHEMA_PATH",
    "VMInstance",
    "broadcast_event",
    "build_vm",
    "make_event",
    "schema_for",
    "stderr_line",
]


def _schema_path() -> Path:
    # A checkout has schema/ beside the package; an installed wheel has it as qmp_server.schema.
    here = Path(__file__).resolve().parent.parent.parent / "schema" / "migration.json"
    if here.exists():
        return here
    return Path(str(resources.files("qmp_server.schema") / "migration.json"))


SCHEMA_PATH = _schema_path()


@functools.lru_cache(maxsize=8)
def schema_for(defines: frozenset[str]) -> Schema:
    """The compiled schema of a profile: read-only, so every VM of the profile shares it."""
    return load_schema(SCHEMA_PATH, defines)


def build_vm(options: Options, emit: Any) -> VirtualMachine:
    """Create the VM of ``options`` with its profile's schema and migration configuration.

    :raise UsageError: a ``-global`` or ``--host`` value QEMU would refuse at start-up.
    """
    schema = schema_for(options.profile.defines)
    host = HostInfo.parse(options.host) if options.host else DEFAULT_HOST
    config = MigrationConfig.from_globals(
        options.profile, host, options.globals, incoming=options.incoming
    )
    vm = VirtualMachine(
        options.profile,
        schema,
        emit,
        config,
        host=host,
        start_paused=options.start_paused,
        incoming=options.incoming,
    )
    if options.accel:
        vm.accel = tuple(options.accel)
    return vm


def stderr_line(text: str) -> None:
    """Diagnostics never stop a shutdown: stderr may be a pipe nobody reads any more."""
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(text)
        sys.stderr.flush()


def make_event(name: str, data: dict[str, Any] | None) -> dict[str, Any]:
    """A QMP event of now (QEMU's timestamp: seconds and microseconds)."""
    now = time.time_ns() // 1000
    event: dict[str, Any] = {
        "event": name,
        "timestamp": {"seconds": now // 1_000_000, "microseconds": now % 1_000_000},
    }
    if data is not None:
        event["data"] = data
    return event


def broadcast_event(
    event: dict[str, Any],
    monitors: Sequence[QMPMonitor | HMPMonitor],
    listeners: Sequence[Callable[[dict[str, Any]], None]],
) -> None:
    """An event to the current client of every monitor, then to the in-process listeners."""
    line = encode_line(event)
    for monitor in monitors:
        monitor.broadcast(line)
    for listener in listeners:
        listener(event)


class _LoopTimers:
    """:class:`~qmp_server.engine.vm.Timers` on the running loop; after a deferred call the
    VM looks whether it asked to end (a guest power-off)."""

    def __init__(self, after: Callable[[], None]) -> None:
        self._after = after

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        def run() -> None:
            fn()
            self._after()

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a handler called outside the server): nothing deferred
            return
        loop.call_later(delay, run)

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


class VMInstance:
    """The VM, dispatcher and monitors of one qmp-server command line."""

    def __init__(
        self,
        options: Options,
        *,
        on_end: Callable[[VMInstance], None] | None = None,
        prefix: str = "qmp-server: ",
        fleet_name: str = "",
    ) -> None:
        self.options = options
        #: the VM's name in a fleet ("" for the VM of a one-VM process)
        self.fleet_name = fleet_name
        #: what begins this VM's diagnostics on stderr (a fleet adds the VM's name)
        self.prefix = prefix
        self.vm = build_vm(options, self.emit)
        for warning in self.vm.config.warnings:
            self.warn(f"warning: {warning}")
        family = machine_family(options.machine)
        try:
            self.vm.devices, configs = load_devices(options.devices, options.profile)
            ram_size = options.memory or (0 if family == "none" else 128 << 20)
            self.vm.balloon = balloon_from_devices(options.devices, ram_size)
        except DeviceError as err:
            for warning in err.warnings:
                self.warn(warning)
            raise UsageError(str(err)) from None
        except (ValueError, DeviceLoadError) as err:
            raise UsageError(str(err)) from None
        for device in self.vm.devices:
            for warning in device.warnings:
                self.warn(warning)
        self._apply_identity(family)
        layout = layout_for(
            options.profile, options.machine, options.memory, defaults=not options.nodefaults
        )
        guest = GuestMemory(
            layout.total,
            fill=options.guest_fill,
            seed=options.guest_seed,
            firmware_pages=layout.firmware_pages if options.guest_fill == "idle" else None,
            firmware_content=layout.firmware_content if options.guest_fill == "idle" else None,
        )
        self.migration = MigrationController(
            self.vm,
            devices=configs,
            guest=guest,
            layout=layout,
            dirty_rate=options.dirty_rate,
            dirty_write_bytes=options.dirty_write_bytes,
            dirty_working_set=options.dirty_working_set,
            exit_process=self._exit,
        )
        self.vm.migration_hooks = self.migration
        self.domain = build_domain(options)
        self.vm.domain = self.domain
        self._idle_threads = IdleThreads()
        self.vm.timers = _LoopTimers(self._after_input)
        self.vm.guest_pages = self._guest_pages
        self.guest_chardevs = [
            GuestChardev(label, spec, frontend_opens(label, self.vm.devices))
            for label, spec in options.guest_chardevs.items()
        ]
        self.exit_code = 0
        self.dispatcher = Dispatcher(self.vm, ArgumentValidator(self.vm.schema))
        self.hmp = HMPInterpreter(
            HMPContext(
                self.vm,
                self.dispatcher.execute,
                name=self.vm.name,
                uuid=self.vm.uuid,
                ramblocks=layout.info_ramblock(),
            )
        )
        self.vm.hmp = self.hmp  # type: ignore[attr-defined]  # human-monitor-command
        self.monitors: list[QMPMonitor | HMPMonitor] = [
            QMPMonitor(spec, self.dispatcher, self.greeting, self._after_input)
            for spec in options.monitors
        ]
        self.monitors += [
            HMPMonitor(spec, self.hmp, self._after_input) for spec in options.hmp_monitors
        ]
        #: Called with every event dict (after it went to the monitors): the REST mirror's
        #: event stream and metrics subscribe here.
        self.event_listeners: list[Callable[[dict[str, Any]], None]] = []
        #: called once when this VM ends (quit, a guest power-off, a failed incoming load)
        self.on_end = on_end
        self.ended = False

    def _apply_identity(self, family: str) -> None:
        """-name, -uuid, -add-fd and the power options of the command line."""
        options, vm = self.options, self.vm
        vm.name = options.name
        if options.uuid is not None:
            vm.uuid = options.uuid
        pc_like = family in ("pc", "q35")
        vm.power = PowerControl(
            vm,
            PowerOptions(
                acpi=pc_like and not options.no_acpi,
                firmware=pc_like,
                no_shutdown=options.no_shutdown,
                no_reboot=options.no_reboot,
            ),
        )
        for fd, fdset, opaque in options.add_fds:
            vm.fdsets.add(os.dup(fd), fdset, opaque)  # QEMU keeps a duplicate

    def _guest_pages(self) -> tuple[int, int]:
        """(pages the guest workload wrote so far, guest RAM pages): calc-dirty-rate's input."""
        ctx = self.migration.ctx
        return ctx.workload.pages_written, ctx.guest.size_bytes // 4096

    # -- events -------------------------------------------------------------------------
    def emit(self, name: str, data: dict[str, Any] | None) -> None:
        broadcast_event(make_event(name, data), self.monitors, self.event_listeners)

    def greeting(self) -> dict[str, Any]:
        return {"QMP": {"version": version_info(self.vm), "capabilities": ["oob"]}}

    # -- lifecycle ----------------------------------------------------------------------

    def warn(self, text: str) -> None:
        """A start-up diagnostic, as ``qmp-server: TEXT`` (a fleet prefixes the VM's name)."""
        sys.stderr.write(f"{self.prefix}{text}\n")

    # -- lifecycle ----------------------------------------------------------------------
    def _after_input(self) -> None:
        if self.vm.shutdown_reason is not None:
            self.end()

    def end(self) -> None:
        """This VM is over: tell its host once."""
        if self.ended:
            return
        self.ended = True
        if self.on_end is not None:
            self.on_end(self)

    def _exit(self, code: int, message: str) -> None:
        """End this VM (an incoming migration failed: QEMU 7.2 exits with status 1)."""
        stderr_line(f"{self.prefix}{message}\n")
        self.exit_code = code
        for monitor in self.monitors:
            monitor.freeze()
        self.end()

    async def start(self) -> bool:
        """Start the guest, an ``-incoming`` at start-up, the threads and the monitors.

        False (``exit_code`` 1, the reason printed) when ``-incoming`` cannot listen, as
        QEMU then ends at start-up.
        """
        self.migration.start()
        if self.options.incoming not in (None, "defer"):
            try:
                self.migration.start_incoming(self.options.incoming, at_startup=True)
            except CommandError as err:  # bind/open failures end start-up, as in QEMU
                stderr_line(f"{self.prefix}-incoming {self.options.incoming}: {err.desc}\n")
                self.exit_code = 1
                return False
        start_threads(self.domain, self.options, self._idle_threads)
        self.domain.chardevs = self._chardevs
        for chardev in self.guest_chardevs:
            await chardev.start()
        for monitor in self.monitors:
            await monitor.start()
        return True

    async def close(self) -> None:
        """Stop the guest and the migration, close the monitors (unix socket files removed)."""
        self._idle_threads.close()
        self.migration.close()
        for monitor in self.monitors:
            await monitor.close()
        for chardev in self.guest_chardevs:
            await chardev.close()

    def _chardevs(self) -> list[Any]:
        labels = self.options.monitor_labels
        qmp = [m for m in self.monitors if isinstance(m, QMPMonitor)]
        states = [chardev_state(label, m) for label, m in zip(labels, qmp, strict=False)]
        states += [chardev.state() for chardev in self.guest_chardevs]
        order = {label: i for i, label in enumerate(self.options.chardev_order)}
        return sorted(states, key=lambda s: order.get(s.label, len(order)))
