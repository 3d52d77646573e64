"""The bodies the soak's clients send and check: synthetic media in sizes around the gateway's
1 MiB in-memory limit, trickled by slow senders, and digested as downloads arrive."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import aiohttp

from gateway.simulator import synthetic_media_bytes

from ..harness.text import MiB

# Below, around and above the gateway's 1 MiB in-memory limit (above it: a spool file).
UPLOAD_SIZES = (64 * 1024, 900 * 1024, 3 * MiB // 2, 3 * MiB, 4 * MiB)
DOWNLOAD_SIZES = (256 * 1024, 2 * MiB)
SLOW_SIZE = 3 * MiB // 2  # slow senders spool to disk too
SLOW_CHUNK = 64 * 1024
FAST_CHUNK = 256 * 1024
SLOW_PAUSE = 0.02  # seconds between a slow client's pieces: about half a second per transfer


class Corrupt(Exception):
    """A body that arrived other than it was sent."""


async def digest(response: aiohttp.ClientResponse, *, slow: bool) -> tuple[int, str]:
    """The answer's body size and sha256, read fast or as a slow reader does."""
    sha256, size = hashlib.sha256(), 0
    while chunk := await response.content.read(SLOW_CHUNK if slow else FAST_CHUNK):
        sha256.update(chunk)
        size += len(chunk)
        if slow:
            await asyncio.sleep(SLOW_PAUSE)
    return size, sha256.hexdigest()


async def trickle(size: int) -> AsyncIterator[bytes]:
    """A slow sender: synthetic media in small pieces, with pauses."""
    data = b"".join(synthetic_media_bytes(size))
    for offset in range(0, size, SLOW_CHUNK):
        await asyncio.sleep(SLOW_PAUSE)
        yield data[offset : offset + SLOW_CHUNK]
