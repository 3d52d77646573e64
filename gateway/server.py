"""Running the app on a socket until SIGTERM or SIGINT, then shutting down in order.

Shutdown: readiness turns 503 at once; the listener stays open for ``shutdown_drain`` seconds so
that load balancers notice; then it closes, requests in flight get up to ``shutdown_grace``
seconds to finish, and only then does the Webapp connection pool close (``cleanup_ctx``).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import structlog
from aiohttp import web

from .app import GATEWAY
from .config import Config

log = structlog.get_logger("gateway.server")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class ListenError(Exception):
    """The listening socket could not be opened."""


async def serve(
    app: web.Application,
    config: Config,
    *,
    stop: asyncio.Event | None = None,
    on_started: Callable[[str], None] | None = None,
) -> None:
    """Serve ``app`` on ``config.server.listen`` until a stop signal (or ``stop`` is set)."""
    server = config.server
    stop = stop or asyncio.Event()
    # handler_cancellation: like nginx (proxy_ignore_client_abort off), a request whose client
    # hangs up stops at once and frees its Webapp connection and spool file.
    runner = web.AppRunner(
        app, access_log=None, shutdown_timeout=server.shutdown_grace, handler_cancellation=True
    )
    loop = asyncio.get_running_loop()
    await runner.setup()
    try:
        site = web.TCPSite(runner, server.listen.host, server.listen.port, backlog=1024)
        try:
            await site.start()
        except OSError as exc:
            raise ListenError(f"cannot listen on {server.listen}: {exc.strerror}") from None
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, stop.set)
        host, port = runner.addresses[0][:2]
        url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        log.info("gateway.started", url=url, webapp=str(config.webapp.url))
        if on_started is not None:
            on_started(url)
        await stop.wait()
        app[GATEWAY].draining = True
        log.info("gateway.stopping", drain_s=server.shutdown_drain, grace_s=server.shutdown_grace)
        await asyncio.sleep(server.shutdown_drain)
    finally:
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)
        await runner.cleanup()
    log.info("gateway.stopped")
