"""The token pool's background task: it starts every login that is due, then sleeps until the
next one is, or until it is woken because a login ended or a token was dropped.

The pool (:mod:`gateway.tokens`) says which logins are due and starts them (``start_due``); this
module owns the task that asks it, from :meth:`Refresher.start` until the pool cancels
:attr:`Refresher.task` as it closes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from .bearer import Clock
from .log import log_crash


class Refresher:
    """Calls ``start_due(now)``, which starts every login due and returns when the next one is."""

    def __init__(self, start_due: Callable[[float], float], clock: Clock) -> None:
        self._start_due = start_due
        self._clock = clock
        self._wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the task in the running loop."""
        self.task = asyncio.get_running_loop().create_task(self._run())
        self.task.add_done_callback(_ended)

    def wake(self) -> None:
        """Ask the task to look again now: the next login may be due sooner."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            now = self._clock.monotonic()
            next_due = self._start_due(now)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(next_due - now, 3600.0)):
                    await self._wake.wait()


def _ended(task: asyncio.Task[None]) -> None:
    # The refresher only ends when cancelled at close; anything else is a bug to be seen.
    if not task.cancelled() and (exc := task.exception()) is not None:
        log_crash("token.refresher_crashed", exc)
