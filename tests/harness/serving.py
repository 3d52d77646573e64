"""aiohttp apps served on 127.0.0.1 from the running process: for as long as a ``with`` block
lasts (the soak's Webapp), or until the process that started this one is gone (the bench's
simulator and bare proxy, each a process of its own)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Sequence

from aiohttp import web

ORPHAN_POLL = 0.5  # seconds between looks at the parent process


@contextlib.asynccontextmanager
async def serving(app: web.Application, port: int = 0) -> AsyncIterator[web.AppRunner]:
    """``app`` on 127.0.0.1:``port`` (0: a free port), without an access log; cleaned up on the
    way out."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        yield runner
    finally:
        await runner.cleanup()


async def serve_until_orphaned(apps: Sequence[tuple[web.Application, int]]) -> None:
    """Serve each app on its 127.0.0.1 port until the parent process is gone.

    Whoever started this process kills it itself; this is for when that process was killed first.
    """
    async with contextlib.AsyncExitStack() as stack:
        for app, port in apps:
            await stack.enter_async_context(serving(app, port))
        parent = os.getppid()
        while os.getppid() == parent:
            await asyncio.sleep(ORPHAN_POLL)
