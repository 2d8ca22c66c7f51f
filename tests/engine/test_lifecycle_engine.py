"""The pure lifecycle cores: power rules, the fd queue and sets, dirty-rate maths, -name/-uuid."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qmp_server.engine.balloon import balloon_from_devices
from qmp_server.engine.config import MigrationConfig
from qmp_server.engine.dirty_rate import DirtyRateMeter, distinct_pages
from qmp_server.engine.fds import FdSets, NamedFds, ReceivedFds
from qmp_server.engine.host import DEFAULT_HOST
from qmp_server.engine.identity import parse_name, parse_uuid, split_opts
from qmp_server.engine.power import PowerControl, PowerOptions
from qmp_server.engine.vm import VirtualMachine
from qmp_server.errors import CommandError
from qmp_server.profiles import PROFILES


class FakeTimers:
    """Deferred calls run when the test says so; clocks are fixed."""

    def __init__(self) -> None:
        self.pending: list[Callable[[], None]] = []

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        self.pending.append(fn)

    def run(self) -> None:
        pending, self.pending = self.pending, []
        for fn in pending:
            fn()

    def monotonic(self) -> float:
        return 1234.5

    def wall(self) -> float:
        return 1796000000.0


def make_vm(
    compat: str = "10.0", **power: bool
) -> tuple[VirtualMachine, list[tuple[str, Any]], FakeTimers]:
    profile = PROFILES[compat]
    events: list[tuple[str, Any]] = []
    config = MigrationConfig.from_globals(profile, DEFAULT_HOST, [], incoming=None)
    vm = VirtualMachine(profile, cast(Any, None), lambda n, d: events.append((n, d)), config)
    timers = FakeTimers()
    vm.timers = timers
    vm.power = PowerControl(vm, PowerOptions(**power))
    return vm, events, timers


def test_powerdown_without_acpi_is_only_the_event() -> None:
    vm, events, timers = make_vm(acpi=False)
    vm.power.powerdown()
    timers.run()
    assert events == [("POWERDOWN", None)]
    assert vm.runstate == "running"


def test_modelled_guest_shuts_down_after_the_button() -> None:
    vm, events, timers = make_vm(acpi=True)
    vm.power.powerdown()
    assert events == [("POWERDOWN", None)]
    timers.run()
    assert events[1] == ("SHUTDOWN", {"guest": True, "reason": "guest-shutdown"})
    assert vm.shutdown_reason == "guest-shutdown"  # the process exits


def test_no_shutdown_stops_in_shutdown_and_reset_leads_to_prelaunch() -> None:
    vm, events, timers = make_vm(acpi=True, firmware=True, no_shutdown=True)
    vm.power.powerdown()
    timers.run()
    assert [e[0] for e in events] == ["POWERDOWN", "SHUTDOWN", "STOP"]
    assert vm.runstate == "shutdown" and vm.shutdown_reason is None
    events.clear()
    vm.power.reset()
    assert events == [("RESET", {"guest": False, "reason": "host-qmp-system-reset"})]
    assert vm.runstate == "prelaunch"
    timers.run()
    assert len(events) == 1  # the firmware waits for the vCPUs to run
    vm.start()
    timers.run()
    assert events[1:] == [("RESUME", None),
                          ("RESET", {"guest": True, "reason": "guest-reset"})]  # fmt: skip


def test_button_pressed_while_paused_is_handled_once_running() -> None:
    vm, events, timers = make_vm(acpi=True, no_shutdown=True)
    vm.stop("paused")
    vm.power.powerdown()
    timers.run()
    timers.run()
    assert [e[0] for e in events] == ["STOP", "POWERDOWN"]
    vm.start()
    timers.run()
    assert [e[0] for e in events] == ["STOP", "POWERDOWN", "RESUME", "SHUTDOWN", "STOP"]


_HOST_RESET = ("RESET", {"guest": False, "reason": "host-qmp-system-reset"})
_FIRMWARE_RESET = ("RESET", {"guest": True, "reason": "guest-reset"})
_GUEST_SHUTDOWN = ("SHUTDOWN", {"guest": True, "reason": "guest-shutdown"})


def test_button_pressed_while_rebooting_is_honoured_once_rebooted() -> None:
    """virsh reset, then virsh shutdown before the firmware's reset: the button is queued."""
    vm, events, timers = make_vm(acpi=True, firmware=True, no_shutdown=True)
    vm.power.reset()
    vm.power.powerdown()
    assert vm.power.rebooting and vm.power.button_queued
    timers.run()  # the firmware's reset ends the reboot; the guest now sees the button
    assert events == [_HOST_RESET, ("POWERDOWN", None), _FIRMWARE_RESET]
    timers.run()
    assert events[3:] == [_GUEST_SHUTDOWN, ("STOP", None)]
    assert vm.runstate == "shutdown"
    timers.run()
    assert len(events) == 5 and not timers.pending  # honoured once


def test_button_pressed_after_the_reboot_is_honoured() -> None:
    vm, events, timers = make_vm(acpi=True, firmware=True)
    vm.power.reset()
    timers.run()
    vm.power.powerdown()
    timers.run()
    assert events == [_HOST_RESET, _FIRMWARE_RESET, ("POWERDOWN", None), _GUEST_SHUTDOWN]
    assert vm.shutdown_reason == "guest-shutdown"


def test_another_reset_drops_the_queued_button() -> None:
    vm, events, timers = make_vm(acpi=True, firmware=True)
    vm.power.reset()
    vm.power.powerdown()
    vm.power.reset()
    timers.run()
    timers.run()
    assert events == [_HOST_RESET, ("POWERDOWN", None), _HOST_RESET, _FIRMWARE_RESET]
    assert vm.runstate == "running" and not vm.power.button_queued


def test_a_reset_voids_the_pending_button() -> None:
    """Button, reset, button while rebooting: one shutdown, timed from the reboot's end."""
    vm, events, timers = make_vm(acpi=True, firmware=True)
    vm.power.powerdown()
    vm.power.reset()
    vm.power.powerdown()
    timers.run()  # the first press's delay (voided by the reset) and the firmware's reset
    assert events == [("POWERDOWN", None), _HOST_RESET, ("POWERDOWN", None), _FIRMWARE_RESET]
    timers.run()
    assert events[4:] == [_GUEST_SHUTDOWN]


def test_button_queued_while_paused_after_a_reset() -> None:
    vm, events, timers = make_vm(acpi=True, firmware=True, no_shutdown=True)
    vm.stop("paused")
    vm.power.reset()
    vm.power.powerdown()
    timers.run()
    assert vm.runstate == "prelaunch" and vm.power.button_queued
    vm.start()
    timers.run()
    timers.run()
    assert [e[0] for e in events] == ["STOP", "RESET", "POWERDOWN", "RESUME", "RESET",
                                      "SHUTDOWN", "STOP"]  # fmt: skip


def test_no_reboot_turns_reset_into_shutdown() -> None:
    vm, events, _ = make_vm(no_reboot=True, no_shutdown=True)
    vm.power.reset()
    vm.power.reset()
    shutdown = ("SHUTDOWN", {"guest": False, "reason": "host-qmp-system-reset"})
    assert events == [shutdown, ("STOP", None), shutdown]
    assert vm.runstate == "shutdown"
    vm2, events2, _ = make_vm(no_reboot=True)
    vm2.power.reset()
    assert events2 == [shutdown] and vm2.shutdown_reason == "host-qmp-system-reset"


def test_wakeup_needs_a_suspended_guest() -> None:
    vm, _, _ = make_vm(acpi=True)
    with pytest.raises(CommandError, match="guest is not in suspended state"):
        vm.power.wakeup()
    vm, _, _ = make_vm(acpi=False)  # -M none, acpi=off: no ACPI PM to wake up through
    with pytest.raises(CommandError, match="wake-up from suspend is not supported"):
        vm.power.wakeup()


def test_received_fds_first_is_taken_the_rest_closed() -> None:
    closed: list[int] = []
    received = ReceivedFds(close=closed.append)
    received.receive([10, 11])
    received.receive([12, 13])  # replaces the waiting ones
    assert closed == [10, 11]
    assert received.take() == 12 and closed == [10, 11, 13]
    with pytest.raises(CommandError, match="No file descriptor supplied via SCM_RIGHTS"):
        received.take()


def test_named_fds() -> None:
    closed: list[int] = []
    named = NamedFds(close=closed.append)
    named.add("a", 5)
    named.add("a", 6)
    assert closed == [5]
    with pytest.raises(CommandError, match="not starting with a digit"):
        named.add("1a", 7)
    assert closed == [5, 7]
    assert named.take("a") == 6 and named.take("a") is None
    with pytest.raises(CommandError, match="File descriptor named 'a' not found"):
        named.close("a")


def test_fdsets_order_and_lowest_free_id() -> None:
    closed: list[int] = []
    sets = FdSets(close=closed.append)
    assert sets.add(6, 2, "hello") == {"fdset-id": 2, "fd": 6}
    assert sets.add(12)["fdset-id"] == 0
    assert sets.add(13, 0, "abc")["fdset-id"] == 0
    assert sets.add(14)["fdset-id"] == 1
    assert [s["fdset-id"] for s in sets.query()] == [2, 1, 0]
    assert sets.query()[2]["fds"] == [{"fd": 12}, {"fd": 13, "opaque": "abc"}]
    sets.remove(0, 12)
    sets.remove(0, 13)
    assert 0 not in sets.sets and closed == [12, 13]
    with pytest.raises(CommandError, match="'fdset-id:0, fd:1' not found"):
        sets.remove(0, 1)


@pytest.mark.parametrize(
    ("compat", "args", "desc"),
    [
        ("7.2", {"calc-time": 0}, "calc-time is out of range[1, 60]."),
        ("10.0", {"calc-time": 0}, "Calculation time is out of range [50ms, 60000ms]."),
        ("10.0", {"calc-time": 49, "calc-time-unit": "millisecond"}, "Calculation time"),
        ("10.0", {"calc-time": 1, "sample-pages": 4}, "sample-pages is out of range"),
        ("10.0", {"calc-time": 1, "mode": "dirty-bitmap", "sample-pages": 512}, "sample-pages"),
        ("10.0", {"calc-time": 1, "mode": "dirty-ring"}, "mode dirty-ring is not enabled"),
    ],
)
def test_dirty_rate_checks(compat: str, args: dict[str, Any], desc: str) -> None:
    with pytest.raises(CommandError) as err:
        DirtyRateMeter(PROFILES[compat]).check(args)
    assert err.value.desc.startswith(desc)


def test_dirty_rate_measurement() -> None:
    meter = DirtyRateMeter(PROFILES["10.0"])
    assert meter.info() == {"status": "unstarted", "start-time": 0, "calc-time": 0,
                            "calc-time-unit": "second", "sample-pages": 0,
                            "mode": "page-sampling"}  # fmt: skip
    calc_ms, pages, mode = meter.check({"calc-time": 2})
    meter.start(calc_ms, pages, mode, start_time=99, pages_written=1000)
    with pytest.raises(CommandError, match="already being measured"):
        meter.check({"calc-time": 1})
    pages_per_s = (8 << 20) // 4096  # 8 MiB/s on a 1 GiB guest: far from saturation
    meter.finish(1000 + 2 * pages_per_s, (1 << 30) // 4096)
    info = meter.info()
    assert info["status"] == "measured" and 7 <= info["dirty-rate"] <= 8
    assert meter.info("millisecond")["calc-time"] == 2000
    # saturation: a small guest cannot dirty more pages than it has
    assert distinct_pages(10**9, 100) == pytest.approx(100)


def test_balloon_devices() -> None:
    assert balloon_from_devices(["vfio-sim,id=x"], 1 << 26) is None
    dev = balloon_from_devices(["virtio-balloon-pci,id=b0"], 1 << 26)
    assert dev is not None and dev.actual == 1 << 26
    assert dev.set_target(1 << 40) == 1 << 26  # clamped to the RAM size
    with pytest.raises(ValueError, match="Only one balloon device is supported"):
        balloon_from_devices(["virtio-balloon-pci", "driver=virtio-balloon-pci"], 1 << 26)


def test_name_and_uuid() -> None:
    assert parse_name("vm1") == "vm1"
    assert parse_name("guest=a,,b,process=x") == "a,b"
    assert parse_name("debug-threads=on") is None
    with pytest.raises(ValueError, match="Invalid parameter 'bar'"):
        parse_name("foo,bar=1")
    assert parse_uuid("12345678-1234-1234-1234-123456789ABC").endswith("789abc")
    with pytest.raises(ValueError, match="wrong format"):
        parse_uuid("bogus")


@given(st.text(alphabet=st.characters(blacklist_characters="=", blacklist_categories=("Cs",))))
def test_escaped_names_round_trip(name: str) -> None:
    escaped = name.replace(",", ",,")
    assert split_opts(f"guest={escaped},process=p", None) == [("guest", name), ("process", "p")]
