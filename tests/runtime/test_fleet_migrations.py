"""Migrations between two fleet processes: many at once, each VM with its own stream and ACK
gate, and a source fleet whose connections share a modelled host link.

One set of fleet processes serves the module: ``a`` (no link model), ``l`` (a slow link with
latency) and ``b``, the destination of both, whose VMs wait with ``-incoming defer``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from qemu.qmp import QMPClient
from server_process import free_port

#: The slow link of fleet ``l``: slow enough that the link, not the CPU, sets the pace.
LINK_BANDWIDTH = 2 << 20
DEVICE = "vfio-sim,id=gpu,initial-bytes=2M,state-bytes=256K,load-ms=1000"
VMS = {
    "vm0": "-m 64M --compat 10.0",
    "vm1": "-m 64M --compat 10.0 --dirty-rate 2M",  # its destination starts with -S
    "gpu0": f"-m 64M --compat 10.0 -device {DEVICE}",
    "gpu1": f"-m 64M --compat 8.1 -device {DEVICE}",
}
LINKED = {
    "l0": "-m 64M --compat 10.0",
    "l1": "-m 64M --compat 10.0",
    "l2": "-m 64M --compat 10.0",
    "lgpu": "-m 64M --compat 10.0 -device vfio-sim,id=gpu,initial-bytes=256K,load-ms=200",
    "lmfd": "-m 64M --compat 10.0",
}
WAIT = 60.0


@dataclass
class Fleets:
    dir: str
    procs: dict[str, subprocess.Popen[bytes]]

    def vm(self, fleet: str, name: str) -> str:
        return f"{self.dir}/{fleet}/{name}.sock"

    def monitor(self, fleet: str) -> str:
        return f"{self.dir}/{fleet}/fleet.sock"


def _fleet_file(path: str, sockdir: str, vms: dict[str, str], extra: list[str]) -> None:
    lines = ["[fleet]", f'qmp = "unix:{sockdir}/fleet.sock,server=on,wait=off"']
    for name, opts in vms.items():
        args = [*opts.split(), "-qmp", f"unix:{sockdir}/{{name}}.sock,server=on,wait=off", *extra]
        lines += ["[[vm]]", f'name = "{name}"', f"args = {args!r}".replace("'", '"')]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def fleets() -> Iterator[Fleets]:
    with tempfile.TemporaryDirectory(prefix="qfl-") as tmp:
        plan = {
            "a": (VMS, [], []),
            "l": (LINKED, [], ["--link-bandwidth", "2M", "--link-latency", "10ms"]),
            "b": ({**VMS, **LINKED, "vm1": VMS["vm1"] + " -S"}, ["-incoming", "defer"], []),
        }
        procs = {}
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        for fleet, (vms, extra, process) in plan.items():
            os.mkdir(f"{tmp}/{fleet}")
            _fleet_file(f"{tmp}/{fleet}.toml", f"{tmp}/{fleet}", vms, extra)
            procs[fleet] = subprocess.Popen(
                [sys.executable, "-m", "qmp_server", "--fleet", f"{tmp}/{fleet}.toml", *process],
                stdin=subprocess.DEVNULL, env=env,
            )  # fmt: skip
        found = Fleets(tmp, procs)
        try:
            deadline = time.monotonic() + 30
            for fleet, (vms, _, _) in plan.items():
                for path in [found.vm(fleet, n) for n in vms] + [found.monitor(fleet)]:
                    while not os.path.exists(path):
                        assert procs[fleet].poll() is None, f"fleet {fleet} exited"
                        assert time.monotonic() < deadline, f"no {path}"
                        time.sleep(0.02)
            yield found
        finally:
            for proc in procs.values():
                proc.terminate()
            for proc in procs.values():
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@contextlib.asynccontextmanager
async def connected(path: str) -> Any:
    qmp = QMPClient(os.path.basename(path))
    await qmp.connect(path)
    try:
        yield qmp
    finally:
        await qmp.disconnect()


@dataclass
class Result:
    name: str
    info: dict[str, Any]
    #: seconds from ``migrate`` to the destination's ``completed`` (as the orchestrator sees)
    elapsed: float
    same_guest: bool
    source_status: str
    dest_status: str


async def migrate(
    fleets: Fleets, src_fleet: str, name: str, *, ack: bool, multifd: int = 0
) -> Result:
    """Migrate VM ``name`` of ``src_fleet`` to fleet ``b`` over TCP, as an orchestrator does."""
    async with connected(fleets.vm(src_fleet, name)) as src, connected(fleets.vm("b", name)) as dst:
        listed = [c["capability"] for c in await src.execute("query-migrate-capabilities")]
        caps = [{"capability": "events", "state": True},
                {"capability": "return-path", "state": True}]  # fmt: skip
        if ack:
            assert "switchover-ack" in listed
            caps.append({"capability": "switchover-ack", "state": True})
        if multifd:
            caps.append({"capability": "multifd", "state": True})
        for side in (src, dst):
            await side.execute("migrate-set-capabilities", {"capabilities": caps})
            if multifd:
                await side.execute("migrate-set-parameters", {"multifd-channels": multifd})
        uri = f"tcp:127.0.0.1:{free_port()}"
        await dst.execute("migrate-incoming", {"uri": uri})
        start = time.monotonic()
        with dst.listener("MIGRATION") as events:
            await src.execute("migrate", {"uri": uri})
            async with asyncio.timeout(WAIT):
                async for event in events:
                    if event["data"]["status"] in ("completed", "failed"):
                        break
        elapsed = time.monotonic() - start
        async with asyncio.timeout(WAIT):
            while True:  # with a return path, the source completes when the destination ran
                info = await src.execute("query-migrate")
                if info["status"] in ("completed", "failed"):
                    break
                await asyncio.sleep(0.02)
        same = await src.execute("x-query-guest-digest") == await dst.execute(
            "x-query-guest-digest"
        )
        if (await dst.execute("query-status"))["status"] == "paused":
            await dst.execute("cont")  # -S: compared before its guest wrote again (libvirt's way)
        src_status = (await src.execute("query-status"))["status"]
        dst_status = (await dst.execute("query-status"))["status"]
    return Result(name, info, elapsed, same, src_status, dst_status)


async def quit_vm(fleets: Fleets, fleet: str, name: str) -> None:
    """What an orchestrator does with a source that migrated: ``quit`` it."""
    qmp = QMPClient(name)
    await qmp.connect(fleets.vm(fleet, name))
    await qmp.execute("quit")
    with contextlib.suppress(EOFError):  # the monitor went away with the VM
        await qmp.disconnect()


async def fleet_vms(fleets: Fleets, fleet: str) -> dict[str, dict[str, Any]]:
    async with connected(fleets.monitor(fleet)) as qmp:
        return {vm["name"]: vm for vm in await qmp.execute("query-fleet")}


async def test_concurrent_migrations_between_fleets(fleets: Fleets) -> None:
    results = await asyncio.gather(
        *(migrate(fleets, "a", name, ack=name.startswith("gpu")) for name in VMS)
    )
    for r in results:
        assert r.info["status"] == "completed", r
        assert r.same_guest, r.name
        # QEMU leaves a migrated source in postmigrate; the orchestrator quits it
        assert (r.source_status, r.dest_status) == ("postmigrate", "running"), r
    downtime = {r.name: r.info["downtime"] for r in results}
    # each device's 1 s load happened before its own switchover, behind its own ACK gate
    assert downtime["gpu0"] < 1000 and downtime["gpu1"] < 1000, downtime
    before = await fleet_vms(fleets, "a")
    assert {n: vm["status"] for n, vm in before.items()} == dict.fromkeys(VMS, "postmigrate")
    assert all(vm["migration"] == "completed" for vm in before.values())
    for name in VMS:
        await quit_vm(fleets, "a", name)
    async with asyncio.timeout(WAIT):
        while True:  # each leaves the fleet once its monitors have said goodbye
            if not await fleet_vms(fleets, "a"):
                break
            await asyncio.sleep(0.05)
    after = await fleet_vms(fleets, "b")
    assert {n: after[n]["status"] for n in VMS} == dict.fromkeys(VMS, "running")
    assert {n: after[n]["incoming"] for n in VMS} == dict.fromkeys(VMS, "completed")
    # the destination knows what the VM was started with: a next hop can start its target
    assert after["gpu0"]["args"][:2] == ["-m", "64M"]


async def test_link_is_shared_fairly_by_concurrent_migrations(fleets: Fleets) -> None:
    async with connected(fleets.monitor("l")) as qmp:
        link = await qmp.execute("query-fleet-link")
    settings = {k: link[k] for k in ("modelled", "bandwidth", "latency-ns", "connections")}
    assert settings == {"modelled": True, "bandwidth": LINK_BANDWIDTH, "latency-ns": 10_000_000,
                        "connections": 0}  # fmt: skip
    alone = await migrate(fleets, "l", "l0", ack=False)
    async with connected(fleets.monitor("l")) as qmp:
        one = await qmp.execute("query-fleet-link")
    both = await asyncio.gather(*(migrate(fleets, "l", n, ack=False) for n in ("l1", "l2")))
    async with connected(fleets.monitor("l")) as qmp:
        three = await qmp.execute("query-fleet-link")
    for r in (alone, *both):
        assert r.info["status"] == "completed" and r.same_guest, r
    # every stream byte crossed the link once; the return paths came back through it
    per_vm = one["transmitted"] - link["transmitted"]
    assert per_vm > 1 << 20 and one["received"] > link["received"]
    assert 2.5 * per_vm < three["transmitted"] - link["transmitted"] < 3.5 * per_vm
    # the link, not the CPU, set the pace: never faster than its bandwidth
    assert alone.elapsed * LINK_BANDWIDTH >= per_vm
    # two at once share the NIC: each takes about as long as both streams over the bandwidth
    # (wide margins: a ratio of times measured in the same run)
    slow, fast = max(r.elapsed for r in both), min(r.elapsed for r in both)
    assert 1.4 * alone.elapsed < fast <= slow < 3.0 * alone.elapsed, (alone, both)
    assert slow < 1.35 * fast, both  # fair: they finish together


async def test_switchover_ack_through_a_link_with_latency(fleets: Fleets) -> None:
    r = await migrate(fleets, "l", "lgpu", ack=True)
    assert r.info["status"] == "completed" and r.same_guest, r
    assert (r.source_status, r.dest_status) == ("postmigrate", "running")
    # the ACK crossed the link back: at least one round trip before the switchover
    assert r.elapsed >= 0.02


async def test_multifd_channels_each_go_through_the_link(fleets: Fleets) -> None:
    seen: list[int] = []

    async def watch() -> None:
        async with connected(fleets.monitor("l")) as qmp:
            while True:
                seen.append((await qmp.execute("query-fleet-link"))["connections"])
                await asyncio.sleep(0.05)

    watcher = asyncio.ensure_future(watch())
    try:
        r = await migrate(fleets, "l", "lmfd", ack=False, multifd=3)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    assert r.info["status"] == "completed" and r.same_guest, r
    assert max(seen) >= 4, seen  # the main channel and three multifd channels


def test_bad_link_options_stop_the_fleet_at_start() -> None:
    for option, text in (
        (["--link-latency", "fast"], "--link-latency fast: 'fast' is not a latency"),
        (["--link-bandwidth", "1x"], "--link-bandwidth 1x: Parameter 'link-bandwidth'"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "qmp_server", "--fleet-size", "1", *option, "--", "-m", "64M"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert proc.returncode == 1
        assert proc.stderr.startswith(f"qmp-server: {text}"), proc.stderr
