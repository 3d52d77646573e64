"""Stopping a gateway process with SIGTERM or SIGINT: the drain, the grace period, exit status 0.

Each test runs ``python -m gateway serve`` in front of a simulator in the test's own event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TypeVar

import aiohttp
import pytest
from pytest_aiohttp import AiohttpServer

from gateway.app import create_app
from gateway.protocol import _Protocol
from gateway.server import serve
from gateway.simulator import Fault, Simulator

from .conftest import MESSAGE, Logs, MakeRig, gateway_config
from .processes import FRESH, GatewayProcess, free_port, serve_gateway, start_simulator
from .rawhttp import Connection

pytestmark = pytest.mark.slow

SIGNALS = [pytest.param(signal.SIGTERM, id="SIGTERM"), pytest.param(signal.SIGINT, id="SIGINT")]
DRAIN = 1.0
SLOW = 2.0  # seconds the simulator holds POST /v1/messages: the drain, and some of the grace
# A request the Webapp holds longer than any test runs; it ends when the gateway hangs up.
HELD = 60.0
WAIT = 10.0  # the most any single step below may take
CLOSED_AT_ONCE = 3.0  # far less than a held request keeps the grace period going

Start = Callable[..., Awaitable[GatewayProcess]]
T = TypeVar("T")


@pytest.fixture
async def sim_url(aiohttp_server: AiohttpServer) -> tuple[Simulator, str]:
    return await start_simulator(aiohttp_server)


@pytest.fixture
async def start(sim_url: tuple[Simulator, str], tmp_path: Path) -> AsyncIterator[Start]:
    """Start a gateway subprocess in front of the simulator, with ``settings`` added."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(**settings: str) -> GatewayProcess:
            return await stack.enter_async_context(serve_gateway(sim_url[1], tmp_path, **settings))

        yield start


async def post_message(url: str) -> int:
    timeout = aiohttp.ClientTimeout(total=WAIT)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(url + "/v1/messages", json=MESSAGE) as response,
    ):
        await response.read()
        return response.status


async def get_status(url: str) -> int:
    """The status of a GET on a new connection."""
    timeout = aiohttp.ClientTimeout(total=2)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(url, headers=FRESH) as response,
    ):
        await response.read()
        return response.status


@contextlib.asynccontextmanager
async def in_background(coroutine: Coroutine[object, object, T]) -> AsyncIterator[asyncio.Task[T]]:
    """Run ``coroutine`` as a task that is cancelled and awaited on the way out."""
    task = asyncio.ensure_future(coroutine)
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def until_seen(sim: Simulator, path: str) -> None:
    """Wait until a request for ``path`` has reached the simulator."""
    async with asyncio.timeout(WAIT):
        while not sim.seen_on(path):
            await asyncio.sleep(0.01)


async def until_not_ready(url: str) -> None:
    async with asyncio.timeout(WAIT):
        while await get_status(url + "/_gateway/readyz") != 503:
            await asyncio.sleep(0.02)


async def until_refused(url: str) -> None:
    """Wait until new connections to ``url`` are refused: the listener has closed."""
    async with asyncio.timeout(WAIT):
        while True:
            try:
                await get_status(url + "/_gateway/healthz")
            except aiohttp.ClientConnectorError:
                return
            await asyncio.sleep(0.02)


def assert_stopped_in_order(gateway: GatewayProcess) -> None:
    names = gateway.event_names()
    assert "gateway.stopping" in names, gateway.describe()
    assert names[-1] == "gateway.stopped", gateway.describe()
    assert gateway.stderr == ""  # no traceback, no KeyboardInterrupt


@pytest.mark.parametrize("signum", SIGNALS)
async def test_signal_drains_then_lets_the_request_in_flight_finish(
    signum: signal.Signals, sim_url: tuple[Simulator, str], start: Start
) -> None:
    """During the drain readiness is 503 and health 200 on new connections; then the listener
    closes, the request in flight when the signal came still gets its 201, and the process
    exits 0 having logged gateway.stopping, that request, and gateway.stopped."""
    sim, _ = sim_url
    sim.faults = [Fault("delay", path="/v1/messages", delay=SLOW)]
    gateway = await start(GATEWAY_SHUTDOWN_DRAIN=str(DRAIN), GATEWAY_SHUTDOWN_GRACE="5")
    async with in_background(post_message(gateway.url)) as slow:
        await until_seen(sim, "/v1/messages")
        gateway.send_signal(signum)
        await until_not_ready(gateway.url)
        assert await get_status(gateway.url + "/_gateway/healthz") == 200
        await until_refused(gateway.url)
        assert not slow.done()  # the listener closed while the request was in flight
        assert await asyncio.wait_for(slow, WAIT) == 201
        assert await gateway.wait(WAIT) == 0
    assert_stopped_in_order(gateway)
    after_stopping = gateway.events[gateway.event_names().index("gateway.stopping") :]
    assert [
        e["status"]
        for e in after_stopping
        if e["event"] == "request.completed" and e["path"] == "/v1/messages"
    ] == [201]


@pytest.mark.parametrize(
    ("signum", "grace"),
    [
        pytest.param(signal.SIGTERM, 0.5, id="SIGTERM"),
        pytest.param(signal.SIGINT, 0.5, id="SIGINT"),
        # 0 means no grace at all (aiohttp's own shutdown timeout reads 0 as "wait forever").
        pytest.param(signal.SIGTERM, 0.0, id="SIGTERM-no-grace"),
    ],
)
async def test_request_slower_than_the_grace_period_is_cut(
    signum: signal.Signals, grace: float, sim_url: tuple[Simulator, str], start: Start
) -> None:
    """A request still running when the grace period ends gets a closed connection, not a hang,
    and the process exits 0 right after the grace period."""
    sim, _ = sim_url
    sim.faults = [Fault("delay", path="/v1/messages", delay=HELD)]
    gateway = await start(GATEWAY_SHUTDOWN_DRAIN="0", GATEWAY_SHUTDOWN_GRACE=str(grace))
    loop = asyncio.get_running_loop()
    async with in_background(post_message(gateway.url)) as slow:
        await until_seen(sim, "/v1/messages")
        signalled = loop.time()
        gateway.send_signal(signum)
        with pytest.raises(aiohttp.ClientError):
            await asyncio.wait_for(slow, WAIT)
        assert await gateway.wait(WAIT) == 0
        assert loop.time() - signalled < grace + 2.0
    assert_stopped_in_order(gateway)
    assert [e["count"] for e in gateway.named("gateway.requests_cut")] == [1]
    completed = [e for e in gateway.named("request.completed") if e["path"] == "/v1/messages"]
    assert [e["failure"] for e in completed] == ["cancelled"]


@pytest.mark.parametrize("signum", SIGNALS)
async def test_more_signals_as_the_process_exits_change_nothing(
    start: Start, signum: signal.Signals
) -> None:
    """With nothing in flight and no drain, shutdown takes a millisecond; signals that follow
    (`timeout` sends one to the process and one to its group) must not meet the default
    handler while the loop closes and the last lines are written: killed (143), or a
    KeyboardInterrupt traceback instead of gateway.stopped."""
    gateway = await start(GATEWAY_SHUTDOWN_DRAIN="0")
    gateway.send_signal(signum)
    for _ in range(40):  # over the 200 ms the process takes to exit, and then some
        await asyncio.sleep(0.005)
        # os.kill, not Popen.send_signal: that polls first, and may reap the exited process
        # from under asyncio's child watcher (which then reports 255).
        with contextlib.suppress(ProcessLookupError):
            os.kill(gateway.process.pid, signum)
    assert await gateway.wait(WAIT) == 0
    assert_stopped_in_order(gateway)


async def test_a_stop_during_start_up_stops_without_ever_serving(
    sim_url: tuple[Simulator, str], logs: Logs
) -> None:
    """A signal while the app starts up (its first login may take GATEWAY_LOGIN_TIMEOUT): no
    gateway.started, no connection ever accepted, and an orderly stop."""
    config = gateway_config(sim_url[1], GATEWAY_LISTEN=f"127.0.0.1:{free_port()}")
    stop = asyncio.Event()
    stop.set()
    started: list[str] = []
    async with asyncio.timeout(WAIT):
        await serve(create_app(config), config, stop=stop, on_started=started.append)
    assert started == []
    names = [event["event"] for event in logs.events if event["event"].startswith("gateway.")]
    assert names == ["gateway.stopping", "gateway.stopped"]


async def test_idle_keepalive_connections_do_not_hold_up_the_exit(start: Start) -> None:
    """With nothing in flight the gateway exits at once, long grace period and open keep-alive
    connections notwithstanding."""
    gateway = await start(GATEWAY_SHUTDOWN_DRAIN="0", GATEWAY_SHUTDOWN_GRACE="30")
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT)) as session:
        for _ in range(2):  # the second request reuses the kept-alive connection
            async with session.post(gateway.url + "/v1/messages", json=MESSAGE) as response:
                assert response.status == 201
                await response.read()
        signalled = loop.time()
        gateway.send_signal(signal.SIGTERM)
        assert await gateway.wait(WAIT) == 0
        assert loop.time() - signalled < 2.0
    assert_stopped_in_order(gateway)
    assert not gateway.named("gateway.requests_cut")


async def test_an_idle_keepalive_connection_is_closed_when_the_listener_closes(
    sim_url: tuple[Simulator, str], start: Start
) -> None:
    """While a held request keeps the gateway in its grace period, an idle kept-alive connection
    is closed with the listener: a request sent on it afterwards finds it closed at once, rather
    than being swallowed until the held request ends."""
    sim, _ = sim_url
    sim.faults = [Fault("delay", path="/v1/messages", delay=HELD)]
    # TEST_ENV's 5 s upstream timeout would end the held request, and the grace period, early.
    gateway = await start(
        GATEWAY_SHUTDOWN_DRAIN="0", GATEWAY_SHUTDOWN_GRACE="30", GATEWAY_UPSTREAM_TIMEOUT=str(HELD)
    )
    health = b"GET /_gateway/healthz HTTP/1.1\r\nHost: gateway\r\n\r\n"
    async with Connection(int(gateway.url.rsplit(":", 1)[1]), timeout=WAIT) as idle:
        await idle.send(health)
        assert (await idle.response()).status == 200  # kept alive, and idle from now on
        async with in_background(post_message(gateway.url)) as held:
            await until_seen(sim, "/v1/messages")
            gateway.send_signal(signal.SIGTERM)
            await until_refused(gateway.url)  # the connections were told to close with it
            await idle.send(health)
            assert await idle.closed(within=CLOSED_AT_ONCE)
            assert not held.done()  # the grace period is still running


async def test_a_request_received_as_shutdown_begins_is_answered(
    make_rig: MakeRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request aiohttp has taken off the queue, whose handler has not run yet, is not idle:
    shutdown closing idle connections at once must still answer it (it reached the Webapp)."""
    rig = await make_rig()
    server = rig.client.server.runner.server  # type: ignore[union-attr]
    assert server is not None
    receive = _Protocol.data_received

    def shutdown_once_a_request_is_in(self: _Protocol, data: bytes) -> None:
        receive(self, data)
        if self._messages:  # a request is in: the moment this test is about
            asyncio.get_running_loop().call_soon(server.pre_shutdown)

    monkeypatch.setattr(_Protocol, "data_received", shutdown_once_a_request_is_in)
    body = json.dumps(MESSAGE).encode()
    async with Connection(rig.client.port, timeout=10) as client:
        await client.send(
            b"POST /v1/messages HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        answer = await client.response()
    assert answer.status == 201
    assert len(rig.sim.seen_on("/v1/messages")) == 1
