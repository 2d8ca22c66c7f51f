"""``qmp-migrate``: drive a live migration between two QMP monitors the way libvirt does.

::

    qmp-migrate --source ENDPOINT --dest ENDPOINT --uri URI [--incoming-uri URI]
                [--switchover-ack] [--pause-before-switchover]
                [--postcopy [--postcopy-after-precopy] [--max-postcopy-bandwidth SIZE]
                 [--postcopy-blocktime] [--timeout-postcopy] [--recover URI]]
                [--parallel [--parallel-connections N]] [--compressed [--comp-methods LIST]
                 [--comp-zlib-level N] [--comp-zstd-level N] [--comp-mt-level N]
                 [--comp-mt-threads N] [--comp-xbzrle-cache SIZE]]
                [--max-bandwidth SIZE] [--downtime-limit MS] [--timeout S] [--json]

An ENDPOINT is a unix socket path or ``HOST:PORT``.  The driver works with qmp-server and with
a real QEMU alike: it only uses QEMU's migration commands (plus ``x-query-guest-digest`` when
the monitor has it, to check the guest arrived intact).

The sequence (libvirt's, see docs/user-guide.md "Migrating with qmp-migrate"):

1. ``query-migrate-capabilities`` on both sides; ``migrate-set-capabilities`` ``events`` on both.
2. ``query-migrate-parameters`` on the source (saved for the reset).
3. ``migrate-set-capabilities`` on each side with every capability it reported, each with an
   explicit ``true``/``false``: ``return-path`` on both; the switchover-ACK capability on both
   under the name the side reports (``precopy-initial-data`` or ``switchover-ack``) when
   ``--switchover-ack`` is given; ``pause-before-switchover`` on the source when asked;
   ``postcopy-ram`` on both with ``--postcopy``, ``postcopy-blocktime`` on the destination
   with ``--postcopy-blocktime``; ``multifd``, ``xbzrle``, ``compress`` on both as
   ``--parallel`` and ``--compressed`` ask (:mod:`qmp_server.migrate_tuning`).
4. ``migrate-set-parameters`` on the source (only the parameters given); the parallel and
   compression parameters on both sides.
5. ``migrate-incoming`` on the destination, ``migrate`` on the source.
6. Follow ``MIGRATION`` events; answer ``pre-switchover`` with ``migrate-continue``; poll
   ``query-migrate`` for the progress display.  With ``--postcopy``: ``migrate-start-postcopy``
   when :class:`~qmp_server.migrate_postcopy.PostcopySwitch` says so; in ``postcopy-paused``,
   with ``--recover URI``, ``migrate-recover`` on the destination (exec-oob when the monitor
   offers OOB: a real QEMU's destination may not answer in-band commands then) and ``migrate``
   with ``resume: true`` on the source.
7. ``query-migrate`` for the final statistics (after postcopy, the destination's too: it
   holds the blocktime); the guest digests of both sides.
8. Reset: every capability back to ``false`` on both sides (``events`` is left on, as libvirt
   leaves it), the saved parameters restored (on the destination too, for the tuning's).

On ``--timeout`` or Ctrl-C the migration is cancelled with ``migrate_cancel``; a source left
paused is resumed with ``cont`` (Proxmox's abort path).  Once postcopy has begun nothing is
cancelled (the guest already runs on the destination): ``--timeout`` no longer applies, and
Ctrl-C leaves the migration running (exit status 130).  A
postcopy left ``postcopy-paused`` (no ``--recover``) ends the run with both sides paused, their
capabilities untouched, for a manual recovery (docs/user-guide.md).

Exit status: 0 the migration completed; 1 it failed, or a command was refused, or a monitor
could not be reached; 2 usage error; 3 cancelled because ``--timeout`` elapsed; 130 cancelled
by Ctrl-C (SIGINT).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from qemu.qmp import ExecuteError, QMPClient

from qmp_server.engine.sizes import format_size, parse_size
from qmp_server.migrate_postcopy import (
    POSTCOPY_STATES,
    PostcopySwitch,
    blocktime_text,
    postcopy_detail,
)
from qmp_server.migrate_tuning import Tuning, TuningError

__all__ = [
    "ACK_CAPABILITIES",
    "EXIT_CANCELLED_INTERRUPT",
    "EXIT_CANCELLED_TIMEOUT",
    "EXIT_COMPLETED",
    "EXIT_FAILED",
    "EXIT_USAGE",
    "MigrateOptions",
    "MigrationError",
    "MigrationResult",
    "Progress",
    "main",
    "parse_endpoint",
    "run_migration",
]

EXIT_COMPLETED = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CANCELLED_TIMEOUT = 3
EXIT_CANCELLED_INTERRUPT = 130

#: The switchover-ACK capability's names: the patch series' name, then the released one.
ACK_CAPABILITIES = ("precopy-initial-data", "switchover-ack")
#: libvirt's name for an outgoing migration job (its error texts quote it).
JOB = "migration out"
FINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})
#: How often ``query-migrate`` is polled for the progress display (seconds).
POLL_INTERVAL = 0.2
#: How long a cancelled migration may take to report ``cancelled`` (seconds).
CANCEL_WAIT = 10.0
#: How long the destination may take to report a status the source already reached (seconds).
DEST_WAIT = 10.0
#: How many times ``--recover`` recovers a paused postcopy before giving up.
MAX_RECOVERIES = 5
#: The source's events the driver follows.
SOURCE_EVENTS = ("MIGRATION", "MIGRATION_PASS")


class MigrationError(Exception):
    """An error to show the user, already worded the way libvirt words it."""


class _QMPCommandError(MigrationError):
    def __init__(self, side: str, command: str, desc: str) -> None:
        # libvirt: VIR_ERR_INTERNAL_ERROR "unable to execute QEMU command '%1$s': %2$s"
        super().__init__(f"internal error: unable to execute QEMU command '{command}': {desc}")
        self.side = side
        self.command = command
        self.desc = desc


def parse_endpoint(text: str) -> str | tuple[str, int]:
    """A monitor address as QMPClient.connect takes it: a unix path, or ``(host, port)``.

    ``HOST:PORT`` (``[::1]:4444`` for IPv6) is TCP unless a file of that name exists.

    >>> parse_endpoint("/run/qmp.sock"), parse_endpoint("127.0.0.1:4444")
    ('/run/qmp.sock', ('127.0.0.1', 4444))
    >>> parse_endpoint("[::1]:4444")
    ('::1', 4444)
    """
    host, sep, port = text.rpartition(":")
    if sep and host and port.isdigit() and "/" not in text and not os.path.exists(text):
        return host.strip("[]"), int(port)
    return text


@dataclass
class MigrateOptions:
    """What ``qmp-migrate`` was asked to do."""

    source: str
    dest: str
    uri: str
    incoming_uri: str | None = None
    switchover_ack: bool = False
    pause_before_switchover: bool = False
    max_bandwidth: int | None = None
    downtime_limit: int | None = None
    timeout: float | None = None
    postcopy: bool = False
    postcopy_after_precopy: bool = False
    max_postcopy_bandwidth: int | None = None
    postcopy_blocktime: bool = False
    timeout_postcopy: bool = False
    recover_uri: str | None = None
    #: ``--parallel`` and ``--compressed`` (migrate_tuning)
    tuning: Tuning = field(default_factory=Tuning)


@dataclass
class MigrationResult:
    """The outcome, as printed by ``--json``."""

    status: str = "none"
    exit_status: int = EXIT_FAILED
    error: str | None = None
    error_side: str | None = None
    ack_capability: dict[str, str | None] = field(default_factory=dict)
    statuses: list[str] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)
    source_digest: Any = None
    dest_digest: Any = None
    source_runstate: str | None = None
    dest_runstate: str | None = None
    cancelled_because: str | None = None
    reset_errors: list[str] = field(default_factory=list)
    #: why ``migrate-start-postcopy`` was sent (None: it was not)
    postcopy_reason: str | None = None
    #: the destination's MIGRATION statuses, as seen
    dest_statuses: list[str] = field(default_factory=list)
    #: the destination's last ``query-migrate`` (after postcopy: with the blocktime)
    dest_final: dict[str, Any] = field(default_factory=dict)
    #: how many times a paused postcopy was recovered (``--recover``)
    recoveries: int = 0
    #: Ctrl-C in postcopy: qmp-migrate stopped following a migration it cannot cancel
    left_running: bool = False

    @property
    def in_postcopy(self) -> bool:
        """Whether the migration really went through postcopy (a switch requested in the
        last pass can lose the race against completion: precopy then ends it)."""
        return "postcopy-active" in self.statuses

    @property
    def digests_equal(self) -> bool | None:
        if self.source_digest is None or self.dest_digest is None:
            return None
        return bool(self.source_digest == self.dest_digest)

    def summary(self, options: MigrateOptions) -> dict[str, Any]:
        ram = self.final.get("ram") or {}
        vfio = self.final.get("vfio") or {}
        return {
            "status": self.status,
            "exit-status": self.exit_status,
            "error": self.error,
            "error-side": self.error_side,
            "cancelled-because": self.cancelled_because,
            "switchover-ack": options.switchover_ack,
            "ack-capability": self.ack_capability,
            "pause-before-switchover": options.pause_before_switchover,
            "downtime": self.final.get("downtime"),
            "total-time": self.final.get("total-time"),
            "setup-time": self.final.get("setup-time"),
            "transferred": ram.get("transferred"),
            "vfio-transferred": vfio.get("transferred"),
            "multifd-bytes": ram.get("multifd-bytes"),
            "compression": self.final.get("compression"),
            "xbzrle-cache": self.final.get("xbzrle-cache"),
            "postcopy": options.postcopy,
            "postcopy-requested": self.postcopy_reason,
            "postcopy-active": self.in_postcopy,
            "postcopy-bytes": ram.get("postcopy-bytes"),
            "postcopy-requests": ram.get("postcopy-requests"),
            "postcopy-blocktime": self.dest_final.get("postcopy-blocktime"),
            "postcopy-vcpu-blocktime": self.dest_final.get("postcopy-vcpu-blocktime"),
            "recoveries": self.recoveries,
            "left-running": self.left_running,
            "statuses": self.statuses,
            "dest-statuses": self.dest_statuses,
            "digests-equal": self.digests_equal,
            "source-digest": self.source_digest,
            "dest-digest": self.dest_digest,
            "source-runstate": self.source_runstate,
            "dest-runstate": self.dest_runstate,
            "reset-errors": self.reset_errors,
            "query-migrate": self.final,
            "dest-query-migrate": self.dest_final,
        }


def progress_percent(info: dict[str, Any]) -> int | None:
    """virsh's job progress: ``100 - remaining * 100 / total``, 100 only once completed."""
    if info.get("status") == "completed":
        return 100
    ram = info.get("ram")
    if not ram or not ram.get("total"):
        return None if info.get("status") != "setup" else 0
    percent = 100 - (int(ram["remaining"]) * 100) // int(ram["total"])
    return max(0, min(99, percent))


class Progress:
    """Shows the migration's progress on ``stream``.

    On a terminal: one line redrawn in place, ``Migration: [ 42 %] [#####.....] active``
    (``virsh migrate --verbose`` draws ``Migration: [ 42 %]``).  Elsewhere: one plain line per
    status change and at most one progress line a second.  ``quiet`` shows nothing.
    """

    BAR = 24

    def __init__(self, stream: TextIO, *, tty: bool | None = None, quiet: bool = False) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.quiet = quiet
        self._last_line = 0.0
        self._last_percent: int | None = None
        self._drawn = False

    def _write(self, text: str) -> None:
        if not self.quiet:
            self.stream.write(text)
            self.stream.flush()

    def note(self, text: str) -> None:
        """A message line (status changes, actions taken)."""
        if self.tty:
            if self._drawn:
                self._write("\n")
                self._drawn = False
            self._write(f"{text}\n")
        else:
            self._write(f"{text}\n")

    def update(self, info: dict[str, Any]) -> None:
        percent = progress_percent(info)
        if percent is None:
            return
        status = str(info.get("status", ""))
        if self.tty:
            filled = percent * self.BAR // 100
            bar = "#" * filled + "." * (self.BAR - filled)
            extra = ""
            if status in POSTCOPY_STATES:
                ram = info.get("ram") or {}
                extra = f" req {ram.get('postcopy-requests', 0)}"
            self._write(f"\rMigration: [{percent:3d} %] [{bar}] {status:<22}{extra}")
            self._drawn = True
            return
        now = time.monotonic()
        if percent != self._last_percent and (now - self._last_line >= 1.0 or percent == 100):
            ram = info.get("ram") or {}
            detail = ""
            if ram:
                detail = (
                    f", RAM remaining {format_size(int(ram.get('remaining', 0)))}"
                    f" of {format_size(int(ram.get('total', 0)))},"
                    f" sent {format_size(int(ram.get('transferred', 0)))}"
                )
            detail += postcopy_detail(info)
            self._write(f"Migration: [{percent:3d} %] {status}{detail}\n")
            self._last_line = now
            self._last_percent = percent

    def finish(self) -> None:
        if self.tty and self._drawn:
            self._write("\n")
            self._drawn = False


class _Side:
    """One monitor: a QMPClient plus the name used in messages."""

    def __init__(self, name: str, address: str) -> None:
        self.name = name
        self.address = address
        self.client = QMPClient(f"qmp-migrate-{name}")
        self.capabilities: list[str] = []
        self.connected = False

    async def connect(self) -> None:
        try:
            await self.client.connect(parse_endpoint(self.address))
        except Exception as err:  # ConnectError wraps the OSError in .exc
            cause = getattr(err, "exc", None) or err
            reason = getattr(cause, "strerror", None) or str(cause)
            raise MigrationError(
                f"failed to connect to the {self.name} monitor '{self.address}': {reason}"
            ) from None
        self.connected = True

    @property
    def oob(self) -> bool:
        """Whether the monitor offered out-of-band execution (qemu.qmp then enabled it)."""
        greeting = self.client.greeting
        return greeting is not None and "oob" in greeting.QMP.capabilities

    async def execute(
        self, command: str, arguments: dict[str, Any] | None = None, *, oob: bool = False
    ) -> Any:
        try:
            return await self.client.execute(command, arguments, oob=oob)
        except ExecuteError as err:
            raise _QMPCommandError(self.name, command, str(err)) from None
        except Exception as err:  # the connection went away (the process exited)
            raise MigrationError(
                f"internal error: {self.name} monitor '{self.address}' lost while executing "
                f"QEMU command '{command}': {type(err).__name__}"
            ) from None

    async def disconnect(self) -> None:
        if self.connected:
            with contextlib.suppress(Exception):
                await self.client.disconnect()
            self.connected = False


def _check_postcopy(options: MigrateOptions, source: _Side, dest: _Side) -> None:
    """libvirt refuses a postcopy flag the QEMU lacks before it sends anything."""
    wanted = [(side, "postcopy-ram") for side in (source, dest) if options.postcopy]
    if options.postcopy_blocktime:
        wanted.append((dest, "postcopy-blocktime"))
    for side, name in wanted:
        if name not in side.capabilities:
            raise MigrationError(
                f"argument unsupported: Migration option '{name}' is not supported by "
                f"{side.name} QEMU binary"
            )


def _ack_name(capabilities: Sequence[str]) -> str | None:
    return next((name for name in ACK_CAPABILITIES if name in capabilities), None)


def _capability_list(names: Sequence[str], on: set[str]) -> list[dict[str, Any]]:
    """Every capability the side reported except ``events``, each explicitly true/false."""
    return [{"capability": n, "state": n in on} for n in names if n != "events"]


async def run_migration(
    options: MigrateOptions,
    progress: Progress,
    *,
    interrupted: asyncio.Event | None = None,
) -> MigrationResult:
    """Run one migration; never raises for migration or QMP errors (see ``result.error``)."""
    result = MigrationResult()
    source = _Side("source", options.source)
    dest = _Side("destination", options.dest)
    saved_params: dict[str, Any] = {}
    saved_dest: dict[str, Any] = {}
    configured = False
    try:
        await source.connect()
        await dest.connect()
        # 1. probe, and turn events on (libvirt does this once at QEMU start).
        for side in (source, dest):
            caps = await side.execute("query-migrate-capabilities")
            side.capabilities = [str(c["capability"]) for c in caps]
            if "events" in side.capabilities:
                await side.execute(
                    "migrate-set-capabilities",
                    {"capabilities": [{"capability": "events", "state": True}]},
                )
        ack = {side.name: _ack_name(side.capabilities) for side in (source, dest)}
        result.ack_capability = dict(ack)
        if options.switchover_ack:
            for side in (source, dest):
                if ack[side.name] is None:
                    # libvirt refuses a migration flag a QEMU lacks before sending anything.
                    raise MigrationError(
                        "argument unsupported: Migration option 'switchover-ack' is not "
                        f"supported by {side.name} QEMU binary (it reports neither "
                        "'precopy-initial-data' nor 'switchover-ack')"
                    )
        if options.pause_before_switchover and "pause-before-switchover" not in (
            source.capabilities
        ):
            raise MigrationError(
                "argument unsupported: Migration option 'pause-before-switchover' is not "
                "supported by source QEMU binary"
            )
        _check_postcopy(options, source, dest)
        tuned = options.tuning.parameters()
        for side in (source, dest):
            missing = options.tuning.missing(side.capabilities)
            if missing is not None:
                raise MigrationError(
                    f"argument unsupported: Migration option '{missing}' is not supported "
                    f"by {side.name} QEMU binary"
                )
        # 2. save the parameters we are going to change (the tuning's: on both sides).
        params = await source.execute("query-migrate-parameters")
        for key in ("max-bandwidth", "downtime-limit", "max-postcopy-bandwidth", *tuned):
            if key in params:
                saved_params[key] = params[key]
        if tuned:
            dest_params = await dest.execute("query-migrate-parameters")
            saved_dest.update({k: dest_params[k] for k in tuned if k in dest_params})
        # 3. capabilities, explicitly, on each side.
        configured = True
        for side in (source, dest):
            on = {"return-path"}
            name = ack[side.name]
            if options.switchover_ack and name is not None:
                on.add(name)
            if side is source and options.pause_before_switchover:
                on.add("pause-before-switchover")
            if options.postcopy:
                on.add("postcopy-ram")
            if side is dest and options.postcopy_blocktime:
                on.add("postcopy-blocktime")
            on |= options.tuning.capabilities()
            await side.execute(
                "migrate-set-capabilities",
                {"capabilities": _capability_list(side.capabilities, on)},
            )
        # 4. parameters.
        new_params: dict[str, Any] = {}
        if options.max_bandwidth is not None:
            new_params["max-bandwidth"] = options.max_bandwidth
        if options.downtime_limit is not None:
            new_params["downtime-limit"] = options.downtime_limit
        if options.max_postcopy_bandwidth is not None:
            new_params["max-postcopy-bandwidth"] = options.max_postcopy_bandwidth
        if new_params or tuned:
            await source.execute("migrate-set-parameters", {**new_params, **tuned})
        if tuned:
            await dest.execute("migrate-set-parameters", tuned)
        # 5.-7.
        await _migrate(options, source, dest, progress, result, interrupted)
    except MigrationError as err:
        result.error = str(err)
        result.error_side = getattr(err, "side", None)
        result.exit_status = EXIT_FAILED
    finally:
        progress.finish()
        if configured and result.status not in POSTCOPY_STATES:
            # a postcopy left paused is still a migration: QEMU refuses the reset, and the
            # capabilities are what a manual recovery needs
            await _reset(source, dest, saved_params, result, saved_dest)
        await source.disconnect()
        await dest.disconnect()
    return result


async def _migrate(
    options: MigrateOptions,
    source: _Side,
    dest: _Side,
    progress: Progress,
    result: MigrationResult,
    interrupted: asyncio.Event | None,
) -> None:
    with (
        source.client.listener(SOURCE_EVENTS) as events,
        dest.client.listener("MIGRATION") as dest_events,
    ):
        watch = _DestWatch(dest_events, result)
        await dest.execute("migrate-incoming", {"uri": options.incoming_uri or options.uri})
        await source.execute("migrate", {"uri": options.uri, "resume": False})
        started = time.monotonic()
        deadline = None if options.timeout is None else started + options.timeout
        switch = None
        if options.postcopy:
            switch = PostcopySwitch(options.postcopy_after_precopy, options.timeout_postcopy)
        continued = False
        pause_handled = False
        passes = 0
        status = "setup"
        next_poll = 0.0
        while status not in FINAL_STATUSES:
            watch.drain()
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                if switch is not None and switch.on_timeout and status == "active":
                    deadline = None  # virsh --timeout-postcopy: switch instead of cancelling
                    await _start_postcopy(source, switch, f"--timeout {options.timeout:g} s "
                                          "elapsed", result, progress)  # fmt: skip
                elif status in POSTCOPY_STATES:
                    deadline = None  # the guest runs on the destination: nothing to cancel
                    progress.note("migration: --timeout elapsed in postcopy: not cancelled")
                else:
                    result.cancelled_because = f"--timeout {options.timeout:g} s elapsed"
                    break
            if interrupted is not None and interrupted.is_set():
                if status in POSTCOPY_STATES:
                    result.left_running = True  # cancelling would lose the guest
                    break
                result.cancelled_because = "interrupted (SIGINT)"
                break
            wait = POLL_INTERVAL
            if deadline is not None:
                wait = max(0.0, min(wait, deadline - now))
            event: Any
            try:
                event = await asyncio.wait_for(events.get(), wait)
            except TimeoutError:
                event = None
            if event is not None and event["event"] == "MIGRATION_PASS":
                passes = max(passes, int(event["data"]["pass"]))
            elif event is not None:
                status = str(event["data"]["status"])
                result.statuses.append(status)
                progress.note(f"migration: {status}")
            if status == "pre-switchover" and not continued:
                # libvirt finishes its storage jobs here, then lets the switchover happen.
                continued = True
                await source.execute("migrate-continue", {"state": "pre-switchover"})
                progress.note("migration: pre-switchover answered with migrate-continue")
            if switch is not None and (reason := switch.due(status, passes)) is not None:
                await _start_postcopy(source, switch, reason, result, progress)
            if status != "postcopy-paused":
                pause_handled = False
            elif not pause_handled:
                pause_handled = True
                if options.recover_uri is None or result.recoveries >= MAX_RECOVERIES:
                    break  # both sides stay paused: see the error and the user guide
                await _recover(source, dest, options.recover_uri, watch, result, progress)
            if time.monotonic() >= next_poll and status not in FINAL_STATUSES:
                info = await source.execute("query-migrate")
                progress.update(info)
                next_poll = time.monotonic() + POLL_INTERVAL
                polled = str(info.get("status", status))
                sync = (info.get("ram") or {}).get("dirty-sync-count")
                if isinstance(sync, int) and polled == "active":
                    passes = max(passes, sync)
                if polled in FINAL_STATUSES and polled not in result.statuses:
                    status = polled  # events are off or lost: polling still ends the loop
                    result.statuses.append(status)
        if result.cancelled_because is not None:
            status = await _cancel(source, events, result, progress)
        final = await source.execute("query-migrate")
        result.final = final
        result.status = str(final.get("status", status))
        if result.status == "completed" and result.in_postcopy:
            # the destination completes last; its answer then holds the blocktime
            await watch.wait_for("completed", DEST_WAIT)
            result.dest_final = await dest.execute("query-migrate")
    progress.update(final)
    progress.finish()
    if result.status == "completed":
        result.exit_status = EXIT_COMPLETED
        result.source_digest = await _digest(source)
        result.dest_digest = await _digest(dest)
    elif result.cancelled_because is not None:
        result.exit_status = (
            EXIT_CANCELLED_INTERRUPT
            if result.cancelled_because.startswith("interrupted")
            else EXIT_CANCELLED_TIMEOUT
        )
        # libvirt: VIR_ERR_OPERATION_ABORTED "job '%1$s' canceled by client"
        result.error = f"operation aborted: job '{JOB}' canceled by client"
    elif result.status == "failed":
        desc = final.get("error-desc")
        # libvirt: VIR_ERR_OPERATION_FAILED "job '%1$s' failed: %2$s" / "unexpectedly failed"
        result.error = (
            f"operation failed: job '{JOB}' failed: {desc}"
            if desc
            else f"operation failed: job '{JOB}' unexpectedly failed"
        )
        result.exit_status = EXIT_FAILED
    elif result.left_running and result.status in POSTCOPY_STATES:
        # libvirt: VIR_ERR_OPERATION_INVALID "cannot abort migration in post-copy mode"
        result.error = (
            "requested operation is not valid: cannot abort migration in post-copy mode "
            "(it goes on without qmp-migrate)"
        )
        result.exit_status = EXIT_CANCELLED_INTERRUPT
        result.source_runstate = await _runstate(source)
        return
    elif result.status == "postcopy-paused":
        # libvirt: VIR_ERR_OPERATION_FAILED "job '%1$s' failed in post-copy phase"
        result.error = f"operation failed: job '{JOB}' failed in post-copy phase"
        result.exit_status = EXIT_FAILED
        # a real QEMU's paused destination may not answer in-band: ask the source only
        result.source_runstate = await _runstate(source)
        return
    else:
        result.error = f"operation failed: job '{JOB}' ended in status '{result.status}'"
        result.exit_status = EXIT_FAILED
    result.source_runstate = await _runstate(source)
    result.dest_runstate = await _runstate(dest)


class _DestWatch:
    """The destination's ``MIGRATION`` statuses, read without asking its monitor anything."""

    def __init__(self, events: Any, result: MigrationResult) -> None:
        self.events = events
        self.result = result

    def drain(self) -> None:
        for event in self.events.clear():
            self._take(event)

    def _take(self, event: Any) -> None:
        self.result.dest_statuses.append(str(event["data"]["status"]))

    async def wait_for(self, status: str, seconds: float) -> bool:
        """Wait (at most ``seconds``) until the destination's last status is ``status``."""
        self.drain()
        deadline = time.monotonic() + seconds
        while not self.result.dest_statuses or self.result.dest_statuses[-1] != status:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                self._take(await asyncio.wait_for(self.events.get(), left))
            except TimeoutError:
                return False
        return True


async def _start_postcopy(
    source: _Side, switch: PostcopySwitch, reason: str, result: MigrationResult,
    progress: Progress,
) -> None:  # fmt: skip
    switch.reason = result.postcopy_reason = reason
    progress.note(f"migration: {reason}: sending migrate-start-postcopy")
    await source.execute("migrate-start-postcopy")


async def _recover(
    source: _Side, dest: _Side, uri: str, watch: _DestWatch, result: MigrationResult,
    progress: Progress,
) -> None:  # fmt: skip
    """A paused postcopy: ``migrate-recover`` on the destination, ``migrate`` ``resume``."""
    progress.note(f"migration: postcopy paused: recovering through {uri}")
    # migrate-recover is refused until the destination itself noticed the broken channel
    await watch.wait_for("postcopy-paused", DEST_WAIT)
    await dest.execute("migrate-recover", {"uri": uri}, oob=dest.oob)
    await source.execute("migrate", {"uri": uri, "resume": True})
    result.recoveries += 1
    progress.note("migration: migrate-recover and migrate resume sent")


async def _cancel(source: _Side, events: Any, result: MigrationResult, progress: Progress) -> str:
    progress.note(f"migration: {result.cancelled_because}: sending migrate_cancel")
    await source.execute("migrate_cancel")
    deadline = time.monotonic() + CANCEL_WAIT
    status = "cancelling"
    while status not in FINAL_STATUSES and time.monotonic() < deadline:
        try:
            event: Any = await asyncio.wait_for(events.get(), POLL_INTERVAL)
            if event["event"] != "MIGRATION":
                continue
            status = str(event["data"]["status"])
            result.statuses.append(status)
            progress.note(f"migration: {status}")
        except TimeoutError:
            status = str((await source.execute("query-migrate")).get("status", status))
    # Proxmox's abort path: a source left paused (e.g. in pre-switchover) is resumed.
    state = await source.execute("query-status")
    if state.get("status") in ("paused", "postmigrate", "finish-migrate"):
        with contextlib.suppress(MigrationError):
            await source.execute("cont")
            progress.note("migration: source resumed with cont")
    return status


async def _digest(side: _Side) -> Any:
    """The guest digest (``x-query-guest-digest``), when the monitor has that command."""
    try:
        return await side.execute("x-query-guest-digest")
    except MigrationError:
        return None


async def _runstate(side: _Side) -> str | None:
    try:
        return str((await side.execute("query-status"))["status"])
    except (MigrationError, KeyError, TypeError):
        return None


async def _reset(
    source: _Side,
    dest: _Side,
    saved_params: dict[str, Any],
    result: MigrationResult,
    saved_dest: dict[str, Any] | None = None,
) -> None:
    """libvirt's qemuMigrationParamsReset: every capability false, saved parameters back."""
    for side in (source, dest):
        if not side.capabilities or side.client.runstate.name != "RUNNING":
            continue
        try:
            await side.execute(
                "migrate-set-capabilities",
                {"capabilities": _capability_list(side.capabilities, set())},
            )
        except MigrationError as err:
            result.reset_errors.append(f"{side.name}: {err}")
    for side, saved in ((source, saved_params), (dest, saved_dest or {})):
        if saved and side.client.runstate.name == "RUNNING":
            try:
                await side.execute("migrate-set-parameters", saved)
            except MigrationError as err:
                result.reset_errors.append(f"{side.name}: {err}")


# -- command line ------------------------------------------------------------------------------


def _size(text: str) -> int:
    try:
        return parse_size(text, "b", name="max-bandwidth")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, not '{text}'")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qmp-migrate",
        description=(
            "Live-migrate a guest from one QMP monitor (qmp-server or QEMU) to another, with "
            "libvirt's command sequence."
        ),
        epilog=(
            "ENDPOINT is a unix socket path or HOST:PORT. Exit status: 0 completed, 1 failed "
            "or refused, 2 usage error, 3 cancelled by --timeout, 130 cancelled by Ctrl-C."
        ),
    )
    parser.add_argument("--source", required=True, metavar="ENDPOINT", help="source monitor")
    parser.add_argument("--dest", required=True, metavar="ENDPOINT", help="destination monitor")
    parser.add_argument(
        "--uri", required=True, help="migration URI the source connects to (tcp:H:P, unix:PATH)"
    )
    parser.add_argument(
        "--incoming-uri",
        metavar="URI",
        help="URI the destination listens on (default: --uri), e.g. tcp:0.0.0.0:4449",
    )
    parser.add_argument(
        "--switchover-ack",
        action="store_true",
        help="enable the switchover-ACK capability on both sides (precopy-initial-data or "
        "switchover-ack, whichever name the monitor reports)",
    )
    parser.add_argument(
        "--pause-before-switchover",
        action="store_true",
        help="stop in pre-switchover and continue with migrate-continue (as libvirt does)",
    )
    parser.add_argument("--max-bandwidth", type=_size, metavar="SIZE", help="bytes/s, e.g. 64M")
    postcopy = parser.add_argument_group("postcopy")
    postcopy.add_argument(
        "--postcopy",
        action="store_true",
        help="enable postcopy-ram on both sides and switch to postcopy (migrate-start-postcopy) "
        "as soon as precopy is active, unless --postcopy-after-precopy or --timeout-postcopy",
    )
    postcopy.add_argument(
        "--postcopy-after-precopy",
        action="store_true",
        help="with --postcopy: switch only once the first full pass did not converge (pass 2), "
        "as virsh migrate --postcopy-after-precopy does",
    )
    postcopy.add_argument(
        "--max-postcopy-bandwidth",
        type=_size,
        metavar="SIZE",
        help="bytes/s of the background page stream in postcopy (max-postcopy-bandwidth)",
    )
    postcopy.add_argument(
        "--postcopy-blocktime",
        action="store_true",
        help="enable postcopy-blocktime on the destination; the summary shows the blocktime",
    )
    postcopy.add_argument(
        "--timeout-postcopy",
        action="store_true",
        help="with --postcopy and --timeout: when the timeout elapses in precopy, switch to "
        "postcopy instead of cancelling",
    )
    postcopy.add_argument(
        "--recover",
        metavar="URI",
        help="with --postcopy: when postcopy pauses, migrate-recover URI on the destination "
        f"and migrate resume on the source (up to {MAX_RECOVERIES} times)",
    )
    tuning = parser.add_argument_group("parallel and compressed migration (as virsh migrate)")
    tuning.add_argument(
        "--parallel",
        action="store_true",
        help="multifd on both sides: pages on several connections",
    )
    tuning.add_argument(
        "--parallel-connections", type=int, metavar="N", help="multifd-channels on both sides"
    )
    tuning.add_argument(
        "--compressed",
        action="store_true",
        help="compress the migration (--comp-methods, default xbzrle)",
    )
    tuning.add_argument(
        "--comp-methods",
        metavar="LIST",
        help="comma list of xbzrle, mt (7.2), zlib, zstd (zlib/zstd: --parallel)",
    )
    for name, help_text in (
        ("zlib-level", "multifd-zlib-level"),
        ("zstd-level", "multifd-zstd-level"),
        ("mt-level", "compress-level"),
        ("mt-threads", "compress-threads"),
    ):
        tuning.add_argument(f"--comp-{name}", type=int, metavar="N", help=help_text)
    tuning.add_argument("--comp-xbzrle-cache", type=_size, metavar="SIZE",
                        help="xbzrle-cache-size")  # fmt: skip
    parser.add_argument(
        "--downtime-limit", type=int, metavar="MS", help="maximum downtime in milliseconds"
    )
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        metavar="S",
        help="cancel the migration if it has not completed after S seconds",
    )
    parser.add_argument(
        "--json", action="store_true", help="print a JSON summary on stdout (progress: stderr)"
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    return parser


def format_result(result: MigrationResult) -> str:
    """The human summary printed after a migration."""
    lines = [f"Migration {result.status}"]
    final = result.final
    if result.status == "completed":
        ram = final.get("ram") or {}
        vfio = final.get("vfio") or {}
        lines.append(f"  downtime:     {final.get('downtime')} ms")
        lines.append(f"  total time:   {final.get('total-time')} ms")
        lines.append(f"  setup time:   {final.get('setup-time')} ms")
        if ram:
            lines.append(f"  transferred:  {format_size(int(ram.get('transferred', 0)))}")
        if vfio:
            lines.append(f"  of it VFIO:   {format_size(int(vfio.get('transferred', 0)))}")
        if ram.get("multifd-bytes"):
            lines.append(f"  of it multifd: {format_size(int(ram['multifd-bytes']))}")
        if result.postcopy_reason is not None:
            lines.extend(_postcopy_lines(result))
        if result.digests_equal is not None:
            same = "equal" if result.digests_equal else "DIFFERENT"
            lines.append(f"  guest digest: {same} on source and destination")
    if result.source_runstate or result.dest_runstate:
        lines.append(
            f"  runstate:     source {result.source_runstate}, destination {result.dest_runstate}"
        )
    return "\n".join(lines)


def _postcopy_lines(result: MigrationResult) -> list[str]:
    ram = result.final.get("ram") or {}
    if not result.in_postcopy:
        return [f"  postcopy:     requested ({result.postcopy_reason}); precopy completed first"]
    lines = [f"  postcopy:     switched ({result.postcopy_reason})"]
    sent, requests = ram.get("postcopy-bytes"), ram.get("postcopy-requests")
    if isinstance(sent, int) and isinstance(requests, int):
        lines.append(
            f"                {format_size(sent)} sent after the switch, {requests} page requests"
        )
    blocktime = blocktime_text(result.dest_final)
    if blocktime is not None:
        lines.append(f"  blocktime:    {blocktime}, on the destination")
    if result.recoveries:
        lines.append(f"  recovered:    {result.recoveries} time(s) from postcopy-paused")
    return lines


def _install_sigint(interrupted: asyncio.Event) -> Callable[[], None]:
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGINT, interrupted.set)
    except (NotImplementedError, RuntimeError):  # not the main thread
        return lambda: None

    def uninstall() -> None:
        loop.remove_signal_handler(signal.SIGINT)

    return uninstall


async def _main_async(options: MigrateOptions, progress: Progress) -> MigrationResult:
    interrupted = asyncio.Event()
    uninstall = _install_sigint(interrupted)
    try:
        return await run_migration(options, progress, interrupted=interrupted)
    finally:
        uninstall()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``qmp-migrate`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # virsh: the postcopy modifiers require --postcopy (a usage error, exit status 2)
    for flag in ("postcopy_after_precopy", "timeout_postcopy", "recover", "postcopy_blocktime"):
        if getattr(args, flag) and not args.postcopy:
            parser.error(f"--{flag.replace('_', '-')} requires --postcopy")
    if args.timeout_postcopy and args.timeout is None:
        parser.error("--timeout-postcopy requires --timeout")
    try:
        tuning = Tuning.from_options(
            parallel=args.parallel,
            connections=args.parallel_connections,
            compressed=args.compressed,
            methods=args.comp_methods,
            zlib_level=args.comp_zlib_level,
            zstd_level=args.comp_zstd_level,
            mt_level=args.comp_mt_level,
            mt_threads=args.comp_mt_threads,
            xbzrle_cache=args.comp_xbzrle_cache,
        )
    except TuningError as err:
        parser.error(str(err))
    options = MigrateOptions(
        tuning=tuning,
        source=args.source,
        dest=args.dest,
        uri=args.uri,
        incoming_uri=args.incoming_uri,
        switchover_ack=args.switchover_ack,
        pause_before_switchover=args.pause_before_switchover,
        max_bandwidth=args.max_bandwidth,
        downtime_limit=args.downtime_limit,
        timeout=args.timeout,
        postcopy=args.postcopy,
        postcopy_after_precopy=args.postcopy_after_precopy,
        max_postcopy_bandwidth=args.max_postcopy_bandwidth,
        postcopy_blocktime=args.postcopy_blocktime,
        timeout_postcopy=args.timeout_postcopy,
        recover_uri=args.recover,
    )
    # qemu.qmp logs disconnects and dropped replies; the result says what matters.
    logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)
    progress = Progress(sys.stderr, quiet=args.quiet)
    result = asyncio.run(_main_async(options, progress))
    if args.json:
        sys.stdout.write(json.dumps(result.summary(options), indent=2) + "\n")
    elif result.status != "none":
        sys.stdout.write(format_result(result) + "\n")
    if result.error is not None:
        sys.stderr.write(f"error: {result.error}\n")
    for problem in result.reset_errors:
        sys.stderr.write(f"warning: capability reset: {problem}\n")
    sys.stdout.flush()
    return result.exit_status


if __name__ == "__main__":
    sys.exit(main())
