"""Forwarding one request: credential in, send, on 401 invalidate and replay once, stream back.

The body is received whole first (see :mod:`gateway.body`), so the replay sends exactly the same
bytes. A 401 means the Webapp refused before acting, so the replay is safe for every method. No
other resend happens here: after a connection error or timeout the client gets 502 or 504, since
a ``POST /v1/messages`` that may have reached the Webapp must not be sent twice. (aiohttp itself
resends an idempotent request once when a pooled keep-alive connection turns out to be closed.)
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp
import structlog
from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from multidict import CIMultiDict

from .access import Exchange
from .bearer import Token
from .body import ReplayableBody, check_declared_size
from .config import ServerConfig
from .cutoff import next_chunk
from .deadlines import extend
from .errors import BadFraming, GatewayError
from .headers import downstream_headers, masked, sendable, upstream_headers
from .metrics import Metrics
from .policy import Action, Target
from .responses import StreamResponse
from .secret import Secret
from .tokens import TokenPool
from .verdicts import token_verdict, translate
from .webapp import Webapp

log = structlog.get_logger("gateway.forward")

_NO_BODY = ReplayableBody(b"", None, 0)


# The most a single write hands the client before the deadline moves again: aiohttp waits for
# the client once its writes since the last wait pass 64 KiB.
SLICE = 64 * 1024


def _slices(chunk: bytes) -> tuple[bytes, ...] | list[memoryview]:
    if len(chunk) <= SLICE:
        return (chunk,)  # the usual case: no view, no copy, no generator
    view = memoryview(chunk)
    return [view[start : start + SLICE] for start in range(0, len(chunk), SLICE)]


def _expects_continue(request: web.Request) -> bool:
    return request.headers.get(hdrs.EXPECT, "").strip().lower() == "100-continue"


@dataclass(frozen=True)
class Forwarder:
    """Sends requests that passed the policy to the Webapp with the right credential."""

    webapp: Webapp
    pool: TokenPool
    metrics: Metrics
    server: ServerConfig
    api_key: Secret | None

    async def __call__(
        self, request: web.Request, target: Target, exchange: Exchange
    ) -> web.StreamResponse:
        """Forward ``request`` and stream the Webapp's answer back."""
        # Everything the client sent is checked before its body is received or a token awaited.
        headers = upstream_headers(
            request.headers,
            request_id=exchange.request_id,
            client=request.remote,
            scheme=request.scheme,
        )
        check_declared_size(request.content_length, self.server.max_body)
        api_key = self.api_key if target.action is Action.FORWARD_APIKEY else None
        if api_key is None:  # a request bound for a 503 is not worth receiving a body for
            self.pool.raise_if_unavailable(self.webapp.account)
        body = await self._receive(request)
        exchange.bytes_in = body.size
        try:
            if request.body_exists:
                headers["Content-Length"] = str(body.size)
            token: Token | None = None
            if api_key is not None:
                headers["Authorization"] = f"Apikey {api_key.reveal()}"
            else:
                token = await self.pool.token(self.webapp.account)
                headers["Authorization"] = token.authorization()
            async with self.webapp.slots:
                answer = await self._send(request.method, target, headers, body, exchange)
                if token is None or answer.status != 401:
                    return await self._relay(request, answer, exchange, token)
                answer.release()
            # Between the two, no slot: the login for the new token may take long.
            token = await self._replacement(token)
            headers["Authorization"] = token.authorization()
            exchange.retried = True
            async with self.webapp.slots:
                answer = await self._send(request.method, target, headers, body, exchange)
                return await self._relay(request, answer, exchange, token)
        finally:
            body.close()

    async def _receive(self, request: web.Request) -> ReplayableBody:
        if not request.body_exists:
            return _NO_BODY
        if request.version >= HttpVersion11 and _expects_continue(request):
            # Only now, when the body is wanted: a refused request got its final answer instead.
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            return await ReplayableBody.receive(
                request.content.iter_any(),
                max_size=self.server.max_body,
                memory_limit=self.server.body_memory,
                spool_dir=self.server.spool_dir,
                idle_timeout=self.server.client_body_timeout,
                min_rate=self.server.client_body_min_rate,
            )
        # A broken chunked encoding, say (the pure-Python parser's failures arrive wrapped).
        except (HttpProcessingError, RequestPayloadError):
            raise BadFraming("The request body is not validly framed.") from None

    async def _replacement(self, rejected: Token) -> Token:
        self.pool.invalidate(self.webapp.account, rejected)
        token = await self.pool.token(self.webapp.account)
        self.metrics.replays.inc()
        log.info(
            "request.replay",
            rejected=rejected.fingerprint,
            rejected_generation=rejected.generation,
            fingerprint=token.fingerprint,
            generation=token.generation,
        )
        return token

    async def _send(
        self,
        method: str,
        target: Target,
        headers: CIMultiDict[str],
        body: ReplayableBody,
        exchange: Exchange,
    ) -> aiohttp.ClientResponse:
        started = time.perf_counter()
        try:
            return await self.webapp.send(method, target.path_qs, headers, body.payload() or None)
        except GatewayError as exc:
            self.metrics.upstream_errors.labels(exc.kind).inc()
            raise
        finally:
            elapsed = time.perf_counter() - started
            exchange.upstream_ms += elapsed * 1000
            self.metrics.upstream_seconds.observe(elapsed)

    async def _relay(
        self,
        request: web.Request,
        answer: aiohttp.ClientResponse,
        exchange: Exchange,
        token: Token | None,
    ) -> web.StreamResponse:
        """Stream ``answer`` back, having told the pool whether the Webapp accepted ``token``."""
        if token is not None and (accepted := token_verdict(answer.status)) is not None:
            self.pool.report(self.webapp.account, token, accepted=accepted)
        # What the Webapp got: the token, else (on the API-key paths) the key.
        sent = token.value if token is not None else self.api_key
        credential = None if sent is None else sent.reveal()
        reason = answer.reason
        if reason is not None:  # None: the standard phrase, as for one aiohttp cannot send
            reason = masked(reason, credential) if sendable(reason) else None
        response = StreamResponse(
            status=answer.status,
            reason=reason,
            headers=downstream_headers(
                answer.headers, request_id=exchange.request_id, credential=credential
            ),
        )
        if request.version < HttpVersion11 and hdrs.CONTENT_LENGTH not in response.headers:
            # HTTP/1.0 has no chunks: such a body ends at the close, which aiohttp would not
            # make (it keeps the connection open, and says nothing of it to the client).
            response.force_close()
        limits = self.server
        loop = asyncio.get_running_loop()
        idle, send = limits.upstream_idle_timeout, limits.client_send_timeout
        waiting_for = "client"
        try:
            # One deadline, moved before every wait: the Webapp may stay silent for
            # upstream_idle_timeout, the client may stop reading for client_send_timeout.
            async with asyncio.timeout_at(loop.time() + send) as deadline:
                await response.prepare(request)
                exchange.streaming = response
                with self.webapp.cuts.reading(answer):
                    while True:
                        waiting_for = "webapp"
                        extend(deadline, loop.time() + idle, idle)
                        chunk = await next_chunk(answer.content)
                        if not chunk:
                            break
                        waiting_for = "client"
                        # A write waits for the client to take all but the transport's low-water
                        # mark: in slices, a client that reads slowly but steadily keeps moving
                        # the deadline, and only one that stops reading meets it.
                        for piece in _slices(chunk):
                            extend(deadline, loop.time() + send, send)
                            await response.write(piece)
                            exchange.bytes_out += len(piece)
                waiting_for = "client"
                extend(deadline, loop.time() + send, send)
                await response.write_eof()  # the last chunk of a chunked answer may wait too
        except (aiohttp.ClientError, ConnectionError, TimeoutError) as exc:
            self._broken(request, exchange, waiting_for, exc)
        finally:
            answer.release()
        return response

    def _broken(
        self, request: web.Request, exchange: Exchange, waiting_for: str, exc: BaseException
    ) -> None:
        if waiting_for == "webapp":
            cut = isinstance(exc, aiohttp.ClientPayloadError)
            kind = "cut" if cut else translate(exc).kind
            self.metrics.upstream_errors.labels(kind).inc()
            exchange.failure = f"upstream_{kind}"
        elif isinstance(exc, TimeoutError):
            exchange.failure = "client_send_timeout"
        else:
            exchange.failure = "client_disconnected"
        if waiting_for == "client" and request.transport is not None:
            # A plain close would wait to flush what is buffered for a client that reads nothing,
            # keeping its socket and buffers for as long as it likes: reset it instead.
            request.transport.abort()
        # The status line is gone already: a broken connection is the only honest signal left.
        request.protocol.force_close()
