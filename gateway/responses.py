"""Responses that send the headers they were given, and only those HTTP itself requires.

aiohttp adds ``Server: Python/3.x aiohttp/3.y`` to every answer that has none (versions a
scanner reads as a list of advisories) and ``Content-Type: application/octet-stream`` to every
body that has none, which would change the Webapp's answers on their way through. These add
neither: a relayed answer carries the Webapp's ``Server`` and ``Content-Type`` or none, the
gateway's own answers no ``Server``. ``Date`` and the framing headers are still made as before.
"""

from __future__ import annotations

from aiohttp import hdrs, web

_DEFAULTED = (hdrs.SERVER, hdrs.CONTENT_TYPE)


class StreamResponse(web.StreamResponse):
    """A streamed answer without the headers aiohttp would add on its own."""

    async def _prepare_headers(self) -> None:
        absent = [name for name in _DEFAULTED if name not in self.headers]
        await super()._prepare_headers()
        for name in absent:
            self.headers.popall(name, None)


class Response(StreamResponse, web.Response):
    """A complete answer without the headers aiohttp would add on its own."""
