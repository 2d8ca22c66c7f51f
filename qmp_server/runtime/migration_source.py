"""The outgoing migration: ``migrate``, the precopy loop, stop-and-copy, cancel.

Why a module of its own: the source is QEMU's migration thread and return-path thread; the
destination shares nothing with it but the process's guest (:mod:`migration_context`).
Contract: one :class:`SourceDriver` per process; :meth:`~SourceDriver.migrate` makes QEMU's
synchronous checks and starts a task, which ends in ``completed``, ``failed`` or
``cancelled`` (``state``, a :class:`~qmp_server.engine.migration.SourceMigration`) and never
raises: an asynchronous failure is reported on stderr as QEMU's error_report does, and a
guest stopped for the switchover runs again.

The loop is QEMU's precopy loop: counters per 100 ms period, threshold = bandwidth ×
downtime-limit, a dirty sync (MIGRATION_PASS) whenever the pending data drops below it, and
switchover only when it is below the threshold *and* the switchover ACK gate is open (the
capability is off, the guest is stopped, or the destination sent the ACK).  Without the ACK the
source keeps iterating for ever, ``active``, until cancelled or the guest is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import logging
import os
import socket
import time

import numpy as np

from qmp_server.engine.compression import (
    LegacyCompressStats,
    LegacyPageCompressor,
)
from qmp_server.engine.guest import PAGE_SIZE
from qmp_server.engine.legacy_compress import (
    CompressThreads,
)
from qmp_server.engine.migration import SourceMigration
from qmp_server.engine.multifd import new_session
from qmp_server.engine.precopy import ACK_WAIT_SYNC, Decision, PrecopySchedule, RateLimit
from qmp_server.engine.stream import (
    NeedData,
    ReturnPathDecoder,
    RpClosed,
    RpResumed,
    RpShut,
    RpSwitchoverAck,
    StreamEncoder,
    StreamError,
)
from qmp_server.engine.wire_cost import BlockMap, QemuStream
from qmp_server.engine.xbzrle import XbzrleSender
from qmp_server.errors import CommandError
from qmp_server.runtime.channel import (
    NOT_SEEKABLE,
    Address,
    Channel,
    connect,
    fd_channel,
    fd_not_found,
    open_for_write,
    parse_uri,
    seekable_fd,
    write_error,
)
from qmp_server.runtime.mapped_ram import MappedRamOutgoing
from qmp_server.runtime.migration_context import (
    MigrationContext,
    error_report,
    stop_for_switchover,
)
from qmp_server.runtime.multifd_source import MultifdOutgoing
from qmp_server.runtime.page_path import (
    LegacyCompression,
    PagePath,
    mapped_outgoing,
    multifd_outgoing,
)
from qmp_server.runtime.page_sender import STEP_PAGES, PageSender
from qmp_server.runtime.postcopy_source import PostcopyOutgoing
from qmp_server.runtime.step_turns import CONTENDED_STEP_PAGES, step_turns
from qmp_server.runtime.zero_copy import zero_copy_supported

__all__ = ["IN_PROGRESS", "SourceDriver"]

logger = logging.getLogger(__name__)

IN_PROGRESS = "There's a migration process in progress"
#: How long after the setup's bytes QEMU 10.0 flushes them (an exited command fails it).
_SETUP_FLUSH = 0.01
#: QEMU's MAX_WAIT: a RAM section ends after 50 ms even if the rate limit allows more.
_MAX_WAIT = 0.05
#: How long the source waits for the destination's RESUMED after the last byte.
_RESUME_TIMEOUT = 60.0
#: What QEMU 10.0's return-path thread reports when migrate_cancel shuts its channel down.
_RP_CHANNEL_ERROR = "Channel error: Input/output error"
_NO_RESUME = "Cannot resume if there is no paused migration"
#: The states of a migration that ``migrate`` and ``migrate_cancel`` see as under way.
_RUNNING = ("setup", "active", "pre-switchover", "device", "cancelling")
_POSTCOPY = ("postcopy-active", "postcopy-paused", "postcopy-recover", "postcopy-recover-setup")


#: file syncs still running after their migration completed (a reference keeps each alive)
_FILE_SYNCS: set[asyncio.Task[None]] = set()


async def _sync_and_close(channel: Channel) -> None:
    try:
        await channel.close_file()
    except OSError as err:  # the migration completed: only the disk's sync failed
        logger.warning("syncing the migration file failed: %s", err)


class _SetupFailed(Exception):
    """QEMU 10.0 checks the setup's result: the migration fails with this text."""


class SourceDriver:
    """The outgoing side of one VM, as QEMU's migration thread drives it."""

    def __init__(self, ctx: MigrationContext) -> None:
        self.ctx = ctx
        self.state = SourceMigration(ctx.profile, ctx.vm.emit, ctx.events_on)
        #: "not-needed" | "pending" | "received" while/after a run with the ACK capability
        self.ack_state: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._channel: Channel | None = None
        self._continue = asyncio.Event()
        self._resumed = asyncio.Event()
        #: set when something may open the switchover gate (the ACK arrived)
        self._gate = asyncio.Event()
        self._cancelled = False
        self._rp_lost = False
        self._resumed_received = False
        self._vm_was_running = True
        self._last_sync = 0.0
        self._high_count = 0
        #: QEMU's stream for the running migration (the counters' and rate limit's bytes)
        self._qemu: QemuStream | None = None
        #: migrate_cancel found an open return path (10.0 reports its channel error)
        self._cancel_rp_error = False
        #: migrate-start-postcopy was accepted during this migration
        self._postcopy_requested = False
        #: the migration after its switch to postcopy
        self.postcopy: PostcopyOutgoing | None = None
        self._rp_task: asyncio.Task[None] | None = None
        #: ``postcopy-preempt``: the second connection, opened with the first
        self._preempt: Channel | None = None
        #: everything sent, waiting for a return path the transport cannot have
        self._stuck = False
        #: the migration's address (multifd channels connect to it too)
        self._address: Address | None = None
        #: ``multifd``: the extra channels that carry the pages
        self._multifd: MultifdOutgoing | None = None
        #: 7.2's ``compress``: its threads' model and the page compressor
        self._legacy: LegacyCompression | None = None
        #: ``mapped-ram`` on ``file:``: the pages' places in the file and their writers
        self._mapped: MappedRamOutgoing | None = None
        #: the running migration's page path (built once its channels are open)
        self._path: PagePath | None = None

    @property
    def channel(self) -> Channel | None:
        """The running migration's main connection (None between migrations)."""
        return self._channel

    @property
    def mapped(self) -> MappedRamOutgoing | None:
        """The running migration's mapped-ram page writers (None without mapped-ram)."""
        return self._mapped

    @property
    def multifd(self) -> MultifdOutgoing | None:
        """The running migration's multifd channels (None without multifd)."""
        return self._multifd

    def prepare(self) -> None:
        """Warm the devices' digest caches, off the loop.

        The source's device digest hashes the whole initial data (hundreds of MB); it is
        cached by the device, so compute it now, not inside the downtime.
        """
        loop = asyncio.get_running_loop()
        for dev in self.ctx.devices:
            loop.run_in_executor(None, dev.digest)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._channel is not None:
            self._channel.abort()

    # -- commands -------------------------------------------------------------------------
    def migrate(self, uri: str) -> None:
        """``migrate``: QEMU's synchronous checks; the transfer continues in a task."""
        ctx = self.ctx
        vm = ctx.vm
        src = self.state
        early: Address | None = None  # None: the URI's own error comes later (before 10.0)
        try:
            early = parse_uri(uri, file_ok=True)
        except LookupError:
            # QEMU 10.0 qmp_migrate(): migrate_uri_parse() comes first and fails
            # synchronously, before migrate_prepare() and without any state change.
            if ctx.profile.since(10, 0):
                raise CommandError(f"unknown migration protocol: {uri}") from None
        except ValueError as err:
            if ctx.profile.since(10, 0):
                raise CommandError(str(err)) from None
        # 9.0+ checks the transport next: nothing changes (live 10.0)
        if early is not None and vm.config.enabled("mapped-ram") and not self._seekable(early):
            raise CommandError(NOT_SEEKABLE)
        if (
            early is not None
            and ctx.profile.since(9, 0)
            and vm.config.enabled("multifd")
            and not self._channels_carried(early)
        ):
            raise CommandError("Migration requires multi-channel URIs (e.g. tcp)")
        if (
            vm.config.enabled("mapped-ram")
            and vm.config.enabled("multifd")
            and ctx.param("multifd-compression") != "none"
        ):
            raise CommandError("Cannot use compression with mapped-ram")
        if src.status in _RUNNING or src.status in _POSTCOPY:
            raise CommandError(IN_PROGRESS)
        if vm.runstate == "inmigrate":
            raise CommandError("Guest is waiting for an incoming migration")
        if vm.runstate == "postmigrate":
            raise CommandError("Can't migrate the vm that was paused due to previous migration")
        now = time.monotonic()
        try:
            address = parse_uri(uri, file_ok=ctx.profile.since(8, 2))
        except LookupError:
            self._begin(now)
            src.fail(None, now)
            raise CommandError("Parameter 'uri' expects a valid migration protocol") from None
        except ValueError as err:
            self._begin(now)
            src.fail(str(err), now)
            raise CommandError(str(err)) from None
        self._cancelled = False
        self._rp_lost = False
        self._resumed_received = False
        self._postcopy_requested = False
        self.postcopy = None
        self._stuck = False
        self._high_count = 0
        self._continue.clear()
        self._resumed.clear()
        self._gate.clear()
        self._begin(now)
        prepared: Channel | None = None
        if address.scheme == "fd":
            # QEMU looks the name up among the monitor's getfd names (never as a number)
            # synchronously: when it is unknown, setup, failed, and the error returned
            mon = vm.cur_fds
            fd = None if mon is None else mon.named.take(address.path)
            if fd is None:
                desc = fd_not_found(address)
                src.fail(desc, now)
                raise CommandError(desc)
            prepared = fd_channel(fd, outgoing=True)
        file: io.BufferedIOBase | None = None
        if address.scheme == "file":
            # QEMU 10.0 creates the file before it answers (recorded live): setup, failed,
            # and the error returned by the command
            try:
                file = open_for_write(address.path, address.offset)
            except OSError as err:
                desc = f"Could not create '{address.path}': {os.strerror(err.errno or errno.EIO)}"
                src.fail(desc, now)
                raise CommandError(desc) from None
        if vm.config.enabled("multifd") and not self._channels_carried(address):
            # 7.2: setup, then failed without an error-desc, before migrate returns (live)
            if prepared is not None:
                prepared.abort()
            src.fail(None, now)
            error_report("multifd is not supported by current protocol")
            return
        self.ack_state = "pending" if ctx.ack_enabled() else "not-needed"
        self._task = asyncio.get_running_loop().create_task(self._run(address, file, prepared))

    def _seekable(self, address: Address) -> bool:
        """Whether ``address`` is a transport ``mapped-ram`` can use: a file, or an ``fd:``
        whose descriptor is one."""
        if address.scheme == "fd":
            mon = self.ctx.vm.cur_fds
            fd = None if mon is None else mon.named.fds.get(address.path)
            return fd is None or seekable_fd(fd)
        return address.scheme == "file"

    def _channels_carried(self, address: Address) -> bool:
        """Whether ``address`` can carry multifd channels (a socket address, or 9.0+'s
        ``file:`` with ``mapped-ram``)."""
        if address.scheme in ("tcp", "unix"):
            return True
        return address.scheme == "file" and self.ctx.vm.config.enabled("mapped-ram")

    def _begin(self, now: float) -> None:
        """``setup`` (QEMU's migrate_init: counters reset, the ACK flag back to false)."""
        self.state.begin(now, self.ctx.guest.size_bytes, int(self.ctx.param("downtime-limit")))
        self.state.xbzrle = (
            XbzrleSender(int(self.ctx.param("xbzrle-cache-size")))
            if self.ctx.vm.config.enabled("xbzrle")
            else None
        )
        self.state.compression = None
        self._legacy = None
        if self.ctx.vm.config.enabled("compress"):
            stats = self.state.compression = LegacyCompressStats()
            self._legacy = LegacyCompression(
                CompressThreads(int(self.ctx.param("compress-threads")), stats),
                LegacyPageCompressor(int(self.ctx.param("compress-level"))),
            )

    def continue_migration(self) -> None:
        self._continue.set()

    def resume(self, uri: str) -> None:
        """``migrate`` with ``resume: true`` (a paused postcopy only)."""
        if self.postcopy is None:
            raise CommandError(_NO_RESUME)
        self.postcopy.resume(uri)

    def start_postcopy(self) -> None:
        """``migrate-start-postcopy`` passed QEMU's checks: switch at the next iteration (once
        the switchover gate is open, as QEMU 10.0 does, live)."""
        if self.state.status in ("setup", "active") and self.ctx.vm.config.enabled("postcopy-ram"):
            self._postcopy_requested = True
            self._gate.set()

    def pause(self) -> None:
        """``migrate-pause`` on the source in postcopy."""
        if self.postcopy is not None:
            self.postcopy.pause()

    def cancel(self) -> None:
        status = self.state.status
        if status in _POSTCOPY:
            if self.ctx.profile.since(10, 0):
                raise CommandError("Postcopy migration in progress, cannot cancel.")
            if self.postcopy is not None and status != "postcopy-recover-setup":
                self.postcopy.cancel()  # 7.2: cancelling, for good (live)
            return
        if status not in ("setup", "active", "pre-switchover", "device"):
            return
        self._cancelled = True
        self.state.set_status("cancelling")
        if self._stuck:
            return  # QEMU's cancel cannot end a wait for the missing return path (live)
        channel = self._channel
        # QEMU 10.0: a return path open on the aborted channel fails with an I/O error, which
        # becomes the cancelled migration's error-desc (live: with return-path only)
        self._cancel_rp_error = (
            self.ctx.profile.since(10, 0)
            and channel is not None
            and channel.has_return_path
            and self.ctx.vm.config.enabled("return-path")
        )
        if channel is not None:
            channel.abort()
        if self._task is not None:
            self._task.cancel()
        self._continue.set()
        # QEMU answers migrate_cancel between "cancelling" and "cancelled" (recorded live):
        # the cleanup that reports "cancelled" runs after the command returns.
        asyncio.get_running_loop().call_soon(self._finish_cancel)

    def _finish_cancel(self) -> None:
        if self._cancel_rp_error:
            self.state.error_desc = _RP_CHANNEL_ERROR
            error_report(_RP_CHANNEL_ERROR)
        self.state.set_status("cancelled")
        self._restart_after_failure()

    # -- the task ---------------------------------------------------------------------------
    def _return_path_on(self, channel: Channel) -> bool:
        """QEMU opens the return path for ``return-path``, and for postcopy, which needs it."""
        cfg = self.ctx.vm.config
        return channel.has_return_path and (
            cfg.enabled("return-path") or cfg.enabled("postcopy-ram")
        )

    def _wants_return_path(self) -> bool:
        cfg = self.ctx.vm.config
        return cfg.enabled("return-path") or cfg.enabled("postcopy-ram")

    def _start_rp_reader(self, channel: Channel | None) -> None:
        if self._rp_task is not None:
            self._rp_task.cancel()
            self._rp_task = None
        if channel is not None:
            self._rp_task = asyncio.get_running_loop().create_task(self._read_return_path(channel))

    async def _run(
        self,
        address: Address,
        file: io.BufferedIOBase | None = None,
        prepared: Channel | None = None,
    ) -> None:
        src = self.state
        self._address = address
        try:
            try:
                channel = prepared or await connect(address, file, link=self.ctx.link)
            except OSError as err:
                reason = os.strerror(err.errno) if err.errno else str(err)
                desc = f"Failed to connect to '{address.describe()}': {reason}"
                src.fail(desc, time.monotonic())
                error_report(desc)  # QEMU's error_report of an asynchronous failure
                return
            self._channel = channel
            if self._zero_copy_missing(address):
                # found as the channels are set up, after the main connection: it is closed
                # unused (10.0's destination fails on it, 7.2's keeps listening; live)
                desc = "Zero copy send feature not detected in host kernel"
                src.fail(desc, time.monotonic())
                error_report(desc)
                return
            if self._return_path_on(channel):
                self._start_rp_reader(channel)
            cfg = self.ctx.vm.config
            if (
                cfg.enabled("postcopy-ram")
                and cfg.enabled("postcopy-preempt")
                and address.scheme in ("tcp", "unix")
            ):
                self._preempt = await connect(address, link=self.ctx.link)
            await self._precopy(channel)
        except asyncio.CancelledError:
            if not self._cancelled:
                raise
        except OSError as err:
            if self.ctx.profile.since(10, 0) and src.status == "active":
                # QEMU 10.0 qemu_savevm_state_iterate(): the RAM section's save
                # handler fails (-EIO) before the channel error is reported.
                error_report("failed to save SaveStateEntry with id(name): 1(ram): -5")
            self._fail(write_error(err, self._channel))
        except (EOFError, StreamError, _SetupFailed) as err:
            self._fail(str(err) or type(err).__name__)
        except Exception as err:  # a bug must end the migration visibly, not leave it hanging
            logger.exception("outgoing migration failed")
            self._fail(f"internal error: {err!r}")
        finally:
            self._start_rp_reader(None)
            if self._multifd is not None:
                self._multifd.close()
                self._multifd = None
            if self._mapped is not None:
                self._mapped.close()
                self._mapped = None
            self._path = None
            if self._legacy is not None:
                self._legacy.pool.shutdown(wait=False)
            if self._preempt is not None and src.status != "postcopy-paused":
                self._preempt.abort()
                self._preempt = None
            if self._channel is not None and src.status != "completed":
                self._channel.abort()
            self._channel = None
            for dev in self.ctx.devices:
                dev.set_running(self.ctx.vm.running, time.monotonic())

    def _zero_copy_missing(self, address: Address) -> bool:
        """``zero-copy-send`` with multifd over a socket whose family has no zero copy
        (a unix socket)."""
        cfg = self.ctx.vm.config
        if not (cfg.enabled("zero-copy-send") and cfg.enabled("multifd")):
            return False
        family = {"tcp": socket.AF_INET, "unix": socket.AF_UNIX}.get(address.scheme)
        return family is not None and not zero_copy_supported(family)

    def _restart_after_failure(self) -> None:
        """A failed or cancelled switchover: the guest runs again if it ran before (QEMU)."""
        vm = self.ctx.vm
        if vm.runstate == "finish-migrate":
            if self._vm_was_running:
                vm.start()
            else:
                vm.runstate = "paused"
        self.ctx.workload.set_running(vm.running, time.monotonic())

    def _fail(self, desc: str) -> None:
        if self.state.status in ("cancelling", "cancelled", "completed", "failed"):
            return
        self.state.fail(desc, time.monotonic())
        error_report(desc)
        self._restart_after_failure()

    async def _read_return_path(self, channel: Channel) -> None:
        decoder = ReturnPathDecoder()
        try:
            while True:
                data = await channel.recv(65536)
                decoder.receive_data(data)
                while True:
                    event = decoder.next_event()
                    if isinstance(event, NeedData):
                        break
                    self._on_rp_event(event)
                if not data:
                    return
        except (OSError, StreamError):
            if self.postcopy is not None:
                self.postcopy.channel_broken()
            self._rp_lost = True
            self._resumed.set()

    def _on_rp_event(self, event: object) -> None:
        if self.postcopy is not None and self.postcopy.on_rp_event(event):
            return
        if isinstance(event, RpSwitchoverAck):
            self.state.switchover_acked = True
            self.ack_state = "received"
            self._gate.set()
        elif isinstance(event, RpResumed):
            self._resumed_received = True
            self._resumed.set()
        elif isinstance(event, RpShut) and event.status != 0:
            self._fail("Detected IO failure for postcopy. Migration paused.")
        elif isinstance(event, RpClosed) and not event.clean:
            self._rp_lost = True
            self._resumed.set()

    # -- precopy ----------------------------------------------------------------------------
    def _can_switchover(self) -> bool:
        if not self.ctx.ack_enabled():
            return True
        if not self.ctx.vm.running:
            return True  # no reason to wait for the ACK when the guest is stopped
        return self.state.switchover_acked

    def _qemu_stream(self) -> QemuStream:
        layout = self.ctx.layout
        return QemuStream(
            self.ctx.profile,
            BlockMap(layout.block_list()),
            configuration_bytes=layout.configuration_bytes,
            device_state_bytes=layout.device_state_bytes,
            vmdesc_bytes=layout.vmdesc_bytes,
        )

    async def _precopy(self, channel: Channel) -> None:
        ctx = self.ctx
        src = self.state
        enc = StreamEncoder()
        guest = ctx.guest
        ack = ctx.ack_enabled()
        return_path = self._return_path_on(channel)
        qemu = self._qemu = self._qemu_stream()
        # multifd: the channels connect first, and the destination takes them (QEMU's
        # setup waits for its channels before its first sync)
        multifd = multifd_outgoing(ctx, self._address, channel)
        session = new_session()
        refused: list[int] = []
        if multifd is not None and self._address is not None:
            self._multifd = multifd
            refused = await multifd.open(self._address, session)
        head = enc.header(
            ram_size=guest.size_bytes,
            fill=guest.fill,
            seed=guest.seed,
            profile=ctx.profile.name,
            switchover_ack=ack,
            return_path=return_path,
            mapped_ram=ctx.vm.config.enabled("mapped-ram") and channel.file is not None,
        )
        if return_path:
            head += enc.open_return_path()
        if ctx.vm.config.enabled("postcopy-ram"):
            head += enc.postcopy_advise()
        if multifd is not None:
            head += enc.multifd_setup(multifd.channels, multifd.compression, session)
        for dev in ctx.devices:
            dev.save_setup(switchover_ack=ack)
        mapped = self._mapped = mapped_outgoing(ctx, self._address, channel)
        if mapped is not None:
            qemu.use_mapped_ram(multifd=ctx.vm.config.enabled("multifd"))
            await mapped.setup(enc, head)  # the blocks' records, room for their pages
            head = b""
        qemu.setup(return_path=return_path)
        path = self._path = PagePath(
            src, guest, qemu, multifd=self._multifd, legacy=self._legacy, mapped=mapped
        )
        # setup: the first bitmap sync covers all of RAM (MIGRATION_PASS 1, before active)
        guest.mark_all_dirty()
        to_send = guest.sync_dirty()
        self._last_sync = time.monotonic()
        remaining = int(to_send.size) * PAGE_SIZE
        if 0 in refused:
            await self._channel_refused_in_setup(channel, enc, head, remaining)
            return
        head += enc.sync(self._emit_pass(self._last_sync, 0, remaining))
        await self._send_setup(channel, head)
        if multifd is not None:
            multifd.start(src.ram.dirty_sync_count)
            multifd.account.start()
            path.multifd_sync()  # the end of the setup (both versions)
        path.count()
        src.ram.remaining = remaining
        src.activate(time.monotonic())
        sender = PageSender(enc, guest, to_send)
        schedule = PrecopySchedule(ctx.profile)
        limit = RateLimit(int(ctx.param("max-bandwidth")))
        period_base = 0  # QEMU's first period starts with the stream: setup bytes count
        while True:
            now = time.monotonic()
            if self._multifd is not None and self._multifd.error is not None:
                raise self._multifd.error  # a channel failed: the migration fails (QEMU)
            if self._postcopy_requested and self._can_switchover():
                await self._run_postcopy(channel, enc, sender)
                return
            if src.period_due(now):
                src.ram.remaining = sender.remaining * PAGE_SIZE
                src.update_period(now, int(ctx.param("downtime-limit")))
                limit.set_bandwidth(int(ctx.param("max-bandwidth")))
                period_base = path.rate_bytes()
            if limit.exceeded(path.rate_bytes() - period_base):
                await asyncio.sleep(src.period_left(now))
                continue
            schedule.threshold = src.threshold
            remaining = sender.remaining * PAGE_SIZE
            decision = schedule.next(
                remaining=remaining,
                pending=remaining + self._device_pending(),
                gate_open=self._can_switchover(),
                since_last_sync=now - self._last_sync,
            )
            synced: list[bytes] = []
            if decision is Decision.SYNC:
                sender.resync(self._resync())
                synced.append(enc.sync(src.ram.dirty_sync_count))
                src.ram.remaining = sender.remaining * PAGE_SIZE
                decision = schedule.after_sync(
                    pending=sender.remaining * PAGE_SIZE + self._device_pending(),
                    gate_open=self._can_switchover(),
                )
            if decision is Decision.COMPLETE:
                # no await between the sync and the stop: the guest must not run in between
                # (QEMU stops it within a fraction of a millisecond of its decision)
                # QEMU tests a requested postcopy start before the precopy completion
                if self._postcopy_requested:
                    await self._run_postcopy(channel, enc, sender, synced)
                else:
                    await self._complete(channel, enc, sender, synced)
                return
            if synced:
                await channel.send(synced)
                self._throttle_check()
            if decision is Decision.WAIT_ACK:
                # nothing to send: the ACK is missing; wait for it, a stop or a cancel
                await self._wait_gate(ACK_WAIT_SYNC)
                if schedule.after_ack_wait(gate_open=self._can_switchover()):
                    # QEMU 10.0 tests the gate after the pass's exact sync, so a wait that
                    # ends (the ACK, or `stop`) switches over on that pass: after `stop`,
                    # STOP, device, the final PASS, completed (live).
                    if self._postcopy_requested:
                        await self._run_postcopy(channel, enc, sender)
                    else:
                        await self._complete(channel, enc, sender)
                    return
                continue
            await self._iterate(channel, enc, sender, limit, period_base)
            await asyncio.sleep(0)  # QMP, the return path and the workload run between sections

    async def _channel_refused_in_setup(
        self, channel: Channel, enc: StreamEncoder, head: bytes, remaining: int
    ) -> None:
        """The destination closed multifd channel 0 (it has no ``multifd``): QEMU's setup
        fails when its first sync finds the channel gone, after the main stream's start
        went out; its failure comes before that sync's MIGRATION_PASS (live 7.2 and 10.0)."""
        desc = "Unable to write to socket: Broken pipe"
        self.state.fail(desc, time.monotonic())
        head += enc.sync(self._emit_pass(self._last_sync, 0, remaining))
        with contextlib.suppress(OSError):
            await channel.send([head])
            await channel.flush()
        if not self.ctx.profile.since(8, 0):
            error_report("multifd_send_sync_main: channel 0 has already quit")
        error_report(desc)

    async def _run_postcopy(
        self,
        channel: Channel,
        enc: StreamEncoder,
        sender: PageSender,
        unsent: list[bytes] | None = None,
    ) -> None:
        """The switch to postcopy and the rest of the migration (runtime/postcopy_source)."""
        qemu = self._qemu
        assert qemu is not None
        if self._multifd is not None:
            # postcopy pages go on the main channel (QEMU 7.2): the channels end first
            await self._multifd.finish()
        post = self.postcopy = PostcopyOutgoing(
            self.ctx,
            self.state,
            qemu,
            read_return_path=self._start_rp_reader,
            preempt=self._preempt,
        )
        await post.switch(channel, enc, sender, self._resync, unsent or [], self._continue.wait)
        await post.run(channel, enc)
        self._channel = None  # closed by the postcopy phase (finished, or aborted)

    async def _send_setup(self, channel: Channel, head: bytes) -> None:
        """The setup's bytes.  A channel that fails here fails after ``active``, as in QEMU,
        whose setup writes into a 64 KiB pipe and flushes it: an ``exec:`` command that
        already exited (``exec:true``) fails the flush.  7.2 ignores the setup's result and
        fails at its next write ("Unable to write to command: Broken pipe"); 10.0 checks it
        ("ram_save_setup failed: Input/output error").  qmp-server's socket buffers are
        larger than a pipe, so the command's end is looked for, not only write errors."""
        try:
            await channel.send([head])
            gone = await channel.command_exited(_SETUP_FLUSH)
        except OSError:
            gone = True
        if not gone:
            return
        self.state.activate(time.monotonic())
        if self.ctx.profile.since(10, 0):
            raise _SetupFailed("ram_save_setup failed: Input/output error")
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))

    async def _iterate(
        self,
        channel: Channel,
        enc: StreamEncoder,
        sender: PageSender,
        limit: RateLimit,
        period_base: int,
    ) -> None:
        """One RAM section of QEMU's loop: device data, then pages until the rate limit is
        exceeded, nothing is left or 50 ms passed (QEMU's MAX_WAIT)."""
        ctx = self.ctx
        src = self.state
        path = self._path
        assert path is not None
        qemu = path.qemu
        downtime = not ctx.vm.running  # QEMU counts bytes sent while paused as downtime bytes
        deadline = time.monotonic() + _MAX_WAIT
        for dev in ctx.devices:
            chunks = dev.save_iterate(4 << 20)
            if chunks:
                await channel.send([p for c in chunks for p in enc.device_parts(c)])
                payload = sum(len(c.data) for c in chunks)
                src.count_device_bytes(payload)
                qemu.device_data(payload)
        qemu.begin_section()
        turns = step_turns()
        while sender.remaining:
            # QMP, the return path, the workload and the process's other migrations run
            # between steps (step_turns: one migration's step per turn of the loop)
            await turns.take()
            pages, zero = sender.peek(CONTENDED_STEP_PAGES if turns.contended else STEP_PAGES)
            cost = qemu.cost(pages, zero)
            count = pages.size
            if not limit.unlimited:
                count = path.fit(pages, zero, cost, period_base + limit.allowance)
                if count < pages.size:
                    pages, zero, cost = pages[:count], zero[:count], cost.head(count)
            if count:
                await path.send_step(
                    channel, enc, sender, pages, zero, cost,
                    downtime=downtime, exact_flushes=not limit.unlimited,
                )  # fmt: skip
                path.count()
                src.ram.remaining = sender.remaining * PAGE_SIZE
            if limit.exceeded(path.rate_bytes() - period_base) or time.monotonic() >= deadline:
                break
        if self._multifd is not None and self._multifd.account.rules.sync_per_section:
            path.multifd_sync()  # 7.2: at the end of every RAM section
        qemu.end_section(downtime=downtime)
        path.count()

    async def _wait_gate(self, seconds: float) -> None:
        self._gate.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._gate.wait(), seconds)

    def _device_pending(self) -> int:
        return sum(dev.pending_bytes() for dev in self.ctx.devices)

    def _emit_pass(self, now: float, dirty_pages: int, remaining: int) -> int:
        number = self.state.note_sync(now, dirty_pages, remaining)
        if self.ctx.events_on():
            self.ctx.vm.emit("MIGRATION_PASS", {"pass": number})
        return number

    def _resync(self) -> np.ndarray:
        """A dirty-bitmap sync: the pages dirtied since the last one (MIGRATION_PASS)."""
        now = time.monotonic()
        self.ctx.workload.advance(now)
        fresh = self.ctx.guest.sync_dirty()
        self._last_sync = now
        number = self._emit_pass(now, int(fresh.size), self.state.ram.remaining)
        if self._multifd is not None:
            self._multifd.sync(number)
        return fresh

    def _throttle_check(self) -> None:
        """Auto-converge: throttle the guest when it dirties faster than we send."""
        ctx = self.ctx
        if not ctx.vm.config.enabled("auto-converge"):
            return
        src = self.state
        dirty_bytes_s = src.ram.dirty_pages_rate * PAGE_SIZE
        sent_bytes_s = src.bandwidth * 1000
        threshold = int(ctx.param("throttle-trigger-threshold"))
        if dirty_bytes_s * 100 <= sent_bytes_s * threshold:
            return
        self._high_count += 1
        if self._high_count < 2:
            return
        self._high_count = 0
        if src.throttle_percentage == 0:
            pct = int(ctx.param("cpu-throttle-initial"))
        else:
            pct = src.throttle_percentage + int(ctx.param("cpu-throttle-increment"))
        pct = min(pct, int(ctx.param("max-cpu-throttle")))
        src.throttle_percentage = pct
        ctx.workload.set_throttle(pct, time.monotonic())

    # -- stop-and-copy ----------------------------------------------------------------------
    async def _complete(
        self,
        channel: Channel,
        enc: StreamEncoder,
        sender: PageSender,
        unsent: list[bytes] | None = None,
    ) -> None:
        """Stop-and-copy; ``unsent``: records of the deciding sync, sent once the guest stopped."""
        ctx = self.ctx
        src = self.state
        vm = ctx.vm
        downtime_start = time.monotonic()
        prelaunch = vm.runstate == "prelaunch"  # never started: the destination stays so
        self._vm_was_running = stop_for_switchover(ctx, downtime_start)
        if unsent:
            await channel.send(unsent)
        if vm.config.enabled("pause-before-switchover"):
            src.set_status("pre-switchover")
            await self._continue.wait()
            if self._cancelled:
                return
            src.set_status("device")
        elif ctx.profile.since(10, 0):
            src.set_status("device")
        # the final sync, then everything that is left, without rate limit
        path = self._path
        assert path is not None
        qemu = path.qemu
        sender.resync(self._resync())
        qemu.switchover()
        await channel.send(
            [
                enc.sync(src.ram.dirty_sync_count),
                enc.end_of_precopy(self._vm_was_running, prelaunch=prelaunch),
            ]
        )
        while sender.remaining:
            pages, zero = sender.peek(STEP_PAGES)
            await path.send_step(
                channel, enc, sender, pages, zero, qemu.cost(pages, zero),
                downtime=True, exact_flushes=False, last_stage=True,
            )  # fmt: skip
        if self._multifd is not None:
            path.multifd_sync()  # the end of the last section (both versions)
            await self._multifd.finish()
        if self._legacy is not None:
            self._legacy.threads.flush()
        if self._mapped is not None:
            qemu.mapped_bitmaps(await self._mapped.finish())
        qemu.end_section(downtime=True, final=True)
        device_bytes = 0
        for dev in ctx.devices:
            chunks = dev.save_complete()
            await channel.send([p for c in chunks for p in enc.device_parts(c)])
            payload = sum(len(c.data) for c in chunks)
            src.count_device_bytes(payload)
            device_bytes += payload
        digests = [(dev.id, dev.digest()) for dev in ctx.devices]
        # hashing every page the guest wrote takes tens of ms: off the loop, so the process's
        # other monitors and migrations run meanwhile (the guest is stopped: nothing writes)
        ram_digest = await asyncio.get_running_loop().run_in_executor(None, ctx.guest.digest)
        await channel.send([enc.complete(ram_digest, digests)])
        qemu.complete(device_bytes)
        path.count()
        if self._return_path_on(channel):
            try:
                await asyncio.wait_for(self._resumed.wait(), _RESUME_TIMEOUT)
            except TimeoutError:
                logger.warning("destination did not report its resume; downtime is the source's")
            if not self._resumed_received and self._rp_lost:
                raise EOFError("the destination closed the return path before resuming")
        elif self._wants_return_path():
            # ``return-path``/``postcopy-ram`` on a transport without one (exec:, file:):
            # QEMU sends everything, then waits for a return path that cannot come, the
            # guest stopped; migrate_cancel leaves it ``cancelling`` (live 7.2 and 10.0)
            await channel.finish()
            self._stuck = True
            await asyncio.Event().wait()
        await channel.finish()
        vm.runstate = "postmigrate"
        src.ram.remaining = 0
        src.complete(time.monotonic(), downtime_start)
        if channel.file is not None:
            # QEMU syncs the file as its cleanup closes the channel, after ``completed``; in
            # a task of its own: this migration's task ends now, before a next ``migrate``
            # (after ``cont``) can start and own the driver's channel
            task = asyncio.get_running_loop().create_task(_sync_and_close(channel))
            _FILE_SYNCS.add(task)
            task.add_done_callback(_FILE_SYNCS.discard)
