"""``python -m gateway demo``: the gateway before the built-in simulator, as a person runs it."""

from __future__ import annotations

import itertools
import os
import re
import shlex
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from .conftest import until
from .processes import GatewayProcess, free_port, running_gateway

pytestmark = pytest.mark.slow

WAIT = 10.0
PRODUCTION_PASSWORD = "Production-pass-1!"


@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[GatewayProcess]:
    """The demo on a free port. Its WA_* settings are wrong on purpose: the demo must ignore
    them and use the simulator it starts."""
    port = free_port()
    settings = {
        "GATEWAY_LISTEN": f"127.0.0.1:{port}",
        "WA_WEBAPP_URL": "http://127.0.0.1:9",
        "WA_PASSWORD": "not-the-demo-password",
    }
    async with running_gateway(["demo"], settings, f"http://127.0.0.1:{port}", tmp_path) as process:
        yield process


def curl_request(banner: str) -> tuple[str, dict[str, str], str]:
    """The URL, headers and body of the first ``curl ... -d ...`` line of the banner."""
    line = next(
        line for line in banner.splitlines() if line.strip().startswith("curl ") and "-d" in line
    )
    words = shlex.split(line)
    url = next(word for word in words if word.startswith("http://"))
    headers = dict(
        value.split(": ", 1) for flag, value in itertools.pairwise(words) if flag == "-H"
    )
    body = words[words.index("-d") + 1]
    return url, headers, body


async def test_demo_prints_a_curl_line_that_works(demo: GatewayProcess) -> None:
    """The banner names the gateway's URL and a curl line; that request answers 201, and
    /v1/health (sent with the API key) answers 200."""
    banner = demo.stdout
    assert re.search(rf"the gateway listens on {re.escape(demo.url)}\b", banner), banner
    url, headers, body = curl_request(banner)
    assert url == demo.url + "/v1/messages"
    timeout = aiohttp.ClientTimeout(total=WAIT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.post(url, data=body, headers=headers) as response:
            assert response.status == 201, await response.text()
            assert (await response.json())["messages"][0]["id"]
        async with session.get(demo.url + "/v1/health") as response:
            assert response.status == 200, await response.text()
            assert (await response.json())["health"]["gateway_status"] == "connected"
    assert f"curl -s {demo.url}/v1/health" in banner


async def test_demo_stops_on_sigint_with_status_0(demo: GatewayProcess) -> None:
    """Ctrl-C stops the demo in order: exit status 0, gateway.stopped logged, nothing on stderr."""
    demo.send_signal(signal.SIGINT)
    assert await demo.wait(WAIT) == 0, demo.describe()
    assert demo.event_names()[-1] == "gateway.stopped"
    assert demo.stderr == ""


async def test_demo_ignores_the_webapp_section_of_gateway_config(tmp_path: Path) -> None:
    """A GATEWAY_CONFIG whose [webapp] names a production password file, due for rotation, does
    not reach the demo: the banner's curl line still gets 201, and nothing is written beside
    that password file (no lock, no new password)."""
    secret = tmp_path / "secrets" / "password"
    secret.parent.mkdir()
    secret.write_text(PRODUCTION_PASSWORD + "\n")
    secret.chmod(0o600)
    week_ago = time.time() - 7 * 24 * 3600
    os.utime(secret, (week_ago, week_ago))  # older than the interval: a rotation would be due
    config_file = tmp_path / "gateway.toml"
    config_file.write_text(
        "[webapp]\n"
        'url = "https://webapp.prod.example:9090"\n'
        f'password_file = "{secret}"\n'
        'password_rotate_every = "60s"\n'
    )
    port = free_port()
    settings = {"GATEWAY_LISTEN": f"127.0.0.1:{port}", "GATEWAY_CONFIG": str(config_file)}
    async with running_gateway(
        ["demo"], settings, f"http://127.0.0.1:{port}", tmp_path, ready_path="/_gateway/healthz"
    ) as demo:
        await until(lambda: "curl " in demo.stdout, within=WAIT)  # the banner follows the log
        url, headers, body = curl_request(demo.stdout)
        timeout = aiohttp.ClientTimeout(total=WAIT)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(url, data=body, headers=headers) as response,
        ):
            assert response.status == 201, await response.text()
    assert sorted(path.name for path in secret.parent.iterdir()) == ["password"]
    assert secret.read_text() == PRODUCTION_PASSWORD + "\n"
