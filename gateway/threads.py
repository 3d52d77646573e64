"""Blocking steps in worker threads, run to their end even when their caller is cancelled.

A thread cannot be stopped: a caller that walks away from one leaves it working on a file the
caller then closes, or holding a descriptor nobody will close. :func:`on_disk` waits for the step
however often its caller is cancelled meanwhile, hands what the step made to ``undo`` when the
caller no longer wants it, and only then lets the cancellation through.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


async def on_disk(
    step: Callable[..., T], *args: object, undo: Callable[[T], None] | None = None
) -> T:
    """Run a blocking step in a worker thread, to its end even if the caller is cancelled
    meanwhile; ``undo`` then disposes of what the step made (a descriptor, a file)."""
    done = asyncio.ensure_future(asyncio.to_thread(step, *args))
    try:
        return await asyncio.shield(done)
    except asyncio.CancelledError:
        while not done.done():  # however often the caller is cancelled meanwhile
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(done)
        if not done.cancelled() and done.exception() is None and undo is not None:
            undo(done.result())
        raise
