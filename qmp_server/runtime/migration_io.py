"""The migration driver: asyncio tasks that move the guest over a real stream.

Contract: one :class:`MigrationController` per process, attached to the VM as
``vm.migration_hooks`` (what the command handlers call) and owning both directions: the
outgoing migration (``migrate``) and the incoming one (``-incoming`` / ``migrate-incoming``).
The pure parts it drives: :mod:`qmp_server.engine.migration` (status, counters, QEMU's
``query-migrate``), :mod:`~qmp_server.engine.stream` (the byte format and return path),
:mod:`~qmp_server.engine.guest` and :mod:`~qmp_server.engine.devices`.

The source loop is QEMU's precopy loop: counters per 100 ms period, threshold = bandwidth ×
downtime-limit, a dirty sync (MIGRATION_PASS) whenever the pending data drops below it, and
switchover only when it is below the threshold *and* the switchover ACK gate is open (the
capability is off, the guest is stopped, or the destination sent the ACK).  Without the ACK the
source keeps iterating for ever, ``active``, until cancelled or the guest is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import io
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from qmp_server.engine.devices import (
    DeviceLoadError,
    SwitchoverAckGate,
    VfioSimConfig,
    VfioSimDevice,
    VfioSimLoader,
)
from qmp_server.engine.guest import PAGE_SIZE, GuestMemory, Workload
from qmp_server.engine.migration import (
    BUFFER_DELAY,
    IncomingMigration,
    SourceMigration,
    in_schema_order,
)
from qmp_server.engine.stream import (
    Complete,
    DeviceData,
    EncodedPages,
    EndOfPrecopy,
    EndOfStream,
    NeedData,
    OpenReturnPath,
    ReturnPathDecoder,
    ReturnPathEncoder,
    RpClosed,
    RpResumed,
    RpShut,
    RpSwitchoverAck,
    StreamDecoder,
    StreamEncoder,
    StreamError,
    StreamHeader,
    apply_ram_event,
    encode_guest_pages_parts,
    guest_for_header,
)
from qmp_server.errors import CommandError
from qmp_server.runtime.socket_writer import SocketWriter, recv_nowait

if TYPE_CHECKING:
    from qmp_server.engine.vm import VirtualMachine

__all__ = ["MigrationController"]

logger = logging.getLogger(__name__)

IN_PROGRESS = "There's a migration process in progress"
#: Largest number of non-zero pages in one step (4 MiB: one RAM_RUN record, one gather write).
#: Smaller steps keep the pages just built in cache until the kernel copies them; 4 MiB steps
#: with 8 MiB queued for the writer thread beat 8 MiB steps with 24 MiB by ~15% (1 GiB, TCP).
_STEP_PAGES = 1024
#: Pages whose zero mask is computed at once (zero pages are cheap: whole windows per step).
_WINDOW_PAGES = 1 << 16
#: How long a waiting source sleeps between dirty syncs while the ACK is missing.
_ACK_WAIT_SYNC = 0.1
#: How long the source waits for the destination's RESUMED after the last byte.
_RESUME_TIMEOUT = 60.0
#: Receive size asked of the kernel per call on the destination.
_READ_SIZE = 8 << 20
#: The destination yields to the event loop (QMP) at least once per this many bytes.
_YIELD_BYTES = 32 << 20
#: Socket buffers (the kernel caps them at net.core.[rw]mem_max).
_SOCK_BUF = 4 << 20


def _tune_malloc() -> None:
    """Keep freed blocks in glibc's heap: the engine allocates and frees 8 MiB arrays per
    step, and first-touch page faults of fresh mmaps cost more than the work itself."""
    name = ctypes.util.find_library("c")
    if name is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(name)
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD (glibc's maximum on 64-bit)


@dataclass(frozen=True)
class Address:
    """A parsed migration URI."""

    scheme: str  # tcp | unix | exec | file | fd
    host: str = ""
    port: int = 0
    path: str = ""  # unix/file: the path; fd: the descriptor's name
    command: str = ""
    offset: int = 0  # file: where the stream starts in the file

    def describe(self) -> str:
        if self.scheme == "tcp":
            return f"{self.host}:{self.port}"
        return self.path or self.command


def parse_uri(uri: str, *, file_ok: bool) -> Address:
    """Parse a migration URI; :class:`ValueError` carries QEMU's text for a bad address."""
    if uri.startswith("tcp:"):
        rest = uri[4:]
        host, sep, port = rest.rpartition(":")
        if not sep or not port:
            raise ValueError(f"error parsing address '{rest}'")
        host = host.strip("[]")
        try:
            number = int(port)
        except ValueError:
            raise ValueError(f"error parsing port in address '{rest}'") from None
        return Address("tcp", host=host or "0.0.0.0", port=number)
    if uri.startswith("unix:"):
        return Address("unix", path=uri[5:])
    if uri.startswith("exec:"):
        return Address("exec", command=uri[5:])
    if uri.startswith("fd:"):
        return Address("fd", path=uri[3:])
    if file_ok and uri.startswith("file:"):
        path, _, option = uri[5:].partition(",")
        offset = 0
        if option:
            try:
                offset = int(option.removeprefix("offset="), 0)
            except ValueError:
                raise ValueError(f"file URI has bad offset {option}") from None
        return Address("file", path=path, offset=offset)
    raise LookupError(uri)


def _fd_not_found(address: Address) -> str:
    # qmp-server has no getfd/add-fd: no descriptor name is ever known to the monitor
    return f"File descriptor named '{address.path}' has not been found"


Buffer = bytes | bytearray | memoryview


class _Channel:
    """One migration connection.

    A socket (``tcp:``, ``unix:``, and ``exec:`` through a socketpair with the command's
    stdin or stdout), without asyncio streams: the outgoing stream is gather writes
    (``sendmsg``) of the encoder's buffers by a writer thread (:mod:`socket_writer`), receives
    go straight into the decoder's buffer (``recv_into`` on the loop).  Or a file (``file:``),
    read and written in the loop's executor.  Only a tcp/unix socket carries a return path.
    """

    def __init__(
        self,
        sock: socket.socket | None = None,
        *,
        file: io.BufferedIOBase | None = None,
        proc: asyncio.subprocess.Process | None = None,
        return_path: bool = False,
    ) -> None:
        self.sock = sock
        self.file = file
        self.proc = proc
        self.has_return_path = return_path
        self.loop = asyncio.get_running_loop()
        self._writer: SocketWriter | None = None
        if sock is not None:
            sock.setblocking(False)
            for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, opt, _SOCK_BUF)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def _readable(self) -> None:
        """Wait until the socket has data, without blocking the loop (it may be blocking)."""
        assert self.sock is not None
        fut: asyncio.Future[None] = self.loop.create_future()
        fd = self.sock.fileno()

        def ready() -> None:
            if not fut.done():
                fut.set_result(None)

        self.loop.add_reader(fd, ready)
        try:
            await fut
        finally:
            self.loop.remove_reader(fd)

    def start_writer(self) -> None:
        """Hand the socket's writes to a thread (the source's bulk stream; see socket_writer)."""
        if self.sock is not None and self._writer is None:
            self._writer = SocketWriter(self.sock, self.loop)

    async def send(self, parts: list[Buffer]) -> int:
        """Write every buffer, in order; returns the byte count."""
        views = [memoryview(p) for p in parts if len(p)]
        total = sum(v.nbytes for v in views)
        if self.file is not None:
            await self.loop.run_in_executor(None, self.file.writelines, views)
            return total
        self.start_writer()  # a socket's outgoing stream always goes through the writer
        assert self._writer is not None
        await self._writer.send(views, total)
        return total

    def send_nowait(self, data: bytes) -> None:
        """A small return-path message: written at once, or by a task if the socket is full."""
        sock = self.sock
        if sock is None or sock.fileno() < 0:
            return
        try:
            sent = sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            return
        if sent < len(data):
            self.loop.create_task(self.loop.sock_sendall(sock, data[sent:]))

    async def recv_into(self, view: memoryview) -> int:
        """Receive into ``view``; 0 at the end of the stream."""
        if self.file is not None:
            n: int = await self.loop.run_in_executor(None, self.file.readinto, view)
            return n
        assert self.sock is not None
        return await self.loop.sock_recv_into(self.sock, view)

    async def recv(self, size: int) -> bytes:
        sock = self.sock
        assert sock is not None
        if self._writer is None:
            return await self.loop.sock_recv(sock, size)
        while True:  # the writer made the socket blocking: never block the loop
            try:
                return recv_nowait(sock, size)
            except (BlockingIOError, InterruptedError):
                await self._readable()

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.file.close()
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    async def finish(self) -> None:
        """The source sent everything: flush, close its direction, reap an exec command."""
        if self.file is not None:
            file = self.file
            await self.loop.run_in_executor(None, _flush_and_sync, file)
            file.close()
            return
        if self._writer is not None:
            await self._writer.drain()
            self._writer.stop()
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_WR)
        if self.proc is not None:
            await self.proc.wait()
            if self.sock is not None:
                self.sock.close()


def _flush_and_sync(file: io.BufferedIOBase) -> None:
    file.flush()
    os.fsync(file.fileno())


def _write_error(err: OSError) -> str:
    """QEMU's error-desc for a failed write on the migration channel."""
    number = err.errno or errno.EPIPE
    return f"Unable to write to socket: {os.strerror(number)}"


class MigrationController:
    """Both migration directions of one VM, as QEMU's migration code drives them."""

    def __init__(
        self,
        vm: VirtualMachine,
        *,
        devices: list[VfioSimConfig],
        guest: GuestMemory,
        dirty_rate: int,
        exit_process: Callable[[int, str], None],
    ) -> None:
        self.vm = vm
        self.profile = vm.profile
        self.guest = guest
        self.device_configs = devices
        self.devices = [VfioSimDevice(cfg, seed=i + 1) for i, cfg in enumerate(devices)]
        self.workload = Workload(guest, dirty_rate, seed=7, now=time.monotonic())
        self.exit_process = exit_process
        self.source = SourceMigration(self.profile, vm.emit, self._events_on)
        self.incoming = IncomingMigration(self.profile, vm.emit, self._events_on)
        self._source_task: asyncio.Task[None] | None = None
        self._incoming_task: asyncio.Task[None] | None = None
        self._listener: socket.socket | None = None
        self._channel: _Channel | None = None
        self._channel_in: _Channel | None = None
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
        self._armed: set[VfioSimLoader] = set()
        _tune_malloc()
        self._tick: asyncio.Task[None] | None = None
        self._loaders: list[VfioSimLoader] = []
        #: migrate-incoming exit-on-error (9.1+): a failed load ends the process
        self._exit_on_error = True
        #: migrate_cancel found an open return path (10.0 reports its channel error)
        self._cancel_rp_error = False
        #: "not-needed" | "pending" | "received" while/after a run with the ACK capability
        self.ack_state: str | None = None

    # -- helpers ------------------------------------------------------------------------
    def _events_on(self) -> bool:
        return self.vm.config.enabled("events")

    @property
    def ack_capability(self) -> str | None:
        return self.profile.ack_capability

    def _ack_enabled(self) -> bool:
        cap = self.ack_capability
        return cap is not None and self.vm.config.enabled(cap)

    def _param(self, name: str) -> Any:
        return self.vm.config.parameter(name)

    def start(self) -> None:
        """Start the guest workload ticker (the guest runs whether or not it migrates)."""
        if self._tick is None:
            loop = asyncio.get_running_loop()
            self._tick = loop.create_task(self._run_workload())
            # The source's device digest hashes the whole initial data (hundreds of MB); it is
            # cached by the device, so compute it now, off the loop, not inside the downtime.
            for dev in self.devices:
                loop.run_in_executor(None, dev.digest)

    async def _run_workload(self) -> None:
        while True:
            await asyncio.sleep(0.02)
            now = time.monotonic()
            running = self.vm.running
            if self.workload.rate or any(d.config.dirty_rate for d in self.devices):
                self.workload.set_running(running, now)
                dirtied = self.workload.advance(now)
                if dirtied:
                    self.source.count_dirtied(dirtied)
                for dev in self.devices:
                    dev.set_running(running, now)

    def set_dirty_rate(self, rate: int) -> None:
        self.workload.set_rate(rate, time.monotonic())

    def close(self) -> None:
        for task in (self._tick, self._source_task, self._incoming_task):
            if task is not None:
                task.cancel()
        for channel in (self._channel, self._channel_in):
            if channel is not None:
                channel.abort()
        if self._listener is not None:
            self._listener.close()

    # -- what the command handlers call (engine/vm.py MigrationHooks) --------------------
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

    def continue_migration(self) -> None:
        self._continue.set()

    def cancel(self) -> None:
        if self.source.status not in ("setup", "active", "pre-switchover", "device"):
            return
        self._cancelled = True
        self.source.set_status("cancelling")
        channel = self._channel
        # QEMU 10.0: a return path open on the aborted channel fails with an I/O error, which
        # becomes the cancelled migration's error-desc (live: with return-path only)
        self._cancel_rp_error = (
            self.profile.since(10, 0)
            and channel is not None
            and channel.has_return_path
            and self.vm.config.enabled("return-path")
        )
        if channel is not None:
            channel.abort()
        if self._source_task is not None:
            self._source_task.cancel()
        self._continue.set()
        # QEMU answers migrate_cancel between "cancelling" and "cancelled" (recorded live):
        # the cleanup that reports "cancelled" runs after the command returns.
        asyncio.get_running_loop().call_soon(self._finish_cancel)

    def _finish_cancel(self) -> None:
        if self._cancel_rp_error:
            self.source.error_desc = _RP_CHANNEL_ERROR
            _report(_RP_CHANNEL_ERROR)
        self.source.set_status("cancelled")
        self._restart_after_failure()

    def start_postcopy(self) -> None:
        raise CommandError("qmp-server does not model postcopy migration")

    def pause(self) -> None:
        raise CommandError("qmp-server does not model postcopy migration")

    def recover(self, uri: str) -> None:
        raise CommandError("qmp-server does not model postcopy migration")

    def digest(self) -> dict[str, Any]:
        devices: dict[str, str] = {}
        if self._loaders:
            devices = {ld.id: ld.digest() for ld in self._loaders}
        else:
            devices = {d.id: d.digest() for d in self.devices}
        return {"algorithm": "sha256", "ram": self.guest.digest(), "devices": devices}

    # -- outgoing ---------------------------------------------------------------------------
    def migrate(self, uri: str) -> None:
        """``migrate``: QEMU's synchronous checks; the transfer continues in a task."""
        vm = self.vm
        if self.profile.since(10, 0):
            # QEMU 10.0 qmp_migrate(): migrate_uri_parse() comes first and fails
            # synchronously, before migrate_prepare() and without any state change.
            try:
                parse_uri(uri, file_ok=True)
            except LookupError:
                raise CommandError(f"unknown migration protocol: {uri}") from None
            except ValueError as err:
                raise CommandError(str(err)) from None
        if self.source.status in ("setup", "active", "pre-switchover", "device", "cancelling"):
            raise CommandError(IN_PROGRESS)
        if vm.runstate == "inmigrate":
            raise CommandError("Guest is waiting for an incoming migration")
        if vm.runstate == "postmigrate":
            raise CommandError("Can't migrate the vm that was paused due to previous migration")
        now = time.monotonic()
        try:
            address = parse_uri(uri, file_ok=self.profile.since(8, 2))
        except LookupError:
            self.source.begin(now, self.guest.size_bytes, int(self._param("downtime-limit")))
            self.source.fail(None, now)
            raise CommandError("Parameter 'uri' expects a valid migration protocol") from None
        except ValueError as err:
            self.source.begin(now, self.guest.size_bytes, int(self._param("downtime-limit")))
            self.source.fail(str(err), now)
            raise CommandError(str(err)) from None
        self._cancelled = False
        self._rp_lost = False
        self._resumed_received = False
        self._high_count = 0
        self._continue.clear()
        self._resumed.clear()
        self._gate.clear()
        self.source.begin(now, self.guest.size_bytes, int(self._param("downtime-limit")))
        if address.scheme == "fd":
            # QEMU looks the name up synchronously: setup, failed, and the error returned
            desc = _fd_not_found(address)
            self.source.fail(desc, now)
            raise CommandError(desc)
        file: io.BufferedIOBase | None = None
        if address.scheme == "file":
            # QEMU 10.0 creates the file before it answers (recorded live): setup, failed,
            # and the error returned by the command
            try:
                file = _open_for_write(address.path, address.offset)
            except OSError as err:
                desc = f"Could not create '{address.path}': {os.strerror(err.errno or errno.EIO)}"
                self.source.fail(desc, now)
                raise CommandError(desc) from None
        self.ack_state = "pending" if self._ack_enabled() else "not-needed"
        self._source_task = asyncio.get_running_loop().create_task(self._run_source(address, file))

    async def _connect(self, address: Address, file: io.BufferedIOBase | None = None) -> _Channel:
        loop = asyncio.get_running_loop()
        if address.scheme in ("tcp", "unix"):
            sockaddr: Any
            if address.scheme == "tcp":
                infos = await loop.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
                family, kind, proto, _, sockaddr = infos[0]
                sock = socket.socket(family, kind, proto)
            else:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sockaddr = address.path
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, sockaddr)
            except BaseException:
                sock.close()
                raise
            channel = _Channel(sock, return_path=True)
            channel.start_writer()
            return channel
        if address.scheme == "exec":
            ours, theirs = socket.socketpair()
            try:
                proc = await asyncio.create_subprocess_exec(
                    "/bin/sh", "-c", address.command, stdin=theirs.fileno()
                )
            finally:
                theirs.close()
            channel = _Channel(ours, proc=proc)
            channel.start_writer()
            return channel
        return _Channel(file=file or _open_for_write(address.path, address.offset))

    async def _run_source(self, address: Address, file: io.BufferedIOBase | None = None) -> None:
        src = self.source
        rp_task: asyncio.Task[None] | None = None
        try:
            try:
                channel = await self._connect(address, file)
            except OSError as err:
                reason = os.strerror(err.errno) if err.errno else str(err)
                desc = f"Failed to connect to '{address.describe()}': {reason}"
                src.fail(desc, time.monotonic())
                _report(desc)  # QEMU's error_report of an asynchronous failure
                return
            self._channel = channel
            if channel.has_return_path and self.vm.config.enabled("return-path"):
                rp_task = asyncio.get_running_loop().create_task(self._read_return_path(channel))
            await self._precopy(channel)
        except asyncio.CancelledError:
            if not self._cancelled:
                raise
        except OSError as err:
            if self.profile.since(10, 0) and src.status == "active":
                # QEMU 10.0 qemu_savevm_state_iterate(): the RAM section's save
                # handler fails (-EIO) before the channel error is reported.
                _report("failed to save SaveStateEntry with id(name): 1(ram): -5")
            self._fail_source(_write_error(err))
        except (EOFError, StreamError) as err:
            self._fail_source(str(err) or type(err).__name__)
        except Exception as err:  # a bug must end the migration visibly, not leave it hanging
            logger.exception("outgoing migration failed")
            self._fail_source(f"internal error: {err!r}")
        finally:
            if rp_task is not None:
                rp_task.cancel()
            if self._channel is not None and src.status != "completed":
                self._channel.abort()
            self._channel = None
            for dev in self.devices:
                dev.set_running(self.vm.running, time.monotonic())

    def _restart_after_failure(self) -> None:
        """A failed or cancelled switchover: the guest runs again if it ran before (QEMU)."""
        vm = self.vm
        if vm.runstate == "finish-migrate":
            if self._vm_was_running:
                vm.start()
            else:
                vm.runstate = "paused"
        self.workload.set_running(vm.running, time.monotonic())

    def _fail_source(self, desc: str) -> None:
        if self.source.status in ("cancelling", "cancelled", "completed", "failed"):
            return
        self.source.fail(desc, time.monotonic())
        _report(desc)
        self._restart_after_failure()

    async def _read_return_path(self, channel: _Channel) -> None:
        decoder = ReturnPathDecoder()
        try:
            while True:
                data = await channel.recv(65536)
                decoder.receive_data(data)
                while True:
                    event = decoder.next_event()
                    if isinstance(event, NeedData):
                        break
                    if isinstance(event, RpSwitchoverAck):
                        self.source.switchover_acked = True
                        self.ack_state = "received"
                        self._gate.set()
                    elif isinstance(event, RpResumed):
                        self._resumed_received = True
                        self._resumed.set()
                    elif isinstance(event, RpShut) and event.status != 0:
                        self._fail_source("Detected IO failure for postcopy. Migration paused.")
                    elif isinstance(event, RpClosed) and not event.clean:
                        self._rp_lost = True
                        self._resumed.set()
                if not data:
                    return
        except (OSError, StreamError):
            self._rp_lost = True
            self._resumed.set()

    def _can_switchover(self) -> bool:
        if not self._ack_enabled():
            return True
        if not self.vm.running:
            return True  # no reason to wait for the ACK when the guest is stopped
        return self.source.switchover_acked

    async def _precopy(self, channel: _Channel) -> None:
        src = self.source
        vm = self.vm
        enc = StreamEncoder()
        guest = self.guest
        ack = self._ack_enabled()
        return_path = channel.has_return_path and vm.config.enabled("return-path")
        head = enc.header(
            ram_size=guest.size_bytes,
            fill=guest.fill,
            seed=guest.seed,
            profile=self.profile.name,
            switchover_ack=ack,
            return_path=return_path,
        )
        if return_path:
            head += enc.open_return_path()
        for dev in self.devices:
            dev.save_setup(switchover_ack=ack)
        # setup: the first bitmap sync covers all of RAM (MIGRATION_PASS 1, before active)
        guest.mark_all_dirty()
        to_send = guest.sync_dirty()
        self._last_sync = time.monotonic()
        head += enc.sync(self._emit_pass())
        n = await channel.send([head])
        src.count_sent(n, 0, 0, downtime=False)
        src.ram.remaining = int(to_send.size) * PAGE_SIZE
        src.activate(time.monotonic())
        sender = _PageSender(enc, guest, to_send)
        allowance = self._period_allowance()
        budget = allowance
        while True:
            now = time.monotonic()
            if src.period_due(now):
                src.ram.remaining = sender.remaining * PAGE_SIZE
                src.update_period(now, int(self._param("downtime-limit")))
                allowance = self._period_allowance()
                budget = min(budget, 0) + allowance  # an overshoot is paid back
            device_pending = self._device_pending()
            pending = sender.remaining * PAGE_SIZE + device_pending
            converged = pending == 0 or pending < src.threshold
            waiting = converged and not self._can_switchover()
            if pending == 0 and src.threshold == 0 and not waiting:
                # QEMU syncs exactly only when pending < threshold; before the first period
                # set a threshold, nothing pending completes without that extra pass (live
                # 10.0, -machine none: PASS 1, active, STOP, device, PASS 2, completed)
                await self._complete(channel, enc, sender)
                return
            if converged and not (waiting and now - self._last_sync < _ACK_WAIT_SYNC):
                # exact pending: a dirty sync (a pass)
                sender.resync(self._resync())
                src.ram.remaining = sender.remaining * PAGE_SIZE
                n = await channel.send([enc.sync(src.ram.dirty_sync_count)])
                src.count_sent(n, 0, 0, downtime=False)
                device_pending = self._device_pending()
                pending = sender.remaining * PAGE_SIZE + device_pending
                if (pending == 0 or pending < src.threshold) and self._can_switchover():
                    await self._complete(channel, enc, sender)
                    return
                self._throttle_check()
            if pending == 0:
                # nothing to send: the ACK is missing; wait for it, a stop or a cancel
                await self._wait_gate(_ACK_WAIT_SYNC)
                if self.profile.since(10, 0) and self._can_switchover():
                    # QEMU 10.0 tests the gate after the pass's exact sync, so a wait that
                    # ends (the ACK, or `stop`) switches over on that pass: after `stop`,
                    # STOP, device, the final PASS, completed (live).  8.1 computed the gate
                    # at the top of the iteration: one more pass comes first (the loop above).
                    await self._complete(channel, enc, sender)
                    return
                continue
            if budget <= 0:
                await asyncio.sleep(src.period_left(now))
                continue
            sent = 0
            for dev in self.devices:
                chunks = dev.save_iterate(min(budget, 4 << 20))
                if chunks:
                    n = await channel.send([p for c in chunks for p in enc.device_parts(c)])
                    src.count_device_bytes(n, downtime=False)
                    sent += n
            if sender.remaining:
                pages = _STEP_PAGES if allowance >= _UNLIMITED else budget // PAGE_SIZE
                encoded = sender.step(max(16, min(_STEP_PAGES, pages)))
                n = await channel.send(encoded.parts)
                src.count_sent(n, encoded.zero_pages, encoded.normal_pages, downtime=False)
                src.ram.remaining = sender.remaining * PAGE_SIZE
                sent += n
            budget -= sent
            await asyncio.sleep(0)  # QMP, the return path and the workload run between steps

    async def _wait_gate(self, seconds: float) -> None:
        self._gate.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._gate.wait(), seconds)

    def _period_allowance(self) -> int:
        bandwidth = int(self._param("max-bandwidth"))
        if bandwidth == 0:
            return _UNLIMITED
        return max(int(bandwidth * BUFFER_DELAY), PAGE_SIZE)

    def _device_pending(self) -> int:
        return sum(dev.pending_bytes() for dev in self.devices)

    def _emit_pass(self, dirty_pages: int | None = None) -> int:
        number = self.source.note_sync(self.source.ram.dirty_pages_rate, dirty_pages)
        if self._events_on():
            self.vm.emit("MIGRATION_PASS", {"pass": number})
        return number

    def _resync(self) -> np.ndarray:
        """A dirty-bitmap sync: the pages dirtied since the last one (MIGRATION_PASS)."""
        now = time.monotonic()
        self.workload.advance(now)
        fresh = self.guest.sync_dirty()
        period = max(now - self._last_sync, 1e-3)
        self._last_sync = now
        self.source.ram.dirty_pages_rate = int(fresh.size / period)
        self._emit_pass(int(fresh.size))
        return fresh

    def _throttle_check(self) -> None:
        """Auto-converge: throttle the guest when it dirties faster than we send."""
        if not self.vm.config.enabled("auto-converge"):
            return
        src = self.source
        dirty_bytes_s = src.ram.dirty_pages_rate * PAGE_SIZE
        sent_bytes_s = src.bandwidth * 1000
        threshold = int(self._param("throttle-trigger-threshold"))
        if dirty_bytes_s * 100 <= sent_bytes_s * threshold:
            return
        self._high_count += 1
        if self._high_count < 2:
            return
        self._high_count = 0
        if src.throttle_percentage == 0:
            pct = int(self._param("cpu-throttle-initial"))
        else:
            pct = src.throttle_percentage + int(self._param("cpu-throttle-increment"))
        pct = min(pct, int(self._param("max-cpu-throttle")))
        src.throttle_percentage = pct
        self.workload.set_throttle(pct, time.monotonic())

    async def _complete(self, channel: _Channel, enc: StreamEncoder, sender: _PageSender) -> None:
        src = self.source
        vm = self.vm
        downtime_start = time.monotonic()
        # QEMU's vm_stop_force_state(FINISH_MIGRATE): STOP only if the guest was running
        self._vm_was_running = vm.running
        if not vm.stop("finish-migrate"):
            vm.runstate = "finish-migrate"
        self.workload.set_running(False, downtime_start)
        for dev in self.devices:
            dev.set_running(False, downtime_start)
        if vm.config.enabled("pause-before-switchover"):
            src.set_status("pre-switchover")
            await self._continue.wait()
            if self._cancelled:
                return
            src.set_status("device")
        elif self.profile.since(10, 0):
            src.set_status("device")
        # the final sync, then everything that is left, without rate limit
        sender.resync(self._resync())
        n = await channel.send(
            [enc.sync(src.ram.dirty_sync_count), enc.end_of_precopy(self._vm_was_running)]
        )
        src.count_sent(n, 0, 0, downtime=True)
        while sender.remaining:
            encoded = sender.step(_STEP_PAGES)
            n = await channel.send(encoded.parts)
            src.count_sent(n, encoded.zero_pages, encoded.normal_pages, downtime=True)
        for dev in self.devices:
            chunks = dev.save_complete()
            n = await channel.send([p for c in chunks for p in enc.device_parts(c)])
            src.count_device_bytes(n, downtime=True)
        digests = [(dev.id, dev.digest()) for dev in self.devices]
        ram_digest = self.guest.digest()
        tail = enc.complete(ram_digest, digests)
        n = await channel.send([tail])
        src.count_sent(n, 0, 0, downtime=True)
        if channel.has_return_path and vm.config.enabled("return-path"):
            try:
                await asyncio.wait_for(self._resumed.wait(), _RESUME_TIMEOUT)
            except TimeoutError:
                logger.warning("destination did not report its resume; downtime is the source's")
            if not self._resumed_received and self._rp_lost:
                raise EOFError("the destination closed the return path before resuming")
        await channel.finish()
        vm.runstate = "postmigrate"
        src.ram.remaining = 0
        src.complete(time.monotonic(), downtime_start)

    # -- incoming -----------------------------------------------------------------------
    def start_incoming(
        self, uri: str, *, at_startup: bool = False, exit_on_error: bool = True
    ) -> None:
        """``-incoming URI`` or ``migrate-incoming``: listen (or read) and load a guest.

        Synchronous like QEMU's: the socket listens before the command returns.
        ``exit_on_error`` (``migrate-incoming`` ``exit-on-error``, 9.1+): whether a failed
        load ends the process (QEMU's only behaviour before 9.1) or leaves it in ``failed``.
        """
        cfg = self.vm.config
        self._exit_on_error = exit_on_error
        # QEMU 10.0 parses the URI before it enters ``setup``; 7.2 announced setup first
        parse_first = self.profile.since(10, 0)
        if not at_startup and not parse_first:
            self.incoming.announce_setup()
        try:
            address = parse_uri(uri, file_ok=self.profile.since(8, 2))
        except LookupError:
            cfg.note_incoming(uri, started=False)
            raise CommandError(f"unknown migration protocol: {uri}") from None
        except ValueError as err:
            cfg.note_incoming(uri, started=False)
            raise CommandError(str(err)) from None
        if self.incoming.status != "none":
            # a transport that failed to start left ``setup`` behind (QEMU 10.0, live)
            raise CommandError(f"Illegal migration incoming state: {self.incoming.status}")
        if not at_startup and parse_first:
            self.incoming.announce_setup()
        loop = asyncio.get_running_loop()
        if address.scheme in ("tcp", "unix"):
            try:
                sock = _listen(address)
            except OSError as err:
                cfg.note_incoming(uri, started=False)
                reason = os.strerror(err.errno) if err.errno else str(err)
                where = f" to {address.path}" if address.scheme == "unix" else ""
                raise CommandError(f"Failed to bind socket{where}: {reason}") from None
            if address.scheme == "tcp":
                host, port = sock.getsockname()[:2]
                self.incoming.socket_address = [
                    {"type": "inet", "host": host, "port": str(port), "ipv4": True}
                ]
            else:
                self.incoming.socket_address = [{"type": "unix", "path": address.path}]
            cfg.note_incoming(uri, started=True)
            self.incoming.started = True
            self._listener = sock
            self._incoming_task = loop.create_task(self._accept(sock))
            return
        if address.scheme == "fd":
            cfg.note_incoming(uri, started=False)
            raise CommandError(_fd_not_found(address))
        opened: io.BufferedIOBase | None = None
        if address.scheme == "file":
            try:  # QEMU opens the file before the command returns (or start-up goes on)
                opened = _open_for_read(address.path, address.offset)
            except OSError as err:
                cfg.note_incoming(uri, started=False)
                reason = os.strerror(err.errno) if err.errno else str(err)
                raise CommandError(f"Could not open '{address.path}': {reason}") from None
        cfg.note_incoming(uri, started=True)
        self.incoming.started = True
        self._incoming_task = loop.create_task(self._load_from(address, opened))

    async def _accept(self, listener: socket.socket) -> None:
        """One migration per listener (QEMU closes it once the source connected)."""
        loop = asyncio.get_running_loop()
        try:
            conn, _ = await loop.sock_accept(listener)
        finally:
            listener.close()
            self._listener = None
        await self._load(_Channel(conn, return_path=True))

    async def _load_from(self, address: Address, file: io.BufferedIOBase | None = None) -> None:
        if address.scheme == "file":
            if file is None:
                try:
                    file = _open_for_read(address.path, address.offset)
                except OSError as err:
                    self._fail_incoming(f"{address.path}: {os.strerror(err.errno or 0)}")
                    return
            await self._load(_Channel(file=file))
            return
        ours, theirs = socket.socketpair()
        try:
            proc = await asyncio.create_subprocess_exec(
                "/bin/sh", "-c", address.command, stdout=theirs.fileno()
            )
        finally:
            theirs.close()
        await self._load(_Channel(ours, proc=proc))

    async def _load(self, channel: _Channel) -> None:
        inc = self.incoming
        inc.set_status("active")
        self._channel_in = channel
        decoder = StreamDecoder(zero_copy=True)
        rp = ReturnPathEncoder()
        gate = SwitchoverAckGate(self._ack_enabled())
        loaders = {cfg.id: VfioSimLoader(cfg, gate) for cfg in self.device_configs}
        self._loaders = list(loaders.values())
        guest: GuestMemory | None = None
        complete: Complete | None = None
        source_running = True

        def send_rp(data: bytes) -> None:
            if channel.has_return_path:
                channel.send_nowait(data)

        def send_ack() -> None:
            send_rp(rp.switchover_ack())

        unyielded = 0
        try:
            while True:
                view = decoder.get_buffer(_READ_SIZE)
                n = await channel.recv_into(view)
                del view
                decoder.buffer_updated(n)
                unyielded += n
                if loaders:
                    now = time.monotonic()
                    for loader in loaders.values():
                        if loader.poll(now):
                            send_ack()
                while True:
                    event = decoder.next_event()
                    if isinstance(event, NeedData):
                        break
                    if guest is not None and apply_ram_event(guest, event):
                        continue
                    if isinstance(event, StreamHeader):
                        if event.ram_size != self.guest.size_bytes:
                            raise StreamError(
                                f"Length mismatch: pc.ram: {event.ram_size:#x} in != "
                                f"{self.guest.size_bytes:#x}: Invalid argument"
                            )
                        guest = guest_for_header(event)
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
                    elif isinstance(event, Complete):
                        complete = event
                    elif isinstance(event, EndOfStream):
                        assert guest is not None and complete is not None
                        await self._finish_load(
                            guest, complete, loaders, send_rp, rp, source_running
                        )
                        return
                if n == 0:
                    raise StreamError("Unexpected end of migration stream")
                if unyielded >= _YIELD_BYTES:
                    unyielded = 0
                    await asyncio.sleep(0)
        except asyncio.CancelledError:
            raise
        except (StreamError, DeviceLoadError, OSError) as err:
            self._fail_incoming(str(err) or type(err).__name__)
        finally:
            channel.abort()
            self._channel_in = None

    def _arm_loader_timer(self, loader: VfioSimLoader, send_ack: Callable[[], None]) -> None:
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
        self.guest = guest
        self.workload = Workload(guest, self.workload.rate, seed=11, now=time.monotonic())
        vm = self.vm
        # QEMU: autostart only if the source's guest was running (its global state)
        if vm.autostart and source_running:
            vm.start()
        else:
            vm.runstate = "paused"
        send_rp(rp.resumed(time.monotonic()) + rp.shut(0))
        self.incoming.set_status("completed")

    def _fail_incoming(self, reason: str) -> None:
        # A stream cut short (the source cancelled or died) reads as QEMU reports it (recorded
        # live).
        truncated = "truncated" in reason or "Unexpected end" in reason
        desc = "load of migration failed: " + ("Invalid argument" if truncated else reason)
        self.incoming.error_desc = desc
        self.incoming.set_status("failed")
        if truncated:
            _report("check_section_footer: Read section footer failed: -5")
        if self._exit_on_error:
            # QEMU ends the destination process when an incoming migration fails (always
            # before 9.1; since then unless migrate-incoming had exit-on-error false, when
            # the error is only kept for query-migrate: nothing more on stderr, live 10.0).
            self.exit_process(1, desc)


_UNLIMITED = 1 << 62
#: What QEMU 10.0's return-path thread reports when migrate_cancel shuts its channel down.
_RP_CHANNEL_ERROR = "Channel error: Input/output error"


def _report(message: str) -> None:
    """QEMU's error_report(): the program name, then the message, on stderr."""
    with contextlib.suppress(OSError, ValueError):  # stderr may be a closed pipe
        sys.stderr.write(f"qmp-server: {message}\n")


class _PageSender:
    """The RAM pages a pass still has to send, sent in steps (QEMU's RAM bitmap walk).

    Zero masks are computed per window of :data:`_WINDOW_PAGES` pages and reused by the
    steps inside it; a step takes pages until it holds ``max_normal`` non-zero pages.
    """

    def __init__(self, enc: StreamEncoder, guest: GuestMemory, pages: np.ndarray) -> None:
        self.enc = enc
        self.guest = guest
        self.pages = pages
        self.cursor = 0
        self._win_start = 0
        self._win_zero: np.ndarray | None = None

    @property
    def remaining(self) -> int:
        return int(self.pages.size - self.cursor)

    def resync(self, fresh: np.ndarray) -> None:
        """Add the pages of a dirty sync to what is left of this pass."""
        rest = self.pages[self.cursor :]
        if rest.size == 0:
            self.pages = fresh
        elif fresh.size:
            # the bitmap merges them: sorted, without duplicates, in linear time
            self.guest.mark_dirty(rest)
            self.guest.mark_dirty(fresh)
            self.pages = self.guest.sync_dirty()
        else:
            self.pages = rest
        self.cursor = 0
        self._win_zero = None

    def step(self, max_normal: int) -> EncodedPages:
        cursor = self.cursor
        zero = self._win_zero
        if zero is None or cursor >= self._win_start + zero.size:
            window = self.pages[cursor : cursor + _WINDOW_PAGES]
            zero = self._win_zero = self.guest.zero_mask(window)
            self._win_start = cursor
        zero_part = zero[cursor - self._win_start :]
        normal = np.flatnonzero(~zero_part)
        take = int(normal[max_normal]) if normal.size > max_normal else int(zero_part.size)
        idx = self.pages[cursor : cursor + take]
        self.cursor = cursor + take
        return encode_guest_pages_parts(
            self.enc, self.guest, idx, zero=zero_part[:take], max_pages=_STEP_PAGES
        )


def _listen(address: Address) -> socket.socket:
    sockaddr: Any
    if address.scheme == "tcp":
        infos = socket.getaddrinfo(
            address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, kind, proto, _, sockaddr = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(address.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sockaddr = address.path
    try:
        sock.bind(sockaddr)
        sock.listen(1)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _open_for_write(path: str, offset: int = 0) -> io.BufferedIOBase:
    file = open(path, "wb")  # noqa: SIM115 (the channel owns and closes it)
    if offset:
        file.seek(offset)  # file: migration with an offset (QEMU truncates, then seeks)
    return file


def _open_for_read(path: str, offset: int = 0) -> io.BufferedIOBase:
    file = open(path, "rb")  # noqa: SIM115 (the channel owns and closes it)
    if offset:
        file.seek(offset)
    return file
