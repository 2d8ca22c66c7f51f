"""vCPU and I/O thread ids are live threads of the server process (libvirt puts them in
cgroups), named as QEMU names them with ``debug-threads=on``."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from server_process import RawClient, ServerProcess


def _ask(client: RawClient, command: str, **arguments: Any) -> Any:
    request: dict[str, Any] = {"execute": command}
    if arguments:
        request["arguments"] = arguments
    client.send(json.dumps(request).encode() + b"\n")
    while True:
        reply = json.loads(client.line())
        if "event" not in reply:
            return reply["return"]


def _session(server: ServerProcess) -> RawClient:
    client = RawClient(server.socket)
    client.line()  # greeting
    _ask(client, "qmp_capabilities")
    return client


def test_vcpu_and_iothread_ids_are_threads_of_the_server(
    qmp_server: Callable[..., ServerProcess],
) -> None:
    server = qmp_server(
        "--compat", "7.2", "-name", "guest=g,debug-threads=on", "-S", "-machine", "pc",
        "-smp", "3,sockets=1,cores=3", "-nodefaults", "-object", "iothread,id=io1",
    )  # fmt: skip
    client = _session(server)
    pid = server.proc.pid
    cpus = _ask(client, "query-cpus-fast")
    assert [c["cpu-index"] for c in cpus] == [0, 1, 2]
    tids = [c["thread-id"] for c in cpus]
    assert len(set(tids)) == 3 and pid not in tids
    for index, tid in enumerate(tids):
        with open(f"/proc/{pid}/task/{tid}/comm", encoding="utf-8") as f:
            assert f.read().strip() == f"CPU {index}/TCG"
    (iothread,) = _ask(client, "query-iothreads")
    assert os.path.exists(f"/proc/{pid}/task/{iothread['thread-id']}")
    assert iothread["thread-id"] not in tids
    client.close()


def test_without_debug_threads_the_threads_keep_the_process_name(
    qmp_server: Callable[..., ServerProcess],
) -> None:
    server = qmp_server("-S", "-machine", "q35", "-smp", "2", "-nodefaults")
    client = _session(server)
    pid = server.proc.pid
    with open(f"/proc/{pid}/comm", encoding="utf-8") as f:
        process_name = f.read().strip()
    for cpu in _ask(client, "query-cpus-fast"):
        with open(f"/proc/{pid}/task/{cpu['thread-id']}/comm", encoding="utf-8") as f:
            assert f.read().strip() == process_name
    client.close()


def test_machine_none_has_no_vcpus(qmp_server: Callable[..., ServerProcess]) -> None:
    server = qmp_server("-machine", "none", "-nodefaults")
    client = _session(server)
    assert _ask(client, "query-cpus-fast") == []
    client.close()
