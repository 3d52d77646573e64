"""Shared fixtures: a simulated Webapp and a gateway in front of it, on real 127.0.0.1 sockets."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import GATEWAY, Gateway, create_app
from gateway.config import Config, TokenConfig, load_config
from gateway.log import configure_logging
from gateway.protocol import GatewayRunner
from gateway.simulator import Simulator

PASSWORD = "Gateway-pass-1!"
API_KEY = "test-api-key-0123456789"
# Fast retries keep failure tests short; tests about backoff itself set their own.
TEST_ENV = {
    "WA_PASSWORD": PASSWORD,
    "WA_API_KEY": API_KEY,
    "GATEWAY_LOGIN_BACKOFF_INITIAL": "0.05",
    "GATEWAY_LOGIN_BACKOFF_MAX": "0.2",
    "GATEWAY_UPSTREAM_TIMEOUT": "5",
    "GATEWAY_LOGIN_TIMEOUT": "5",
}


# The token pool's settings for tests of the pool and its schedule on their own (a fake clock).
TOKEN_CONFIG = TokenConfig(
    login_timeout=5.0,
    refresh_before=0.1,
    refresh_jitter=0.05,
    backoff_initial=1.0,
    backoff_max=30.0,
    breaker_threshold=3,
)

# A text message as clients send it, for every test that needs one to go through.
MESSAGE = {"to": "16315551234", "type": "text", "text": {"body": "hi"}}


async def until(condition: Callable[[], object], within: float = 10.0) -> None:
    """Poll ``condition`` until it holds; fail after ``within`` seconds."""
    async with asyncio.timeout(within):
        while not condition():
            await asyncio.sleep(0.005)


def open_files(directory: Path) -> int:
    """This process's descriptors that point into ``directory`` (unlinked spool files included)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith(str(directory))
        except OSError:
            continue
    return count


def gateway_config(webapp_url: str, **env: str | None) -> Config:
    """A configuration for a gateway in front of ``webapp_url``; ``env`` overrides the defaults
    (None removes a setting)."""
    merged = {**TEST_ENV, "WA_WEBAPP_URL": webapp_url, **env}
    return load_config(None, {key: value for key, value in merged.items() if value is not None})


class Logs:
    """Everything the gateway logged during a test, as text and as parsed JSON events."""

    def __init__(self) -> None:
        self.stream = io.StringIO()

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    @property
    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text.splitlines() if line.strip()]

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == event]


@pytest.fixture
def logs() -> Logs:
    captured = Logs()
    configure_logging("debug", captured.stream, cache=False, background=False)
    return captured


class GatewayTestServer(TestServer):
    """A test server that runs the app the way ``wa-gateway serve`` does (GatewayRunner)."""

    async def _make_runner(self, **kwargs: Any) -> GatewayRunner:
        kwargs.setdefault("access_log", None)  # as serve(): the gateway writes its own
        return GatewayRunner(self.app, **kwargs)


@dataclass
class Rig:
    """A simulated Webapp, the gateway in front of it, and what the gateway logged."""

    sim: Simulator
    webapp: TestServer
    client: TestClient[web.Request, web.Application]
    config: Config
    logs: Logs

    @property
    def gateway(self) -> Gateway:
        return self.client.app[GATEWAY]  # type: ignore[index]

    @property
    def url(self) -> str:
        return str(self.client.make_url("")).rstrip("/")

    @property
    def secrets(self) -> list[str]:
        """Every secret this rig used: none may appear in logs or answers. The password also as
        the gateway's Basic credential, which carries it base64-encoded."""
        basic = base64.b64encode(f"{self.config.webapp.username}:{PASSWORD}".encode()).decode()
        return [PASSWORD, basic, API_KEY, *self.sim.issued_tokens]


MakeRig = Callable[..., Awaitable[Rig]]


@pytest.fixture
def make_rig(aiohttp_server: Any, aiohttp_client: Any, logs: Logs) -> MakeRig:
    """Start a simulator (``sim``, or one built from ``sim_options``) and a gateway before it."""

    async def make(
        *,
        sim: Simulator | None = None,
        env: dict[str, str | None] | None = None,
        **sim_options: Any,
    ) -> Rig:
        if sim is None:
            options = {
                "password": PASSWORD,
                "password_change_required": False,
                "api_key": API_KEY,
                **sim_options,
            }
            sim = Simulator(**options)
        webapp = await aiohttp_server(sim.make_app())
        config = gateway_config(str(webapp.make_url("")), **(env or {}))
        client = await aiohttp_client(GatewayTestServer(create_app(config)))
        return Rig(sim, webapp, client, config, logs)

    return make


class Scrape:
    """One scrape of /_gateway/metrics, parsed."""

    def __init__(self, text: str, content_type: str) -> None:
        self.content_type = content_type
        self.samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def __call__(self, name: str, **labels: str) -> float:
        """The value of one sample; 0 for a labelled sample that was never counted."""
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def labelled(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        """Every sample called ``name``, by its labels."""
        return {labels: value for (sample, labels), value in self.samples.items() if sample == name}


async def error_of(response: ClientResponse) -> dict[str, object]:
    """The gateway's WhatsApp-style error in ``response``, checked for shape."""
    document = await response.json()
    assert response.headers["X-Request-ID"]
    assert document["meta"]["version"].startswith("wa-gateway")
    error: dict[str, object] = document["errors"][0]
    return error


async def warmed(make_rig: MakeRig, **env: str) -> Rig:
    """A rig whose gateway already holds a token, so failures are about the request itself."""
    rig = await make_rig(env=env)
    async with rig.client.post("/v1/messages", json=MESSAGE) as response:
        assert response.status == 201
    rig.sim.seen.clear()
    return rig


@pytest.fixture
async def rig(make_rig: MakeRig) -> Rig:
    """The everyday rig: a healthy Webapp with an API key, the gateway logged in."""
    return await make_rig()


# --- TLS: one CA for the Webapp's certificates and the gateway's listener -------------------------


@pytest.fixture
def ca() -> trustme.CA:
    """The CA that issues the Webapp's and the listener's certificates; no system trusts it."""
    return trustme.CA()


@pytest.fixture
def listener_files(ca: trustme.CA, tmp_path: Path) -> dict[str, str]:
    """Settings for a listener certificate for 127.0.0.1 from ``ca``; the key file mode 0600."""
    cert = ca.issue_cert("127.0.0.1")
    cert_path, key_path = tmp_path / "gateway-cert.pem", tmp_path / "gateway-key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    key_path.chmod(0o600)
    return {"GATEWAY_TLS_CERT_FILE": str(cert_path), "GATEWAY_TLS_KEY_FILE": str(key_path)}


@pytest.fixture
def trusting(ca: trustme.CA) -> ssl.SSLContext:
    """A client context that trusts ``ca``."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context
