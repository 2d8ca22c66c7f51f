"""A blocking QMP client for process tests: descriptors with a command, events kept."""

from __future__ import annotations

import json
import socket
import time
from typing import Any


class Client:
    """A blocking QMP client that can send descriptors with a command."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.buf = b""
        self.events: list[dict[str, Any]] = []
        self._read()
        assert self.cmd("qmp_capabilities") == {"return": {}}

    def _read(self) -> dict[str, Any]:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buf)
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        value: dict[str, Any] = json.loads(line)
        return value

    def cmd(self, name: str, fds: list[int] | None = None, **args: Any) -> dict[str, Any]:
        req: dict[str, Any] = {"execute": name}
        if args:
            req["arguments"] = args
        data = json.dumps(req).encode() + b"\n"
        if fds:
            socket.send_fds(self.sock, [data], fds)
        else:
            self.sock.sendall(data)
        while True:
            reply = self._read()
            if "event" in reply:
                self.events.append(reply)
                continue
            return reply

    def close(self) -> None:
        self.sock.close()

    def wait_event(self, name: str, timeout: float = 10) -> dict[str, Any]:
        """The next ``name`` event (already received ones first)."""
        deadline = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self.events):
                if event["event"] == name:
                    return self.events.pop(i)
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                self.events.append(self._read())
            except TimeoutError:
                raise AssertionError(f"no {name} event; saw {self.events}") from None
            finally:
                self.sock.settimeout(10)
