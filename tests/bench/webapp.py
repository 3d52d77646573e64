"""The simulator process seen from the benchmark: started, logged in to, given the media to
download, and asked what it answered (and whether it is done answering)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections import Counter
from pathlib import Path
from typing import cast

import aiohttp
from aiohttp import hdrs

from gateway.simulator import LOGIN_PATH

from ..conftest import PASSWORD
from ..processes import free_port
from .servers import Server, running

USERNAME = "admin"
SETTLE_TIMEOUT = 5.0  # for the simulator to finish what a run left in flight
SETTLE_POLL = 0.1


async def login(session: aiohttp.ClientSession, url: str) -> str:
    """A bearer token, from one login at the Webapp at ``url``."""
    headers = {hdrs.AUTHORIZATION: aiohttp.encode_basic_auth(USERNAME, PASSWORD)}
    async with session.post(url + LOGIN_PATH, headers=headers) as answer:
        answer.raise_for_status()
        return cast(str, (await answer.json())["users"][0]["token"])


class Webapp:
    """The simulator process, seen from the benchmark: its URL, its counters, its CPU."""

    def __init__(self, server: Server, control: str, session: aiohttp.ClientSession) -> None:
        self.server = server
        self.url = server.url
        self._control = control
        self._session = session

    async def counts(self) -> tuple[int, Counter[str]]:
        """Requests in flight now, and the answers given so far by ``shape status``."""
        async with self._session.get(self._control + "/counts") as answer:
            data = await answer.json()
        return int(data["in_flight"]), Counter(data["answers"])

    async def settled(self) -> Counter[str]:
        """The answers, once nothing is in flight and nothing changed for a moment (or after
        SETTLE_TIMEOUT: a mismatch then shows in the run's check)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_TIMEOUT
        _, previous = await self.counts()
        while True:
            await asyncio.sleep(SETTLE_POLL)
            in_flight, answers = await self.counts()
            if (in_flight == 0 and answers == previous) or loop.time() > deadline:
                return answers
            previous = answers

    async def login(self) -> str:
        """A bearer token, from one login."""
        return await login(self._session, self.url)

    async def upload(self, token: str, data: bytes) -> str:
        """Store ``data`` as a media object; its id."""
        headers = {"Authorization": f"Bearer {token}", hdrs.CONTENT_TYPE: "image/jpeg"}
        async with self._session.post(self.url + "/v1/media", data=data, headers=headers) as a:
            a.raise_for_status()
            return cast(str, (await a.json())["media"][0]["id"])


def two_xx(answers: Counter[str], shape: str) -> int:
    """How many 2xx answers a shape got, from the simulator's ``shape status`` counters."""
    return sum(n for key, n in answers.items() if key.startswith(f"{shape} 2"))


async def start_webapp(
    stack: contextlib.AsyncExitStack, session: aiohttp.ClientSession, workdir: Path
) -> Webapp:
    """The simulator in its own process, its media stored in ``workdir``."""
    port, control_port = free_port(), free_port()
    media_dir = workdir / "media"
    media_dir.mkdir()
    command = [sys.executable, "-m", "tests.bench", "simulator"]
    command += [str(port), str(control_port), str(media_dir)]
    control = f"http://127.0.0.1:{control_port}"
    url = f"http://127.0.0.1:{port}"
    server = await stack.enter_async_context(
        running("simulator", command, url=url, ready_url=control + "/counts", workdir=workdir)
    )
    return Webapp(server, control, session)
