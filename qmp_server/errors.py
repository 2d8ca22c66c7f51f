"""The exception tree of qmp-server.

::

    QMPServerError
     +-- CommandError      a command failed; carries the QMP error class and desc for the wire
     +-- SchemaError       the QAPI schema is wrong; carries file:line and the definition
     +-- UsageError        a caller (command line, configuration) asked for something invalid
     +-- ProtocolError     the peer broke the protocol (reported to it, never raised across it)

Error texts that reach QMP clients are QEMU's, verbatim: libvirt shows ``desc`` to users.
"""

from __future__ import annotations

GENERIC_ERROR = "GenericError"
COMMAND_NOT_FOUND = "CommandNotFound"
DEVICE_NOT_ACTIVE = "DeviceNotActive"
DEVICE_NOT_FOUND = "DeviceNotFound"
KVM_MISSING_CAP = "KVMMissingCap"


class QMPServerError(Exception):
    """Root of every error qmp-server raises on purpose."""


class CommandError(QMPServerError):
    """A QMP command failed: ``error_class`` and ``desc`` go on the wire unchanged."""

    def __init__(self, desc: str, error_class: str = GENERIC_ERROR) -> None:
        super().__init__(desc)
        self.desc = desc
        self.error_class = error_class

    def __repr__(self) -> str:
        return f"CommandError({self.desc!r}, {self.error_class!r})"


class SchemaError(QMPServerError):
    """The QAPI schema is invalid; ``str()`` reads ``file:line: In ...: message``."""

    def __init__(self, fname: str, line: int, msg: str, context: str | None = None) -> None:
        self.fname = fname
        self.line = line
        self.msg = msg
        self.context = context
        where = f"{fname}:{line}: "
        super().__init__(where + (f"{context}: " if context else "") + msg)


class UsageError(QMPServerError):
    """The command line or configuration is invalid; the CLI prints it and exits 1."""


class ProtocolError(QMPServerError):
    """The peer sent something the protocol does not allow."""
