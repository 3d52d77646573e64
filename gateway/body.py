"""Request bodies that can be sent twice: held in memory up to a threshold, spooled to disk beyond.

The gateway receives a request body completely before it contacts the Webapp (as nginx does with
``proxy_request_buffering on``). That is what makes the 401 replay possible for a 24 MiB upload, it
keeps slow clients from holding Webapp connections, and it means a client that hangs up mid-upload
never leaves a half-sent request at the Webapp. Memory stays bounded by ``memory_limit``: anything
larger goes to an anonymous temporary file (unlinked at creation, so it disappears with its
descriptor even if the process dies) through worker threads, never blocking the event loop.
"""

from __future__ import annotations

import asyncio
import errno
import os
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO, TypeVar

from .deadlines import extend
from .errors import BadFraming, BodyTooLarge, RequestTimeout, SpoolFailed
from .headers import only_chunked
from .threads import on_disk

T = TypeVar("T")

# Disk I/O goes through a worker thread; batching keeps the thread hops few.
_IO_CHUNK = 256 * 1024


class ReplayableBody:
    """A request body read once from the client and sendable any number of times."""

    def __init__(self, data: bytes, file: BinaryIO | None, size: int) -> None:
        self._data = data
        self._file = file
        self.size = size

    @property
    def spooled(self) -> bool:
        """Whether the body went to a temporary file."""
        return self._file is not None

    @classmethod
    async def receive(
        cls,
        chunks: AsyncIterable[bytes],
        *,
        max_size: int,
        memory_limit: int,
        spool_dir: Path | None,
        idle_timeout: float,
        min_rate: float = 0.0,
    ) -> ReplayableBody:
        """Read the whole body from ``chunks``: :class:`BodyTooLarge` beyond ``max_size``,
        :class:`RequestTimeout` when no chunk came for ``idle_timeout`` seconds, or when the
        body falls behind ``min_rate`` bytes per second (0: no rate is asked for).

        The rate is a bucket of time: the body starts with ``idle_timeout`` seconds, each byte
        adds ``1 / min_rate`` s, and no more than ``idle_timeout`` s can be saved up ahead. So a
        client that trickles a byte now and then, each in time, cannot hold its admission slot
        for as long as its body is long, not even after sending fast for a while (Apache's
        ``MinRate``, with a bounded credit).
        """
        loop = asyncio.get_running_loop()
        held: list[bytes] = []
        held_size = size = 0
        file: BinaryIO | None = None
        per_byte = 1 / min_rate if min_rate else 0.0
        rate_due = loop.time() + idle_timeout  # when the bytes so far have used up their time
        too_slow = False  # whether the deadline is the rate's rather than the pause's
        try:
            async with asyncio.timeout_at(rate_due) as deadline:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > max_size:
                        raise BodyTooLarge(_too_large(max_size))
                    held.append(chunk)
                    held_size += len(chunk)
                    if file is None and size > memory_limit:
                        file = await _on_disk(_spool_file, spool_dir, undo=_close)
                    if file is not None and held_size >= _IO_CHUNK:
                        await _on_disk(file.writelines, held)
                        held, held_size = [], 0
                    idle_due = loop.time() + idle_timeout
                    rate_due = (
                        min(rate_due + len(chunk) * per_byte, idle_due) if per_byte else idle_due
                    )
                    too_slow = rate_due < idle_due
                    extend(deadline, rate_due, idle_timeout)
            if file is not None:
                await _on_disk(_finish, file, held)
                return cls(b"", file, size)
        except TimeoutError:
            if file is not None:
                file.close()
            if too_slow:
                raise RequestTimeout(
                    f"The request body arrived slower than {min_rate:g} bytes/s.",
                    kind="client_body_too_slow",
                ) from None
            raise RequestTimeout(
                f"The request body stalled: nothing arrived for {idle_timeout} s.",
                kind="client_body_timeout",
            ) from None
        except BaseException:
            if file is not None:
                file.close()
            raise
        return cls(b"".join(held), None, size)

    def payload(self) -> bytes | AsyncIterator[bytes]:
        """A fresh payload for one send; any number of them may be taken, even concurrently."""
        if self._file is None:
            return self._data
        return _read_file(self._file.fileno(), self.size)

    def close(self) -> None:
        """Release the temporary file, if any."""
        if self._file is not None:
            self._file.close()
            self._file = None


def check_framing(version: tuple[int, int], transfer_encoding: list[str]) -> None:
    """Refuse a body framing the gateway would have to guess at: ``Transfer-Encoding`` other than
    exactly ``chunked`` (empty, or naming a coding the gateway would not undo), or in HTTP/1.0.

    aiohttp's parser has refused the other ambiguities already (``Content-Length`` with a
    non-empty ``Transfer-Encoding``, ``chunked`` not last, duplicate or invalid lengths).
    """
    if not transfer_encoding:
        return
    if not only_chunked(transfer_encoding) or version < (1, 1):
        raise BadFraming("Transfer-Encoding must be exactly 'chunked', and only in HTTP/1.1.")


def check_declared_size(content_length: int | None, max_size: int) -> None:
    """Refuse a body up front when its declared length is already too large."""
    if content_length is not None and content_length > max_size:
        raise BodyTooLarge(_too_large(max_size))


def _too_large(max_size: int) -> str:
    return f"The request body is larger than the gateway's limit of {max_size} bytes."


async def _on_disk(
    function: Callable[..., T], *args: object, undo: Callable[[T], None] | None = None
) -> T:
    """Run a spool-file operation in a worker thread, to its end even when the client hangs up
    meanwhile (so the file is never closed under a write, nor left unclosed when it was being
    made); a full or broken disk is the gateway's trouble, named (errno) and answered with
    503, not a crash."""
    try:
        return await on_disk(function, *args, undo=undo)
    except OSError as exc:
        reason = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
        raise SpoolFailed(
            f"The gateway could not store the request body ({reason}); see GATEWAY_SPOOL_DIR.",
            kind="spool_failed",
        ) from None


def _spool_file(spool_dir: Path | None) -> BinaryIO:
    return tempfile.TemporaryFile(dir=spool_dir, prefix="wa-gateway-body-")


def _close(file: BinaryIO) -> None:
    file.close()


def _finish(file: BinaryIO, held: list[bytes]) -> None:
    file.writelines(held)
    file.flush()


async def _read_file(fd: int, size: int) -> AsyncIterator[bytes]:
    # pread keeps no shared offset, so an abandoned first send cannot disturb the replay.
    offset = 0
    while offset < size:
        chunk = await asyncio.to_thread(os.pread, fd, min(_IO_CHUNK, size - offset), offset)
        if not chunk:
            raise OSError(f"spooled request body ended after {offset} of {size} bytes")
        offset += len(chunk)
        yield chunk
