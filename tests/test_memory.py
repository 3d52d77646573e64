"""Memory-bounded streaming, measured: the peak RSS of a gateway process while large bodies pass.

Each test starts its own gateway subprocess, warms it up with small transfers of the same kind,
reads its resident set size from ``/proc/<pid>/status`` (the baseline), then moves a large body
through it and reads the peak (``VmHWM``). The assertion is a bound on peak minus baseline that
holds for streaming and fails for any body read whole (64 MiB and more). Run with ``pytest -s``
to see the numbers; they are also in each test's captured output and its ``record_property``.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from pytest_aiohttp import AiohttpServer

from gateway.simulator import Simulator, synthetic_media_bytes, synthetic_media_sha256

from .processes import GatewayProcess, Memory, serve_gateway, start_simulator

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc"),
]

MiB = 1 << 20
UPLOAD = 64 * MiB
DOWNLOAD = 256 * MiB
SLOW_DOWNLOAD = 64 * MiB
WARM_UP = 2 * MiB  # above the 1 MiB in-memory limit, so the spooling path is warm too
# Peak RSS growth allowed over the warmed-up baseline. Streaming stays far below it; reading a
# 64 MiB body whole (or letting a 64 MiB answer pile up behind a slow reader) cannot.
GROWTH_BOUND = 48 * MiB
CHUNK = 256 * 1024
SLOW_READ = 64 * 1024  # what the slow client takes per step
SLOW_STEPS = 40
SLOW_PAUSE = 0.05  # seconds between the slow client's reads
TRANSFER_TIMEOUT = 60.0

Record = Callable[[str, object], None]


@pytest.fixture
async def sim_url(aiohttp_server: AiohttpServer) -> tuple[Simulator, str]:
    return await start_simulator(aiohttp_server)


@pytest.fixture
async def gateway(sim_url: tuple[Simulator, str], tmp_path: Path) -> AsyncIterator[GatewayProcess]:
    async with serve_gateway(sim_url[1], tmp_path, GATEWAY_SPOOL_DIR=str(tmp_path)) as process:
        yield process


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=TRANSFER_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as client:
        yield client


async def upload(session: aiohttp.ClientSession, url: str, size: int) -> str:
    """POST ``size`` bytes of synthetic media, streamed from a generator; return the media id."""

    async def body() -> AsyncIterator[bytes]:
        for chunk in _batched(synthetic_media_bytes(size)):
            yield chunk

    headers = {"Content-Type": "application/octet-stream"}
    async with session.post(url + "/v1/media", data=body(), headers=headers) as response:
        assert response.status == 201, await response.text()
        document = await response.json()
    media_id: str = document["media"][0]["id"]
    return media_id


def _batched(chunks: Iterator[bytes]) -> Iterator[bytes]:
    # The synthetic chunks are 32 KiB; a client sends bigger ones.
    batch: list[bytes] = []
    held = 0
    for chunk in chunks:
        batch.append(chunk)
        held += len(chunk)
        if held >= CHUNK:
            yield b"".join(batch)
            batch, held = [], 0
    if batch:
        yield b"".join(batch)


async def download(session: aiohttp.ClientSession, url: str, media_id: str) -> tuple[int, str]:
    """GET a media object in chunks; return its size and sha256."""
    digest = hashlib.sha256()
    size = 0
    async with session.get(f"{url}/v1/media/{media_id}") as response:
        assert response.status == 200
        async for chunk in response.content.iter_chunked(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


async def warm_up(session: aiohttp.ClientSession, sim: Simulator, url: str) -> None:
    """One small transfer each way, so the baseline includes what any first transfer allocates."""
    await upload(session, url, WARM_UP)
    assert await download(session, url, sim.add_media(WARM_UP)) == (
        WARM_UP,
        synthetic_media_sha256(WARM_UP),
    )


def report(record: Record, case: str, start: Memory, baseline: Memory, end: Memory) -> int:
    """Print and record the numbers; return the peak growth over the baseline RSS."""
    growth = end.peak - baseline.rss
    line = (
        f"memory {case}: RSS at start {start.rss / MiB:.1f} MiB, baseline (warmed up) "
        f"{baseline.rss / MiB:.1f} MiB, peak {end.peak / MiB:.1f} MiB, "
        f"growth {growth / MiB:.1f} MiB (bound {GROWTH_BOUND / MiB:.0f} MiB)"
    )
    print(line)
    record(f"{case}_baseline_rss_bytes", baseline.rss)
    record(f"{case}_peak_rss_bytes", end.peak)
    record(f"{case}_growth_bytes", growth)
    return growth


async def test_64_mib_upload_keeps_gateway_memory_bounded(
    gateway: GatewayProcess,
    sim_url: tuple[Simulator, str],
    session: aiohttp.ClientSession,
    record_property: Record,
) -> None:
    """A 64 MiB upload streamed by the client reaches the Webapp intact (sha256) while the
    gateway's peak RSS grows by less than the bound."""
    sim, _ = sim_url
    start = gateway.memory()
    await warm_up(session, sim, gateway.url)
    baseline = gateway.memory()
    media_id = await upload(session, gateway.url, UPLOAD)
    end = gateway.memory()
    assert sim.media_digest(media_id) == (UPLOAD, synthetic_media_sha256(UPLOAD))
    growth = report(record_property, "upload_64MiB", start, baseline, end)
    assert growth < GROWTH_BOUND


async def test_256_mib_download_keeps_gateway_memory_bounded(
    gateway: GatewayProcess,
    sim_url: tuple[Simulator, str],
    session: aiohttp.ClientSession,
    record_property: Record,
) -> None:
    """A 256 MiB download read in chunks arrives intact (sha256) while the gateway's peak RSS
    grows by less than the bound."""
    sim, _ = sim_url
    start = gateway.memory()
    await warm_up(session, sim, gateway.url)
    baseline = gateway.memory()
    media_id = sim.add_media(DOWNLOAD)
    size, sha256 = await download(session, gateway.url, media_id)
    end = gateway.memory()
    assert (size, sha256) == sim.media_digest(media_id)
    growth = report(record_property, "download_256MiB", start, baseline, end)
    assert growth < GROWTH_BOUND


async def test_slow_reader_holds_back_the_download(
    gateway: GatewayProcess,
    sim_url: tuple[Simulator, str],
    session: aiohttp.ClientSession,
    record_property: Record,
) -> None:
    """A client that reads a 64 MiB download 64 KiB at a time with pauses gets backpressure: the
    gateway's RSS stays bounded while it reads slowly (the Webapp could send it all at once),
    and the whole object still arrives intact."""
    sim, _ = sim_url
    start = gateway.memory()
    await warm_up(session, sim, gateway.url)
    baseline = gateway.memory()
    media_id = sim.add_media(SLOW_DOWNLOAD)
    digest = hashlib.sha256()
    size = 0
    highest_rss = baseline.rss
    async with session.get(f"{gateway.url}/v1/media/{media_id}") as response:
        assert response.status == 200
        for _ in range(SLOW_STEPS):
            chunk = await response.content.read(SLOW_READ)
            digest.update(chunk)
            size += len(chunk)
            await asyncio.sleep(SLOW_PAUSE)
            highest_rss = max(highest_rss, gateway.memory().rss)
        assert size < SLOW_DOWNLOAD // 4  # most of it was still to come while reading slowly
        while chunk := await response.content.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    end = gateway.memory()
    assert (size, digest.hexdigest()) == sim.media_digest(media_id)
    print(f"memory slow_reader_64MiB: highest RSS while reading slowly {highest_rss / MiB:.1f} MiB")
    record_property("slow_reader_64MiB_highest_rss_bytes", highest_rss)
    growth = report(record_property, "slow_reader_64MiB", start, baseline, end)
    assert highest_rss - baseline.rss < GROWTH_BOUND
    assert growth < GROWTH_BOUND


async def test_the_measurement_sees_a_body_held_whole(
    sim_url: tuple[Simulator, str],
    tmp_path: Path,
    session: aiohttp.ClientSession,
    record_property: Record,
) -> None:
    """The control: told to keep bodies up to 100 MiB in memory, the same gateway exceeds the
    bound on the 64 MiB upload, so the bound above is one that a whole-body read would fail."""
    sim, webapp_url = sim_url
    async with serve_gateway(webapp_url, tmp_path, GATEWAY_BODY_MEMORY="100MiB") as gateway:
        start = gateway.memory()
        await warm_up(session, sim, gateway.url)
        baseline = gateway.memory()
        media_id = await upload(session, gateway.url, UPLOAD)
        end = gateway.memory()
    assert sim.media_digest(media_id) == (UPLOAD, synthetic_media_sha256(UPLOAD))
    growth = report(record_property, "upload_64MiB_held_in_memory", start, baseline, end)
    assert growth > GROWTH_BOUND
