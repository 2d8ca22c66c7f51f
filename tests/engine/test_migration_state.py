"""engine/migration.py with plain values: status and event rules, query-migrate shapes per
state, and the 100 ms period counters (reference §5.2, §5.5, §8)."""

from __future__ import annotations

from typing import Any

import pytest

from qmp_server.engine.guest import PAGE_SIZE
from qmp_server.engine.migration import (
    BUFFER_DELAY,
    IncomingMigration,
    SourceMigration,
    in_schema_order,
)
from qmp_server.profiles import PROFILES

MiB = 1 << 20
Events = list[tuple[str, dict[str, Any] | None]]


def _source(profile: str = "7.2", events: bool = True) -> tuple[SourceMigration, Events]:
    out: Events = []
    src = SourceMigration(PROFILES[profile], lambda n, d: out.append((n, d)), lambda: events)
    return src, out


def _incoming(profile: str = "7.2", events: bool = False) -> tuple[IncomingMigration, Events]:
    out: Events = []
    inc = IncomingMigration(PROFILES[profile], lambda n, d: out.append((n, d)), lambda: events)
    return inc, out


# ---- status and events -----------------------------------------------------------------------


def test_status_changes_emit_migration_events_only_with_the_capability() -> None:
    src, out = _source(events=True)
    src.begin(10.0, 64 * MiB, 300)
    src.activate(10.02)
    src.set_status("active")  # no change, no event
    src.complete(11.0, 10.9)
    assert out == [("MIGRATION", {"status": s}) for s in ("setup", "active", "completed")]
    quiet, none = _source(events=False)
    quiet.begin(0.0, 64 * MiB, 300)
    quiet.activate(0.1)
    assert none == [] and quiet.status == "active"


def test_destination_setup_is_announced_regardless_before_10_0() -> None:
    inc, out = _incoming("7.2", events=False)
    inc.announce_setup()
    assert out == [("MIGRATION", {"status": "setup"})]
    assert inc.status == "none"  # 7.2 keeps mis->state none until the source connects
    inc.set_status("active")
    assert out == [("MIGRATION", {"status": "setup"})]  # active needs the capability
    late, out10 = _incoming("10.0", events=False)
    late.announce_setup()
    assert out10 == [] and late.status == "setup"


def test_begin_resets_the_previous_run() -> None:
    src, _ = _source()
    src.begin(0.0, 64 * MiB, 300)
    src.switchover_acked = True
    src.count_sent(5000, 1, 1, downtime=False)
    src.fail("boom", 1.0)
    src.begin(2.0, 64 * MiB, 500)
    assert src.status == "setup" and not src.switchover_acked
    assert src.ram.transferred == 0 and src.error_desc is None
    assert src.expected_downtime_ms == 500


# ---- query-migrate shapes -----------------------------------------------------------------------


def test_query_shapes_per_state() -> None:
    src, _ = _source()
    assert src.info(0.0) == {}
    src.begin(100.0, 64 * MiB, 300)
    assert src.info(100.0) == {"status": "setup"}
    src.activate(100.25)
    active = src.info(100.5)
    assert list(active) == ["status", "ram", "total-time", "expected-downtime", "setup-time"]
    assert active["total-time"] == 500 and active["setup-time"] == 250
    assert active["expected-downtime"] == 300
    assert active["ram"]["total"] == 64 * MiB and active["ram"]["skipped"] == 0
    src.count_device_bytes(4096)
    assert src.info(100.6)["vfio"] == {"transferred": 4096}
    src.set_status("cancelling")
    assert "ram" in src.info(100.7)
    src.set_status("cancelled")
    assert src.info(100.8) == {"status": "cancelled"}


def test_completed_shape_and_frozen_times() -> None:
    src, _ = _source()
    src.begin(0.0, 64 * MiB, 300)
    src.activate(0.01)
    src.count_sent(8 * MiB, 10, 2048, downtime=False)
    src.count_sent(MiB, 0, 256, downtime=True)
    src.complete(2.0, 1.75)
    info = src.info(50.0)
    assert list(info) == ["status", "ram", "total-time", "downtime", "setup-time"]
    assert info["downtime"] == 250 and info["total-time"] == 2000
    assert "expected-downtime" not in info
    ram = info["ram"]
    assert ram["remaining"] == 0 and ram["transferred"] == 9 * MiB
    assert ram["precopy-bytes"] == 8 * MiB and ram["downtime-bytes"] == MiB
    assert ram["duplicate"] == 10 and ram["normal"] == 2304
    assert ram["normal-bytes"] == 2304 * PAGE_SIZE
    # QEMU: every stream byte over the time after setup, in megabits per second
    assert ram["mbps"] == pytest.approx(9 * MiB * 8 / 1990 / 1000)


def test_failed_shape() -> None:
    src, _ = _source()
    src.begin(0.0, 64 * MiB, 300)
    src.fail("Failed to connect to '127.0.0.1:1': Connection refused", 0.01)
    assert src.info(1.0) == {
        "status": "failed",
        "error-desc": "Failed to connect to '127.0.0.1:1': Connection refused",
    }
    bare, _ = _source()
    bare.begin(0.0, 64 * MiB, 300)
    bare.fail(None, 0.0)
    assert bare.info(1.0) == {"status": "failed"}


def test_skipped_is_gone_since_9_1() -> None:
    src, _ = _source("10.0")
    src.begin(0.0, MiB, 300)
    src.activate(0.0)
    assert "skipped" not in src.info(0.1)["ram"]


def test_destination_view() -> None:
    inc, _ = _incoming()
    assert inc.info() == {}
    inc.socket_address = [{"type": "unix", "path": "/tmp/m.sock"}]
    assert inc.info() == {"socket-address": [{"type": "unix", "path": "/tmp/m.sock"}]}
    inc.set_status("active")
    assert inc.info() == {"status": "active",
                          "socket-address": [{"type": "unix", "path": "/tmp/m.sock"}]}  # fmt: skip
    inc.set_status("completed")
    assert inc.info() == {"status": "completed"}


def test_schema_order() -> None:
    info = {"setup-time": 1, "ram": {}, "status": "active", "socket-address": [], "downtime": 2}
    assert list(in_schema_order(info)) == ["status", "ram", "downtime", "setup-time",
                                           "socket-address"]  # fmt: skip


# ---- period counters ---------------------------------------------------------------------------


def test_period_counters_bandwidth_threshold_and_mbps() -> None:
    src, _ = _source()
    src.begin(0.0, 64 * MiB, 300)
    src.activate(0.0)
    assert not src.period_due(0.05) and src.period_left(0.04) == pytest.approx(0.06)
    src.count_sent(10_000_000, 0, 2441, downtime=False)
    assert src.period_due(BUFFER_DELAY)
    src.update_period(0.1, 300)
    assert src.bandwidth == pytest.approx(100_000)  # bytes per ms
    assert src.threshold == 30_000_000  # bandwidth × downtime-limit
    assert src.ram.mbps == pytest.approx(800.0)
    assert src.ram.pages_per_second == 24410
    # no dirtying yet: expected-downtime stays at downtime-limit
    assert src.expected_downtime_ms == 300
    assert not src.period_due(0.15)


def test_expected_downtime_needs_dirty_pages_and_traffic() -> None:
    src, _ = _source("7.2")
    src.begin(0.0, 64 * MiB, 300)
    src.activate(0.0)
    src.note_sync(0.0)
    src.note_sync(1.0, 500, remaining_bytes=20_000_000)  # a second later: 500 pages/s
    assert src.ram.dirty_pages_rate == 500
    src.count_sent(5000, 0, 1, downtime=False)  # <= 10000 bytes: not recomputed
    src.update_period(0.1, 300)
    assert src.expected_downtime_ms == 300
    src.count_sent(10_000_000, 0, 2441, downtime=False)
    src.update_period(0.2, 300)
    assert src.expected_downtime_ms == 200  # 7.2: remaining / bandwidth (20e6 / 1e5)
    new, _ = _source("8.1")
    new.begin(0.0, 64 * MiB, 300)
    new.activate(0.0)
    new.note_sync(0.0)
    new.note_sync(1.0, 1000, remaining_bytes=20_000_000)  # 1000 dirty pages at the last sync
    new.count_sent(10_000_000, 0, 2441, downtime=False)
    new.update_period(0.1, 300)
    assert new.expected_downtime_ms == int(1000 * PAGE_SIZE / 100_000)


def test_passes_count_from_one() -> None:
    src, _ = _source()
    src.begin(0.0, MiB, 300)
    assert [src.note_sync(0.0) for _ in range(3)] == [1, 2, 3]
    assert src.ram.dirty_sync_count == 3
    src.begin(1.0, MiB, 300)
    assert src.note_sync(1.0) == 1


def test_dirty_page_rate_is_computed_once_a_second() -> None:
    src, _ = _source()
    src.begin(0.0, MiB, 300)
    src.note_sync(0.0, 0)
    src.note_sync(0.5, 100)
    assert src.ram.dirty_pages_rate == 0  # not yet a second
    src.note_sync(1.25, 150)
    assert src.ram.dirty_pages_rate == 200  # 250 pages in 1.25 s
