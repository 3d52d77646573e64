"""The metrics endpoint: Prometheus text, parsed back, with exact counts after real traffic.

The gateway counts a request after its answer is sent, so tests wait (boundedly) until nothing is
in flight before they scrape. A scrape is itself in flight while it renders, and is counted after.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from gateway.simulator import Fault, LoginFault

from . import rawhttp
from .conftest import MESSAGE, MakeRig, Rig, Scrape, until

OTHER_PASSWORD = "Other-pass-2!"
# Logins that fail are not retried within a test, so every count is exact.
SLOW_RETRIES = {"GATEWAY_LOGIN_BACKOFF_INITIAL": "30", "GATEWAY_LOGIN_BACKOFF_MAX": "60"}


def in_flight(rig: Rig) -> float | None:
    return rig.gateway.metrics.registry.get_sample_value("wa_gateway_requests_in_flight")


async def scrape(rig: Rig) -> Scrape:
    """Scrape once every request before has been counted."""
    await until(lambda: in_flight(rig) == 0)
    async with rig.client.get("/_gateway/metrics") as response:
        assert response.status == 200
        return Scrape(await response.text(), response.headers["Content-Type"])


async def call(rig: Rig, method: str, path: str, **kwargs: Any) -> int:
    async with rig.client.request(method, path, **kwargs) as response:
        await response.read()
        return response.status


def requests(scraped: Scrape) -> dict[tuple[str, str], float]:
    return {
        (dict(labels)["method"], dict(labels)["status"]): value
        for labels, value in scraped.labelled("wa_gateway_requests_total").items()
    }


async def test_requests_are_counted_by_method_and_status_and_timed_once_each(rig: Rig) -> None:
    for _ in range(3):
        assert await call(rig, "POST", "/v1/messages", json=MESSAGE) == 201
    for _ in range(2):
        assert await call(rig, "GET", "/v1/settings/application") == 200
    assert await call(rig, "GET", "/nope") == 404
    assert await call(rig, "DELETE", "/v1/users/admin") == 403
    assert await call(rig, "GET", "/_gateway/healthz") == 200

    scraped = await scrape(rig)
    assert scraped.content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert requests(scraped) == {
        ("POST", "201"): 3,
        ("GET", "200"): 3,
        ("GET", "404"): 1,
        ("DELETE", "403"): 1,
    }
    assert scraped("wa_gateway_request_duration_seconds_count") == 8
    assert scraped("wa_gateway_request_duration_seconds_bucket", le="+Inf") == 8
    assert scraped("wa_gateway_upstream_duration_seconds_count") == 5  # refusals never left
    assert scraped("wa_gateway_logins_total", result="ok") == 1
    assert scraped.labelled("wa_gateway_logins_total") == {(("result", "ok"),): 1}
    assert scraped("wa_gateway_token_expiry_seconds") > 0
    assert scraped("wa_gateway_requests_in_flight") == 1  # the scrape itself
    assert scraped("wa_gateway_replays_total") == 0
    assert scraped.labelled("wa_gateway_upstream_errors_total") == {}

    again = await scrape(rig)
    assert requests(again)["GET", "200"] == 4  # the first scrape is counted once it is answered
    assert again("wa_gateway_request_duration_seconds_count") == 9


async def test_methods_outside_the_known_set_count_as_other(rig: Rig) -> None:
    for method in ("PROPFIND", "PURGE"):  # methods the HTTP parser knows and the gateway does not
        assert await call(rig, method, "/v1/settings/application") == 404  # the Webapp's answer
    assert await call(rig, "TRACE", "/v1/messages") == 405
    # aiohttp's parser refuses a method it does not know; the gateway answers and counts it.
    refused = await rawhttp.request("127.0.0.1", rig.client.port, "FOO /v1/messages HTTP/1.1")
    assert refused.status == 400
    scraped = await scrape(rig)
    assert requests(scraped) == {("other", "404"): 2, ("other", "405"): 1, ("other", "400"): 1}


async def test_a_replay_is_counted_with_its_login(rig: Rig) -> None:
    assert await call(rig, "GET", "/v1/settings/application") == 200
    rig.sim.revoke_all()
    assert await call(rig, "GET", "/v1/settings/application") == 200
    scraped = await scrape(rig)
    assert scraped("wa_gateway_replays_total") == 1
    assert scraped("wa_gateway_logins_total", result="ok") == 2
    assert scraped("wa_gateway_upstream_duration_seconds_count") == 3  # the 401 and its replay
    assert requests(scraped) == {("GET", "200"): 2}


async def test_a_failed_login_is_counted_by_kind(make_rig: MakeRig) -> None:
    rig = await make_rig(env=SLOW_RETRIES)
    assert await call(rig, "GET", "/v1/settings/application") == 200
    rig.sim.login_script.append(LoginFault("status", status=500))
    rig.sim.revoke_all()
    assert await call(rig, "GET", "/v1/settings/application") == 503
    scraped = await scrape(rig)
    assert scraped.labelled("wa_gateway_logins_total") == {
        (("result", "ok"),): 1,
        (("result", "webapp_unavailable"),): 1,
    }
    assert scraped("wa_gateway_replays_total") == 0  # no token to replay with
    assert scraped("wa_gateway_token_expiry_seconds") == 0  # the rejected token is gone
    assert requests(scraped) == {("GET", "200"): 1, ("GET", "503"): 1}


async def test_bad_credentials_are_counted_and_no_token_expiry_is_reported(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(password=OTHER_PASSWORD, env=SLOW_RETRIES)
    assert await call(rig, "GET", "/v1/settings/application") == 503
    scraped = await scrape(rig)
    assert scraped.labelled("wa_gateway_logins_total") == {(("result", "bad_credentials"),): 1}
    assert scraped("wa_gateway_token_expiry_seconds") == 0
    assert rig.sim.login_attempts == 1


async def test_a_refresh_is_counted(make_rig: MakeRig) -> None:
    # A 3 s token lives 2 s for the gateway (the Date header's second is discounted); refreshing
    # at half of that gives a refresh about every second.
    rig = await make_rig(token_lifetime=3, env={"GATEWAY_REFRESH_BEFORE": "0.5"})
    registry = rig.gateway.metrics.registry
    await until(lambda: registry.get_sample_value("wa_gateway_token_refreshes_total") == 1)
    scraped = await scrape(rig)
    assert scraped("wa_gateway_token_refreshes_total") == 1
    assert scraped("wa_gateway_logins_total", result="ok") == 2
    assert scraped("wa_gateway_token_expiry_seconds") > 0
    assert rig.sim.logins == 2


async def test_upstream_errors_are_counted_by_kind(make_rig: MakeRig) -> None:
    rig = await make_rig(env={"GATEWAY_UPSTREAM_TIMEOUT": "0.3"})
    assert await call(rig, "GET", "/v1/settings/application") == 200
    rig.sim.faults = [Fault("stall", path="/v1/settings")]
    assert await call(rig, "GET", "/v1/settings/application") == 504
    rig.sim.faults = [Fault("cut_body", path="/v1/media")]
    async with rig.client.get("/v1/media/cut") as response:
        assert response.status == 200  # the status line had gone before the cut
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
    await rig.webapp.close()
    assert await call(rig, "GET", "/v1/settings/application") == 502

    scraped = await scrape(rig)
    assert scraped.labelled("wa_gateway_upstream_errors_total") == {
        (("kind", "timeout"),): 1,
        (("kind", "cut"),): 1,
        (("kind", "connect"),): 1,
    }
    assert requests(scraped) == {("GET", "200"): 2, ("GET", "504"): 1, ("GET", "502"): 1}


async def test_in_flight_counts_requests_being_handled_and_returns_to_zero(rig: Rig) -> None:
    rig.sim.faults = [Fault("stall", path="/v1/settings")]
    stalled = asyncio.create_task(call(rig, "GET", "/v1/settings/application"))
    await until(lambda: rig.sim.in_flight == 1)
    async with rig.client.get("/_gateway/metrics") as response:
        during = Scrape(await response.text(), response.headers["Content-Type"])
    assert during("wa_gateway_requests_in_flight") == 2  # the stalled request and the scrape
    await rig.webapp.close()  # which ends the stall
    assert await stalled == 502
    after = await scrape(rig)
    assert after("wa_gateway_requests_in_flight") == 1  # the scrape alone
    await until(lambda: in_flight(rig) == 0)


async def test_counters_and_histograms_come_without_created_series(rig: Rig) -> None:
    """prometheus_client adds a "_created" gauge beside each, with the counter's help text."""
    assert await call(rig, "POST", "/v1/messages", json=MESSAGE) == 201
    scraped = await scrape(rig)
    assert scraped("wa_gateway_requests_total", method="POST", status="201") == 1
    assert [name for name, _ in scraped.samples if name.endswith("_created")] == []


async def test_the_login_breaker_state_and_process_health_are_exported(make_rig: MakeRig) -> None:
    rig = await make_rig(
        env={
            "WA_PASSWORD": "Wrong-pass-1!",
            "GATEWAY_LOGIN_BREAKER_THRESHOLD": "2",
            "GATEWAY_LOGIN_BACKOFF_INITIAL": "0.01",
            "GATEWAY_LOGIN_BACKOFF_MAX": "30",
        }
    )
    scraped = await scrape(rig)
    assert scraped("wa_gateway_login_breaker_state") == 0
    # Open once two logins failed in a row, for the backoff after each further failure.
    async with asyncio.timeout(10):
        while (scraped := await scrape(rig))("wa_gateway_login_breaker_state") != 2:
            await asyncio.sleep(0.01)
    assert rig.sim.login_attempts >= 2
    assert scraped("wa_gateway_asyncio_tasks") >= 2  # the refresher and this scrape at least
    assert scraped("process_open_fds") > 0
    assert scraped("process_resident_memory_bytes") > 0
