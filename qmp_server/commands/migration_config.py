"""QMP handlers for migration capabilities/parameters and the idle-state migration commands.

Contract: thin handlers over ``vm.config`` (:class:`~qmp_server.engine.config.MigrationConfig`)
and ``vm.migration_status``.  Arguments arrive validated against the schema.  Neighbours: the
migration engine, which owns running migrations: where a command does something beyond the
idle answer (``migrate-continue`` in pre-switchover, ``migrate_cancel`` while running,
``query-migrate`` once a migration ran, ...), the handler calls an optional hook on the VM
(``vm.migration_hooks``, see :class:`MigrationHooks`); without hooks it answers as an idle
QEMU does.

Texts checked live on QEMU 7.2: "There's a migration process in progress", "Migration not in
expected state: none", "migrate-pause is currently only supported during postcopy-active
state", "Migrate recover can only be run when postcopy is paused.", both
migrate-start-postcopy texts in that order, ``migrate_cancel`` -> ``{}``, ``query-migrate`` ->
``{}``.  ``migrate-continue`` with the *current* state (even ``none``) answers ``{}``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, cast

from qmp_server._types import JSONValue
from qmp_server.commands.registry import command
from qmp_server.engine.capabilities import running_states
from qmp_server.errors import CommandError

if TYPE_CHECKING:
    from qmp_server.engine.config import MigrationConfig
    from qmp_server.engine.vm import VirtualMachine

__all__ = ["MigrationHooks", "source_status"]

IN_PROGRESS = "There's a migration process in progress"


class MigrationHooks(Protocol):
    """What the migration engine may plug in; every method is called only when needed."""

    def continue_migration(self) -> None: ...  # migrate-continue matched pre-switchover
    def cancel(self) -> None: ...  # migrate_cancel
    def start_postcopy(self) -> None: ...  # migrate-start-postcopy passed its checks
    def pause(self) -> None: ...  # migrate-pause in postcopy-active (or recover, 10.0)
    def recover(self, uri: str) -> None: ...  # migrate-recover on a paused destination
    def query(self) -> dict[str, Any]: ...  # query-migrate once a migration ran


def _config(vm: VirtualMachine) -> MigrationConfig:
    # ``vm.config`` is attached by the lead; cast keeps this valid before and after that.
    cfg: MigrationConfig = cast(Any, vm).config
    return cfg


def _hooks(vm: VirtualMachine) -> MigrationHooks | None:
    hooks: MigrationHooks | None = getattr(vm, "migration_hooks", None)
    return hooks


def source_status(vm: VirtualMachine) -> str:
    """The state QEMU's ``s->state`` (the *outgoing* migration) has.

    A destination's own outgoing state stays ``none`` while it receives: QEMU keeps the
    incoming state elsewhere (``mis->state``).
    """
    return vm.source_migration_status


def _incoming_status(vm: VirtualMachine) -> str:
    return vm.incoming_migration_status


@command("query-migrate-capabilities")
def query_migrate_capabilities(vm: VirtualMachine, args: dict[str, Any]) -> JSONValue:
    return _config(vm).query_capabilities()


@command("migrate-set-capabilities")
def migrate_set_capabilities(vm: VirtualMachine, args: dict[str, Any]) -> JSONValue:
    if source_status(vm) in running_states(vm.profile):
        raise CommandError(IN_PROGRESS)
    cfg = _config(vm)
    cfg.set_capabilities(
        args["capabilities"], cfg.caps_context(inmigrate=vm.runstate == "inmigrate")
    )
    return None


@command("query-migrate-parameters")
def query_migrate_parameters(vm: VirtualMachine, args: dict[str, Any]) -> JSONValue:
    return _config(vm).query_parameters()


@command("migrate-set-parameters")
def migrate_set_parameters(vm: VirtualMachine, args: dict[str, Any]) -> JSONValue:
    _config(vm).set_parameters(args)  # allowed during migration, as in QEMU
    return None


@command("migrate-continue")
def migrate_continue(vm: VirtualMachine, args: dict[str, Any]) -> JSONValue:
    status = source_status(vm)
    if args["state"] != status:
        raise CommandError(f"Migration not in expected state: {status}")
    hooks = _hooks(vm)
    if status == "pre-switchover" and hooks is not None:
        hooks.continue_migration()
    return None


@command("migrate-pause")
def migrate_pause(vm: VirtualMachine, args: dict[str, Any]) -> JSONValue:
    allowed = {"postcopy-active"}
    if vm.profile.since(10, 0):
        allowed.add("postcopy-recover")
    hooks = _hooks(vm)
    if (source_status(vm) in allowed or _incoming_status(vm) in allowed) and hooks is not None:
        hooks.pause()
        return None
    if vm.profile.since(10, 0):
        raise CommandError(
            "migrate-pause is currently only supported during postcopy-active or "
            "postcopy-recover state"
        )
    raise CommandError("migrate-pause is currently only supported during postcopy-active state")


@command("migrate-recover")
def migrate_recover(vm: VirtualMachine, args: dict[str, Any]) -> JSONValue:
    hooks = _hooks(vm)
    if _incoming_status(vm) != "postcopy-paused" or hooks is None:
        raise CommandError("Migrate recover can only be run when postcopy is paused.")
    hooks.recover(str(args["uri"]))
    return None


@command("migrate-start-postcopy")
def migrate_start_postcopy(vm: VirtualMachine, args: dict[str, Any]) -> JSONValue:
    cfg = _config(vm)
    if not (cfg.enabled("postcopy-ram") or cfg.enabled("dirty-bitmaps")):
        raise CommandError(
            "Enable postcopy with migrate_set_capability before the start of migration"
        )
    if source_status(vm) == "none":
        raise CommandError("Postcopy must be started after migration has been started")
    hooks = _hooks(vm)
    if hooks is not None:
        hooks.start_postcopy()
    return None


@command("migrate_cancel")
def migrate_cancel(vm: VirtualMachine, args: dict[str, Any]) -> JSONValue:
    hooks = _hooks(vm)
    if hooks is not None:
        hooks.cancel()
    return None


@command("query-migrate")
def query_migrate(vm: VirtualMachine, args: dict[str, Any]) -> JSONValue:
    hooks = _hooks(vm)
    if hooks is not None:
        return hooks.query()
    return {}
