"""The outgoing side after ``migrate-start-postcopy``: the switch, the page stream, recovery.

Why a module of its own: postcopy is a second phase with its own loop (requested pages
first, ``max-postcopy-bandwidth``), its own failure rule (a broken channel pauses, never
fails) and its own commands (``migrate-pause``, ``migrate`` with ``resume``).  Contract:
:class:`PostcopyOutgoing` is built by the source driver when its precopy loop decides to
switch; :meth:`~PostcopyOutgoing.run` returns when the migration completed (or was
cancelled); a broken channel leaves it waiting in ``postcopy-paused`` for
:meth:`~PostcopyOutgoing.resume`.  The decisions (what is owed, what goes next) are
:mod:`qmp_server.engine.postcopy`'s; the event orders are QEMU's, recorded live
(``docs/postcopy-facts.md``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable

import numpy as np

from qmp_server.engine.guest import PAGE_SIZE
from qmp_server.engine.migration import SourceMigration
from qmp_server.engine.postcopy import PostcopySendPlan, bitmap_of, indexes_of
from qmp_server.engine.precopy import RateLimit
from qmp_server.engine.stream import (
    Part,
    RpBitmapEnd,
    RpClosed,
    RpRecvBitmap,
    RpReqPages,
    RpShut,
    StreamEncoder,
    StreamError,
    encode_guest_pages_parts,
)
from qmp_server.engine.wire_cost import QemuStream
from qmp_server.errors import CommandError
from qmp_server.runtime.channel import (
    Address,
    Channel,
    command_uri,
    connect,
    fd_channel,
    fd_not_found,
)
from qmp_server.runtime.migration_context import (
    MigrationContext,
    error_report,
    stop_for_switchover,
)
from qmp_server.runtime.page_sender import STEP_PAGES, PageSender

__all__ = ["PAUSED_TEXT", "PREEMPT_ACK", "PostcopyOutgoing"]

#: The destination's first byte on a preempt channel it accepted.
PREEMPT_ACK = b"P"

#: What both QEMUs print when a postcopy channel breaks (live 7.2 and 10.0).
PAUSED_TEXT = "Detected IO failure for postcopy. Migration paused."
_USER_PAUSE = "Postcopy migration is paused by the user"
_PREEMPT_BROKEN = "Unable to write to socket: Broken pipe"
_CHANNEL_ERROR = "Channel error: Input/output error"
#: QEMU's MAX_WAIT: a RAM section ends after 50 ms even if the rate limit allows more.
_MAX_WAIT = 0.05
#: How long the source waits for the destination's bitmap on a recovery connection.
_RECOVER_TIMEOUT = 30.0


class _ConnectFailed(Exception):
    """``migrate`` ``resume`` could not connect."""

    def __init__(self, desc: str) -> None:
        super().__init__(desc)
        self.desc = desc


class _ChannelBroken(Exception):
    """The postcopy channel broke (a write failed, the return path closed, a pause)."""

    def __init__(self, desc: str) -> None:
        super().__init__(desc)
        self.desc = desc


class PostcopyOutgoing:
    """One outgoing migration from its switch to postcopy until it completes."""

    def __init__(
        self,
        ctx: MigrationContext,
        state: SourceMigration,
        qemu: QemuStream,
        *,
        read_return_path: Callable[[Channel | None], None],
        preempt: Channel | None = None,
    ) -> None:
        self.ctx = ctx
        self.state = state
        self.qemu = qemu
        self.plan: PostcopySendPlan | None = None
        #: starts the driver's return-path reader on a channel (None: stops it)
        self._read_return_path = read_return_path
        self._channel: Channel | None = None
        self._wake = asyncio.Event()
        self._broken: str | None = None
        self._resume_to: asyncio.Future[tuple[Address, Channel | None]] | None = None
        self._bitmap = bytearray()
        self._bitmap_done = asyncio.Event()
        self._last_sent = -1
        self._vm_was_running = True
        self.cancelled = False
        #: ``postcopy-preempt``: requested pages go on this second channel
        self._preempt = preempt
        self._preempt_enc: StreamEncoder | None = None
        #: the destination's SHUT (or a clean close): the load is over
        self._shut = asyncio.Event()

    # -- commands ---------------------------------------------------------------------------
    @property
    def paused(self) -> bool:
        return self.state.status == "postcopy-paused"

    def pause(self) -> None:
        """``migrate-pause`` on the source: shut the channel down; both sides pause."""
        self._break(_USER_PAUSE)

    def cancel(self) -> None:
        """7.2's ``migrate_cancel`` in postcopy: ``cancelling``, the channel shut, and
        nothing more (live: it stays ``cancelling``)."""
        self.cancelled = True
        self.state.set_status("cancelling")
        if self._channel is not None:
            self._channel.abort()
        self._wake.set()

    def resume(self, uri: str) -> None:
        """``migrate`` with ``resume: true``: reconnect and go on where postcopy stopped."""
        if not self.paused or self._resume_to is None or self._resume_to.done():
            raise CommandError("Cannot resume if there is no paused migration")
        address = command_uri(uri)
        prepared: Channel | None = None
        if address.scheme == "fd":
            # libvirt passes the new connection with getfd: QEMU takes it before it answers
            mon = self.ctx.vm.cur_fds
            fd = None if mon is None else mon.named.take(address.path)
            if fd is None:
                raise CommandError(fd_not_found(address))
            prepared = fd_channel(fd, outgoing=True)
        if self.ctx.profile.since(10, 0):
            # 10.0 enters postcopy-recover-setup before the command returns (live)
            self.state.set_status("postcopy-recover-setup")
        if prepared is not None:
            self.state.set_status("postcopy-recover")  # connected already (live 7.2, libvirt)
        self._resume_to.set_result((address, prepared))

    def _break(self, desc: str) -> None:
        if self._broken is None:
            self._broken = desc
        if self._channel is not None:
            self._channel.shutdown()
            self._channel.abort()
        self._wake.set()
        self._bitmap_done.set()
        self._shut.set()

    # -- return path ---------------------------------------------------------------------------
    def on_rp_event(self, event: object) -> bool:
        """A return-path message in postcopy; False for what the driver handles."""
        if isinstance(event, RpReqPages):
            if self.plan is not None:
                self.plan.request(event.start, event.count)
                self.state.ram.postcopy_requests = self.plan.requests
            self._wake.set()
        elif isinstance(event, RpRecvBitmap):
            self._bitmap += event.data
        elif isinstance(event, RpBitmapEnd):
            self._bitmap_done.set()
        elif (isinstance(event, RpShut) and event.status == 0) or (
            isinstance(event, RpClosed) and event.clean
        ):
            self._shut.set()
        elif (isinstance(event, RpShut) and event.status != 0) or (
            isinstance(event, RpClosed) and not event.clean
        ):
            self.channel_broken()
        else:
            return False
        return True

    def channel_broken(self) -> None:
        """The return path failed or closed early."""
        self._break(_CHANNEL_ERROR)

    # -- the switch ----------------------------------------------------------------------------
    async def switch(
        self,
        channel: Channel,
        enc: StreamEncoder,
        sender: PageSender,
        resync: Callable[[], np.ndarray],
        unsent: list[bytes],
        wait_continue: Callable[[], Awaitable[object]],
    ) -> None:
        """Stop the guest, tell the destination what it misses, send the device state and
        let the destination run: QEMU's postcopy_start, in each version's event order."""
        ctx = self.ctx
        src = self.state
        self._channel = channel
        downtime_start = time.monotonic()
        new_order = ctx.profile.since(10, 0)
        if ctx.vm.config.enabled("pause-before-switchover"):
            # STOP, pre-switchover, and migrate-continue first, in both versions (live)
            self._vm_was_running = stop_for_switchover(ctx, downtime_start)
            src.set_status("pre-switchover")
            await wait_continue()
            src.set_status("device" if new_order else "postcopy-active")
        else:
            if not new_order:
                src.set_status("postcopy-active")  # 7.2: before STOP (live)
            self._vm_was_running = stop_for_switchover(ctx, downtime_start)
            if new_order:
                src.set_status("device")
        sender.resync(resync())
        owed = sender.pages[sender.cursor :]
        guest = ctx.guest
        self.plan = PostcopySendPlan.at_switch(guest.page_count, owed, sender.last_page)
        self._last_sent = sender.last_page
        qemu = self.qemu
        qemu.switchover()
        parts: list[Part] = [
            *unsent,
            enc.sync(src.ram.dirty_sync_count),
            enc.postcopy_discard(bitmap_of(owed, guest.page_count)),
            enc.postcopy_listen(),
        ]
        device_bytes = 0
        for dev in ctx.devices:
            for chunk in dev.save_complete():
                parts += enc.device_parts(chunk)
                device_bytes += len(chunk.data)
                src.count_device_bytes(len(chunk.data))
        if self._preempt is not None and not new_order:
            await channel.send(parts)  # 7.2 sets the preempt channel up before RUN (live)
            await channel.flush()
            parts = []
            await self._open_preempt()
            if self._broken is not None:
                return  # no RUN: the destination's load fails, this side pauses (live 7.2)
        parts.append(enc.postcopy_run(self._vm_was_running))
        await channel.send(parts)
        if self._preempt is not None and new_order:
            await channel.flush()
            await self._open_preempt()
        qemu.end_section(downtime=True, final=True)
        qemu.postcopy_switch(device_bytes)
        src.account(qemu)
        src.ram.remaining = self.plan.remaining * PAGE_SIZE
        src.downtime_ms = max(int((time.monotonic() - downtime_start) * 1000), 0)
        if new_order:
            src.set_status("postcopy-active")

    async def _open_preempt(self) -> None:
        """Wait for the destination to take the preempt channel (it drops it, and the
        write fails, when its ``postcopy-preempt`` is off)."""
        preempt = self._preempt
        assert preempt is not None
        try:
            ack = await asyncio.wait_for(preempt.recv(1), _RECOVER_TIMEOUT)
        except (OSError, TimeoutError):
            ack = b""
        if ack != PREEMPT_ACK:
            self._preempt = None
            preempt.abort()
            self._break(_PREEMPT_BROKEN)
            return
        self._preempt_enc = StreamEncoder()
        await preempt.send([self._preempt_enc.recover(self.ctx.guest.size_bytes)])

    # -- the page stream -----------------------------------------------------------------------
    async def run(self, channel: Channel, enc: StreamEncoder) -> None:
        """Stream what is owed until none is; pause on a broken channel, wait for a resume."""
        while True:
            try:
                await self._stream(channel, enc)
                await self._finish(channel, enc)
                return
            except (OSError, EOFError, StreamError, _ChannelBroken) as err:
                if self.cancelled:
                    return
                desc = self._broken or (err.desc if isinstance(err, _ChannelBroken) else None)
                channel.abort()
                self._read_return_path(None)
                resumed = await self._pause(desc or _CHANNEL_ERROR)
                if resumed is None:
                    return
                channel, enc = resumed

    async def _stream(self, channel: Channel, enc: StreamEncoder) -> None:
        plan = self.plan
        assert plan is not None
        ctx = self.ctx
        src = self.state
        qemu = self.qemu
        guest = ctx.guest
        limit = RateLimit(int(ctx.param("max-postcopy-bandwidth")))
        period_base = qemu.rate_bytes
        # QEMU sends postcopy pages in RAM sections as in precopy: each ends when the rate
        # limit is exceeded or after 50 ms, with an EOS counted as postcopy bytes
        section_end: float | None = None
        while plan.remaining:
            if self._broken is not None:
                raise _ChannelBroken(self._broken)
            now = time.monotonic()
            if src.period_due(now):
                src.update_period(now, int(ctx.param("downtime-limit")))
                limit.set_bandwidth(int(ctx.param("max-postcopy-bandwidth")))
                period_base = qemu.rate_bytes
            pages, urgent = plan.next_pages(STEP_PAGES)
            if not urgent and limit.exceeded(qemu.rate_bytes - period_base):
                if section_end is not None:
                    qemu.end_section(downtime=False)
                    section_end = None
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), src.period_left(now) or 0.001)
                continue
            if section_end is None:
                qemu.begin_section()
                section_end = now + _MAX_WAIT
            zero = guest.zero_mask(pages)
            cost = qemu.cost(pages, zero)
            if not urgent and not limit.unlimited:
                count = qemu.fit(cost, period_base + limit.allowance)
                count = max(count, 1)
                pages, zero, cost = pages[:count], zero[:count], cost.head(count)
            out, out_enc = channel, enc
            if urgent and self._preempt is not None and self._preempt_enc is not None:
                out, out_enc = self._preempt, self._preempt_enc
            encoded = encode_guest_pages_parts(
                out_enc, guest, pages, zero=zero, max_pages=STEP_PAGES
            )
            await out.send(encoded.parts)
            plan.sent(pages)
            self._last_sent = int(pages[-1])
            qemu.add_pages(pages, cost, downtime=True, exact_flushes=not limit.unlimited)
            src.account(qemu)
            src.ram.remaining = plan.remaining * PAGE_SIZE
            if not plan.remaining or time.monotonic() >= section_end:
                qemu.end_section(downtime=False)
                section_end = None
            await asyncio.sleep(0)  # requests, QMP and the destination's guest run between steps
        if section_end is not None:
            qemu.end_section(downtime=False)
        src.account(qemu)

    async def _finish(self, channel: Channel, enc: StreamEncoder) -> None:
        ctx = self.ctx
        digests = [(dev.id, dev.digest()) for dev in ctx.devices]
        await channel.send([enc.complete(ctx.guest.digest(), digests)])
        # QEMU's source completes once the destination closed the return path (its SHUT):
        # a destination that never loads keeps it in postcopy-active (live, preempt)
        await self._shut.wait()
        if self._broken is not None:
            raise _ChannelBroken(self._broken)
        await channel.finish()
        if self._preempt is not None:
            self._preempt.abort()
        ctx.vm.runstate = "postmigrate"
        self.state.ram.remaining = 0
        self.state.complete(time.monotonic(), None)

    # -- pause and recovery --------------------------------------------------------------------
    async def _pause(self, desc: str) -> tuple[Channel, StreamEncoder] | None:
        """``postcopy-paused`` until a resume connects; None when cancelled."""
        self._report_pause(desc)
        loop = asyncio.get_running_loop()
        while True:
            self._broken = None
            self._resume_to = loop.create_future()
            address, prepared = await self._resume_to
            if self.cancelled:
                return None
            try:
                return await self._reconnect(address, prepared)
            except _ConnectFailed as err:
                # back to postcopy-paused, quietly (live: 7.2 shows no event, 10.0 the
                # failure as error-desc after postcopy-recover-setup)
                error_report(err.desc)
                if self.ctx.profile.since(10, 0):
                    self.state.error_desc = err.desc
                self.state.set_status("postcopy-paused")
            except (OSError, StreamError, TimeoutError, EOFError):
                self._report_pause(self._broken or _CHANNEL_ERROR)

    def _report_pause(self, desc: str) -> None:
        """Enter ``postcopy-paused`` after a broken channel, with each version's stderr."""
        src = self.state
        self._channel = None
        if self.ctx.profile.since(10, 0):
            src.error_desc = desc
            if desc == _CHANNEL_ERROR:
                # the RAM section's save handler fails first (live 10.0)
                error_report("failed to save SaveStateEntry with id(name): 1(ram): -5")
            error_report("Unable to shutdown socket: Bad file descriptor")
        src.set_status("postcopy-paused")
        error_report(PAUSED_TEXT)
        if desc == _PREEMPT_BROKEN and not self.ctx.profile.since(10, 0):
            for _ in range(3):  # 7.2's return-path thread on the shut channel (live)
                error_report("Unable to read from socket: Bad file descriptor")

    async def _reconnect(
        self, address: Address, prepared: Channel | None = None
    ) -> tuple[Channel, StreamEncoder]:
        """The recovery handshake: connect, learn what the destination misses, go on."""
        src = self.state
        try:
            channel = prepared or await connect(address, link=self.ctx.link)
        except OSError as err:
            reason = os.strerror(err.errno) if err.errno else str(err)
            raise _ConnectFailed(f"Failed to connect to '{address.describe()}': {reason}") from None
        self._channel = channel
        src.set_status("postcopy-recover")
        self._bitmap = bytearray()
        self._bitmap_done.clear()
        self._shut.clear()  # the break set it: completion waits for this connection's SHUT
        self._read_return_path(channel)
        enc = StreamEncoder()
        guest = self.ctx.guest
        await channel.send([enc.recover(guest.size_bytes)])
        done = asyncio.ensure_future(self._bitmap_done.wait())
        try:
            await asyncio.wait_for(done, _RECOVER_TIMEOUT)
        finally:
            done.cancel()
        if self._broken is not None:
            raise EOFError(self._broken)
        missing = indexes_of(bytes(self._bitmap), guest.page_count)
        assert self.plan is not None
        self.plan.resume(missing, self._last_sent)
        src.ram.remaining = self.plan.remaining * PAGE_SIZE
        await channel.send([enc.postcopy_resume()])
        src.error_desc = None
        src.set_status("postcopy-active")
        return channel, enc
