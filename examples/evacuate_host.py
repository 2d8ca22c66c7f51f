"""Host evacuation: move every VM of fleet A to fleet B, at most N migrations at a time.

What an orchestrator does when a host goes into maintenance (Proxmox's "migrate all",
OpenStack's ``nova host-evacuate-live``), against two qmp-server fleets (``qmp-server
--fleet``), each standing for a host::

    python examples/evacuate_host.py --source A/fleet.sock --dest B/fleet.sock --concurrency 8
    python examples/evacuate_host.py                 # starts two small fleets itself

For each VM of A (``query-fleet`` on A's fleet monitor gives its name, monitor and the options
it was started with), as its turn comes:

1. start its destination on B: ``fleet-vm-add`` with the same options, its own monitor and
   ``-incoming defer`` (as a target host starts QEMU with the VM's configuration);
2. ``migrate-incoming tcp:HOST:0`` on the destination (``query-migrate`` tells the port);
3. ``migrate-set-capabilities`` on both sides: ``events``, and for a VM with a ``vfio-sim``
   device ``return-path`` + ``switchover-ack`` (``precopy-initial-data`` before QEMU 8.1), so
   the device's set-up on the destination happens before the switchover, not in the downtime;
4. ``migrate`` on the source, then wait for ``MIGRATION`` ``completed`` on both sides (the
   source's alone does not say the destination has loaded everything without a return path);
5. with ``--paused-start`` (libvirt's way: the destination started with ``-S``), ``cont`` it;
6. ``quit`` the source (QEMU leaves a migrated source in ``postmigrate``; it is the
   orchestrator's to end).  A failed migration removes the destination; the source runs on.

It prints each VM's downtime and total time (``query-migrate``) and the whole evacuation's
time; the exit status is 0 when every VM moved.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from qemu.qmp import QMPClient, QMPError
from qemu.qmp.events import EventListener

#: A check run on a migrated VM's source and destination monitors (a benchmark's digests).
Verify = Callable[[str, QMPClient, QMPClient], Awaitable[None]]

#: Options of a source VM its destination must not get: its monitors (the destination gets
#: its own), -incoming (it gets ``defer``), -S (it runs once the migration completed).
_DROP_WITH_VALUE = {"-qmp", "-qmp-pretty", "-monitor", "-mon", "-incoming", "-chardev"}
_DROP_FLAG = {"-S"}


def dest_args(args: list[str], monitor: str, *, paused: bool = False) -> list[str]:
    """The destination's command line: the source's options, its own monitor, -incoming
    (and -S when it is to start paused)."""
    out: list[str] = []
    dropped_chardevs = set()
    for i in range(len(args) - 1):  # the chardevs that served the monitors dropped below
        if args[i] == "-mon" and "chardev=" in args[i + 1]:
            dropped_chardevs.add(args[i + 1].split("chardev=", 1)[1].split(",", 1)[0])
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in _DROP_FLAG:
            i += 1
            continue
        if arg in _DROP_WITH_VALUE and i + 1 < len(args):
            value = args[i + 1]
            chardev_id = value.split("id=", 1)[1].split(",", 1)[0] if "id=" in value else ""
            if arg != "-chardev" or chardev_id in dropped_chardevs:
                i += 2
                continue
        out.append(arg)
        i += 1
    return [*out, "-qmp", monitor, "-incoming", "defer", *(["-S"] if paused else [])]


def endpoint(address: str) -> str | tuple[str, int]:
    """A monitor address as query-fleet gives it (``unix:PATH``, ``tcp:HOST:PORT``)."""
    if address.startswith("tcp:"):
        host, _, port = address[4:].rpartition(":")
        return host, int(port)
    return address.removeprefix("unix:").split(",", 1)[0]


async def connect(name: str, address: str, attempts: int = 3) -> QMPClient:
    """A client connected to a VM's monitor; one that does not greet within 10 s is left and
    tried again (a new connection, as an orchestrator's retry would)."""
    for attempt in range(1, attempts + 1):
        qmp = QMPClient(name)
        try:
            await asyncio.wait_for(qmp.connect(endpoint(address)), 10)
            return qmp
        except TimeoutError:
            print(f"{name}: no greeting from {address} (attempt {attempt})", file=sys.stderr)
            with suppress(QMPError, OSError, EOFError):
                await qmp.disconnect()
    raise TimeoutError(f"no greeting from {address}")


async def final_status(events: EventListener) -> str:
    """The first MIGRATION status that ends a migration, on one side."""
    async for event in events:
        status = str(event["data"]["status"])
        if status in ("completed", "failed", "cancelled"):
            return status
    return ""


@dataclass
class Outcome:
    name: str
    status: str
    downtime: int | None = None
    total: int | None = None
    error: str = ""
    #: the switchover gate's capability, when the VM has a vfio-sim device
    gate: str = "-"


class Evacuation:
    """Both fleet monitors (one connection each, shared by every VM's migration)."""

    def __init__(self, args: argparse.Namespace, verify: Verify | None = None) -> None:
        self.args = args
        self.source = QMPClient("fleet-a")
        self.dest = QMPClient("fleet-b")
        #: called with the VM's name and both monitors once its migration completed, before
        #: the destination is resumed (``--paused-start``) and the source quit
        self.verify = verify

    async def run(self) -> list[Outcome]:
        await self.source.connect(endpoint(self.args.source))
        await self.dest.connect(endpoint(self.args.dest))
        try:
            vms: Any = await self.source.execute("query-fleet")
            if self.args.only:
                vms = [vm for vm in vms if vm["name"] in self.args.only]
            gate = asyncio.Semaphore(self.args.concurrency)

            async def turn(vm: dict[str, Any]) -> Outcome:
                async with gate:
                    try:
                        return await self.move(vm)
                    except Exception as err:  # one VM's failure does not stop the others
                        return Outcome(vm["name"], "failed", error=f"{type(err).__name__}: {err}")

            return list(await asyncio.gather(*(turn(vm) for vm in vms)))
        finally:
            await self.source.disconnect()
            await self.dest.disconnect()

    async def add_destination(self, name: str, args: list[str]) -> str:
        """fleet-vm-add on B; returns the new VM's monitor once it listens."""
        monitor = self.args.dest_qmp.replace("{name}", name)
        with self.dest.listener(("FLEET_VM_ADDED", "FLEET_VM_REMOVED")) as events:
            await self.dest.execute(
                "fleet-vm-add", {"name": name, "args": dest_args(args, monitor)}
            )
            async for event in events:
                if event["data"]["name"] == name:
                    if event["event"] == "FLEET_VM_REMOVED":
                        raise RuntimeError(f"destination {name} did not start")
                    break
        vms: Any = await self.dest.execute("query-fleet")
        return str(next(vm for vm in vms if vm["name"] == name)["monitors"][0])

    async def move(self, vm: dict[str, Any]) -> Outcome:
        name = vm["name"]
        ack = any(a.startswith("vfio-sim") for a in vm["args"])
        gate = "-"
        dst_monitor = await self.add_destination(name, vm["args"])
        src = await connect(f"{name}-src", vm["monitors"][0])
        dst = await connect(f"{name}-dst", dst_monitor)
        try:
            for side in (src, dst):
                caps = [{"capability": "events", "state": True}]
                if ack:
                    listed: Any = await side.execute("query-migrate-capabilities")
                    names = {c["capability"] for c in listed}
                    gate = "switchover-ack" if "switchover-ack" in names else "precopy-initial-data"
                    caps += [{"capability": "return-path", "state": True},
                             {"capability": gate, "state": True}]  # fmt: skip
                await side.execute("migrate-set-capabilities", {"capabilities": caps})
            await dst.execute("migrate-incoming", {"uri": f"tcp:{self.args.migrate_host}:0"})
            incoming: Any = await dst.execute("query-migrate")
            port = incoming["socket-address"][0]["port"]
            with src.listener("MIGRATION") as src_events, dst.listener("MIGRATION") as dst_events:
                await src.execute("migrate", {"uri": f"tcp:{self.args.migrate_host}:{port}"})
                try:
                    async with asyncio.timeout(self.args.timeout):
                        src_status = await final_status(src_events)
                        # without a return path the source completes once its last bytes
                        # are on their way: the VM has moved when the destination has them
                        dst_status = ""
                        if src_status == "completed":
                            dst_status = await final_status(dst_events)
                except TimeoutError:
                    mine: Any = await src.execute("query-migrate")
                    theirs: Any = await dst.execute("query-migrate")
                    error = f"source {mine.get('status')}, destination {theirs.get('status')}"
                    return Outcome(name, "timeout", error=error, gate=gate)
            info: Any = await src.execute("query-migrate")
            if info["status"] != "completed" or dst_status != "completed":
                with suppress(QMPError):  # a failed destination may have ended by itself
                    await self.dest.execute("fleet-vm-remove", {"name": name})
                error = info.get("error-desc", "") or f"destination {dst_status}"
                return Outcome(name, info["status"], error=error, gate=gate)
            if self.verify is not None:
                await self.verify(name, src, dst)
            if self.args.paused:
                await dst.execute("cont")
            await src.execute("quit")  # the source stays in postmigrate until told to go
            return Outcome(name, "completed", info.get("downtime"), info.get("total-time"),
                           gate=gate)  # fmt: skip
        finally:
            for client in (src, dst):
                with suppress(EOFError, OSError):  # the source's monitor went with the VM
                    await client.disconnect()


def report(outcomes: list[Outcome], elapsed: float) -> int:
    print(f"{'vm':<16}{'status':<12}{'gate':<22}{'downtime':>10}{'total':>10}")
    for o in outcomes:
        down = "-" if o.downtime is None else f"{o.downtime} ms"
        total = "-" if o.total is None else f"{o.total} ms"
        print(f"{o.name:<16}{o.status:<12}{o.gate:<22}{down:>10}{total:>10}  {o.error}".rstrip())
    done = [o for o in outcomes if o.status == "completed"]
    downtimes = sorted(o.downtime for o in done if o.downtime is not None)
    if downtimes:
        middle = downtimes[len(downtimes) // 2]
        print(f"downtime min/median/max: {downtimes[0]}/{middle}/{downtimes[-1]} ms")
    print(f"evacuated {len(done)} of {len(outcomes)} VMs in {elapsed:.2f} s")
    return 0 if len(done) == len(outcomes) else 1


def start_demo_fleets(tmp: str, count: int) -> tuple[list[subprocess.Popen[bytes]], str, str]:
    """Two fleets for a self-contained run: A with ``count`` VMs (every other one with a
    ``vfio-sim`` device), B empty."""
    lines = ["[fleet]", f'qmp = "unix:{tmp}/a/fleet.sock,server=on,wait=off"',
             "[defaults]", 'm = "64M"', 'compat = "10.0"',
             f'qmp = "unix:{tmp}/a/{{name}}.sock,server=on,wait=off"']  # fmt: skip
    for i in range(count):
        lines += ["[[vm]]", f'name = "vm{i}"']
        if i % 2:
            lines.append('device = ["vfio-sim,id=gpu0,initial-bytes=1M,load-ms=300"]')
    procs = []
    for fleet, text in (("a", lines), ("b", lines[:2])):
        os.makedirs(f"{tmp}/{fleet}")
        with open(f"{tmp}/{fleet}.toml", "w") as f:
            f.write("\n".join(text).replace(f"{tmp}/a/", f"{tmp}/{fleet}/") + "\n")
        argv = [sys.executable, "-m", "qmp_server", "--fleet", f"{tmp}/{fleet}.toml"]
        procs.append(subprocess.Popen(argv, stderr=subprocess.DEVNULL))
    for fleet, proc in zip("ab", procs, strict=True):
        while not os.path.exists(f"{tmp}/{fleet}/fleet.sock"):
            if proc.poll() is not None:
                raise SystemExit(f"fleet {fleet} exited with status {proc.returncode}")
            time.sleep(0.02)
    return procs, f"{tmp}/a/fleet.sock", f"{tmp}/b/fleet.sock"


async def evacuate(args: argparse.Namespace) -> int:
    start = time.monotonic()
    outcomes = await Evacuation(args).run()
    return report(outcomes, time.monotonic() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", help="fleet A's monitor (a unix path or tcp:HOST:PORT)")
    parser.add_argument("--dest", help="fleet B's monitor")
    parser.add_argument("--concurrency", type=int, default=2, help="migrations at a time (2)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="move only these VMs")
    parser.add_argument(
        "--dest-qmp",
        help="the destination VMs' monitor, {name} for the VM's name "
        "(default: unix:DIR/{name}.sock, DIR the --dest socket's)",
    )
    parser.add_argument(
        "--migrate-host",
        default="127.0.0.1",
        help="the address B's VMs listen on for migrations (127.0.0.1)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=600,
        help="seconds a VM's migration may take before it is reported and left (600)",
    )
    parser.add_argument(
        "--paused-start",
        dest="paused",
        action="store_true",
        help="start each destination paused (-S) and resume it with cont once its migration "
        "completed, as libvirt does",
    )
    parser.add_argument(
        "--demo-vms",
        type=int,
        default=4,
        help="without --source/--dest: VMs in the fleets started here (4)",
    )
    args = parser.parse_args()
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    if (args.source is None) != (args.dest is None):
        parser.error("give both --source and --dest, or neither (a demo)")
    with tempfile.TemporaryDirectory(prefix="qmp-evacuate-") as tmp:
        procs: list[subprocess.Popen[bytes]] = []
        if args.source is None:
            procs, args.source, args.dest = start_demo_fleets(tmp, args.demo_vms)
        if args.dest_qmp is None:
            path = endpoint(args.dest)
            if not isinstance(path, str):
                parser.error("--dest-qmp is needed when B's monitor is tcp:")
            directory = os.path.dirname(os.path.abspath(path))
            args.dest_qmp = f"unix:{directory}/{{name}}.sock,server=on,wait=off"
        try:
            return asyncio.run(evacuate(args))
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(10)


if __name__ == "__main__":
    sys.exit(main())
