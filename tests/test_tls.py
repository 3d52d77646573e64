"""TLS both ways, with certificates made in the test (trustme): to a Webapp that serves HTTPS, and
on the gateway's own listener.

The Webapp side runs the simulator behind HTTPS on 127.0.0.1 and a gateway in front of it, as the
conftest rig does over plain HTTP; the listener side runs ``serve()`` itself in the test's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpServer
from yarl import URL

from gateway.app import GATEWAY, create_app
from gateway.config import Config, ConfigError, describe
from gateway.healthcheck import check_health, health_url
from gateway.server import serve
from gateway.simulator import Simulator

from .conftest import API_KEY, MESSAGE, PASSWORD, GatewayTestServer, Logs, gateway_config
from .processes import start_simulator

WAIT = 10.0  # the most any single step below may take


def server_context(cert: trustme.LeafCert) -> ssl.SSLContext:
    """A server-side TLS context presenting ``cert``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context


def expired(ca: trustme.CA, host: str) -> trustme.LeafCert:
    now = datetime.datetime.now(datetime.UTC)
    day = datetime.timedelta(days=1)
    return ca.issue_cert(host, not_before=now - 2 * day, not_after=now - day)


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "webapp-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


# --- the gateway in front of an HTTPS Webapp ------------------------------------------------------


@dataclass
class TlsRig:
    """A simulated Webapp behind HTTPS, and the gateway in front of it."""

    sim: Simulator
    webapp: TestServer
    client: TestClient[web.Request, web.Application]
    config: Config
    logs: Logs

    def upstream_errors(self, kind: str) -> float:
        registry = self.client.app[GATEWAY].metrics.registry  # type: ignore[index]
        value = registry.get_sample_value("wa_gateway_upstream_errors_total", {"kind": kind})
        return value or 0.0

    async def post_message(self) -> tuple[int, dict[str, Any]]:
        async with self.client.post("/v1/messages", json=MESSAGE) as response:
            return response.status, await response.json()


MakeTlsRig = Callable[..., Awaitable[TlsRig]]


@pytest.fixture
def make_tls_rig(aiohttp_server: AiohttpServer, aiohttp_client: Any, logs: Logs) -> MakeTlsRig:
    """Start the simulator behind HTTPS with ``cert``, and a gateway (``env`` added) before it."""

    async def make(cert: trustme.LeafCert, **env: str | None) -> TlsRig:
        sim = Simulator(password=PASSWORD, password_change_required=False, api_key=API_KEY)
        webapp = await aiohttp_server(sim.make_app(), ssl=server_context(cert))
        config = gateway_config(str(webapp.make_url("")), **env)
        client = await aiohttp_client(GatewayTestServer(create_app(config)))
        return TlsRig(sim, webapp, client, config, logs)

    return make


def details(answer: dict[str, Any]) -> str:
    [error] = answer["errors"]
    return str(error["details"])


async def test_by_default_a_certificate_from_an_unknown_ca_fails_the_login_and_names_wa_ca_file(
    make_tls_rig: MakeTlsRig, ca: trustme.CA
) -> None:
    rig = await make_tls_rig(ca.issue_cert("127.0.0.1"))
    status, answer = await rig.post_message()
    assert status == 503
    assert answer["errors"][0]["code"] == 1011
    assert "The Webapp's TLS certificate was not accepted" in details(answer)
    assert "set WA_CA_FILE to the CA certificate that issued it" in details(answer)
    async with rig.client.get("/_gateway/readyz") as response:
        assert response.status == 503
        assert "TLS certificate was not accepted" in await response.text()
    assert rig.sim.seen == []  # refused during the handshake: not one byte of HTTP went out
    [failed, *_] = rig.logs.named("token.login_failed")
    assert failed["kind"] == "webapp_unavailable"
    assert "WA_CA_FILE" in failed["details"]


async def test_with_the_ca_file_messages_and_media_pass_end_to_end(
    make_tls_rig: MakeTlsRig, ca: trustme.CA, ca_file: Path
) -> None:
    rig = await make_tls_rig(ca.issue_cert("127.0.0.1"), WA_CA_FILE=str(ca_file))
    status, answer = await rig.post_message()
    assert status == 201, answer
    assert answer["messages"][0]["id"]
    media = bytes(range(256)) * 1024  # 256 KiB: a spooled body, streamed back over TLS
    headers = {"Content-Type": "image/png"}
    async with rig.client.post("/v1/media", data=media, headers=headers) as response:
        assert response.status == 201
        media_id = (await response.json())["media"][0]["id"]
    async with rig.client.get(f"/v1/media/{media_id}") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "image/png"
        assert await response.read() == media
    assert [s.auth_scheme for s in rig.sim.seen_on("/v1/")] == ["basic", *["bearer"] * 3]


async def test_with_verification_off_any_certificate_passes_and_the_configuration_says_so(
    make_tls_rig: MakeTlsRig,
) -> None:
    rig = await make_tls_rig(trustme.CA().issue_cert("127.0.0.1"), WA_TLS_VERIFY="false")
    status, _ = await rig.post_message()
    assert status == 201
    assert "tls_verify = false" in describe(rig.config)
    [warning] = rig.config.warnings
    assert warning.startswith("WA_TLS_VERIFY (webapp.tls_verify): is false, so the Webapp's")


async def test_a_certificate_for_another_host_is_refused_even_from_the_trusted_ca(
    make_tls_rig: MakeTlsRig, ca: trustme.CA, ca_file: Path
) -> None:
    rig = await make_tls_rig(ca.issue_cert("webapp.example"), WA_CA_FILE=str(ca_file))
    status, answer = await rig.post_message()
    assert status == 503
    assert "The Webapp's TLS certificate was not accepted" in details(answer)
    assert "make WA_WEBAPP_URL name a host the certificate is issued for" in details(answer)
    assert rig.sim.seen == []


async def test_an_expired_certificate_is_refused_even_from_the_trusted_ca(
    make_tls_rig: MakeTlsRig, ca: trustme.CA, ca_file: Path
) -> None:
    rig = await make_tls_rig(expired(ca, "127.0.0.1"), WA_CA_FILE=str(ca_file))
    status, answer = await rig.post_message()
    assert status == 503
    assert "renew the Webapp's certificate" in details(answer)
    assert rig.sim.seen == []


async def test_a_forwarded_request_to_a_webapp_with_an_untrusted_new_certificate_gets_502_tls(
    make_tls_rig: MakeTlsRig, aiohttp_server: AiohttpServer, ca: trustme.CA, ca_file: Path
) -> None:
    rig = await make_tls_rig(ca.issue_cert("127.0.0.1"), WA_CA_FILE=str(ca_file))
    assert (await rig.post_message())[0] == 201  # the gateway holds a token now
    port = rig.webapp.port
    # The Webapp restarts on the same port with a certificate of a CA the gateway does not know.
    await rig.webapp.close()
    successor = rig.sim.restarted()
    untrusted = server_context(trustme.CA().issue_cert("127.0.0.1"))
    await aiohttp_server(successor.make_app(), port=port, ssl=untrusted)
    status, answer = await rig.post_message()
    assert status == 502
    assert answer["errors"][0]["code"] == 1014
    assert "The Webapp's TLS certificate was not accepted" in details(answer)
    assert rig.upstream_errors("tls") == 1
    assert successor.seen == []
    [completed] = [e for e in rig.logs.named("request.completed") if e["status"] == 502]
    assert completed["failure"] == "tls"


async def test_an_https_url_to_a_plain_http_webapp_is_a_tls_handshake_failure(
    aiohttp_server: AiohttpServer, aiohttp_client: Any
) -> None:
    sim, url = await start_simulator(aiohttp_server)
    config = gateway_config(url.replace("http://", "https://"))
    client = await aiohttp_client(GatewayTestServer(create_app(config)))
    async with client.post("/v1/messages", json=MESSAGE) as response:
        assert response.status == 503
        text = details(await response.json())
    assert "The TLS handshake with the Webapp failed" in text
    assert "WA_WEBAPP_URL names the Webapp's HTTPS port" in text
    assert sim.seen == []


# --- TLS on the gateway's own listener ------------------------------------------------------------


@contextlib.asynccontextmanager
async def serving(config: Config) -> AsyncIterator[str]:
    """``serve()`` in this loop, as ``wa-gateway serve`` runs it; yields the URL it listens on."""
    stop = asyncio.Event()
    started: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve(create_app(config), config, stop=stop, on_started=started.set_result)
    )
    try:
        await asyncio.wait([task, started], timeout=WAIT, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # raises what stopped it
        if not started.done():
            raise AssertionError(f"serve() did not start within {WAIT} s")
        yield started.result()
    finally:
        stop.set()
        async with asyncio.timeout(WAIT):
            await task


async def test_listener_with_tls_answers_https_and_forwards_with_x_forwarded_proto_https(
    aiohttp_server: AiohttpServer,
    listener_files: dict[str, str],
    trusting: ssl.SSLContext,
    logs: Logs,
) -> None:
    sim, webapp_url = await start_simulator(aiohttp_server)
    config = gateway_config(webapp_url, GATEWAY_LISTEN="127.0.0.1:0", **listener_files)
    async with (
        serving(config) as url,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trusting)) as session,
        session.post(url + "/v1/messages", json=MESSAGE) as response,
    ):
        assert response.status == 201
    assert url.startswith("https://127.0.0.1:")
    [started] = logs.named("gateway.started")
    assert started["url"] == url
    [message] = sim.seen_on("/v1/messages")
    assert message.headers["X-Forwarded-Proto"] == "https"


async def test_a_handshake_that_ends_after_shutdown_gets_a_closed_connection(
    aiohttp_server: AiohttpServer, listener_files: dict[str, str], trusting: ssl.SSLContext
) -> None:
    """asyncio makes the connection's protocol only once the handshake is done: one accepted
    before the stop and finished after it, with the loop still running (the demo's simulator
    is still cleaning up), found no server to serve it (a fatal error inside asyncio)."""
    _, webapp_url = await start_simulator(aiohttp_server)
    config = gateway_config(webapp_url, GATEWAY_LISTEN="127.0.0.1:0", **listener_files)
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        async with serving(config) as url:
            address = URL(url)
            raw = socket.create_connection((address.host or "", address.port or 0))
            await asyncio.sleep(0.1)  # accepted; no hello yet

        def handshake_then_ask() -> bytes:
            with trusting.wrap_socket(raw, server_hostname="127.0.0.1") as client:
                client.settimeout(WAIT)
                client.sendall(b"GET /_gateway/healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                return client.recv(100)

        try:
            answer = await asyncio.to_thread(handshake_then_ask)
        except (ssl.SSLError, OSError):
            answer = b""  # closed during the handshake: as good
        await asyncio.sleep(0.1)
    finally:
        loop.set_exception_handler(None)
        raw.close()
    assert answer == b""
    assert errors == []


async def test_tls_connections_that_close_after_their_answer_log_no_error(
    aiohttp_server: AiohttpServer,
    listener_files: dict[str, str],
    trusting: ssl.SSLContext,
    logs: Logs,
) -> None:
    """An answer with Connection: close, then the close: a TLS transport, once closed, has no
    write buffer left to ask about, and asking raised inside asyncio's callbacks (an ERROR line
    per connection, and a failed shutdown when one was still closing)."""
    _, webapp_url = await start_simulator(aiohttp_server)
    config = gateway_config(webapp_url, GATEWAY_LISTEN="127.0.0.1:0", **listener_files)
    async with serving(config) as url:
        for _ in range(5):
            async with (
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trusting)) as session,
                session.get(url + "/_gateway/healthz", headers={"Connection": "close"}) as answer,
            ):
                assert answer.status == 200
    assert [e["event"] for e in logs.events if e.get("level") == "error"] == []


async def test_healthcheck_speaks_tls_to_a_tls_listener_whatever_its_certificate_names(
    aiohttp_server: AiohttpServer, listener_files: dict[str, str], logs: Logs
) -> None:
    """The container's HEALTHCHECK reads the same configuration: it asks over TLS, and does not
    check a certificate issued to the service's name (here, one from a CA it does not know)."""
    _, webapp_url = await start_simulator(aiohttp_server)
    config = gateway_config(webapp_url, GATEWAY_LISTEN="127.0.0.1:0", **listener_files)
    async with serving(config) as url:
        port = int(url.rsplit(":", 1)[1])
        environ = {"GATEWAY_LISTEN": f"127.0.0.1:{port}", **listener_files}
        assert health_url(None, environ).startswith("https://")
        assert await asyncio.to_thread(check_health, health_url(None, environ))
        plain = {"GATEWAY_LISTEN": f"127.0.0.1:{port}"}
        assert not await asyncio.to_thread(check_health, health_url(None, plain))


async def test_listener_with_tls_refuses_plain_http(
    aiohttp_server: AiohttpServer, listener_files: dict[str, str], logs: Logs
) -> None:
    sim, webapp_url = await start_simulator(aiohttp_server)
    config = gateway_config(webapp_url, GATEWAY_LISTEN="127.0.0.1:0", **listener_files)
    async with serving(config) as url, aiohttp.ClientSession() as session:
        plain = url.replace("https://", "http://")
        with pytest.raises(aiohttp.ClientError):
            async with session.post(plain + "/v1/messages", json=MESSAGE) as response:
                await response.read()
    assert sim.seen_on("/v1/messages") == []
    assert logs.named("request.completed") == []


async def test_a_tls_handshake_that_never_ends_is_cut_off_after_the_idle_timeout(
    aiohttp_server: AiohttpServer, listener_files: dict[str, str], trusting: ssl.SSLContext
) -> None:
    """Connections that stop mid-hello (or never say it) are closed after the idle timeout, not
    after asyncio's 60 s, and the gateway serves others meanwhile."""
    _, webapp_url = await start_simulator(aiohttp_server)
    config = gateway_config(
        webapp_url,
        GATEWAY_LISTEN="127.0.0.1:0",
        GATEWAY_CLIENT_IDLE_TIMEOUT="0.5",
        **listener_files,
    )
    async with serving(config) as url:
        port = int(url.rsplit(":", 1)[1])
        stalled = [await asyncio.open_connection("127.0.0.1", port) for _ in range(10)]
        for _, writer in stalled[::2]:
            writer.write(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello, then nothing
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trusting)) as session,
            session.get(url + "/_gateway/healthz") as response,
        ):
            assert response.status == 200
        async with asyncio.timeout(10):  # asyncio's own limit would be 60 s
            for reader, writer in stalled:
                assert await reader.read() == b""  # closed by the gateway
                writer.close()


async def test_listener_with_tls_is_refused_by_a_client_that_does_not_trust_its_ca(
    aiohttp_server: AiohttpServer, listener_files: dict[str, str]
) -> None:
    _, webapp_url = await start_simulator(aiohttp_server)
    config = gateway_config(webapp_url, GATEWAY_LISTEN="127.0.0.1:0", **listener_files)
    async with serving(config) as url, aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with session.get(url + "/_gateway/healthz") as response:
                await response.read()


async def test_serve_refuses_to_start_when_the_key_no_longer_matches(
    aiohttp_server: AiohttpServer, listener_files: dict[str, str], logs: Logs
) -> None:
    _, webapp_url = await start_simulator(aiohttp_server)
    config = gateway_config(webapp_url, GATEWAY_LISTEN="127.0.0.1:0", **listener_files)
    # Replaced between the check and the start: another certificate's key.
    other = trustme.CA().issue_cert("127.0.0.1").private_key_pem
    other.write_to_path(listener_files["GATEWAY_TLS_KEY_FILE"])
    with pytest.raises(ConfigError) as info:
        async with serving(config):
            pass
    assert info.value.problems == [
        "GATEWAY_TLS_KEY_FILE (server.tls_key_file): "
        "is not the private key of the certificate in GATEWAY_TLS_CERT_FILE"
    ]
    assert logs.named("gateway.started") == []


async def test_serve_logs_each_configuration_warning_at_start(
    aiohttp_server: AiohttpServer, tmp_path: Path, logs: Logs
) -> None:
    _, webapp_url = await start_simulator(aiohttp_server)
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o644)
    config = gateway_config(
        webapp_url,
        GATEWAY_LISTEN="127.0.0.1:0",
        WA_PASSWORD=None,
        WA_PASSWORD_FILE=str(password_file),
    )
    async with serving(config):
        pass
    assert [event["detail"] for event in logs.named("config.warning")] == [
        "WA_PASSWORD_FILE (webapp.password_file): is readable by every user (mode 0644); "
        "chmod 600 it"
    ]
    [warning] = logs.named("config.warning")
    assert warning["level"] == "warning"
    assert PASSWORD not in logs.text
