"""One request's passage through the simulator: its record, its shared state, its body.

The middleware records every request as a ``Seen`` when it arrives and settles the record (body
bytes read, status answered) when it ends; in between, the handlers share an ``Exchange``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, replace

from aiohttp import hdrs, web

_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Seen:
    """One request that reached the simulator, as it arrived.

    ``body_size`` (the body bytes the simulator read) and ``status`` (the status it answered
    with) are filled in when the request ends; ``status`` stays None while the request is
    handled, and for good when the simulator hung up (or the client went away) before a status
    line went out.
    """

    method: str
    path_qs: str
    auth_scheme: str | None
    credential: str | None
    request_id: str | None
    headers: Mapping[str, str]
    body_size: int = 0
    status: int | None = None


@dataclass
class Exchange:
    """Per-request state the middleware shares with the handlers."""

    record: Seen
    body_size: int = 0
    status: int | None = None
    user: str | None = None
    token: str = ""  # the bearer token that authenticated the request, if one did


EXCHANGE = web.RequestKey("wa_sim_exchange", Exchange)
# The Date a response must carry: a timestamp, or None for no Date header at all.
DATE_AT: web.ResponseKey[float | None] = web.ResponseKey("wa_sim_date_at")


def split_authorization(request: web.Request) -> tuple[str | None, str | None]:
    """The Authorization header's scheme (lower case) and credential, each None if absent."""
    value = request.headers.get(hdrs.AUTHORIZATION, "").strip()
    if not value:
        return None, None
    scheme, _, credential = value.partition(" ")
    return scheme.lower(), credential.strip() or None


def arrived(request: web.Request) -> Seen:
    """The record of a request as it arrived."""
    scheme, credential = split_authorization(request)
    return Seen(
        method=request.method,
        path_qs=request.raw_path,
        auth_scheme=scheme,
        credential=credential,
        request_id=request.headers.get("X-Request-ID"),
        headers=request.headers.copy(),
    )


def settle(seen: list[Seen], exchange: Exchange) -> None:
    """Put the body bytes read and the status answered into the request's (frozen) record."""
    if exchange.body_size == 0 and exchange.status is None:
        return
    settled = replace(exchange.record, body_size=exchange.body_size, status=exchange.status)
    # Searched by identity: a test may have cleared or trimmed `seen` meanwhile.
    for index in range(len(seen) - 1, -1, -1):
        if seen[index] is exchange.record:
            seen[index] = settled
            return


async def body_chunks(request: web.Request) -> AsyncGenerator[bytes, None]:
    """Yield the request body chunk by chunk, counting what the app read for ``Seen``."""
    exchange = request[EXCHANGE]
    async for chunk in request.content.iter_chunked(_CHUNK):
        exchange.body_size += len(chunk)
        yield chunk
