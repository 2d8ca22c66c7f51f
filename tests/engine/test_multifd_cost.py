"""QEMU's multifd accounting, replayed: the idle guest's migrations recorded in
``tests/conformance/two_party/fixtures/qemu-{7.2,10.0}/multifd*.json`` through the model.

The schedules (where QEMU's sections ended, where its walk wrapped) are the ones QEMU's
``multifd_send*`` traces showed for runs with the recorded counters (``docs/multifd-facts.md``
section 3); the pages are the idle guest's (``engine/machine.py``).  Every counter asserted
here was the same in every recorded run (``record_two_party.py --check`` and repeated runs),
except the compressed sizes, which are not asserted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qmp_server.engine.guest import PAGE_SIZE
from qmp_server.engine.machine import MachineLayout, layout_for
from qmp_server.engine.multifd_cost import (
    INITIAL_PACKET_BYTES,
    PACKET_BYTES,
    PAGES_PER_PACKET,
    MultifdAccount,
    MultifdRules,
    Packet,
    ZeroPages,
)
from qmp_server.engine.wire_cost import BlockMap, QemuStream
from qmp_server.profiles import PROFILES

FIXTURES = Path(__file__).parents[1] / "conformance" / "two_party" / "fixtures"


def _recorded(version: str, scenario: str) -> dict[str, Any]:
    """The source's final query-migrate ``ram`` of a recording."""
    run = json.loads((FIXTURES / f"qemu-{version}" / f"{scenario}.json").read_text())["run"]
    ram: dict[str, Any] = {}
    for e in run["sides"]["src"]["stream"]:
        line = e.get("line", "")
        if '"ram"' in line and '"completed"' in line:
            ram = json.loads(line)["return"]["ram"]
    assert ram, scenario
    return ram


class Run:
    """One idle 64 MiB pc guest migrating with multifd: QEMU's main stream and channels."""

    def __init__(self, version: str, channels: int = 2, zero_page_detection: str = "multifd"):
        profile = PROFILES[version]
        self.layout: MachineLayout = layout_for(profile, "pc", 64 << 20)
        blocks = BlockMap(self.layout.block_list())
        self.qemu = QemuStream(
            profile,
            blocks,
            configuration_bytes=self.layout.configuration_bytes,
            device_state_bytes=self.layout.device_state_bytes,
        )
        self.acct = MultifdAccount(
            MultifdRules.for_profile(profile, zero_page_detection), blocks, channels
        )
        self.first = {b.name: b.first_page for b in self.layout.blocks}
        self.total = blocks.page_count
        self.firmware = set(self.layout.firmware_pages.tolist())

    def setup(self) -> None:
        self.qemu.setup(return_path=False)
        self.acct.start()
        self.sync()

    def sync(self) -> None:
        self.acct.sync()
        if self.acct.rules.flush_flag:
            self.qemu.multifd_flush()

    def send(self, pages: np.ndarray, *, downtime: bool = False) -> None:
        zero = ~np.isin(pages, self.layout.firmware_pages)
        self.acct.queue(pages, zero)
        main = self.acct.main_mask(zero)
        self.qemu.add_pages(pages[main], self.qemu.cost(pages[main], zero[main]), downtime=downtime)

    def section(self, pages: np.ndarray) -> None:
        """One iteration section; 7.2 syncs at its end."""
        self.qemu.begin_section()
        self.send(pages)
        if self.acct.rules.sync_per_section:
            self.sync()
        self.qemu.end_section(downtime=False)

    def counters(self) -> dict[str, int]:
        return {
            **self.acct.counters(self.qemu),
            "precopy-bytes": self.qemu.precopy_bytes,
            "downtime-bytes": self.qemu.downtime_bytes,
        }


def _pages(a: int, b: int) -> np.ndarray:
    return np.arange(a, b, dtype=np.int64)


def _run_72(channels: int) -> Run:
    """QEMU 7.2's schedule (traced): sections ending after the low firmware pages, an empty
    one, one after the first ACPI table page, one before the RSDP; the final section sends the
    RSDP and the four hot pages; a sync at the end of every section."""
    r = Run("7.2", channels)
    tables = r.first["/rom@etc/acpi/tables"]
    rsdp = r.first["/rom@etc/acpi/rsdp"]
    r.setup()
    r.section(_pages(0, 256))
    r.section(_pages(0, 0))
    r.section(_pages(256, tables + 1))
    r.section(_pages(tables + 1, rsdp))
    r.qemu.switchover()
    r.send(_pages(rsdp, r.total), downtime=True)
    r.send(np.sort(r.layout.hot_pages), downtime=True)
    r.sync()
    r.qemu.end_section(downtime=True, final=True)
    r.qemu.complete()
    return r


def _run_100(channels: int, zero_page_detection: str = "multifd", sections: int = 5) -> Run:
    """QEMU 10.0's schedule (traced): a sync after the setup; the first pass in ``sections``
    rate-limited sections; the final section's walk wraps twice (a sync each), before and
    after the hot pages."""
    r = Run("10.0", channels, zero_page_detection)
    r.setup()
    for chunk in np.array_split(_pages(0, r.total), sections):
        r.section(chunk)
    r.qemu.switchover()
    r.sync()
    r.send(np.sort(r.layout.hot_pages), downtime=True)
    r.sync()
    r.qemu.end_section(downtime=True, final=True)
    r.qemu.complete()
    return r


KEYS = ("multifd-bytes", "transferred", "normal", "normal-bytes", "duplicate")


@pytest.mark.parametrize(
    ("scenario", "channels"),
    [("multifd", 2), ("multifd-zlib", 2), ("multifd-zstd", 2), ("multifd-4-channels", 4)],
)
def test_qemu_72(scenario: str, channels: int) -> None:
    # 7.2 counts raw pages whatever the compression: zlib and zstd show the same numbers
    ram = _recorded("7.2", scenario)
    got = _run_72(channels).counters()
    assert {k: got[k] for k in (*KEYS, "precopy-bytes", "downtime-bytes")} == {
        k: ram[k] for k in (*KEYS, "precopy-bytes", "downtime-bytes")
    }


@pytest.mark.parametrize(
    ("scenario", "channels", "detection"),
    [
        ("multifd", 2, "multifd"),
        ("multifd-channels-arg", 2, "multifd"),
        ("multifd-4-channels", 4, "multifd"),
        ("multifd-zero-page-none", 2, "none"),
    ],
)
def test_qemu_100(scenario: str, channels: int, detection: str) -> None:
    ram = _recorded("10.0", scenario)
    r = _run_100(channels, detection, sections=ram["precopy-bytes"] // 8)
    got = r.counters()
    assert {k: got[k] for k in (*KEYS, "precopy-bytes")} == {
        k: ram[k] for k in (*KEYS, "precopy-bytes")
    }


def test_qemu_100_legacy_zero_pages_go_on_the_main_channel() -> None:
    ram = _recorded("10.0", "multifd-zero-page-legacy")
    r = _run_100(2, "legacy", sections=3)
    got = r.counters()
    assert {k: got[k] for k in (*KEYS, "precopy-bytes")} == {
        k: ram[k] for k in (*KEYS, "precopy-bytes")
    }
    # the packets carry the 117 normal pages only: 6 data packets and 3 syncs of 2
    assert r.acct.packets == 12
    assert r.acct.sync_packets == 6


def test_packet_arithmetic_of_the_recorded_runs() -> None:
    # 7.2: no initial packet counted, 20 packets of 1344 bytes + the pages
    assert _recorded("7.2", "multifd")["multifd-bytes"] == 115 * PAGE_SIZE + 20 * PACKET_BYTES
    # 10.0: two 64-byte initial packets, 140 packets (133 for the first pass, zero pages
    # included, one for the hot pages, 3 syncs of 2)
    assert (
        _recorded("10.0", "multifd")["multifd-bytes"]
        == 2 * INITIAL_PACKET_BYTES + 140 * PACKET_BYTES + 117 * PAGE_SIZE
    )
    assert _run_100(2).acct.packets == 140


def test_a_full_pass_of_10_0_fills_packets_per_block() -> None:
    r = Run("10.0")
    packets = r.acct.queue(_pages(0, r.total), np.ones(r.total, dtype=bool))
    # pc.ram: 16384 pages, 128 full packets; the tables, BIOS and ROM blocks one each; the
    # two one-page blocks: the loader's goes at the block change, the RSDP's stays queued
    assert len(packets) == 128 + 3 + 1
    assert all(p.zero.size == PAGES_PER_PACKET for p in packets[:128])
    assert r.acct.pending_pages == 1
    assert r.acct.duplicate == r.total - 1  # 10.0 counts what was written only
    assert r.acct.sync()[0].zero.size == 1


def test_72_counts_normal_pages_when_queued() -> None:
    r = Run("7.2")
    pages = np.asarray(sorted(r.firmware)[:5], dtype=np.int64)
    r.acct.queue(pages, np.zeros(5, dtype=bool))
    assert r.acct.normal == 5
    assert r.acct.multifd_bytes == 0  # the packet is not full: not sent, not counted


def test_compressed_payload_is_counted_from_8_1() -> None:
    seen: list[Packet] = []

    def payload(p: Packet) -> int:
        seen.append(p)
        return 100 * int(p.normal.size)

    for version, expected in (("7.2", 3 * PAGE_SIZE), ("10.0", 300)):
        rules = MultifdRules.for_profile(PROFILES[version])
        acct = MultifdAccount(rules, BlockMap([("pc.ram", 1 << 20)]), 2, payload)
        acct.queue(_pages(0, 3), np.zeros(3, dtype=bool))
        acct.sync()
        # one data packet and two SYNC packets (no start(): no initial packets)
        assert acct.multifd_bytes == expected + 3 * PACKET_BYTES
    assert len(seen) == 1  # 7.2 never asks: it counts the raw pages


def test_rules_per_profile() -> None:
    r72 = MultifdRules.for_profile(PROFILES["7.2"], "multifd")
    assert r72 == MultifdRules(ZeroPages.MAIN, False, True, False)
    r100 = MultifdRules.for_profile(PROFILES["10.0"])
    assert r100 == MultifdRules(ZeroPages.IN_PACKET, True, False, True)
    assert MultifdRules.for_profile(PROFILES["10.0"], "legacy").zero_pages is ZeroPages.MAIN


def test_syncs_send_one_packet_per_channel_in_round_robin_order() -> None:
    acct = MultifdAccount(MultifdRules.for_profile(PROFILES["10.0"]), BlockMap([("a", 8 << 20)]), 3)
    packets = acct.queue(_pages(0, 3 * PAGES_PER_PACKET + 1), np.zeros(385, dtype=bool))
    assert [p.channel for p in packets] == [0, 1, 2]
    tail = acct.sync()
    assert [(p.channel, p.sync) for p in tail] == [(0, False), (0, True), (1, True), (2, True)]
    assert acct.sync_packets == 3 and acct.syncs == 1


@pytest.mark.parametrize("version", ["7.2", "10.0"])
@pytest.mark.parametrize("detection", ["multifd", "legacy", "none"])
def test_counting_only_gives_the_same_counters(version: str, detection: str) -> None:
    rng = np.random.default_rng(7)
    layout = layout_for(PROFILES[version], "pc", 64 << 20)
    blocks = BlockMap(layout.block_list())
    rules = MultifdRules.for_profile(PROFILES[version], detection)
    full, fast = (MultifdAccount(rules, blocks, 3) for _ in range(2))
    start = 0
    for _ in range(60):
        n = int(rng.integers(0, 700))
        pages = np.arange(start, start + n, dtype=np.int64) % blocks.page_count
        start += n
        zero = rng.random(n) < 0.3
        full.queue(pages, zero)
        fast.queue(pages, zero, packets=False)
        if rng.random() < 0.2:
            full.sync()
            fast.sync()
    for attr in ("multifd_bytes", "packets", "normal", "duplicate", "pending_pages"):
        assert getattr(full, attr) == getattr(fast, attr), attr


def test_zero_copy_flushes_count_channels_that_sent_normal_pages() -> None:
    rules = MultifdRules.for_profile(PROFILES["10.0"], "legacy")
    acct = MultifdAccount(rules, BlockMap([("pc.ram", 1 << 24)]), 2, zero_copy=True)
    acct.sync()
    assert acct.missed_zero_copy == 0  # nothing sent yet: nothing to flush
    acct.queue(_pages(0, 300), np.zeros(300, dtype=bool))  # packets on channels 0, 1 (+ pending)
    acct.sync()  # the pending packet goes to channel 0 again; both channels flush data
    assert acct.missed_zero_copy == 2
    acct.queue(_pages(300, 305), np.ones(5, dtype=bool))  # zero pages only: no data sent
    acct.sync()
    assert acct.missed_zero_copy == 2
    acct.queue(_pages(400, 410), np.zeros(10, dtype=bool))
    acct.sync(kernel_copied=False)  # the NIC really sent from memory: not a miss
    assert acct.missed_zero_copy == 2


def test_zero_copy_misses_are_query_migrate_s_counter() -> None:
    run = Run("10.0")
    run.acct = MultifdAccount(run.acct.rules, run.acct.blocks, 2, zero_copy=True)
    run.acct.queue(_pages(0, 10), np.zeros(10, dtype=bool))
    run.acct.sync()
    assert run.acct.counters(run.qemu)["dirty-sync-missed-zero-copy"] == 1
