"""A log whose reader falls behind costs log lines, never requests: the LineSink."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
import threading
from typing import Any

import aiohttp
from pytest_aiohttp import AiohttpServer

from gateway.sink import CAPACITY, LineSink

from .conftest import Scrape
from .processes import REPO, child_env, free_port, gateway_env, start_simulator

# Well past what waits: a pipe's 64 KiB buffer, then the sink's capacity (an access line is some
# 300 bytes, one a request).
REQUESTS = CAPACITY // 300 + 2000
CONCURRENCY = 32


def test_lines_wait_in_order_beyond_a_blocked_reader_and_the_excess_is_counted() -> None:
    read_end, write_end = os.pipe()
    reader, writer = os.fdopen(read_end, "r"), os.fdopen(write_end, "w")
    sink = LineSink(writer, capacity=4000)  # bytes: some 100 lines
    done = threading.Event()

    def log_a_lot() -> None:
        for number in range(5000):  # 5000 * 40 bytes: the pipe is full long before the end
            sink.write(json.dumps({"event": "line", "n": number, "pad": "x" * 10}) + "\n")
        done.set()

    threading.Thread(target=log_a_lot).start()
    assert done.wait(5)  # no write blocked, though nobody reads
    dropped_while_blocked = sink.dropped
    assert dropped_while_blocked > 0
    lines: list[dict[str, Any]] = []
    reading = threading.Thread(target=lambda: lines.extend(json.loads(line) for line in reader))
    reading.start()  # somebody reads at last
    sink.close(wait=5)  # everything that waited is written
    writer.close()
    reading.join(5)
    reader.close()
    numbers = [line["n"] for line in lines if line["event"] == "line"]
    assert numbers == sorted(numbers)  # in order, only some missing
    assert len(numbers) + dropped_while_blocked == 5000
    notices = [line for line in lines if line["event"] == "log.dropped"]
    assert sum(notice["lines"] for notice in notices) == dropped_while_blocked


def test_lines_written_after_close_go_straight_to_the_stream() -> None:
    stream = io.StringIO()
    sink = LineSink(stream)
    sink.write("before\n")
    sink.close()
    sink.write("after\n")  # another exit handler's late warning, say
    assert stream.getvalue() == "before\nafter\n"
    assert sink.dropped == 0


def test_drain_returns_once_the_lines_are_written() -> None:
    stream = io.StringIO()
    sink = LineSink(stream)
    for number in range(100):
        sink.write(f"{number}\n")
    sink.drain()
    assert stream.getvalue() == "".join(f"{number}\n" for number in range(100))
    sink.close()


async def test_a_gateway_whose_log_nobody_reads_keeps_answering(
    aiohttp_server: AiohttpServer,
) -> None:
    _sim, url = await start_simulator(aiohttp_server)
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "serve",
        env=child_env(gateway_env(url, port)),
        cwd=REPO,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,  # read by nobody until the end
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert process.stdout is not None
    base = f"http://127.0.0.1:{port}"
    try:
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with asyncio.timeout(20):
                while True:
                    try:
                        async with session.get(base + "/_gateway/healthz") as response:
                            if response.status == 200:
                                break
                    except aiohttp.ClientConnectionError:
                        await asyncio.sleep(0.05)
            statuses: list[int] = []

            async def check(count: int) -> None:
                for _ in range(count):  # each would block on the full pipe, were it written here
                    # A refusal's access event is logged at info (a successful probe's at debug).
                    async with session.get(base + "/not-the-api") as response:
                        statuses.append(response.status)

            await asyncio.gather(*(check(REQUESTS // CONCURRENCY) for _ in range(CONCURRENCY)))
            async with session.get(base + "/_gateway/metrics") as response:
                scraped = Scrape(await response.text(), response.content_type)
        assert statuses == [404] * (REQUESTS // CONCURRENCY * CONCURRENCY)
        assert scraped("wa_gateway_log_lines_dropped_total") > 0
        # Once somebody reads, the lines come, and a notice of what was lost.
        async with asyncio.timeout(20):
            while b'"log.dropped"' not in await process.stdout.readline():
                pass
    finally:
        process.kill()
        async with asyncio.timeout(10):
            await process.communicate()  # wait() alone would wait for a pipe nobody drains
