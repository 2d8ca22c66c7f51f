"""What the emulated host and QEMU build can do, as far as migration capabilities care.

Contract: a frozen description read by :mod:`qmp_server.engine.capabilities` (build- and
host-dependent refusals) and by :mod:`qmp_server.engine.config` (``block`` is hidden from
``query-migrate-capabilities`` on a build without live block migration).  Neighbours: the CLI
builds one from ``--host key=val,...`` with :meth:`HostInfo.parse`.

The defaults are what the Debian QEMU 7.2 package (7.2.22, ``qemu-system-x86``) answered on a
Linux x86-64 host running TCG, checked live:

* ``background-snapshot`` is accepted (kernel with UFFD write-protect; anonymous guest RAM);
* ``x-colo`` is accepted (the build has CONFIG_REPLICATION);
* ``postcopy-ram`` is accepted on a ``-incoming defer`` destination (userfaultfd usable);
* ``zero-copy-send`` is accepted together with ``multifd`` (Linux build);
* ``block`` is accepted and listed (CONFIG_LIVE_BLOCK_MIGRATION);
* ``dirty-limit`` (8.1+) needs KVM with a dirty ring, which a TCG guest never has.

>>> h = HostInfo.parse("kvm-dirty-ring=on,linux=off")
>>> h.kvm_dirty_ring, h.linux, h.userfaultfd
(True, False, True)
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from qmp_server.errors import UsageError

__all__ = ["DEFAULT_HOST", "USERFAULTFD_DETAIL", "HostInfo"]

#: The detail QEMU 8.1+ appends to "Postcopy is not supported: " when userfaultfd cannot be
#: opened (an unprivileged process with vm.unprivileged_userfaultfd=0 gets EPERM).
USERFAULTFD_DETAIL = "Userfaultfd not available: Operation not permitted"

_TRUE = ("on", "yes", "true", "y", "1")
_FALSE = ("off", "no", "false", "n", "0")


@dataclass(frozen=True, slots=True)
class HostInfo:
    """Host kernel, accelerator and build options that decide capability refusals."""

    #: userfaultfd with the features postcopy needs (checked on the destination only).
    userfaultfd: bool = True
    #: userfaultfd write-protect: background-snapshot's write tracking.
    uffd_wp: bool = True
    #: guest memory backends all compatible with write tracking.
    snapshot_memory: bool = True
    #: KVM accelerator with ``dirty-ring-size`` set (dirty-limit, 8.1+); False under TCG.
    kvm_dirty_ring: bool = False
    #: the build has CONFIG_REPLICATION (x-colo).
    replication: bool = True
    #: a Linux build (zero-copy-send, the ``x-zero-copy-send`` property).
    linux: bool = True
    #: the build has CONFIG_LIVE_BLOCK_MIGRATION (the ``block`` capability, up to 9.0).
    live_block_migration: bool = True

    @classmethod
    def parse(cls, text: str) -> HostInfo:
        """Build from ``key=value,...``; keys are the field names, ``-`` or ``_`` alike.

        :raise UsageError: on an unknown key or a value that is not a boolean.
        """
        names = [f.name for f in fields(cls)]
        changes: dict[str, bool] = {}
        for item in filter(None, text.split(",")):
            key, sep, value = item.partition("=")
            name = key.strip().replace("-", "_")
            if name not in names:
                choices = ", ".join(n.replace("_", "-") for n in names)
                raise UsageError(f"--host: unknown key '{key}' (choose from {choices})")
            word = value.strip().lower() if sep else "on"
            if word in _TRUE:
                changes[name] = True
            elif word in _FALSE:
                changes[name] = False
            else:
                raise UsageError(f"--host: '{key}' expects 'on' or 'off', not '{value}'")
        return replace(cls(), **changes)


DEFAULT_HOST = HostInfo()
