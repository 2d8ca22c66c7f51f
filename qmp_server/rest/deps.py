"""The one dependency that reaches the runtime (:func:`get_context`), and the write guard.

Auth rules:

1. Without ``--http-token-file`` the mirror is read-only: every mutation answers 403.
2. With it, a mutation needs ``Authorization: Bearer <token>``; a missing or wrong token answers
   401 with ``WWW-Authenticate: Bearer``.  The comparison is :func:`hmac.compare_digest`.
3. Reads never need a token.  A mutation is ``PATCH /api/v1/capabilities``,
   ``PATCH /api/v1/parameters`` and ``POST /api/v1/qmp/{command}`` for any command that is not
   a query (:func:`is_read_only_command`).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Protocol

from fastapi import Depends, Request

from qmp_server.rest.errors import RestError
from qmp_server.rest.policy import UriPolicy

if TYPE_CHECKING:
    from qmp_server.rest.events import EventSource
    from qmp_server.rest.metrics import RestMetrics
    from qmp_server.runtime.vm_instance import VMInstance

__all__ = ["ContextSource", "Ctx", "RestContext", "check_token", "get_context",
           "is_read_only_command", "load_token", "require_write"]  # fmt: skip

READ_ONLY_DESC = "The REST mirror is read-only (start qmp-server with --http-token-file)"
MISSING_TOKEN_DESC = "This request needs 'Authorization: Bearer <token>'"
BAD_TOKEN_DESC = "Invalid bearer token"


def load_token(path: str | Path) -> str:
    """The token in ``path`` (surrounding white space removed).

    :raise OSError: when the file cannot be read or holds no token (the CLI reports it).
    """
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as err:
        raise OSError(err.errno, f"--http-token-file {path}: {err.strerror}") from None
    if not token:
        raise OSError(f"--http-token-file {path}: the file holds no token")
    return token


def is_read_only_command(name: str) -> bool:
    """Whether ``POST /api/v1/qmp/<name>`` is allowed without a token.

    >>> is_read_only_command("query-migrate"), is_read_only_command("x-query-guest-digest")
    (True, True)
    >>> is_read_only_command("migrate")
    False
    """
    return name.startswith(("query-", "x-query-"))


@dataclass(eq=False)
class RestContext:
    """Everything a route needs: the VM, its events, metrics, auth and URI policy."""

    runtime: VMInstance
    hub: EventSource
    metrics: RestMetrics
    token: str | None = None
    policy: UriPolicy = field(default_factory=UriPolicy)

    @property
    def writable(self) -> bool:
        return self.token is not None

    def check_write(self, authorization: str | None) -> None:
        """Apply auth rules 1 and 2 to one mutation."""
        check_token(self.token, authorization)


def check_token(token: str | None, authorization: str | None) -> None:
    """Auth rules 1 and 2: ``authorization`` (the header) against ``token``.

    :raise RestError: 403 (read-only) or 401.
    """
    if token is None:
        raise RestError(403, READ_ONLY_DESC)
    scheme, _, presented = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise RestError(401, MISSING_TOKEN_DESC, headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(presented.strip().encode(), token.encode()):
        raise RestError(
            401, BAD_TOKEN_DESC, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
        )


class ContextSource(Protocol):
    """What a fleet app keeps in ``app.state.rest``: the context of the VM a request names."""

    def context_for(self, request: Request) -> RestContext: ...


def get_context(request: Request) -> RestContext:
    """The one VM a request is about: the app's, or (fleet) the one its path names."""
    source: RestContext | ContextSource = request.app.state.rest
    if isinstance(source, RestContext):
        return source
    return source.context_for(request)


Ctx = Annotated[RestContext, Depends(get_context)]


def require_write(request: Request, ctx: Ctx) -> None:
    """Dependency for mutating routes."""
    ctx.check_write(request.headers.get("authorization"))
