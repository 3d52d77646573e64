"""The listener's connections and descriptors: how many may be open, and what happens beyond.

- :class:`ConnectionLimit` counts the client connections open at once and closes, as soon as it
  is accepted, a connection beyond ``server.max_connections``, so that idle clients can never
  take the descriptors that the Webapp pool, spool files and the log need. A refused connection
  never reaches aiohttp (no handler, no request, no access event); refusals are logged as
  ``server.connections_full``, at most once per :data:`LOG_EVERY` seconds with the count since.
- :func:`raise_descriptor_limit` raises the soft ``RLIMIT_NOFILE`` to the hard limit at start-up,
  as Go's runtime does; :func:`descriptor_plan` is that decision, without the system call.
- :class:`AcceptErrors` is a loop exception handler that turns asyncio's "socket.accept() out of
  system resource" (an ERROR with a traceback for every backlog slot, thousands a second) into
  one ``server.accept_failed`` event per :data:`LOG_EVERY` seconds. Every other context goes to
  the handler that was there before, and every event goes through :mod:`gateway.log`.

On a TLS listener a connection is counted from the end of its handshake: asyncio tells the
application nothing about a handshake that fails, so one counted from the accept could never be
released. Handshakes are bounded in time instead (``server.client_idle_timeout``).
"""

from __future__ import annotations

import asyncio
import errno
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import structlog

from .config import ServerConfig

log = structlog.get_logger("gateway.connections")

LOG_EVERY = 5.0  # seconds between two events about the same flood
# The kernel's queue of connections not yet accepted, and so also how many asyncio accepts at one
# wake-up, before any of them can be counted: a burst holds up to this many descriptors beyond
# the limit, for the few turns of the loop it takes to close those refused.
BACKLOG = 1024
# Descriptors besides client and Webapp connections: standard streams, the event loop's, the
# listening sockets, the pool's connections for logins, spool files, the password file.
DESCRIPTOR_RESERVE = 64
# The message asyncio passes to the loop's exception handler (selector_events.py); it is the only
# mark such a context carries.
ACCEPT_FAILED = "socket.accept() out of system resource"

Clock = Callable[[], float]
MakeHandler = Callable[[], asyncio.Protocol]  # aiohttp's web.Server: one RequestHandler a call
ExceptionHandler = Callable[[asyncio.AbstractEventLoop, dict[str, object]], object]


class Throttle:
    """Counts occurrences of one thing, and lets one in each ``interval`` seconds be reported."""

    def __init__(self, interval: float, clock: Clock = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._quiet_until = float("-inf")
        self._count = 0

    def tick(self) -> int:
        """Count one occurrence; return how many to report now (this one and those held back
        since the last report), or 0 to stay quiet."""
        self._count += 1
        now = self._clock()
        if now < self._quiet_until:
            return 0
        self._quiet_until = now + self._interval
        count, self._count = self._count, 0
        return count


class ConnectionLimit:
    """The client connections open at once (``open``), and those refused so far (``refused``)."""

    def __init__(
        self,
        limit: int,
        clock: Clock = time.monotonic,
        on_refused: Callable[[], object] | None = None,  # a metric's inc(), say
    ) -> None:
        self.limit = limit
        self.open = 0
        self.refused = 0
        self._refusals = Throttle(LOG_EVERY, clock)
        self._on_refused = on_refused

    def factory(self, make_handler: MakeHandler) -> Callable[[], _Counted]:
        """A protocol factory for ``loop.create_server``: connections that ``make_handler``
        serves, counted."""
        return lambda: _Counted(self, make_handler)

    @property
    def full(self) -> bool:
        """Whether a new connection would be one too many."""
        return self.open >= self.limit

    def refuse(self) -> None:
        """Count a refused connection, and log it unless that was done just now."""
        self.refused += 1
        if self._on_refused is not None:
            self._on_refused()
        count = self._refusals.tick()
        if count:
            log.warning(
                "server.connections_full",
                limit=self.limit,
                refused=count,
                setting="GATEWAY_MAX_CONNECTIONS",
            )


class _Counted(asyncio.Protocol):
    """One accepted connection: closed at once when the limit is reached, else served by the
    handler it makes, and counted until it is lost."""

    def __init__(self, limit: ConnectionLimit, make_handler: MakeHandler) -> None:
        self._limit = limit
        self._make_handler = make_handler
        self._handler: asyncio.Protocol | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        limit = self._limit
        if limit.full:
            limit.refuse()
            # abort, not close: there is nothing to flush, so the socket goes on the next turn.
            cast(asyncio.Transport, transport).abort()
            return
        self._handler = handler = self._make_handler()
        limit.open += 1
        # The transport looks these two up for every read: bound to the handler's own methods,
        # the count costs nothing per request, only per connection.
        self.data_received = handler.data_received  # type: ignore[method-assign]
        self.eof_received = handler.eof_received  # type: ignore[method-assign]
        handler.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._handler is None:  # refused: never counted
            return
        self._limit.open -= 1
        self._handler.connection_lost(exc)

    # Reached only before connection_made has bound the handler's methods, or on an event loop
    # that looks them up once, when the transport is made.
    def data_received(self, data: bytes) -> None:
        if self._handler is not None:
            self._handler.data_received(data)

    def eof_received(self) -> bool | None:
        return None if self._handler is None else self._handler.eof_received()

    def pause_writing(self) -> None:
        if self._handler is not None:
            self._handler.pause_writing()

    def resume_writing(self) -> None:
        if self._handler is not None:
            self._handler.resume_writing()


@dataclass(frozen=True)
class DescriptorPlan:
    """What to do about ``RLIMIT_NOFILE``: the soft limit to ask for, and whether it is enough."""

    soft: int
    enough: bool


def descriptors_needed(server: ServerConfig) -> int:
    """Descriptors the gateway may hold at once with this configuration: client connections, a
    burst of them accepted before being refused, Webapp connections, and the reserve."""
    return server.max_connections + BACKLOG + server.upstream_connections + DESCRIPTOR_RESERVE


def descriptor_plan(
    soft: int, hard: int, needed: int, infinity: int = resource.RLIM_INFINITY
) -> DescriptorPlan:
    """The soft limit to set, given the current limits and the descriptors ``needed``.

    Up to the hard limit, as Go's runtime does (a low soft limit only protects programs that use
    ``select()``, which asyncio does not). Without a hard limit, up to what is needed: an
    infinite soft limit is refused on Linux and macOS alike.
    """
    if soft == infinity:
        return DescriptorPlan(soft, enough=True)
    target = max(soft, needed) if hard == infinity else max(soft, hard)
    return DescriptorPlan(target, enough=target >= needed)


def raise_descriptor_limit(needed: int) -> DescriptorPlan:
    """Raise this process's soft ``RLIMIT_NOFILE`` as :func:`descriptor_plan` says; return the
    limit now in force, and whether it covers ``needed``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    plan = descriptor_plan(soft, hard, needed)
    if plan.soft != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (plan.soft, hard))
        except (ValueError, OSError):
            # Refused (macOS caps it below an infinite hard limit): the current one stays.
            return descriptor_plan(soft, soft, needed)
    return plan


class AcceptErrors:
    """A loop exception handler: failed accepts logged once per :data:`LOG_EVERY` seconds, any
    other context passed to ``previous`` (asyncio's default handler when None).

    asyncio's accept loop tries every backlog slot again after an ``EMFILE`` and reports each
    failure: with the gateway's backlog, a thousand tracebacks per retry.
    """

    def __init__(
        self,
        previous: ExceptionHandler | None,
        connections: ConnectionLimit,
        clock: Clock = time.monotonic,
    ) -> None:
        self._previous = previous
        self._connections = connections
        self._failures = Throttle(LOG_EVERY, clock)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        """Handle one context, as ``loop.set_exception_handler`` expects."""
        if context.get("message") != ACCEPT_FAILED:
            if self._previous is None:
                loop.default_exception_handler(context)
            else:
                self._previous(loop, context)
            return
        count = self._failures.tick()
        if count:
            exc = context.get("exception")
            code = exc.errno if isinstance(exc, OSError) and exc.errno is not None else 0
            log.error(
                "server.accept_failed",
                error=errno.errorcode.get(code, "unknown"),
                failures=count,
                connections=self._connections.open,
            )
