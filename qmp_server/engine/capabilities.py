"""Migration capabilities: the per-version enum order and QEMU's compatibility rules.

Contract: pure data plus one pure function.  :data:`CAPABILITIES` is the MigrationCapability
enum of each profile, in enum order (which is also the ``query-migrate-capabilities`` order);
:func:`check_capabilities` answers what QEMU's ``migrate_caps_check`` would: the *first*
failing rule's text, in that version's evaluation order, or ``None``.  Neighbours:
:mod:`qmp_server.engine.config` (merges a request and stores it), the QAPI schema
(``schema/migration.json``, whose enum must list the same names in the same order).

Rule 1: the check looks at the whole merged set (``new``), never at the request alone; only
the "newly enabled" conditions look at ``old``.
Rule 2: hints (QEMU's ``error_append_hint``) are not part of the text.

>>> from qmp_server.profiles import PROFILES
>>> from qmp_server.engine.host import DEFAULT_HOST
>>> caps = dict.fromkeys(CAPABILITIES["10.0"], False)
>>> check_capabilities(PROFILES["10.0"], DEFAULT_HOST, caps, caps | {"switchover-ack": True})
"Capability 'switchover-ack' requires capability 'return-path'"
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from qmp_server.engine.host import USERFAULTFD_DETAIL, HostInfo
from qmp_server.profiles import Profile

__all__ = [
    "CAPABILITIES",
    "RUNNING_STATES",
    "CapsContext",
    "capability_names",
    "check_capabilities",
    "running_states",
]

_V72 = (
    "xbzrle",
    "rdma-pin-all",
    "auto-converge",
    "zero-blocks",
    "compress",
    "events",
    "postcopy-ram",
    "x-colo",
    "release-ram",
    "block",
    "return-path",
    "pause-before-switchover",
    "multifd",
    "dirty-bitmaps",
    "postcopy-blocktime",
    "late-block-activate",
    "x-ignore-shared",
    "validate-uuid",
    "background-snapshot",
    "zero-copy-send",
    "postcopy-preempt",
)

#: MigrationCapability members per profile name, in enum order (21 / 22 / 23 / 22).
CAPABILITIES: dict[str, tuple[str, ...]] = {
    "7.2": _V72,
    "8.0.50": (*_V72, "precopy-initial-data"),
    "8.1": (*_V72, "switchover-ack", "dirty-limit"),
    "10.0": (
        *(c for c in _V72 if c not in ("compress", "block")),
        "switchover-ack",
        "dirty-limit",
        "mapped-ram",
    ),
}

#: Capabilities background-snapshot refuses, in the order QEMU tests them (its message names
#: the first one set).  ``compress`` is skipped where the profile has no such capability.
_SNAPSHOT_CONFLICTS = (
    "postcopy-ram",
    "dirty-bitmaps",
    "postcopy-blocktime",
    "late-block-activate",
    "return-path",
    "multifd",
    "pause-before-switchover",
    "auto-converge",
    "release-ram",
    "rdma-pin-all",
    "compress",
    "xbzrle",
    "x-colo",
    "validate-uuid",
    "zero-copy-send",
)

#: ``migration_is_running()`` in 7.2: migrate-set-capabilities is refused in these states.
_RUNNING_72 = frozenset(
    {
        "setup",
        "active",
        "postcopy-active",
        "postcopy-paused",
        "postcopy-recover",
        "pre-switchover",
        "device",
        "wait-unplug",
        "cancelling",
    }
)

#: Source states in which migrate-set-capabilities answers "There's a migration process in
#: progress", per profile name.  8.x adds ``migration_in_colo_state()``; 9.1 adds
#: postcopy-recover-setup to ``migration_is_running()``.
RUNNING_STATES: dict[str, frozenset[str]] = {
    "7.2": _RUNNING_72,
    "8.0.50": _RUNNING_72,
    "8.1": _RUNNING_72 | {"colo"},
    "10.0": _RUNNING_72 | {"colo", "postcopy-recover-setup"},
}

#: URI schemes after which QEMU 7.2's destination allows multifd (several channels).
_MULTI_CHANNEL_SCHEMES = ("tcp:", "unix:", "vsock:")


@dataclass(frozen=True, slots=True)
class CapsContext:
    """What the rules need besides the two capability sets.

    ``incoming_uri`` is the URI of the last ``migrate-incoming`` attempt (or of ``-incoming
    URI``), successful or not: QEMU 7.2 decides "multiple channels allowed" when an incoming
    migration is *started*, from the scheme alone, and keeps that verdict even when the start
    fails.  ``None`` (no attempt yet, or ``-incoming defer``) counts as allowed.
    ``incoming_started`` (8.1+) is true while the destination's listener/transport exists.
    """

    #: runstate is ``inmigrate`` (this VM is a destination that has not completed).
    inmigrate: bool = False
    incoming_uri: str | None = None
    incoming_started: bool = False
    #: the current ``multifd-compression`` parameter (zero-copy-send rule).
    multifd_compression: str = "none"
    #: the current ``tls-creds`` parameter ("" = no TLS).
    tls_creds: str = ""


def capability_names(profile: Profile) -> tuple[str, ...]:
    """The MigrationCapability enum of ``profile`` in enum order."""
    return CAPABILITIES[profile.name]


def running_states(profile: Profile) -> frozenset[str]:
    """Source migration states that refuse migrate-set-capabilities in ``profile``."""
    return RUNNING_STATES[profile.name]


def check_capabilities(
    profile: Profile,
    host: HostInfo,
    old: Mapping[str, bool],
    new: Mapping[str, bool],
    ctx: CapsContext | None = None,
) -> str | None:
    """QEMU's ``migrate_caps_check`` for ``profile``: the first error text, or ``None``.

    :param old: the capabilities currently stored (missing names count as false).
    :param new: the merged set the caller wants to store.
    :param ctx: runstate, incoming migration and parameter facts; defaults to a VM that is
        not a destination and has default parameters.
    """
    ctx = ctx or CapsContext()
    if profile.name == "10.0":
        return _check_latest(host, old, new, ctx)
    if profile.name == "8.1":
        return _check_81(host, old, new, ctx)
    return _check_72(profile, host, old, new, ctx)


def _on(caps: Mapping[str, bool], name: str) -> bool:
    return bool(caps.get(name, False))


def _snapshot_conflict(host: HostInfo, new: Mapping[str, bool]) -> str | None:
    if not host.uffd_wp:
        return "Background-snapshot is not supported by host kernel"
    if not host.snapshot_memory:
        return "Background-snapshot is not compatible with guest memory configuration"
    for other in _SNAPSHOT_CONFLICTS:
        if _on(new, other):
            return f"Background-snapshot is not compatible with {other}"
    return None


def _zero_copy(host: HostInfo, new: Mapping[str, bool], ctx: CapsContext) -> str | None:
    if not host.linux:
        return "Zero copy currently only available on Linux"
    if (
        not _on(new, "multifd")
        or _on(new, "compress")
        or _on(new, "xbzrle")
        or ctx.multifd_compression != "none"
        or ctx.tls_creds != ""
    ):
        return "Zero copy only available for non-compressed non-TLS multifd migration"
    return None


def _postcopy_unsupported(host: HostInfo, old: Mapping[str, bool], ctx: CapsContext) -> bool:
    """Rule 3a: postcopy-ram newly enabled on a destination whose host lacks userfaultfd."""
    return not _on(old, "postcopy-ram") and ctx.inmigrate and not host.userfaultfd


def _multi_channel_allowed(ctx: CapsContext) -> bool:
    return ctx.incoming_uri is None or ctx.incoming_uri.startswith(_MULTI_CHANNEL_SCHEMES)


def _check_72(
    profile: Profile,
    host: HostInfo,
    old: Mapping[str, bool],
    new: Mapping[str, bool],
    ctx: CapsContext,
) -> str | None:
    """QEMU 7.2 ``migrate_caps_check``; the default profile adds the seed patch's rule."""
    if _on(new, "block") and not host.live_block_migration:
        return "QEMU compiled without old-style (blk/-b, inc/-i) block migration"
    if _on(new, "x-colo") and not host.replication:
        return "QEMU compiled without replication module can't enable COLO"
    if _on(new, "postcopy-ram"):
        if _postcopy_unsupported(host, old, ctx):
            return "Postcopy is not supported"
        if _on(new, "x-ignore-shared"):
            return "Postcopy is not compatible with ignore-shared"
    if _on(new, "background-snapshot") and (err := _snapshot_conflict(host, new)):
        return err
    if _on(new, "zero-copy-send") and (err := _zero_copy(host, new, ctx)):
        return err
    if ctx.inmigrate and not _multi_channel_allowed(ctx) and _on(new, "multifd"):
        return "multifd is not supported by current protocol"
    if _on(new, "postcopy-preempt"):
        if not _on(new, "postcopy-ram"):
            return "Postcopy preempt requires postcopy-ram"
        if _on(new, "compress"):
            return "Postcopy preempt not compatible with compress"
    if _on(new, "multifd") and _on(new, "compress"):
        return "Multifd is not compatible with compress"
    ack = profile.ack_capability
    if ack is not None and _on(new, ack) and not _on(new, "return-path"):
        return f"Capability '{ack}' requires capability 'return-path'"
    return None


def _check_81(
    host: HostInfo, old: Mapping[str, bool], new: Mapping[str, bool], ctx: CapsContext
) -> str | None:
    """QEMU 8.1 (migration/options.c as of the 8.1 cycle)."""
    if _on(new, "block") and not host.live_block_migration:
        return "QEMU compiled without old-style (blk/-b, inc/-i) block migration"
    if _on(new, "x-colo") and not host.replication:
        return "QEMU compiled without replication module can't enable COLO"
    if _on(new, "postcopy-ram"):
        if _postcopy_unsupported(host, old, ctx):
            return f"Postcopy is not supported: {USERFAULTFD_DETAIL}"
        if _on(new, "x-ignore-shared"):
            return "Postcopy is not compatible with ignore-shared"
        if _on(new, "multifd"):
            return "Postcopy is not yet compatible with multifd"
    if _on(new, "background-snapshot") and (err := _snapshot_conflict(host, new)):
        return err
    if _on(new, "zero-copy-send") and (err := _zero_copy(host, new, ctx)):
        return err
    if _on(new, "postcopy-preempt"):
        if not _on(new, "postcopy-ram"):
            return "Postcopy preempt requires postcopy-ram"
        if _on(new, "compress"):
            return "Postcopy preempt not compatible with compress"
        if ctx.incoming_started:
            return "Postcopy preempt must be set before incoming starts"
    if _on(new, "multifd"):
        if _on(new, "compress"):
            return "Multifd is not compatible with compress"
        if ctx.incoming_started:
            return "Multifd must be set before incoming starts"
    if err := _tail_rules(host, new):
        return err
    if _on(new, "compress") and _on(new, "xbzrle"):
        return "Compression is not compatible with xbzrle"
    return None


def _check_latest(
    host: HostInfo, old: Mapping[str, bool], new: Mapping[str, bool], ctx: CapsContext
) -> str | None:
    """QEMU 10.0 (with the 10.0.1 stable fix: "must be set before incoming starts" only
    fires when the capability is being turned on)."""
    if _on(new, "x-colo") and not host.replication:
        return "QEMU compiled without replication module can't enable COLO"
    if _on(new, "postcopy-ram"):
        if _postcopy_unsupported(host, old, ctx):
            return f"Postcopy is not supported: {USERFAULTFD_DETAIL}"
        if _on(new, "x-ignore-shared"):
            return "Postcopy is not compatible with ignore-shared"
        if _on(new, "multifd"):
            return "Postcopy is not yet compatible with multifd"
    if _on(new, "background-snapshot") and (err := _snapshot_conflict(host, new)):
        return err
    if _on(new, "zero-copy-send") and (err := _zero_copy(host, new, ctx)):
        return err
    if _on(new, "postcopy-preempt"):
        if not _on(new, "postcopy-ram"):
            return "Postcopy preempt requires postcopy-ram"
        if not _on(old, "postcopy-preempt") and ctx.incoming_started:
            return "Postcopy preempt must be set before incoming starts"
    if _on(new, "multifd") and not _on(old, "multifd") and ctx.incoming_started:
        return "Multifd must be set before incoming starts"
    if err := _tail_rules(host, new):
        return err
    if _on(new, "mapped-ram"):
        if _on(new, "xbzrle"):
            return "Mapped-ram migration is incompatible with xbzrle"
        if _on(new, "postcopy-ram"):
            return "Mapped-ram migration is incompatible with postcopy"
    return None


def _tail_rules(host: HostInfo, new: Mapping[str, bool]) -> str | None:
    """switchover-ack, dirty-limit and multifd+xbzrle: the same texts from 8.1 to 10.0."""
    if _on(new, "switchover-ack") and not _on(new, "return-path"):
        return "Capability 'switchover-ack' requires capability 'return-path'"
    if _on(new, "dirty-limit"):
        if _on(new, "auto-converge"):
            return "dirty-limit conflicts with auto-converge either of then available currently"
        if not host.kvm_dirty_ring:
            return "dirty-limit requires KVM with accelerator property 'dirty-ring-size' set"
    if _on(new, "multifd") and _on(new, "xbzrle"):
        return "Multifd is not compatible with xbzrle"
    return None
