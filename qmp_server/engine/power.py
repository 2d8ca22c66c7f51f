"""Power button, reset and shutdown: what ``system_powerdown``/``system_reset`` change.

Facts recorded from QEMU 7.2 and 10.0 (``tests/conformance/scenarios/lifecycle.json``):

* ``system_powerdown`` emits POWERDOWN and nothing else: the ACPI power button is the guest's
  business.  A real QEMU booting SeaBIOS with no OS shows only that event.
* ``system_reset`` emits RESET ``{"guest": false, "reason": "host-qmp-system-reset"}`` before
  its reply; a guest that was not running (paused, shutdown) is then in ``prelaunch``.  On
  ``pc``/``q35`` SeaBIOS resets the machine once more when it runs again (RESET ``{"guest":
  true, "reason": "guest-reset"}`` some 40 ms later); ``-M none`` has no firmware.
* With ``-no-reboot`` every reset becomes a shutdown: SHUTDOWN with the reset's reason, then
  the process exits, or with ``-no-shutdown`` STOP and runstate ``shutdown`` (a VM already in
  ``shutdown`` gets SHUTDOWN again, no STOP).  ``cont`` from ``shutdown`` asks for a reset.

Modelled (not a QEMU fact): the guest OS.  When the machine has ACPI (``pc``/``q35`` without
``-no-acpi``/``acpi=off``) the emulated guest honours the power button: shortly after
POWERDOWN, once it runs, it shuts down (SHUTDOWN ``{"guest": true, "reason":
"guest-shutdown"}``), as a Linux guest does; libvirt's ``virsh shutdown`` relies on that.
Without ACPI only POWERDOWN happens, as on a QEMU whose guest ignores the button.

The modelled guest and resets: a reset (``system_reset``, the ``cont`` out of ``shutdown``)
clears a button pressed before it, as the reset clears the PM status registers.  From a host
reset until the firmware's own reset (RESET ``guest: true``) the modelled guest is rebooting;
it boots instantly after that.  A real guest misses a button pressed before its ACPI code is
up (seen live on QEMU 7.2 and 10.0 with ``tools/make_acpi_guest.py``'s sector: pressed up to
0.5 s after ``system_reset`` it is lost and the guest keeps running; 1.5 s after, it powers
off).  But by the time a user presses it (``virsh reset`` then ``virsh shutdown``) a real OS
would long have booted, while the two commands reach us milliseconds apart, so the modelled
guest queues a button pressed while it reboots and honours it once rebooted: SHUTDOWN follows
``GUEST_SHUTDOWN_DELAY`` after the firmware's RESET, whatever the timing of the two commands.
Another host reset before then drops the queued button.  Every press starts its own delay; a
reset voids pending ones, so a stale timer never shuts down early.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from qmp_server.errors import CommandError

if TYPE_CHECKING:
    from qmp_server.engine.vm import VirtualMachine

__all__ = ["FIRMWARE_RESET_DELAY", "GUEST_SHUTDOWN_DELAY", "PowerControl", "PowerOptions"]

#: How long the modelled guest OS takes from the power button to its shutdown (seconds).
GUEST_SHUTDOWN_DELAY = 0.2
#: SeaBIOS's own reset after a machine reset (measured: 38-57 ms on QEMU 7.2 and 10.0).
FIRMWARE_RESET_DELAY = 0.04

_NOT_SUSPENDED = "Unable to wake up: guest is not in suspended state"
_NO_WAKEUP = "wake-up from suspend is not supported by this guest"
_KEEPS_STATE = frozenset({"running", "inmigrate", "finish-migrate"})


@dataclass(frozen=True, slots=True)
class PowerOptions:
    """The command line's say in power events."""

    #: the machine has ACPI (``pc``/``q35`` unless ``-no-acpi`` / ``-machine acpi=off``)
    acpi: bool = False
    #: the machine boots firmware that resets once more after a reset (``pc``/``q35``)
    firmware: bool = False
    no_shutdown: bool = False
    no_reboot: bool = False


class PowerControl:
    """The power state machine of one VM; timers come from ``vm.timers``."""

    def __init__(self, vm: VirtualMachine, options: PowerOptions) -> None:
        self.vm = vm
        self.options = options
        #: the guest OS has seen the button and will act on it
        self.button_pressed = False
        #: the button was pressed while the guest rebooted: pressed again once it is up
        self.button_queued = False
        self.firmware_reset_due = False
        #: bumped by every press and reset: a deferred call of an older press does nothing
        self._press = 0

    @property
    def rebooting(self) -> bool:
        """Between a host reset and the firmware's own reset the guest OS is not up."""
        return self.firmware_reset_due

    # -- commands ---------------------------------------------------------------------------
    def powerdown(self) -> None:
        self.vm.emit("POWERDOWN", None)
        if not self.options.acpi:
            return
        if self.rebooting:
            self.button_queued = True
        elif not self.button_pressed:
            self._press_button()

    def reset(self, reason: str = "host-qmp-system-reset", *, guest: bool = False) -> None:
        vm = self.vm
        if self.options.no_reboot:
            self.shutdown(reason, guest=guest)
            return
        vm.emit("RESET", {"guest": guest, "reason": reason})
        self.button_pressed = False  # the PM status registers are cleared by a reset
        self._press += 1
        if vm.runstate not in _KEEPS_STATE:
            vm.runstate = "prelaunch"
        if self.options.firmware and reason != "guest-reset":
            self.button_queued = False  # a new reboot: nothing pressed before it counts
            self.firmware_reset_due = True
            self.on_start()
        elif self.button_queued:  # the reboot is over: the guest sees the queued button
            self.button_queued = False
            self._press_button()

    def wakeup(self) -> None:
        # wake-up support is registered by the ACPI power management device (pc/q35)
        if not self.options.acpi:
            raise CommandError(_NO_WAKEUP)
        if self.vm.runstate != "suspended":
            raise CommandError(_NOT_SUSPENDED)

    # -- events from the guest ----------------------------------------------------------------
    def shutdown(self, reason: str, *, guest: bool) -> None:
        """A shutdown request: the process exits, or with ``-no-shutdown`` the VM stops."""
        vm = self.vm
        if not self.options.no_shutdown:
            vm.request_shutdown(reason, guest=guest)
            return
        vm.emit("SHUTDOWN", {"guest": guest, "reason": reason})
        if not vm.stop("shutdown"):
            vm.runstate = "shutdown"

    def on_start(self) -> None:
        """The vCPUs run (again): firmware due to reset gets to do it."""
        if self.firmware_reset_due and self.vm.running:
            self._later(FIRMWARE_RESET_DELAY, self._firmware_reset)

    def _firmware_reset(self) -> None:
        if self.firmware_reset_due and self.vm.running:
            self.firmware_reset_due = False
            self.reset("guest-reset", guest=True)

    def _press_button(self) -> None:
        self.button_pressed = True
        self._press += 1
        press = self._press
        self._later(GUEST_SHUTDOWN_DELAY, lambda: self._guest_sees_button(press))

    def _guest_sees_button(self, press: int) -> None:
        vm = self.vm
        if press != self._press or not self.button_pressed or vm.shutdown_reason is not None:
            return
        if vm.runstate == "running":
            self.button_pressed = False
            self.shutdown("guest-shutdown", guest=True)
        elif vm.runstate not in ("shutdown", "internal-error", "guest-panicked"):
            # a paused guest handles the latched button once it runs again
            self._later(GUEST_SHUTDOWN_DELAY, lambda: self._guest_sees_button(press))

    def _later(self, delay: float, fn: Callable[[], None]) -> None:
        timers = self.vm.timers
        if timers is not None:
            timers.call_later(delay, fn)
