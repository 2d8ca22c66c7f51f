"""Every REST error is ``{"class": ..., "desc": ...}``: QMP errors keep their class and text.

Status mapping for a :class:`~qmp_server.errors.CommandError` (see :func:`status_for`):

* ``CommandNotFound`` → 404;
* ``"There's a migration process in progress"`` → 409 (whatever its class);
* ``DeviceNotActive``, ``KVMMissingCap`` → 409 (the request is fine, the VM's state is not);
* ``DeviceNotFound`` → 404;
* anything else (``GenericError``: bad arguments, a command refused in this state) → 400.

Refusals of the HTTP layer itself use classes QMP never sends: ``BadRequest`` (body is not a
JSON object), ``Unauthorized`` (401), ``Forbidden`` (403: read-only, or a URI refused over
HTTP), ``NotFound`` (no such route), ``MethodNotAllowed``, ``PayloadTooLarge`` (413).
"""

from __future__ import annotations

from typing import Any

from qmp_server.commands.migration_config import IN_PROGRESS
from qmp_server.errors import COMMAND_NOT_FOUND, DEVICE_NOT_ACTIVE, DEVICE_NOT_FOUND, CommandError

__all__ = ["HTTP_CLASSES", "RestError", "error_body", "from_command_error", "status_for"]

#: Error classes for HTTP statuses raised outside the command layer.
HTTP_CLASSES = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
    422: "BadRequest",
}

_STATUS_BY_CLASS = {
    COMMAND_NOT_FOUND: 404,
    DEVICE_NOT_FOUND: 404,
    DEVICE_NOT_ACTIVE: 409,
    "KVMMissingCap": 409,
}


class RestError(Exception):
    """An HTTP error answered as ``{"class", "desc"}`` with ``status`` and extra headers."""

    def __init__(
        self, status: int, desc: str, error_class: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        super().__init__(desc)
        self.status = status
        self.desc = desc
        self.error_class = error_class or HTTP_CLASSES.get(status, "GenericError")
        self.headers = headers


def status_for(err: CommandError) -> int:
    """The HTTP status for a QMP error.

    >>> status_for(CommandError("There's a migration process in progress"))
    409
    >>> status_for(CommandError("The command x has not been found", "CommandNotFound"))
    404
    >>> status_for(CommandError("Parameter 'uri' is missing"))
    400
    """
    if err.desc == IN_PROGRESS:
        return 409
    return _STATUS_BY_CLASS.get(err.error_class, 400)


def from_command_error(err: CommandError) -> RestError:
    return RestError(status_for(err), err.desc, err.error_class)


def error_body(error_class: str, desc: str) -> dict[str, Any]:
    return {"class": error_class, "desc": desc}
