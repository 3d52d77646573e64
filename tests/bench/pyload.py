"""The Python load generator (``python -m tests.bench load SPEC``, where wrk is not used):
``connections`` aiohttp clients sending one shape back to back, their latencies and failures
counted."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict

import aiohttp

from ..harness.workers import repeat
from .load import LOAD_SLACK
from .shapes import LoadResult, Shape


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """The value below which ``fraction`` of the sorted ``ordered`` lies (0.0 when empty)."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def python_load(
    url: str,
    shape: Shape,
    headers: Mapping[str, str],
    seconds: float,
    connections: int,
) -> LoadResult:
    """``connections`` clients sending ``shape`` back to back for ``seconds``."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    failures: Counter[str] = Counter()
    all_headers = shape.headers(headers)
    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=LOAD_SLACK)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False
    ) as session:

        async def request() -> None:
            started = loop.time()
            try:
                async with session.request(
                    shape.method, url, data=shape.body, headers=all_headers
                ) as answer:
                    size = 0
                    while chunk := await answer.content.readany():
                        size += len(chunk)
            except (aiohttp.ClientError, TimeoutError):
                failures["errors"] += 1
                return
            latencies.append(loop.time() - started)
            if not 200 <= answer.status < 300:
                failures["non_2xx"] += 1
            elif shape.expect_bytes is not None and size != shape.expect_bytes:
                failures["errors"] += 1

        started = loop.time()
        await repeat(connections, started + seconds, request)
        elapsed = loop.time() - started
    latencies.sort()
    return LoadResult(
        requests=len(latencies),
        seconds=elapsed,
        non_2xx=failures["non_2xx"],
        errors=failures["errors"],
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
    )


def load_main(spec_text: str) -> None:
    """``python -m tests.bench load SPEC``: run the Python generator, print its result as JSON."""
    spec = json.loads(spec_text)
    shape_fields = spec["shape"]
    body = shape_fields.pop("body")
    shape = Shape(**shape_fields, body=None if body is None else body.encode())
    result = asyncio.run(
        python_load(spec["url"], shape, spec["headers"], spec["seconds"], spec["connections"])
    )
    print(json.dumps(asdict(result)))
