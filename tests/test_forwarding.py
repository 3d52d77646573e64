"""Forwarding through real sockets: methods, paths, bodies, headers, statuses, the path policy."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from gateway.app import create_app
from gateway.simulator import Fault, RateLimit, synthetic_media_sha256

from . import rawhttp
from .conftest import MESSAGE, MakeRig, Rig, gateway_config


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def test_any_method_reaches_the_webapp_with_path_and_query_exactly(
    rig: Rig, method: str
) -> None:
    path_qs = "/v1/some/where?b=2&a=1&a=3&enc=%2F%20x+y&empty="
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, URL(rig.url + path_qs, encoded=True)) as response,
    ):
        body = await response.read()
    seen = rig.sim.seen_on("/v1/some")
    assert [(s.method, s.path_qs) for s in seen] == [(method, path_qs)]
    assert response.status == 404  # the Webapp's answer, passed through
    assert json.loads(body)["errors"][0]["code"] == 1006


async def test_webapp_errors_and_rate_limits_pass_through_unchanged(rig: Rig) -> None:
    rig.sim.faults = [
        Fault("status", path="/v1/messages", status=429),
        Fault("status", path="/v1/messages", status=503),
        Fault("status", path="/v1/messages", status=500),
    ]
    for expected, code in ((429, 1015), (503, 1016), (500, 1014)):
        async with rig.client.post("/v1/messages", json=MESSAGE) as response:
            assert response.status == expected
            document = await response.json()
            assert document["errors"][0]["code"] == code
            assert document["meta"]["version"] == "v2.45.1"  # the Webapp's body, not ours
    assert len(rig.sim.seen_on("/v1/messages")) == 3


async def test_a_request_body_arrives_byte_for_byte(rig: Rig) -> None:
    payload = bytes(range(256)) * 4096 + b"tail"
    async with rig.client.post(
        "/v1/media", data=io.BytesIO(payload), headers={"Content-Type": "image/png"}
    ) as response:
        assert response.status == 201
        media_id = (await response.json())["media"][0]["id"]
    assert rig.sim.media_digest(media_id) == (len(payload), hashlib.sha256(payload).hexdigest())


async def test_a_chunked_request_body_arrives_with_a_content_length(rig: Rig) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(10):
            yield bytes([i]) * 10_000

    async with rig.client.post(
        "/v1/media", data=chunks(), headers={"Content-Type": "audio/ogg"}
    ) as response:
        assert response.status == 201
    (upload,) = rig.sim.seen_on("/v1/media", "POST")
    assert upload.headers["Content-Length"] == "100000"
    assert "Transfer-Encoding" not in upload.headers
    assert upload.body_size == 100_000


async def test_a_download_streams_back_with_its_length_and_type(rig: Rig) -> None:
    size = 8 * 1024 * 1024 + 3
    media_id = rig.sim.add_media(size, "video/mp4")
    digest = hashlib.sha256()
    async with rig.client.get(f"/v1/media/{media_id}") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "video/mp4"
        assert response.headers["Content-Length"] == str(size)
        async for chunk in response.content.iter_chunked(65536):
            digest.update(chunk)
    assert digest.hexdigest() == synthetic_media_sha256(size)


async def test_head_gets_the_headers_and_no_body(rig: Rig) -> None:
    media_id = rig.sim.add_media(1000)
    async with rig.client.head(f"/v1/media/{media_id}") as response:
        assert response.status == 200
        assert response.headers["Content-Length"] == "1000"
        assert await response.read() == b""


async def test_hop_by_hop_request_headers_are_dropped_and_the_rest_kept(rig: Rig) -> None:
    headers = {
        "Connection": "keep-alive, X-Private-Hop",
        "X-Private-Hop": "1",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "Proxy-Authorization": "Basic Zm9vOmJhcg==",
        "Proxy-Connection": "keep-alive",
        "X-End-To-End": "kept",
        "Accept-Language": "nl",
    }
    async with rig.client.post("/v1/messages", json=MESSAGE, headers=headers) as response:
        assert response.status == 201
    (seen,) = rig.sim.seen_on("/v1/messages")
    for name in ("X-Private-Hop", "Keep-Alive", "TE", "Proxy-Authorization", "Proxy-Connection"):
        assert name not in seen.headers
    assert seen.headers["X-End-To-End"] == "kept"
    assert seen.headers["Accept-Language"] == "nl"
    assert seen.headers["Content-Type"] == "application/json"


async def test_forwarding_headers_describe_the_client(rig: Rig) -> None:
    async with rig.client.get(
        "/v1/settings/application", headers={"X-Forwarded-For": "10.1.2.3"}
    ) as response:
        assert response.status == 200
    (seen,) = rig.sim.seen_on("/v1/settings")
    assert seen.headers["X-Forwarded-For"] == "10.1.2.3, 127.0.0.1"
    assert seen.headers["X-Forwarded-Proto"] == "http"
    assert seen.headers["X-Forwarded-Host"] == rig.url.removeprefix("http://")
    assert seen.headers["Host"] == rig.webapp.make_url("").host + f":{rig.webapp.port}"


async def test_the_request_id_is_taken_from_the_client_sent_on_and_returned(rig: Rig) -> None:
    async with rig.client.get(
        "/v1/settings/application", headers={"X-Request-ID": "abc-123"}
    ) as response:
        assert response.headers["X-Request-ID"] == "abc-123"
    async with rig.client.get("/v1/settings/application") as response:
        generated = response.headers["X-Request-ID"]
    assert len(generated) == 32
    assert [s.request_id for s in rig.sim.seen_on("/v1/settings")] == ["abc-123", generated]


def tiny_webapp(handler: Any) -> web.Application:
    """A real upstream with a login and one handler at /v1/probe."""

    async def login(request: web.Request) -> web.Response:
        user = {"token": "tiny-token", "expires_after": "2099-01-01 00:00:00+00:00"}
        return web.json_response({"users": [user]})

    app = web.Application()
    app.router.add_post("/v1/users/login", login)
    app.router.add_route("*", "/v1/probe", handler)
    return app


async def test_hop_by_hop_response_headers_are_dropped(
    aiohttp_server: Any, aiohttp_client: Any
) -> None:
    async def probe(request: web.Request) -> web.Response:
        response = web.Response(text="ok")
        response.headers.update(
            {"Connection": "X-Private-Hop", "X-Private-Hop": "1", "Keep-Alive": "timeout=9"}
        )
        response.headers.add("Set-Cookie", "a=1")
        response.headers.add("Set-Cookie", "b=2")
        return response

    upstream = await aiohttp_server(tiny_webapp(probe))
    client = await aiohttp_client(create_app(gateway_config(str(upstream.make_url("")))))
    async with client.get("/v1/probe") as response:
        assert await response.text() == "ok"
        assert "X-Private-Hop" not in response.headers
        assert "Keep-Alive" not in response.headers
        assert response.headers.getall("Set-Cookie") == ["a=1", "b=2"]


async def test_requests_share_one_keep_alive_pool_to_the_webapp(
    aiohttp_server: Any, aiohttp_client: Any
) -> None:
    peers: set[object] = set()

    async def probe(request: web.Request) -> web.Response:
        peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        return web.Response(text="ok")

    upstream = await aiohttp_server(tiny_webapp(probe))
    client = await aiohttp_client(create_app(gateway_config(str(upstream.make_url("")))))
    for _ in range(50):
        async with client.get("/v1/probe") as response:
            assert response.status == 200
    assert len(peers) == 1


@pytest.mark.parametrize(
    "target",
    ["/", "/nope", "/v2/messages", "/_gateway/other", "/v1x", "/metricsx", "/v1/../etc/passwd"],
)
async def test_paths_outside_the_api_get_404_and_never_reach_the_webapp(
    rig: Rig, target: str
) -> None:
    host, port = "127.0.0.1", rig.client.port
    response = await rawhttp.request(host, port, f"GET {target} HTTP/1.1")
    assert response.status in (400, 404)
    assert json.loads(response.body)["errors"][0]["code"] in (1006, 1025)
    assert response.headers["x-request-id"]
    assert [s for s in rig.sim.seen if s.path_qs != "/v1/users/login"] == []


async def test_forward_paths_narrow_what_reaches_the_webapp(make_rig: MakeRig) -> None:
    """With GATEWAY_FORWARD_PATHS, a path outside the list gets 404 and never reaches the
    Webapp, a listed path (matched case-insensitively, after normalising) and what lies below it
    are forwarded, and logins are still answered by the gateway."""
    rig = await make_rig(env={"GATEWAY_FORWARD_PATHS": "/v1/messages, /V1/Media/"})
    async with rig.client.post("/v1/users/login") as response:
        assert response.status == 200
    for method, path, expected in [
        ("POST", "/v1/messages", 201),
        ("POST", "/v1/Messages", 404),  # the Webapp routes case-sensitively: its 404
        ("GET", "/v1/media/unknown", 404),
        ("GET", "/v1/health", 404),
        ("GET", "/metrics", 404),
        ("GET", "/v1/messagesx", 404),
        ("GET", "/v1/users/admin", 403),
    ]:
        async with rig.client.request(method, path, json=MESSAGE) as response:
            assert response.status == expected, (method, path)
    forwarded = [s.path_qs for s in rig.sim.seen if s.path_qs != "/v1/users/login"]
    assert forwarded == ["/v1/messages", "/v1/Messages", "/v1/media/unknown"]


@pytest.mark.parametrize(
    ("target", "sent"),
    [
        ("/v1/media/../messages", "/v1/messages"),
        ("/v1/./messages", "/v1/messages"),
        ("/v1//messages", "/v1/messages"),
        ("/v1/%6Dessages", "/v1/messages"),
        ("/v1/x/%2e%2e/messages", "/v1/messages"),
        ("http://evil.example:1234/v1/messages?x=1", "/v1/messages?x=1"),
    ],
)
async def test_what_was_checked_is_what_is_sent(rig: Rig, target: str, sent: str) -> None:
    response = await rawhttp.request(
        "127.0.0.1",
        rig.client.port,
        f"POST {target} HTTP/1.1",
        "Content-Type: application/json",
        body=json.dumps(MESSAGE).encode(),
    )
    assert response.status in (200, 201, 404)
    forwarded = [s.path_qs for s in rig.sim.seen if s.path_qs != "/v1/users/login"]
    assert forwarded == [sent]


@pytest.mark.parametrize("target", ["/v1/a%2fb", "/v1/a%5Cb", "/v1/a%00", "/v1/%ff"])
async def test_ambiguous_paths_are_refused(rig: Rig, target: str) -> None:
    response = await rawhttp.request("127.0.0.1", rig.client.port, f"GET {target} HTTP/1.1")
    assert response.status == 400
    assert [s for s in rig.sim.seen if s.path_qs != "/v1/users/login"] == []


@pytest.mark.parametrize("method", ["CONNECT", "TRACE"])
async def test_connect_and_trace_are_refused(rig: Rig, method: str) -> None:
    target = "evil.example:443" if method == "CONNECT" else "/v1/messages"
    response = await rawhttp.request("127.0.0.1", rig.client.port, f"{method} {target} HTTP/1.1")
    assert response.status == 405
    assert response.headers["allow"] == "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
    assert [s for s in rig.sim.seen if s.path_qs != "/v1/users/login"] == []


async def test_healthz_answers_while_the_webapp_is_down(rig: Rig) -> None:
    await rig.webapp.close()
    async with rig.client.get("/_gateway/healthz") as response:
        assert response.status == 200


async def test_readyz_is_ready_once_logged_in(rig: Rig) -> None:
    async with rig.client.post("/v1/messages", json=MESSAGE) as response:
        assert response.status == 201
    async with rig.client.get("/_gateway/readyz") as response:
        assert response.status == 200
        assert (await response.json())["status"] == "ready"


async def test_the_client_sees_the_webapps_body_encoding_untouched(
    aiohttp_server: Any, aiohttp_client: Any
) -> None:
    compressed = b"\x1f\x8b\x08\x00not-really-gzip"

    async def probe(request: web.Request) -> web.Response:
        return web.Response(body=compressed, headers={"Content-Encoding": "gzip"})

    upstream = await aiohttp_server(tiny_webapp(probe))
    client = await aiohttp_client(create_app(gateway_config(str(upstream.make_url("")))))
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.get(client.make_url("/v1/probe")) as response,
    ):
        assert response.headers["Content-Encoding"] == "gzip"
        assert await response.read() == compressed


async def test_the_webapps_rate_limit_reaches_clients_unchanged_and_is_never_retried(
    make_rig: MakeRig,
) -> None:
    """At the Webapp's limit (here a burst of 10 that refills too slowly to matter), its 429 with
    code 1015 goes back as it came; the gateway neither retries it nor counts it as a failure."""
    rig = await make_rig(rate_limit=RateLimit(rate=0.001, burst=10.0))

    async def send() -> tuple[int, object]:
        async with rig.client.post("/v1/messages", json=MESSAGE) as response:
            return response.status, (await response.json()).get("errors")

    answers = await asyncio.gather(*(send() for _ in range(15)))
    statuses = sorted(status for status, _ in answers)
    assert statuses[:10] == [201] * 10
    assert statuses[10:] == [429] * 5
    (errors,) = {json.dumps(errors) for status, errors in answers if status == 429}
    assert json.loads(errors)[0]["code"] == 1015
    assert len(rig.sim.seen_on("/v1/messages")) == 15  # one arrival each: nothing retried
    async with rig.client.get("/_gateway/readyz") as response:
        assert response.status == 200
