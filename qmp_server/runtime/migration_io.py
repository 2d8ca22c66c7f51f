"""The migration driver of one process: the façade the command handlers and the runtime use.

Contract: one :class:`MigrationController` per process, attached to the VM as
``vm.migration_hooks`` (:class:`~qmp_server.engine.vm.MigrationDriver`, what the command
handlers call) and owning both directions.  It holds no migration logic of its own; it builds
the shared :class:`~qmp_server.runtime.migration_context.MigrationContext` and hands each
call to the part that owns it:

* :mod:`~qmp_server.runtime.migration_source`: ``migrate``, the precopy loop, stop-and-copy,
  ``migrate_cancel`` / ``migrate-continue`` (with :mod:`~qmp_server.runtime.page_sender`);
* :mod:`~qmp_server.runtime.migration_dest`: ``-incoming`` / ``migrate-incoming`` and the load;
* :mod:`~qmp_server.runtime.guest_runtime`: the guest's workload ticker;
* :mod:`~qmp_server.runtime.channel`: URIs and the connections both directions run over.

The pure parts they drive: :mod:`qmp_server.engine.migration` (status, counters, QEMU's
``query-migrate``), :mod:`~qmp_server.engine.stream` (the byte format and return path),
:mod:`~qmp_server.engine.guest` and :mod:`~qmp_server.engine.devices`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from qmp_server.engine.devices import VfioSimConfig, VfioSimDevice
from qmp_server.engine.guest import GuestMemory, Workload
from qmp_server.engine.machine import MachineLayout
from qmp_server.engine.migration import IncomingMigration, SourceMigration, in_schema_order
from qmp_server.runtime.guest_runtime import WorkloadTicker, guest_workload, tune_malloc
from qmp_server.runtime.migration_context import MigrationContext
from qmp_server.runtime.migration_dest import DestinationDriver
from qmp_server.runtime.migration_source import SourceDriver
from qmp_server.runtime.migration_threads import source_threads

if TYPE_CHECKING:
    from qmp_server.engine.vm import VirtualMachine

__all__ = ["MigrationController"]

#: statuses of a direction with nothing under way
_AT_REST = frozenset({"none", "completed", "failed", "cancelled"})


class MigrationController:
    """Both migration directions of one VM, as QEMU's migration code drives them."""

    def __init__(
        self,
        vm: VirtualMachine,
        *,
        devices: list[VfioSimConfig],
        guest: GuestMemory,
        layout: MachineLayout,
        dirty_rate: int,
        exit_process: Callable[[int, str], None],
        dirty_write_bytes: int = 4096,
        dirty_working_set: int = 0,
    ) -> None:
        self.vm = vm
        self.ctx = MigrationContext(
            vm=vm,
            guest=guest,
            devices=[VfioSimDevice(cfg, seed=i + 1) for i, cfg in enumerate(devices)],
            workload=guest_workload(
                guest,
                layout,
                dirty_rate,
                seed=7,
                write_bytes=dirty_write_bytes,
                working_set=dirty_working_set,
            ),
            device_configs=devices,
            layout=layout,
        )
        self.source_driver = SourceDriver(self.ctx)
        self.dest_driver = DestinationDriver(self.ctx, exit_process)
        tune_malloc()
        #: the outgoing migration's state (QEMU's ``s->state`` and counters)
        self.source: SourceMigration = self.source_driver.state
        #: the incoming migration's state (QEMU's ``mis->state``)
        self.incoming: IncomingMigration = self.dest_driver.state
        self.devices: list[VfioSimDevice] = self.ctx.devices
        self.ticker = WorkloadTicker(self.ctx, self.source.count_dirtied, self._in_flight)

    def _in_flight(self) -> bool:
        return self.source.status not in _AT_REST or self.incoming.status not in _AT_REST

    # -- the state other layers read (REST, tests) ----------------------------------------
    @property
    def guest(self) -> GuestMemory:
        """This process's guest (replaced by the received one when a load completes)."""
        return self.ctx.guest

    @property
    def workload(self) -> Workload:
        return self.ctx.workload

    @property
    def ack_state(self) -> str | None:
        """The source's switchover ACK: "not-needed", "pending", "received" (None: no run)."""
        return self.source_driver.ack_state

    # -- the process ---------------------------------------------------------------------
    def start(self) -> None:
        """Start the guest workload ticker (the guest runs whether or not it migrates)."""
        if self.ticker.start():
            self.source_driver.prepare()

    def close(self) -> None:
        self.ticker.close()
        self.source_driver.close()
        self.dest_driver.close()

    # -- what the command handlers call (engine/vm.py MigrationDriver) --------------------
    @property
    def source_status(self) -> str:
        return self.source.status

    @property
    def incoming_status(self) -> str:
        return self.incoming.status

    def query(self) -> dict[str, Any]:
        info = self.incoming.info()
        info.update(self.source.info(time.monotonic()))
        if self.source.status != "none" and "socket-address" in info:
            info.pop("socket-address")
        if not info:
            return {}
        return in_schema_order(info)

    def migrate(self, uri: str) -> None:
        self.ticker.wake()
        self.source_driver.migrate(uri)

    def start_incoming(
        self, uri: str, *, at_startup: bool = False, exit_on_error: bool = True
    ) -> None:
        self.ticker.wake()
        self.dest_driver.start_incoming(uri, at_startup=at_startup, exit_on_error=exit_on_error)

    def continue_migration(self) -> None:
        self.source_driver.continue_migration()

    def cancel(self) -> None:
        self.source_driver.cancel()

    def resume(self, uri: str) -> None:
        self.source_driver.resume(uri)

    def start_postcopy(self) -> None:
        self.source_driver.start_postcopy()

    def pause(self) -> None:
        """``migrate-pause``: the side in postcopy (the command checked there is one)."""
        if self.source.status in ("postcopy-active", "postcopy-recover"):
            self.source_driver.pause()
        else:
            self.dest_driver.pause()

    def recover(self, uri: str) -> None:
        self.dest_driver.recover(uri)

    def threads(self) -> list[dict[str, Any]]:
        """``query-migrationthreads``: the source's threads (a destination lists none)."""
        return source_threads(self.source_driver)

    def set_dirty_rate(self, rate: int, write_bytes: int | None = None) -> None:
        self.ticker.set_rate(rate, write_bytes)

    def digest(self) -> dict[str, Any]:
        loaders = self.dest_driver.loaders
        devices: dict[str, str] = {}
        if loaders:
            devices = {ld.id: ld.digest() for ld in loaders}
        else:
            devices = {d.id: d.digest() for d in self.devices}
        return {"algorithm": "sha256", "ram": self.guest.digest(), "devices": devices}
