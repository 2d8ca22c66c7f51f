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
import logging
import os
import socket
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
from qmp_server.engine.migration import IncomingMigration, SourceMigration, in_schema_order
from qmp_server.engine.stream import (
    Complete,
    DeviceData,
    EndOfPrecopy,
    EndOfStream,
    NeedData,
    OpenReturnPath,
    ReturnPathDecoder,
    ReturnPathEncoder,
    RpResumed,
    RpShut,
    RpSwitchoverAck,
    StreamDecoder,
    StreamEncoder,
    StreamError,
    StreamHeader,
    SyncMarker,
    apply_ram_event,
    encode_guest_pages,
    guest_for_header,
)
from qmp_server.errors import CommandError

if TYPE_CHECKING:
    from qmp_server.engine.vm import VirtualMachine

__all__ = ["MigrationController"]

logger = logging.getLogger(__name__)

IN_PROGRESS = "There's a migration process in progress"
#: Pages handed to the encoder per step (8 MiB of guest address space).
_STEP_PAGES = 2048
#: How long a waiting source sleeps between dirty syncs while the ACK is missing.
_ACK_WAIT_SYNC = 0.1
#: How long the source waits for the destination's RESUMED after the last byte.
_RESUME_TIMEOUT = 60.0
_READ_SIZE = 4 << 20
#: Stream buffering: big buffers keep the loop from stalling on flow control per 64 KiB.
_STREAM_LIMIT = 16 << 20
_WRITE_HIGH = 16 << 20


@dataclass(frozen=True)
class Address:
    """A parsed migration URI."""

    scheme: str  # tcp | unix | exec | file
    host: str = ""
    port: int = 0
    path: str = ""
    command: str = ""

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
    if file_ok and uri.startswith("file:"):
        path = uri[5:].split(",", 1)[0]
        return Address("file", path=path)
    raise LookupError(uri)


class _Channel:
    """A byte pipe to the peer: stream out, return path in (when the transport has one)."""

    def __init__(
        self,
        reader: asyncio.StreamReader | None,
        writer: asyncio.StreamWriter | None,
        *,
        file: Any = None,
        proc: asyncio.subprocess.Process | None = None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.file = file
        self.proc = proc

    async def write(self, data: bytes) -> None:
        if self.file is not None:
            self.file.write(data)
            return
        assert self.writer is not None
        self.writer.write(data)
        await self.writer.drain()

    def abort(self) -> None:
        if self.writer is not None:
            transport = self.writer.transport
            transport.abort()
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.file.close()
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    async def finish(self) -> None:
        if self.file is not None:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
        elif self.proc is not None:
            assert self.writer is not None
            self.writer.close()
            await self.proc.wait()
        elif self.writer is not None:
            with contextlib.suppress(OSError):
                if self.writer.can_write_eof():
                    self.writer.write_eof()
                await self.writer.drain()


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
        self._incoming_server: asyncio.AbstractServer | None = None
        self._incoming_task: asyncio.Task[None] | None = None
        self._listen_task: asyncio.Task[None] | None = None
        self._channel: _Channel | None = None
        self._continue = asyncio.Event()
        self._resumed = asyncio.Event()
        self._cancelled = False
        self._tick: asyncio.Task[None] | None = None
        self._loaders: list[VfioSimLoader] = []
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
            self._tick = asyncio.get_running_loop().create_task(self._run_workload())

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
        if self._channel is not None:
            self._channel.abort()
        if self._incoming_server is not None:
            self._incoming_server.close()

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
        if self._channel is not None:
            self._channel.abort()
        if self._source_task is not None:
            self._source_task.cancel()
        self._continue.set()
        self.source.set_status("cancelled")
        if self.vm.runstate == "finish-migrate":
            self.vm.start()

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
        self._continue.clear()
        self._resumed.clear()
        self.source.begin(now, self.guest.size_bytes, int(self._param("downtime-limit")))
        self.ack_state = "pending" if self._ack_enabled() else None
        self._source_task = asyncio.get_running_loop().create_task(self._run_source(address))

    async def _connect(self, address: Address) -> _Channel:
        if address.scheme == "tcp":
            reader, writer = await asyncio.open_connection(
                address.host, address.port, limit=_STREAM_LIMIT
            )
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            writer.transport.set_write_buffer_limits(high=_WRITE_HIGH)
            return _Channel(reader, writer)
        if address.scheme == "unix":
            reader, writer = await asyncio.open_unix_connection(address.path, limit=_STREAM_LIMIT)
            writer.transport.set_write_buffer_limits(high=_WRITE_HIGH)
            return _Channel(reader, writer)
        if address.scheme == "exec":
            proc = await asyncio.create_subprocess_exec(
                "/bin/sh", "-c", address.command, stdin=asyncio.subprocess.PIPE
            )
            assert proc.stdin is not None
            return _Channel(None, proc.stdin, proc=proc)
        return _Channel(None, None, file=_open_for_write(address.path))

    async def _run_source(self, address: Address) -> None:
        src = self.source
        try:
            try:
                channel = await self._connect(address)
            except OSError as err:
                reason = os.strerror(err.errno) if err.errno else str(err)
                desc = f"Failed to connect to '{address.describe()}': {reason}"
                src.fail(desc, time.monotonic())
                return
            self._channel = channel
            rp_task = None
            if channel.reader is not None and self.vm.config.enabled("return-path"):
                rp_task = asyncio.get_running_loop().create_task(self._read_return_path(channel))
            try:
                await self._precopy(channel)
            finally:
                if rp_task is not None:
                    rp_task.cancel()
        except asyncio.CancelledError:
            if not self._cancelled:
                raise
        except (OSError, EOFError, StreamError) as err:
            self._fail_source(f"{type(err).__name__}: {err}" if not str(err) else str(err))
        finally:
            if self._channel is not None and src.status != "completed":
                self._channel.abort()
            self._channel = None
            for dev in self.devices:
                dev.set_running(self.vm.running, time.monotonic())

    def _fail_source(self, desc: str) -> None:
        if self.source.status in ("cancelling", "cancelled", "completed", "failed"):
            return
        self.source.fail(desc, time.monotonic())
        if self.vm.runstate == "finish-migrate":
            self.vm.start()

    async def _read_return_path(self, channel: _Channel) -> None:
        assert channel.reader is not None
        decoder = ReturnPathDecoder()
        while True:
            data = await channel.reader.read(65536)
            decoder.receive_data(data)
            while True:
                event = decoder.next_event()
                if isinstance(event, NeedData):
                    break
                if isinstance(event, RpSwitchoverAck):
                    self.source.switchover_acked = True
                    self.ack_state = "received"
                elif isinstance(event, RpResumed):
                    self._resumed.set()
                elif isinstance(event, RpShut) and event.status != 0:
                    self._fail_source("Detected IO failure for postcopy. Migration paused.")
            if not data:
                return

    def _can_switchover(self) -> bool:
        if not self._ack_enabled():
            return True
        if not self.vm.running:
            return True  # no reason to wait for the ACK when the guest is stopped
        return self.source.switchover_acked

    async def _send(self, channel: _Channel, records: list[bytes]) -> int:
        data = b"".join(records)
        await channel.write(data)
        return len(data)

    async def _precopy(self, channel: _Channel) -> None:
        src = self.source
        vm = self.vm
        enc = StreamEncoder()
        guest = self.guest
        ack = self._ack_enabled()
        return_path = channel.reader is not None and vm.config.enabled("return-path")
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
        await channel.write(head)
        src.count_sent(len(head), 0, 0, downtime=False)
        for dev in self.devices:
            dev.save_setup(switchover_ack=ack)
        # setup: the first bitmap sync covers all of RAM
        guest.mark_all_dirty()
        to_send = guest.sync_dirty()
        cursor = 0
        self._emit_pass(enc)
        src.ram.remaining = int(to_send.size) * PAGE_SIZE
        src.activate(time.monotonic())
        period_budget = self._period_budget()
        while True:
            now = time.monotonic()
            if src.period_due(now):
                src.ram.remaining = int(to_send.size - cursor) * PAGE_SIZE
                src.update_period(now, int(self._param("downtime-limit")))
                period_budget = self._period_budget()
            pending = int(to_send.size - cursor) * PAGE_SIZE + self._device_pending()
            if pending < src.threshold or pending == 0:
                # exact pending: a dirty sync (a pass)
                to_send = self._resync(enc, to_send, cursor)
                cursor = 0
                pending = int(to_send.size) * PAGE_SIZE + self._device_pending()
                src.ram.remaining = pending - self._device_pending()
                if (pending == 0 or pending < src.threshold) and self._can_switchover():
                    await self._complete(channel, enc, to_send)
                    return
                self._throttle_check()
            if pending == 0 or (
                pending < src.threshold and not self._can_switchover()
            ):
                await asyncio.sleep(_ACK_WAIT_SYNC)  # waiting for the ACK: keep syncing
                continue
            if period_budget <= 0:
                await asyncio.sleep(src.period_left(now))
                continue
            sent = 0
            for dev in self.devices:
                chunks = dev.save_iterate(min(period_budget, 4 << 20))
                if chunks:
                    n = await self._send(channel, [enc.device(c) for c in chunks])
                    src.count_device_bytes(n, downtime=False)
                    sent += n
            if cursor < to_send.size:
                idx = to_send[cursor : cursor + _STEP_PAGES]
                cursor += int(idx.size)
                zero = int(np.count_nonzero(guest.zero_mask(idx)))
                n = await self._send(channel, encode_guest_pages(enc, guest, idx))
                src.count_sent(n, zero, int(idx.size) - zero, downtime=False)
                sent += n
                src.ram.remaining = int(to_send.size - cursor) * PAGE_SIZE
            period_budget -= sent
            if sent == 0:
                await asyncio.sleep(0)

    def _period_budget(self) -> int:
        bandwidth = int(self._param("max-bandwidth"))
        if bandwidth == 0:
            return 1 << 62
        return max(bandwidth // 10, 4096)

    def _device_pending(self) -> int:
        return sum(dev.pending_bytes() for dev in self.devices)

    def _emit_pass(self, enc: StreamEncoder) -> int:
        number = self.source.note_sync(self.source.ram.dirty_pages_rate)
        if self._events_on():
            self.vm.emit("MIGRATION_PASS", {"pass": number})
        return number

    def _resync(self, enc: StreamEncoder, to_send: np.ndarray, cursor: int) -> np.ndarray:
        now = time.monotonic()
        self.workload.advance(now)
        fresh = self.guest.sync_dirty()
        period = max(now - getattr(self, "_last_sync", self.source.start_time), 1e-3)
        self._last_sync = now
        rate = int(fresh.size / period)
        self.source.ram.dirty_pages_rate = rate
        self._emit_pass(enc)
        self.source.ram.dirty_pages_rate = rate
        rest = to_send[cursor:]
        if fresh.size == 0:
            return rest
        return np.union1d(rest, fresh)

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
        self._high_count = getattr(self, "_high_count", 0) + 1
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

    async def _complete(self, channel: _Channel, enc: StreamEncoder, to_send: np.ndarray) -> None:
        src = self.source
        vm = self.vm
        downtime_start = time.monotonic()
        vm.stop("finish-migrate")
        self.workload.set_running(False, downtime_start)
        if vm.config.enabled("pause-before-switchover"):
            src.set_status("pre-switchover")
            await self._continue.wait()
            if self._cancelled:
                return
            src.set_status("device")
        elif self.profile.since(10, 0):
            src.set_status("device")
        # the final sync, then everything that is left, without rate limit
        to_send = self._resync(enc, to_send, 0)
        records = [enc.end_of_precopy()]
        n = await self._send(channel, records)
        src.count_sent(n, 0, 0, downtime=True)
        for start in range(0, int(to_send.size), _STEP_PAGES):
            idx = to_send[start : start + _STEP_PAGES]
            zero = int(np.count_nonzero(self.guest.zero_mask(idx)))
            n = await self._send(channel, encode_guest_pages(enc, self.guest, idx))
            src.count_sent(n, zero, int(idx.size) - zero, downtime=True)
        for dev in self.devices:
            chunks = dev.save_complete()
            n = await self._send(channel, [enc.device(c) for c in chunks])
            src.count_device_bytes(n, downtime=True)
        digests = [(dev.id, dev.digest()) for dev in self.devices]
        tail = enc.complete(self.guest.digest(), digests)
        await channel.write(tail)
        src.count_sent(len(tail), 0, 0, downtime=True)
        self._source_digest = {"ram": self.guest.digest(), "devices": dict(digests)}
        if channel.reader is not None and vm.config.enabled("return-path"):
            try:
                await asyncio.wait_for(self._resumed.wait(), _RESUME_TIMEOUT)
            except TimeoutError:
                logger.warning("destination did not report its resume; downtime is the source's")
        await channel.finish()
        vm.runstate = "postmigrate"
        src.complete(time.monotonic(), downtime_start)

    # -- incoming -----------------------------------------------------------------------
    def start_incoming(self, uri: str, *, at_startup: bool = False) -> None:
        """``-incoming URI`` or ``migrate-incoming``: listen (or read) and load a guest.

        Synchronous like QEMU's: the socket listens before the command returns.
        """
        cfg = self.vm.config
        if not at_startup:
            self.incoming.announce_setup()
        try:
            address = parse_uri(uri, file_ok=self.profile.since(8, 2))
        except LookupError:
            cfg.note_incoming(uri, started=False)
            raise CommandError(f"unknown migration protocol: {uri}") from None
        except ValueError as err:
            cfg.note_incoming(uri, started=False)
            raise CommandError(str(err)) from None
        loop = asyncio.get_running_loop()
        if address.scheme in ("tcp", "unix"):
            try:
                sock = _listen(address)
            except OSError as err:
                cfg.note_incoming(uri, started=False)
                reason = os.strerror(err.errno) if err.errno else str(err)
                raise CommandError(f"Failed to bind socket: {reason}") from None
            if address.scheme == "tcp":
                host, port = sock.getsockname()[:2]
                self.incoming.socket_address = [
                    {"type": "inet", "host": host, "port": str(port), "ipv4": True}
                ]
            else:
                self.incoming.socket_address = [{"type": "unix", "path": address.path}]
            cfg.note_incoming(uri, started=True)
            self.incoming.started = True
            self._listen_task = loop.create_task(self._serve_incoming(sock))
            return
        cfg.note_incoming(uri, started=True)
        self.incoming.started = True
        self._incoming_task = loop.create_task(self._load_from(address))

    async def _serve_incoming(self, sock: socket.socket) -> None:
        self._incoming_server = await asyncio.start_server(
            self._accept, sock=sock, limit=_STREAM_LIMIT
        )

    async def _load_from(self, address: Address) -> None:
        if address.scheme == "file":
            reader = asyncio.StreamReader()
            try:
                data = await asyncio.get_running_loop().run_in_executor(
                    None, _read_file, address.path
                )
            except OSError as err:
                self._fail_incoming(f"{address.path}: {os.strerror(err.errno or 0)}")
                return
            reader.feed_data(data)
            reader.feed_eof()
            await self._load(reader, None)
            return
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", address.command, stdout=asyncio.subprocess.PIPE
        )
        assert proc.stdout is not None
        await self._load(proc.stdout, None)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._incoming_task is not None:  # one migration per listener
            writer.close()
            return
        if self._incoming_server is not None:
            self._incoming_server.close()
        self._incoming_task = asyncio.current_task()
        await self._load(reader, writer)

    async def _load(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter | None
    ) -> None:
        inc = self.incoming
        inc.set_status("active")
        decoder = StreamDecoder()
        rp = ReturnPathEncoder()
        gate = SwitchoverAckGate(self._ack_enabled())
        loaders = {cfg.id: VfioSimLoader(cfg, gate) for cfg in self.device_configs}
        self._loaders = list(loaders.values())
        guest: GuestMemory | None = None
        complete: Complete | None = None

        def send_rp(data: bytes) -> None:
            if writer is not None and not writer.is_closing():
                writer.write(data)

        def send_ack() -> None:
            send_rp(rp.switchover_ack())

        try:
            while True:
                data = await reader.read(_READ_SIZE)
                decoder.receive_data(data)
                now = time.monotonic()
                for loader in loaders.values():
                    if loader.poll(now):
                        send_ack()
                while True:
                    event = decoder.next_event()
                    if isinstance(event, NeedData):
                        break
                    if isinstance(event, StreamHeader):
                        if event.ram_size != self.guest.size_bytes:
                            raise StreamError(
                                f"Length mismatch: pc.ram: {event.ram_size:#x} in != "
                                f"{self.guest.size_bytes:#x}: Invalid argument"
                            )
                        guest = guest_for_header(event)
                    elif guest is not None and apply_ram_event(guest, event):
                        pass
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
                    elif isinstance(event, Complete):
                        complete = event
                    elif isinstance(event, (SyncMarker, EndOfPrecopy)):
                        pass
                    elif isinstance(event, EndOfStream):
                        assert guest is not None and complete is not None
                        await self._finish_load(guest, complete, loaders, send_rp, rp)
                        return
                if not data:
                    raise StreamError("Unexpected end of migration stream")
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            raise
        except (StreamError, DeviceLoadError, OSError) as err:
            self._fail_incoming(str(err) or type(err).__name__)
        finally:
            if writer is not None:
                writer.close()

    def _arm_loader_timer(self, loader: VfioSimLoader, send_ack: Callable[[], None]) -> None:
        deadline = loader.next_deadline()
        if deadline is None or getattr(loader, "_timer_armed", False):
            return
        loader._timer_armed = True  # type: ignore[attr-defined]
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
        if vm.autostart:
            vm.start()
        else:
            vm.runstate = "paused"
        send_rp(rp.resumed(time.time()))
        self.incoming.set_status("completed")

    def _fail_incoming(self, reason: str) -> None:
        self.incoming.error_desc = reason
        self.incoming.set_status("failed")
        # QEMU 7.2 ends the destination process when an incoming migration fails.
        self.exit_process(1, f"load of migration failed: {reason}")


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


def _open_for_write(path: str) -> Any:
    return open(path, "wb")  # the channel owns and closes it


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()
