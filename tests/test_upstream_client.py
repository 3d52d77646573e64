"""The gateway's one client session toward the Webapp: what it must never add, keep or follow.

Each test puts a tiny real Webapp (a few-line ``web.Application`` on ``aiohttp_server`` that
records what reaches it) behind a real gateway and counts what arrives where. The Webapp is
addressed as ``localhost``, not ``127.0.0.1``: aiohttp's default cookie jar ignores cookies from
IP addresses, which would hide a gateway that kept the Webapp's cookies.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import http_parser, web
from aiohttp.test_utils import TestClient
from multidict import CIMultiDictProxy
from pytest_aiohttp import AiohttpClient, AiohttpServer

from gateway.app import create_app
from gateway.simulator import Simulator
from gateway.webapp import AUTH_CONNECTIONS

from . import rawhttp
from .conftest import (
    API_KEY,
    MESSAGE,
    PASSWORD,
    GatewayTestServer,
    Logs,
    MakeRig,
    gateway_config,
    until,
)

LOGIN_PATH = "/v1/users/login"
# Paths the gateway sends with the API key: they need no login at the tiny Webapp.
API_KEY_PATHS = ("/v1/health", "/metrics", "/v1/stats/app")
Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]
GatewayClient = TestClient[web.Request, None]  # what aiohttp_client gives for a test server


async def ok(_request: web.Request) -> web.StreamResponse:
    return web.json_response({"meta": {"api_status": "stable"}})


@dataclass(frozen=True)
class Received:
    """One request as it reached the tiny Webapp."""

    method: str
    path_qs: str
    headers: CIMultiDictProxy[str]
    body: bytes


@dataclass
class TinyWebapp:
    """A login that always works, ``answer`` for every other request, and a record of those."""

    answer: Answer = ok
    seen: list[Received] = field(default_factory=list)
    logins: int = 0

    async def _login(self, _request: web.Request) -> web.StreamResponse:
        self.logins += 1
        user = {"token": f"tiny-token-{self.logins}", "expires_after": "2099-01-01 00:00:00+00:00"}
        return web.json_response({"users": [user]})

    async def _any(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(Received(request.method, request.raw_path, request.headers, body))
        return await self.answer(request)

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(LOGIN_PATH, self._login)
        app.router.add_route("*", "/{tail:.*}", self._any)
        return app


async def gateway_before(
    webapp: web.Application,
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
    **env: str,
) -> GatewayClient:
    """A gateway in front of ``webapp`` (served on 127.0.0.1, addressed as ``localhost``)."""
    # What reaches the Webapp is recorded as it arrived, compressed or not.
    server = await aiohttp_server(webapp, host="127.0.0.1", auto_decompress=False)
    config = gateway_config(f"http://localhost:{server.port}", **env)
    return await aiohttp_client(GatewayTestServer(create_app(config)))


@pytest.fixture
async def plain() -> AsyncIterator[aiohttp.ClientSession]:
    """A client that keeps no cookies and decompresses nothing, each request within 10 s."""
    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=10),
    ) as session:
        yield session


def url(client: GatewayClient, path: str) -> str:
    return str(client.make_url(path))


# --- cookies -----------------------------------------------------------------------------


async def test_a_webapp_cookie_reaches_its_client_but_never_goes_back_to_the_webapp(
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
    plain: aiohttp.ClientSession,
) -> None:
    """The gateway keeps no cookie jar: a Set-Cookie on one answer is the client's business
    alone, and never rides along on the gateway's later requests, for that client or any other."""

    async def set_cookie(request: web.Request) -> web.StreamResponse:
        response = await ok(request)
        response.headers.add("Set-Cookie", "session=webapp-secret; Path=/")
        return response

    webapp = TinyWebapp(set_cookie)
    client = await gateway_before(webapp.make_app(), aiohttp_server, aiohttp_client)
    async with plain.get(url(client, "/v1/health")) as response:
        assert response.status == 200
        assert response.headers.getall("Set-Cookie") == ["session=webapp-secret; Path=/"]
    for path in API_KEY_PATHS:
        async with plain.get(url(client, path)) as response:
            assert response.status == 200
    async with plain.post(url(client, "/v1/messages"), json=MESSAGE) as response:
        assert response.status == 200
    async with (
        aiohttp.ClientSession(
            cookie_jar=aiohttp.DummyCookieJar(), timeout=aiohttp.ClientTimeout(total=10)
        ) as other,
        other.get(url(client, "/v1/health"), headers={"Cookie": "mine=1"}) as response,
    ):
        assert response.status == 200
    cookies = [(r.path_qs, r.headers.getall("Cookie", [])) for r in webapp.seen]
    assert cookies == [
        ("/v1/health", []),
        *((path, []) for path in API_KEY_PATHS),
        ("/v1/messages", []),
        ("/v1/health", ["mine=1"]),  # the other client's own cookie, and only that
    ]


# --- redirects ---------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("call", ["GET /v1/health", "POST /v1/messages"])
async def test_a_redirect_from_the_webapp_goes_back_to_the_client_unfollowed(
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
    plain: aiohttp.ClientSession,
    status: int,
    call: str,
) -> None:
    """The client gets the Webapp's redirect (status and Location) as it was; the gateway sends
    the request once and never asks for the redirect's target itself."""
    method, path = call.split()
    location = "/v1/stats/moved-here"

    async def redirect(request: web.Request) -> web.StreamResponse:
        if request.path == location:
            return await ok(request)
        return web.Response(status=status, headers={"Location": location})

    webapp = TinyWebapp(redirect)
    client = await gateway_before(webapp.make_app(), aiohttp_server, aiohttp_client)
    body = MESSAGE if method == "POST" else None
    async with plain.request(
        method, url(client, path), json=body, allow_redirects=False
    ) as response:
        assert response.status == status
        assert response.headers["Location"] == location
    assert [(r.method, r.path_qs) for r in webapp.seen] == [(method, path)]


async def test_a_redirected_login_is_a_failed_login_not_followed(
    aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient, plain: aiohttp.ClientSession
) -> None:
    """aiohttp follows redirects by default, and keeps Basic credentials (and a new password
    in the body) for a target on the same host: the login's answer is read as it is."""
    followed: list[str] = []

    async def moved(_request: web.Request) -> web.StreamResponse:
        return web.Response(status=307, headers={"Location": "/v1/elsewhere"})

    async def elsewhere(request: web.Request) -> web.StreamResponse:
        followed.append(request.headers.get("Authorization", ""))
        return await TinyWebapp()._login(request)

    webapp = web.Application()
    webapp.router.add_post(LOGIN_PATH, moved)
    webapp.router.add_route("*", "/v1/elsewhere", elsewhere)
    client = await gateway_before(webapp, aiohttp_server, aiohttp_client)
    async with plain.post(url(client, "/v1/messages"), json=MESSAGE) as response:
        assert response.status == 503
        assert "307" in json.dumps(await response.json())
    assert followed == []


async def echo_credential(request: web.Request) -> web.StreamResponse:
    """A Webapp that reflects the Authorization it got in every place an answer has."""
    sent = request.headers["Authorization"]
    return web.Response(
        status=401 if request.path == "/v1/echo-401" else 302,
        reason=f"Refused {sent}",
        headers={
            "WWW-Authenticate": f'Bearer error="invalid_token", error_description="{sent}"',
            "Location": f"/v1/elsewhere?auth={sent}",
            "X-Echo": sent,
        },
    )


@pytest.mark.parametrize("path", ["/v1/echo", "/v1/echo-401", "/v1/health"])
async def test_a_credential_the_webapp_echoes_in_its_answers_head_is_masked(
    aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient, path: str
) -> None:
    """The client never had the token or the API key: a Webapp that reflects the Authorization it
    got (in a reason phrase, WWW-Authenticate, a Location) must not hand it over. The 401 is
    replayed with a new token, which is masked as well. Bodies are relayed as they are."""
    webapp = TinyWebapp(echo_credential)
    client = await gateway_before(webapp.make_app(), aiohttp_server, aiohttp_client)
    assert client.port is not None
    raw = await rawhttp.exchange(
        "127.0.0.1",
        client.port,
        f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(),
    )
    head = raw.partition(b"\r\n\r\n")[0].decode("latin-1")
    credentials = [received.headers["Authorization"].split()[1] for received in webapp.seen]
    assert credentials
    assert API_KEY not in head
    assert [credential for credential in credentials if credential in head] == []
    assert head.count("***") == 4  # reason, WWW-Authenticate, Location, X-Echo


# --- proxies from the environment --------------------------------------------------------

PROXY_VARIABLES = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
)


async def test_proxy_settings_in_the_environment_are_ignored(
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
    plain: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A gateway started where HTTP_PROXY and friends are set (for the host's other software)
    still talks to the Webapp directly: its credentials never pass through that proxy."""
    proxied: list[str] = []

    async def proxy(request: web.Request) -> web.StreamResponse:
        proxied.append(f"{request.method} {request.url}")
        return web.Response(text="the proxy answered")

    proxy_app = web.Application()
    proxy_app.router.add_route("*", "/{tail:.*}", proxy)
    proxy_server = await aiohttp_server(proxy_app, host="127.0.0.1")
    proxy_url = f"http://127.0.0.1:{proxy_server.port}"
    for name in PROXY_VARIABLES:
        monkeypatch.setenv(name, proxy_url)
    for name in ("NO_PROXY", "no_proxy"):  # set, but naming neither the Webapp nor 127.0.0.1
        monkeypatch.setenv(name, "elsewhere.invalid")

    webapp = TinyWebapp()
    client = await gateway_before(webapp.make_app(), aiohttp_server, aiohttp_client)
    async with plain.get(url(client, "/v1/health")) as response:
        assert response.status == 200
        assert (await response.json())["meta"]["api_status"] == "stable"
    async with plain.post(url(client, "/v1/messages"), json=MESSAGE) as response:
        assert response.status == 200  # the login went directly to the Webapp too
    assert [r.path_qs for r in webapp.seen] == ["/v1/health", "/v1/messages"]
    assert webapp.logins == 1
    assert proxied == []


# --- headers and bodies as sent ----------------------------------------------------------

# What the Webapp gets for a request whose client sent only Host (and Connection: close).
GATEWAY_HEADERS = [
    "authorization",
    "host",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-request-id",
]


@pytest.mark.parametrize(
    ("request_line", "body", "expected"),
    [
        pytest.param("GET /v1/health HTTP/1.1", b"", GATEWAY_HEADERS, id="get-apikey"),
        pytest.param(
            "POST /v1/messages HTTP/1.1",
            json.dumps(MESSAGE).encode(),
            [*GATEWAY_HEADERS, "content-length"],
            id="post-bearer-no-content-type",
        ),
    ],
)
async def test_the_webapp_gets_no_header_the_client_did_not_send(
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
    request_line: str,
    body: bytes,
    expected: list[str],
) -> None:
    """No User-Agent, Accept, Accept-Encoding or Content-Type of the gateway's own: the Webapp
    sees the client's headers and the ones the gateway is documented to set, nothing more."""
    webapp = TinyWebapp()
    client = await gateway_before(webapp.make_app(), aiohttp_server, aiohttp_client)
    assert client.port is not None
    response = await rawhttp.request("127.0.0.1", client.port, request_line, body=body)
    assert response.status == 200
    (received,) = webapp.seen
    assert sorted(name.lower() for name in received.headers) == sorted(expected)
    assert received.body == body
    assert received.headers["Authorization"].split()[0] in ("Apikey", "Bearer")


async def test_the_clients_own_content_headers_arrive_once_and_unchanged(
    aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient
) -> None:
    webapp = TinyWebapp()
    client = await gateway_before(webapp.make_app(), aiohttp_server, aiohttp_client)
    assert client.port is not None
    own = {
        "User-Agent": "billing-service/2.1",
        "Accept": "application/vnd.example+json",
        "Accept-Encoding": "identity",
        "Content-Type": "application/json; charset=utf-8",
    }
    response = await rawhttp.request(
        "127.0.0.1",
        client.port,
        "POST /v1/messages HTTP/1.1",
        *(f"{name}: {value}" for name, value in own.items()),
        body=json.dumps(MESSAGE).encode(),
    )
    assert response.status == 200
    (received,) = webapp.seen
    assert {name: received.headers.getall(name) for name in own} == {
        name: [value] for name, value in own.items()
    }


WEBAPP_TEXT = b'{"meta": {"api_status": "stable"}, "filler": "' + b"compressible " * 2000 + b'"}'
GZIPPED = gzip.compress(WEBAPP_TEXT, mtime=0)


async def gzipped_with_length(_request: web.Request) -> web.StreamResponse:
    return web.Response(
        body=GZIPPED, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
    )


async def gzipped_chunked(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
    )
    response.enable_chunked_encoding()
    await response.prepare(request)
    for start in range(0, len(GZIPPED), 100):
        await response.write(GZIPPED[start : start + 100])
    await response.write_eof()
    return response


@pytest.mark.parametrize("answer", [gzipped_with_length, gzipped_chunked])
async def test_a_compressed_answer_reaches_the_client_byte_for_byte(
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
    plain: aiohttp.ClientSession,
    answer: Answer,
) -> None:
    """The gateway never decompresses: the client gets the Webapp's gzip bytes and the
    Content-Encoding that says how to read them."""
    webapp = TinyWebapp(answer)
    client = await gateway_before(webapp.make_app(), aiohttp_server, aiohttp_client)
    async with plain.get(url(client, "/v1/health")) as response:
        assert response.status == 200
        assert response.headers["Content-Encoding"] == "gzip"
        raw = await response.read()
    assert raw == GZIPPED
    assert gzip.decompress(raw) == WEBAPP_TEXT


async def test_a_compressed_upload_reaches_the_webapp_byte_for_byte(
    aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient, plain: aiohttp.ClientSession
) -> None:
    """aiohttp's server inflates request bodies unless told not to: the gateway passes them on as
    sent, with the Content-Encoding that says how to read them, even when they are not what they
    claim; and GATEWAY_MAX_BODY counts the bytes that arrive, not what they would inflate to."""
    webapp = TinyWebapp()
    client = await gateway_before(
        webapp.make_app(), aiohttp_server, aiohttp_client, GATEWAY_MAX_BODY="64KiB"
    )
    bomb = gzip.compress(b"0" * (4 << 20), mtime=0)  # 4 MiB once inflated
    bodies = [GZIPPED, bomb, b"not gzip at all"]
    for body in bodies:
        headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
        async with plain.post(url(client, "/v1/messages"), data=body, headers=headers) as answer:
            assert answer.status == 200
    assert [received.body for received in webapp.seen] == bodies
    assert [received.headers["Content-Encoding"] for received in webapp.seen] == ["gzip"] * 3


# --- the rejected answer is let go before the replay -------------------------------------


class PortRecordingSimulator(Simulator):
    """The simulator, also noting the gateway's source port of every request it answers."""

    def __init__(self) -> None:
        super().__init__(password=PASSWORD, password_change_required=False, api_key=API_KEY)
        self.ports: set[int] = set()

    def make_app(self) -> web.Application:
        app = super().make_app()
        app.on_response_prepare.append(self._note_port)
        return app

    async def _note_port(self, request: web.Request, _response: web.StreamResponse) -> None:
        if request.transport is not None:
            self.ports.add(request.transport.get_extra_info("peername")[1])


async def test_revoked_tokens_round_after_round_are_replayed_on_a_bounded_pool(
    make_rig: MakeRig,
) -> None:
    """With one upstream connection for requests, twenty revocations in a row each cost one
    login and one replay, every message is accepted, and the gateway reuses its connections
    rather than leaving rejected answers holding them."""
    sim = PortRecordingSimulator()
    rig = await make_rig(sim=sim, env={"GATEWAY_UPSTREAM_CONNECTIONS": "1"})
    async with rig.client.post("/v1/messages", json=MESSAGE) as response:
        assert response.status == 201
    rounds = 20
    statuses = []
    for _ in range(rounds):
        sim.revoke_all()
        async with asyncio.timeout(10), rig.client.post("/v1/messages", json=MESSAGE) as response:
            statuses.append(response.status)
    assert statuses == [201] * rounds
    assert sim.logins == 1 + rounds
    assert [a.status for a in sim.seen_on("/v1/messages")] == [201] + [401, 201] * rounds
    assert len(sim.ports) <= 1 + AUTH_CONNECTIONS


@dataclass
class RevokingWebapp:
    """A Webapp whose refusals carry a body too large to arrive before the gateway decides to
    replay, and which notes, when each replay arrives, whether a refusal is still being sent."""

    token: str = ""
    logins: int = 0
    refusals_being_sent: int = 0
    refused: set[str] = field(default_factory=set)  # X-Request-IDs
    at_replay: list[int] = field(default_factory=list)

    def revoke(self) -> None:
        self.token = ""

    async def _login(self, _request: web.Request) -> web.StreamResponse:
        self.logins += 1
        self.token = f"revocable-{self.logins}"
        user = {"token": self.token, "expires_after": "2099-01-01 00:00:00+00:00"}
        return web.json_response({"users": [user]})

    async def _message(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        request_id = request.headers.get("X-Request-ID", "")
        if self.token and request.headers.get("Authorization") == f"Bearer {self.token}":
            if request_id in self.refused:  # a replay: the refusal before it must be let go
                with contextlib.suppress(TimeoutError):
                    await until(lambda: self.refusals_being_sent == 0, within=2)
                self.at_replay.append(self.refusals_being_sent)
            return web.json_response({"messages": [{"id": "m"}]}, status=201)
        self.refused.add(request_id)
        return await self._refuse(request)

    async def _refuse(self, request: web.Request) -> web.StreamResponse:
        chunk = b" " * 65536
        response = web.StreamResponse(status=401)
        response.content_length = 64 * 1024 * 1024
        self.refusals_being_sent += 1
        try:
            await response.prepare(request)
            for _ in range(1024):  # blocks once the socket buffers are full, until let go
                await response.write(chunk)
        except ConnectionError:
            pass  # the gateway closed the connection: what it should do
        finally:
            self.refusals_being_sent -= 1
        return response

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(LOGIN_PATH, self._login)
        app.router.add_post("/v1/messages", self._message)
        return app


async def test_a_large_refusal_is_let_go_before_the_request_is_replayed(
    aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient
) -> None:
    """The rejected 401 is released, not left holding its connection (and the Webapp's worker
    sending it) while the gateway logs in and replays."""
    webapp = RevokingWebapp()
    client = await gateway_before(
        webapp.make_app(), aiohttp_server, aiohttp_client, GATEWAY_UPSTREAM_CONNECTIONS="1"
    )
    async with client.post("/v1/messages", json=MESSAGE) as response:
        assert response.status == 201  # logged in: each round below revokes a token in use
    rounds = 5
    statuses = []
    for _ in range(rounds):
        webapp.revoke()
        async with asyncio.timeout(10), client.post("/v1/messages", json=MESSAGE) as response:
            statuses.append(response.status)
    assert statuses == [201] * rounds
    assert webapp.at_replay == [0] * rounds


# --- answers that begin before the upload ends -----------------------------------------------


async def test_a_webapp_that_answers_before_taking_the_whole_upload_still_gets_all_of_it(
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
    plain: aiohttp.ClientSession,
) -> None:
    """The answer's headers end the wait for them; the rest of a spooled body (8 MiB, read slowly
    for longer than GATEWAY_UPSTREAM_TIMEOUT) must still go out whole, and the answer end."""
    received = []

    async def media(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 8
        await response.prepare(request)
        await response.write(b"head")
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
            await asyncio.sleep(0.01)
        received.append(size)
        await response.write(b"tail")
        return response

    webapp = TinyWebapp()
    app = webapp.make_app()
    app.router.add_post("/v1/media", media)
    client = await gateway_before(
        app,
        aiohttp_server,
        aiohttp_client,
        GATEWAY_UPSTREAM_TIMEOUT="1",
        GATEWAY_BODY_MEMORY="1KiB",
    )
    async with plain.post(url(client, "/v1/media"), data=io.BytesIO(b"x" * (8 << 20))) as answer:
        assert answer.status == 200
        assert await answer.read() == b"headtail"
    assert received == [8 << 20]


Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_server(serve: Serve) -> AsyncIterator[str]:
    """A Webapp that speaks raw bytes: ``serve`` has each connection, closed after it (quietly
    when the gateway hangs up first); its URL."""

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await serve(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(connection, "127.0.0.1", 0)
    async with server:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


def raw_webapp(answer: bytes) -> contextlib.AbstractAsyncContextManager[str]:
    """A Webapp that answers every request with ``answer``, byte for byte; its URL."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while head := await reader.readuntil(b"\r\n\r\n"):
            lengths = [
                int(line.partition(b":")[2])
                for line in head.lower().split(b"\r\n")
                if line.startswith(b"content-length:")
            ]
            await reader.readexactly(sum(lengths))
            writer.write(answer)
            await writer.drain()

    return raw_server(serve)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nX-Odd: a\x01b\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nX-Odd: a\x7fb\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.1 200 O\x01K\r\nContent-Length: 2\r\n\r\nhi",
    ],
    ids=["control-in-value", "del-in-value", "control-in-reason"],
)
async def test_a_control_character_from_the_webapp_is_dropped_not_a_crash(
    aiohttp_client: AiohttpClient, logs: Logs, answer: bytes
) -> None:
    """aiohttp's parser takes control characters in a header value or the reason phrase, its
    writer refuses them: the field is dropped, the reason is the standard one."""
    async with raw_webapp(answer) as url:
        client = await aiohttp_client(GatewayTestServer(create_app(gateway_config(url))))
        async with client.get("/v1/health") as response:  # the API key: no login needed
            assert (response.status, response.reason) == (200, "OK")
            assert "X-Odd" not in response.headers
            assert await response.read() == b"hi"
    assert not logs.named("request.crashed")


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi", {}),
        (b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n", {}),
        (
            b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/plain\r\n"
            b"Content-Length: 2\r\n\r\nhi",
            {"Server": "nginx", "Content-Type": "text/plain"},
        ),
    ],
    ids=["length", "chunked", "both-sent"],
)
async def test_the_webapps_answer_gets_no_server_or_content_type_it_did_not_send(
    aiohttp_client: AiohttpClient, answer: bytes, expected: dict[str, str]
) -> None:
    """aiohttp would add its own Server (with its version) and a Content-Type of
    application/octet-stream; the gateway's own answers name no Server either."""
    async with raw_webapp(answer) as webapp_url:
        client = await aiohttp_client(GatewayTestServer(create_app(gateway_config(webapp_url))))
        async with client.get("/v1/health") as response:  # the API key: no login needed
            assert await response.read() == b"hi"
            sent = {name: response.headers.get(name) for name in ("Server", "Content-Type")}
        async with client.get("/_gateway/healthz") as own:
            assert own.status == 200
            assert "Server" not in own.headers
    assert {name: value for name, value in sent.items() if value is not None} == expected


RESPONSE_PARSERS = {"c": http_parser.HttpResponseParser, "python": http_parser.HttpResponseParserPy}
CHUNKS = b"2\r\nhi\r\n0\r\n\r\n"


@pytest.fixture(params=list(RESPONSE_PARSERS))
def response_parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The gateway's client reads the Webapp's answers with aiohttp's C parser (when built), and
    with its pure-Python one."""
    name: str = request.param
    monkeypatch.setattr(aiohttp.client_proto, "HttpResponseParser", RESPONSE_PARSERS[name])
    return name


@pytest.mark.usefixtures("response_parser")
@pytest.mark.parametrize(
    ("framing", "body"),
    [
        (b"Transfer-Encoding: gzip, chunked", CHUNKS),
        (b"Transfer-Encoding: gzip", b"hi"),
        (b"Transfer-Encoding: chunked, chunked", CHUNKS),
        (b"Content-Length: 0\r\nX-A: b\r\nContent-Length: 2", b"hi"),
    ],
    ids=["gzip-chunked", "gzip", "chunked-twice", "lengths-that-disagree"],
)
async def test_an_answer_framed_in_a_way_the_gateway_cannot_pass_on_is_a_502(
    aiohttp_client: AiohttpClient, logs: Logs, framing: bytes, body: bytes
) -> None:
    """aiohttp undoes only the chunks: relayed, the client would get gzip bytes framed as chunks
    and nothing saying they are compressed; and its pure-Python parser takes one of two lengths
    that disagree, both of which would reach the client. nginx answers 502 too."""
    answer = b"HTTP/1.1 200 OK\r\n" + framing + b"\r\n\r\n" + body
    async with raw_webapp(answer) as webapp_url:
        client = await aiohttp_client(GatewayTestServer(create_app(gateway_config(webapp_url))))
        async with client.get("/v1/health") as response:  # the API key: no login needed
            assert response.status == 502
            (error,) = (await response.json())["errors"]
    assert error["code"] == 1014
    (event,) = logs.named("request.completed")
    assert event["failure"] == "invalid_response"


@pytest.mark.usefixtures("response_parser")
@pytest.mark.parametrize(
    "field",
    [
        b"Content-Length : 2",
        b"Transfer-Encoding : chunked",
        b"Content-Length: 2\r\nConnection : close",
        b"Content-Length: 2\r\nX-A : b",
    ],
    ids=["length", "transfer-encoding", "connection", "any"],
)
async def test_a_field_name_that_is_not_a_token_never_reaches_the_client(
    aiohttp_client: AiohttpClient, field: bytes
) -> None:
    """aiohttp's C parser keeps "Content-Length " as a name of its own: it reached the client
    beside the gateway's chunked framing, two framings for a front proxy that trims the space.
    Either the parser refuses the answer (502), or the field is dropped."""
    body = CHUNKS if b"chunked" in field else b"hi"
    async with raw_webapp(b"HTTP/1.1 200 OK\r\n" + field + b"\r\n\r\n" + body) as webapp_url:
        client = await aiohttp_client(GatewayTestServer(create_app(gateway_config(webapp_url))))
        assert client.port is not None
        request = b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        raw = await rawhttp.exchange("127.0.0.1", client.port, request)
    head = raw.partition(b"\r\n\r\n")[0]
    assert rawhttp.parse(raw).status in (200, 502)
    assert [line for line in head.split(b"\r\n")[1:] if b" :" in line or b"\t:" in line] == []


@pytest.mark.usefixtures("response_parser")
@pytest.mark.parametrize(
    "stray",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstray",
        b"HTTP/1.1 299 Stray\r\nX-Stray: ",
    ],
    ids=["a-whole-answer", "the-start-of-one"],
)
async def test_bytes_a_pooled_connection_got_while_idle_never_answer_the_next_request(
    aiohttp_client: AiohttpClient, stray: bytes
) -> None:
    """A Webapp that sends more after a complete answer (a body after its 204): aiohttp would
    read a whole answer as the answer to the next request on the connection, another client's;
    the gateway opens a new connection instead. (The start of an answer aiohttp drops with the
    parser it makes afresh for each request.)"""
    stray_sent = asyncio.Event()
    user = {"token": "t", "expires_after": "2099-01-01 00:00:00+00:00"}
    login = json.dumps({"users": [user]}).encode()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while head := await reader.readuntil(b"\r\n\r\n"):
            if not head.startswith(b"GET /v1/health "):  # the pool's one login, at start
                await reader.readexactly(int(head.lower().split(b"content-length:")[1]))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(login))
                writer.write(login)
                continue
            if stray_sent.is_set():
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nmine")
                continue
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.1)  # the gateway has put the connection back by then
            writer.write(stray)
            await writer.drain()
            stray_sent.set()

    async with raw_server(serve) as webapp_url:
        client = await aiohttp_client(GatewayTestServer(create_app(gateway_config(webapp_url))))
        async with client.get("/v1/health") as first:  # the API key: no login needed
            assert first.status == 204
        await stray_sent.wait()
        await asyncio.sleep(0.05)  # and the stray bytes have reached it
        answers = []
        for _ in range(2):
            async with client.get("/v1/health") as answer:
                answers.append((answer.status, await answer.read()))
    assert answers == [(200, b"mine")] * 2


async def test_an_http10_client_gets_a_body_of_unknown_length_ended_by_the_close(
    aiohttp_client: AiohttpClient,
) -> None:
    """HTTP/1.0 has no chunked encoding: a Webapp answer without a length reaches an HTTP/1.0
    client as a body that ends when the connection does, so the gateway closes it at once,
    keep-alive asked for or not (it used to wait for GATEWAY_CLIENT_IDLE_TIMEOUT)."""
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    async with raw_webapp(chunked) as url:
        config = gateway_config(url, GATEWAY_CLIENT_IDLE_TIMEOUT="30")
        client = await aiohttp_client(GatewayTestServer(create_app(config)))
        request = b"GET /v1/health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
        raw = await rawhttp.exchange("127.0.0.1", client.port, request, timeout=5)
    answer = rawhttp.parse(raw)
    assert (answer.status, answer.body) == (200, b"hello")
    assert "content-length" not in answer.headers
