"""Replayable request bodies: memory up to the threshold, a temporary file beyond, limits kept."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

import pytest

from gateway import body
from gateway.body import ReplayableBody, check_declared_size
from gateway.errors import BodyTooLarge

from .conftest import open_files


async def chunks(total: int, size: int = 65536) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        yield bytes((sent + i) % 251 for i in range(n))
        sent += n


def expected(total: int) -> bytes:
    return bytes(i % 251 for i in range(total))


async def collect(payload: bytes | AsyncIterator[bytes]) -> bytes:
    if isinstance(payload, bytes):
        return payload
    return b"".join([chunk async for chunk in payload])


async def test_a_small_body_stays_in_memory(tmp_path: Path) -> None:
    body = await ReplayableBody.receive(
        chunks(1000), max_size=10_000, memory_limit=4096, spool_dir=tmp_path, idle_timeout=5
    )
    assert not body.spooled
    assert body.size == 1000
    assert await collect(body.payload()) == expected(1000)
    assert open_files(tmp_path) == 0


async def test_a_large_body_is_spooled_and_can_be_sent_several_times(tmp_path: Path) -> None:
    total = 3 * 1024 * 1024 + 17
    body = await ReplayableBody.receive(
        chunks(total), max_size=10 << 20, memory_limit=1 << 20, spool_dir=tmp_path, idle_timeout=5
    )
    assert body.spooled
    assert body.size == total
    assert open_files(tmp_path) == 1
    assert os.listdir(tmp_path) == []  # the spool file has no name: nothing to leak on a crash
    first, second = body.payload(), body.payload()
    assert await collect(second) == expected(total)  # concurrent payloads do not share an offset
    assert await collect(first) == expected(total)
    body.close()
    assert open_files(tmp_path) == 0


async def test_a_body_over_the_limit_is_refused_and_its_spool_released(tmp_path: Path) -> None:
    with pytest.raises(BodyTooLarge) as raised:
        await ReplayableBody.receive(
            chunks(5 << 20),
            max_size=4 << 20,
            memory_limit=1 << 20,
            spool_dir=tmp_path,
            idle_timeout=5,
        )
    assert raised.value.status == 413
    assert open_files(tmp_path) == 0


async def test_a_body_exactly_at_the_limit_is_accepted(tmp_path: Path) -> None:
    body = await ReplayableBody.receive(
        chunks(4096), max_size=4096, memory_limit=1024, spool_dir=tmp_path, idle_timeout=5
    )
    assert body.size == 4096
    body.close()


async def test_a_client_that_hangs_up_mid_body_leaves_no_spool(tmp_path: Path) -> None:
    async def broken() -> AsyncIterator[bytes]:
        async for chunk in chunks(2 << 20):
            yield chunk
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await ReplayableBody.receive(
            broken(), max_size=10 << 20, memory_limit=1 << 20, spool_dir=tmp_path, idle_timeout=5
        )
    assert open_files(tmp_path) == 0


async def test_a_body_cancelled_while_its_spool_file_is_made_closes_that_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that hangs up cancels its request while a worker thread makes the file: the
    file the thread then hands back is closed, not left to the garbage collector."""
    made: list[BinaryIO] = []
    make = body._spool_file

    def slow_spool_file(spool_dir: Path | None) -> BinaryIO:
        time.sleep(0.2)  # a disk that takes its time
        made.append(make(spool_dir))
        return made[-1]

    monkeypatch.setattr(body, "_spool_file", slow_spool_file)
    task = asyncio.ensure_future(
        ReplayableBody.receive(
            chunks(1 << 20), max_size=10 << 20, memory_limit=1, spool_dir=tmp_path, idle_timeout=5
        )
    )
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(made) == 1
    assert made[0].closed
    assert open_files(tmp_path) == 0


def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    check_declared_size(None, 10)
    check_declared_size(10, 10)
    with pytest.raises(BodyTooLarge):
        check_declared_size(11, 10)
