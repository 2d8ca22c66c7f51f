"""StepTurns: the process's migrations take one page step per turn of the loop, FIFO."""

from __future__ import annotations

import asyncio

from qmp_server.runtime.step_turns import StepTurns, step_turns


async def test_one_step_per_turn_in_arrival_order() -> None:
    loop = asyncio.get_running_loop()
    turns = StepTurns(loop)
    log: list[tuple[str, int]] = []
    tick = 0

    async def ticker() -> None:  # counts the loop's turns
        nonlocal tick
        while True:
            await asyncio.sleep(0)
            tick += 1

    async def migration(name: str, steps: int) -> None:
        for _ in range(steps):
            await turns.take()
            log.append((name, tick))

    counting = asyncio.create_task(ticker())
    await asyncio.gather(migration("a", 3), migration("b", 3), migration("c", 3))
    counting.cancel()
    assert [name for name, _ in log] == ["a", "b", "c"] * 3
    # never two steps in the same turn of the loop
    assert len({t for _, t in log}) == len(log)


async def test_contended_and_a_cancelled_waiter_is_skipped() -> None:
    turns = step_turns()
    assert step_turns() is turns  # one per loop
    assert not turns.contended
    first = asyncio.create_task(turns.take())
    gone = asyncio.create_task(turns.take())
    last = asyncio.create_task(turns.take())
    await asyncio.sleep(0)
    assert turns.contended
    gone.cancel()
    await asyncio.wait_for(asyncio.gather(first, last), 5)
    assert gone.cancelled() and not turns.contended
