"""QMP handlers that start a real migration (``migrate``, ``migrate-incoming``) and the guest
model's extensions (``x-set-dirty-rate``, ``x-query-guest-digest``).

The handlers check what QEMU checks before touching the transport and hand the rest to the
migration driver attached to the VM (``vm.migration_hooks``, see
:class:`qmp_server.engine.vm.MigrationDriver`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qmp_server.commands.registry import command
from qmp_server.engine.uri import select_uri
from qmp_server.errors import CommandError

if TYPE_CHECKING:
    from qmp_server.engine.vm import MigrationDriver, VirtualMachine


def _driver(vm: VirtualMachine) -> MigrationDriver:
    driver = vm.migration_hooks
    if driver is None:
        raise CommandError("qmp-server: no migration driver in this process")
    return driver


@command("migrate")
def migrate(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    if args.get("resume"):
        if _driver(vm).source_status != "postcopy-paused":
            raise CommandError("Cannot resume if there is no paused migration")
        _driver(vm).resume(select_uri(args, incoming=False))
        return None
    if args.get("blk") or args.get("inc"):
        raise CommandError("qmp-server does not model block migration (blk/inc)")
    # ``uri`` or ``channels`` (8.2+): both are checked before anything else (QEMU 10.0)
    _driver(vm).migrate(select_uri(args, incoming=False))
    return None


@command("migrate-incoming")
def migrate_incoming(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    if vm.incoming is None:
        raise CommandError("'-incoming' was not specified on the command line")
    if vm.incoming != "defer" or vm.config.incoming_started:
        raise CommandError("The incoming migration has already been started")
    uri = select_uri(args, incoming=True)
    # exit-on-error (9.1+, default true): false keeps the process up after a failed load
    _driver(vm).start_incoming(uri, exit_on_error=bool(args.get("exit-on-error", True)))
    return None


@command("x-set-dirty-rate")
def set_dirty_rate(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    write_bytes = args.get("write-bytes")
    if write_bytes is not None and not 1 <= int(write_bytes) <= 4096:
        raise CommandError("Parameter 'write-bytes' expects a size from 1 to 4096")
    _driver(vm).set_dirty_rate(int(args["rate"]), None if write_bytes is None else int(write_bytes))
    return None


@command("x-query-guest-digest")
def query_guest_digest(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    return _driver(vm).digest()


@command("query-migrationthreads")
def query_migration_threads(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    # the real threads doing the source's migration work (runtime/migration_threads.py)
    return _driver(vm).threads()
