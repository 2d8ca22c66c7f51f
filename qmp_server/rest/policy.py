"""What a QMP command may not ask for when it arrives over HTTP (it may over QMP).

Pure.  Rules:

1. ``exec:`` migration URIs, and ``channels`` whose address has ``"transport": "exec"``, are
   refused: over HTTP they would let any token holder run a shell command on the host.
2. ``file:`` URIs and ``"transport": "file"`` addresses are refused unless the REST mirror was
   given a directory (:attr:`UriPolicy.file_dir`); then the file must resolve inside it.  No
   command-line option sets the directory yet: the hook is ``create_app(runtime,
   policy=UriPolicy(file_dir=...))``.

3. ``human-monitor-command`` is refused: an HMP line (``migrate -d exec:...``) would get around
   rules 1 and 2; HTTP clients use the QMP commands.

The commands that carry URIs: ``migrate``, ``migrate-incoming`` (``uri``/``channels``) and
``migrate-recover`` (``uri``).

>>> check_uris("migrate", {"uri": "exec:cat > /tmp/x"}, UriPolicy())
Traceback (most recent call last):
...
qmp_server.rest.errors.RestError: exec: migration URIs are refused over HTTP
>>> check_uris("migrate", {"uri": "tcp:127.0.0.1:4444"}, UriPolicy())
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qmp_server.rest.errors import RestError

__all__ = ["URI_COMMANDS", "UriPolicy", "check_uris"]

URI_COMMANDS = frozenset({"migrate", "migrate-incoming", "migrate-recover"})
EXEC_REFUSED = "exec: migration URIs are refused over HTTP"
FILE_REFUSED = "file: migration URIs are refused over HTTP (no directory is configured)"
HMP_REFUSED = "human-monitor-command is refused over HTTP (use the QMP commands)"


@dataclass(frozen=True, slots=True)
class UriPolicy:
    """``file_dir``: the one directory ``file:`` migrations may use over HTTP (None: none)."""

    file_dir: Path | None = None


def _check_file(path: str, policy: UriPolicy) -> None:
    if policy.file_dir is None:
        raise RestError(403, FILE_REFUSED)
    base = os.path.realpath(policy.file_dir)
    target = os.path.realpath(os.path.join(base, path))
    if os.path.commonpath([base, target]) != base:
        raise RestError(403, f"file: migration URIs must name a file inside {base}")


def _check_uri(uri: str, policy: UriPolicy) -> None:
    scheme = uri.split(":", 1)[0].strip().lower() if ":" in uri else ""
    if scheme == "exec":
        raise RestError(403, EXEC_REFUSED)
    if scheme == "file":
        _check_file(uri.split(":", 1)[1].split(",", 1)[0], policy)


def check_uris(command: str, args: dict[str, Any], policy: UriPolicy) -> None:
    """Raise :class:`RestError` (403) when ``command``'s arguments name a refused transport."""
    if command == "human-monitor-command":
        raise RestError(403, HMP_REFUSED)
    if command not in URI_COMMANDS:
        return
    uri = args.get("uri")
    if isinstance(uri, str):
        _check_uri(uri, policy)
    channels = args.get("channels")
    if isinstance(channels, list):
        for channel in channels:
            addr = channel.get("addr") if isinstance(channel, dict) else None
            if not isinstance(addr, dict):
                continue
            transport = addr.get("transport")
            if transport == "exec":
                raise RestError(403, EXEC_REFUSED)
            if transport == "file":
                filename = addr.get("filename")
                _check_file(filename if isinstance(filename, str) else "", policy)
