"""When no answer comes from the Webapp: 502, 504, broken downloads, and no double sends."""

from __future__ import annotations

import io
import socket
from types import SimpleNamespace

import aiohttp
import pytest
from aiohttp import web

from gateway.access import Exchange
from gateway.simulator import Fault
from gateway.verdicts import translate

from . import rawhttp
from .conftest import MESSAGE, MakeRig, Rig, error_of, warmed


async def test_an_unreachable_webapp_gives_502(make_rig: MakeRig) -> None:
    rig = await warmed(make_rig)
    await rig.webapp.close()
    async with rig.client.post("/v1/messages", json=MESSAGE) as response:
        assert response.status == 502
        error = await error_of(response)
    assert error["code"] == 1014
    # Why, in the system's words, and not where: the address is the operator's to know.
    assert error["details"] == "The gateway cannot connect to the Webapp (Connection refused)."


def test_a_webapp_name_that_does_not_resolve_is_named_as_such() -> None:
    key = SimpleNamespace(host="webapp.invalid", port=443, ssl=True)
    failure = aiohttp.ClientConnectorDNSError(key, socket.gaierror(-2, "Name or service not known"))  # type: ignore[arg-type]
    error = translate(failure)
    assert (error.status, error.kind) == (502, "connect")
    assert "does not resolve: Name or service not known" in str(error)
    assert "webapp.invalid" not in str(error)


async def test_a_silent_webapp_gives_504_after_the_timeout(make_rig: MakeRig) -> None:
    rig = await warmed(make_rig, GATEWAY_UPSTREAM_TIMEOUT="0.3")
    rig.sim.faults = [Fault("stall", path="/v1/messages")]
    async with rig.client.post("/v1/messages", json=MESSAGE) as response:
        assert response.status == 504
        assert (await error_of(response))["code"] == 1014
    assert len(rig.sim.seen_on("/v1/messages")) == 1


async def test_a_slow_but_talking_webapp_is_not_timed_out(make_rig: MakeRig) -> None:
    """The body timeout is for silence: a body that keeps trickling in for longer than either
    timeout is fine, and the first-byte timeout ends with the headers."""
    rig = await warmed(
        make_rig, GATEWAY_UPSTREAM_TIMEOUT="0.3", GATEWAY_UPSTREAM_IDLE_TIMEOUT="0.5"
    )
    rig.sim.faults = [Fault("trickle", path="/v1/messages", delay=0.1)]
    async with rig.client.post("/v1/messages", json=MESSAGE) as response:
        assert response.status == 200
        assert await response.read() == b'{"meta":1}'


async def test_a_post_whose_connection_broke_after_sending_is_never_resent(
    make_rig: MakeRig,
) -> None:
    rig = await warmed(make_rig)
    rig.sim.faults = [Fault("reset_after", path="/v1/messages")]
    async with rig.client.post("/v1/messages", json=MESSAGE) as response:
        assert response.status == 502
        assert "closed the connection" in str((await error_of(response))["details"])
    (attempt,) = rig.sim.seen_on("/v1/messages")
    assert attempt.body_size > 0  # it did reach the Webapp: a resend would message twice


@pytest.mark.parametrize("fault", ["reset_before", "reset_after"])
async def test_no_post_is_ever_sent_twice_after_a_connection_error(
    make_rig: MakeRig, fault: str
) -> None:
    rig = await warmed(make_rig)
    rig.sim.faults = [Fault(fault, path="/v1/messages", times=None)]
    for _ in range(5):
        async with rig.client.post("/v1/messages", json=MESSAGE) as response:
            assert response.status == 502
    assert len(rig.sim.seen_on("/v1/messages")) == 5


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_aiohttp_resends_an_idempotent_request_once_after_a_reset(
    make_rig: MakeRig, method: str
) -> None:
    """aiohttp's client resends GET, HEAD, OPTIONS, PUT and DELETE once when the connection fails
    before an answer (RFC 9110 allows it for idempotent methods); the gateway relies on that and
    adds no resend of its own."""
    rig = await warmed(make_rig)
    rig.sim.faults = [Fault("reset_before", path="/v1/media/x", times=1)]
    async with rig.client.request(method, "/v1/media/x", data=b"{}") as response:
        assert response.status == 404  # the resend reached the Webapp, which knows no such media
    assert len(rig.sim.seen_on("/v1/media/x")) == 2


async def test_a_resend_after_a_second_reset_does_not_happen(make_rig: MakeRig) -> None:
    rig = await warmed(make_rig)
    rig.sim.faults = [Fault("reset_before", path="/v1/media/x", times=None)]
    async with rig.client.get("/v1/media/x") as response:
        assert response.status == 502
    assert len(rig.sim.seen_on("/v1/media/x")) == 2


async def test_a_download_cut_short_reaches_the_client_as_broken(rig: Rig) -> None:
    rig.sim.faults = [Fault("cut_body", path="/v1/media/x")]
    async with rig.client.get("/v1/media/x") as response:
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
    (done,) = [e for e in rig.logs.named("request.completed") if e["path"] == "/v1/media/x"]
    assert done["failure"] == "upstream_cut"
    assert done["bytes_out"] == 1000


async def test_a_download_that_stalls_midway_reaches_the_client_as_broken(
    make_rig: MakeRig,
) -> None:
    rig = await warmed(make_rig, GATEWAY_UPSTREAM_IDLE_TIMEOUT="0.3")
    rig.sim.faults = [Fault("trickle", path="/v1/media/x", delay=1.0)]
    async with rig.client.get("/v1/media/x") as response:
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
    (done,) = [e for e in rig.logs.named("request.completed") if e["path"] == "/v1/media/x"]
    assert done["failure"] == "upstream_timeout"


async def test_the_gateway_keeps_serving_after_every_kind_of_failure(make_rig: MakeRig) -> None:
    rig = await warmed(make_rig, GATEWAY_UPSTREAM_TIMEOUT="0.3")
    rig.sim.faults = [
        Fault(kind, path="/v1/messages")
        for kind in ("reset_before", "reset_after", "cut_body", "stall", "status")
    ]
    statuses = []
    for _ in range(5):
        try:
            async with rig.client.post("/v1/messages", json=MESSAGE) as response:
                await response.read()
                statuses.append(response.status)
        except aiohttp.ClientPayloadError:
            statuses.append(-1)
    assert statuses == [502, 502, -1, 504, 500]
    async with rig.client.post("/v1/messages", json=MESSAGE) as response:
        assert response.status == 201


async def test_a_connection_that_cannot_be_opened_in_time_gives_502_not_504(
    make_rig: MakeRig,
) -> None:
    """Nothing was sent, so the answer must not suggest that the Webapp might have acted: 502.
    A listening socket whose accept queue is full never completes a connection; GET /v1/health
    goes with the API key, so no login is needed first."""
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    port = full.getsockname()[1]
    fillers = [socket.socket() for _ in range(8)]
    try:
        for filler in fillers:  # fill the accept queue: further connections hang in SYN_SENT
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
        rig = await make_rig(
            env={"WA_WEBAPP_URL": f"http://127.0.0.1:{port}", "GATEWAY_CONNECT_TIMEOUT": "0.3"}
        )
        async with rig.client.get("/v1/health") as response:
            assert response.status == 502
            assert "GATEWAY_CONNECT_TIMEOUT" in str((await error_of(response))["details"])
    finally:
        for filler in fillers:
            filler.close()
        full.close()


async def test_an_interim_status_from_the_webapp_gives_502_not_a_protocol_switch(
    make_rig: MakeRig,
) -> None:
    """aiohttp hands a 101 back as if it were final; relayed, it would tell a front proxy to
    tunnel whatever the client sends next past the gateway's checks."""
    rig = await warmed(make_rig)
    rig.sim.faults = [Fault("status", path="/v1/messages", status=101)]
    async with rig.client.post("/v1/messages", json=MESSAGE) as response:
        assert response.status == 502
        assert "interim status 101" in str((await error_of(response))["details"])
    (event,) = [e for e in rig.logs.named("request.completed") if e["status"] == 502]
    assert event["failure"] == "invalid_response"
    async with rig.client.post("/v1/messages", json=MESSAGE) as response:
        assert response.status == 201


async def test_a_webapp_that_keeps_taking_a_large_upload_is_not_timed_out(
    make_rig: MakeRig,
) -> None:
    """GATEWAY_UPSTREAM_TIMEOUT is for silence: an upload the Webapp takes steadily for longer
    than that (32 MiB at some 16 MiB/s, with a timeout of 1 s) goes through whole."""
    rig = await warmed(make_rig, GATEWAY_UPSTREAM_TIMEOUT="1")
    rig.sim.faults = [Fault("slow_read", path="/v1/media", delay=0.004)]
    size = 32 << 20
    async with rig.client.post("/v1/media", data=io.BytesIO(b"m" * size)) as response:
        assert response.status == 200
    (upload,) = rig.sim.seen_on("/v1/media")
    assert upload.body_size == size


async def test_a_crash_after_the_answer_began_closes_the_connection(rig: Rig) -> None:
    """Its status line went out: an error answer now would land inside its body, on a connection
    the client would keep using. The connection is closed instead, and the crash logged."""

    async def streams_then_crashes(
        request: web.Request, _target: object, exchange: Exchange
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        exchange.streaming = response
        await response.prepare(request)
        await response.write(b"partial")
        raise RuntimeError("a bug")

    rig.gateway.forwarder = streams_then_crashes  # type: ignore[assignment]
    raw = await rawhttp.exchange(
        "127.0.0.1", rig.client.port, b"GET /v1/media/x HTTP/1.1\r\nHost: gateway\r\n\r\n"
    )
    assert raw.startswith(b"HTTP/1.1 200 ")
    assert raw.count(b"HTTP/1.1") == 1  # no second status line inside the body
    assert b"partial" in raw
    assert b"500" not in raw
    [crash] = rig.logs.named("request.crashed")
    assert crash["error"] == "RuntimeError"
    [completed] = rig.logs.named("request.completed")
    assert (completed["status"], completed["failure"]) == (200, "crashed")
