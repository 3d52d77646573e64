"""What the load repeats and what it saw: the two request shapes (a small JSON message, a
1 MiB media download) and one load run's result, whichever generator made it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import hdrs

from ..harness.text import MiB

MEDIA_SIZE = MiB
MESSAGE = b'{"to": "16315551234", "type": "text", "text": {"body": "bench"}}'


@dataclass(frozen=True)
class Shape:
    """One kind of request the load repeats."""

    name: str
    method: str
    path: str
    body: bytes | None = None
    content_type: str | None = None
    expect_bytes: int | None = None  # the answer's body size, checked by the Python generator

    def headers(self, client: Mapping[str, str]) -> dict[str, str]:
        """The request's headers: the ``client``'s own, and the body's type."""
        if self.content_type is None:
            return dict(client)
        return {**client, hdrs.CONTENT_TYPE: self.content_type}


def shapes(media_id: str) -> tuple[Shape, Shape]:
    """The message shape, and the download of the media object ``media_id``."""
    return (
        Shape("message", "POST", "/v1/messages", MESSAGE, "application/json"),
        Shape("media", "GET", f"/v1/media/{media_id}", expect_bytes=MEDIA_SIZE),
    )


@dataclass(frozen=True)
class LoadResult:
    """What a load generator saw in one run."""

    requests: int  # complete answers
    seconds: float
    non_2xx: int
    errors: int  # connect, read, write errors and timeouts; a wrong body size (Python only)
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0
