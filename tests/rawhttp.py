"""Speaking HTTP/1.1 as raw bytes, for requests no client library would send.

:func:`exchange` and :func:`request` are one-shot; :class:`Connection` keeps a socket open to send
in pieces (byte by byte, pipelined, or not at all) and read the answers one at a time.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from types import TracebackType

LOCALHOST = "127.0.0.1"


@dataclass(frozen=True)
class RawResponse:
    """A response as it came off the socket."""

    status: int
    headers: dict[str, str]
    body: bytes
    version: str = "HTTP/1.1"
    interim: tuple[int, ...] = ()  # the 1xx answers that came first

    @property
    def raw_headers(self) -> str:
        return "\n".join(f"{k}: {v}" for k, v in self.headers.items())

    @property
    def closes(self) -> bool:
        """Whether the answer says the server closes the connection after it."""
        connection = self.headers.get("connection", "").lower()
        return connection == "close" or (self.version != "HTTP/1.1" and connection != "keep-alive")


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
    version, status, headers = _parse_head(head)
    return RawResponse(status, headers, body, version)


def _parse_head(head: bytes) -> tuple[str, int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    version, status = lines[0].split()[:2]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return version, int(status), headers


async def request(
    host: str, port: int, request_line: str, *headers: str, body: bytes = b""
) -> RawResponse:
    """Send one request with ``Connection: close`` (and a Content-Length if there is a body)."""
    framing = [f"Content-Length: {len(body)}"] if body else []
    lines = [request_line, f"Host: {host}:{port}", *headers, *framing, "Connection: close", "", ""]
    return parse(await exchange(host, port, "\r\n".join(lines).encode("latin-1") + body))


class Connection:
    """One client connection, every operation under a deadline (``async with`` closes it).

    Reading is explicit, so a test can also *not* read: the socket's receive buffer is kept
    small with ``receive_buffer`` to make a client that stops reading stall the server soon.
    """

    def __init__(self, port: int, *, timeout: float = 5.0, receive_buffer: int | None = None):
        self.port = port
        self.timeout = timeout
        self.receive_buffer = receive_buffer
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> Connection:
        async with asyncio.timeout(self.timeout):
            if self.receive_buffer is None:
                self._reader, self._writer = await asyncio.open_connection(LOCALHOST, self.port)
            else:
                self._reader, self._writer = await _open_with_receive_buffer(
                    self.port, self.receive_buffer
                )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()

    @property
    def reader(self) -> asyncio.StreamReader:
        assert self._reader is not None, "use the connection in `async with`"
        return self._reader

    @property
    def writer(self) -> asyncio.StreamWriter:
        assert self._writer is not None, "use the connection in `async with`"
        return self._writer

    async def send(self, data: bytes) -> None:
        """Write ``data`` and wait until the kernel took it; a server that hung up is ignored."""
        self.writer.write(data)
        try:
            async with asyncio.timeout(self.timeout):
                await self.writer.drain()
        except ConnectionError:
            pass

    async def trickle(self, data: bytes, pause: float) -> tuple[int, bytes]:
        """Send ``data`` one byte at a time, ``pause`` seconds apart, until it is all sent or the
        server closes the connection; return how many bytes went out and everything the server
        sent (read until it closed, within the connection's timeout)."""
        sent = 0
        reading = asyncio.ensure_future(self.read_rest())
        try:
            for index in range(len(data)):
                if reading.done():
                    break
                self.writer.write(data[index : index + 1])
                sent += 1
                # Wakes early when the server answers or hangs up meanwhile.
                await asyncio.wait([reading], timeout=pause)
            return sent, await reading
        finally:
            reading.cancel()

    async def response(self) -> RawResponse:
        """Read exactly one final response (Content-Length, chunked, or until the server closes),
        and the interim (1xx) ones before it."""
        interim: list[int] = []
        async with asyncio.timeout(self.timeout):
            while True:
                head = await self.reader.readuntil(b"\r\n\r\n")
                version, status, headers = _parse_head(head[:-4])
                if not 100 <= status < 200:
                    break
                interim.append(status)
            if "content-length" in headers:
                body = await self.reader.readexactly(int(headers["content-length"]))
            elif headers.get("transfer-encoding", "").lower() == "chunked":
                body = await self._chunked()
            else:
                body = await self.reader.read()
        return RawResponse(status, headers, body, version, tuple(interim))

    async def _chunked(self) -> bytes:
        parts = []
        while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
            parts.append((await self.reader.readexactly(size + 2))[:-2])
        while await self.reader.readuntil(b"\r\n") != b"\r\n":  # trailers, ignored
            pass
        return b"".join(parts)

    async def read_rest(self) -> bytes:
        """Everything the server sends until it closes the connection."""
        async with asyncio.timeout(self.timeout):
            try:
                return await self.reader.read()
            except ConnectionError:
                return b""

    async def closed(self, within: float | None = None) -> bool:
        """Whether the server closes the connection (sending nothing more) within the time."""
        try:
            async with asyncio.timeout(self.timeout if within is None else within):
                rest = await self.reader.read()
        except TimeoutError:
            return False
        except ConnectionError:
            return True
        return rest == b""

    def half_close(self) -> None:
        """Tell the server this client will send nothing more (FIN), still reading."""
        self.writer.write_eof()

    def abort(self) -> None:
        """Close at once, with a reset: unsent data and unread answers are discarded."""
        if self._writer is not None:
            transport = self._writer.transport
            transport.abort()


async def _open_with_receive_buffer(
    port: int, size: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Set before connecting, so the advertised window is small from the start.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (LOCALHOST, port))
    return await asyncio.open_connection(sock=sock, limit=size)
