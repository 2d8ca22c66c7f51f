"""The virtio memory balloon, keyed on the ``-device`` list of the command line.

QEMU answers ``balloon``/``query-balloon`` only when a balloon device exists (else
DeviceNotActive), refuses a second one at start-up, clamps a target above the RAM size to the
RAM size, and learns the guest's size from the guest's balloon driver.  A real QEMU with no
guest OS never hears back (``actual`` stays the RAM size, no BALLOON_CHANGE); qmp-server models
a guest whose driver follows the target shortly after it is set, reporting it with
BALLOON_CHANGE, as a Linux guest does.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["BALLOON_DRIVERS", "Balloon", "balloon_from_devices", "device_driver"]

#: The balloon device models of an x86 QEMU.
BALLOON_DRIVERS = frozenset(
    {"virtio-balloon-pci", "virtio-balloon-pci-transitional",
     "virtio-balloon-pci-non-transitional", "virtio-balloon-device"}
)  # fmt: skip

NO_BALLOON = "No balloon device has been activated"
ONLY_ONE = "Only one balloon device is supported"


def device_driver(text: str) -> str:
    """The driver named by a ``-device`` value (its first item, or ``driver=``)."""
    first = text.split(",", 1)[0]
    return first.removeprefix("driver=")


@dataclass
class Balloon:
    """One balloon device: the target asked for and the size the guest reports."""

    ram_size: int
    actual: int
    target: int

    def set_target(self, value: int) -> int:
        """Record a ``balloon`` target (already checked positive); returns it clamped."""
        self.target = min(value, self.ram_size)
        return self.target

    def guest_follows(self) -> bool:
        """The guest's driver catches up with the target; True when its size changed."""
        if self.actual == self.target:
            return False
        self.actual = self.target
        return True


def balloon_from_devices(devices: Iterable[str], ram_size: int) -> Balloon | None:
    """The balloon of a ``-device`` list, or None.

    :raise ValueError: QEMU's start-up text for a second balloon, quoting its ``-device``.
    """
    found: Balloon | None = None
    for text in devices:
        if device_driver(text) in BALLOON_DRIVERS:
            if found is not None:
                raise ValueError(f"-device {text}: {ONLY_ONE}")
            found = Balloon(ram_size, ram_size, ram_size)
    return found
