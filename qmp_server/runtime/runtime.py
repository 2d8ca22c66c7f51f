"""The process of one VM: builds it, runs it until quit or a signal, with the REST mirror.

Shutdown order (fixed): the SHUTDOWN event is broadcast, pending replies are flushed, monitors
stop listening and close their clients, unix socket files are removed, the loop ends.
A fleet of VMs in one process is :mod:`qmp_server.runtime.fleet`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from qmp_server.cli import Options
from qmp_server.runtime.process import ProcessRunner, on_signals, write_pidfile
from qmp_server.runtime.vm_instance import SCHEMA_PATH, VMInstance, build_vm, stderr_line

__all__ = ["SCHEMA_PATH", "Runtime", "build_vm", "write_pidfile"]


class Runtime(VMInstance):
    """One qmp-server process: one VM, its monitors, signals, ``-daemonize`` and ``--http``."""

    def __init__(self, options: Options) -> None:
        super().__init__(options, on_end=lambda _vm: self._stop())
        self._stopping: asyncio.Event | None = None
        self.http: Any = None
        self.process = ProcessRunner(
            daemonize=options.daemonize, pidfile=options.pidfile, poll_us=options.poll_us
        )

    def _stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()

    def _after_input(self) -> None:
        # before serve() starts nothing can end the process yet
        if self._stopping is not None:
            super()._after_input()

    def _on_signal(self, signum: int) -> None:
        stderr_line(f"qmp-server: terminating on signal {signum}\n")
        self.vm.request_shutdown("host-signal")
        self._stop()

    async def serve(self) -> None:
        self._stopping = asyncio.Event()
        on_signals(self._on_signal)
        try:
            if not await self.start():
                return
            if self.options.http is not None:
                from qmp_server.rest.server import start_http  # FastAPI loads only here

                self.http = await start_http(self)
            self.process.detach()
            await self._stopping.wait()
            await asyncio.sleep(0)  # let transports flush what is queued
        finally:
            if self.http is not None:
                await self.http.close()
            await self.close()

    def run(self) -> int:
        """Serve until ``quit``, a guest power-off or a signal; the exit status."""
        return self.process.run(self.serve, lambda: self.exit_code)
