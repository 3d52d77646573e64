"""The listener's connection limit, the descriptor limit, and the quieted accept errors.

The limit is tested on real 127.0.0.1 sockets through ``serve()`` in the test's loop, plain and
with TLS; the descriptor decision and the log throttling as pure code with a fake clock; and the
whole, with a low ``RLIMIT_NOFILE``, on a gateway process (the audit's reproduction among them).
Every assertion is about counts (connections, requests, events), never about how long a thing took.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import resource
import socket
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from pytest_aiohttp import AiohttpServer

from gateway.config import Config
from gateway.connections import (
    ACCEPT_FAILED,
    BACKLOG,
    DESCRIPTOR_RESERVE,
    AcceptErrors,
    ConnectionLimit,
    DescriptorPlan,
    Throttle,
    descriptor_plan,
    descriptors_needed,
)
from gateway.simulator import Simulator

from .conftest import MESSAGE, Logs, Scrape, gateway_config
from .processes import GatewayProcess, free_port, gateway_env, running_gateway, start_simulator
from .rawhttp import LOCALHOST, Connection, parse
from .test_tls import serving

WAIT = 10.0  # the most any single step below may take
INF = resource.RLIM_INFINITY
# Long enough that any connection the gateway closes during a test was refused, not timed out.
IDLE = "60"
BODY = json.dumps(MESSAGE).encode()
POST = (
    b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(BODY), BODY)
)
HEALTH = b"GET /_gateway/healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def post_raw(port: int) -> bytes:
    """POST a message on a new connection; everything the gateway sent before it closed."""
    async with Connection(port, timeout=WAIT) as conn:
        await conn.send(POST)
        return await conn.read_rest()


async def post_until_served(port: int) -> tuple[int, int]:
    """POST on new connections until one gets an answer; its status, and how many were refused
    first (a connection that just closed is released when the gateway notices it)."""
    refused = 0
    async with asyncio.timeout(WAIT):
        while not (raw := await post_raw(port)):
            refused += 1
            await asyncio.sleep(0.01)
    return parse(raw).status, refused


@contextlib.asynccontextmanager
async def held(port: int, count: int) -> AsyncIterator[list[Connection]]:
    """``count`` keep-alive connections, each known to be served (a health check answered)."""
    async with contextlib.AsyncExitStack() as stack:
        connections = []
        for _ in range(count):
            conn = await stack.enter_async_context(Connection(port, timeout=WAIT))
            await conn.send(HEALTH)
            assert (await conn.response()).status == 200
            connections.append(conn)
        yield connections


async def metrics_of(conn: Connection) -> str:
    """The gateway's metrics, asked for on an open connection."""
    await conn.send(b"GET /_gateway/metrics HTTP/1.1\r\nHost: gateway\r\n\r\n")
    return (await conn.response()).body.decode()


# --- the limit on a plain listener ----------------------------------------------------------------


async def test_a_connection_beyond_the_limit_is_closed_unanswered_until_one_closes(
    aiohttp_server: AiohttpServer, logs: Logs
) -> None:
    """With 5 connections open and a limit of 5, a 6th is closed without an answer and its request
    never reaches the Webapp; once one of the 5 closes, a new connection is served."""
    sim, webapp_url = await start_simulator(aiohttp_server)
    config = gateway_config(
        webapp_url,
        GATEWAY_LISTEN="127.0.0.1:0",
        GATEWAY_MAX_CONNECTIONS="5",
        GATEWAY_CLIENT_IDLE_TIMEOUT=IDLE,
    )
    async with serving(config) as url:
        port = port_of(url)
        async with held(port, 5) as idle:
            assert await post_raw(port) == b""
            assert sim.seen_on("/v1/messages") == []
            idle[0].abort()
            status, refused = await post_until_served(port)
            assert status == 201
            metrics = await metrics_of(idle[1])
    assert "wa_gateway_client_connections 4.0" in metrics  # the one asking included
    assert f"wa_gateway_client_connections_refused_total {1 + refused}.0" in metrics
    assert len(sim.seen_on("/v1/messages")) == 1  # none of the refused requests
    full = logs.named("server.connections_full")
    assert full[0]["refused"] == 1
    assert full[0]["limit"] == 5
    assert full[0]["setting"] == "GATEWAY_MAX_CONNECTIONS"
    # A refused connection never became a request: 5 health checks, the message, the metrics.
    paths = sorted(event["path"] for event in logs.named("request.completed"))
    assert paths == ["/_gateway/healthz"] * 5 + ["/_gateway/metrics", "/v1/messages"]


async def test_connections_within_the_limit_are_all_served(
    aiohttp_server: AiohttpServer, logs: Logs
) -> None:
    """The limit counts connections, not requests: 5 connections at a limit of 5 each serve
    several requests, and nothing is refused."""
    _, webapp_url = await start_simulator(aiohttp_server)
    config = gateway_config(webapp_url, GATEWAY_LISTEN="127.0.0.1:0", GATEWAY_MAX_CONNECTIONS="5")
    async with serving(config) as url, held(port_of(url), 5) as connections:
        for conn in connections * 3:
            await conn.send(HEALTH)
            assert (await conn.response()).status == 200
    assert len(logs.named("request.completed")) == 20
    assert logs.named("server.connections_full") == []


# --- the limit on a TLS listener ------------------------------------------------------------------


async def tls_gateway(
    aiohttp_server: AiohttpServer, listener_files: dict[str, str], **env: str
) -> tuple[Simulator, Config]:
    """A simulator, and a gateway configuration in front of it with TLS on a port of its own."""
    sim, webapp_url = await start_simulator(aiohttp_server)
    return sim, gateway_config(webapp_url, GATEWAY_LISTEN="127.0.0.1:0", **listener_files, **env)


async def test_a_tls_connection_beyond_the_limit_is_closed_unanswered_until_one_closes(
    aiohttp_server: AiohttpServer,
    listener_files: dict[str, str],
    trusting: ssl.SSLContext,
    logs: Logs,
) -> None:
    sim, config = await tls_gateway(
        aiohttp_server,
        listener_files,
        GATEWAY_MAX_CONNECTIONS="2",
        GATEWAY_CLIENT_IDLE_TIMEOUT=IDLE,
    )

    def session() -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trusting))

    async with serving(config) as url, contextlib.AsyncExitStack() as stack:
        idle = [await stack.enter_async_context(session()) for _ in range(2)]
        for each in idle:  # each keeps its connection, pooled
            async with each.get(url + "/_gateway/healthz") as response:
                assert response.status == 200
        async with session() as third:
            with pytest.raises(aiohttp.ClientError):
                async with third.post(url + "/v1/messages", json=MESSAGE) as response:
                    await response.read()
        assert sim.seen_on("/v1/messages") == []
        await idle[0].close()
        async with asyncio.timeout(WAIT):
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    async with (
                        session() as fresh,
                        fresh.post(url + "/v1/messages", json=MESSAGE) as r,
                    ):
                        assert r.status == 201
                        break
                await asyncio.sleep(0.01)
    assert len(sim.seen_on("/v1/messages")) == 1
    assert logs.named("server.connections_full")[0]["refused"] == 1


def tls_handshake(port: int, client: ssl.SSLContext) -> ssl.SSLSocket:
    """A TLS connection to the gateway, its handshake done (blocking: run it in a thread)."""
    sock = socket.create_connection((LOCALHOST, port), timeout=WAIT)
    return client.wrap_socket(sock, server_hostname=LOCALHOST)


async def client_connections(session: aiohttp.ClientSession, url: str) -> float:
    """``wa_gateway_client_connections``, asked for through ``session`` (its connection counted)."""
    async with session.get(url + "/_gateway/metrics") as response:
        scraped = Scrape(await response.text(), response.content_type)
    return scraped("wa_gateway_client_connections")


async def test_a_tls_connection_closed_for_idleness_is_not_counted_while_awaiting_close_notify(
    aiohttp_server: AiohttpServer, listener_files: dict[str, str], trusting: ssl.SSLContext
) -> None:
    """A TLS client that finishes its handshake, then neither sends nor reads, is closed after the
    idle timeout and gives up its place under the limit once the send timeout has passed too:
    the gateway does not wait asyncio's 30 s for a close_notify that this client never sends."""
    _, config = await tls_gateway(
        aiohttp_server,
        listener_files,
        GATEWAY_CLIENT_IDLE_TIMEOUT="2",
        GATEWAY_CLIENT_SEND_TIMEOUT="2",
    )
    # One kept-alive connection asks every time, so it is the one counted besides the silent one.
    connector = aiohttp.TCPConnector(ssl=trusting, limit=1)
    async with serving(config) as url, aiohttp.ClientSession(connector=connector) as session:
        silent = await asyncio.to_thread(tls_handshake, port_of(url), trusting)
        try:
            assert await client_connections(session, url) == 2
            async with asyncio.timeout(WAIT):  # asyncio's own wait would be 30 s
                while await client_connections(session, url) != 1:
                    await asyncio.sleep(0.05)
        finally:
            silent.close()


async def post_status(session: aiohttp.ClientSession, url: str) -> int | None:
    """The status of a POST on a new connection of ``session`` (closed after), None if refused."""
    async with session:
        try:
            async with session.post(url + "/v1/messages", json=MESSAGE) as response:
                await response.read()
                return response.status
        except aiohttp.ClientError:
            return None


# --- pure parts -----------------------------------------------------------------------------------


def test_a_throttle_reports_the_first_then_one_per_interval_with_the_count_since() -> None:
    clock = FakeClock()
    throttle = Throttle(5.0, clock)
    assert throttle.tick() == 1
    assert [throttle.tick() for _ in range(999)] == [0] * 999
    clock.now += 4.9
    assert throttle.tick() == 0
    clock.now += 0.1
    assert throttle.tick() == 1001  # the 1000 held back, and this one
    assert throttle.tick() == 0


def test_a_connection_limit_counts_refusals_and_logs_them_once_per_interval(logs: Logs) -> None:
    clock = FakeClock()
    limit = ConnectionLimit(0, clock)
    assert limit.full
    for _ in range(100):
        limit.refuse()
    clock.now += 5.0
    limit.refuse()
    assert limit.refused == 101
    assert [e["refused"] for e in logs.named("server.connections_full")] == [1, 100]


@pytest.mark.parametrize(
    ("soft", "hard", "needed", "expected"),
    [
        pytest.param(1024, 524288, 4260, DescriptorPlan(524288, True), id="raised-to-hard"),
        pytest.param(1024, 4096, 4260, DescriptorPlan(4096, False), id="raised-still-short"),
        pytest.param(256, 256, 4260, DescriptorPlan(256, False), id="hard-is-soft-short"),
        pytest.param(4260, 4260, 4260, DescriptorPlan(4260, True), id="exactly-enough"),
        pytest.param(1 << 20, 1 << 20, 4260, DescriptorPlan(1 << 20, True), id="already-high"),
        pytest.param(1024, INF, 4260, DescriptorPlan(4260, True), id="no-hard-limit-as-needed"),
        pytest.param(8192, INF, 4260, DescriptorPlan(8192, True), id="no-hard-limit-never-lower"),
        pytest.param(INF, INF, 4260, DescriptorPlan(INF, True), id="no-limit-at-all"),
    ],
)
def test_descriptor_plan(soft: int, hard: int, needed: int, expected: DescriptorPlan) -> None:
    assert descriptor_plan(soft, hard, needed) == expected


def test_descriptors_needed_count_clients_a_backlog_the_webapp_pool_and_a_reserve() -> None:
    config = gateway_config(
        "http://127.0.0.1:1", GATEWAY_MAX_CONNECTIONS="5", GATEWAY_UPSTREAM_CONNECTIONS="10"
    )
    assert descriptors_needed(config.server) == 5 + BACKLOG + 10 + DESCRIPTOR_RESERVE


def accept_failure() -> dict[str, object]:
    """A context as asyncio's accept loop reports it (selector_events.py)."""
    return {"message": ACCEPT_FAILED, "exception": OSError(errno.EMFILE, "Too many open files")}


async def test_failed_accepts_are_logged_once_per_interval_with_the_count(logs: Logs) -> None:
    """A thousand failed accepts (one backlog's worth) make one event, and the next one after
    the interval carries the count of those held back."""
    loop = asyncio.get_running_loop()
    clock, passed = FakeClock(), []
    handler = AcceptErrors(lambda _, context: passed.append(context), ConnectionLimit(5), clock)
    for _ in range(1000):
        handler(loop, accept_failure())
    clock.now += 5.0
    handler(loop, accept_failure())
    events = logs.named("server.accept_failed")
    assert [(e["error"], e["failures"], e["level"]) for e in events] == [
        ("EMFILE", 1, "error"),
        ("EMFILE", 1000, "error"),
    ]
    assert passed == []


async def test_other_loop_errors_go_to_the_handler_before_redacted_as_ever(logs: Logs) -> None:
    loop = asyncio.get_running_loop()
    passed: list[dict[str, object]] = []
    AcceptErrors(lambda _, context: passed.append(context), ConnectionLimit(5))(
        loop, {"message": "other"}
    )
    assert passed == [{"message": "other"}]
    # Without a handler before it, asyncio's default one logs, through the redacting formatter.
    AcceptErrors(None, ConnectionLimit(5))(loop, {"message": "failed: Authorization: Bearer s3"})
    [event] = [e for e in logs.events if e.get("logger") == "asyncio" and "failed" in e["event"]]
    assert event["level"] == "error"
    assert "s3" not in logs.text
    assert logs.named("server.accept_failed") == []


# --- a gateway process with few descriptors -------------------------------------------------------


def with_descriptors(soft: int, hard: int) -> tuple[str, ...]:
    """``python -m gateway``, started with ``RLIMIT_NOFILE`` set to ``(soft, hard)``."""
    code = (
        "import resource, runpy; "
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard})); "
        "runpy.run_module('gateway', run_name='__main__')"
    )
    return (sys.executable, "-c", code)


@contextlib.asynccontextmanager
async def gateway_with_descriptors(
    aiohttp_server: AiohttpServer, tmp_path: Path, soft: int, hard: int, **settings: str
) -> AsyncIterator[GatewayProcess]:
    _, webapp_url = await start_simulator(aiohttp_server)
    port = free_port()
    env = gateway_env(webapp_url, port, GATEWAY_CLIENT_IDLE_TIMEOUT=IDLE, **settings)
    command = with_descriptors(soft, hard)
    async with running_gateway(
        ["serve"], env, f"http://127.0.0.1:{port}", tmp_path, command=command
    ) as gateway:
        yield gateway


def soft_descriptor_limit(pid: int) -> int:
    """The soft ``Max open files`` of process ``pid``."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no Max open files line")


async def logged_served_message(gateway: GatewayProcess) -> None:
    """Wait until a served POST /v1/messages is in the log: every line before it is too."""
    async with asyncio.timeout(WAIT):
        while not [e for e in gateway.named("request.completed") if e["path"] == "/v1/messages"]:
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def open_connections(port: int, count: int) -> AsyncIterator[None]:
    """``count`` client connections that send nothing, all closed on the way out."""
    writers = []
    try:
        async with asyncio.timeout(WAIT):
            for _ in range(count):
                _, writer = await asyncio.open_connection(LOCALHOST, port)
                writers.append(writer)
        yield
    finally:
        for writer in writers:
            writer.close()


@pytest.mark.slow
async def test_start_up_raises_the_soft_descriptor_limit_and_warns_when_it_is_too_low(
    aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    async with gateway_with_descriptors(aiohttp_server, tmp_path, 40, 80) as gateway:
        assert soft_descriptor_limit(gateway.pid) == 80
    [warning] = gateway.named("server.descriptors_low")
    assert warning["limit"] == 80
    assert warning["needed"] == 4096 + BACKLOG + 100 + DESCRIPTOR_RESERVE
    assert warning["setting"] == "GATEWAY_MAX_CONNECTIONS"


@pytest.mark.slow
async def test_running_out_of_descriptors_logs_one_line_not_one_per_backlog_slot(
    aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    """More connections than descriptors (the limit above them): asyncio's accept fails for
    every backlog slot, and the log gets one event, not a thousand tracebacks; once the
    connections go, the gateway serves again."""
    async with gateway_with_descriptors(aiohttp_server, tmp_path, 64, 64) as gateway:
        port = port_of(gateway.url)
        async with open_connections(port, 100):
            await gateway.logged("server.accept_failed", WAIT)
        status, _ = await post_until_served(port)
        assert status == 201
        await logged_served_message(gateway)
    output = gateway.stdout + gateway.stderr
    assert "out of system resource" not in output  # asyncio's own line, a traceback each
    failed = gateway.named("server.accept_failed")
    assert failed[0]["error"] == "EMFILE"
    assert failed[0]["failures"] == 1
    assert len(failed) < 10  # one per few seconds; unthrottled, a thousand per retry


@pytest.mark.slow
async def test_connections_beyond_the_limit_never_exhaust_the_descriptors(
    aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    """The audit's case, one connection at a time: 300 clients that each sent one byte and stay,
    256 descriptors. With a limit of 100, the other 200 are closed by the gateway at once, an
    accept never fails, and the gateway serves again as soon as the 100 are gone. (Without the
    limit, the gateway would hold them until it ran out of descriptors.)"""
    limits = {"GATEWAY_MAX_CONNECTIONS": "100", "GATEWAY_UPSTREAM_CONNECTIONS": "10"}
    async with gateway_with_descriptors(aiohttp_server, tmp_path, 256, 256, **limits) as gateway:
        port = port_of(gateway.url)
        async with held(port, 100), contextlib.AsyncExitStack() as stack:
            for _ in range(200):
                conn = await stack.enter_async_context(Connection(port, timeout=WAIT))
                await conn.send(b"P")
                assert await conn.read_rest() == b""  # closed by the gateway; the client stays
            assert await post_raw(port) == b""
        status, _ = await post_until_served(port)
        assert status == 201
        await logged_served_message(gateway)
    assert gateway.named("server.accept_failed") == []
    full = gateway.named("server.connections_full")
    assert full[0]["refused"] == 1
    assert len(full) < 10, gateway.describe()  # one per few seconds, not one per connection


# --- the counting protocol, with a fake transport and handler -------------------------------------


class Recorder(asyncio.Protocol):
    """A handler that records every protocol event it gets."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.events.append("made")

    def data_received(self, data: bytes) -> None:
        self.events.append(f"data {data.decode()}")

    def eof_received(self) -> bool:
        self.events.append("eof")
        return True

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append("lost")


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


def test_a_served_connection_passes_every_event_to_its_handler_and_is_counted_until_lost() -> None:
    limit, handlers = ConnectionLimit(1), []

    def make_handler() -> Recorder:
        handlers.append(Recorder())
        return handlers[-1]

    protocol = limit.factory(make_handler)()
    protocol.connection_made(FakeTransport())
    assert limit.open == 1
    protocol.data_received(b"x")
    assert protocol.eof_received() is True
    protocol.pause_writing()
    protocol.resume_writing()
    protocol.connection_lost(None)
    assert limit.open == 0
    [handler] = handlers
    assert handler.events == ["made", "data x", "eof", "pause", "resume", "lost"]


def test_a_refused_connection_is_aborted_and_never_makes_a_handler(logs: Logs) -> None:
    limit, made = ConnectionLimit(0), []
    protocol = limit.factory(lambda: made.append(1) or Recorder())()
    transport = FakeTransport()
    protocol.connection_made(transport)
    protocol.data_received(b"x")
    assert protocol.eof_received() is None
    protocol.pause_writing()
    protocol.resume_writing()
    protocol.connection_lost(None)
    assert transport.aborted
    assert made == []
    assert (limit.open, limit.refused) == (0, 1)
