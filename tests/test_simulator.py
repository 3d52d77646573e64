"""The Webapp simulator, exercised through real sockets."""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import io
import json
import logging
import re
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient, AiohttpServer

from gateway.simulator import (
    SIMULATOR,
    Fault,
    FaultKind,
    LoginFault,
    RateBuckets,
    RateLimit,
    Simulator,
    synthetic_media_bytes,
    synthetic_media_sha256,
)

from . import rawhttp

Client = TestClient[Any, Any] | aiohttp.ClientSession
META = {"version": "v2.45.1", "api_status": "stable"}
DEFAULT_PASSWORD = "secret"
STRONG = "N3w-Passw0rd"
SHORT = aiohttp.ClientTimeout(total=0.3)
EXPIRES_AFTER = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+00:00$")


def basic(username: str = "admin", password: str = DEFAULT_PASSWORD) -> str:
    """An Authorization header value for Basic credentials."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def bearer(token: str) -> dict[str, str]:
    """Headers carrying a bearer token."""
    return {"Authorization": f"Bearer {token}"}


def parse_expires_after(value: str) -> float:
    """Both formats of expires_after seen in the wild, as epoch seconds."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


async def login(client: Client, password: str = DEFAULT_PASSWORD, **body: str) -> str:
    """Log in as admin and return the token."""
    resp = await client.post(
        "/v1/users/login", headers={"Authorization": basic("admin", password)}, json=body or None
    )
    assert resp.status == 200, await resp.text()
    data = await resp.json()
    token: str = data["users"][0]["token"]
    return token


async def error_code(resp: aiohttp.ClientResponse) -> int:
    """The code of a WhatsApp-style error body (checking its shape on the way)."""
    data = await resp.json()
    assert data["meta"] == META
    assert set(data["errors"][0]) == {"code", "title", "details"}
    code: int = data["errors"][0]["code"]
    return code


async def valid(client: Client, token: str) -> bool:
    """Whether the simulator accepts ``token`` on a secured path."""
    resp = await client.get("/v1/health", headers=bearer(token))
    assert resp.status in {200, 401}
    return resp.status == 200


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait up to two seconds for `condition` (the simulator has no event to await)."""
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not within two seconds")


async def change_password(
    client: aiohttp.ClientSession | Client,
    password: str = DEFAULT_PASSWORD,
    new_password: str = STRONG,
    limit: aiohttp.ClientTimeout = SHORT,
) -> aiohttp.ClientResponse:
    """A login of ``admin`` that sets ``new_password``, given up after ``limit``."""
    return await client.post(
        "/v1/users/login",
        headers={"Authorization": basic("admin", password)},
        json={"new_password": new_password},
        timeout=limit,
    )


async def settled(sim: Simulator) -> None:
    """Wait until the simulator has finished every request, held ones included."""
    await eventually(lambda: sim.in_flight == 0)


def files_in(path: Path) -> list[Path]:
    """The entries of a directory (a helper, so async tests do no blocking I/O themselves)."""
    return list(path.iterdir())


@pytest.fixture(autouse=True)
def no_server_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Whatever a test does, the simulator never makes aiohttp log an error."""
    yield
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


@pytest.fixture
def sim() -> Simulator:
    """A simulator whose admin password needs no change."""
    return Simulator(password_change_required=False, api_key="k" * 20)


@pytest.fixture
async def client(sim: Simulator, aiohttp_client: AiohttpClient) -> Client:
    """A client of `sim` on a real socket."""
    return await aiohttp_client(sim.make_app())


@pytest.fixture(params=[True, False], ids=["cancelling", "non-cancelling"])
async def served(
    request: pytest.FixtureRequest, sim: Simulator
) -> AsyncIterator[aiohttp.ClientSession]:
    """A session on `sim` served with and without handler cancellation.

    aiohttp's test server cancels the handler of a client that hangs up; AppRunner and run_app
    (the demo) do not, so held requests must notice the hang-up themselves.
    """
    runner = web.AppRunner(sim.make_app(), handler_cancellation=request.param)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as session:
            yield session
    finally:
        await runner.cleanup()


# --- login -------------------------------------------------------------------------------


async def test_login_answers_token_expiry_and_date(sim: Simulator, client: Client) -> None:
    resp = await client.post("/v1/users/login", headers={"Authorization": basic()})
    assert resp.status == 200
    data = await resp.json()
    assert data["meta"] == META
    [user] = data["users"]
    assert EXPIRES_AFTER.match(user["expires_after"])
    expires_at = parse_expires_after(user["expires_after"])
    date = parsedate_to_datetime(resp.headers["Date"]).timestamp()
    assert expires_at - date == 7 * 24 * 3600
    assert abs(date - time.time()) < 5
    assert sim.tokens[user["token"]].expires_at == expires_at
    assert sim.tokens[user["token"]].username == "admin"
    assert (sim.login_attempts, sim.logins) == (1, 1)


async def test_clock_skew_dates_login_and_every_answer(sim: Simulator, client: Client) -> None:
    sim.clock_skew = -86400.0
    sim.token_lifetime = 60.0
    resp = await client.post("/v1/users/login", headers={"Authorization": basic()})
    date = parsedate_to_datetime(resp.headers["Date"]).timestamp()
    assert abs(date - (time.time() - 86400)) < 5
    token = (await resp.json())["users"][0]["token"]
    assert sim.tokens[token].expires_at - date == 60
    health = await client.get("/v1/health", headers=bearer(token))
    assert abs(parsedate_to_datetime(health.headers["Date"]).timestamp() - date) < 5


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        basic("admin", "wrong"),
        basic("nobody", "secret"),
        "Basic !!!not-base64",
        "Basic " + base64.b64encode(b"\xff\xfe").decode(),
        "Basic " + base64.b64encode(b"no-colon").decode(),
        "Basic",
        "Bearer something",
    ],
)
async def test_login_refuses_bad_credentials(
    sim: Simulator, client: Client, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    resp = await client.post("/v1/users/login", headers=headers)
    assert resp.status == 401
    assert await error_code(resp) == 1005
    assert "secret" not in await resp.text()
    assert (sim.login_attempts, sim.logins, sim.unauthorized_count()) == (1, 0, 0)


async def test_password_change_is_required_on_first_login(aiohttp_client: AiohttpClient) -> None:
    sim = Simulator()
    client = await aiohttp_client(sim.make_app())
    auth = {"Authorization": basic()}
    resp = await client.post("/v1/users/login", headers=auth)
    assert (resp.status, await error_code(resp)) == (400, 1024)
    for weak in [
        "shrt1A!",
        "L0ng-" + "x" * 60,
        "nouppercase1!",
        "NOLOWERCASE1!",
        "NoDigits!!",
        "NoSpecial12",
        42,
    ]:
        resp = await client.post("/v1/users/login", headers=auth, json={"new_password": weak})
        assert (resp.status, await error_code(resp)) == (400, 1009), weak
        assert str(weak) not in (await resp.json())["errors"][0]["details"]
    resp = await client.post("/v1/users/login", headers=auth, data=b"{not json")
    assert (resp.status, await error_code(resp)) == (400, 1009)
    resp = await client.post("/v1/users/login", headers=auth, json={"new_password": STRONG})
    assert resp.status == 200
    assert sim.password == STRONG
    assert not sim.password_change_required
    assert sim.logins == 1
    resp = await client.post("/v1/users/login", headers=auth)
    assert resp.status == 401
    await login(client, STRONG)


async def test_password_change_is_optional_later(sim: Simulator, client: Client) -> None:
    await login(client, new_password=STRONG)
    assert sim.password == STRONG


async def test_other_users_can_change_their_password_at_login(
    sim: Simulator, client: Client
) -> None:
    sim.users["bob"] = STRONG
    resp = await client.post(
        "/v1/users/login",
        headers={"Authorization": basic("bob", STRONG)},
        json={"new_password": "Other-Pass1"},
    )
    assert resp.status == 200
    assert sim.users["bob"] == "Other-Pass1"
    assert sim.password == "secret"


async def test_password_can_be_set_by_a_test(sim: Simulator, client: Client) -> None:
    sim.password = STRONG
    assert sim.users["admin"] == STRONG
    await login(client, STRONG)


@pytest.mark.parametrize("revokes", [False, True], ids=["keeps", "revokes"])
async def test_a_password_change_at_login_may_revoke_earlier_tokens(
    sim: Simulator, client: Client, revokes: bool
) -> None:
    sim.password_change_revokes = revokes
    sim.users["bob"] = STRONG
    bob = await client.post("/v1/users/login", headers={"Authorization": basic("bob", STRONG)})
    bob_token = (await bob.json())["users"][0]["token"]
    earlier = [await login(client), await login(client)]
    changing = await login(client, new_password=STRONG)
    later = await login(client, STRONG)
    assert sim.password_changes == 1
    assert [await valid(client, token) for token in earlier] == [not revokes] * 2
    # The changing login's own token, later ones and other users' tokens are untouched.
    for token in (changing, later, bob_token):
        assert await valid(client, token)


async def test_only_accepted_password_changes_count(sim: Simulator, client: Client) -> None:
    sim.password_change_revokes = True
    token = await login(client)
    for password, new_password in [("wrong", STRONG), (DEFAULT_PASSWORD, "weak")]:
        resp = await client.post(
            "/v1/users/login",
            headers={"Authorization": basic("admin", password)},
            json={"new_password": new_password},
        )
        assert resp.status in {400, 401}
    for name, body in [("admin", {"password": "weak"}), ("admin", {}), ("nobody", {})]:
        resp = await client.put(f"/v1/users/{name}", headers=bearer(token), json=body)
        assert resp.status in {400, 404}
    sim.password = "Set-by-test1"  # a test hook, not a change made through the API
    assert sim.password_changes == 0
    assert await valid(client, token)


async def test_several_tokens_of_one_user_are_valid_at_once(sim: Simulator, client: Client) -> None:
    first, second = await login(client), await login(client)
    assert first != second
    assert set(sim.tokens) == {first, second}
    for token in (first, second):
        assert (await client.get("/v1/health", headers=bearer(token))).status == 200


async def test_login_waits_login_delay(sim: Simulator, client: Client) -> None:
    sim.login_delay = 0.1
    started = time.monotonic()
    await login(client)
    assert time.monotonic() - started >= 0.1


async def test_login_delay_ends_when_client_hangs_up(
    sim: Simulator, served: aiohttp.ClientSession
) -> None:
    sim.login_delay = 30.0
    with pytest.raises(TimeoutError):
        await served.post("/v1/users/login", headers={"Authorization": basic()}, timeout=SHORT)
    await settled(sim)  # the held login ends once the client has hung up
    assert sim.logins == 0


# --- tokens ------------------------------------------------------------------------------


async def test_expired_token_gets_401_and_is_deleted(sim: Simulator, client: Client) -> None:
    token = await login(client)
    sim.expire_all()
    resp = await client.get("/v1/health", headers=bearer(token))
    assert (resp.status, await error_code(resp)) == (401, 1005)
    assert token not in sim.tokens
    assert sim.unauthorized_count() == 1


async def test_tokens_expire_by_the_simulator_clock(sim: Simulator, client: Client) -> None:
    token = await login(client)
    sim.clock_skew = 7 * 24 * 3600 + 1
    assert (await client.get("/v1/health", headers=bearer(token))).status == 401
    assert sim.tokens == {}


async def test_revoke_hooks(sim: Simulator, client: Client) -> None:
    first, second = await login(client), await login(client)
    sim.revoke(first)
    sim.revoke("unknown")
    assert set(sim.tokens) == {second}
    sim.revoke_all()
    assert (await client.get("/v1/health", headers=bearer(second))).status == 401


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer"}, bearer("made-up"), {"Authorization": basic()}],
)
async def test_secured_paths_need_a_valid_token(
    sim: Simulator, client: Client, headers: dict[str, str]
) -> None:
    for path in ["/v1/messages", "/metrics", "/v1/no/such/path"]:
        resp = await client.get(path, headers=headers)
        assert (resp.status, await error_code(resp)) == (401, 1005)
    assert sim.unauthorized_count() == 3


async def test_reject_all_tokens(sim: Simulator, client: Client) -> None:
    token = await login(client)
    sim.reject_all_tokens = True
    for headers in [bearer(token), {"Authorization": "Apikey " + "k" * 20}]:
        assert (await client.get("/v1/health", headers=headers)).status == 401
    assert token in sim.tokens
    sim.reject_all_tokens = False
    assert (await client.get("/v1/health", headers=bearer(token))).status == 200


async def test_logout_revokes_only_the_token_sent(sim: Simulator, client: Client) -> None:
    first, second = await login(client), await login(client)
    resp = await client.post("/v1/users/logout", headers=bearer(first))
    assert resp.status == 200
    assert await resp.json() == {"meta": META}
    assert set(sim.tokens) == {second}


async def test_logout_can_revoke_all_tokens_of_the_user(sim: Simulator, client: Client) -> None:
    sim.logout_revokes = "all"
    sim.users["other"] = STRONG
    first, second = await login(client), await login(client)
    other = await client.post("/v1/users/login", headers={"Authorization": basic("other", STRONG)})
    other_token = (await other.json())["users"][0]["token"]
    assert (await client.post("/v1/users/logout", headers=bearer(first))).status == 200
    assert set(sim.tokens) == {other_token}
    assert (await client.get("/v1/health", headers=bearer(second))).status == 401


# --- api key -----------------------------------------------------------------------------


async def test_apikey_is_accepted_on_four_endpoints_only(sim: Simulator, client: Client) -> None:
    key = {"Authorization": "Apikey " + "k" * 20}
    for path in ["/v1/health", "/metrics", "/v1/stats/app", "/v1/stats/db"]:
        assert (await client.get(path, headers=key)).status == 200, path
        assert (await client.head(path, headers=key)).status == 200, path  # what GET gets
    for method, path in [
        ("POST", "/v1/messages"),
        ("GET", "/v1/settings/application"),
        ("GET", "/v1/users/admin"),
        ("POST", "/v1/users/logout"),
    ]:
        resp = await client.request(method, path, headers=key, json={"to": "1"})
        assert resp.status == 401, path
    wrong = await client.get("/v1/health", headers={"Authorization": "Apikey " + "x" * 20})
    assert wrong.status == 401
    assert "k" * 20 not in await wrong.text()


@pytest.mark.parametrize(
    ("call", "authorization"),
    [
        ("POST /v1/users/login", "Basic \xff"),
        ("POST /v1/users/login", "Basic \xc3\xa9\xc3\xa9"),
        ("GET /v1/health", "Apikey \xff"),
        ("GET /v1/messages", "Bearer \xff"),
    ],
    ids=["basic-not-base64", "basic-not-ascii", "apikey-not-utf8", "bearer-not-utf8"],
)
async def test_credentials_in_bytes_beyond_ascii_get_401_not_a_crash(
    sim: Simulator, client: Client, call: str, authorization: str
) -> None:
    assert client.port is not None
    request_line = call + " HTTP/1.1"
    response = await rawhttp.request(
        "127.0.0.1", client.port, request_line, f"Authorization: {authorization}"
    )
    assert response.status == 401
    assert json.loads(response.body)["errors"][0]["code"] == 1005
    assert [seen.status for seen in sim.seen] == [401]


async def test_apikey_is_refused_when_none_is_set(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(Simulator().make_app())
    resp = await client.get("/v1/health", headers={"Authorization": "Apikey " + "k" * 20})
    assert resp.status == 401


# --- users -------------------------------------------------------------------------------


async def test_user_management(sim: Simulator, client: Client) -> None:
    admin = bearer(await login(client))
    resp = await client.post(
        "/v1/users", headers=admin, json={"username": "bob", "password": STRONG}
    )
    assert resp.status == 201
    assert (await resp.json())["users"] == [{"username": "bob"}]
    resp = await client.post(
        "/v1/users", headers=admin, json={"username": "bob", "password": STRONG}
    )
    assert (resp.status, await error_code(resp)) == (409, 1004)
    for body, code in [
        ({"password": STRONG}, 1008),
        ({"username": 7, "password": STRONG}, 1009),
        ({"username": "eve", "password": "weak"}, 1009),
        ([1, 2], 1009),
    ]:
        resp = await client.post("/v1/users", headers=admin, json=body)
        assert (resp.status, await error_code(resp)) == (400, code), body
    resp = await client.get("/v1/users/bob", headers=admin)
    assert (await resp.json())["users"] == [{"username": "bob"}]
    resp = await client.get("/v1/users/nobody", headers=admin)
    assert (resp.status, await error_code(resp)) == (404, 1006)

    resp = await client.put("/v1/users/bob", headers=admin, json={"password": "Other-Pass1"})
    assert resp.status == 200
    resp = await client.put("/v1/users/bob", headers=admin, json={"password": "weak"})
    assert (resp.status, await error_code(resp)) == (400, 1009)
    bob = await client.post(
        "/v1/users/login", headers={"Authorization": basic("bob", "Other-Pass1")}
    )
    bob_token = (await bob.json())["users"][0]["token"]
    resp = await client.get("/v1/users/admin", headers=bearer(bob_token))
    assert (resp.status, await error_code(resp)) == (403, 1005)

    assert (await client.delete("/v1/users/bob", headers=admin)).status == 200
    assert "bob" not in sim.users
    assert (await client.get("/v1/health", headers=bearer(bob_token))).status == 401


async def test_put_on_own_user_changes_password(sim: Simulator, client: Client) -> None:
    admin = bearer(await login(client))
    resp = await client.put("/v1/users/admin", headers=admin, json={"password": STRONG})
    assert resp.status == 200
    assert sim.password == STRONG


@pytest.mark.parametrize("revokes", [False, True], ids=["keeps", "revokes"])
async def test_a_password_change_by_put_may_revoke_the_users_tokens(
    sim: Simulator, client: Client, revokes: bool
) -> None:
    sim.password_change_revokes = revokes
    sim.users["bob"] = STRONG
    first, second = await login(client), await login(client)
    bob = await client.post("/v1/users/login", headers={"Authorization": basic("bob", STRONG)})
    bob_token = (await bob.json())["users"][0]["token"]
    resp = await client.put("/v1/users/bob", headers=bearer(first), json={"password": "Other-1!a"})
    assert resp.status == 200
    assert sim.password_changes == 1
    assert await valid(client, bob_token) is not revokes
    assert [await valid(client, token) for token in (first, second)] == [True, True]
    # One's own password: the answer arrives even when the change revokes the token it came with.
    resp = await client.put("/v1/users/admin", headers=bearer(first), json={"password": STRONG})
    assert resp.status == 200
    assert sim.password_changes == 2
    assert [await valid(client, token) for token in (first, second)] == [not revokes] * 2
    assert await valid(client, await login(client, STRONG))


async def test_deleting_the_own_user_revokes_its_tokens_but_keeps_it(
    sim: Simulator, client: Client
) -> None:
    first, second = await login(client), await login(client)
    assert (await client.delete("/v1/users/admin", headers=bearer(first))).status == 200
    assert sim.tokens == {}
    assert second not in sim.tokens
    assert sim.password == "secret"
    await login(client)


# --- everyday endpoints ------------------------------------------------------------------


async def test_messages(client: Client) -> None:
    auth = bearer(await login(client))
    resp = await client.post(
        "/v1/messages", headers=auth, json={"to": "16315551234", "type": "text"}
    )
    assert resp.status == 201
    [message] = (await resp.json())["messages"]
    assert re.fullmatch(r"gBEG[A-Za-z0-9]{24}", message["id"])
    for body, code in [({"type": "text"}, 1008), ({"to": 1}, 1009), (None, 1008)]:
        resp = await client.post("/v1/messages", headers=auth, json=body)
        assert (resp.status, await error_code(resp)) == (400, code), body
    for raw in [b"[1]", b'{"to": ', b"\xff", b"[" * 100_000]:
        resp = await client.post("/v1/messages", headers=auth, data=raw)
        assert (resp.status, await error_code(resp)) == (400, 1009)


async def test_json_bodies_over_a_mebibyte_are_refused(sim: Simulator, client: Client) -> None:
    auth = bearer(await login(client))
    resp = await client.post(
        "/v1/messages", headers=auth, data=io.BytesIO(b" " * (1024 * 1024 + 1))
    )
    assert (resp.status, await error_code(resp)) == (413, 1009)


async def test_contacts(client: Client) -> None:
    auth = bearer(await login(client))
    body = {"blocking": "wait", "contacts": ["+1 631 555 1001", "nope"]}
    resp = await client.post("/v1/contacts", headers=auth, json=body)
    assert resp.status == 200
    assert (await resp.json())["contacts"] == [
        {"input": "+1 631 555 1001", "status": "valid", "wa_id": "16315551001"},
        {"input": "nope", "status": "invalid"},
    ]
    for bad, code in [({}, 1008), ({"contacts": "x"}, 1009), ({"contacts": [1]}, 1009)]:
        resp = await client.post("/v1/contacts", headers=auth, json=bad)
        assert (resp.status, await error_code(resp)) == (400, code)


async def test_health_metrics_stats(sim: Simulator, client: Client) -> None:
    auth = bearer(await login(client))
    resp = await client.get("/v1/health", headers=auth)
    assert await resp.json() == {"health": {"gateway_status": "connected"}, "meta": META}
    resp = await client.get("/metrics", headers=auth)
    assert (await resp.json())["metrics"]["logins_total"] == 1
    resp = await client.get("/metrics?format=prometheus", headers=auth)
    assert resp.headers["Content-Type"].startswith("text/plain")
    text = await resp.text()
    assert "# TYPE wa_logins_total counter\nwa_logins_total 1\n" in text
    assert "# TYPE wa_tokens_valid gauge\n" in text
    resp = await client.get("/v1/stats/app", headers=auth)
    assert (await resp.json())["app"]["stats"]["logins"] == 1
    resp = await client.get("/v1/stats/db", headers=auth)
    assert (await resp.json())["db"]["stats"] == {"users": 1, "media": 0}


async def test_settings(sim: Simulator, client: Client) -> None:
    auth = bearer(await login(client))
    resp = await client.patch(
        "/v1/settings/application", headers=auth, json={"webhooks": {"url": "u"}}
    )
    assert await resp.json() == {"meta": META}
    resp = await client.get("/v1/settings/application", headers=auth)
    settings = (await resp.json())["settings"]["application"]
    assert settings["webhooks"] == {"url": "u"}
    assert settings["callback_persist"] is True
    resp = await client.patch("/v1/settings/application", headers=auth, json=["x"])
    assert (resp.status, await error_code(resp)) == (400, 1009)


async def test_unknown_paths_are_404_with_errors(client: Client) -> None:
    resp = await client.get("/nowhere")
    assert (resp.status, await error_code(resp)) == (404, 1006)
    auth = bearer(await login(client))
    for method, path in [("GET", "/v1/messages"), ("POST", "/v1/unknown"), ("HEAD", "/x")]:
        resp = await client.request(method, path, headers=auth)
        assert resp.status == 404, path


async def raw_answer(client: Client, method: str, path: str, token: str) -> rawhttp.RawResponse:
    """One request on a connection of its own, read until the simulator closes it: every byte
    the simulator sent is in the answer, whatever its headers declared."""
    assert isinstance(client, TestClient)
    assert client.port is not None
    lines = [f"{method} {path} HTTP/1.1", "Host: sim", f"Authorization: Bearer {token}"]
    data = "\r\n".join([*lines, "Connection: close", "", ""]).encode()
    return rawhttp.parse(await rawhttp.exchange("127.0.0.1", client.port, data))


def get_paths(app: web.Application, values: dict[str, list[str]]) -> list[str]:
    """A path for every GET route of ``app``, each placeholder filled in with each of ``values``."""
    paths = []
    for route in app.router.routes():
        if route.method == "GET" and route.resource is not None:
            template = route.resource.canonical
            filled = [template]
            for placeholder, options in values.items():
                if placeholder in template:
                    filled = [template.replace(placeholder, option) for option in options]
            assert all("{" not in path for path in filled), f"fill in the placeholder of {template}"
            paths += filled
    return paths


@pytest.mark.parametrize("fault", [None, "cut_body", "trickle", "delay", "status"])
async def test_head_gets_the_headers_of_get_and_no_body_on_every_get_route(
    sim: Simulator, client: Client, fault: FaultKind | None
) -> None:
    """aiohttp sends whatever a StreamResponse writes, even to HEAD: no route and no fault may
    write a body byte in answer to HEAD (a keep-alive client would read it as the next answer)."""
    assert isinstance(client, TestClient)
    assert client.app is not None
    token = await login(client)
    uploaded = await client.post("/v1/media", headers=bearer(token), data=b"abc")
    media = [sim.add_media(5000), (await uploaded.json())["media"][0]["id"], "unknown"]
    paths = get_paths(client.app, {"{name}": ["admin"], "{id}": media})
    paths += ["/metrics?format=prometheus", "/nowhere"]  # the catch-all route answers HEAD too
    assert len(paths) == 11
    for path in paths:
        answers = {}
        for method in ("HEAD", "GET"):
            if fault is not None:
                sim.faults = [Fault(fault, path=path.partition("?")[0], delay=0.001)]
            answers[method] = await raw_answer(client, method, path, token)
        head, get = answers["HEAD"], answers["GET"]
        assert head.body == b"", (path, fault)
        assert head.status == get.status, path
        assert head.headers.get("content-type") == get.headers.get("content-type"), path
        if fault in {"cut_body", "trickle"}:
            assert head.headers["content-length"] == get.headers["content-length"], path
            assert get.body in {b"x" * 1000, b'{"meta":1}'}, path
    # The status each HEAD was answered with is on its record.
    expected = {"cut_body": {200}, "trickle": {200}, "status": {500}}.get(fault or "", {200, 404})
    assert sorted(s.path_qs for s in sim.seen if s.method == "HEAD") == sorted(paths)
    assert {s.status for s in sim.seen if s.method == "HEAD"} == expected


# --- media -------------------------------------------------------------------------------


async def test_media_round_trip(sim: Simulator, client: Client, tmp_path: Path) -> None:
    auth = bearer(await login(client))
    data = bytes(range(256)) * 1200  # several chunks
    headers = {**auth, "Content-Type": "image/png"}
    resp = await client.post("/v1/media", headers=headers, data=data)
    assert resp.status == 201
    body = await resp.json()
    [media] = body["media"]
    assert body["meta"] == META
    assert sim.media_digest(media["id"]) == (len(data), hashlib.sha256(data).hexdigest())
    assert sim.seen_on("/v1/media", "POST")[0].body_size == len(data)

    resp = await client.get(f"/v1/media/{media['id']}", headers=auth)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "image/png"
    assert resp.headers["Content-Length"] == str(len(data))
    assert await resp.read() == data

    assert (await client.delete(f"/v1/media/{media['id']}", headers=auth)).status == 200
    resp = await client.get(f"/v1/media/{media['id']}", headers=auth)
    assert resp.status == 404
    assert await resp.read() == b""
    resp = await client.delete(f"/v1/media/{media['id']}", headers=auth)
    assert (resp.status, await error_code(resp)) == (404, 1006)
    with pytest.raises(KeyError):
        sim.media_digest(media["id"])


async def test_media_is_stored_in_media_dir(tmp_path: Path, aiohttp_client: AiohttpClient) -> None:
    sim = Simulator(password_change_required=False, media_dir=str(tmp_path))
    client = await aiohttp_client(sim.make_app())
    resp = await client.post("/v1/media", headers=bearer(await login(client)), data=b"abc")
    media_id = (await resp.json())["media"][0]["id"]
    assert (tmp_path / media_id).read_bytes() == b"abc"
    await client.close()
    assert (tmp_path / media_id).exists()  # a directory it was given is left alone


async def test_temporary_media_dir_is_removed_on_cleanup(
    tmp_path: Path, aiohttp_client: AiohttpClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    sim = Simulator(password_change_required=False)
    client = await aiohttp_client(sim.make_app())
    auth = bearer(await login(client))
    uploaded = await client.post("/v1/media", headers=auth, data=b"abc")
    uploaded_id = (await uploaded.json())["media"][0]["id"]
    synthetic_id = sim.add_media(10)
    await client.post("/v1/media", headers=auth, data=b"def")
    assert len(files_in(tmp_path)) == 1
    await client.close()
    assert files_in(tmp_path) == []
    assert sim.media_digest(synthetic_id)[0] == 10
    with pytest.raises(KeyError):
        sim.media_digest(uploaded_id)


async def test_media_over_the_limit_is_refused(
    tmp_path: Path, aiohttp_client: AiohttpClient
) -> None:
    sim = Simulator(password_change_required=False, media_dir=str(tmp_path), max_media_size=1000)
    client = await aiohttp_client(sim.make_app())
    resp = await client.post("/v1/media", headers=bearer(await login(client)), data=b"x" * 5000)
    assert (resp.status, await error_code(resp)) == (413, 1009)
    assert files_in(tmp_path) == []
    assert sim.seen[-1].body_size > 1000


async def test_max_media_size_set_on_a_serving_simulator_applies_to_the_next_upload(
    sim: Simulator, client: Client
) -> None:
    auth = bearer(await login(client))
    sim.max_media_size = 10
    refused = await client.post("/v1/media", headers=auth, data=b"x" * 11)
    assert (refused.status, await error_code(refused)) == (413, 1009)
    sim.max_media_size = 11
    accepted = await client.post("/v1/media", headers=auth, data=b"x" * 11)
    assert accepted.status == 201


async def test_synthetic_media_download(sim: Simulator, client: Client) -> None:
    size = 200_003
    media_id = sim.add_media(size, "video/mp4")
    resp = await client.get(f"/v1/media/{media_id}", headers=bearer(await login(client)))
    assert resp.headers["Content-Type"] == "video/mp4"
    assert resp.headers["Content-Length"] == str(size)
    digest = hashlib.sha256(await resp.read()).hexdigest()
    assert sim.media_digest(media_id) == (size, digest)
    assert synthetic_media_sha256(size) == digest
    assert sum(len(c) for c in synthetic_media_bytes(size)) == size
    resp = await client.delete(f"/v1/media/{media_id}", headers=bearer(await login(client)))
    assert resp.status == 200
    with pytest.raises(KeyError):
        sim.media_digest(media_id)


def test_synthetic_media_does_not_repeat_at_chunk_boundaries() -> None:
    chunks = list(synthetic_media_bytes(200_000))
    assert len(set(chunks)) == len(chunks)
    assert synthetic_media_sha256(0) == hashlib.sha256(b"").hexdigest()


async def test_synthetic_download_survives_a_client_hanging_up(
    sim: Simulator, served: aiohttp.ClientSession
) -> None:
    media_id = sim.add_media(50 * 1024 * 1024)
    resp = await served.get(f"/v1/media/{media_id}", headers=bearer(await login(served)))
    await resp.content.readexactly(1024)
    resp.close()
    await settled(sim)  # the handler meets the closed connection and returns quietly


# --- seen records ------------------------------------------------------------------------


async def test_seen_records_every_request(sim: Simulator, client: Client) -> None:
    token = await login(client)
    headers = {**bearer(token), "X-Request-ID": "req-1", "X-Other": "v"}
    await client.post("/v1/messages?a=1&b=x%20y", headers=headers, json={"to": "1"})
    await client.get("/nowhere")
    login_seen, message, nowhere = sim.seen
    assert (login_seen.auth_scheme, login_seen.method) == ("basic", "POST")
    assert message.path_qs == "/v1/messages?a=1&b=x%20y"
    assert (message.auth_scheme, message.credential) == ("bearer", token)
    assert message.request_id == "req-1"
    assert message.headers["x-other"] == "v"
    assert message.body_size == len(b'{"to": "1"}')
    assert (nowhere.auth_scheme, nowhere.credential, nowhere.body_size) == (None, None, 0)
    assert sim.seen_on("/v1/") == [login_seen, message]
    assert sim.seen_on("/v1/", "post") == [login_seen, message]
    assert sim.seen_on("/v1/messages", "GET") == []


@pytest.mark.parametrize("clear", [False, True])
async def test_body_size_lands_on_its_own_record(
    sim: Simulator, client: Client, clear: bool
) -> None:
    """A slow request's body size reaches its record, even after later requests or a clear."""
    auth = bearer(await login(client))
    sim.faults.append(Fault("delay", path="/v1/messages", delay=0.1))
    slow = asyncio.create_task(client.post("/v1/messages", headers=auth, json={"to": "1"}))
    await eventually(lambda: bool(sim.seen_on("/v1/messages")))
    if clear:
        sim.seen.clear()
    await client.get("/nowhere")
    assert (await asyncio.wait_for(slow, 2)).status == 201
    sizes = [(s.path_qs, s.body_size) for s in sim.seen]
    expected = [("/v1/messages", len(b'{"to": "1"}')), ("/nowhere", 0)]
    assert sizes == (expected[1:] if clear else [("/v1/users/login", 0), *expected])


async def test_seen_records_the_status_answered_or_none_for_a_hang_up(
    sim: Simulator, client: Client
) -> None:
    auth = bearer(await login(client))
    sim.faults = [
        Fault("delay", path="/v1/contacts", delay=0.2),
        Fault("reset_before", path="/v1/media"),
        Fault("cut_body", path="/v1/health"),
    ]
    held = asyncio.create_task(client.post("/v1/contacts", headers=auth, json={"contacts": []}))
    await eventually(lambda: bool(sim.seen_on("/v1/contacts")))
    assert sim.seen_on("/v1/contacts")[0].status is None  # still being handled
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await client.post("/v1/media", headers=auth, data=b"abc", timeout=SHORT)
    cut = await client.get("/v1/health", headers=auth, timeout=SHORT)
    with pytest.raises(aiohttp.ClientPayloadError):
        await cut.read()
    assert (await client.post("/v1/messages", json={"to": "1"})).status == 401
    assert (await asyncio.wait_for(held, 2)).status == 200
    statuses = [(s.path_qs, s.status) for s in sim.seen]
    assert statuses == [
        ("/v1/users/login", 200),
        ("/v1/contacts", 200),
        ("/v1/media", None),  # hung up: no status line went out
        ("/v1/health", 200),  # the status line went out before the body was cut
        ("/v1/messages", 401),
    ]


async def test_a_client_that_hangs_up_is_recorded_without_a_status(
    sim: Simulator, served: aiohttp.ClientSession
) -> None:
    sim.faults.append(Fault("delay", delay=30))
    with pytest.raises(TimeoutError):
        await served.get("/v1/health", timeout=SHORT)
    await settled(sim)
    assert [s.status for s in sim.seen] == [None]


async def test_a_restarted_simulator_keeps_accounts_and_settings_only(
    sim: Simulator, client: Client, aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    old_token = await login(client, new_password=STRONG)
    sim.users["bob"] = "Bob-pass-1!"
    sim.application_settings["webhooks"] = {"url": "https://hooks.example"}
    sim.faults.append(Fault("status"))
    sim.login_script.append(LoginFault("empty"))
    sim.login_delay, sim.reject_all_tokens = 1.0, True
    media_id = sim.add_media(10)
    sim.basic_charset = "latin-1"
    successor = sim.restarted()
    assert successor.basic_charset == "latin-1"
    forgotten = (successor.faults, successor.login_script, successor.login_delay, successor.tokens)
    assert forgotten == ([], collections.deque(), 0.0, {})
    assert not successor.reject_all_tokens
    assert successor.users == {"admin": STRONG, "bob": "Bob-pass-1!"}
    assert (successor.api_key, successor.password_change_required) == ("k" * 20, False)
    assert successor.application_settings == sim.application_settings
    successor.application_settings["webhooks"]["url"] = "changed"  # type: ignore[index]
    successor.users["carol"] = "Carol-pass-1!"
    assert sim.application_settings["webhooks"] == {"url": "https://hooks.example"}
    assert "carol" not in sim.users
    restarted = await aiohttp_client(successor.make_app())
    assert (await restarted.get("/v1/health", headers=bearer(old_token))).status == 401
    new_token = await login(restarted, STRONG)
    assert (await restarted.get("/v1/stats/db", headers=bearer(new_token))).status == 200
    assert (successor.login_attempts, successor.logins, successor.unauthorized_count()) == (1, 1, 1)
    assert (await restarted.get(f"/v1/media/{media_id}", headers=bearer(new_token))).status == 404
    # A media directory survives a restart with what is in it.
    stored = Simulator(password_change_required=False, media_dir=str(tmp_path)).restarted()
    stored_client = await aiohttp_client(stored.make_app())
    resp = await stored_client.post(
        "/v1/media", headers=bearer(await login(stored_client)), data=b"x"
    )
    assert (tmp_path / (await resp.json())["media"][0]["id"]).exists()


async def test_a_restarted_simulator_keeps_password_change_revokes(
    aiohttp_client: AiohttpClient,
) -> None:
    assert not Simulator().password_change_revokes
    assert not Simulator().restarted().password_change_revokes
    assert Simulator(password_change_revokes=True).restarted().password_change_revokes
    sim = Simulator(password_change_required=False)
    sim.password_change_revokes = True  # flipped by a test after construction
    sim.password_changes = 3
    successor = sim.restarted()
    assert (successor.password_change_revokes, successor.password_changes) == (True, 0)
    client = await aiohttp_client(successor.make_app())
    earlier = await login(client)
    changing = await login(client, new_password=STRONG)
    assert [await valid(client, earlier), await valid(client, changing)] == [False, True]


# --- login faults ------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "code"), [(500, 1014), (503, 1016), (429, 1015), (418, 1000)])
async def test_login_fault_status(sim: Simulator, client: Client, status: int, code: int) -> None:
    sim.login_script.append(LoginFault("status", status=status))
    resp = await client.post("/v1/users/login", headers={"Authorization": basic()})
    assert (resp.status, await error_code(resp)) == (status, code)
    assert sim.logins == 0
    assert not sim.login_script
    await login(client)  # the script is used up: the next login is normal


async def test_login_fault_reset(sim: Simulator, client: Client) -> None:
    sim.login_script.append(LoginFault("reset"))
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await client.post("/v1/users/login", headers={"Authorization": basic()}, timeout=SHORT)
    assert (sim.login_attempts, sim.logins) == (1, 0)


async def test_login_fault_invalid_json_and_empty(sim: Simulator, client: Client) -> None:
    sim.login_script.extend([LoginFault("invalid_json"), LoginFault("empty")])
    resp = await client.post("/v1/users/login", headers={"Authorization": basic()})
    assert resp.status == 200
    with pytest.raises(ValueError, match="Expecting value"):
        await resp.json(content_type=None)
    resp = await client.post("/v1/users/login", headers={"Authorization": basic()})
    assert (resp.status, await resp.read()) == (200, b"")
    assert (sim.login_attempts, sim.logins, sim.tokens) == (2, 0, {})


async def test_login_fault_hang(sim: Simulator, served: aiohttp.ClientSession) -> None:
    sim.login_script.append(LoginFault("hang"))
    with pytest.raises(TimeoutError):
        await served.post("/v1/users/login", headers={"Authorization": basic()}, timeout=SHORT)
    await settled(sim)  # the held login ends once the client has hung up
    assert sim.logins == 0


async def login_answer(client: Client) -> tuple[aiohttp.ClientResponse, dict[str, str]]:
    """Log in as admin and return the response with its users[0]."""
    resp = await client.post("/v1/users/login", headers={"Authorization": basic()})
    assert resp.status == 200
    return resp, (await resp.json())["users"][0]


async def test_login_fault_no_expiry(sim: Simulator, client: Client) -> None:
    sim.login_script.append(LoginFault("no_expiry"))
    _, user = await login_answer(client)
    assert list(user) == ["token"]
    assert (await client.get("/v1/health", headers=bearer(user["token"]))).status == 200


async def test_login_fault_bad_expiry(sim: Simulator, client: Client) -> None:
    sim.login_script.append(LoginFault("bad_expiry"))
    _, user = await login_answer(client)
    assert user["expires_after"] == "next tuesday"
    assert user["token"] in sim.tokens


async def test_login_fault_iso_expiry(sim: Simulator, client: Client) -> None:
    sim.login_script.append(LoginFault("iso_expiry"))
    _, user = await login_answer(client)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.000Z", user["expires_after"])
    assert parse_expires_after(user["expires_after"]) == sim.tokens[user["token"]].expires_at
    assert (await client.get("/v1/health", headers=bearer(user["token"]))).status == 200


async def test_login_fault_expired(sim: Simulator, client: Client) -> None:
    sim.login_script.append(LoginFault("expired"))
    _, user = await login_answer(client)
    assert EXPIRES_AFTER.match(user["expires_after"])
    assert parse_expires_after(user["expires_after"]) < time.time()
    assert sim.logins == 1
    assert (await client.get("/v1/health", headers=bearer(user["token"]))).status == 401
    assert sim.tokens == {}


async def test_login_fault_no_date(sim: Simulator, client: Client) -> None:
    sim.login_script.append(LoginFault("no_date"))
    resp, user = await login_answer(client)
    assert "Date" not in resp.headers
    assert user["token"] in sim.tokens
    resp, _ = await login_answer(client)
    assert "Date" in resp.headers


async def test_reshaping_login_faults_still_check_credentials(
    sim: Simulator, client: Client
) -> None:
    sim.login_script.append(LoginFault("iso_expiry"))
    resp = await client.post("/v1/users/login", headers={"Authorization": basic("admin", "no")})
    assert resp.status == 401
    assert not sim.login_script


@pytest.mark.parametrize("revokes", [False, True], ids=["keeps", "revokes"])
async def test_login_fault_lose_answer_changes_the_password_and_hangs_up(
    sim: Simulator, served: aiohttp.ClientSession, revokes: bool
) -> None:
    sim.password_change_revokes = revokes
    earlier = await login(served)
    sim.login_script.append(LoginFault("lose_answer"))
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await change_password(served)
    await settled(sim)
    assert (sim.password, sim.password_changes, sim.password_change_required) == (STRONG, 1, False)
    assert (sim.login_attempts, sim.logins, sim.login_script) == (2, 2, collections.deque())
    assert sim.seen_on("/v1/users/login")[-1].status is None  # no status line went out
    lost = sim.issued_tokens[-1]
    assert await valid(served, lost)  # issued and valid, though the client never saw it
    assert await valid(served, earlier) is not revokes
    resp = await served.post("/v1/users/login", headers={"Authorization": basic()})
    assert resp.status == 401  # the old password is gone
    await login(served, STRONG)  # the script is used up: the next login is normal


async def test_login_fault_late_acts_after_the_client_gave_up(
    sim: Simulator, served: aiohttp.ClientSession
) -> None:
    await login(served)
    sim.login_script.append(LoginFault("late", delay=0.3))
    with pytest.raises(TimeoutError):
        await change_password(served, limit=aiohttp.ClientTimeout(total=0.1))
    assert sim.password == DEFAULT_PASSWORD  # not yet: the Webapp is still busy
    await eventually(lambda: sim.password == STRONG)  # and then it acts, though nobody waits
    assert sim.password_changes == 1
    assert await valid(served, sim.issued_tokens[-1])


@pytest.mark.parametrize(
    ("password", "new_password"),
    [("wrong", STRONG), (DEFAULT_PASSWORD, "weak")],
    ids=["wrong-credentials", "weak-new-password"],
)
async def test_login_fault_lose_answer_of_a_failed_login_changes_nothing(
    sim: Simulator, client: Client, password: str, new_password: str
) -> None:
    sim.password_change_revokes = True
    earlier = await login(client)
    sim.login_script.append(LoginFault("lose_answer"))
    # ClientConnectionError, not only ServerDisconnectedError: with wrong credentials the
    # simulator hangs up without reading the body, which a kernel may answer with a reset.
    with pytest.raises(aiohttp.ClientConnectionError):
        await change_password(client, password, new_password)
    assert (sim.password, sim.password_changes) == (DEFAULT_PASSWORD, 0)
    assert (sim.login_attempts, sim.logins, list(sim.tokens)) == (2, 1, [earlier])
    assert not sim.login_script
    assert await valid(client, earlier)


def test_unknown_fault_kinds_are_refused() -> None:
    with pytest.raises(ValueError, match="login fault"):
        LoginFault("nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fault kind"):
        Fault("nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 1"):
        Fault("status", times=0)  # it would fire once all the same


# --- request faults ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code"), [(429, 1015), (503, 1016), (500, 1014), (401, 1005), (404, 1006)]
)
async def test_fault_status_comes_before_auth(
    sim: Simulator, client: Client, status: int, code: int
) -> None:
    sim.faults.append(Fault("status", path="/v1/messages", status=status))
    resp = await client.post("/v1/messages", json={"to": "1"})
    assert (resp.status, await error_code(resp)) == (status, code)
    assert sim.faults == []
    assert sim.unauthorized_count() == (1 if status == 401 else 0)


async def test_faults_are_consumed_by_matching_requests(sim: Simulator, client: Client) -> None:
    auth = bearer(await login(client))
    sim.faults.append(Fault("status", path="/v1/messages", method="post", times=2, status=503))
    sim.faults.append(Fault("status", path="/v1/health", times=None, status=429))
    assert (await client.get("/v1/stats/app", headers=auth)).status == 200
    assert (await client.get("/v1/messages", headers=auth)).status == 404
    assert (await client.post("/v1/messages", headers=auth, json={"to": "1"})).status == 503
    assert sim.faults[0].times == 1
    assert (await client.post("/v1/messages", headers=auth, json={"to": "1"})).status == 503
    assert (await client.post("/v1/messages", headers=auth, json={"to": "1"})).status == 201
    for _ in range(3):
        assert (await client.get("/v1/health", headers=auth)).status == 429
    assert [f.times for f in sim.faults] == [None]


async def test_faults_do_not_apply_to_login(sim: Simulator, client: Client) -> None:
    sim.faults.append(Fault("status", status=503))
    await login(client)
    assert len(sim.faults) == 1


async def test_fault_reset_before(sim: Simulator, client: Client) -> None:
    sim.faults.append(Fault("reset_before", path="/v1/messages"))
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await client.post("/v1/messages", data=b"x" * 100, timeout=SHORT)
    assert sim.seen[-1].body_size == 0


async def test_fault_reset_after(sim: Simulator, client: Client) -> None:
    sim.faults.append(Fault("reset_after", path="/v1/media"))
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await client.post("/v1/media", data=b"x" * 200_000, timeout=SHORT)
    assert sim.seen[-1].body_size == 200_000


async def test_fault_cut_body(sim: Simulator, client: Client) -> None:
    sim.faults.append(Fault("cut_body"))
    resp = await client.get("/v1/health", timeout=SHORT)
    assert resp.status == 200
    assert resp.headers["Content-Length"] == "1000000"
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()


async def test_fault_bad_chunk(sim: Simulator, client: Client) -> None:
    """A chunked answer whose framing breaks after its first chunk, on a connection the
    simulator keeps open until the client goes; a HEAD answer gets the headers alone."""
    assert isinstance(client, TestClient)
    sim.faults.append(Fault("bad_chunk", times=2))
    token = await login(client)
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        request = f"GET /v1/health HTTP/1.1\r\nHost: sim\r\nAuthorization: Bearer {token}\r\n\r\n"
        writer.write(request.encode())
        async with asyncio.timeout(5):
            raw = await reader.readuntil(b"zz\r\n")
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"transfer-encoding: chunked" in head.lower()
    assert body == b"3e8\r\n" + b"x" * 1000 + b"\r\nzz\r\n"
    answer = await raw_answer(client, "HEAD", "/v1/health", token)
    assert (answer.status, answer.body) == (200, b"")
    await settled(sim)


async def test_fault_stall(sim: Simulator, served: aiohttp.ClientSession) -> None:
    sim.faults.append(Fault("stall"))
    with pytest.raises(TimeoutError):
        await served.get("/v1/health", timeout=SHORT)
    await settled(sim)


async def test_fault_trickle(sim: Simulator, client: Client) -> None:
    sim.faults.append(Fault("trickle", delay=0.01))
    started = time.monotonic()
    resp = await client.get("/v1/health", timeout=SHORT)
    assert (resp.status, await resp.read()) == (200, b'{"meta":1}')
    assert time.monotonic() - started >= 0.1


async def test_fault_trickle_outlasts_a_read_timeout(
    sim: Simulator, served: aiohttp.ClientSession
) -> None:
    sim.faults.append(Fault("trickle", delay=0.1))
    resp = await served.get("/v1/health", timeout=aiohttp.ClientTimeout(sock_read=0.05))
    with pytest.raises(TimeoutError):
        await resp.read()
    await settled(sim)


async def test_fault_delay(sim: Simulator, client: Client) -> None:
    sim.faults.append(Fault("delay", delay=0.1))
    started = time.monotonic()
    resp = await client.get("/v1/health", headers=bearer(await login(client)))
    assert resp.status == 200
    assert time.monotonic() - started >= 0.1


async def test_held_requests_end_when_the_app_shuts_down(
    aiohttp_server: AiohttpServer,
) -> None:
    sim = Simulator(password_change_required=False)
    sim.faults.append(Fault("stall", path="/v1/health"))
    sim.login_script.append(LoginFault("hang"))
    server = await aiohttp_server(sim.make_app())
    assert server.app is not None
    assert server.app[SIMULATOR] is sim
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        held = [
            asyncio.create_task(session.get(server.make_url("/v1/health"))),
            asyncio.create_task(
                session.post(server.make_url("/v1/users/login"), headers={"Authorization": basic()})
            ),
        ]
        await eventually(lambda: len(sim.seen) == 2)
        started = time.monotonic()
        await server.close()
        assert time.monotonic() - started < 1
        # The GET, idempotent, is retried by aiohttp and then finds the port closed.
        for outcome in await asyncio.gather(*held, return_exceptions=True):
            assert isinstance(outcome, aiohttp.ClientConnectionError)


def test_make_app_is_called_once() -> None:
    sim = Simulator()
    sim.make_app()
    with pytest.raises(RuntimeError):
        sim.make_app()


def test_the_rate_limit_is_a_bucket_per_endpoint_that_refills_at_the_rate() -> None:
    now = [0.0]
    buckets = RateBuckets(RateLimit(rate=2.0, burst=3.0), clock=lambda: now[0])
    assert [buckets.admit("POST", "/v1/messages") for _ in range(4)] == [True] * 3 + [False]
    assert buckets.admit("GET", "/v1/media/a")  # another endpoint: its own bucket
    assert [buckets.admit("GET", f"/v1/media/{i}") for i in range(3)] == [True, True, False]
    now[0] = 0.5  # one request's worth at 2 per second
    assert buckets.admit("POST", "/v1/messages")
    assert not buckets.admit("POST", "/v1/messages")
    now[0] = 100.0  # never more than the burst saved up
    assert [buckets.admit("POST", "/v1/messages") for _ in range(4)] == [True] * 3 + [False]


async def test_logins_count_against_the_rate_limit_too(aiohttp_client: AiohttpClient) -> None:
    """wa-api.md exempts no endpoint; a request counts before its credentials are checked."""
    sim = Simulator(password_change_required=False, rate_limit=RateLimit(rate=0.001, burst=2))
    client = await aiohttp_client(sim.make_app())
    await login(client)
    wrong = await client.post("/v1/users/login", headers={"Authorization": basic("admin", "x")})
    assert wrong.status == 401
    limited = await client.post(
        "/v1/users/login", headers={"Authorization": basic("admin", DEFAULT_PASSWORD)}
    )
    assert limited.status == 429
    assert (await limited.json())["errors"][0]["code"] == 1015


def test_the_api_key_is_12_to_128_characters() -> None:
    for key in ("k" * 11, "k" * 129):
        with pytest.raises(ValueError, match="12 to 128"):
            Simulator(api_key=key)
