"""extend(): a deadline follows progress without a new timer for every small step."""

from __future__ import annotations

import asyncio

from gateway.deadlines import SLACK, extend


async def test_a_small_postponement_keeps_the_timer_a_larger_one_moves_it() -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with asyncio.timeout_at(start + 10) as deadline:  # noqa: ASYNC100 - examined, not awaited
        extend(deadline, start + 10 + 10 * SLACK / 2, timeout=10)
        assert deadline.when() == start + 10
        extend(deadline, start + 10 + 10 * SLACK * 2, timeout=10)
        assert deadline.when() == start + 10 + 10 * SLACK * 2


async def test_a_nearer_deadline_always_moves_it() -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with asyncio.timeout_at(start + 10) as deadline:  # noqa: ASYNC100 - examined, not awaited
        extend(deadline, start + 10 - 0.001, timeout=10)
        assert deadline.when() == start + 10 - 0.001


async def test_a_deadline_without_a_time_gets_one() -> None:
    async with asyncio.timeout(None) as deadline:  # noqa: ASYNC100 - examined, not awaited
        extend(deadline, asyncio.get_running_loop().time() + 5, timeout=5)
        assert deadline.when() is not None
