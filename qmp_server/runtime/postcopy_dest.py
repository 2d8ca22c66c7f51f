"""The incoming side after the switch to postcopy: the guest runs while its pages arrive.

Why a module of its own: from ``POSTCOPY_LISTEN`` on, the destination is QEMU's postcopy
listen thread and fault thread -- the guest runs, missing pages are requested over the return
path, a broken channel pauses instead of failing, ``migrate-recover`` accepts a new
connection.  Contract: the incoming driver hands the open channel and decoder to
:meth:`PostcopyIncoming.run` at ``POSTCOPY_LISTEN``; ``run`` returns once the migration
completed, failed (the process exits, as QEMU's does) or paused.  In ``postcopy-paused``,
:meth:`recover` listens on a new address and :meth:`pause` shuts the channel down.
Decisions are :class:`~qmp_server.engine.postcopy.PostcopyFaults`'.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

import numpy as np

from qmp_server.engine.devices import DeviceLoadError, VfioSimLoader
from qmp_server.engine.guest import GuestMemory
from qmp_server.engine.migration import IncomingMigration
from qmp_server.engine.postcopy import PageRequests, PostcopyFaults, indexes_of
from qmp_server.engine.stream import (
    Complete,
    DeviceData,
    EndOfStream,
    NeedData,
    PostcopyResume,
    PostcopyRun,
    RamList,
    RamRun,
    Recover,
    ReturnPathEncoder,
    StreamDecoder,
    StreamError,
    ZeroList,
    ZeroRun,
)
from qmp_server.errors import CommandError
from qmp_server.runtime.channel import Channel, command_uri, listen, listening_address
from qmp_server.runtime.guest_runtime import guest_workload
from qmp_server.runtime.migration_context import MigrationContext, error_report
from qmp_server.runtime.postcopy_source import PAUSED_TEXT
from qmp_server.runtime.stream_reader import stream_events

__all__ = ["PostcopyIncoming"]

_READ_SIZE = 8 << 20
_YIELD_BYTES = 4 << 20


class PostcopyIncoming:
    """One incoming migration from ``POSTCOPY_LISTEN`` until it completes."""

    def __init__(
        self,
        ctx: MigrationContext,
        state: IncomingMigration,
        guest: GuestMemory,
        loaders: dict[str, VfioSimLoader],
        discard: bytes,
        *,
        fail: Callable[[str], None],
    ) -> None:
        self.ctx = ctx
        self.state = state
        self.guest = guest
        self.loaders = loaders
        self._fail = fail
        vcpus = ctx.vm.domain.topology.cpus if ctx.vm.domain is not None else 1
        self.faults = PostcopyFaults(
            guest, indexes_of(discard, guest.page_count), vcpus, self._request
        )
        self._rp = ReturnPathEncoder()
        self._channel: Channel | None = None
        self._running = False  # POSTCOPY_RUN came: the guest is this process's
        self._complete: Complete | None = None
        self._listener: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None
        self._preempt_task: asyncio.Task[None] | None = None

    def add_preempt(self, channel: Channel) -> None:
        """``postcopy-preempt``: requested pages also arrive on this channel."""
        self._preempt_task = asyncio.get_running_loop().create_task(self._read_preempt(channel))

    async def _read_preempt(self, channel: Channel) -> None:
        decoder = StreamDecoder(recovery=True)
        try:
            while True:
                data = await channel.recv(1 << 20)
                decoder.receive_data(data)
                while True:
                    event = decoder.next_event()
                    if isinstance(event, NeedData):
                        break
                    if isinstance(event, (RamRun, RamList, ZeroRun, ZeroList)):
                        self._load_pages(event)
                if not data:
                    return
        except (StreamError, OSError):
            return  # the main channel decides (a source that paused closed both)
        finally:
            channel.abort()

    # -- commands ---------------------------------------------------------------------------
    def pause(self) -> None:
        """``migrate-pause`` on the destination: shut the channel; both sides pause."""
        if self._channel is not None:
            self._channel.shutdown()

    def recover(self, uri: str) -> None:
        """``migrate-recover URI``: listen there for the source's ``migrate`` ``resume``."""
        if not self.ctx.profile.since(10, 0) and self.ctx.events_on():
            # 7.2 announces ``setup`` first, even for a URI it then refuses, and stays in
            # postcopy-paused (live)
            self.ctx.vm.emit("MIGRATION", {"status": "setup"})
        address = command_uri(uri)
        if address.scheme not in ("tcp", "unix"):
            raise CommandError(f"unknown migration protocol: {uri}")
        try:
            sock = listen(address)
        except OSError as err:
            raise CommandError(f"Failed to bind socket: {err.strerror or err}") from None
        self.state.socket_address = listening_address(sock, address)
        # a second migrate-recover replaces the first (live: both are accepted)
        if self._task is not None:
            self._task.cancel()
        if self._listener is not None:
            self._listener.close()
        self._listener = sock
        self._task = asyncio.get_running_loop().create_task(self._accept(sock))

    def close(self) -> None:
        if self._preempt_task is not None:
            self._preempt_task.cancel()
        if self._task is not None:
            self._task.cancel()
        if self._listener is not None:
            self._listener.close()
        if self._channel is not None:
            self._channel.abort()

    # -- the stream --------------------------------------------------------------------------
    def _request(self, requests: PageRequests) -> None:
        channel = self._channel
        if channel is None or self.state.status != "postcopy-active":
            return  # asked again when the source resumes
        channel.send_nowait(b"".join(self._rp.req_pages(s, c) for s, c in requests.runs))

    async def run(self, channel: Channel, decoder: StreamDecoder) -> None:
        """From ``POSTCOPY_LISTEN``: ``postcopy-active`` until the end, or a pause."""
        self.state.set_status("postcopy-active")
        await self._read(channel, decoder)

    async def _read(self, channel: Channel, decoder: StreamDecoder) -> None:
        self._channel = channel
        try:
            async for event in stream_events(
                channel, decoder, read_size=_READ_SIZE, yield_bytes=_YIELD_BYTES
            ):
                if await self._on_event(event):
                    return
        except asyncio.CancelledError:
            raise
        except (StreamError, OSError):
            channel.abort()
            self._channel = None
            if not self._running:
                # the guest never ran here: QEMU's listen thread fails the load (live 7.2)
                error_report("check_section_footer: Read section footer failed: -5")
                error_report("postcopy_ram_listen_thread: loadvm failed: -22")
                error_report("error while loading state for instance 0x0 of device 'kvm-tpr-opt'")
                self._fail("Operation not permitted")
                return
            self._pause()
        except DeviceLoadError as err:
            channel.abort()
            self._channel = None
            self._fail(str(err))

    async def _on_event(self, event: object) -> bool:
        """Apply one event; True when the migration is over."""
        if isinstance(event, (RamRun, RamList, ZeroRun, ZeroList)):
            self._load_pages(event)
        elif isinstance(event, DeviceData):
            found = self.loaders.get(event.chunk.device_id)
            if found is None:
                raise StreamError(f"Unknown savevm section '{event.chunk.device_id}'")
            found.receive(event.chunk, time.monotonic())
        elif isinstance(event, PostcopyRun):
            self._start_guest(event.running)
        elif isinstance(event, Complete):
            self._complete = event
        elif isinstance(event, EndOfStream):
            self._finish()
            return True
        elif isinstance(event, PostcopyResume):
            self.state.set_status("postcopy-active")
            self._request(self.faults.pending_requests())
        # SYNC markers and checkpoints need nothing here
        return False

    def _load_pages(self, event: RamRun | RamList | ZeroRun | ZeroList) -> None:
        guest = self.guest
        faults = self.faults
        if isinstance(event, (RamRun, ZeroRun)):
            pages = np.arange(event.start, event.start + event.count, dtype=np.int64)
        else:
            pages = np.asarray(event.indexes, dtype=np.int64)
        wanted = faults.wanted(pages)
        keep = pages[wanted]
        if keep.size:
            if isinstance(event, (ZeroRun, ZeroList)):
                guest.load_zero_page_list(keep)
            elif wanted.all():
                guest.load_page_list(pages, event.data)
            else:
                data = memoryview(event.data)
                size = len(data) // pages.size
                picked = b"".join(
                    data[k * size : (k + 1) * size] for k in np.flatnonzero(wanted).tolist()
                )
                guest.load_page_list(keep, picked)
        faults.received(keep, time.monotonic())

    def _start_guest(self, source_running: bool) -> None:
        """``POSTCOPY_RUN``: this process now runs the guest it is still receiving."""
        ctx = self.ctx
        ctx.guest = self.guest
        workload = guest_workload(
            self.guest,
            ctx.layout,
            ctx.workload.rate,
            seed=11,
            write_bytes=ctx.workload.write_bytes,
            working_set=ctx.workload.working_set_bytes,
        )
        workload.faults = self.faults
        ctx.workload = workload
        self._running = True
        vm = ctx.vm
        if vm.autostart and source_running:
            vm.start()
        else:
            vm.runstate = "paused"

    def _finish(self) -> None:
        complete = self._complete
        assert complete is not None
        faults = self.faults
        if faults.missing_count:
            raise StreamError(f"postcopy ended with {faults.missing_count} pages missing")
        if faults.received_digest() != complete.ram_digest:
            raise StreamError("RAM digest mismatch after loading the migration stream")
        for device_id, digest in complete.device_digests:
            target = self.loaders.get(device_id)
            if target is None or target.digest() != digest:
                raise StreamError(f"{device_id}: device state digest mismatch")
        self.ctx.workload.faults = None
        if self.ctx.vm.config.enabled("postcopy-blocktime"):
            self.state.blocktime = faults.blocktime(time.monotonic())
        if self._channel is not None:
            self._channel.send_nowait(self._rp.shut(0))
        self.state.set_status("completed")

    # -- pause and recovery -----------------------------------------------------------------
    def _pause(self) -> None:
        if self.ctx.profile.since(10, 0):
            error_report("Unable to shutdown socket: Bad file descriptor")
        else:
            error_report("check_section_footer: Read section footer failed: -5")
        error_report(PAUSED_TEXT)
        self.state.set_status("postcopy-paused")

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            conn, _ = await loop.sock_accept(listener)
        finally:
            listener.close()
            if self._listener is listener:
                self._listener = None
        channel = Channel(conn, return_path=True)
        decoder = StreamDecoder(zero_copy=True, recovery=True)
        self.state.set_status("postcopy-recover")
        channel.send_nowait(self._rp.open() + self._rp.recv_bitmap(self.faults.missing_bitmap()))
        self._channel = channel
        await self._read_recovery_start(channel, decoder)

    async def _read_recovery_start(self, channel: Channel, decoder: StreamDecoder) -> None:
        """The recovery connection opens with ``RECOVER``; then it is the postcopy stream."""
        try:
            while True:
                event = decoder.next_event()
                if isinstance(event, Recover):
                    if event.ram_size != self.guest.size_bytes:
                        raise StreamError("recovery for a guest of another size")
                    break
                if not isinstance(event, NeedData):
                    raise StreamError("a recovery connection must start with RECOVER")
                view = decoder.get_buffer(64)
                n = await channel.recv_into(view)
                del view
                decoder.buffer_updated(n)
        except (StreamError, OSError):
            channel.abort()
            self._channel = None
            self._pause()
            return
        await self._read(channel, decoder)
