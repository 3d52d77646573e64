"""Logins through real sockets: one at a time, refreshed ahead of expiry, failures backed off."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from gateway.simulator import LoginFault, Simulator

from .conftest import API_KEY, MESSAGE, PASSWORD, MakeRig, Rig, until
from .rawhttp import Connection


async def send_messages(rig: Rig, count: int) -> list[int]:
    """``count`` concurrent POST /v1/messages, each on its own connection; their statuses."""
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> int:
            async with session.post(f"{rig.url}/v1/messages", json=MESSAGE) as response:
                await response.read()
                return response.status

        return await asyncio.gather(*(one() for _ in range(count)))


async def test_a_thousand_concurrent_requests_on_a_cold_gateway_cause_one_slow_login(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(env={"GATEWAY_UPSTREAM_CONNECTIONS": "200"})
    rig.sim.login_delay = 1.0  # every request arrives while the one login is in flight
    rig.sim.tokens.clear()
    rig.gateway.pool.invalidate(
        rig.gateway.webapp.account, await rig.gateway.pool.token(rig.gateway.webapp.account)
    )
    logins_before = rig.sim.login_attempts
    statuses = await send_messages(rig, 1000)
    assert statuses == [201] * 1000
    assert rig.sim.login_attempts - logins_before == 1


async def test_a_caller_that_hangs_up_during_the_login_does_not_cancel_it(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig()
    await until(lambda: rig.sim.logins == 1)
    rig.sim.login_delay = 0.5
    rig.sim.revoke_all()
    account = rig.gateway.webapp.account
    rig.gateway.pool.invalidate(account, await rig.gateway.pool.token(account))
    with pytest.raises(TimeoutError):
        async with rig.client.post(
            "/v1/messages", json=MESSAGE, timeout=aiohttp.ClientTimeout(total=0.1)
        ):
            pass
    await until(lambda: rig.sim.logins == 2)
    async with rig.client.post("/v1/messages", json=MESSAGE) as response:
        assert response.status == 201
    assert rig.sim.login_attempts == 2


async def test_the_token_is_refreshed_before_it_expires_so_no_request_sees_a_401(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(token_lifetime=3.0, env={"GATEWAY_REFRESH_BEFORE": "0.4"})
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        assert await send_messages(rig, 5) == [201] * 5
        await asyncio.sleep(0.05)
    assert rig.sim.logins >= 3
    assert rig.sim.unauthorized_count() == 0
    assert rig.logs.named("token.refresh")


@pytest.mark.parametrize("skew", [-3600.0, 3600.0, 2 * 24 * 3600.0])
async def test_a_skewed_webapp_clock_does_not_make_the_gateway_use_expired_tokens(
    make_rig: MakeRig, skew: float
) -> None:
    """The Webapp's clock is off by ``skew``: a lifetime computed against the local clock would be
    hours too long (the token expires long before the gateway refreshes it) or negative."""
    rig = await make_rig(token_lifetime=4.0, clock_skew=skew, env={"GATEWAY_REFRESH_BEFORE": "0.5"})
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        assert await send_messages(rig, 3) == [201] * 3
        await asyncio.sleep(0.05)
    assert rig.sim.unauthorized_count() == 0
    assert rig.sim.logins >= 2


async def test_wrong_credentials_give_fast_503s_and_backed_off_retries(make_rig: MakeRig) -> None:
    rig = await make_rig(
        env={
            "WA_PASSWORD": "Wrong-pass-1!",
            "GATEWAY_LOGIN_BACKOFF_INITIAL": "5",
            "GATEWAY_LOGIN_BACKOFF_MAX": "30",
        }
    )
    statuses = []
    for _ in range(50):
        async with rig.client.post("/v1/messages", json=MESSAGE) as response:
            statuses.append(response.status)
            body = await response.json()
            retry_after = int(response.headers["Retry-After"])
            assert response.headers["X-Request-ID"]
    assert statuses == [503] * 50
    error = body["errors"][0]
    assert (error["code"], error["title"]) == (1011, "Service not ready")
    assert "refused the gateway's credentials" in error["details"]
    assert 1 <= retry_after <= 5
    assert rig.sim.login_attempts == 1  # not one login per request
    assert rig.sim.seen_on("/v1/messages") == []


async def test_while_logins_fail_requests_never_wait_for_a_retry_that_hangs(
    make_rig: MakeRig,
) -> None:
    """The retry after a failed login hangs (until GATEWAY_LOGIN_TIMEOUT, 30 s); requests meanwhile
    get their 503 at once instead of joining it."""
    sim = Simulator(password=PASSWORD, password_change_required=False, api_key=API_KEY)
    sim.login_script.extend([LoginFault("status", status=500), LoginFault("hang")])
    rig = await make_rig(
        sim=sim,
        env={
            "GATEWAY_LOGIN_BACKOFF_INITIAL": "0.05",
            "GATEWAY_LOGIN_BACKOFF_MAX": "0.05",
            "GATEWAY_LOGIN_TIMEOUT": "30",
        },
    )
    await until(lambda: sim.login_attempts == 2)  # the retry, hanging
    async with asyncio.timeout(10):  # well short of the 30 s a joined retry would take
        statuses = await send_messages(rig, 20)
    assert statuses == [503] * 20
    assert sim.login_attempts == 2
    assert sim.seen_on("/v1/messages") == []


async def test_while_logins_back_off_an_upload_is_refused_before_its_body_is_read(
    make_rig: MakeRig,
) -> None:
    """The 503 comes as soon as the headers are in: the 90 MiB announced are never waited for."""
    rig = await make_rig(
        env={
            "WA_PASSWORD": "Wrong-pass-1!",
            "GATEWAY_LOGIN_BACKOFF_INITIAL": "30",
            "GATEWAY_LOGIN_BACKOFF_MAX": "30",
        }
    )
    await until(lambda: rig.sim.login_attempts == 1)
    await until(lambda: not rig.gateway.pool.readiness(rig.gateway.webapp.account).ready)
    head = (
        b"POST /v1/media HTTP/1.1\r\nHost: gateway\r\nContent-Type: image/jpeg\r\n"
        b"Content-Length: 94371840\r\n\r\n"
    )
    async with Connection(rig.client.port, timeout=5) as conn:
        await conn.send(head + b"x" * 1024)
        answer = await conn.response()
    assert answer.status == 503
    assert b"refused the gateway's credentials" in answer.body
    assert rig.sim.seen_on("/v1/media") == []


async def test_the_gateway_recovers_by_itself_once_the_password_is_fixed_in_its_file(
    make_rig: MakeRig, tmp_path: Path
) -> None:
    password_file = tmp_path / "password"
    password_file.write_text("Wrong-pass-1!\n")
    rig = await make_rig(env={"WA_PASSWORD": None, "WA_PASSWORD_FILE": str(password_file)})
    async with rig.client.get("/_gateway/readyz") as response:
        await until(lambda: rig.sim.login_attempts >= 1)
    async with rig.client.get("/_gateway/readyz") as response:
        assert response.status == 503
        assert "bad_credentials" in (await response.json())["errors"][0]["details"]
    password_file.write_text(PASSWORD + "\n")
    await until(lambda: rig.gateway.pool.readiness(rig.gateway.webapp.account).ready)
    async with rig.client.get("/_gateway/readyz") as response:
        assert response.status == 200
    async with rig.client.post("/v1/messages", json=MESSAGE) as response:
        assert response.status == 201


@pytest.mark.parametrize(
    ("faults", "kind"),
    [
        ([LoginFault("status", status=500)] * 3, "webapp_unavailable"),
        ([LoginFault("status", status=503)] * 2, "webapp_unavailable"),
        ([LoginFault("reset")] * 2, "webapp_unavailable"),
        ([LoginFault("invalid_json"), LoginFault("empty")], "invalid_answer"),
        ([LoginFault("expired")], "invalid_answer"),
    ],
)
async def test_a_failing_login_recovers_by_itself_when_the_webapp_does(
    make_rig: MakeRig, faults: list[LoginFault], kind: str
) -> None:
    rig = await make_rig()
    rig.sim.login_script.extend(faults)
    rig.sim.revoke_all()
    account = rig.gateway.webapp.account
    await until(lambda: rig.sim.login_attempts >= 1)
    await until(lambda: rig.gateway.pool.readiness(account).ready)
    assert rig.sim.login_attempts == len(faults) + 1
    assert [e["kind"] for e in rig.logs.named("token.login_failed")] == [kind] * len(faults)
    async with rig.client.post("/v1/messages", json=MESSAGE) as response:
        assert response.status == 201


async def test_requests_while_the_webapp_is_unreachable_get_503_naming_the_cause(
    make_rig: MakeRig, unused_tcp_port: int
) -> None:
    rig = await make_rig(env={"WA_WEBAPP_URL": f"http://127.0.0.1:{unused_tcp_port}"})
    async with rig.client.post("/v1/messages", json=MESSAGE) as response:
        assert response.status == 503
        assert "cannot connect" in (await response.json())["errors"][0]["details"]
    async with rig.client.get("/_gateway/readyz") as response:
        assert response.status == 503
    async with rig.client.get("/_gateway/healthz") as response:
        assert response.status == 200


async def test_a_password_file_broken_at_runtime_is_a_login_failure_not_a_crash(
    make_rig: MakeRig, tmp_path: Path
) -> None:
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")
    rig = await make_rig(env={"WA_PASSWORD": None, "WA_PASSWORD_FILE": str(password_file)})
    async with rig.client.post("/v1/messages", json=MESSAGE) as response:
        assert response.status == 201
    password_file.write_text("Пароль-не-latin-1\n")
    rig.sim.revoke_all()
    async with rig.client.post("/v1/messages", json=MESSAGE) as response:
        assert response.status == 503
        assert "password file" in (await response.json())["errors"][0]["details"]
    (failure,) = rig.logs.named("token.login_failed")
    assert failure["kind"] == "bad_credentials"
