"""The ``idle`` baseline: zero but for the firmware pages, which hold deterministic content."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qmp_server.engine.guest import PAGE_SIZE, GuestMemory

FIRMWARE = [0, 1, 2, 9, 200, 255]


def idle(pages: int = 256, seed: int = 5) -> GuestMemory:
    return GuestMemory(pages * PAGE_SIZE, fill="idle", seed=seed, firmware_pages=FIRMWARE)


def test_firmware_pages_are_the_only_non_zero_pages() -> None:
    ram = idle()
    mask = ram.zero_mask(np.arange(256))
    assert sorted(np.flatnonzero(~mask).tolist()) == FIRMWARE
    assert ram.firmware_page_count == len(FIRMWARE)
    assert ram.read_page(3) == bytes(PAGE_SIZE)
    assert ram.read_page(9) != bytes(PAGE_SIZE)
    assert not ram.is_zero_page(200) and ram.is_zero_page(201)
    assert ram.resident_pages == 0  # nothing stored: it is the baseline


def test_content_is_deterministic_and_seeded() -> None:
    assert idle().read_pages(0, 256) == idle().read_pages(0, 256)
    assert idle(seed=5).read_page(9) != idle(seed=6).read_page(9)
    assert idle().read_page_list([9, 3, 0]) == idle().read_page(9) + bytes(PAGE_SIZE) + idle(
    ).read_page(0)  # fmt: skip


def test_loading_the_source_content_stores_nothing() -> None:
    src, dst = idle(), idle()
    dst.load_pages(0, src.read_pages(0, 256))
    assert dst.resident_pages == 0
    assert dst.digest() == src.digest()


def test_a_zeroed_firmware_page_is_stored_and_migrates() -> None:
    src, dst = idle(), idle()
    src.write_page(9, bytes(PAGE_SIZE))
    assert src.is_zero_page(9) and src.resident_pages == 1
    dst.load_zero_page_list([9, 10])
    assert dst.digest() == src.digest()
    dst.load_zero_pages(8, 4)  # 9 is zero, 8/10/11 are the baseline anyway
    assert dst.digest() == src.digest()


def test_layout_is_part_of_the_digest() -> None:
    other = GuestMemory(256 * PAGE_SIZE, fill="idle", seed=5, firmware_pages=[0, 1])
    assert other.digest() != idle().digest()


def test_bad_firmware_lists() -> None:
    with pytest.raises(ValueError, match="outside"):
        GuestMemory(4 * PAGE_SIZE, fill="idle", firmware_pages=[4])
    with pytest.raises(ValueError, match="only meaningful"):
        GuestMemory(4 * PAGE_SIZE, fill="zero", firmware_pages=[1])


@settings(max_examples=60, deadline=None)
@given(
    writes=st.lists(
        st.tuples(st.integers(0, 255), st.sampled_from(["zero", "random", "firmware"])),
        max_size=20,
    )
)
def test_any_writes_migrate_to_an_equal_digest(writes: list[tuple[int, str]]) -> None:
    src, dst = idle(), idle()
    rng = np.random.default_rng(1)
    for page, kind in writes:
        if kind == "zero":
            data = bytes(PAGE_SIZE)
        elif kind == "random":
            data = rng.integers(0, 255, PAGE_SIZE, dtype=np.uint8).tobytes()
        else:
            data = idle().read_page(page)  # back to the baseline
        src.write_page(page, data)
    zero = src.zero_mask(np.arange(256))
    dst.load_zero_page_list(np.flatnonzero(zero))
    normal = np.flatnonzero(~zero)
    dst.load_page_list(normal, src.read_page_list(normal))
    assert dst.digest() == src.digest()
    assert dst.content_digest() == src.content_digest()


def test_hot_pages_are_dirtied_at_each_tick_while_running_and_keep_their_bytes() -> None:
    from qmp_server.engine.guest import Workload

    ram = idle()
    before = ram.digest()
    work = Workload(ram, 0, now=0.0, hot_pages=[0, 9], hot_interval=0.05)
    assert work.active and work.advance(0.01) == 0  # no tick yet
    assert work.advance(0.2) == 2  # three ticks missed: written once
    assert ram.sync_dirty().tolist() == [0, 9]
    work.set_running(False, 0.2)
    assert work.advance(1.0) == 0 and ram.sync_dirty().size == 0
    assert ram.digest() == before
