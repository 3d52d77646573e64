"""The application factory: routes, the observing middleware, and the lifecycle of shared resources.

``create_app(config)`` reads nothing from the environment. Everything long-lived (the Webapp
connection pool and the token pool's background task) starts and stops in ``cleanup_ctx``.

An answer the gateway gives itself before the request's body has arrived closes the connection
(once aiohttp has drained the body); after a body that stalled or whose framing is broken, the
connection is closed at once. ``Expect`` never gets an answer outside the middleware: ``100
Continue`` is sent by the forwarder, when it wants the body.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import structlog
from aiohttp import hdrs, web
from aiohttp.http import HttpVersion10, HttpVersion11
from aiohttp.typedefs import Handler, Middleware

from .access import Exchange, completed
from .bearer import Clock, SystemClock
from .body import check_framing
from .config import Config
from .errors import (
    BadFraming,
    BadRequest,
    BodyTooLarge,
    GatewayError,
    MethodNotAllowed,
    NotFound,
    Overloaded,
    RequestTimeout,
    UriTooLong,
)
from .forward import Forwarder
from .headers import REQUEST_ID, request_id
from .local import client_login, client_logout, error_response, health, readiness
from .log import log_crash
from .metrics import Metrics
from .passwords import PasswordFile
from .policy import Action, Prefixes, decide
from .responses import Response
from .rotation import Rotator
from .tokens import TokenPool
from .webapp import Webapp

# nginx's status for a request whose client went away before the answer.
CLIENT_CLOSED = 499
HTTP_VERSIONS = frozenset({HttpVersion10, HttpVersion11})


class InFlight:
    """How many requests are being handled, and a way to wait until none are."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def __enter__(self) -> None:
        self.count += 1
        self._idle.clear()

    def __exit__(self, *_exc: object) -> None:
        self.count -= 1
        if not self.count:
            self._idle.set()

    async def idle(self) -> None:
        """Return once no request is in flight."""
        await self._idle.wait()


@dataclass(eq=False)
class Gateway:
    """Everything one gateway app shares between requests."""

    config: Config
    clock: Clock
    webapp: Webapp
    pool: TokenPool
    metrics: Metrics
    forwarder: Forwarder
    rotator: Rotator | None  # when the password is rotated on a schedule
    prefixes: Prefixes  # what may be forwarded
    in_flight: InFlight = field(default_factory=InFlight)
    draining: bool = False


GATEWAY = web.AppKey("gateway", Gateway)
EXCHANGE = web.RequestKey("exchange", Exchange)


def create_app(
    config: Config, *, clock: Clock | None = None, rng: random.Random | None = None
) -> web.Application:
    """The gateway as an aiohttp application, configured by ``config`` alone."""
    clock = clock or SystemClock()
    metrics = Metrics()
    webapp = Webapp(config, clock)
    rng = rng or random.Random()
    pool = TokenPool(
        webapp.login,
        config.tokens,
        metrics,
        clock,
        rng,
        webapp.check,
        rotate_fn=lambda account: webapp.login(account, rotate=True),
    )
    # Read at scrape time, from the one place each value lives.
    metrics.token_expiry.set_function(lambda: pool.seconds_left(webapp.account))
    metrics.login_breaker.set_function(lambda: pool.breaker(webapp.account).value)
    metrics.upstream_in_use.set_function(lambda: webapp.slots.in_use)
    forwarder = Forwarder(webapp, pool, metrics, config.server, config.webapp.api_key)
    rotator = None
    if (file := config.webapp.password_file) is not None:
        password_file = PasswordFile(file)
        metrics.password_age.set_function(password_file.age)
        if every := config.webapp.password_rotate_every:
            rotator = Rotator(
                pool, webapp.account, password_file, every, config.tokens, metrics, rng
            )
    prefixes = Prefixes(config.policy.forward_paths)
    gateway = Gateway(config, clock, webapp, pool, metrics, forwarder, rotator, prefixes)
    metrics.in_flight.set_function(lambda: gateway.in_flight.count)

    app = web.Application(middlewares=[_observe(gateway)])
    app[GATEWAY] = gateway
    app.cleanup_ctx.append(_webapp_lifecycle)
    app.router.add_get("/_gateway/healthz", _healthz, expect_handler=_expect)
    app.router.add_get("/_gateway/readyz", _readyz, expect_handler=_expect)
    app.router.add_get("/_gateway/metrics", _metrics, expect_handler=_expect)
    # [\s\S], not '.': a decoded %0a in the path must reach the policy (and its 400), not a 404.
    app.router.add_route("*", r"/{tail:[\s\S]*}", _proxy, expect_handler=_expect)
    return app


async def _expect(request: web.Request) -> None:
    """aiohttp's default would send ``100 Continue`` before the policy is checked, and answer any
    other expectation with a plain-text 417 that bypasses the middleware. Unknown expectations are
    ignored (RFC 9110 section 10.1.1 allows it); see :class:`~gateway.forward.Forwarder`."""


async def _webapp_lifecycle(app: web.Application) -> AsyncIterator[None]:
    gateway = app[GATEWAY]
    await gateway.webapp.open()
    gateway.pool.start([gateway.webapp.account])
    if gateway.rotator is not None:
        gateway.rotator.start()
    yield
    if gateway.rotator is not None:
        await gateway.rotator.close()
    await gateway.pool.close()
    await gateway.webapp.close()


async def _proxy(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    limits = gateway.config.server
    if gateway.in_flight.count > limits.max_concurrent:
        raise Overloaded(
            f"The gateway is handling {limits.max_concurrent} requests already; retry shortly.",
            retry_after=1,
            kind="max_concurrent",
        )
    if request.version not in HTTP_VERSIONS:
        raise BadRequest("Only HTTP/1.0 and HTTP/1.1 requests are accepted.")
    check_framing(request.version, request.headers.getall(hdrs.TRANSFER_ENCODING, []))
    if len(request.raw_path) > limits.max_url:
        raise UriTooLong(f"The request target is longer than {limits.max_url} bytes.")
    target = decide(request.method, request.raw_path, gateway.prefixes)
    request[EXCHANGE].path = target.path
    if target.action is Action.LOGIN:
        return client_login(gateway.clock.time())
    if target.action is Action.LOGOUT:
        return client_logout()
    return await gateway.forwarder(request, target, request[EXCHANGE])


async def _healthz(request: web.Request) -> web.StreamResponse:
    return health()


async def _readyz(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    if gateway.draining:
        return readiness(False, "The gateway is shutting down.")
    state = gateway.pool.readiness(gateway.webapp.account)
    return readiness(state.ready, state.reason)


async def _metrics(request: web.Request) -> web.StreamResponse:
    body, content_type = request.app[GATEWAY].metrics.render()
    response = Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


def _from_http_exception(exc: web.HTTPException, method: str) -> GatewayError:
    """aiohttp's own refusals in the gateway's error format. Every path has a route, so the
    router's 404 is for a target that is not one (``*``, or CONNECT's authority)."""
    if method == hdrs.METH_CONNECT:
        return MethodNotAllowed("CONNECT is not supported: the gateway opens no tunnels.")
    if exc.status == 404:
        return NotFound("The request target is not a path, such as /v1/messages.")
    return (BodyTooLarge if exc.status == 413 else BadRequest)(f"{exc.status} {exc.reason}.")


def _observe(gateway: Gateway) -> Middleware:
    """The middleware that gives every request an id, a WhatsApp-style error body when it fails,
    one access log event and its metrics."""
    metrics = gateway.metrics

    @web.middleware
    async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
        exchange = Exchange(request_id(request.headers.get(REQUEST_ID)), time.perf_counter())
        request[EXCHANGE] = exchange
        status = CLIENT_CLOSED
        try:
            with (
                gateway.in_flight,
                structlog.contextvars.bound_contextvars(request_id=exchange.request_id),
            ):
                response = await _answer(request, handler, exchange)
            status = response.status
            return response
        finally:
            completed(
                metrics,
                exchange,
                method=request.method,
                raw_path=request.raw_path,
                status=status,
                client=request.remote,
            )

    return observe


async def _answer(request: web.Request, handler: Handler, exchange: Exchange) -> web.StreamResponse:
    unusable = False  # the connection, since the body stalled or its framing is broken
    try:
        response = await handler(request)
    except GatewayError as error:
        response = error_response(error)
        exchange.failure = exchange.failure or error.kind or None
        unusable = isinstance(error, RequestTimeout | BadFraming)
    except web.HTTPException as exc:
        response = error_response(_from_http_exception(exc, request.method))
    except asyncio.CancelledError:
        exchange.failure = "cancelled"  # the client hung up, or shutdown's grace period ended
        raise
    except ConnectionError:
        exchange.failure = "client_disconnected"
        response = error_response(BadRequest("The client closed the connection."))
        response.set_status(CLIENT_CLOSED)
    except Exception as exc:
        log_crash("request.crashed", exc)
        exchange.failure = "crashed"
        if exchange.streaming is not None:
            # Its status line went out: an error answer now would land inside its body.
            request.protocol.force_close()
            return exchange.streaming
        response = error_response(GatewayError("The gateway failed unexpectedly; see its log."))
    if not response.prepared:  # answered here, not streamed from the Webapp
        response.headers[REQUEST_ID] = exchange.request_id
        exchange.bytes_out = response.content_length or 0
        if unusable:
            await _send_and_drop(
                request, response, request.app[GATEWAY].config.server.client_send_timeout
            )
        elif request.body_exists and not request.content.is_eof():
            response.force_close()  # aiohttp drains the rest of the body, then closes
    return response


async def _send_and_drop(
    request: web.Request, response: web.StreamResponse, send_timeout: float
) -> None:
    """Send ``response`` (within ``send_timeout``: the end of an earlier answer may still wait
    for the client), then close the connection without reading the rest of the body (aiohttp
    would keep reading it for up to ten seconds) or any request after it."""
    response.force_close()
    try:
        async with asyncio.timeout(send_timeout):
            await response.prepare(request)
            await response.write_eof()
    except (ConnectionError, TimeoutError):
        if request.transport is not None:
            request.transport.abort()
    request.protocol.force_close()
