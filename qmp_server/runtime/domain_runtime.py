"""The live half of a started domain: the command line made into a Domain, its threads, and
the character devices described from the monitors' sockets as QEMU describes them.

QEMU's chardev filename for a socket: ``unix:PATH`` or ``tcp:HOST:PORT`` (``,server=on`` when
it listens), ``tcp:...,server=on <-> PEERHOST:PEERPORT`` once a tcp client is connected, and
``disconnected:`` before the address while no client is.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from qmp_server.cli import Options
from qmp_server.engine.domain import ChardevState, Domain
from qmp_server.engine.qom_tree import QomTree, device_identity, model_for
from qmp_server.engine.topology import parse_smp
from qmp_server.runtime.monitor import QMPMonitor
from qmp_server.runtime.vcpu_threads import IdleThreads

__all__ = ["build_domain", "chardev_state", "start_threads"]


def _family(machine: str | None) -> str | None:
    if machine is None or machine == "pc" or machine.startswith("pc-i440fx"):
        return "pc"
    if machine == "none":
        return "none"
    if "q35" in machine:
        return "q35"
    if machine.startswith("pc-"):
        return "pc"
    return None


def _iothread_id(text: str) -> str | None:
    if text.lstrip().startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError:
            return None
        return str(obj["id"]) if obj.get("qom-type") == "iothread" and "id" in obj else None
    parts = text.split(",")
    fields = dict(p.partition("=")[::2] for p in parts[1:])
    kind = parts[0] if "=" not in parts[0] else fields.get("qom-type", "")
    return fields.get("id") if kind == "iothread" else None


def build_domain(options: Options) -> Domain:
    """The Domain of this command line (threads are started later, after any fork)."""
    topology = parse_smp(options.smp)
    family = _family(options.machine)
    model = model_for(options.profile)
    devices = [device_identity(text) for text in options.devices]
    qom = QomTree(model, family or "", topology, devices)
    iothreads = [i for i in (_iothread_id(o) for o in options.objects) if i is not None]
    return Domain(topology=topology, qom=qom, defaults=not options.nodefaults, iothreads=iothreads)


def start_threads(domain: Domain, options: Options, threads: IdleThreads) -> None:
    """One idle thread per vCPU and per I/O thread, named as QEMU names them."""
    debug = options.debug_threads
    cpus = domain.topology.cpus if domain.qom.cpu_type else 0
    domain.vcpu_thread_ids = [threads.start(f"CPU {i}/TCG" if debug else None) for i in range(cpus)]
    domain.iothread_thread_ids = {
        iothread: threads.start(f"IO {iothread}" if debug else None)
        for iothread in domain.iothreads
    }


def _address(sockname: Any, family: int, server: bool) -> str:
    suffix = ",server=on" if server else ""
    if family == socket.AF_UNIX:
        path = sockname.decode(errors="replace") if isinstance(sockname, bytes) else sockname
        return f"unix:{path or ''}{suffix}"
    host, port = sockname[0], sockname[1]
    if ":" in host:
        host = f"[{host}]"
    return f"tcp:{host}:{port}{suffix}"


def chardev_state(label: str, monitor: QMPMonitor) -> ChardevState:
    """query-chardev's entry for the chardev of ``monitor``."""
    spec = monitor.spec
    conn = monitor.current
    if conn is not None and conn.transport is not None:
        sock = conn.transport.get_extra_info("socket")
        sockname = conn.transport.get_extra_info("sockname")
        family = sock.family if sock is not None else socket.AF_UNIX
        # a unix listener is bound under a temporary name and renamed: name the real path
        where = spec.path if spec.kind == "unix" else sockname
        text = _address(where, family, spec.server)
        if family != socket.AF_UNIX:
            peer = conn.transport.get_extra_info("peername")
            host = f"[{peer[0]}]" if ":" in peer[0] else peer[0]
            text += f" <-> {host}:{peer[1]}"
        return ChardevState(label, text)
    if spec.kind == "unix":
        where = f"unix:{spec.path}"
    elif spec.kind == "tcp":
        where = f"tcp:{spec.host}:{spec.port}"
    else:
        where = f"fd:{spec.fd}"
    return ChardevState(label, f"disconnected:{where}{',server=on' if spec.server else ''}")
