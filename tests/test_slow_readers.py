"""Clients that read slowly, or not at all: every write to them has GATEWAY_CLIENT_SEND_TIMEOUT.

Loopback grows socket buffers to megabytes, so a client that stops reading would stall nothing
for a long time; here the gateway's side of the connection gets a small send buffer and the
client a small receive buffer, as a client over a real network that stops reading keeps them.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from gateway.forward import SLICE, _slices

from . import rawhttp
from .conftest import MakeRig, Rig, until

SMALL = 4096
BOUND = 10.0  # seconds: far beyond the timeouts these tests set, far below "forever"


def connections(rig: Rig) -> list[web.RequestHandler]:
    server = rig.client.server.runner.server  # type: ignore[union-attr]
    assert server is not None
    return list(server.connections)


async def shrink_send_buffer(rig: Rig) -> None:
    """Give the gateway's side of the one client connection a small send buffer."""
    await until(lambda: len(connections(rig)) == 1)
    transport = connections(rig)[0].transport
    assert transport is not None
    transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL)


@contextlib.asynccontextmanager
async def slow_client(rig: Rig) -> AsyncIterator[rawhttp.Connection]:
    """A connection whose buffers, both ends, are small: a client over a real network."""
    async with rawhttp.Connection(rig.client.port, receive_buffer=SMALL, timeout=30) as client:
        await shrink_send_buffer(rig)
        yield client


async def test_a_client_that_never_reads_the_end_of_its_answer_is_disconnected(
    make_rig: MakeRig,
) -> None:
    """The last part of an answer (up to 64 KiB) is handed over without a wait; a client that
    never reads it must not keep its connection, open and counted, forever."""
    rig = await make_rig(
        env={"GATEWAY_CLIENT_SEND_TIMEOUT": "1", "GATEWAY_CLIENT_IDLE_TIMEOUT": "1"}
    )
    media = rig.sim.add_media(60 * 1024)
    async with slow_client(rig) as client:
        await client.send(f"GET /v1/media/{media} HTTP/1.1\r\nHost: gateway\r\n\r\n".encode())
        await until(lambda: not connections(rig), within=BOUND)


async def test_a_client_that_pipelines_and_never_reads_is_disconnected(make_rig: MakeRig) -> None:
    """Answers that aiohttp sends after the handler returned wait for the client too: a client
    that sends request after request and reads none of the answers is cut off."""
    rig = await make_rig(
        env={"GATEWAY_CLIENT_SEND_TIMEOUT": "1", "GATEWAY_CLIENT_IDLE_TIMEOUT": "1"}
    )
    metrics = b"GET /_gateway/metrics HTTP/1.1\r\nHost: gateway\r\n\r\n"
    async with slow_client(rig) as client:
        for _ in range(400):  # until the gateway stops reading requests, its answers unread
            client.writer.write(metrics * 50)
            try:
                async with asyncio.timeout(0.5):
                    await client.writer.drain()
            except TimeoutError:
                break
        await until(lambda: not connections(rig), within=BOUND)


@pytest.mark.parametrize("size", [0, 1, SLICE - 1, SLICE, SLICE + 1, 4 * SLICE + 17])
def test_a_chunk_goes_to_the_client_in_slices_of_at_most_64_kib(size: int) -> None:
    """Each write waits for the client to take what it was handed (down to the transport's low
    water mark) within GATEWAY_CLIENT_SEND_TIMEOUT; a chunk of the Webapp's (up to 256 KiB) in
    one write would ask a slow but steady reader to take all of it in that time."""
    chunk = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    pieces = _slices(chunk)
    assert all(len(piece) <= SLICE for piece in pieces)
    assert b"".join(pieces) == chunk
    if size <= SLICE:
        assert pieces == (chunk,)  # the usual case: the chunk itself, not a copy or a view


async def test_a_refusal_on_a_connection_whose_last_answer_is_still_unread_is_bounded(
    make_rig: MakeRig,
) -> None:
    """The end of a relayed answer can still wait in the transport for the client; a refusal
    sent next on that connection (here a 408 for a body that never comes) waits no longer than
    the send timeout either, then the connection is reset."""
    rig = await make_rig(
        env={"GATEWAY_CLIENT_SEND_TIMEOUT": "1", "GATEWAY_CLIENT_BODY_TIMEOUT": "1"}
    )
    media = rig.sim.add_media(216 * 1024)
    async with slow_client(rig) as client:
        await client.send(f"GET /v1/media/{media} HTTP/1.1\r\nHost: gateway\r\n\r\n".encode())
        while not rig.logs.named("request.completed"):  # read until the relay has ended
            await client.reader.read(SMALL)
            await asyncio.sleep(0.01)
        await client.send(
            b"POST /v1/messages HTTP/1.1\r\nHost: gateway\r\nContent-Length: 10\r\n\r\n"
        )
        await until(lambda: not connections(rig), within=BOUND)
    assert rig.gateway.in_flight.count == 0


async def test_a_client_that_never_reads_an_answer_sent_before_a_close_is_disconnected(
    make_rig: MakeRig,
) -> None:
    """An answer after which the connection closes (Connection: close) must be sent within the
    send timeout too: a plain close would wait, unbounded, for the client to read it."""
    rig = await make_rig(
        env={"GATEWAY_CLIENT_SEND_TIMEOUT": "1", "GATEWAY_CLIENT_IDLE_TIMEOUT": "30"}
    )
    media = rig.sim.add_media(60 * 1024)
    async with slow_client(rig) as client:
        await client.send(
            f"GET /v1/media/{media} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n".encode()
        )
        await until(lambda: not connections(rig), within=BOUND)
