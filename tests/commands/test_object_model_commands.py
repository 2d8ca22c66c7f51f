"""query-kvm follows the command line's accelerators; the handlers answer per profile."""

from __future__ import annotations

from typing import Any

import pytest

from qmp_server.cli import parse_args
from qmp_server.commands import object_model as handlers
from qmp_server.commands.object_model import kvm_enabled
from qmp_server.profiles import PROFILES


class _VM:
    def __init__(self, profile: str, accel: tuple[str, ...] = ("tcg",)) -> None:
        self.profile = PROFILES[profile]
        self.accel = accel
        self.qom_modules_loaded = False


@pytest.mark.parametrize(
    ("accel", "present", "enabled"),
    [
        (("tcg",), True, False),
        (("kvm",), True, True),
        (("kvm",), False, False),
        (("kvm", "tcg"), True, True),
        (("kvm", "tcg"), False, False),
        (("tcg", "kvm"), True, False),
    ],
)
def test_kvm_enabled(accel: tuple[str, ...], present: bool, enabled: bool) -> None:
    assert kvm_enabled(accel, present) is enabled


@pytest.mark.parametrize(
    ("argv", "accel"),
    [
        ([], []),
        (["-machine", "none,accel=kvm:tcg"], ["kvm", "tcg"]),
        (["-accel", "kvm", "-accel", "tcg"], ["kvm", "tcg"]),
        (["-accel", "tcg,thread=single"], ["tcg"]),
        (["-enable-kvm"], ["kvm"]),
    ],
)
def test_cli_keeps_the_accelerators(argv: list[str], accel: list[str]) -> None:
    options = parse_args(argv)
    assert options is not None and options.accel == accel


def _call(vm: Any, name: str, **args: Any) -> Any:
    return getattr(handlers, name.replace("-", "_"))(vm, args)


def test_profiles_answer_from_their_recording() -> None:
    old, new = _VM("default"), _VM("10.0")
    assert _call(old, "query-target") == _call(new, "query-target") == {"arch": "x86_64"}
    machines_old = {m["name"] for m in _call(old, "query-machines")}
    machines_new = {m["name"] for m in _call(new, "query-machines")}
    assert "pc-i440fx-7.2" in machines_old and "pc-i440fx-8.1" not in machines_old
    assert "pc-i440fx-10.0" in machines_new
    assert "acpi" in _call(new, "query-machines")[0]


def test_qom_list_types_loads_modules_in_72() -> None:
    vm = _VM("7.2")
    before = [o["option"] for o in _call(vm, "query-command-line-options")]
    _call(vm, "qom-list-types")
    after = [o["option"] for o in _call(vm, "query-command-line-options")]
    assert "spice" not in before and "spice" in after
