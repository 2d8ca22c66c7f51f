"""The switchover-ACK scenarios of QEMU 10.0's live behaviour, in every profile that has the ACK.

Issue 8: the same scenarios pass against the default profile (the capability is named
``precopy-initial-data`` there, property ``x-precopy-initial-data``), ``--compat 8.1`` and
``--compat 10.0`` (``switchover-ack``, property ``x-switchover-ack``).  The scenarios follow
``../shared/reference/qemu-10.0.md`` ("Key facts about switchover-ack"), recorded from a live
QEMU 10.0 (the two-party transcripts ``tests/conformance/two_party/fixtures/qemu-10.0/
switchover-ack-*.json``):

a. both sides on: completes; without a device that needs the ACK the destination ACKs as the
   stream starts and the source switches over at its first convergence; with a ``vfio-sim``
   device the source does not stop the guest before the destination loaded its initial data;
b. the source only: ``active`` for ever, running, passes counting; ``migrate_cancel`` ends it,
   the guest is intact and a retry to a new destination completes;
c. the destination only: completes (the ACK it sends is not waited for);
d. ``stop`` on a source that waits: completes at once, the destination stays ``paused``, ``cont``
   works on both;
e. pause-before-switchover: ``pre-switchover`` only after the ACK, then ``migrate-continue``,
   ``device``, ``completed``;
f. the destination enables the capability after ``migrate-incoming``: effective while it only
   listens, accepted without effect once the stream runs;
g. start-up: the ACK property without ``x-return-path`` exits 1 with QEMU's message; with it,
   both capabilities are on.

What differs per profile (``qmp_server/engine/migration.py``, ``runtime/migration_io.py`` and the
recorded transcripts): 10.0 passes through ``MIGRATION device`` at every switchover (STOP,
device, the final PASS, completed), the default and 8.1 profiles only with
pause-before-switchover, as 7.2 (STOP, the final PASS, completed); a cancelled 10.0 migration
with a return path reports ``error-desc`` "Channel error: Input/output error", the others only
the status.

Timing rule: no test asserts wall-clock speed and every wait is bounded (``migration_rig.WAIT``).
Where the ACK gate must be seen holding, the test compares server event timestamps with the
device's ``load-ms``: a lower bound the gate guarantees (the destination cannot have loaded the
initial data earlier than ``load-ms`` after its stream started), which a slow machine only makes
larger.  Guests are 64 MiB.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import pytest
from migration_rig import (
    MiB,
    Rig,
    Side,
    ack_never_comes,
    assert_same_guest,
    exit_code,
    migrate_and_finish,
)


@dataclass(frozen=True)
class Profile:
    """One emulated version that has the switchover ACK, and what differs between them."""

    compat: str  # the --compat value; "default" for none

    @property
    def args(self) -> tuple[str, ...]:
        return () if self.compat == "default" else ("--compat", self.compat)

    @property
    def cap(self) -> str:
        """The capability's name (the patch series' name in the default profile)."""
        return "precopy-initial-data" if self.compat == "default" else "switchover-ack"

    @property
    def prop(self) -> str:
        """The ``-global migration.*`` property of the capability."""
        return f"x-{self.cap}"

    @property
    def other_prop(self) -> str:
        return "x-switchover-ack" if self.compat == "default" else "x-precopy-initial-data"

    @property
    def device_state(self) -> list[str]:
        """What follows STOP at switchover without pause-before-switchover."""
        return ["device"] if self.compat == "10.0" else []

    @property
    def cancelled(self) -> dict[str, Any]:
        """query-migrate after migrate_cancel with the return path on."""
        if self.compat == "10.0":
            return {"status": "cancelled", "error-desc": "Channel error: Input/output error"}
        return {"status": "cancelled"}

    def both(self) -> dict[str, bool]:
        return {"return-path": True, self.cap: True}


PROFILES = [Profile("default"), Profile("8.1"), Profile("10.0")]
profiles = pytest.mark.parametrize("p", PROFILES, ids=lambda p: p.compat)

GUEST = ("-m", "64M")
#: A device whose destination-side allocation takes ``load-ms``: the ACK waits for it.
LOAD_MS = 1000


def device(load_ms: int = LOAD_MS, initial: str = "16M") -> tuple[str, str]:
    return ("-device", f"vfio-sim,id=nic0,initial-bytes={initial},state-bytes=1M,"
                       f"load-ms={load_ms}")  # fmt: skip


def passes(side: Side) -> list[int]:
    return [int(e.split()[1]) for e in side.names() if e.startswith("PASS")]


def assert_completed_like_qemu(p: Profile, source: Side, dest: Side) -> list[str]:
    """The events of a migration that completed with the guest running: QEMU's order for the
    profile.  Returns what the source emitted before its STOP."""
    src = source.names()
    assert src[:3] == ["setup", "PASS 1", "active"], src
    stop = src.index("STOP")
    assert all(e.startswith("PASS") for e in src[3:stop]), src
    numbers = passes(source)
    assert numbers == list(range(1, len(numbers) + 1)), src
    assert src[stop:] == ["STOP", *p.device_state, f"PASS {numbers[-1]}", "completed"], src
    assert dest.names() == ["setup", "active", "RESUME", "completed"]
    return src[:stop]


async def assert_both_ends_completed(source: Side, dest: Side, *, vfio: bool) -> None:
    info = await source.run("query-migrate")
    members = {"status", "ram", "total-time", "downtime", "setup-time"}
    assert set(info) == (members | {"vfio"} if vfio else members), info
    assert info["status"] == "completed" and info["ram"]["remaining"] == 0
    assert await dest.run("query-migrate") == {"status": "completed"}
    assert await source.status() == "postmigrate"
    await assert_same_guest(source, dest)


# ---- a. both sides on ---------------------------------------------------------------------------


@profiles
async def test_both_sides_without_a_device_switch_over_at_first_convergence(
    rig: Rig, p: Profile
) -> None:
    # No device needs the ACK: the destination sends it as soon as the return path opens.
    # 64 MiB of random RAM at 64 MiB/s: the first convergence comes about 0.7 s later, and a
    # source still waiting for the ACK there would sync again (PASS 3, 4 ...) before its STOP.
    source, dest, uri = await rig.pair(*p.args, *GUEST, "--guest-fill", "random", caps=p.both())
    await source.params(max_bandwidth=64 * MiB)
    await migrate_and_finish(source, dest, uri)
    before_stop = assert_completed_like_qemu(p, source, dest)
    assert before_stop == ["setup", "PASS 1", "active", "PASS 2"]  # no visible wait
    await assert_both_ends_completed(source, dest, vfio=False)
    assert await dest.status() == "running"


@profiles
async def test_both_sides_with_a_device_no_stop_before_the_initial_data_is_loaded(
    rig: Rig, p: Profile
) -> None:
    source, dest, uri = await rig.pair(*p.args, *GUEST, *device(), caps=p.both())
    await source.params(max_bandwidth=0)
    await migrate_and_finish(source, dest, uri)
    before_stop = assert_completed_like_qemu(p, source, dest)
    # the gate: the destination starts loading at INIT_DATA_SENT, after its stream started
    assert source.stamp("STOP") - dest.stamp("MIGRATION", "active") >= LOAD_MS / 1000
    # and while it waited with nothing left to send, the source kept syncing (passes)
    assert len([e for e in before_stop if e.startswith("PASS")]) >= 4, before_stop
    info = await source.run("query-migrate")
    assert info["vfio"]["transferred"] >= 16 * MiB
    await assert_both_ends_completed(source, dest, vfio=True)
    assert await dest.status() == "running"


# ---- b. the source only -------------------------------------------------------------------------


@profiles
async def test_source_only_waits_until_cancelled_then_a_retry_completes(
    rig: Rig, p: Profile
) -> None:
    # no workload: the guest must read back unchanged after the cancel
    source, dest, before = await ack_never_comes(rig, *p.args, cap=p.cap, src=())
    # the destination is still receiving (QEMU: active, inmigrate), no timeout anywhere
    assert (await dest.run("query-migrate"))["status"] == "active"
    assert await dest.status() == "inmigrate"
    await source.run("migrate_cancel")
    assert await source.wait_status("cancelled", "completed", "failed") == "cancelled"
    names = source.names()
    assert names[-2:] == ["cancelling", "cancelled"] and "STOP" not in names, names
    assert await source.run("query-migrate") == p.cancelled
    assert await source.status() == "running"
    assert await source.digest() == before  # intact
    assert exit_code(dest.server) == 1  # the destination's load fails and it exits
    # a new destination that ACKs: the retry completes with the same guest
    dest2 = await rig.side(*p.args, *GUEST, "--guest-fill", "random", "-incoming", "defer")
    await dest2.caps(**p.both())
    uri = rig.unix_uri()
    await dest2.run("migrate-incoming", {"uri": uri})
    dest2.mark()
    await migrate_and_finish(source, dest2, uri)
    await assert_same_guest(source, dest2)
    assert await dest2.digest() == before
    assert await dest2.status() == "running"


# ---- c. the destination only --------------------------------------------------------------------


@profiles
async def test_destination_only_completes(rig: Rig, p: Profile) -> None:
    # the source does not use the capability: no INIT_DATA_SENT, nothing waits for the ACK
    source, dest, uri = await rig.pair(
        *p.args, *GUEST, *device(load_ms=200, initial="4M"),
        caps={"return-path": True}, dst_caps=p.both(),
    )  # fmt: skip
    await source.params(max_bandwidth=0)
    await migrate_and_finish(source, dest, uri)
    assert_completed_like_qemu(p, source, dest)
    await assert_both_ends_completed(source, dest, vfio=True)
    assert await dest.status() == "running"


# ---- d. stop on a waiting source ----------------------------------------------------------------


@profiles
async def test_stop_on_a_waiting_source_completes_at_once(rig: Rig, p: Profile) -> None:
    source, dest, _ = await ack_never_comes(rig, *p.args, cap=p.cap)
    await source.run("stop")
    assert await source.wait_status("completed", "failed", "cancelled") == "completed"
    assert await dest.wait_status("completed", "failed") == "completed"
    src = source.names()
    assert src.count("STOP") == 1, src
    stop = min(src.index(e) for e in ("STOP", *p.device_state))
    tail, last = src[stop:], f"PASS {passes(source)[-1]}"
    if p.compat == "10.0":
        # 10.0 tests the gate after a pass's sync: no pass between the stop and `device`,
        # then the final one.  STOP (from `stop`) and `device` race in QEMU: either order.
        assert sorted(tail[:2]) == ["STOP", "device"] and tail[2:] == [last, "completed"], src
    else:
        # 8.1 computed the gate at the top of an iteration: its exact sync may come first
        assert tail[-1] == "completed" and len(tail) >= 3, src
        assert all(e.startswith("PASS") for e in tail[1:-1]), src
    # the source was not running at switchover: the destination stays paused, no RESUME
    assert dest.names() == ["setup", "active", "completed"]
    await assert_same_guest(source, dest)
    assert await source.status() == "postmigrate"
    assert await dest.run("query-status") == {
        "status": "paused", "running": False, **_singlestep(p)}  # fmt: skip
    await dest.run("cont")
    await source.run("cont")
    for side in (source, dest):
        assert await side.run("query-status") == {
            "status": "running", "running": True, **_singlestep(p)}  # fmt: skip
        await side.wait_event("RESUME")


def _singlestep(p: Profile) -> dict[str, Any]:
    """query-status still has ``singlestep`` before 10.0 (reference §1)."""
    return {} if p.compat == "10.0" else {"singlestep": False}


# ---- e. pause-before-switchover after the ACK ---------------------------------------------------


@profiles
async def test_pause_before_switchover_comes_after_the_ack(rig: Rig, p: Profile) -> None:
    load_ms = 500
    source, dest, uri = await rig.pair(*p.args, *GUEST, *device(load_ms, "8M"), caps=p.both())
    await source.caps(**{"pause-before-switchover": True})
    await source.params(max_bandwidth=0)
    source.mark()
    await source.run("migrate", {"uri": uri})
    assert await source.wait_status("pre-switchover", "completed", "failed") == "pre-switchover"
    assert (await source.run("query-migrate"))["status"] == "pre-switchover"
    assert await source.status() == "finish-migrate"
    # reached only once the destination had loaded the initial data and ACKed
    assert source.stamp("MIGRATION", "pre-switchover") - dest.stamp("MIGRATION", "active") >= (
        load_ms / 1000
    )
    await source.run("migrate-continue", {"state": "pre-switchover"})
    assert await source.wait_status("completed", "failed") == "completed"
    assert await dest.wait_status("completed", "failed") == "completed"
    src = source.names()
    stop = src.index("STOP")
    last = passes(source)[-1]
    assert src[stop:] == ["STOP", "pre-switchover", "device", f"PASS {last}", "completed"], src
    assert dest.names() == ["setup", "active", "RESUME", "completed"]
    await assert_both_ends_completed(source, dest, vfio=True)
    assert await dest.status() == "running"


# ---- f. the destination enables the capability late ---------------------------------------------


@profiles
async def test_destination_enabling_it_while_listening_takes_effect(rig: Rig, p: Profile) -> None:
    load_ms = 500
    source, dest, uri = await rig.pair(
        *p.args, *GUEST, *device(load_ms, "8M"), caps=p.both(), dst_caps={}
    )
    # migrate-incoming already listens; the source has not connected yet
    await dest.caps(**p.both())
    caps = {c["capability"]: c["state"] for c in await dest.run("query-migrate-capabilities")}
    assert caps["return-path"] and caps[p.cap]
    await source.params(max_bandwidth=0)
    # effective: without it the destination's device would refuse INIT_DATA_SENT and fail
    await migrate_and_finish(source, dest, uri)
    assert_completed_like_qemu(p, source, dest)
    assert source.stamp("STOP") - dest.stamp("MIGRATION", "active") >= load_ms / 1000
    await assert_both_ends_completed(source, dest, vfio=True)


@profiles
async def test_destination_enabling_it_once_the_stream_runs_has_no_effect(
    rig: Rig, p: Profile
) -> None:
    source, dest, _ = await ack_never_comes(rig, *p.args, cap=p.cap)
    # the stream runs: accepted, shown, but the destination decided when the stream started
    await dest.caps(**p.both())
    caps = {c["capability"]: c["state"] for c in await dest.run("query-migrate-capabilities")}
    assert caps["return-path"] and caps[p.cap]
    count = (await source.run("query-migrate"))["ram"]["dirty-sync-count"]
    info = await source.wait_query(
        lambda i: i["ram"]["dirty-sync-count"] >= count + 3 if i.get("status") == "active"
        else True
    )  # fmt: skip
    assert info["status"] == "active", info  # still waiting
    assert "STOP" not in source.names() and await source.status() == "running"
    await source.run("migrate_cancel")
    assert await source.wait_status("cancelled", "completed", "failed") == "cancelled"
    assert await source.run("query-migrate") == p.cancelled
    assert exit_code(dest.server) == 1


# ---- g. start-up checks -------------------------------------------------------------------------


@profiles
def test_startup_property_without_return_path_exits_1(p: Profile) -> None:
    cases = [
        ([p.prop], f"Capability '{p.cap}' requires capability 'return-path'"),
        ([p.prop, "-incoming", "defer"], f"Capability '{p.cap}' requires capability 'return-path'"),
        ([p.other_prop], f"can't apply global migration.{p.other_prop}=on: "
                         f"Property 'migration.{p.other_prop}' not found"),
    ]  # fmt: skip
    for (prop, *rest), message in cases:
        argv = [*p.args, "-machine", "none", "-global", f"migration.{prop}=on", *rest]
        run = subprocess.run(
            [sys.executable, "-m", "qmp_server", *argv],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert (run.returncode, run.stderr) == (1, f"qmp-server: {message}\n"), argv


@profiles
async def test_startup_property_with_return_path_is_accepted(rig: Rig, p: Profile) -> None:
    for extra in ((), ("-incoming", "defer")):
        side = await rig.side(
            *p.args, "-machine", "none", *extra,
            "-global", "migration.x-return-path=on", "-global", f"migration.{p.prop}=on",
            events=False,
        )  # fmt: skip
        caps = {c["capability"]: c["state"] for c in await side.run("query-migrate-capabilities")}
        assert caps["return-path"] is True and caps[p.cap] is True, caps
        assert [k for k, v in caps.items() if v] == ["return-path", p.cap]
