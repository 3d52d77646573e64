"""A 401 from the Webapp: invalidate the token used, log in once, replay once with the same body."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
from pathlib import Path

import aiohttp
import pytest

from gateway.simulator import Fault, Simulator

from .conftest import MESSAGE, PASSWORD, MakeRig, Rig, open_files, until


async def logged_in(rig: Rig) -> str:
    """Send one request so the gateway holds a token; return that token."""
    async with rig.client.post("/v1/messages", json=MESSAGE) as response:
        assert response.status == 201
    return rig.sim.seen_on("/v1/messages")[-1].credential or ""


async def test_a_revoked_token_is_replaced_and_the_request_replayed(rig: Rig) -> None:
    old = await logged_in(rig)
    rig.sim.revoke_all()
    async with rig.client.post("/v1/messages", json=MESSAGE) as response:
        assert response.status == 201
    attempts = rig.sim.seen_on("/v1/messages")[1:]
    assert [a.credential == old for a in attempts] == [True, False]
    assert attempts[1].credential in rig.sim.tokens
    assert attempts[0].request_id == attempts[1].request_id
    assert rig.sim.logins == 2
    (replay,) = rig.logs.named("request.replay")
    assert replay["generation"] == 2
    assert rig.logs.named("request.completed")[-1]["retried"] is True


async def test_two_hundred_requests_rejected_together_cause_one_login(make_rig: MakeRig) -> None:
    rig = await make_rig(env={"GATEWAY_UPSTREAM_CONNECTIONS": "250"})
    await logged_in(rig)
    rig.sim.revoke_all()
    rig.sim.login_delay = 1.0  # the rejections all arrive while the new login is in flight
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> int:
            async with session.post(f"{rig.url}/v1/messages", json=MESSAGE) as response:
                return response.status

        statuses = await asyncio.gather(*(one() for _ in range(200)))
    assert statuses == [201] * 200
    assert rig.sim.logins == 2
    # The test server's listen backlog (128) delays the rest past the login; they need no replay.
    assert rig.sim.unauthorized_count() > 100


async def test_a_replay_that_is_refused_again_returns_the_webapps_401(rig: Rig) -> None:
    await logged_in(rig)
    rig.sim.reject_all_tokens = True
    async with rig.client.post("/v1/messages", json=MESSAGE) as response:
        assert response.status == 401
        error = (await response.json())["errors"][0]
    assert error["code"] == 1005
    assert len(rig.sim.seen_on("/v1/messages")) == 1 + 2  # one replay, never more
    assert rig.sim.logins == 2


async def test_a_refused_api_key_is_not_replayed(make_rig: MakeRig) -> None:
    rig = await make_rig(
        sim=Simulator(
            password=PASSWORD, password_change_required=False, api_key="another-key-entirely"
        )
    )
    async with rig.client.get("/v1/health") as response:
        assert response.status == 401
    assert len(rig.sim.seen_on("/v1/health")) == 1
    assert rig.logs.named("request.replay") == []


@pytest.mark.parametrize("size", [1000, 3 * 1024 * 1024, 24 * 1024 * 1024])
async def test_an_upload_whose_token_was_revoked_arrives_whole_on_the_replay(
    make_rig: MakeRig, tmp_path: Path, size: int
) -> None:
    rig = await make_rig(env={"GATEWAY_SPOOL_DIR": str(tmp_path)})
    await logged_in(rig)
    rig.sim.revoke_all()
    payload = os.urandom(size)
    async with rig.client.post(
        "/v1/media", data=io.BytesIO(payload), headers={"Content-Type": "video/mp4"}
    ) as response:
        assert response.status == 201
        media_id = (await response.json())["media"][0]["id"]
    assert rig.sim.media_digest(media_id) == (size, hashlib.sha256(payload).hexdigest())
    uploads = rig.sim.seen_on("/v1/media", "POST")
    assert len(uploads) == 2
    assert uploads[1].headers["Content-Type"] == "video/mp4"
    assert uploads[1].headers["Content-Length"] == str(size)
    assert open_files(tmp_path) == 0  # the spool file went with the request


async def test_a_body_over_the_limit_gets_413_and_never_reaches_the_webapp(
    make_rig: MakeRig, tmp_path: Path
) -> None:
    rig = await make_rig(env={"GATEWAY_MAX_BODY": "1MiB", "GATEWAY_SPOOL_DIR": str(tmp_path)})
    big = io.BytesIO(b"x" * (2 * 1024 * 1024))
    async with rig.client.post("/v1/media", data=big) as response:
        assert response.status == 413
        assert (await response.json())["errors"][0]["code"] == 1009

    async def chunked() -> object:
        for _ in range(40):
            yield b"y" * 65536

    async with rig.client.post("/v1/media", data=chunked()) as response:
        assert response.status == 413
    assert rig.sim.seen_on("/v1/media") == []
    assert open_files(tmp_path) == 0


async def test_a_late_401_for_an_old_token_keeps_the_new_one(rig: Rig) -> None:
    """A slow request still carrying the first token is refused after the gateway already moved on
    to a second one: the gateway must replay with the second, not log in a third time."""
    first = await logged_in(rig)
    slow_path = "/v1/settings/application"
    rig.sim.faults = [Fault("delay", path=slow_path, delay=0.5)]
    async with asyncio.TaskGroup() as group:
        slow = group.create_task(rig.client.get(slow_path))
        async with asyncio.timeout(5):  # the slow request is at the Webapp, with token 1
            while not rig.sim.seen_on(slow_path):
                await asyncio.sleep(0.01)
        rig.sim.revoke_all()
        async with rig.client.post("/v1/messages", json=MESSAGE) as response:
            assert response.status == 201  # 401, login (token 2), replay
    async with slow.result() as response:
        assert response.status == 200
    attempts = rig.sim.seen_on(slow_path)
    assert [a.credential == first for a in attempts] == [True, False]  # refused late, replayed
    assert rig.sim.logins == 2


async def test_a_webapp_that_refuses_every_token_meets_backoff_not_a_login_storm(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(
        env={"GATEWAY_LOGIN_BACKOFF_INITIAL": "2", "GATEWAY_LOGIN_BACKOFF_MAX": "2"}
    )
    await logged_in(rig)
    rig.sim.reject_all_tokens = True
    statuses = []
    for _ in range(50):
        async with rig.client.post("/v1/messages", json=MESSAGE) as response:
            statuses.append(response.status)
    assert set(statuses) <= {401, 503}
    assert statuses[0] == 401  # the Webapp's own answer to the replay
    # The first login; one after the first refusal (a revocation racing a login would explain
    # it); the second request's own and its replay's: then the backoff, and no more.
    assert rig.sim.logins == 4
    async with rig.client.get("/_gateway/readyz") as response:
        assert response.status == 503
        assert "token_rejected" in (await response.json())["errors"][0]["details"]
    rig.sim.reject_all_tokens = False
    async with asyncio.timeout(10):
        while True:
            async with rig.client.post("/v1/messages", json=MESSAGE) as response:
                if response.status == 201:
                    break
            await asyncio.sleep(0.1)
    async with rig.client.get("/_gateway/readyz") as response:
        assert response.status == 200


@pytest.mark.parametrize("status", [429, 503])
async def test_a_token_check_answered_with_a_rate_limit_or_5xx_does_not_make_the_gateway_ready(
    make_rig: MakeRig, status: int
) -> None:
    """The Webapp counts a request against its rate limit, and may fail it, before it looks at
    the token: such an answer to the check says nothing of the token, nor does one to a client's
    request. Readiness stays 503 until a token is really accepted."""
    rig = await make_rig(
        env={"GATEWAY_LOGIN_BACKOFF_INITIAL": "0.2", "GATEWAY_LOGIN_BACKOFF_MAX": "0.2"}
    )
    await logged_in(rig)
    rig.sim.reject_all_tokens = True
    for _ in range(4):
        async with rig.client.post("/v1/messages", json=MESSAGE) as response:
            assert response.status in (401, 503)
    rig.sim.faults.append(Fault("status", path="/v1/health", status=status, times=None))
    rig.sim.faults.append(Fault("status", path="/v1/messages", status=status, times=None))

    def checks() -> list[int | None]:
        return [
            seen.status for seen in rig.sim.seen_on("/v1/health") if seen.auth_scheme == "bearer"
        ]

    await until(lambda: len(checks()) >= 2 and checks()[-1] is not None)
    async with rig.client.post("/v1/messages", json=MESSAGE) as response:
        assert response.status in (status, 503)
    async with rig.client.get("/_gateway/readyz") as response:
        assert response.status == 503
    rig.sim.faults.clear()
    rig.sim.reject_all_tokens = False
    await until(lambda: checks()[-1] == 200)
    async with rig.client.get("/_gateway/readyz") as response:
        assert response.status == 200


async def test_a_spool_that_cannot_be_written_gives_a_named_503_not_a_crash(
    make_rig: MakeRig, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    rig = await make_rig(env={"GATEWAY_SPOOL_DIR": str(spool)})
    spool.rmdir()  # the disk under the gateway went away
    async with rig.client.post("/v1/media", data=io.BytesIO(b"x" * (3 << 20))) as response:
        assert response.status == 503
        error = (await response.json())["errors"][0]
    assert "ENOENT" in error["details"]
    assert rig.sim.seen_on("/v1/media") == []
    assert not rig.logs.named("request.crashed")
    (event,) = [e for e in rig.logs.named("request.completed") if e["path"] == "/v1/media"]
    assert event["failure"] == "spool_failed"
