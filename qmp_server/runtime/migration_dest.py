"""The incoming migration: ``-incoming`` / ``migrate-incoming``, the loader, the resume.

Why a module of its own: the destination is QEMU's incoming coroutine, with its own state
(``mis->state``), its own device loaders and its own failure rule (the process exits); it
shares nothing with the source but the process's guest (:mod:`migration_context`).
Contract: one :class:`DestinationDriver` per process; :meth:`~DestinationDriver.start_incoming`
listens (or opens) before it returns, as QEMU does, and a task loads one stream.  On success
the context's ``guest`` and ``workload`` are replaced by the received guest and the VM runs
(or stays paused); on failure ``state`` is ``failed`` and, unless ``exit-on-error`` was false,
``exit_process(1, desc)`` is called.
"""

from __future__ import annotations

import asyncio
import io
import os
import socket
import time
from collections.abc import Callable
from typing import cast

from qmp_server.engine.compression import Method, MultifdDecompressor
from qmp_server.engine.devices import DeviceLoadError, SwitchoverAckGate, VfioSimLoader
from qmp_server.engine.guest import GuestMemory
from qmp_server.engine.migration import IncomingMigration
from qmp_server.engine.stream import (
    Complete,
    DeviceData,
    EndOfPrecopy,
    EndOfStream,
    MappedBlock,
    MultifdSetup,
    OpenReturnPath,
    PostcopyAdvise,
    PostcopyDiscard,
    PostcopyListen,
    ReturnPathEncoder,
    StreamDecoder,
    StreamError,
    StreamHeader,
    SyncMarker,
    apply_ram_event,
    guest_for_header,
)
from qmp_server.errors import CommandError
from qmp_server.runtime.channel import (
    NOT_SEEKABLE,
    Address,
    Channel,
    exec_channel,
    fd_channel,
    fd_not_found,
    listen,
    listening_address,
    open_for_read,
    parse_uri,
)
from qmp_server.runtime.guest_runtime import guest_workload
from qmp_server.runtime.mapped_ram import load_block, open_direct
from qmp_server.runtime.migration_context import MigrationContext, error_report
from qmp_server.runtime.multifd_dest import MultifdIncoming
from qmp_server.runtime.multifd_source import CHANNEL_ACK
from qmp_server.runtime.postcopy_dest import PostcopyIncoming
from qmp_server.runtime.postcopy_source import PREEMPT_ACK
from qmp_server.runtime.stream_reader import stream_events

__all__ = ["DestinationDriver"]

#: Receive size asked of the kernel per call on the destination.
_READ_SIZE = 8 << 20
#: The destination yields to the event loop (QMP) at least once per this many bytes.
_YIELD_BYTES = 32 << 20


class DestinationDriver:
    """The incoming side of one VM, as QEMU's incoming migration drives it."""

    def __init__(self, ctx: MigrationContext, exit_process: Callable[[int, str], None]) -> None:
        self.ctx = ctx
        self.exit_process = exit_process
        self.state = IncomingMigration(ctx.profile, ctx.vm.emit, ctx.events_on)
        #: the device loaders of the last load (empty before one started)
        self.loaders: list[VfioSimLoader] = []
        self._task: asyncio.Task[None] | None = None
        self._listener: socket.socket | None = None
        self._channel: Channel | None = None
        self._armed: set[VfioSimLoader] = set()
        #: migrate-incoming exit-on-error (9.1+): a failed load ends the process
        self._exit_on_error = True
        #: the load after the switch to postcopy
        self.postcopy: PostcopyIncoming | None = None
        #: ``postcopy-preempt``: the second connection, for requested pages
        self.preempt_channel: Channel | None = None
        self._preempt_ready = asyncio.Event()
        #: ``multifd``: the extra connections that carry the pages
        self.multifd: MultifdIncoming | None = None
        #: ``file:``: where the stream starts in the file (``mapped-ram`` offsets are from it)
        self._file_base = 0
        self._file_path = ""

    def pause(self) -> None:
        """``migrate-pause`` on the destination in postcopy."""
        if self.postcopy is not None:
            self.postcopy.pause()

    def recover(self, uri: str) -> None:
        """``migrate-recover`` (the command checked the state)."""
        if self.postcopy is None:
            raise CommandError("Migrate recover can only be run when postcopy is paused.")
        self.postcopy.recover(uri)

    def close(self) -> None:
        if self.postcopy is not None:
            self.postcopy.close()
        if self._task is not None:
            self._task.cancel()
        if self._channel is not None:
            self._channel.abort()
        if self._listener is not None:
            listener = self._listener
            if self._task is not None and not self._task.done():
                # the task's accept is still watched: close once it has left the selector
                self._task.add_done_callback(lambda _: listener.close())
            else:
                listener.close()
        if self.multifd is not None:
            self.multifd.close()

    def start_incoming(
        self, uri: str, *, at_startup: bool = False, exit_on_error: bool = True
    ) -> None:
        """``-incoming URI`` or ``migrate-incoming``: listen (or read) and load a guest.

        Synchronous like QEMU's: the socket listens before the command returns.
        ``exit_on_error`` (``migrate-incoming`` ``exit-on-error``, 9.1+): whether a failed
        load ends the process (QEMU's only behaviour before 9.1) or leaves it in ``failed``.
        """
        cfg = self.ctx.vm.config
        profile = self.ctx.profile
        inc = self.state
        self._exit_on_error = exit_on_error
        # QEMU 10.0 parses the URI before it enters ``setup``; 7.2 announced setup first
        parse_first = profile.since(10, 0)
        if not at_startup and not parse_first:
            inc.announce_setup()
        try:
            address = parse_uri(uri, file_ok=profile.since(8, 2))
        except LookupError:
            cfg.note_incoming(uri, started=False)
            raise CommandError(f"unknown migration protocol: {uri}") from None
        except ValueError as err:
            cfg.note_incoming(uri, started=False)
            raise CommandError(str(err)) from None
        if cfg.enabled("mapped-ram") and address.scheme not in ("file", "fd"):
            cfg.note_incoming(uri, started=False)
            raise CommandError(NOT_SEEKABLE)  # nothing changes (live 10.0)
        if (
            profile.since(9, 0)
            and cfg.enabled("multifd")
            and address.scheme not in ("tcp", "unix")
            and not (address.scheme == "file" and cfg.enabled("mapped-ram"))
        ):
            cfg.note_incoming(uri, started=False)
            raise CommandError("Migration requires multi-channel URIs (e.g. tcp)")
        if inc.status != "none":
            # a transport that failed to start left ``setup`` behind (QEMU 10.0, live)
            raise CommandError(f"Illegal migration incoming state: {inc.status}")
        if not at_startup and parse_first:
            inc.announce_setup()
        loop = asyncio.get_running_loop()
        if address.scheme in ("tcp", "unix"):
            try:
                backlog = 1
                if cfg.enabled("multifd"):  # the channels connect right after the main one
                    backlog += int(self.ctx.param("multifd-channels")) + 2
                sock = listen(address, backlog)
            except OSError as err:
                cfg.note_incoming(uri, started=False)
                reason = os.strerror(err.errno) if err.errno else str(err)
                where = f" to {address.path}" if address.scheme == "unix" else ""
                raise CommandError(f"Failed to bind socket{where}: {reason}") from None
            inc.socket_address = listening_address(sock, address)
            cfg.note_incoming(uri, started=True)
            inc.started = True
            self._listener = sock
            self._task = loop.create_task(self._accept(sock))
            return
        if address.scheme == "fd":
            fd = self._incoming_fd(address, at_startup)
            if fd is None:
                cfg.note_incoming(uri, started=False)
                if not at_startup and not address.path[:1].isdigit():
                    raise CommandError(fd_not_found(address))
                raise CommandError(f"Invalid file descriptor number '{address.path}'")
            cfg.note_incoming(uri, started=True)
            inc.started = True
            try:
                channel = fd_channel(fd, outgoing=False)
            except OSError:
                return  # QEMU accepts a number that is no descriptor and waits in setup
            self._task = loop.create_task(self._load(channel))
            return
        opened: io.BufferedIOBase | None = None
        if address.scheme == "file":
            try:  # QEMU opens the file before the command returns (or start-up goes on)
                opened = open_for_read(address.path, address.offset)
            except OSError as err:
                cfg.note_incoming(uri, started=False)
                reason = os.strerror(err.errno) if err.errno else str(err)
                raise CommandError(f"Could not open '{address.path}': {reason}") from None
        cfg.note_incoming(uri, started=True)
        inc.started = True
        self._task = loop.create_task(self._load_from(address, opened))

    def _incoming_fd(self, address: Address, at_startup: bool) -> int | None:
        """The descriptor of ``fd:NAME``: a number is an inherited descriptor; a name, one the
        current monitor got with getfd (from the command line there is no monitor)."""
        name = address.path
        if name.isdigit():
            return int(name)
        if at_startup or name[:1].isdigit():
            return None
        mon = self.ctx.vm.cur_fds
        return None if mon is None else mon.named.take(name)

    async def _accept(self, listener: socket.socket) -> None:
        """One migration per listener.  QEMU keeps listening while it loads: with
        ``postcopy-preempt`` the second connection is the preempt channel (7.2 waits for it
        before it loads anything, 10.0 at the switch), any other is dropped (live)."""
        loop = asyncio.get_running_loop()
        try:
            conn, _ = await loop.sock_accept(listener)
        except BaseException:
            listener.close()
            self._listener = None
            raise
        if self.ctx.vm.config.enabled("multifd"):
            self.multifd = MultifdIncoming(
                int(self.ctx.param("multifd-channels")), new_decompressor
            )
        extra = loop.create_task(self._accept_extra(listener))
        try:
            if self._wants_preempt() and not self.ctx.profile.since(10, 0):
                await self._preempt_ready.wait()
            await self._load(Channel(conn, return_path=True))
        finally:
            extra.cancel()
            # its pending accept leaves the loop's selector before the descriptor is closed:
            # closed first, a socket the next VM of a fleet opens under the same number would
            # never be watched (seen as a fleet monitor that accepts and never greets)
            await asyncio.wait([extra])
            listener.close()
            self._listener = None

    def _wants_preempt(self) -> bool:
        cfg = self.ctx.vm.config
        return cfg.enabled("postcopy-ram") and cfg.enabled("postcopy-preempt")

    async def _accept_extra(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        held: list[socket.socket] = []
        while True:
            conn, _ = await loop.sock_accept(listener)
            multifd = self.multifd
            if multifd is not None and multifd.connected < multifd.channels:
                conn.send(CHANNEL_ACK)  # a fresh socket's buffer takes one byte
                multifd.add_connection(conn)
                continue
            if multifd is not None and self.ctx.profile.since(10, 0):
                # more channels than this side's multifd-channels: 10.0 reports it once and
                # both sides wait in setup (live)
                if not held:
                    error_report("Failed to peek at channel")
                held.append(conn)
                continue
            if self._wants_preempt() and self.preempt_channel is None:
                channel = Channel(conn, return_path=True)
                channel.send_nowait(PREEMPT_ACK)
                self.preempt_channel = channel
                self._preempt_ready.set()
                continue
            error_report(
                "socket_accept_incoming_migration: Extra incoming migration connection; ignoring"
            )
            conn.close()

    async def _load_from(self, address: Address, file: io.BufferedIOBase | None = None) -> None:
        if address.scheme == "file":
            if file is None:
                try:
                    file = open_for_read(address.path, address.offset)
                except OSError as err:
                    self._fail(f"{address.path}: {os.strerror(err.errno or 0)}")
                    return
            self._file_base = address.offset
            self._file_path = address.path
            await self._load(Channel(file=file))
            return
        await self._load(await exec_channel(address.command, outgoing=False))

    async def _load(self, channel: Channel) -> None:
        inc = self.state
        if self.multifd is None:
            inc.set_status("active")
        self._channel = channel
        decoder = StreamDecoder(zero_copy=True)
        rp = ReturnPathEncoder()
        gate = SwitchoverAckGate(self.ctx.ack_enabled())
        loaders = {cfg.id: VfioSimLoader(cfg, gate) for cfg in self.ctx.device_configs}
        self.loaders = list(loaders.values())
        guest: GuestMemory | None = None
        complete: Complete | None = None
        source_running = True
        source_prelaunch = False
        discard: bytes | None = None

        def send_rp(data: bytes) -> None:
            if channel.has_return_path:
                channel.send_nowait(data)

        def send_ack() -> None:
            send_rp(rp.switchover_ack())

        def poll_loaders() -> None:
            now = time.monotonic()
            for loader in loaders.values():
                if loader.poll(now):
                    send_ack()

        try:
            async for event in stream_events(
                channel,
                decoder,
                read_size=_READ_SIZE,
                yield_bytes=_YIELD_BYTES,
                on_data=poll_loaders if loaders else None,
            ):
                multifd = self.multifd
                if guest is not None and (
                    multifd.apply_main(event) if multifd else apply_ram_event(guest, event)
                ):
                    continue
                if isinstance(event, SyncMarker):
                    if multifd is not None:
                        multifd.main_generation = event.pass_number
                    continue
                if isinstance(event, StreamHeader):
                    # with multifd, QEMU starts loading once every channel is there (the
                    # source sends its header after that)
                    inc.set_status("active")
                    size = self.ctx.guest.size_bytes
                    if event.ram_size != size:
                        raise StreamError(
                            f"Length mismatch: pc.ram: {event.ram_size:#x} in != "
                            f"{size:#x}: Invalid argument"
                        )
                    self._check_capabilities(event)
                    guest = guest_for_header(
                        event, self.ctx.layout.firmware_pages, self.ctx.layout.firmware_content
                    )
                elif isinstance(event, DeviceData):
                    found = loaders.get(event.chunk.device_id)
                    if found is None:
                        raise StreamError(
                            f"Unknown savevm section or instance '{event.chunk.device_id}' 0. "
                            "Make sure that your current VM setup matches your saved VM setup, "
                            "including any hotplugged devices"
                        )
                    if found.receive(event.chunk, time.monotonic()):
                        send_ack()
                    self._arm_loader_timer(found, send_ack)
                elif isinstance(event, OpenReturnPath):
                    send_rp(rp.open())
                    if gate.open_return_path():
                        send_ack()
                elif isinstance(event, EndOfPrecopy):
                    source_running = event.running
                    source_prelaunch = event.prelaunch
                elif isinstance(event, PostcopyAdvise):
                    if not self.ctx.vm.config.enabled("postcopy-ram"):
                        # QEMU's text counts the 16 bytes its advise command carries
                        error_report("RAM postcopy is disabled but have 16 byte advise")
                        raise StreamError("Invalid argument")
                elif isinstance(event, PostcopyDiscard):
                    discard = event.bitmap
                elif isinstance(event, MappedBlock):
                    assert guest is not None
                    await self._load_mapped(channel, guest, event)
                elif isinstance(event, MultifdSetup):
                    assert guest is not None
                    if multifd is None:
                        # what QEMU's destination without multifd reports (live)
                        if self.ctx.profile.since(10, 0):
                            error_report("Not a migration stream")
                        else:
                            error_report("Unknown combination of migration flags: 0x0")
                            error_report(
                                "error while loading state for instance 0x0 of device 'ram'"
                            )
                        raise StreamError("Invalid argument")
                    multifd.setup(event, guest)
                elif isinstance(event, PostcopyListen):
                    assert guest is not None and discard is not None
                    if multifd is not None:
                        await multifd.wait_done()  # the channels' pages come first
                    if self._wants_preempt():
                        await self._preempt_ready.wait()  # 10.0 waits here (live)
                    post = self.postcopy = PostcopyIncoming(
                        self.ctx, inc, guest, loaders, discard, fail=self._fail
                    )
                    if self.preempt_channel is not None:
                        post.add_preempt(self.preempt_channel)
                    await post.run(channel, decoder)
                    return
                elif isinstance(event, Complete):
                    complete = event
                elif isinstance(event, EndOfStream):
                    assert guest is not None and complete is not None
                    if multifd is not None:
                        await multifd.wait_done()
                    await self._finish_load(guest, complete, loaders, send_rp, rp, source_running,
                                            prelaunch=source_prelaunch)  # fmt: skip
                    return
        except asyncio.CancelledError:
            raise
        except (StreamError, DeviceLoadError, OSError) as err:
            reason = str(err) or type(err).__name__
            multifd = self.multifd
            if multifd is not None and multifd.connected == 0 and not decoder.bytes_decoded:
                self._empty_connection()
                return
            if self.multifd is not None and inc.status == "setup":
                # still waiting for its channels, QEMU does not read the main stream: a
                # source that goes away leaves it in setup, quietly (live 10.0)
                return
            if self.multifd is not None and "truncated" in reason:
                reason = "Input/output error"  # QEMU's channel threads see the end first
            self._fail(reason)
        finally:
            channel.abort()
            self._channel = None
            if self.multifd is not None:
                self.multifd.close()
                self.multifd = None

    def _check_capabilities(self, header: StreamHeader) -> None:
        """QEMU's configuration section: a capability both sides must share (``mapped-ram``)
        that differs fails the load (live 10.0)."""
        mine = self.ctx.vm.config.enabled("mapped-ram")
        if header.mapped_ram != mine:
            state = {True: "on", False: "off"}
            error_report(
                f"Capability mapped-ram is {state[mine]}, "
                f"but received capability is {state[header.mapped_ram]}"
            )
            raise StreamError("Invalid argument")

    async def _load_mapped(self, channel: Channel, guest: GuestMemory, event: MappedBlock) -> None:
        """``mapped-ram``: a block's pages are read off the file at their places (by the
        multifd channels' threads with ``multifd``), then the stream goes on after them."""
        if channel.file is None:
            raise StreamError("a mapped-ram stream on a channel that is not a file")
        cfg = self.ctx.vm.config
        readers = int(self.ctx.param("multifd-channels")) if cfg.enabled("multifd") else 1
        region = event.region
        base = self._file_base
        # ``direct-io`` with multifd: QEMU's channels read with O_DIRECT (live 10.0)
        direct = (
            cfg.enabled("multifd") and bool(self.ctx.param("direct-io")) and bool(self._file_path)
        )
        direct_fd = open_direct(self._file_path, os.O_RDONLY) if direct else None
        try:
            await load_block(guest, region, channel.file.fileno(), base=base, readers=readers,
                             direct_fd=direct_fd)  # fmt: skip
        finally:
            if direct_fd is not None:
                os.close(direct_fd)
        await channel.seek(base + region.next_offset)

    def _arm_loader_timer(self, loader: VfioSimLoader, send_ack: Callable[[], None]) -> None:
        """Poll a device again when its resource allocation (``load-ms``) is due to end."""
        deadline = loader.next_deadline()
        if deadline is None or loader in self._armed:
            return
        self._armed.add(loader)
        loop = asyncio.get_running_loop()

        def fire() -> None:
            if loader.poll(time.monotonic()):
                send_ack()

        loop.call_later(max(0.0, deadline - time.monotonic()), fire)

    async def _finish_load(
        self,
        guest: GuestMemory,
        complete: Complete,
        loaders: dict[str, VfioSimLoader],
        send_rp: Callable[[bytes], None],
        rp: ReturnPathEncoder,
        source_running: bool,
        *,
        prelaunch: bool = False,
    ) -> None:
        if guest.digest() != complete.ram_digest:
            raise StreamError("RAM digest mismatch after loading the migration stream")
        # devices still allocating resources delay the resume (downtime without the ACK)
        for loader in loaders.values():
            deadline = loader.next_deadline()
            if deadline is not None:
                await asyncio.sleep(max(0.0, deadline - time.monotonic()))
                loader.poll(time.monotonic())
        for device_id, digest in complete.device_digests:
            target = loaders.get(device_id)
            if target is None or target.digest() != digest:
                raise StreamError(f"{device_id}: device state digest mismatch")
        ctx = self.ctx
        ctx.guest = guest
        ctx.workload = guest_workload(
            guest,
            ctx.layout,
            ctx.workload.rate,
            seed=11,
            write_bytes=ctx.workload.write_bytes,
            working_set=ctx.workload.working_set_bytes,
        )
        vm = ctx.vm
        # QEMU: autostart only if the source's guest was running (its global state)
        if vm.autostart and source_running:
            vm.start()
        else:
            # QEMU sets the source's runstate: never started stays ``prelaunch`` (live 10.0)
            vm.runstate = "prelaunch" if prelaunch else "paused"
            # the received guest's program waits for `cont`: a paused guest writes nothing
            ctx.workload.set_running(False, time.monotonic())
        send_rp(rp.resumed(time.monotonic()) + rp.shut(0))
        self.state.set_status("completed")

    def _empty_connection(self) -> None:
        """The first connection ended before its first byte and no channel came (a source
        that failed its setup after connecting: ``zero-copy-send`` over a unix socket).
        8.0+ peeks at every connection to tell the main stream from a channel and fails on
        it (live 10.0: failed, the process exits); 7.2 waits for its channels and never
        reads it."""
        if not self.ctx.profile.since(8, 0):
            return
        self.state.set_status("failed")
        if self._exit_on_error:
            self.exit_process(1, "Failed to peek at channel")
        else:
            error_report("Failed to peek at channel")

    def _fail(self, reason: str) -> None:
        # A stream cut short (the source cancelled or died) reads as QEMU reports it (recorded
        # live).
        truncated = "truncated" in reason or "Unexpected end" in reason
        desc = "load of migration failed: " + ("Invalid argument" if truncated else reason)
        self.state.error_desc = desc
        self.state.set_status("failed")
        if truncated:
            error_report("check_section_footer: Read section footer failed: -5")
        if self._exit_on_error:
            # QEMU ends the destination process when an incoming migration fails (always
            # before 9.1; since then unless migrate-incoming had exit-on-error false, when
            # the error is only kept for query-migrate: nothing more on stderr, live 10.0).
            self.exit_process(1, desc)


def new_decompressor(method: str) -> Callable[[bytes, int], bytes]:
    """A multifd channel's decompressor (one stream per channel, as the source's)."""
    if method not in ("zlib", "zstd"):
        raise StreamError(f"unknown multifd compression {method}")
    return MultifdDecompressor(cast(Method, method)).decompress
