"""The soak's clients: a weighted mix of operations against one gateway, each request sent with
an ``X-Request-ID`` and judged in the :class:`~.ledger.Ledger` against the Webapp's answer."""

from __future__ import annotations

import asyncio
import io
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import aiohttp

from gateway.simulator import Simulator, synthetic_media_bytes, synthetic_media_sha256

from ..harness.workers import repeat
from .bodies import (
    DOWNLOAD_SIZES,
    SLOW_CHUNK,
    SLOW_SIZE,
    UPLOAD_SIZES,
    Corrupt,
    digest,
    trickle,
)
from .ledger import REQUEST_ID, Ledger, WebappAnswers

MESSAGE = {"to": "16315551234", "type": "text", "text": {"body": "soak"}}
CONTACTS = {"blocking": "wait", "contacts": ["+1 631 555 1234", "+1 631 555 9876", "nobody"]}
ABANDON_AFTER = 0.2  # seconds: a slow upload takes longer, so an abandoned one is always cut

Body = io.BytesIO | AsyncIterator[bytes] | None  # a Content-Length, or chunked
Reader = Callable[[aiohttp.ClientResponse], Awaitable[object]]


class Traffic:
    """The clients' operations against one gateway, each recorded in a :class:`Ledger`."""

    def __init__(
        self, session: aiohttp.ClientSession, sim: Simulator, answers: WebappAnswers, seed: int
    ) -> None:
        self.session = session
        self.sim = sim
        self.answers = answers
        self.url = ""  # set once the gateway listens
        self.rng = random.Random(seed)
        self.ledger = Ledger()
        self.bodies = {size: b"".join(synthetic_media_bytes(size)) for size in UPLOAD_SIZES}
        sizes = {*UPLOAD_SIZES, *DOWNLOAD_SIZES, SLOW_SIZE}
        self.digests = {size: synthetic_media_sha256(size) for size in sizes}
        self.operations: dict[Callable[[], Awaitable[None]], int] = {  # weights
            self.message: 40,
            self.contacts: 10,
            self.health: 10,
            self.client_login: 5,
            self.upload: 8,
            self.download: 8,
            self.slow_upload: 3,
            self.slow_download: 3,
            self.abandoned_upload: 1,
            self.abandoned_download: 1,
        }

    async def warm_up(self) -> None:
        """Every operation once, side by side."""
        await asyncio.gather(*(operation() for operation in self.operations))

    async def run(self, workers: int, until: float) -> None:
        """``workers`` clients doing weighted random operations until the loop time ``until``."""
        operations, weights = list(self.operations), list(self.operations.values())

        async def any_operation() -> None:
            await self.rng.choices(operations, weights)[0]()

        await repeat(workers, until, any_operation)

    async def exchange(
        self,
        kind: str,
        method: str,
        path: str,
        expected: int,
        read: Reader | None = None,
        *,
        replayable: bool = True,
        json_body: object = None,
        data: Body = None,
        headers: Mapping[str, str] | None = None,
    ) -> object:
        """One request, judged; what ``read`` made of an expected answer, or None."""
        rid = self.answers.open()
        outcome: int | str
        result: object = None
        try:
            async with self.session.request(
                method,
                self.url + path,
                json=json_body,
                data=data,
                headers={REQUEST_ID: rid, **(headers or {})},
            ) as response:
                outcome = response.status
                if outcome == expected and read is not None:
                    result = await read(response)
                else:
                    await response.read()
        except Corrupt as exc:
            outcome = f"corrupt: {exc}"
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            outcome = f"client error: {type(exc).__name__}"
        finally:
            webapp = self.answers.close(rid)
        self.ledger.record(kind, expected, outcome, webapp, replayable=replayable)
        return result if outcome == expected else None

    async def message(self) -> None:
        await self.exchange("message", "POST", "/v1/messages", 201, json_body=MESSAGE)

    async def contacts(self) -> None:
        await self.exchange("contacts", "POST", "/v1/contacts", 200, json_body=CONTACTS)

    async def health(self) -> None:
        await self.exchange("health", "GET", "/v1/health", 200, replayable=False)

    async def client_login(self) -> None:
        basic = {"Authorization": aiohttp.encode_basic_auth("someone", "anything")}
        token = await self.exchange("login", "POST", "/v1/users/login", 200, _token, headers=basic)
        if isinstance(token, str):
            bearer = {"Authorization": f"Bearer {token}"}
            await self.exchange("logout", "POST", "/v1/users/logout", 200, headers=bearer)

    async def upload(self) -> None:
        size = self.rng.choice(UPLOAD_SIZES)
        await self._upload("upload", size, io.BytesIO(self.bodies[size]))

    async def slow_upload(self) -> None:
        await self._upload("slow upload", SLOW_SIZE, trickle(SLOW_SIZE))

    async def abandoned_upload(self) -> None:
        try:
            async with asyncio.timeout(ABANDON_AFTER):
                await self._upload("abandoned upload", SLOW_SIZE, trickle(SLOW_SIZE))
        except TimeoutError:
            self.ledger.abandoned += 1

    async def download(self) -> None:
        await self._download("download", self.rng.choice(DOWNLOAD_SIZES), slow=False)

    async def slow_download(self) -> None:
        await self._download("slow download", max(DOWNLOAD_SIZES), slow=True)

    async def abandoned_download(self) -> None:
        media_id = self.sim.add_media(max(DOWNLOAD_SIZES))

        async def read_a_little(response: aiohttp.ClientResponse) -> None:
            await response.content.read(SLOW_CHUNK)
            response.close()  # hang up with most of the answer still to come
            self.ledger.abandoned += 1

        await self.exchange(
            "abandoned download", "GET", f"/v1/media/{media_id}", 200, read_a_little
        )
        await self._delete(media_id)

    async def _upload(self, kind: str, size: int, body: Body) -> None:
        async def stored_intact(response: aiohttp.ClientResponse) -> object:
            media_id = (await response.json())["media"][0]["id"]
            if self.sim.media_digest(media_id) != (size, self.digests[size]):
                raise Corrupt("the Webapp stored another body")
            return media_id

        headers = {"Content-Type": "application/octet-stream"}
        media_id = await self.exchange(
            kind, "POST", "/v1/media", 201, stored_intact, data=body, headers=headers
        )
        if isinstance(media_id, str):
            await self._delete(media_id)

    async def _download(self, kind: str, size: int, *, slow: bool) -> None:
        media_id = self.sim.add_media(size)

        async def arrived_intact(response: aiohttp.ClientResponse) -> None:
            got = await digest(response, slow=slow)
            if got != (size, self.digests[size]):
                raise Corrupt(f"{got[0]} bytes arrived, sha256 {got[1][:12]}...")

        await self.exchange(kind, "GET", f"/v1/media/{media_id}", 200, arrived_intact)
        await self._delete(media_id)

    async def _delete(self, media_id: str) -> None:
        await self.exchange("delete media", "DELETE", f"/v1/media/{media_id}", 200)


async def _token(response: aiohttp.ClientResponse) -> object:
    return (await response.json())["users"][0]["token"]
