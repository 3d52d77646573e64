"""Admission: requests beyond the gateway's limits get a fast 503 with ``Retry-After``, never a
queue without end, and never reach the Webapp; logins never wait behind forwarded requests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager

import aiohttp

from gateway.simulator import Fault

from .conftest import MESSAGE, Logs, MakeRig, Rig, error_of, until, warmed

HOLD = "/v1/media/held"


@asynccontextmanager
async def held(rig: Rig, count: int) -> AsyncIterator[None]:
    """``count`` requests that the Webapp keeps waiting for their answer, in flight throughout."""
    rig.sim.faults = [Fault("stall", path=HOLD, times=count)]

    async def hold() -> None:
        async with rig.client.get(HOLD) as response:
            await response.read()

    holders = [asyncio.ensure_future(hold()) for _ in range(count)]
    try:
        await until(lambda: rig.sim.in_flight == count)
        yield
    finally:
        for holder in holders:
            holder.cancel()
        await asyncio.gather(*holders, return_exceptions=True)


async def refused(response: Awaitable[aiohttp.ClientResponse]) -> str:
    """The details of a 503 ``System overloaded`` answer with ``Retry-After: 1``."""
    async with await response as answer:
        assert answer.status == 503
        assert answer.headers["Retry-After"] == "1"
        error = await error_of(answer)
    assert (error["code"], error["title"]) == (1016, "System overloaded")
    return str(error["details"])


async def test_requests_beyond_max_concurrent_get_a_fast_503_and_never_reach_the_webapp(
    make_rig: MakeRig, logs: Logs
) -> None:
    rig = await warmed(make_rig, GATEWAY_MAX_CONCURRENT="2", GATEWAY_UPSTREAM_TIMEOUT="30")
    async with held(rig, 2):
        details = await refused(rig.client.post("/v1/messages", json=MESSAGE))
        assert "handling 2 requests already" in details
        # Told apart from the Webapp's own 503 (its rate limit) in the access log.
        (event,) = [e for e in logs.named("request.completed") if e["status"] == 503]
        assert event["failure"] == "max_concurrent"
        async with rig.client.get("/_gateway/readyz") as response:  # never refused
            assert response.status == 200
        assert rig.sim.seen_on("/v1/messages") == []
    await until(lambda: rig.gateway.in_flight.count == 0)
    async with rig.client.post("/v1/messages", json=MESSAGE) as response:
        assert response.status == 201


async def test_a_full_webapp_pool_gives_503_after_the_queue_timeout_not_a_504(
    make_rig: MakeRig,
) -> None:
    """Requests hold a connection to the Webapp until their answer has streamed back; one that
    waits longer than GATEWAY_UPSTREAM_QUEUE_TIMEOUT for one is the gateway's overload."""
    rig = await warmed(
        make_rig,
        GATEWAY_UPSTREAM_CONNECTIONS="2",
        GATEWAY_UPSTREAM_QUEUE_TIMEOUT="0.2",
        GATEWAY_UPSTREAM_TIMEOUT="30",
    )
    async with held(rig, 2):
        details = await refused(rig.client.post("/v1/messages", json=MESSAGE))
        assert "All 2 connections to the Webapp stayed busy for 0.2 s" in details
        assert rig.sim.seen_on("/v1/messages") == []
        (event,) = [e for e in rig.logs.named("request.completed") if e["status"] == 503]
        assert event["failure"] == "upstream_busy"
        async with rig.client.get("/_gateway/metrics") as response:
            assert "wa_gateway_upstream_connections_in_use 2.0" in await response.text()
    async with rig.client.post("/v1/messages", json=MESSAGE) as response:
        assert response.status == 201
    async with rig.client.get("/_gateway/metrics") as response:
        assert "wa_gateway_upstream_connections_in_use 0.0" in await response.text()


async def test_a_request_waits_for_a_busy_connection_within_the_queue_timeout(
    make_rig: MakeRig,
) -> None:
    rig = await warmed(
        make_rig,
        GATEWAY_UPSTREAM_CONNECTIONS="1",
        GATEWAY_UPSTREAM_QUEUE_TIMEOUT="30",
        GATEWAY_UPSTREAM_TIMEOUT="30",
    )
    rig.sim.faults = [Fault("delay", path="/v1/messages", delay=0.3, times=1)]
    async with asyncio.timeout(20):
        statuses = await asyncio.gather(
            *(post_status(rig) for _ in range(3))  # one at a time on the one connection
        )
    assert statuses == [201, 201, 201]


async def post_status(rig: Rig) -> int:
    async with rig.client.post("/v1/messages", json=MESSAGE) as response:
        await response.read()
        return response.status


async def test_a_login_never_waits_for_a_connection_that_forwarded_requests_hold(
    make_rig: MakeRig,
) -> None:
    """The pool keeps connections of its own for logins: with every forwarding connection
    held (by slow downloads, say), the gateway still logs in, and its token stays fresh."""
    rig = await warmed(make_rig, GATEWAY_UPSTREAM_CONNECTIONS="1", GATEWAY_UPSTREAM_TIMEOUT="30")
    pool, account = rig.gateway.pool, rig.gateway.webapp.account
    async with held(rig, 1):
        logins = rig.sim.logins
        old = await pool.token(account)
        pool.invalidate(account, old)
        async with asyncio.timeout(10):
            new = await pool.token(account)
        assert new.generation == old.generation + 1
        assert rig.sim.logins == logins + 1


async def test_a_replay_waiting_for_its_login_holds_no_connection(make_rig: MakeRig) -> None:
    """A 401's connection is let go before the new login, which may take long: meanwhile a request
    that needs no token (GET /v1/health goes with the API key) gets the one connection."""
    rig = await warmed(
        make_rig,
        GATEWAY_UPSTREAM_CONNECTIONS="1",
        GATEWAY_UPSTREAM_QUEUE_TIMEOUT="0.3",
        GATEWAY_UPSTREAM_TIMEOUT="30",
    )
    rig.sim.revoke_all()
    rig.sim.login_delay = 1.0
    logins = rig.sim.login_attempts
    message = asyncio.ensure_future(post_status(rig))
    await until(lambda: rig.sim.login_attempts == logins + 1)  # the replay's login, under way
    async with rig.client.get("/v1/health") as response:
        assert response.status == 200
    assert await message == 201
    assert rig.gateway.webapp.slots.in_use == 0
