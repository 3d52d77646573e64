"""The listener's HTTP layer: its limits, and the answer to requests aiohttp's parser refuses.

aiohttp answers a request it cannot parse with a plain-text 400 that quotes the offending line (a
client's own ``Authorization`` included) and logs a traceback at ERROR for each one, which any
client can use to flood the log. :class:`GatewayRunner` serves the app through connections that
answer such requests the gateway's way instead: the Webapp's error format, an ``X-Request-ID``,
414 for a request line and 431 for a header field or too many headers, one access event and the
request metric, and no echo of what the client sent.

The line limit aiohttp applies is set one above both the URL and the header limits, so that which
limit a ``LineTooLong`` hit tells a request line (414) from a header field (431). URLs between the
gateway's limit and that one are refused by the app itself (414 too).

The request line and header fields together may not exceed ``server.max_header_section``: each
parsed request is measured (its fields as ``Name: value`` lines), and a head still arriving is
counted as it comes (from the first read that completes no request), since aiohttp alone would
hold any number of fields below its per-field limit while a client dribbles them in (about 1.5 MB
a connection at the default limits). Beyond it: 431, and nothing more is read from that
connection.

A framing error inside a body that is being received (a bad chunk size arriving after the headers)
fails that body at once, so its request gets 400 rather than stalling into a 408. A chunked
request, and one that offers to upgrade to anything but WebSocket (``Upgrade: h2c``, answered as
plain HTTP/1.1), is the last its connection carries: aiohttp's C parser would hand a chunked
body's trailer fields to the next request as its own headers, and drops what was pipelined
behind such an offer (what follows a declined WebSocket offer aiohttp reads on its own). Request
bodies are never decompressed. Both of aiohttp's parsers, C and pure Python, are tested.

What aiohttp sends after the handler has returned (an answer of the gateway's own, the end of a
relayed one) and what a closing connection still has to send get ``GATEWAY_CLIENT_SEND_TIMEOUT``
like every other write, and the connection is aborted beyond it: a graceful close waits for the
client to read, and a client that never reads would hold its connection (and its place under
``GATEWAY_MAX_CONNECTIONS``) forever. On shutdown, idle connections close at once.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_protocol import RequestHandler, _ErrInfo

from .access import Exchange, completed
from .app import GATEWAY, Gateway
from .config import ServerConfig
from .errors import BadRequest, GatewayError, HeadersTooLarge, UriTooLong
from .headers import REQUEST_ID, request_id
from .local import error_response
from .log import log_crash


def handler_args(server: ServerConfig) -> dict[str, Any]:
    """aiohttp's per-connection settings for this configuration."""
    return {
        "max_line_size": line_limit(server),
        "max_field_size": server.max_header,
        "max_headers": server.max_headers,
        # Closes a connection that has no complete request for this long: idle keep-alive
        # connections, and clients that send their headers too slowly (slowloris).
        "keepalive_timeout": server.client_idle_timeout,
        # A client's compressed body passes through as sent, and GATEWAY_MAX_BODY counts the bytes
        # that arrive, not what they would inflate to.
        "auto_decompress": False,
    }


def line_limit(server: ServerConfig) -> int:
    """The request-line limit given to aiohttp: distinct from the header limit by construction."""
    return max(server.max_url, server.max_header) + 1


class HeadTooLarge(BadHttpMessage):
    """The request line and header fields together are longer than the gateway takes."""


# A header field's start. aiohttp's pure-Python parser measures a line that has not ended against
# the request-line limit, whichever line it is; what it quotes of it tells the two apart.
_FIELD = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+:")


def _as_bytes(text: object) -> bytes:
    return text if isinstance(text, bytes) else str(text).encode(errors="replace")


def head_size(message: RawRequestMessage) -> int:
    """The bytes of a request's line and header fields, each field counted as ``Name: value``
    and its line end, as clients write them (a field's own spacing is not kept by the parser)."""
    line = len(message.method) + len(message.path) + 12  # two spaces, HTTP/1.x, CRLF
    fields = sum(len(name) + len(value) + 4 for name, value in message.raw_headers)
    return line + fields + 2


def _last_on_its_connection(message: RawRequestMessage, upgraded: bool) -> bool:
    """Whether nothing after ``message`` may be read from its connection, because aiohttp's C
    parser would get it wrong: it hands the trailer fields of a chunked body to the next
    request as headers of its own, and drops what was pipelined behind an offer to upgrade to
    anything but WebSocket (h2c, say), which would then never be answered."""
    if message.should_close:
        return False
    return message.chunked or (message.upgrade and not upgraded)


def refusal(exc: BaseException | None, status: int, server: ServerConfig) -> GatewayError:
    """The gateway error for a request aiohttp could not parse (``status`` is aiohttp's)."""
    if isinstance(exc, HeadTooLarge):
        return HeadersTooLarge(
            f"The request line and header fields are longer than {server.max_header_section} "
            "bytes together."
        )
    if isinstance(exc, LineTooLong):
        if exc.args[1] == line_limit(server) and not _FIELD.match(_as_bytes(exc.args[0])):
            return UriTooLong(f"The request target is longer than {server.max_url} bytes.")
        return HeadersTooLarge(f"A header name or value is longer than {server.max_header} bytes.")
    if isinstance(exc, BadHttpMessage) and "Too many headers" in exc.message:
        return HeadersTooLarge(f"The request has more than {server.max_headers} header fields.")
    if isinstance(exc, BadHttpMessage) or status < 500:
        return BadRequest(f"The request is not valid HTTP/1.1 ({type(exc).__name__}).")
    return GatewayError("The gateway failed unexpectedly; see its log.")


class _Protocol(RequestHandler):
    """A connection whose parse errors are answered in the gateway's format."""

    __slots__ = ("_body", "_checked", "_gateway", "_head", "_max_head", "_refused")

    def __init__(self, manager: web.Server, gateway: Gateway, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._gateway = gateway
        self._max_head = gateway.config.server.max_header_section
        self._head = 0  # bytes of a head still arriving, as far as they have been counted
        self._body: StreamReader | None = None  # of the last request parsed
        self._checked = 0  # requests parsed and checked (aiohttp's _request_count counts them)
        self._refused = False  # a head too large: nothing more is read

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        # Asked before the bytes are parsed: they may end the body, and are part of it then.
        # Behind an offer to upgrade to WebSocket, aiohttp holds bytes unparsed (and bounded)
        # until the offer is answered; what they hold is measured once parsed.
        in_head = not self._upgraded and (self._body is None or self._body.is_eof())
        parsed = self._request_count
        super().data_received(data)
        self._check_parsed()
        if self._refused or self._request_count > parsed:
            return
        if in_head:
            self._head += len(data)
            if self._head > self._max_head:
                self._refuse_head()

    def _check_parsed(self) -> None:
        """Check the requests aiohttp parsed since the last call: their heads' size, parse
        errors, offers to upgrade."""
        new = self._request_count - self._checked
        if not new:
            return
        self._checked, self._head = self._request_count, 0
        for index in range(len(self._messages) - new, len(self._messages)):
            message, payload = self._messages[index]
            self._body = payload
            if isinstance(message, _ErrInfo):
                # aiohttp queues a parse error as the last message, leaving the body it broke open.
                self._fail_unfinished_bodies()
            elif head_size(message) > self._max_head:
                while len(self._messages) > index:
                    self._messages.pop()
                self._refuse_head()
                return
            elif _last_on_its_connection(message, self._upgraded):
                self._messages[index] = (message._replace(should_close=True), payload)

    def _refuse_head(self) -> None:
        """Answer 431 to a head beyond ``server.max_header_section``, and read no more: aiohttp
        would hold any number of header fields below its per-field limit while they arrive."""
        self._refused = True
        exc = HeadTooLarge(f"{self._max_head} bytes")
        self._messages.append((_ErrInfo(status=431, exc=exc, message=exc.message), EMPTY_PAYLOAD))
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        try:
            return await self._finish_response(request, resp, start_time)
        finally:
            # aiohttp parses what followed a declined WebSocket offer in there, not through
            # data_received.
            self._check_parsed()

    async def _finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        if resp.prepared and resp.keep_alive and not self._close:
            # Streamed by the relay, which has sent it all under its own deadline (or, broken,
            # closed the connection): nothing here waits for the client, no timer is needed.
            return await super().finish_response(request, resp, start_time)
        send_timeout = self._gateway.config.server.client_send_timeout
        try:
            async with asyncio.timeout(send_timeout):
                finished = await super().finish_response(request, resp, start_time)
                if not resp.keep_alive or self._close:  # aiohttp closes the connection next
                    await _drained(self.transport, request)
                return finished
        except TimeoutError:
            if self.transport is not None:
                self.transport.abort()
            return resp, True  # what aiohttp says of a client that went away

    def force_close(self) -> None:
        transport = self.transport
        # Asked before the close: a TLS transport closed twice has no buffer left to ask about.
        unsent = transport if transport is not None and _unsent(transport) else None
        super().force_close()
        if unsent is not None:
            send_timeout = self._gateway.config.server.client_send_timeout
            self._loop.call_later(send_timeout, unsent.abort)  # a no-op once it has closed

    def close(self) -> None:
        # Idle as aiohttp tells it: waiting for a request. A request taken off the queue whose
        # handler has not run yet is not "in progress" for one loop turn, and must be answered.
        waiting = self._waiter is not None and not self._waiter.done()
        super().close()
        if waiting and not self._messages:
            self.force_close()  # idle (shutdown): nothing to finish, and nothing more is read

    def _fail_unfinished_bodies(self) -> None:
        bodies = [payload for _, payload in self._messages]
        if self._current_request is not None:
            bodies.append(self._current_request.content)
        for body in bodies:
            if not body.is_eof() and body.exception() is None:
                error = BadHttpMessage("The request body is not validly framed.")
                body.set_exception(error)
                # A reader that the end of a chunk woke without data waits again without
                # looking at the exception (aiohttp's readany): told again once it waits.
                self._loop.call_soon(body.set_exception, error)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # as aiohttp: too late for an answer, just close
            raise ConnectionError("the response had started already")
        exchange = Exchange(request_id(None), time.perf_counter())
        error = refusal(exc, status, self._gateway.config.server)
        response = error_response(error)
        response.headers[REQUEST_ID] = exchange.request_id
        response.force_close()
        exchange.bytes_out = response.content_length or 0
        exchange.failure = f"unparsable: {type(exc).__name__}"
        # The method and path are unknown: the parser gave up before or while reading them.
        completed(
            self._gateway.metrics,
            exchange,
            method=None,
            raw_path=None,
            status=error.status,
            client=request.remote,
        )
        if exc is not None and not isinstance(exc, BadHttpMessage):  # a bug, not a client error
            log_crash("request.crashed", exc)
        return response


def _unsent(transport: asyncio.BaseTransport) -> bool:
    """Whether an open ``transport`` still holds bytes for the client."""
    return (
        isinstance(transport, asyncio.WriteTransport)
        and not transport.is_closing()
        and transport.get_write_buffer_size() > 0
    )


async def _drained(transport: asyncio.Transport | None, request: web.BaseRequest) -> None:
    """Return once ``transport`` has sent everything it holds."""
    if transport is not None and _unsent(transport):
        transport.set_write_buffer_limits(high=0)  # writing pauses until all of it is out
        await request.writer.drain()


class _Server(web.Server):
    """aiohttp's low-level server, making :class:`_Protocol` connections."""

    gateway: Gateway

    def __call__(self) -> RequestHandler:
        return _Protocol(self, self.gateway, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """An ``AppRunner`` for the gateway app, with the gateway's limits and parse-error answers."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        server = app[GATEWAY].config.server
        # Like nginx (proxy_ignore_client_abort off): a request whose client hangs up stops at
        # once, releasing its Webapp connection and spool file. The default here, so that tests
        # serving the app through this runner see what production does.
        kwargs.setdefault("handler_cancellation", True)
        super().__init__(app, **handler_args(server), **kwargs)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # The same object with the same state; only the connections it makes differ.
        server.__class__ = _Server
        gateway_server = cast(_Server, server)
        gateway_server.gateway = self.app[GATEWAY]
        return gateway_server
