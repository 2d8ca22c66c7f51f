"""Domain commands: what a started domain answers about its chardevs, vCPUs, QOM tree, I/O
threads and (absent) block and memory devices -- what libvirt asks while it starts a domain.

The state lives in :class:`~qmp_server.engine.domain.Domain` (``vm.domain``); the QOM answers
come from :class:`~qmp_server.engine.qom_tree.QomTree`.  A VM without a domain (pure unit tests)
answers as a machine with no vCPUs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qmp_server.commands.registry import command
from qmp_server.engine.domain import ChardevState
from qmp_server.engine.qom_tree import cpu_qom_path
from qmp_server.errors import CommandError
from qmp_server.qapi._hashorder import ghash_order

if TYPE_CHECKING:
    from qmp_server.engine.domain import Domain
    from qmp_server.engine.vm import VirtualMachine

#: creation order of the default chardevs (the hash order of query-chardev depends on it)
_DEFAULT_CHARDEVS = {"serial0": 0, "parallel0": 1}
#: QEMU's default adaptive polling of an I/O thread (ns, grow, shrink) and AIO batch
_IOTHREAD_POLL = (32768, 0, 0, 0)


def _domain(vm: VirtualMachine) -> Domain | None:
    return vm.domain


@command("query-chardev")
def query_chardev(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    domain = _domain(vm)
    states = {c.label: c for c in (domain.chardevs() if domain else [])}
    if domain is not None and domain.defaults:
        # the default serial0 and parallel0 ("vc") come after the monitors, serial first
        defaults = sorted(
            domain.qom.defaults("query-chardev"), key=lambda e: _DEFAULT_CHARDEVS.get(e["label"], 9)
        )
        for entry in defaults:
            states.setdefault(entry["label"], ChardevState(entry["label"], entry["filename"], True))
    # chardevs are children of a QOM container: hash-slot order, each one prepended
    return [
        {"label": c.label, "filename": c.filename, "frontend-open": c.frontend_open}
        for c in (states[label] for label in reversed(ghash_order(states)))
    ]


@command("query-chardev-backends")
def query_chardev_backends(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    domain = _domain(vm)
    return [] if domain is None else [dict(b) for b in domain.qom.model.chardev_backends]


def _cpu_props(domain: Domain, index: int) -> dict[str, int]:
    ids = domain.topology.ids(index)
    props = {"socket-id": ids["socket-id"]}
    if domain.topology.dies > 1:
        props["die-id"] = ids["die-id"]
    props["core-id"] = ids["core-id"]
    props["thread-id"] = ids["thread-id"]
    return props


@command("query-hotpluggable-cpus")
def query_hotpluggable_cpus(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    domain = _domain(vm)
    if domain is None:
        return []
    refusal = domain.qom.hotplug_refusal()
    if refusal is not None:
        raise refusal
    if not domain.qom.cpu_type:
        return []
    slots = []
    for index in range(domain.topology.maxcpus):
        slot: dict[str, Any] = {
            "type": domain.qom.cpu_type,
            "vcpus-count": 1,
            "props": _cpu_props(domain, index),
        }
        if index < domain.topology.cpus:
            slot["qom-path"] = cpu_qom_path(index)
        slots.append(slot)
    return slots[::-1]  # QEMU prepends each slot


@command("query-cpus-fast")
def query_cpus_fast(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    domain = _domain(vm)
    if domain is None or not domain.qom.cpu_type:
        return []
    return [
        {
            "cpu-index": index,
            "qom-path": cpu_qom_path(index),
            "thread-id": thread_id,
            "props": _cpu_props(domain, index),
            "target": "x86_64",
        }
        for index, thread_id in enumerate(domain.vcpu_thread_ids[: domain.topology.cpus])
    ]


@command("qom-list")
def qom_list(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    domain = _domain(vm)
    if domain is None:
        raise CommandError(f"Device '{args['path']}' not found", "DeviceNotFound")
    return domain.qom.list(args["path"])


@command("qom-get")
def qom_get(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    domain = _domain(vm)
    if domain is None:
        raise CommandError(f"Device '{args['path']}' not found", "DeviceNotFound")
    return domain.qom.get(args["path"], args["property"])


@command("query-iothreads")
def query_iothreads(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    domain = _domain(vm)
    if domain is None:
        return []
    poll_max, grow, shrink, batch = _IOTHREAD_POLL
    return [
        {
            "id": iothread,
            "thread-id": domain.iothread_thread_ids.get(iothread, 0),
            "poll-max-ns": poll_max,
            "poll-grow": grow,
            "poll-shrink": shrink,
            "aio-max-batch": batch,
        }
        for iothread in ghash_order(domain.iothreads)  # children of /objects, appended
    ]


@command("query-memory-devices")
def query_memory_devices(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    return []  # no -device pc-dimm/virtio-mem is modelled


def _default_drives(vm: VirtualMachine, command_name: str) -> list[Any]:
    domain = _domain(vm)
    if domain is None or not domain.defaults:
        return []
    return domain.qom.defaults(command_name)


@command("query-block")
def query_block(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    # only the machine's empty default drives (none with -nodefaults): no disks are modelled
    return _default_drives(vm, "query-block")


@command("query-named-block-nodes")
def query_named_block_nodes(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    return []


@command("query-blockstats")
def query_blockstats(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    if args.get("query-nodes"):
        return []  # the default drives are empty: no nodes
    return _default_drives(vm, "query-blockstats")
