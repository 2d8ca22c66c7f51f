"""The emulated machine as the command layer sees it: one object per qmp-server process.

Pure: no asyncio, no sockets, no clocks.  Events leave through the ``emit`` callback, which the
runtime turns into timestamped QMP events broadcast to every negotiated monitor.

Rule: every piece of state a QMP command can read or change lives under this object, so that a
QMP monitor and the REST mirror that call the same handler can never see different answers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from qmp_server.engine.device_table import DeviceTable
from qmp_server.engine.dirty_rate import DirtyRateMeter
from qmp_server.engine.fds import FdSets, MonitorFds
from qmp_server.engine.identity import NULL_UUID
from qmp_server.engine.power import PowerControl, PowerOptions
from qmp_server.profiles import Profile

if TYPE_CHECKING:
    from qmp_server.engine.balloon import Balloon
    from qmp_server.engine.config import MigrationConfig
    from qmp_server.engine.domain import Domain
    from qmp_server.engine.host import HostInfo
    from qmp_server.qapi.model import Schema

__all__ = ["EventSink", "MigrationDriver", "Timers", "VirtualMachine"]

#: ``emit(event_name, data_or_None)``: data is a dict built in schema member order.
EventSink = Callable[[str, "dict[str, Any] | None"], None]


class Timers(Protocol):
    """Time as the runtime gives it: deferred calls (the modelled guest's reactions) and clocks."""

    def call_later(self, delay: float, fn: Callable[[], None]) -> None: ...
    def monotonic(self) -> float: ...
    def wall(self) -> float: ...


class MigrationDriver(Protocol):
    """What the command layer asks of the migration driver (``runtime/migration_io.py``)."""

    @property
    def source_status(self) -> str: ...
    @property
    def incoming_status(self) -> str: ...
    @property
    def ack_state(self) -> str | None: ...
    def migrate(self, uri: str) -> None: ...
    def resume(self, uri: str) -> None: ...
    def start_incoming(self, uri: str, *, exit_on_error: bool = True) -> None: ...
    def cancel(self) -> None: ...
    def continue_migration(self) -> None: ...
    def start_postcopy(self) -> None: ...
    def pause(self) -> None: ...
    def recover(self, uri: str) -> None: ...
    def query(self) -> dict[str, Any]: ...
    def set_dirty_rate(self, rate: int, write_bytes: int | None = None) -> None: ...
    def threads(self) -> list[dict[str, Any]]: ...
    def digest(self) -> dict[str, Any]: ...


class VirtualMachine:
    """Runstate, migration configuration and migration state of the emulated guest."""

    def __init__(
        self,
        profile: Profile,
        schema: Schema,
        emit: EventSink,
        config: MigrationConfig,
        *,
        host: HostInfo | None = None,
        start_paused: bool = False,
        incoming: str | None = None,
    ) -> None:
        self.profile = profile
        self.schema = schema
        self.emit = emit
        #: Migration capabilities and parameters (``-global`` presets applied).
        self.config = config
        self.host = host
        #: QEMU's RunState name: prelaunch with -S (or -incoming: inmigrate), running otherwise.
        if incoming is not None:
            self.runstate = "inmigrate"
        elif start_paused:
            self.runstate = "prelaunch"
        else:
            self.runstate = "running"
        #: The ``-incoming`` argument (``defer`` or a URI), None when not a destination.
        self.incoming = incoming
        #: Whether a destination starts the guest once its migration completes (-S clears it).
        self.autostart = not start_paused
        #: Set by ``quit`` or a signal: the runtime flushes replies, then exits.
        self.shutdown_reason: str | None = None
        #: The migration driver, attached by the runtime (None in pure unit tests).
        self.migration_hooks: MigrationDriver | None = None
        #: Accelerators the command line asked for, in the order QEMU tries them.
        self.accel: tuple[str, ...] = ("tcg",)
        #: The ``-device`` options QEMU accepted, by id (filled by the runtime).
        self.devices = DeviceTable()
        #: Whether QEMU would have loaded its modules (a ``qom-list-types`` does).
        self.qom_modules_loaded = False
        #: vCPUs, QOM tree, I/O threads and chardevs, attached by the runtime.
        self.domain: Domain | None = None
        #: Deferred calls and clocks, attached by the runtime (None: nothing is deferred).
        self.timers: Timers | None = None
        #: ``-name`` (guest=) and ``-uuid``.
        self.name: str | None = None
        self.uuid = NULL_UUID
        #: The balloon device, when ``-device`` added one.
        self.balloon: Balloon | None = None
        #: Power button, reset and shutdown rules (the runtime sets the command line's options).
        self.power = PowerControl(self, PowerOptions())
        #: ``add-fd`` / ``-add-fd`` sets, and the descriptors of the monitor whose command runs
        #: (set by the dispatcher around each handler, like QEMU's current monitor).
        self.fdsets = FdSets()
        self.cur_fds: MonitorFds | None = None
        #: calc-dirty-rate's measurement, and where it reads the guest's page writes from.
        self.dirty_meter = DirtyRateMeter(profile)
        self.guest_pages: Callable[[], tuple[int, int]] | None = None

    @property
    def source_migration_status(self) -> str:
        """QEMU's outgoing ``s->state``."""
        return "none" if self.migration_hooks is None else self.migration_hooks.source_status

    @property
    def switchover_ack_state(self) -> str | None:
        """The source's switchover ACK: "not-needed", "pending", "received" (None: no run)."""
        hooks = self.migration_hooks
        return None if hooks is None else hooks.ack_state

    @property
    def incoming_migration_status(self) -> str:
        """QEMU's ``mis->state``."""
        hooks = self.migration_hooks
        return "none" if hooks is None else hooks.incoming_status

    @property
    def running(self) -> bool:
        return self.runstate == "running"

    def stop(self, state: str) -> bool:
        """Stop a running guest (STOP event) and enter ``state``; False if it was not running."""
        if not self.running:
            return False
        self.runstate = state
        self.emit("STOP", None)
        return True

    def start(self) -> None:
        """Run the guest: RESUME event, unless it already runs (then nothing happens)."""
        if self.running:
            return
        self.emit("RESUME", None)
        self.runstate = "running"
        self.power.on_start()

    def request_shutdown(self, reason: str, *, guest: bool = False) -> None:
        """Emit SHUTDOWN as QEMU does on quit/signals/a guest power-off; the runtime ends the
        process."""
        if self.shutdown_reason is None:
            self.shutdown_reason = reason
            self.emit("SHUTDOWN", {"guest": guest, "reason": reason})
