"""Character devices of the guest's devices: serial consoles, guest-agent channels, log files.

QEMU creates every ``-chardev`` at start-up, whatever uses it: a pty a console client opens
(libvirt's ``<serial type='pty'>``, read back from ``query-chardev``), a listening socket
(Proxmox's guest-agent channel, ``virsh console`` over a unix socket), a file.  The emulated
guest writes nothing to them; what a client sends is read and dropped, as a guest without a
console or agent would leave it.  ``query-chardev`` lists them with QEMU's filename texts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

from qmp_server.engine.device_table import DeviceTable
from qmp_server.engine.domain import ChardevState
from qmp_server.runtime.monitor import ChardevSpec, _listening_unix_socket

__all__ = ["SERIAL_FRONTENDS", "GuestChardev", "frontend_opens"]

#: devices that open their chardev when they are created (a virtio port waits for the guest)
SERIAL_FRONTENDS = frozenset(
    {"isa-serial", "pci-serial", "pci-serial-2x", "pci-serial-4x", "usb-serial",
     "isa-parallel", "isa-debugcon"}
)  # fmt: skip


class GuestChardev:
    """One ``-chardev`` no monitor uses."""

    def __init__(self, label: str, spec: ChardevSpec, frontend_open: bool) -> None:
        self.label = label
        self.spec = spec
        self.frontend_open = frontend_open
        self._fds: list[int] = []
        self._server: asyncio.AbstractServer | None = None
        self._clients: list[asyncio.StreamWriter] = []
        self._pty = ""
        self._task: asyncio.Future[None] | None = None

    async def start(self) -> None:
        """Create it as QEMU does. :raise OSError: naming the path, as QEMU's start-up does."""
        spec = self.spec
        if spec.kind == "pty":
            master, follower = os.openpty()
            self._pty = os.ttyname(follower)
            os.close(follower)  # a console client opens it by name
            self._fds.append(master)
        elif spec.kind == "file":
            self._fds.append(os.open(spec.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666))
        elif spec.kind in ("unix", "tcp") and spec.server:
            await self._listen()
        elif spec.kind in ("unix", "tcp"):
            await self._connect()

    async def _listen(self) -> None:
        spec = self.spec
        try:
            if spec.kind == "unix":
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(spec.path)
                sock = _listening_unix_socket(spec.path)
                self._server = await asyncio.start_unix_server(self._drain, sock=sock)
            else:
                self._server = await asyncio.start_server(self._drain, spec.host or None,
                                                          spec.port)  # fmt: skip
        except OSError as err:
            where = spec.path if spec.kind == "unix" else f"{spec.host}:{spec.port}"
            raise OSError(f"Failed to bind socket to '{where}': {os.strerror(err.errno or 0)}"
                          ) from None  # fmt: skip

    async def _connect(self) -> None:
        spec = self.spec
        try:
            if spec.kind == "unix":
                reader, writer = await asyncio.open_unix_connection(spec.path)
            else:
                reader, writer = await asyncio.open_connection(spec.host, spec.port)
        except OSError as err:
            if spec.reconnect:
                return  # QEMU starts anyway and retries; nothing is ever written to it
            where = spec.path if spec.kind == "unix" else f"{spec.host}:{spec.port}"
            raise OSError(f"Failed to connect to '{where}': {os.strerror(err.errno or 0)}"
                          ) from None  # fmt: skip
        self._task = asyncio.ensure_future(self._drain(reader, writer))

    async def _drain(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.append(writer)
        try:
            while await reader.read(1 << 16):
                pass
        except OSError:
            pass
        finally:
            self._clients.remove(writer)
            writer.close()

    def state(self) -> ChardevState:
        """``query-chardev``'s entry, in QEMU's words."""
        spec = self.spec
        if spec.kind == "pty":
            return ChardevState(self.label, f"pty:{self._pty}", self.frontend_open)
        if spec.kind in ("unix", "tcp"):
            where = f"unix:{spec.path}" if spec.kind == "unix" else f"tcp:{spec.host}:{spec.port}"
            if spec.server:
                where += ",server=on"
            if not self._clients:
                where = f"disconnected:{where}"
            elif spec.kind == "tcp":
                peer = self._clients[0].get_extra_info("peername")
                where += f" <-> {peer[0]}:{peer[1]}"
            return ChardevState(self.label, where, self.frontend_open)
        return ChardevState(self.label, spec.kind, self.frontend_open)

    async def close(self) -> None:
        for writer in list(self._clients):
            writer.close()
        if self._server is not None:
            self._server.close()
            if self.spec.kind == "unix":
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.spec.path)
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()


def frontend_opens(label: str, devices: DeviceTable) -> bool:
    """Whether a ``-device`` that opens its chardev at creation uses chardev ``label``."""
    return any(d.driver in SERIAL_FRONTENDS and d.props.get("chardev") == label for d in devices)
