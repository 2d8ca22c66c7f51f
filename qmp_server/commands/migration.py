"""QMP handlers that start or inspect a real migration (``migrate``, ``migrate-incoming``) and
the guest-model extensions (``x-set-dirty-rate``, ``x-query-guest-digest``).

Bring-up state: the migration engine is not wired yet, so these answer with a clear error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qmp_server.commands.registry import command
from qmp_server.errors import CommandError

if TYPE_CHECKING:
    from qmp_server.engine.vm import VirtualMachine

_NOT_YET = "qmp-server: the migration engine is not available in this build"


@command("migrate")
def migrate(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    raise CommandError(_NOT_YET)


@command("migrate-incoming")
def migrate_incoming(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    raise CommandError(_NOT_YET)


@command("x-set-dirty-rate")
def set_dirty_rate(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    raise CommandError(_NOT_YET)


@command("x-query-guest-digest")
def query_guest_digest(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    raise CommandError(_NOT_YET)
