"""QMP handlers for capabilities/parameters and the idle-state migration commands."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from qmp_server.commands import migration_config  # noqa: F401  (registers the handlers)
from qmp_server.commands.registry import HANDLERS
from qmp_server.engine.config import MigrationConfig
from qmp_server.engine.host import HostInfo
from qmp_server.errors import CommandError
from qmp_server.profiles import PROFILES, Profile
from qmp_server.wire.encoder import Encoded


@dataclass
class FakeVM:
    profile: Profile
    config: MigrationConfig
    runstate: str = "running"
    incoming: str | None = None
    migration_status: str = "none"
    migration_hooks: object = None

    @property
    def source_migration_status(self) -> str:
        # a destination still receiving has no outgoing migration
        if self.incoming is not None and self.runstate == "inmigrate":
            return "none"
        return self.migration_status

    @property
    def incoming_migration_status(self) -> str:
        return self.migration_status if self.incoming is not None else "none"


@dataclass
class Hooks:
    calls: list[str] = field(default_factory=list)

    def continue_migration(self) -> None:
        self.calls.append("continue")

    def cancel(self) -> None:
        self.calls.append("cancel")

    def start_postcopy(self) -> None:
        self.calls.append("start_postcopy")

    def pause(self) -> None:
        self.calls.append("pause")

    def recover(self, uri: str) -> None:
        self.calls.append(f"recover {uri}")

    def query(self) -> dict[str, Any]:
        return {"status": "active"}


def vm_for(key: str = "7.2", **kw: Any) -> FakeVM:
    profile = PROFILES[key]
    return FakeVM(profile, MigrationConfig(profile, HostInfo()), **kw)


def call(vm: FakeVM, name: str, args: dict[str, Any] | None = None) -> Any:
    result = HANDLERS[name](vm, args or {})  # type: ignore[arg-type]
    return result.value if isinstance(result, Encoded) else result


def error(vm: FakeVM, name: str, args: dict[str, Any] | None = None) -> str:
    with pytest.raises(CommandError) as info:
        call(vm, name, args)
    assert info.value.error_class == "GenericError"
    return info.value.desc


def caps(*pairs: tuple[str, bool]) -> dict[str, Any]:
    return {"capabilities": [{"capability": c, "state": s} for c, s in pairs]}


def test_query_capabilities_order_and_block_hidden():
    vm = vm_for()
    out = call(vm, "query-migrate-capabilities")
    assert len(out) == 21 and out[0] == {"capability": "xbzrle", "state": False}
    vm.config = MigrationConfig(vm.profile, HostInfo(live_block_migration=False))
    assert "block" not in [c["capability"] for c in call(vm, "query-migrate-capabilities")]


def test_set_capabilities_last_duplicate_wins_and_atomicity():
    vm = vm_for()
    assert call(vm, "migrate-set-capabilities", caps(("xbzrle", True), ("xbzrle", False))) is None
    assert not vm.config.enabled("xbzrle")  # live
    assert error(vm, "migrate-set-capabilities",
                 caps(("events", True), ("postcopy-preempt", True))) == (
        "Postcopy preempt requires postcopy-ram"
    )  # fmt: skip
    assert not vm.config.enabled("events")


@pytest.mark.parametrize(
    "status",
    ["setup", "active", "postcopy-active", "postcopy-paused", "postcopy-recover",
     "pre-switchover", "device", "wait-unplug", "cancelling"],
)  # fmt: skip
def test_set_capabilities_refused_while_running(status):
    vm = vm_for(migration_status=status)
    assert error(vm, "migrate-set-capabilities", caps(("xbzrle", True))) == (
        "There's a migration process in progress"
    )
    # parameters are allowed during migration
    call(vm, "migrate-set-parameters", {"downtime-limit": 500})
    assert call(vm, "query-migrate-parameters")["downtime-limit"] == 500


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled", "colo"])
def test_set_capabilities_allowed_after(status):
    vm = vm_for(migration_status=status)
    call(vm, "migrate-set-capabilities", caps(("xbzrle", True)))
    assert vm.config.enabled("xbzrle")
    if status == "colo":
        vm81 = vm_for("8.1", migration_status="colo")
        assert error(vm81, "migrate-set-capabilities", caps(("xbzrle", True))) == (
            "There's a migration process in progress"
        )


def test_destination_receiving_is_not_running():
    vm = vm_for("10.0", runstate="inmigrate", incoming="defer", migration_status="active")
    call(vm, "migrate-set-capabilities", caps(("return-path", True), ("switchover-ack", True)))
    assert vm.config.enabled("switchover-ack")  # 10.0 live


def test_destination_multifd_after_exec_incoming_72():
    vm = vm_for(runstate="inmigrate", incoming="defer")
    vm.config.note_incoming("exec:cat", started=True)
    assert error(vm, "migrate-set-capabilities", caps(("multifd", True))) == (
        "multifd is not supported by current protocol"
    )  # live


def test_parameters_roundtrip_and_errors():
    vm = vm_for()
    call(vm, "migrate-set-parameters", {"max-bandwidth": 12345, "tls-creds": None})
    out = call(vm, "query-migrate-parameters")
    assert out["max-bandwidth"] == 12345 and out["tls-creds"] == ""
    assert "block-bitmap-mapping" not in out
    assert error(
        vm, "migrate-set-parameters", {"cpu-throttle-initial": 0, "downtime-limit": 1}
    ) == ("Parameter 'cpu_throttle_initial' expects an integer in the range of 1 to 99")
    assert call(vm, "query-migrate-parameters")["downtime-limit"] == 300
    call(vm, "migrate-set-parameters", {"multifd-zlib-level": 5})
    assert call(vm, "query-migrate-parameters")["multifd-zlib-level"] == 1  # 7.2 live quirk
    vm10 = vm_for("10.0")
    call(vm10, "migrate-set-parameters", {"multifd-zlib-level": 5})
    assert call(vm10, "query-migrate-parameters")["multifd-zlib-level"] == 5
    call(vm, "migrate-set-parameters", {"block-bitmap-mapping": []})
    assert list(call(vm, "query-migrate-parameters"))[-1] == "block-bitmap-mapping"


def test_idle_answers_72():
    vm = vm_for()
    assert error(vm, "migrate-continue", {"state": "active"}) == (
        "Migration not in expected state: none"
    )
    assert call(vm, "migrate-continue", {"state": "none"}) is None  # live
    assert error(vm, "migrate-pause") == (
        "migrate-pause is currently only supported during postcopy-active state"
    )
    assert error(vm, "migrate-recover", {"uri": "tcp:1.2.3.4:5"}) == (
        "Migrate recover can only be run when postcopy is paused."
    )
    assert error(vm, "migrate-start-postcopy") == (
        "Enable postcopy with migrate_set_capability before the start of migration"
    )
    for cap in ("postcopy-ram", "dirty-bitmaps"):
        vm.config.reset()
        call(vm, "migrate-set-capabilities", caps((cap, True)))
        assert error(vm, "migrate-start-postcopy") == (
            "Postcopy must be started after migration has been started"
        )
    assert call(vm, "migrate_cancel") is None
    assert call(vm, "query-migrate") == {}


def test_idle_answers_10_0():
    vm = vm_for("10.0")
    assert error(vm, "migrate-pause") == (
        "migrate-pause is currently only supported during postcopy-active or postcopy-recover state"
    )


def test_hooks_are_called_when_a_migration_exists():
    vm = vm_for(migration_status="pre-switchover")
    hooks = Hooks()
    vm.migration_hooks = hooks  # type: ignore[attr-defined]
    assert error(vm, "migrate-continue", {"state": "active"}) == (
        "Migration not in expected state: pre-switchover"
    )
    call(vm, "migrate-continue", {"state": "pre-switchover"})
    call(vm, "migrate_cancel")
    assert call(vm, "query-migrate") == {"status": "active"}
    vm.migration_status = "postcopy-active"
    call(vm, "migrate-pause")
    vm.config.set_capabilities([{"capability": "postcopy-ram", "state": True}])
    call(vm, "migrate-start-postcopy")
    assert hooks.calls == ["continue", "cancel", "pause", "start_postcopy"]
