"""``-chardev`` / ``-qmp`` / ``-monitor`` backend texts, parsed as QEMU parses them.

Sockets (``socket,path=|host=,port=|fd=``, and the ``unix:``/``tcp:`` short forms of ``-qmp``)
can carry a monitor; the other backends QEMU has (``pty``, ``null``, ``file`` ...) are kept for
the guest's devices (:mod:`qmp_server.runtime.guest_chardevs`).  Errors are QEMU's texts.
"""

from __future__ import annotations

import os
import stat

from qmp_server.errors import UsageError
from qmp_server.runtime.monitor import ChardevSpec

__all__ = ["check_monitor_chardev", "parse_chardev"]


#: chardev backends besides sockets that QEMU has (a monitor needs a socket here)
_OTHER_CHARDEVS = frozenset(
    {"pty", "null", "file", "pipe", "vc", "ringbuf", "memory", "udp", "serial", "tty",
     "parallel", "parport", "spicevmc", "spiceport", "braille", "msmouse", "wctablet",
     "testdev", "qemu-vdagent", "dbus"}
)  # fmt: skip


def _parse_onoff(key: str, value: str | None) -> bool:
    if value is None or value in ("on", "yes", "true", "y"):
        return True
    if value in ("off", "no", "false", "n"):
        return False
    raise UsageError(f"Parameter '{key}' expects 'on' or 'off'")


def parse_chardev(text: str, *, implicit_server: bool = False) -> tuple[str | None, ChardevSpec]:
    """Parse ``-qmp``/``-chardev`` backend text; returns (chardev id, spec)."""
    parts = text.split(",")
    head, opts = parts[0], parts[1:]
    kv: dict[str, str | None] = {}
    for opt in opts:
        key, sep, value = opt.partition("=")
        kv[key] = value if sep else None
    if head == "socket":
        path = kv.pop("path", None)
        host = kv.pop("host", None)
        port = kv.pop("port", None)
        fd = kv.pop("fd", None)
        if fd is not None:
            kind = "fd"
        elif path:
            kind = "unix"
        elif port:
            kind = "tcp"
        else:
            raise UsageError("chardev: socket: 'host' and 'port' or 'path' required")
    elif head.startswith("unix:"):
        kind, path, host, port = "unix", head[5:], None, None
    elif head.startswith("tcp:"):
        kind, path = "tcp", None
        host, _, port = head[4:].rpartition(":")
    elif head == "stdio" or head.startswith("stdio"):
        raise UsageError(f"'{text}': stdio monitors are not supported; use a socket")
    elif head in _OTHER_CHARDEVS:
        # not a socket: a guest-side character device (serial console, log file ...)
        chardev_id = kv.pop("id", None)
        return chardev_id, ChardevSpec(head, path=kv.get("path") or "", server=False,
                                       option=text)  # fmt: skip
    else:
        raise UsageError(f"'{head}' is not a valid char driver")
    chardev_id = kv.pop("id", None)
    server = _parse_onoff("server", kv.pop("server", "off" if not implicit_server else "on"))
    wait_value = kv.pop("wait", None) if "wait" in kv else "on"
    nowait = "nowait" in kv
    kv.pop("nowait", None)
    wait = False if nowait else _parse_onoff("wait", wait_value)
    reconnect = _parse_reconnect(kv.pop("reconnect", None) or "0")
    for ignored in ("telnet", "tls-creds", "logfile", "logappend", "mux", "ipv4",
                    "ipv6", "nodelay", "websocket", "abstract", "tight"):  # fmt: skip
        kv.pop(ignored, None)
    if kv:
        raise UsageError(f"Invalid parameter '{next(iter(kv))}'")
    if kind == "fd":
        assert fd is not None
        return chardev_id, ChardevSpec(
            "fd", fd=_inherited_socket(text, fd), server=server, wait=wait, option=text
        )
    if kind == "unix":
        if not path:
            raise UsageError("chardev: socket: 'path' required")
        return chardev_id, ChardevSpec(
            "unix", path=path, server=server, wait=wait, reconnect=reconnect
        )
    try:
        port_number = int(port or "")
    except ValueError:
        raise UsageError(f"error parsing port in address '{host}:{port}'") from None
    return chardev_id, ChardevSpec(
        "tcp",
        host=host or "0.0.0.0",
        port=port_number,
        server=server,
        wait=wait,
        reconnect=reconnect,
    )


def check_monitor_chardev(option: str, spec: ChardevSpec) -> None:
    if spec.kind not in ("unix", "tcp", "fd"):
        raise UsageError(f"-mon {option}: a monitor on a '{spec.kind}' chardev is not "
                         "supported by qmp-server (use a socket)")  # fmt: skip


def _parse_reconnect(value: str) -> int:
    """``reconnect=SECONDS`` of a client socket: retry the connection that often (0: never)."""
    try:
        seconds = int(value, 10)
    except ValueError:
        raise UsageError("Parameter 'reconnect' expects a number") from None
    return max(seconds, 0)


def _inherited_socket(text: str, value: str) -> int:
    """``fd=N`` of a socket chardev: N must be an open socket (QEMU's checks and texts)."""
    try:
        fd = int(value, 10)
    except ValueError:
        fd = -1
    if fd < 0:
        raise UsageError(f"-chardev {text}: Unable to parse FD number {value}")
    try:
        is_socket = stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        is_socket = False
    if not is_socket:
        raise UsageError(f"-chardev {text}: File descriptor '{fd}' is not a socket")
    return fd
