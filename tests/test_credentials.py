"""Which credential reaches the Webapp, and the user endpoints the gateway answers or refuses."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from gateway.simulator import Simulator

from .conftest import API_KEY, MESSAGE, PASSWORD, MakeRig, Rig


def webapp_requests(rig: Rig) -> list[tuple[str, str]]:
    """What reached the Webapp besides the gateway's own logins."""
    return [(s.method, s.path_qs) for s in rig.sim.seen if s.path_qs != "/v1/users/login"]


async def test_the_clients_authorization_is_replaced_by_the_pooled_token(rig: Rig) -> None:
    for authorization in ("Bearer client-token", "Basic Y2xpZW50OnB3", "Apikey client-key-000"):
        async with rig.client.post(
            "/v1/messages", json=MESSAGE, headers={"Authorization": authorization}
        ) as response:
            assert response.status == 201
    sent = rig.sim.seen_on("/v1/messages")
    assert {(s.auth_scheme, s.credential in rig.sim.tokens) for s in sent} == {("bearer", True)}


@pytest.mark.parametrize(
    "path",
    ["/v1/health", "/metrics", "/metrics?format=prometheus", "/v1/stats/app", "/v1/stats/db"],
)
async def test_apikey_endpoints_use_the_api_key(rig: Rig, path: str) -> None:
    async with rig.client.get(path) as response:
        assert response.status == 200
    (seen,) = rig.sim.seen_on(path.partition("?")[0])
    assert (seen.auth_scheme, seen.credential) == ("apikey", API_KEY)


async def test_apikey_endpoints_use_the_token_when_no_api_key_is_configured(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(env={"WA_API_KEY": None})
    async with rig.client.get("/v1/health") as response:
        assert response.status == 200
    (seen,) = rig.sim.seen_on("/v1/health")
    assert seen.auth_scheme == "bearer"
    assert seen.credential in rig.sim.tokens


async def test_other_methods_on_apikey_paths_use_the_token(rig: Rig) -> None:
    async with rig.client.post("/metrics") as response:
        assert response.status in (404, 405)
    (seen,) = rig.sim.seen_on("/metrics")
    assert seen.auth_scheme == "bearer"


async def test_a_client_login_is_answered_by_the_gateway_with_a_token_of_its_own(
    rig: Rig,
) -> None:
    basic = "Basic " + base64.b64encode(b"admin:whatever").decode()
    async with rig.client.post(
        "/v1/users/login", json={"new_password": "Other-pass-2!"}, headers={"Authorization": basic}
    ) as response:
        assert response.status == 200
        document = await response.json()
    (user,) = document["users"]
    assert user["token"] not in rig.sim.issued_tokens
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+00:00", user["expires_after"])
    expires = datetime.strptime(user["expires_after"], "%Y-%m-%d %H:%M:%S+00:00")
    lifetime = expires.replace(tzinfo=UTC) - datetime.now(UTC)
    assert timedelta(days=6, hours=23) < lifetime <= timedelta(days=7)
    assert webapp_requests(rig) == []
    assert rig.sim.password == PASSWORD  # the client's new_password went nowhere


async def test_an_existing_client_library_flow_works_unchanged(rig: Rig) -> None:
    """Log in, use the token as a bearer, log out: what client libraries do."""
    basic = {"Authorization": aiohttp.encode_basic_auth("admin", "x")}
    async with rig.client.post("/v1/users/login", headers=basic) as login:
        token = (await login.json())["users"][0]["token"]
    bearer = {"Authorization": f"Bearer {token}"}
    async with rig.client.post("/v1/messages", json=MESSAGE, headers=bearer) as response:
        assert response.status == 201
    async with rig.client.post("/v1/users/logout", headers=bearer) as response:
        assert response.status == 200
    assert webapp_requests(rig) == [("POST", "/v1/messages")]


@pytest.mark.parametrize("logout_revokes", ["token", "all"])
async def test_a_client_logout_never_revokes_the_pooled_token(
    make_rig: MakeRig, logout_revokes: str
) -> None:
    rig = await make_rig(logout_revokes=logout_revokes)
    async with rig.client.post("/v1/messages", json=MESSAGE) as response:
        assert response.status == 201
    pooled = set(rig.sim.tokens)
    async with rig.client.post("/v1/users/logout") as response:
        assert response.status == 200
    async with rig.client.post("/v1/messages", json=MESSAGE) as response:
        assert response.status == 201
    assert set(rig.sim.tokens) == pooled
    assert rig.sim.logins == 1
    assert rig.sim.seen_on("/v1/users/logout") == []


@pytest.mark.parametrize(("logout_revokes", "logins"), [("token", 1), ("all", 2)])
async def test_an_operator_logout_at_the_webapp_is_survived(
    make_rig: MakeRig, logout_revokes: str, logins: int
) -> None:
    """Someone logs the same user out directly at the Webapp: if that revokes every token of the
    user (one reading of the docs), the gateway logs in again and the client never notices."""
    rig = await make_rig(logout_revokes=logout_revokes)
    async with rig.client.post("/v1/messages", json=MESSAGE) as response:
        assert response.status == 201
    async with aiohttp.ClientSession() as operator:
        login = await operator.post(
            rig.webapp.make_url("/v1/users/login"),
            headers={"Authorization": aiohttp.encode_basic_auth("admin", PASSWORD)},
        )
        token = (await login.json())["users"][0]["token"]
        logout = await operator.post(
            rig.webapp.make_url("/v1/users/logout"), headers={"Authorization": f"Bearer {token}"}
        )
        assert logout.status == 200
    async with rig.client.post("/v1/messages", json=MESSAGE) as response:
        assert response.status == 201
    assert rig.sim.logins - 1 == logins  # minus the operator's own login


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/users"),
        ("GET", "/v1/users/admin"),
        ("PUT", "/v1/users/admin"),
        ("DELETE", "/v1/users/admin"),
        ("GET", "/v1/users/login"),
        ("POST", "/v1/users/login/"),
        ("PATCH", "/v1/users/logout"),
    ],
)
async def test_user_management_is_refused_and_never_reaches_the_webapp(
    rig: Rig, method: str, path: str
) -> None:
    async with rig.client.request(method, path, json={"password": "Hijack-pass-1!"}) as response:
        assert response.status == 403
        assert response.headers["X-Request-ID"]
        error = (await response.json())["errors"][0]
    assert (error["code"], error["title"]) == (1005, "Access denied")
    assert webapp_requests(rig) == []
    assert rig.sim.password == PASSWORD


async def test_the_default_account_needs_a_password_change_and_says_so(make_rig: MakeRig) -> None:
    rig = await make_rig(sim=Simulator(password=PASSWORD, api_key=API_KEY))
    async with rig.client.post("/v1/messages", json=MESSAGE) as response:
        assert response.status == 503
        details = (await response.json())["errors"][0]["details"]
    assert "new password" in details
    assert int(response.headers["Retry-After"]) >= 1


@pytest.mark.parametrize(("charset", "attempts"), [("latin-1", 1), ("utf-8", 2)])
async def test_a_password_beyond_ascii_logs_in_whichever_charset_the_webapp_decodes(
    make_rig: MakeRig, charset: str, attempts: int
) -> None:
    """Basic auth's charset is not documented: Latin-1 first, UTF-8 after a refusal."""
    password = "P\u00e4sswort-1a!"
    rig = await make_rig(password=password, basic_charset=charset, env={"WA_PASSWORD": password})
    async with rig.client.post("/v1/messages", json=MESSAGE) as response:
        assert response.status == 201
    assert rig.sim.login_attempts == attempts
    assert rig.sim.logins == 1
    rig.sim.revoke_all()  # the next login: in the encoding that worked, at once
    async with rig.client.post("/v1/messages", json=MESSAGE) as response:
        assert response.status == 201
    assert rig.sim.login_attempts == attempts + 1
