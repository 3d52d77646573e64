"""Speaking HTTP/1.1 as raw bytes, for requests no client library would send."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass(frozen=True)
class RawResponse:
    """A response as it came off the socket."""

    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def raw_headers(self) -> str:
        return "\n".join(f"{k}: {v}" for k, v in self.headers.items())


async def exchange(host: str, port: int, data: bytes, timeout: float = 5.0) -> bytes:  # noqa: ASYNC109
    """Send ``data`` and read until the server closes the connection (or ``timeout``)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(timeout):
            return await reader.read()
    finally:
        writer.close()


def parse(raw: bytes) -> RawResponse:
    """The first response in ``raw`` (header names lower-cased)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawResponse(status, headers, body)


async def request(
    host: str, port: int, request_line: str, *headers: str, body: bytes = b""
) -> RawResponse:
    """Send one request with ``Connection: close`` (and a Content-Length if there is a body)."""
    framing = [f"Content-Length: {len(body)}"] if body else []
    lines = [request_line, f"Host: {host}:{port}", *headers, *framing, "Connection: close", "", ""]
    return parse(await exchange(host, port, "\r\n".join(lines).encode("latin-1") + body))
