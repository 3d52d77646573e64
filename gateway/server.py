"""Running the app on a socket until SIGTERM or SIGINT, then shutting down in order.

The socket speaks TLS when the configuration names a certificate and key (``server.tls_*``); the
configuration's warnings are logged once at the start, as ``config.warning`` events.

Shutdown: readiness turns 503 at once; the listener stays open for ``shutdown_drain`` seconds so
that load balancers notice; then it closes, requests in flight get up to ``shutdown_grace``
seconds to finish, those still running are cut (cancelled, their connections closed), and only
then does the Webapp connection pool close (``cleanup_ctx``).

The signal handlers are in place from the start of :func:`serve` to its end, so a signal during
start-up stops the gateway in order too, and a second signal during shutdown changes nothing:
shutdown is bounded by ``shutdown_drain + shutdown_grace`` already.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
from collections.abc import Callable

import structlog
from aiohttp import web

from .app import GATEWAY, InFlight
from .config import Config, listener_ssl_context
from .protocol import GatewayRunner
from .values import Address

log = structlog.get_logger("gateway.server")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
INTERRUPTED = 130  # the exit status for Ctrl-C before the handlers are in place: 128 + SIGINT
# aiohttp's own shutdown wait, per phase, for what is left after the grace period: only the time
# a cancelled handler gets to unwind. (aiohttp would wait its timeout twice, and read 0 as
# "forever", so the grace period is counted here instead.)
_CUT_WAIT = 0.1
BACKLOG = 1024


class ListenError(Exception):
    """The listening socket could not be opened."""


async def serve(
    app: web.Application,
    config: Config,
    *,
    stop: asyncio.Event | None = None,
    on_started: Callable[[str], None] | None = None,
) -> None:
    """Serve ``app`` on ``config.server.listen`` until a stop signal (or ``stop`` is set).

    Raises :class:`~gateway.config.ConfigError` when the listener's TLS files no longer load, and
    :class:`ListenError` when the socket cannot be opened.
    """
    server = config.server
    for warning in config.warnings:
        log.warning("config.warning", detail=warning)
    tls = listener_ssl_context(server)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    try:
        runner = GatewayRunner(app, access_log=None, shutdown_timeout=_CUT_WAIT)
        await runner.setup()
        try:
            url = await _listen(runner, server.listen, tls, server.client_idle_timeout)
            log.info("gateway.started", url=url, webapp=str(config.webapp.url))
            if on_started is not None:
                on_started(url)
            await stop.wait()
            app[GATEWAY].draining = True
            log.info(
                "gateway.stopping", drain_s=server.shutdown_drain, grace_s=server.shutdown_grace
            )
            await asyncio.sleep(server.shutdown_drain)
        finally:
            await _close_listener(runner)
            cut = await _finish_in_flight(app[GATEWAY].in_flight, server.shutdown_grace)
            if cut:
                log.warning("gateway.requests_cut", count=cut, grace_s=server.shutdown_grace)
            await runner.cleanup()
    finally:
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)
    log.info("gateway.stopped")


class _TlsSite(web.TCPSite):
    """A TCPSite whose TLS handshakes must end within ``handshake_timeout`` seconds.

    asyncio gives a handshake 60 s, and aiohttp offers no way to change that: a client that opens
    connections and never finishes its hello would hold each for a minute, long past the idle
    timeout that the same client gets once it speaks HTTP. This is ``TCPSite.start`` with the one
    argument added (aiohttp is pinned to a minor version, so its attributes cannot move).
    """

    def __init__(
        self, runner: web.AppRunner, address: Address, tls: ssl.SSLContext, timeout: float
    ) -> None:
        super().__init__(runner, address.host, address.port, backlog=BACKLOG, ssl_context=tls)
        self._handshake_timeout = timeout

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        if server is None:
            raise RuntimeError("the runner was not set up")
        self._server = await asyncio.get_running_loop().create_server(
            server,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            ssl_handshake_timeout=self._handshake_timeout,
        )
        self._bound_port = self._server.sockets[0].getsockname()[1]


async def _listen(
    runner: web.AppRunner, address: Address, tls: ssl.SSLContext | None, handshake_timeout: float
) -> str:
    """Open the listening socket (with TLS if ``tls`` is given); return the URL it answers on."""
    site: web.TCPSite
    if tls is None:
        site = web.TCPSite(runner, address.host, address.port, backlog=BACKLOG)
    else:
        site = _TlsSite(runner, address, tls, handshake_timeout)
    try:
        await site.start()
    except OSError as exc:
        raise ListenError(f"cannot listen on {address}: {exc.strerror}") from None
    host, port = runner.addresses[0][:2]
    scheme = "http" if tls is None else "https"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


async def _close_listener(runner: web.AppRunner) -> None:
    """Accept no more connections, and no more requests on the open ones."""
    for site in runner.sites:
        await site.stop()
    if runner.server is not None:
        runner.server.pre_shutdown()  # idle keep-alive connections close now, busy ones when done


async def _finish_in_flight(in_flight: InFlight, grace: float) -> int:
    """Wait up to ``grace`` seconds for the requests in flight; return how many are left."""
    # A request that arrived just before the listener closed is counted once it reaches the
    # middleware: three turns of the loop (its connection wakes, starts its task, which runs).
    for _ in range(3):
        await asyncio.sleep(0)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(grace):
            await in_flight.idle()
    return in_flight.count
