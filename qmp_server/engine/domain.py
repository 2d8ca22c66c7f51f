"""What a started domain is made of beyond its RAM: vCPUs, devices, I/O threads, chardevs.

Pure.  The runtime builds one :class:`Domain` from the command line and fills in what only a
live process knows: the native ids of the vCPU and I/O threads it started (libvirt writes them
into cgroups, so they must be real threads of this process) and a callable that describes the
character devices as the monitors see them right now.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from qmp_server.engine.qom_tree import QomTree
from qmp_server.engine.topology import Topology

__all__ = ["ChardevState", "Domain"]


@dataclass(frozen=True, slots=True)
class ChardevState:
    """One character device now: its label, QEMU's filename text, whether a frontend has it."""

    label: str
    filename: str
    frontend_open: bool = True


@dataclass
class Domain:
    """The started machine's vCPUs, QOM tree, I/O threads and character devices."""

    topology: Topology
    qom: QomTree
    #: no ``-nodefaults``: QEMU's default drives and serial/parallel chardevs exist
    defaults: bool = False
    #: ``-object iothread,id=X`` ids, in command-line order
    iothreads: list[str] = field(default_factory=list)
    #: native thread id of each vCPU (index = cpu-index), set by the runtime
    vcpu_thread_ids: list[int] = field(default_factory=list)
    #: native thread id of each I/O thread, by id, set by the runtime
    iothread_thread_ids: dict[str, int] = field(default_factory=dict)
    #: the character devices as they are now (set by the runtime; empty in pure tests)
    chardevs: Callable[[], list[ChardevState]] = field(default=lambda: [])
