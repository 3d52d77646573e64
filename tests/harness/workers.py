"""Load as clients side by side, each repeating an operation until a deadline: the soak's
weighted mix of requests and the bench's Python load generator both run this way."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


async def repeat(workers: int, until: float, operation: Callable[[], Awaitable[None]]) -> None:
    """``workers`` clients each awaiting ``operation()`` back to back until the loop time
    ``until``; an operation under way then runs to its end."""
    loop = asyncio.get_running_loop()

    async def worker() -> None:
        while loop.time() < until:
            await operation()

    await asyncio.gather(*(worker() for _ in range(workers)))
