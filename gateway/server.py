"""Running the app on a socket until SIGTERM or SIGINT, then shutting down in order.

The socket is bound before the app starts up (and logs in), so that a port that is taken stops
the gateway before the Webapp hears from it; it accepts connections once the app is up. It speaks
TLS when the configuration names a certificate and key (``server.tls_*``); the configuration's
warnings are logged once at the start, as ``config.warning`` events. The listener holds at most
``server.max_connections`` client connections, the soft descriptor limit is raised to fit them
(``server.descriptors_low`` when it cannot be), and asyncio's failed accepts are logged at most
every few seconds (see :mod:`gateway.connections`).

Shutdown: readiness turns 503 at once; the listener stays open for ``shutdown_drain`` seconds so
that load balancers notice; then it closes, requests in flight get up to ``shutdown_grace``
seconds to finish, those still running are cut (cancelled, their connections closed), and only
then does the Webapp connection pool close (``cleanup_ctx``).

The signal handlers are in place from the start of :func:`serve` to its end, so a signal during
start-up stops the gateway in order too (without ever serving), and a second signal during
shutdown changes nothing: shutdown is bounded by ``shutdown_drain + shutdown_grace`` already.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import ssl
from collections.abc import Callable, Iterator

import structlog
from aiohttp import web

from .app import GATEWAY, InFlight
from .config import Config, ConfigError, ServerConfig, listener_ssl_context
from .connections import (
    BACKLOG,
    AcceptErrors,
    ConnectionLimit,
    descriptors_needed,
    raise_descriptor_limit,
)
from .protocol import GatewayRunner
from .values import Address

log = structlog.get_logger("gateway.server")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
INTERRUPTED = 130  # the exit status for Ctrl-C before the handlers are in place: 128 + SIGINT
# aiohttp's own shutdown wait, per phase, for what is left after the grace period: only the time
# a cancelled handler gets to unwind. (aiohttp would wait its timeout twice, and read 0 as
# "forever", so the grace period is counted here instead.)
_CUT_WAIT = 0.1


class ListenError(Exception):
    """The listening socket could not be opened."""


async def serve(
    app: web.Application,
    config: Config,
    *,
    stop: asyncio.Event | None = None,
    on_started: Callable[[str], None] | None = None,
    then_exit: bool = False,
) -> None:
    """Serve ``app`` on ``config.server.listen`` until a stop signal (or ``stop`` is set).

    With ``then_exit`` (the process ends when this returns), stop signals stay ignored after
    it: a second one would otherwise kill the process while its loop closes and its last log
    lines are written.

    Raises :class:`~gateway.config.ConfigError` when the listener's TLS files no longer load, and
    :class:`ListenError` when the socket cannot be opened.
    """
    server = config.server
    for warning in config.warnings:
        log.warning("config.warning", detail=warning)
    _check_descriptors(server)
    tls = listener_ssl_context(server)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    metrics = app[GATEWAY].metrics
    connections = ConnectionLimit(
        server.max_connections, on_refused=metrics.connections_refused.inc
    )
    metrics.client_connections.set_function(lambda: connections.open)
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    exception_handler = loop.get_exception_handler()
    loop.set_exception_handler(AcceptErrors(exception_handler, connections))
    try:
        runner = GatewayRunner(app, access_log=None, shutdown_timeout=_CUT_WAIT)
        # Before the app starts up, which logs in: a port that is taken stops the gateway
        # before the Webapp hears from it.
        listener = await _bind(runner, server, tls, connections)
        try:
            await runner.setup()
            serving = not stop.is_set()  # a signal during start-up: stop without serving
            if serving:
                url = await _listen(runner, listener, server.listen, tls)
                log.info("gateway.started", url=url, webapp=str(config.webapp.url))
                if on_started is not None:
                    on_started(url)
            await stop.wait()
            app[GATEWAY].draining = True
            log.info(
                "gateway.stopping", drain_s=server.shutdown_drain, grace_s=server.shutdown_grace
            )
            if serving:
                await asyncio.sleep(server.shutdown_drain)
        finally:
            await _close_listener(runner)
            listener.close()  # closed with its site already, unless the app did not start
            cut = await _finish_in_flight(app[GATEWAY].in_flight, server.shutdown_grace)
            if cut:
                log.warning("gateway.requests_cut", count=cut, grace_s=server.shutdown_grace)
            await runner.cleanup()
    finally:
        loop.set_exception_handler(exception_handler)
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)
            if then_exit:
                signal.signal(signum, signal.SIG_IGN)
    log.info("gateway.stopped")


def _check_descriptors(server: ServerConfig) -> None:
    """Raise the descriptor limit for this configuration; warn once if it stays too low."""
    needed = descriptors_needed(server)
    descriptors = raise_descriptor_limit(needed)
    if not descriptors.enough:
        log.warning(
            "server.descriptors_low",
            limit=descriptors.soft,
            needed=needed,
            setting="GATEWAY_MAX_CONNECTIONS",
            max_connections=server.max_connections,
            upstream_connections=server.upstream_connections,
        )


async def _bind(
    runner: web.AppRunner,
    server: ServerConfig,
    tls: ssl.SSLContext | None,
    connections: ConnectionLimit,
) -> asyncio.Server:
    """Bind the listening socket(s) of ``server.listen`` for ``runner``'s connections, counted by
    ``connections``; :class:`_Site` starts accepting them once the runner is set up.

    Raises :class:`~gateway.config.ConfigError` for a host name that does not resolve, and
    :class:`ListenError` when the address cannot be bound.
    """

    def serve_connection() -> asyncio.Protocol:
        # Only accepted connections call this, once the runner is set up; but a TLS handshake
        # may end after shutdown has closed the listener and cleaned the runner up.
        server = runner.server
        return _Closed() if server is None else server()

    with _listen_errors(server.listen):
        return await asyncio.get_running_loop().create_server(
            connections.factory(serve_connection),
            server.listen.host,
            server.listen.port,
            ssl=tls,
            backlog=BACKLOG,
            start_serving=False,
            # asyncio gives a TLS handshake 60 s, with no way in aiohttp to change that: a client
            # that opens connections and never finishes its hello would hold each for a minute,
            # long past the idle timeout it gets once it speaks HTTP. A closing TLS connection
            # first sends what it holds (the end of an answer, to a client that may read slowly)
            # and waits for the client's close_notify: a send, so the send timeout, not
            # asyncio's 30 s. (asyncio refuses both for a plain socket.)
            ssl_handshake_timeout=None if tls is None else server.client_idle_timeout,
            ssl_shutdown_timeout=None if tls is None else server.client_send_timeout,
        )


@contextlib.contextmanager
def _listen_errors(address: Address) -> Iterator[None]:
    """Translate the errors of binding and listening on ``address`` for the command line."""
    try:
        yield
    except socket.gaierror as exc:  # a name no resolver knows: the configuration's fault
        raise ConfigError(
            [f"GATEWAY_LISTEN (server.listen): cannot resolve {address.host}: {exc.strerror}"]
        ) from None
    except OSError as exc:  # the port is taken, say: the machine's state, not the configuration
        # asyncio's message repeats the address; the system's alone says what is wrong.
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ListenError(f"cannot listen on {address}: {why}") from None


class _Closed(asyncio.Protocol):
    """A connection that came too late to be served: closed at once."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class _Site(web.BaseSite):
    """The runner's site on a listener that :func:`_bind` opened.

    aiohttp's TCPSite binds in ``start``, which needs the runner set up, and so comes after the
    app's startup (its first login); this one only starts serving sockets bound before that.
    """

    def __init__(
        self, runner: web.AppRunner, listener: asyncio.Server, tls: ssl.SSLContext | None
    ) -> None:
        super().__init__(runner, ssl_context=tls)
        self._listener = self._server = listener  # BaseSite.stop() closes _server

    @property
    def name(self) -> str:
        """The URL of the (first) address it listens on."""
        host, port = self._listener.sockets[0].getsockname()[:2]
        scheme = "http" if self._ssl_context is None else "https"
        return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"

    async def start(self) -> None:
        """Register with the runner, and accept connections from now on."""
        await super().start()
        await self._listener.start_serving()


async def _listen(
    runner: web.AppRunner, listener: asyncio.Server, address: Address, tls: ssl.SSLContext | None
) -> str:
    """Accept connections on ``listener`` (bound to ``address``); return the URL it answers on."""
    site = _Site(runner, listener, tls)
    # A socket that another process bound to the port as well (both with SO_REUSEADDR) may have
    # started listening since: then listen() fails.
    with _listen_errors(address):
        await site.start()
    return site.name


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
