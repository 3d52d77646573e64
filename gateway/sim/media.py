"""Media: synthetic objects generated on download, uploads stored as files, their endpoints.

Synthetic media repeat a pseudo-random block of prime length, so that a chunk lost, repeated or
shifted anywhere in a download changes the digest. Uploads go to the ``media_dir`` the simulator
was given, or to a temporary directory that ``close()`` removes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from io import BufferedWriter
from pathlib import Path

from aiohttp import hdrs, web

from .answers import ApiError, answer, not_found
from .connection import bodiless
from .exchange import body_chunks

_PERIOD = 65_521
_PATTERN = hashlib.shake_256(b"wa-gateway synthetic media").digest(_PERIOD) * 2
_SYNTHETIC_CHUNK = 32 * 1024


def synthetic_media_bytes(size: int) -> Iterator[bytes]:
    """Yield the exact content of a synthetic media object of ``size`` bytes, in chunks."""
    position = 0
    while position < size:
        length = min(_SYNTHETIC_CHUNK, size - position)
        offset = position % _PERIOD
        yield _PATTERN[offset : offset + length]
        position += length


def synthetic_media_sha256(size: int) -> str:
    """Return the sha256 hex digest of ``synthetic_media_bytes(size)``."""
    digest = hashlib.sha256()
    for chunk in synthetic_media_bytes(size):
        digest.update(chunk)
    return digest.hexdigest()


@dataclass
class _Media:
    content_type: str
    size: int
    path: Path | None  # None: synthetic, generated on download
    sha256: str | None = None  # computed lazily for synthetic media


def _open_for_write(path: Path) -> BufferedWriter:
    return path.open("xb")


class MediaStore:
    """The media registry and the ``/v1/media`` endpoints; uploads up to ``max_size`` bytes."""

    def __init__(self, directory: Path | None, max_size: int) -> None:
        self.directory = directory  # None: a temporary directory, made on the first upload
        self.max_size = max_size
        self._temp_dir: Path | None = None
        self._media: dict[str, _Media] = {}

    @property
    def count(self) -> int:
        """How many media objects are stored."""
        return len(self._media)

    def add_synthetic(self, size: int, content_type: str) -> str:
        """Register a synthetic media object and return its id."""
        media_id = str(uuid.uuid4())
        self._media[media_id] = _Media(content_type, size, None)
        return media_id

    def digest(self, media_id: str) -> tuple[int, str]:
        """Return (size, sha256 hex) of a stored media object; KeyError if there is none."""
        media = self._media[media_id]
        if media.sha256 is None:
            media.sha256 = synthetic_media_sha256(media.size)
        return media.size, media.sha256

    def close(self) -> None:
        """Remove the temporary directory, if there is one, and forget the files in it."""
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None
            self._media = {k: m for k, m in self._media.items() if m.path is None}

    def _root(self) -> Path:
        if self.directory is not None:
            return self.directory
        if self._temp_dir is None:
            self._temp_dir = Path(tempfile.mkdtemp(prefix="wa-sim-media-"))
        return self._temp_dir

    async def upload(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/media``: store the body as a file."""
        content_type = request.headers.get(hdrs.CONTENT_TYPE, "application/octet-stream")
        media_id = str(uuid.uuid4())
        path = self._root() / media_id
        digest = hashlib.sha256()
        size = 0
        stored = False
        file = await asyncio.to_thread(_open_for_write, path)
        try:
            async with contextlib.aclosing(body_chunks(request)) as chunks:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_size:
                        raise ApiError(
                            413,
                            1009,
                            "Parameter value is not valid",
                            f"Media larger than {self.max_size} bytes",
                        )
                    digest.update(chunk)
                    await asyncio.to_thread(file.write, chunk)
            stored = True
        finally:
            await asyncio.to_thread(file.close)
            if not stored:
                await asyncio.to_thread(path.unlink, missing_ok=True)
        self._media[media_id] = _Media(content_type, size, path, digest.hexdigest())
        return answer({"media": [{"id": media_id}]}, status=201)

    async def download(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/media/{id}``: a stored file, or synthetic content generated as it goes."""
        media = self._media.get(request.match_info["id"])
        if media is None:
            # The real Webapp answers an unknown id with an empty body, not an errors body.
            return web.Response(status=404)
        if media.path is not None:
            return web.FileResponse(media.path, headers={hdrs.CONTENT_TYPE: media.content_type})
        response = web.StreamResponse(headers={hdrs.CONTENT_TYPE: media.content_type})
        response.content_length = media.size
        await response.prepare(request)
        if bodiless(request):
            return response
        try:
            for chunk in synthetic_media_bytes(media.size):
                await response.write(chunk)
        except ConnectionError:
            pass  # the client hung up mid-download
        return response

    async def delete(self, request: web.Request) -> web.StreamResponse:
        """``DELETE /v1/media/{id}``."""
        media = self._media.pop(request.match_info["id"], None)
        if media is None:
            raise not_found("No such media")
        if media.path is not None:
            await asyncio.to_thread(media.path.unlink, missing_ok=True)
        return answer({})
