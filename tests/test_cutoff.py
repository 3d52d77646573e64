"""A response whose chunked framing breaks mid-body: the client sees a broken answer at once.

aiohttp's C parser closes such a connection without failing the body's stream, its pure-Python
parser fails it with an exception no handler expected (see :mod:`gateway.cutoff`). These tests
put a Webapp that writes raw bytes behind a real gateway, with each parser, and check that the
answer is cut, counted as a cut (not as a silence that outlasted
``GATEWAY_UPSTREAM_IDLE_TIMEOUT``, set far beyond the test's bound here), reached the Webapp once,
and that the next request is served on a fresh connection.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import aiohttp.client_proto
import pytest
from aiohttp import http_parser, web
from aiohttp.client_proto import ResponseHandler
from aiohttp.http_exceptions import TransferEncodingError
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from gateway.app import GATEWAY, create_app
from gateway.cutoff import CutWatch, next_chunk

from .conftest import GatewayTestServer, Logs, gateway_config

HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
GOOD_TAIL = b"0\r\n\r\n"
BROKEN_TAILS = {
    "size-not-hex": b"zz\r\n",
    "chunk-longer-than-its-size": b"4\r\nhello\r\n0\r\n\r\n",
    "chunk-without-its-crlf": b"5\r\nhelloXX5\r\nhello\r\n",
}
LOGIN = json.dumps(
    {"users": [{"token": "raw-token", "expires_after": "2099-01-01 00:00:00+00:00"}]}
).encode()
BOUND = aiohttp.ClientTimeout(total=20)
GatewayClient = TestClient[web.Request, web.Application]


@dataclass
class RawWebapp:
    """Answers logins properly and every other request with ``HEAD``, a pause, then ``tail``."""

    tail: bytes
    port: int = 0
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.lower().split(b"\r\n")
                        if line.startswith(b"content-length:")
                    ),
                    0,
                )
                await reader.readexactly(length)
                if head.startswith(b"POST /v1/users/login "):
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(LOGIN), LOGIN)
                    )
                    continue
                self.requests.append(head.split(b"\r\n", 1)[0])
                writer.write(HEAD)
                await writer.drain()
                await asyncio.sleep(0.05)  # the head and the tail arrive apart, as mid-body
                writer.write(self.tail)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


PARSERS = {"c": http_parser.HttpResponseParser, "python": http_parser.HttpResponseParserPy}


@pytest.fixture(params=list(PARSERS))
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test once with the parser aiohttp picks (C, when built) and once with its pure-Python
    one (``AIOHTTP_NO_EXTENSIONS``): the gateway's client parses with it."""
    name: str = request.param
    monkeypatch.setattr(aiohttp.client_proto, "HttpResponseParser", PARSERS[name])
    return name


@pytest.fixture
async def raw_webapp(parser: str) -> AsyncIterator[RawWebapp]:
    webapp = RawWebapp(GOOD_TAIL)
    server = await asyncio.start_server(webapp.serve, "127.0.0.1", 0)
    webapp.port = server.sockets[0].getsockname()[1]
    async with server:
        yield webapp


async def gateway_for(webapp: RawWebapp, aiohttp_client: AiohttpClient) -> GatewayClient:
    # A silence far beyond BOUND: a cut that waited for it would fail the test, not pass slowly.
    url = f"http://127.0.0.1:{webapp.port}"
    config = gateway_config(url, GATEWAY_UPSTREAM_IDLE_TIMEOUT="600")
    return await aiohttp_client(GatewayTestServer(create_app(config)))


async def download(client: GatewayClient) -> tuple[bytes, bool]:
    """The bytes received, and whether the answer ended properly."""
    received = b""
    try:
        async with client.get("/v1/media/x", timeout=BOUND) as response:
            assert response.status == 200
            async for chunk in response.content.iter_any():
                received += chunk
    except aiohttp.ClientPayloadError:
        return received, False
    return received, True


@pytest.mark.parametrize("tail", list(BROKEN_TAILS.values()), ids=list(BROKEN_TAILS))
async def test_a_chunk_that_breaks_mid_body_cuts_the_answer_at_once(
    raw_webapp: RawWebapp, aiohttp_client: AiohttpClient, logs: Logs, tail: bytes
) -> None:
    raw_webapp.tail = tail
    client = await gateway_for(raw_webapp, aiohttp_client)
    received, complete = await download(client)
    assert not complete
    assert received.startswith(b"hello")
    [completed] = logs.named("request.completed")
    assert completed["failure"] == "upstream_cut"  # not upstream_timeout: nobody waited
    registry = client.app[GATEWAY].metrics.registry
    assert registry.get_sample_value("wa_gateway_upstream_errors_total", {"kind": "cut"}) == 1
    assert not [e for e in logs.events if e.get("level") == "error"]
    assert raw_webapp.requests == [b"GET /v1/media/x HTTP/1.1"]  # sent once, never resent

    raw_webapp.tail = GOOD_TAIL
    assert await download(client) == (b"hello", True)
    assert raw_webapp.connections >= 2  # the broken connection was not reused


async def test_many_answers_on_one_connection_end_whole(
    raw_webapp: RawWebapp, aiohttp_client: AiohttpClient, logs: Logs
) -> None:
    """Watching for cuts leaves sound answers alone, answer after answer on a kept-alive
    connection."""
    client = await gateway_for(raw_webapp, aiohttp_client)
    for _ in range(50):
        assert await download(client) == (b"hello", True)
    assert raw_webapp.connections == 1
    assert {e["failure"] for e in logs.named("request.completed")} == {None}


class _Gone(asyncio.Protocol):
    """What a body stream's protocol says once its connection is gone."""

    connected = False
    _reading_paused = False

    def resume_reading(self, resume_parser: bool = True) -> None: ...

    def pause_reading(self) -> None: ...


def answer_on(protocol: ResponseHandler, stream: aiohttp.StreamReader) -> aiohttp.ClientResponse:
    """A stand-in for a response being read on ``protocol``: what CutWatch looks at."""

    class Connection:
        def __init__(self) -> None:
            self.protocol = protocol

    class Answer:
        connection = Connection()
        content = stream

    return Answer()  # type: ignore[return-value]  # only .connection.protocol and .content


async def test_a_relay_that_ends_late_leaves_the_next_answer_on_its_connection_watched() -> None:
    """aiohttp gives the connection back once a body is in, possibly before the relay has sent
    the last of it to a slow client; the answer read next on that connection stays watched."""
    loop = asyncio.get_running_loop()
    protocol = ResponseHandler(loop)
    first = aiohttp.StreamReader(_Gone(), 2**16, loop=loop)  # type: ignore[arg-type]  # a stand-in protocol
    second = aiohttp.StreamReader(_Gone(), 2**16, loop=loop)  # type: ignore[arg-type]  # a stand-in protocol
    cuts = CutWatch()
    with cuts.reading(answer_on(protocol, first)):
        first.feed_eof()
        reading_second = cuts.reading(answer_on(protocol, second))
        reading_second.__enter__()
    protocol.connection_lost(None)
    await asyncio.sleep(0)  # the close's callbacks run
    assert isinstance(second.exception(), aiohttp.ClientPayloadError)
    assert first.exception() is None  # it had ended whole
    reading_second.__exit__(None, None, None)


async def test_framing_refused_by_the_python_parser_is_a_cut() -> None:
    stream = aiohttp.StreamReader(_Gone(), 2**16, loop=asyncio.get_running_loop())  # type: ignore[arg-type]  # a stand-in protocol
    stream.set_exception(
        TransferEncodingError("Not enough data to satisfy transfer length header.")
    )
    with pytest.raises(aiohttp.ClientPayloadError):
        await next_chunk(stream)


async def test_a_read_after_the_close_is_a_cut_not_a_crash() -> None:
    """aiohttp raises RuntimeError for a read from a connection already closed (before the cut
    watch heard of it); the relay must see the cut it is."""
    stream = aiohttp.StreamReader(_Gone(), 2**16, loop=asyncio.get_running_loop())  # type: ignore[arg-type]  # a stand-in protocol
    with pytest.raises(aiohttp.ClientPayloadError):
        await next_chunk(stream)
