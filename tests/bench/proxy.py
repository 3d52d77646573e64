"""The ``proxy`` role (``python -m tests.bench proxy PORT UPSTREAM``): a reverse proxy with
nothing but forwarding, one login at start and a fixed ``Authorization``: the floor any aiohttp
proxy pays."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict
from yarl import URL

from .webapp import login

# RFC 9110 section 7.6.1, and Host: the bare proxy's client sets the upstream's.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)
SESSION = web.AppKey("bench_session", aiohttp.ClientSession)
AUTHORIZATION = web.AppKey("bench_authorization", str)


def end_to_end(headers: Mapping[str, str]) -> CIMultiDict[str]:
    """``headers`` without the hop-by-hop ones, which a proxy does not pass on."""
    return CIMultiDict(
        (name, value) for name, value in headers.items() if name.lower() not in HOP_BY_HOP
    )


def bare_proxy(upstream: str) -> web.Application:
    """A reverse proxy with nothing but forwarding: the floor any aiohttp proxy pays."""

    async def session(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(auto_decompress=False) as client:
            token = await login(client, upstream)
            app[SESSION], app[AUTHORIZATION] = client, f"Bearer {token}"
            yield

    async def forward(request: web.Request) -> web.StreamResponse:
        headers = end_to_end(request.headers)
        headers[hdrs.AUTHORIZATION] = request.app[AUTHORIZATION]
        async with request.app[SESSION].request(
            request.method,
            URL(upstream + request.raw_path, encoded=True),
            headers=headers,
            data=request.content if request.can_read_body else None,
            allow_redirects=False,
        ) as answer:
            response = web.StreamResponse(
                status=answer.status,
                reason=answer.reason,
                headers=end_to_end(answer.headers),
            )
            await response.prepare(request)
            while chunk := await answer.content.readany():
                await response.write(chunk)
            await response.write_eof()
            return response

    app = web.Application()
    app.cleanup_ctx.append(session)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app
