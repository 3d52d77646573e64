"""Forwarded requests' share of the Webapp connection pool: at most so many at once, a bounded wait.

A request holds its slot from sending until its answer has streamed back, so a slow reader keeps
one, as it keeps the connection. Without a bound on the wait, a pool taken by slow downloads made
every other request wait for ``GATEWAY_UPSTREAM_TIMEOUT`` and then answered 504 as if the Webapp
were slow; a full pool is the gateway's own overload, so it answers 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio

from .errors import Overloaded


class Slots:
    """``size`` places for requests on the Webapp's connections; a wait of ``timeout`` at most."""

    def __init__(self, size: int, timeout: float) -> None:
        self.size = size
        self.in_use = 0
        self._timeout = timeout
        self._free = asyncio.Semaphore(size)

    async def __aenter__(self) -> None:
        if self._free.locked():  # only a wait needs a deadline: a free slot costs no timer
            try:
                async with asyncio.timeout(self._timeout):
                    await self._free.acquire()
            except TimeoutError:
                raise Overloaded(
                    f"All {self.size} connections to the Webapp stayed busy for "
                    f"{self._timeout:g} s; retry shortly.",
                    retry_after=1,
                    kind="upstream_busy",
                ) from None
        else:
            await self._free.acquire()
        self.in_use += 1

    async def __aexit__(self, *_exc: object) -> None:
        self.in_use -= 1
        self._free.release()
