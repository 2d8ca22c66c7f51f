"""Fixtures for the hardening tests: processes with QMPClients, always torn down."""

from __future__ import annotations

import asyncio

from migration_rig import WAIT, MiB, Rig, Side, Start
from server_process import ServerProcess

__all__ = ["WAIT", "MiB", "Rig", "Side", "Start", "exit_code", "vm_rss_kib"]


def vm_rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB, from /proc/PID/status."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


async def exit_code(server: ServerProcess, within: float = 15.0) -> int | None:
    """The process's exit status, waited for without blocking the loop (None: still running)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while server.proc.poll() is None and loop.time() < deadline:  # noqa: ASYNC110 (a process)
        await asyncio.sleep(0.02)
    return server.proc.poll()
