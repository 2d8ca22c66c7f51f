"""The postcopy core: owed pages, the request queue, faults, blocktime, the received digest."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qmp_server.engine.guest import PAGE_SIZE, GuestMemory, Workload
from qmp_server.engine.postcopy import (
    PageRequests,
    PostcopyFaults,
    PostcopySendPlan,
    bitmap_of,
    indexes_of,
)


def _page(byte: int) -> bytes:
    return bytes([byte]) * PAGE_SIZE


@given(
    st.integers(0, 300).flatmap(
        lambda n: st.tuples(st.just(n), st.sets(st.integers(0, max(n - 1, 0))))
    )
)
def test_bitmap_round_trip(case: tuple[int, set[int]]) -> None:
    count, pages = case
    pages = {p for p in pages if p < count}
    bitmap = bitmap_of(sorted(pages), count)
    assert len(bitmap) == (count + 7) // 8
    assert indexes_of(bitmap, count).tolist() == sorted(pages)


def _drain(plan: PostcopySendPlan, step: int = 3) -> list[int]:
    order: list[int] = []
    while plan.remaining:
        pages, _ = plan.next_pages(step)
        assert pages.size
        plan.sent(pages)
        order += pages.tolist()
    return order


def test_walk_continues_after_the_last_page_precopy_sent() -> None:
    plan = PostcopySendPlan.at_switch(16, [1, 3, 5, 9, 12], last_sent=5)
    assert _drain(plan) == [9, 12, 1, 3, 5]


def test_requested_pages_go_first_and_are_sent_once() -> None:
    plan = PostcopySendPlan.at_switch(32, list(range(32)), last_sent=-1)
    first, urgent = plan.next_pages(4)
    assert first.tolist() == [0, 1, 2, 3] and not urgent
    plan.sent(first)
    plan.request(20, 2)
    plan.request(2, 1)  # already sent: nothing to do
    pages, urgent = plan.next_pages(8)
    assert urgent and pages.tolist() == [20, 21]
    plan.sent(pages)
    rest = _drain(plan, step=5)
    assert sorted(rest) == sorted(set(range(4, 32)) - {20, 21})
    assert plan.requests == 2


@settings(max_examples=50)
@given(
    st.sets(st.integers(0, 199), min_size=1),
    st.lists(st.tuples(st.integers(0, 199), st.integers(1, 5)), max_size=10),
)
def test_every_owed_page_is_sent_exactly_once(
    owed: set[int], requests: list[tuple[int, int]]
) -> None:
    plan = PostcopySendPlan.at_switch(200, sorted(owed), last_sent=77)
    sent: list[int] = []
    for start, count in requests:
        plan.request(start, count)
        pages, _ = plan.next_pages(2)
        plan.sent(pages)
        sent += pages.tolist()
    sent += _drain(plan)
    assert sorted(sent) == sorted(owed)


def test_resume_owes_exactly_what_the_destination_misses() -> None:
    plan = PostcopySendPlan.at_switch(10, range(10), last_sent=-1)
    pages, _ = plan.next_pages(4)
    plan.sent(pages)  # 0..3 sent; say 3 was lost in flight
    plan.resume(np.array([3, 6, 7], dtype=np.int64), last_sent=3)
    assert _drain(plan) == [6, 7, 3]


class _Requests:
    def __init__(self) -> None:
        self.runs: list[tuple[int, int]] = []

    def __call__(self, req: PageRequests) -> None:
        self.runs += req.runs


def _faults(
    missing: list[int], pages: int = 16, vcpus: int = 1
) -> tuple[GuestMemory, PostcopyFaults, _Requests]:
    guest = GuestMemory(pages * PAGE_SIZE)
    asked = _Requests()
    return guest, PostcopyFaults(guest, missing, vcpus, asked), asked


def test_a_touch_of_a_missing_page_blocks_until_it_arrives() -> None:
    _guest, faults, asked = _faults([4, 5, 9])
    present = faults.touch(np.array([1, 4, 5, 9], dtype=np.int64), now=10.0)
    assert present.tolist() == [True, False, False, False]
    assert asked.runs == [(4, 2), (9, 1)]
    assert faults.blocked
    faults.touch(np.array([4], dtype=np.int64), now=10.1)
    assert asked.runs == [(4, 2), (9, 1)]  # asked once
    faults.received(np.array([4, 5], dtype=np.int64), now=10.2)
    assert faults.blocked
    faults.received(np.array([9], dtype=np.int64), now=10.5)
    assert not faults.blocked
    assert faults.blocktime(10.6) == (500, [500])


def test_blocktime_per_vcpu_round_robin() -> None:
    _, faults, _ = _faults([1, 2], vcpus=2)
    faults.touch(np.array([1], dtype=np.int64), now=0.0)
    faults.received(np.array([1], dtype=np.int64), now=0.1)
    faults.touch(np.array([2], dtype=np.int64), now=1.0)
    assert faults.blocktime(1.3) == (0, [100, 300])  # never were all vCPUs blocked at once


def test_a_write_waits_for_the_page_and_the_received_digest_ignores_the_guest() -> None:
    guest, faults, _ = _faults([3])
    source = GuestMemory(16 * PAGE_SIZE)
    source.write_page(3, _page(7))
    source.write_page(5, _page(8))
    guest.write_page(5, _page(8))  # arrived during precopy
    pages = np.array([3, 5], dtype=np.int64)
    faults.write(pages, _page(1) + _page(2), now=0.0)
    assert guest.read_page(5) == _page(2)  # present: written at once
    assert guest.read_page(3) == bytes(PAGE_SIZE)  # missing: the write waits
    guest.load_page_list(np.array([3]), _page(7))
    faults.received(np.array([3], dtype=np.int64), now=0.01)
    assert guest.read_page(3) == _page(1)  # the guest's write, after the source's content
    assert faults.received_digest() == source.digest()
    assert guest.read_page(3) == _page(1) and guest.read_page(5) == _page(2)


def test_late_copies_never_overwrite_a_received_page() -> None:
    _, faults, _ = _faults([2, 3])
    faults.received(np.array([2], dtype=np.int64), now=0.0)
    assert faults.wanted(np.array([2, 3], dtype=np.int64)).tolist() == [False, True]


def test_recovery_asks_again_for_what_was_requested_and_not_received() -> None:
    _, faults, asked = _faults([2, 3, 8])
    faults.touch(np.array([3, 8], dtype=np.int64), now=0.0)
    faults.received(np.array([8], dtype=np.int64), now=0.1)
    assert faults.pending_requests().runs == [(3, 1)]
    assert asked.runs == [(3, 1), (8, 1)]


def test_the_workload_stalls_while_blocked() -> None:
    guest = GuestMemory(64 * PAGE_SIZE)
    asked = _Requests()
    faults = PostcopyFaults(guest, np.arange(64), 1, asked)
    work = Workload(guest, 64 * PAGE_SIZE, seed=1, now=0.0)
    work.faults = faults
    work.advance(0.1)
    assert faults.blocked and asked.runs
    written_before = work.pages_written
    work.advance(5.0)  # blocked all along: nothing owed accrues
    faults.received(np.arange(64, dtype=np.int64), now=5.0)
    assert not faults.blocked
    assert work.advance(5.0) == 0 and work.pages_written == written_before


@pytest.mark.parametrize("bad", [[], [0, 1]])
def test_a_plan_with_nothing_owed_is_done(bad: list[int]) -> None:
    plan = PostcopySendPlan.at_switch(2, bad, last_sent=0)
    _drain(plan)
    assert plan.remaining == 0 and plan.next_pages(4)[0].size == 0
