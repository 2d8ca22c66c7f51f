"""Real threads for the vCPUs and I/O threads: libvirt writes their ids into cgroups.

Each thread blocks on one Event until the process ends, so it costs a stack and nothing else.
With ``-name ...,debug-threads=on`` they carry QEMU's names (``CPU 0/TCG``, ``IO iothread1``),
set through ``prctl(PR_SET_NAME)``, so ``ps -T``/``/proc/PID/task/TID/comm`` read as for QEMU.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import threading

__all__ = ["IdleThreads"]

_PR_SET_NAME = 15


def _set_name(name: str) -> None:
    with contextlib.suppress(OSError, AttributeError, TypeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)


class IdleThreads:
    """Threads that exist only to have an id; :meth:`close` ends them all."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self, name: str | None) -> int:
        """Start one idle thread (named ``name`` in the kernel if given); its native id."""
        ready = threading.Event()

        def body() -> None:
            if name is not None:
                _set_name(name)
            ready.set()
            self._stop.wait()

        thread = threading.Thread(target=body, name=name or "idle", daemon=True)
        thread.start()
        ready.wait()
        self._threads.append(thread)
        return thread.native_id or 0

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=1)
        self._threads.clear()
