"""The QEMU versions qmp-server can emulate.

A profile fixes what a client can tell apart: the greeting version, which schema members exist
(through QAPI ``if`` conditions), and which capability/parameter rules apply.  The default
profile emulates the precopy-initial-data patch series (QEMU 8.0.50 development tree): QEMU
7.2's migration API plus the ``precopy-initial-data`` capability and its
``x-precopy-initial-data`` property.

Schema condition symbols (usable in ``'if'`` of schema/*.json):

* ``SINCE_8_1``, ``SINCE_8_2``, ``SINCE_9_0``, ``SINCE_9_1``, ``SINCE_10_0``: cumulative, defined
  for every profile at or after that release;
* ``PRECOPY_INITIAL_DATA``: only the default (seed patch) profile;
* ``CONFIG_LINUX``, ``CONFIG_ZSTD``: build options of a Debian x86-64 QEMU, always defined.
"""

from __future__ import annotations

from dataclasses import dataclass

from qmp_server import __version__

__all__ = ["DEFAULT_PROFILE", "PROFILES", "Profile", "resolve_profile"]

_RELEASES = ((8, 1), (8, 2), (9, 0), (9, 1), (10, 0))


@dataclass(frozen=True, slots=True)
class Profile:
    """One emulated QEMU version."""

    name: str
    version: tuple[int, int, int]
    defines: frozenset[str]

    @property
    def package(self) -> str:
        return f"qmp-server {__version__} (emulating QEMU {self.name})"

    def since(self, major: int, minor: int) -> bool:
        """True when the emulated version is at or after ``major.minor``."""
        return self.version[:2] >= (major, minor)

    @property
    def has_switchover_ack(self) -> bool:
        return "SINCE_8_1" in self.defines

    @property
    def ack_capability(self) -> str | None:
        """The name of the switchover-ACK capability in this profile, if it has one."""
        if "PRECOPY_INITIAL_DATA" in self.defines:
            return "precopy-initial-data"
        if self.has_switchover_ack:
            return "switchover-ack"
        return None


def _profile(name: str, version: tuple[int, int, int], *extra: str) -> Profile:
    defines = {"CONFIG_LINUX", "CONFIG_ZSTD", *extra}
    defines.update(f"SINCE_{a}_{b}" for a, b in _RELEASES if version[:2] >= (a, b))
    return Profile(name, version, frozenset(defines))


PROFILES: dict[str, Profile] = {
    "7.2": _profile("7.2", (7, 2, 0)),
    "default": _profile("8.0.50", (8, 0, 50), "PRECOPY_INITIAL_DATA"),
    "8.1": _profile("8.1", (8, 1, 0)),
    "10.0": _profile("10.0", (10, 0, 0)),
}
DEFAULT_PROFILE = PROFILES["default"]


def resolve_profile(name: str | None) -> Profile:
    """Look a ``--compat`` value up; ``None`` gives the default profile."""
    if name is None:
        return DEFAULT_PROFILE
    try:
        return PROFILES[name]
    except KeyError:
        choices = ", ".join(k for k in PROFILES if k != "default")
        raise ValueError(f"unknown --compat version '{name}' (choose from {choices})") from None
