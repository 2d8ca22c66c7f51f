"""What the source, the destination and the workload ticker of one process share.

Why a module of its own: the three run side by side on one event loop and must see the same
VM, guest and workload, and none of them may reach into another.  Contract: one
:class:`MigrationContext` per process, built by the façade
(:class:`~qmp_server.runtime.migration_io.MigrationController`) and handed to each part.
``guest`` and ``workload`` are replaced by the destination when a load completes (the process
then runs the guest it received): read them from the context each time, never keep them.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qmp_server.engine.devices import VfioSimConfig, VfioSimDevice
from qmp_server.engine.guest import GuestMemory, Workload
from qmp_server.engine.machine import MachineLayout
from qmp_server.profiles import Profile

if TYPE_CHECKING:
    from qmp_server.engine.vm import VirtualMachine
    from qmp_server.runtime.host_link import HostLink

__all__ = ["MigrationContext", "error_report", "stop_for_switchover"]


@dataclass
class MigrationContext:
    """The VM, its guest RAM and workload, and its ``vfio-sim`` devices."""

    vm: VirtualMachine
    guest: GuestMemory
    workload: Workload
    #: the devices this process saves as a source
    devices: list[VfioSimDevice]
    #: what the destination builds its loaders from
    device_configs: list[VfioSimConfig]
    #: the machine's RAM blocks and idle content (the stream's accounting and the workload)
    layout: MachineLayout
    #: the fleet's modelled NIC its outgoing connections go through (None: the real network)
    link: HostLink | None = None

    @property
    def profile(self) -> Profile:
        return self.vm.profile

    def events_on(self) -> bool:
        """The ``events`` capability: MIGRATION / MIGRATION_PASS events are emitted."""
        return self.vm.config.enabled("events")

    @property
    def ack_capability(self) -> str | None:
        return self.profile.ack_capability

    def ack_enabled(self) -> bool:
        """The switchover-ACK capability of the profile is on."""
        cap = self.ack_capability
        return cap is not None and self.vm.config.enabled(cap)

    def param(self, name: str) -> Any:
        return self.vm.config.parameter(name)


def error_report(message: str) -> None:
    """QEMU's error_report(): the program name, then the message, on stderr."""
    with contextlib.suppress(OSError, ValueError):  # stderr may be a closed pipe
        sys.stderr.write(f"qmp-server: {message}\n")


def stop_for_switchover(ctx: MigrationContext, now: float) -> bool:
    """QEMU's vm_stop_force_state(FINISH_MIGRATE): STOP only if the guest was running; the
    workload and the devices stop with it.  Returns whether the guest was running."""
    vm = ctx.vm
    was_running = vm.running
    if not vm.stop("finish-migrate"):
        vm.runstate = "finish-migrate"
    ctx.workload.set_running(False, now)
    for dev in ctx.devices:
        dev.set_running(False, now)
    return was_running
