"""Real migrations between two qmp-server processes, driven with qemu.qmp's QMPClient.

Every test starts a source and a destination process (``tests/server_process.py``), migrates
over loopback TCP, a unix socket, ``exec:`` or ``file:``, and checks what a management script
sees: the events and their order (reference §5.2), ``query-migrate`` per state (§5.5), the
command errors (§5.4/§5.6), the switchover-ACK gate (§6), and that nothing is lost (the guest
digests of ``x-query-guest-digest`` are equal on both sides after every completed run).

Timing rule: no test asserts wall-clock speed.  The ACK tests compare event timestamps with the
device's ``load-ms`` (a lower bound the gate guarantees) and watch the status while the ACK is
pending.  Guests are 64-128 MiB and ``max-bandwidth`` is set so every run takes well under 5 s.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
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
from qemu.qmp import ExecuteError
from server_process import free_port

# ---- plain precopy ------------------------------------------------------------------------------


@pytest.mark.parametrize("compat", ["7.2", "default"])
async def test_plain_precopy_events_in_qemu_order(rig: Rig, compat: str) -> None:
    profile = () if compat == "default" else ("--compat", compat)
    source, dest, uri = await rig.pair(
        *profile, "-m", "128M", "--guest-fill", "random", src=("--dirty-rate", "4M")
    )
    await source.params(max_bandwidth=256 * MiB)
    before = await source.digest()
    await migrate_and_finish(source, dest, uri)
    await asyncio.sleep(0.05)  # the last events are on their way

    src = source.names()
    assert src[:3] == ["setup", "PASS 1", "active"], src
    assert src[-1] == "completed"
    stop = src.index("STOP")
    assert all(e.startswith("PASS") for e in src[3:stop]), src
    assert [e for e in src[stop + 1 : -1]] and all(e.startswith("PASS") for e in src[stop + 1 : -1])
    passes = [int(e.split()[1]) for e in src if e.startswith("PASS")]
    assert passes == list(range(1, len(passes) + 1))
    assert dest.names() == ["setup", "active", "RESUME", "completed"]

    info = await source.run("query-migrate")
    assert set(info) == {"status", "ram", "total-time", "downtime", "setup-time"}
    assert info["status"] == "completed"
    ram = info["ram"]
    # -m 128 with default devices: pc.ram, VGA memory and the ROMs (QEMU's blocks)
    assert ram["remaining"] == 0 and ram["total"] == 151855104
    assert ram["dirty-sync-count"] == passes[-1]
    assert ram["transferred"] == ram["precopy-bytes"] + ram["downtime-bytes"]
    assert ram["normal"] >= 128 * MiB // 4096
    assert ram["skipped"] == 0  # 7.2 and 8.0 still report it
    assert await dest.run("query-migrate") == {"status": "completed"}
    assert await source.status() == "postmigrate"
    assert await dest.status() == "running"
    after = await source.digest()
    await assert_same_guest(source, dest)
    assert after["ram"] != before["ram"]  # the workload really dirtied pages meanwhile


async def test_return_path_and_unix_socket(rig: Rig) -> None:
    source, dest, uri = await rig.pair(
        "-m", "64M", "--guest-fill", "random", caps={"return-path": True}, uri=rig.unix_uri()
    )
    await source.params(max_bandwidth=0)
    await migrate_and_finish(source, dest, uri)
    info = await source.run("query-migrate")
    # downtime runs from the source's STOP to the destination's resume (reported on the RP)
    assert info["downtime"] >= 0 and info["downtime"] <= info["total-time"]
    stop, resume = source.stamp("STOP"), dest.stamp("RESUME")
    assert resume >= stop
    assert info["downtime"] + 2 >= int((resume - stop) * 1000)
    await assert_same_guest(source, dest)


# ---- the switchover ACK -------------------------------------------------------------------------

LOAD_MS = 1500
DEVICE = f"vfio-sim,id=nic0,initial-bytes=16M,state-bytes=1M,load-ms={LOAD_MS}"


async def test_initial_data_ack_holds_the_switchover(rig: Rig) -> None:
    caps = {"return-path": True, "precopy-initial-data": True}
    source, dest, uri = await rig.pair(
        "-m", "64M", "-device", DEVICE, src=("--dirty-rate", "1M"), caps=caps
    )
    await source.params(max_bandwidth=0)
    await source.run("migrate", {"uri": uri})
    # while the destination allocates, the source keeps iterating, active, running
    await dest.wait_status("active")
    await asyncio.sleep(0.5)
    info = await source.run("query-migrate")
    assert info["status"] == "active" and await source.status() == "running"
    assert "STOP" not in source.names()
    assert info["vfio"]["transferred"] >= 16 * MiB
    assert await source.wait_status("completed", "failed") == "completed"
    await dest.wait_status("completed")
    # the gate: no STOP before the destination had load-ms to load the initial data
    assert source.stamp("STOP") - dest.stamp("MIGRATION", "active") >= LOAD_MS / 1000
    assert source.names().count("PASS 1") == 1 and len(
        [e for e in source.names() if e.startswith("PASS")]) > 2  # fmt: skip
    info = await source.run("query-migrate")
    # the load work happened during precopy: the downtime does not contain it
    assert info["downtime"] < LOAD_MS
    assert info["vfio"]["transferred"] >= 16 * MiB
    await assert_same_guest(source, dest)


async def test_without_ack_the_load_falls_inside_the_downtime(rig: Rig) -> None:
    source, dest, uri = await rig.pair("-m", "64M", "-device", DEVICE, caps={"return-path": True})
    await source.params(max_bandwidth=0)
    await migrate_and_finish(source, dest, uri)
    info = await source.run("query-migrate")
    assert info["downtime"] >= LOAD_MS
    assert dest.stamp("RESUME") - source.stamp("STOP") >= LOAD_MS / 1000
    await assert_same_guest(source, dest)


async def test_ack_never_comes_until_cancelled_then_a_retry_succeeds(rig: Rig) -> None:
    source, dest, before = await ack_never_comes(rig)
    await source.run("migrate_cancel")
    await source.wait_status("cancelled")
    assert source.names()[-2:] == ["cancelling", "cancelled"]
    assert await source.run("query-migrate") == {"status": "cancelled"}
    assert await source.status() == "running"
    # the destination fails and exits, as QEMU 7.2's does
    assert exit_code(dest.server) == 1
    # a second migration to a fresh destination, which ACKs, completes
    dest2 = await rig.side("-m", "64M", "--guest-fill", "random", "-incoming", "defer")
    await dest2.caps(**{"return-path": True, "precopy-initial-data": True})
    uri = rig.unix_uri()
    await dest2.run("migrate-incoming", {"uri": uri})
    await source.run("x-set-dirty-rate", {"rate": 0})
    await migrate_and_finish(source, dest2, uri)
    await assert_same_guest(source, dest2)
    assert before["ram"] != (await dest2.digest())["ram"]  # it moved the dirtied guest


async def test_stop_on_a_waiting_source_completes_it(rig: Rig) -> None:
    source, dest, _ = await ack_never_comes(rig)
    await source.run("stop")
    assert await source.wait_status("completed", "failed", "cancelled") == "completed"
    await dest.wait_status("completed", "failed")
    await assert_same_guest(source, dest)
    assert await source.status() == "postmigrate"
    assert await dest.status() == "paused"  # the source was not running at switchover
    assert "RESUME" not in dest.names()
    await dest.run("cont")
    await source.run("cont")
    assert await dest.status() == "running" and await source.status() == "running"


@pytest.mark.parametrize("compat", ["8.1", "default"])
async def test_ack_capability_names_per_profile(rig: Rig, compat: str) -> None:
    profile = () if compat == "default" else ("--compat", compat)
    name = "switchover-ack" if compat == "8.1" else "precopy-initial-data"
    side = await rig.side(*profile)
    with pytest.raises(ExecuteError) as err:
        await side.caps(**{name: True})
    assert str(err.value) == f"Capability '{name}' requires capability 'return-path'"
    other = "precopy-initial-data" if compat == "8.1" else "switchover-ack"
    with pytest.raises(ExecuteError) as err:
        await side.caps(**{other: True, "return-path": True})
    assert str(err.value) == f"Parameter 'capability' does not accept value '{other}'"

    device = "vfio-sim,id=nic0,initial-bytes=8M,state-bytes=1M,load-ms=600"
    source, dest, uri = await rig.pair(
        *profile, "-m", "64M", "-device", device, caps={"return-path": True, name: True}
    )
    await source.params(max_bandwidth=0)
    await migrate_and_finish(source, dest, uri)
    assert source.stamp("STOP") - dest.stamp("MIGRATION", "active") >= 0.6
    await assert_same_guest(source, dest)


async def test_source_only_ack_with_a_device_fails_the_destination(rig: Rig) -> None:
    # the destination gets INIT_DATA_SENT without the capability, as QEMU's VFIO refuses it
    device = "vfio-sim,id=nic0,initial-bytes=4M,state-bytes=1M,load-ms=100"
    source, dest, uri = await rig.pair(
        "-m", "64M", "-device", device,
        caps={"return-path": True, "precopy-initial-data": True},
        dst_caps={"return-path": True},
    )  # fmt: skip
    await source.params(max_bandwidth=0)
    await source.run("migrate", {"uri": uri})
    assert await source.wait_status("completed", "failed") == "failed"
    assert exit_code(dest.server) == 1
    _, err = dest.server.stop()
    assert b"nic0: Received INIT_DATA_SENT but switchover ack is not used" in err
    info = await source.run("query-migrate")
    assert info["status"] == "failed" and info["error-desc"]
    assert await source.status() == "running"


# ---- pause-before-switchover --------------------------------------------------------------------


async def test_pause_before_switchover(rig: Rig) -> None:
    source, dest, uri = await rig.pair("-m", "64M", "--guest-fill", "random",
                                       caps={"return-path": True})  # fmt: skip
    await source.caps(**{"pause-before-switchover": True})
    await source.params(max_bandwidth=64 * MiB)  # ~1 s of precopy: room for a wrong continue
    await source.run("migrate", {"uri": uri})
    await source.wait_status("active")
    with pytest.raises(ExecuteError) as err:
        await source.run("migrate-continue", {"state": "pre-switchover"})
    assert str(err.value) == "Migration not in expected state: active"
    await source.wait_status("pre-switchover")
    assert await source.status() == "finish-migrate"
    assert (await source.run("query-migrate"))["status"] == "pre-switchover"
    with pytest.raises(ExecuteError) as err:
        await source.run("migrate-continue", {"state": "device"})
    assert str(err.value) == "Migration not in expected state: pre-switchover"
    with pytest.raises(ExecuteError) as err:
        await source.run("migrate-continue", {"state": "bogus"})
    assert str(err.value) == "Parameter 'state' does not accept value 'bogus'"
    await asyncio.sleep(0.3)
    assert (await source.run("query-migrate"))["status"] == "pre-switchover"
    await source.run("migrate-continue", {"state": "pre-switchover"})
    assert await source.wait_status("completed", "failed") == "completed"
    await dest.wait_status("completed")
    names = source.names()
    stop = names.index("STOP")
    assert names[stop : stop + 3] == ["STOP", "pre-switchover", "device"], names
    assert names[-1] == "completed" and names[-2].startswith("PASS")
    # the downtime clock starts at the stop, so it contains the pause
    assert (await source.run("query-migrate"))["downtime"] >= 300
    assert await source.status() == "postmigrate"
    await assert_same_guest(source, dest)


# ---- cancel and failures ------------------------------------------------------------------------


async def _mid_flight(rig: Rig, *extra: str) -> tuple[Side, Side, str, dict[str, Any]]:
    """A 128 MiB random guest at 32 MiB/s: four seconds of precopy to interrupt."""
    source, dest, uri = await rig.pair("-m", "128M", "--guest-fill", "random", *extra)
    await source.params(max_bandwidth=32 * MiB)
    before = await source.digest()
    await source.run("migrate", {"uri": uri})
    await source.wait_query(lambda i: i.get("status") == "active"
                            and i["ram"]["transferred"] > 4 * MiB)  # fmt: skip
    return source, dest, uri, before


async def _retry(rig: Rig, source: Side, before: dict[str, Any]) -> None:
    assert await source.digest() == before  # intact
    dest2 = await rig.side("-m", "128M", "--guest-fill", "random", "-incoming", "defer")
    uri = rig.unix_uri()
    await dest2.run("migrate-incoming", {"uri": uri})
    await source.params(max_bandwidth=0)
    await migrate_and_finish(source, dest2, uri)
    await assert_same_guest(source, dest2)


async def test_cancel_mid_flight(rig: Rig) -> None:
    source, dest, _, before = await _mid_flight(rig)
    await source.run("migrate_cancel")
    assert await source.wait_status("cancelled", "completed", "failed") == "cancelled"
    names = source.names()
    assert names[-2:] == ["cancelling", "cancelled"] and "STOP" not in names
    assert await source.run("query-migrate") == {"status": "cancelled"}
    assert await source.status() == "running"
    assert await dest.wait_status("failed") == "failed"
    assert exit_code(dest.server) == 1
    await source.run("migrate_cancel")  # always {} (nothing to cancel now)
    await _retry(rig, source, before)


async def test_destination_killed_mid_flight(rig: Rig) -> None:
    source, dest, _, before = await _mid_flight(rig)
    dest.server.proc.send_signal(signal.SIGKILL)
    assert await source.wait_status("failed", "completed", "cancelled", within=10) == "failed"
    info = await source.run("query-migrate")
    assert set(info) == {"status", "error-desc"}
    assert info["error-desc"]
    assert await source.status() == "running"
    await _retry(rig, source, before)


async def test_source_killed_mid_flight(rig: Rig) -> None:
    source, dest, _, _ = await _mid_flight(rig)
    source.server.proc.send_signal(signal.SIGKILL)
    assert await dest.wait_status("failed", "completed", within=10) == "failed"
    assert exit_code(dest.server) == 1
    _, err = dest.server.stop()
    assert b"load of migration failed" in err


async def test_connect_refused_fails_with_qemu_text(rig: Rig) -> None:
    source = await rig.side("-m", "64M")
    port = free_port()
    await source.run("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
    info = await source.wait_query(lambda i: i.get("status") == "failed")
    assert info == {
        "status": "failed",
        "error-desc": f"Failed to connect to '127.0.0.1:{port}': Connection refused",
    }
    assert source.names() == ["setup", "failed"]
    assert await source.status() == "running"


# ---- convergence --------------------------------------------------------------------------------


@pytest.mark.parametrize("remedy", ["max-bandwidth", "downtime-limit", "x-set-dirty-rate"])
async def test_no_convergence_until_raised_live(rig: Rig, remedy: str) -> None:
    # the guest dirties 48 MiB/s, the link is capped at 16 MiB/s: each pass leaves far more
    # than the threshold (16 MiB/s × 300 ms), so precopy iterates for ever
    source, dest, uri = await rig.pair("-m", "32M", src=("--dirty-rate", "48M"))
    await source.params(max_bandwidth=16 * MiB)
    await source.run("migrate", {"uri": uri})
    # (remaining is legitimately 0 for a moment between the end of a pass and its sync)
    info = await source.wait_query(lambda i: i.get("status") == "active"
                                   and i["ram"]["dirty-sync-count"] >= 3
                                   and i["ram"]["remaining"] > 0, within=15)  # fmt: skip
    assert "STOP" not in source.names()
    assert info["ram"]["dirty-pages-rate"] > 0
    if remedy == "max-bandwidth":
        await source.params(max_bandwidth=0)
    elif remedy == "downtime-limit":
        await source.params(downtime_limit=200_000)  # 8 MiB/s × 200 s ≫ the guest
    else:
        await source.run("x-set-dirty-rate", {"rate": 0})
    assert await source.wait_status("completed", "failed", within=30) == "completed"
    await dest.wait_status("completed")
    await assert_same_guest(source, dest)


# ---- query-migrate shapes -----------------------------------------------------------------------


async def test_query_migrate_members_per_state(rig: Rig) -> None:
    device = "vfio-sim,id=nic0,initial-bytes=2M,state-bytes=1M,load-ms=10"
    source = await rig.side("-m", "64M", "-device", device)
    dest = await rig.side("-m", "64M", "-device", device, "-incoming", "defer")
    assert await source.run("query-migrate") == {}
    assert await dest.run("query-migrate") == {}
    port = free_port()
    await dest.run("migrate-incoming", {"uri": f"tcp:127.0.0.1:{port}"})
    assert await dest.run("query-migrate") == {
        "socket-address": [{"type": "inet", "host": "127.0.0.1", "port": str(port),
                            "ipv4": True}]}  # fmt: skip
    await source.params(max_bandwidth=16 * MiB)
    await source.run("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
    active = await source.wait_query(lambda i: i.get("status") == "active")
    assert set(active) == {"status", "ram", "vfio", "total-time", "expected-downtime",
                           "setup-time"}  # fmt: skip
    assert active["expected-downtime"] == 300  # downtime-limit until pages are dirtied
    assert set(active["ram"]) >= {"transferred", "remaining", "total", "duplicate", "normal",
                                  "normal-bytes", "dirty-pages-rate", "mbps", "dirty-sync-count",
                                  "page-size", "pages-per-second", "precopy-bytes",
                                  "downtime-bytes"}  # fmt: skip
    dinfo = await dest.run("query-migrate")
    assert dinfo["status"] == "active" and dinfo["socket-address"][0]["port"] == str(port)
    await source.params(max_bandwidth=0)
    await source.wait_status("completed")
    await dest.wait_status("completed")
    done = await source.run("query-migrate")
    assert set(done) == {"status", "ram", "vfio", "total-time", "downtime", "setup-time"}
    assert done["ram"]["remaining"] == 0
    assert await dest.run("query-migrate") == {"status": "completed"}
    await assert_same_guest(source, dest)


# ---- save and restore ---------------------------------------------------------------------------


async def test_save_to_exec_and_restore(rig: Rig, tmp_path: Path) -> None:
    image = tmp_path / "guest.mig"
    device = "vfio-sim,id=nic0,initial-bytes=4M,state-bytes=1M,load-ms=50"
    common = ("-m", "64M", "--guest-fill", "random", "-device", device)
    source = await rig.side(*common, "--dirty-rate", "2M")
    await source.params(max_bandwidth=0)
    await source.run("migrate", {"uri": f"exec:cat > {image}"})
    assert await source.wait_status("completed", "failed") == "completed"
    saved = await source.digest()
    assert image.stat().st_size > 64 * MiB
    dest = await rig.side(*common, "-incoming", f"exec:cat {image}")
    assert await dest.wait_status("completed", "failed") == "completed"
    assert await dest.digest() == saved
    assert await dest.status() == "running"


async def test_save_to_file_and_restore_compat_10(rig: Rig, tmp_path: Path) -> None:
    image = tmp_path / "guest.mig"
    common = ("--compat", "10.0", "-m", "64M", "--guest-fill", "random")
    source = await rig.side(*common, "--dirty-rate", "2M")
    await source.params(max_bandwidth=0)
    await source.run("migrate", {"uri": f"file:{image}"})
    assert await source.wait_status("completed", "failed") == "completed"
    saved = await source.digest()
    dest = await rig.side(*common, "-incoming", "defer")
    await dest.run("migrate-incoming", {"uri": f"file:{image}"})
    assert await dest.wait_status("completed", "failed") == "completed"
    assert await dest.digest() == saved
