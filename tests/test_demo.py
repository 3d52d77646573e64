"""``python -m gateway demo``: the gateway before the built-in simulator, as a person runs it."""

from __future__ import annotations

import itertools
import re
import shlex
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from .processes import GatewayProcess, free_port, running_gateway

pytestmark = pytest.mark.slow

WAIT = 10.0


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
