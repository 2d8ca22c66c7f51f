"""``-smp``: the vCPU topology of the machine, computed as QEMU computes it.

Pure.  :func:`parse_smp` takes the option text (``N[,sockets=S][,dies=D][,cores=C][,threads=T]
[,maxcpus=M]``; ``cpus=N`` is the long form of the leading number) and fills in what is missing
the way QEMU 6.2+ does for current machine types: a missing ``threads`` is 1, a missing
``sockets`` is 1 and ``cores`` takes the rest; ``maxcpus`` defaults to the product and ``cpus``
to ``maxcpus``.  :meth:`Topology.ids` places a vCPU index in the topology (threads vary fastest)
and :meth:`Topology.apic_id` packs the ids into an x86 APIC id, each level as wide as the next
power of two of its count.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Topology", "parse_smp"]

_KEYS = ("cpus", "sockets", "dies", "clusters", "cores", "threads", "maxcpus")


@dataclass(frozen=True, slots=True)
class Topology:
    """The machine's vCPUs: ``cpus`` present, ``maxcpus`` slots."""

    cpus: int = 1
    sockets: int = 1
    dies: int = 1
    cores: int = 1
    threads: int = 1
    maxcpus: int = 1

    def ids(self, index: int) -> dict[str, int]:
        """socket/die/core/thread ids of vCPU ``index``."""
        thread = index % self.threads
        core = index // self.threads % self.cores
        die = index // (self.threads * self.cores) % self.dies
        socket = index // (self.threads * self.cores * self.dies)
        return {"socket-id": socket, "die-id": die, "core-id": core, "thread-id": thread}

    def apic_id(self, index: int) -> int:
        ids = self.ids(index)
        thread_w = _width(self.threads)
        core_w = _width(self.cores)
        die_w = _width(self.dies)
        return (
            (ids["socket-id"] << (die_w + core_w + thread_w))
            | (ids["die-id"] << (core_w + thread_w))
            | (ids["core-id"] << thread_w)
            | ids["thread-id"]
        )


def _width(count: int) -> int:
    return (count - 1).bit_length()


def parse_smp(text: str | None) -> Topology:
    """The topology of ``-smp TEXT`` (None: QEMU's default, one vCPU).

    :raise ValueError: a value that is not a number, an unknown key, or a topology whose
        product does not match ``maxcpus``.
    """
    if text is None:
        return Topology()
    given: dict[str, int] = {}
    for i, part in enumerate(text.split(",")):
        key, sep, value = part.partition("=")
        if not sep and i == 0:
            key, value = "cpus", part
        if key not in _KEYS:
            raise ValueError(f"Invalid parameter '{key}'")
        try:
            given[key] = int(value, 10)
        except ValueError:
            raise ValueError(f"Parameter '{key}' expects a number") from None
    cpus = given.get("cpus", 0)
    maxcpus = given.get("maxcpus", 0)
    dies = given.get("dies", 0) or 1
    clusters = given.get("clusters", 0) or 1
    sockets = given.get("sockets", 0)
    cores = given.get("cores", 0)
    threads = given.get("threads", 0) or 1
    if not sockets or not cores:
        maxcpus = maxcpus or cpus or 1
        sockets = sockets or 1
        cores = cores or max(maxcpus // (sockets * dies * clusters * threads), 1)
    total = sockets * dies * clusters * cores * threads
    maxcpus = maxcpus or total
    cpus = cpus or maxcpus
    if total != maxcpus:
        raise ValueError(
            "Invalid CPU topology: product of the hierarchy must match maxcpus: "
            f"sockets ({sockets}) * dies ({dies}) * cores ({cores}) * threads ({threads}) "
            f"!= maxcpus ({maxcpus})"
        )
    if maxcpus < cpus:
        raise ValueError(
            "Invalid CPU topology: maxcpus must be equal to or greater than smp: "
            f"sockets ({sockets}) * dies ({dies}) * cores ({cores}) * threads ({threads}) "
            f"== maxcpus ({maxcpus}) < smp_cpus ({cpus})"
        )
    return Topology(cpus, sockets, dies, cores * clusters, threads, maxcpus)
