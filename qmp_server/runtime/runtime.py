"""The process: builds the schema, the VM and the monitors, runs them until quit or a signal.

Shutdown order (fixed): the SHUTDOWN event is broadcast, pending replies are flushed, monitors
stop listening and close their clients, unix socket files are removed, the loop ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

from qmp_server import commands as _commands  # noqa: F401  (handlers register on import)
from qmp_server.cli import Options
from qmp_server.commands import control as _control  # noqa: F401
from qmp_server.commands.dispatch import Dispatcher
from qmp_server.commands.control import version_info
from qmp_server.engine.vm import VirtualMachine
from qmp_server.errors import UsageError
from qmp_server.qapi import ArgumentValidator, load_schema
from qmp_server.runtime.monitor import QMPMonitor
from qmp_server.wire.encoder import encode_line

__all__ = ["SCHEMA_PATH", "Runtime", "build_vm"]

logger = logging.getLogger(__name__)


def _schema_path() -> Path:
    here = Path(__file__).resolve().parent.parent.parent / "schema" / "migration.json"
    if here.exists():
        return here
    return Path(str(resources.files("qmp_server") / "schema" / "migration.json"))


SCHEMA_PATH = _schema_path()


def build_vm(options: Options, emit: Any) -> VirtualMachine:
    """Load the schema for the profile and create the VM with its migration configuration."""
    schema = load_schema(SCHEMA_PATH, options.profile.defines)
    vm = VirtualMachine(
        options.profile,
        schema,
        emit,
        start_paused=options.start_paused,
        incoming=options.incoming,
    )
    try:
        from qmp_server.commands import migration_config as _mc  # noqa: F401
        from qmp_server.engine.config import MigrationConfig
        from qmp_server.engine.host import HostInfo
    except ImportError:  # pragma: no cover - during bring-up only
        return vm
    host = HostInfo.parse(options.host) if options.host else HostInfo()
    vm.host = host  # type: ignore[attr-defined]
    vm.config = MigrationConfig.from_globals(  # type: ignore[attr-defined]
        options.profile, host, options.globals
    )
    return vm


class Runtime:
    """Owns the VM, the dispatcher and the monitors of one qmp-server process."""

    def __init__(self, options: Options) -> None:
        self.options = options
        bad = [g for g in options.globals if g[0] != "migration"]
        if bad:
            driver, prop, value = bad[0]
            raise UsageError(
                f"can't apply global {driver}.{prop}={value}: "
                f"Property '{driver}.{prop}' not found"
            )
        self.vm = build_vm(options, self.emit)
        self.dispatcher = Dispatcher(self.vm, ArgumentValidator(self.vm.schema))
        self.monitors = [
            QMPMonitor(spec, self.dispatcher, self.greeting, self._after_input)
            for spec in options.monitors
        ]
        self._stopping: asyncio.Event | None = None

    # -- events -------------------------------------------------------------------------
    def emit(self, name: str, data: dict[str, Any] | None) -> None:
        now = time.time_ns() // 1000
        event: dict[str, Any] = {
            "event": name,
            "timestamp": {"seconds": now // 1_000_000, "microseconds": now % 1_000_000},
        }
        if data is not None:
            event["data"] = data
        line = encode_line(event)
        for monitor in self.monitors:
            monitor.broadcast(line)

    def greeting(self) -> dict[str, Any]:
        return {"QMP": {"version": version_info(self.vm), "capabilities": ["oob"]}}

    # -- lifecycle ----------------------------------------------------------------------
    def _after_input(self) -> None:
        if self.vm.shutdown_reason is not None and self._stopping is not None:
            self._stopping.set()

    def _on_signal(self, signum: int) -> None:
        sys.stderr.write(f"qmp-server: terminating on signal {signum}\n")
        self.vm.request_shutdown("host-signal")
        if self._stopping is not None:
            self._stopping.set()

    async def serve(self) -> None:
        self._stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, self._on_signal, signum)
        try:
            for monitor in self.monitors:
                await monitor.start()
            await self._stopping.wait()
            await asyncio.sleep(0)  # let transports flush what is queued
        finally:
            for monitor in self.monitors:
                await monitor.close()

    def run(self) -> int:
        try:
            asyncio.run(self.serve())
        except OSError as err:
            sys.stderr.write(f"qmp-server: {err}\n")
            return 1
        return 0
