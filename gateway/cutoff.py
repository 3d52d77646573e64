"""Response bodies whose Webapp connection closed before they ended: failed, never waited on.

aiohttp's C parser (3.14) drops a response whose chunked framing breaks mid-body (a chunk size
that is not hex, a chunk longer or shorter than it said) by closing the connection, but never
fails the body's stream: ``readany()`` then waits until ``GATEWAY_UPSTREAM_IDLE_TIMEOUT`` for
bytes that cannot come, holding a client and a Webapp slot, and one called after the close raises
a bare ``RuntimeError``. Its pure-Python parser (``AIOHTTP_NO_EXTENSIONS``) fails the stream
itself, but with an ``HttpProcessingError``, which is no ``aiohttp.ClientError``. :class:`CutWatch`
fails the stream on the close, and :func:`next_chunk` turns both exceptions into the
``ClientPayloadError`` of a body cut short, so the client sees its broken answer at once and the
failure is counted as a cut.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.http_exceptions import HttpProcessingError

CUT = "The Webapp's connection closed before the response body ended."


class CutWatch:
    """Fails the body being read from a Webapp connection when that connection closes."""

    def __init__(self) -> None:
        # One close callback per connection, whatever the number of answers it carries: a
        # callback per answer would pile up on a keep-alive connection.
        self._watched: weakref.WeakSet[ResponseHandler] = weakref.WeakSet()
        self._reading: dict[ResponseHandler, aiohttp.StreamReader] = {}

    @contextmanager
    def reading(self, answer: aiohttp.ClientResponse) -> Iterator[None]:
        """While the body of ``answer`` is read, fail it if its connection closes first."""
        connection = answer.connection
        protocol = connection.protocol if connection is not None else None
        closed = protocol.closed if protocol is not None else None
        if protocol is None or closed is None:  # the whole body is here, or the close came
            yield
            return
        if protocol not in self._watched:
            self._watched.add(protocol)
            closed.add_done_callback(partial(self._closed, protocol))
        content = self._reading[protocol] = answer.content
        try:
            yield
        finally:
            # aiohttp returns the connection to the pool once the body is in, which can be
            # before the last of it reached a slow client: by now the entry may be another
            # answer's, on the same connection, and is left to it.
            if self._reading.get(protocol) is content:
                del self._reading[protocol]

    def _closed(self, protocol: ResponseHandler, closed: asyncio.Future[None]) -> None:
        if not closed.cancelled():
            closed.exception()  # retrieved, so that asyncio does not log it as forgotten
        content = self._reading.pop(protocol, None)
        if content is not None and not content.is_eof() and content.exception() is None:
            content.set_exception(aiohttp.ClientPayloadError(CUT))


async def next_chunk(content: aiohttp.StreamReader) -> bytes:
    """The next part of a response body; ``b""`` at its end.

    Raises :class:`aiohttp.ClientPayloadError` for a body cut short, also when the close was
    noticed before :class:`CutWatch` heard of it (aiohttp raises ``RuntimeError`` then), and for
    framing that aiohttp's pure-Python parser refused.
    """
    try:
        return await content.readany()
    except HttpProcessingError as exc:  # the pure-Python parser's verdict on the framing
        raise aiohttp.ClientPayloadError(CUT) from exc
    except RuntimeError as exc:
        if str(exc) != _CLOSED:
            raise  # a misuse (two readers at once), not the Webapp's doing: let it surface
        raise aiohttp.ClientPayloadError(CUT) from exc


_CLOSED = "Connection closed."  # aiohttp's words for a read from a connection already gone
