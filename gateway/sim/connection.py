"""What the simulator does to a connection: waits, hang-ups, and request faults carried out.

Every wait ends when the client hangs up or the app shuts down (``closing`` is set), so a test's
teardown never waits out aiohttp's shutdown timeout. A ``HEAD`` request never gets a body byte,
faults included: aiohttp sends whatever a ``StreamResponse`` writes, even in answer to ``HEAD``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math

from aiohttp import hdrs, web

from .answers import answer, status_error
from .exchange import body_chunks
from .faults import Fault

# How often held requests look for a hung-up client: aiohttp does not cancel handlers on
# disconnect (handler_cancellation is off by default), so nothing else would tell them.
_POLL = 0.05
_CUT_DECLARED = 1_000_000
_CUT_SENT = 1000
_TRICKLE_BODY = b'{"meta":1}'
_BAD_CHUNK = b"zz\r\n"  # a chunk size that is not hexadecimal
_MID_BODY = 0.2  # seconds between the first chunk and the broken one


def hang_up(request: web.Request) -> web.StreamResponse:
    """Close the connection; the returned response is never written.

    close() (not abort()) so whatever was already written still reaches the client. aiohttp
    finds the transport closing when it finishes the response and drops it quietly.
    """
    transport = request.transport
    if transport is not None:
        transport.close()
    return web.Response()


def client_gone(request: web.Request) -> bool:
    """Whether the client hung up (or the simulator did)."""
    transport = request.transport
    return transport is None or transport.is_closing()


def bodiless(request: web.Request) -> bool:
    """Whether the answer may have no body: a StreamResponse sends what it writes, even to HEAD."""
    return request.method == hdrs.METH_HEAD


async def pause(request: web.Request, seconds: float, closing: asyncio.Event) -> bool:
    """Wait ``seconds``; False if the client hung up or the app shut down first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not closing.is_set() and not client_gone(request):
        remaining = deadline - loop.time()
        if remaining <= 0:
            return True
        # wait_for, not asyncio.timeout: on Python 3.11 a timeout thrown into this frame
        # makes coverage lose the callers' later lines (python/cpython#106749).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(closing.wait(), min(remaining, _POLL))
    return False


async def apply_fault(  # noqa: PLR0911 - one answer per fault kind
    request: web.Request, fault: Fault, closing: asyncio.Event
) -> web.StreamResponse | None:
    """Answer as the fault says, or return None to let the request proceed normally."""
    match fault.kind:
        case "status":
            raise status_error(fault.status, "Injected fault")
        case "reset_before":
            return hang_up(request)
        case "reset_after":
            async with contextlib.aclosing(body_chunks(request)) as chunks:
                async for _chunk in chunks:
                    pass
            return hang_up(request)
        case "cut_body":
            return await _cut_body(request)
        case "bad_chunk":
            return await _bad_chunk(request, closing)
        case "stall":
            await pause(request, math.inf, closing)
            return hang_up(request)
        case "trickle":
            return await _trickle(request, fault.delay, closing)
        case "slow_read":
            return await _slow_read(request, fault.delay, closing)
        case "delay":  # pragma: no branch - the kinds are exhaustive
            return None if await pause(request, fault.delay, closing) else hang_up(request)


async def _slow_read(
    request: web.Request, delay: float, closing: asyncio.Event
) -> web.StreamResponse:
    """Take the body steadily but slowly, then answer."""
    async with contextlib.aclosing(body_chunks(request)) as chunks:
        async for _chunk in chunks:
            if not await pause(request, delay, closing):
                return hang_up(request)
    return answer({})


async def _cut_body(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={hdrs.CONTENT_TYPE: "application/octet-stream"})
    response.content_length = _CUT_DECLARED
    await response.prepare(request)
    if not bodiless(request):  # a HEAD answer has no body to cut: headers, then hang up
        with contextlib.suppress(ConnectionError):
            await response.write(b"x" * _CUT_SENT)
    hang_up(request)
    return response


async def _bad_chunk(request: web.Request, closing: asyncio.Event) -> web.StreamResponse:
    """A chunked answer whose framing breaks after its first chunk; the connection stays open,
    so only a client that checks the framing notices."""
    response = web.StreamResponse(headers={hdrs.CONTENT_TYPE: "application/octet-stream"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    if not bodiless(request):  # a HEAD answer has no body to break: headers, then hang up
        with contextlib.suppress(ConnectionError):
            await response.write(b"x" * _CUT_SENT)
        # Apart from the head, or the client's parser meets the break before its status line
        # is out, and its client answers 502 instead of cutting the answer.
        if await pause(request, _MID_BODY, closing) and request.transport is not None:
            request.transport.write(_BAD_CHUNK)
            await pause(request, math.inf, closing)
    return hang_up(request)


async def _trickle(
    request: web.Request, delay: float, closing: asyncio.Event
) -> web.StreamResponse:
    response = web.StreamResponse(headers={hdrs.CONTENT_TYPE: "application/json"})
    response.content_length = len(_TRICKLE_BODY)
    await response.prepare(request)
    if bodiless(request):
        return response  # a HEAD answer has no body to trickle
    for index in range(len(_TRICKLE_BODY)):
        # Nothing awaits between a pause that saw the client and the write, so a write
        # cannot find the connection closed.
        if not await pause(request, delay, closing):
            hang_up(request)
            break
        await response.write(_TRICKLE_BODY[index : index + 1])
    return response
