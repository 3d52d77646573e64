"""wrk as the load generator: the Lua script that sets the request and prints the numbers as a
``BENCH_RESULT`` JSON line in its ``done()``, and the reading of that line."""

from __future__ import annotations

import json
from collections.abc import Mapping

from .errors import BenchError
from .shapes import LoadResult, Shape

WRK_TIMEOUT = "10s"  # slower answers count as latency, not as wrk socket timeouts


def lua_string(text: str) -> str:
    """A Lua long-bracket literal: no escapes to get wrong."""
    if "]==]" in text:
        raise ValueError("text not representable as a [==[ ]==] literal")
    return f"[==[{text}]==]"


def wrk_script(shape: Shape, headers: Mapping[str, str]) -> str:
    """The Lua script for one run: the request, and a ``done()`` that prints a JSON line."""
    lines = [f"wrk.method = {lua_string(shape.method)}"]
    if shape.body is not None:
        lines.append(f"wrk.body = {lua_string(shape.body.decode())}")
    for name, value in shape.headers(headers).items():
        # The spaces matter: "[[" would open a long string.
        lines.append(f"wrk.headers[ {lua_string(name)} ] = {lua_string(value)}")
    # errors.status counts answers >= 400; nothing here answers 1xx or 3xx.
    fields = '{"requests": %.0f, "duration_us": %.0f, "non_2xx": %.0f, "errors": %.0f, '
    fields += '"p50_us": %.0f, "p99_us": %.0f}'
    lines += [
        "function done(summary, latency, requests)",
        "  local e = summary.errors",
        f"  io.write(string.format('BENCH_RESULT {fields}\\n',",
        "    summary.requests, summary.duration, e.status,",
        "    e.connect + e.read + e.write + e.timeout,",
        "    latency:percentile(50), latency:percentile(99)))",
        "end",
    ]
    return "\n".join(lines) + "\n"


def parse_wrk(output: str) -> LoadResult:
    """The numbers from the ``BENCH_RESULT`` line the script's ``done()`` printed."""
    for line in output.splitlines():
        if line.startswith("BENCH_RESULT "):
            data = json.loads(line.removeprefix("BENCH_RESULT "))
            return LoadResult(
                requests=int(data["requests"]),
                seconds=data["duration_us"] / 1e6,
                non_2xx=int(data["non_2xx"]),
                errors=int(data["errors"]),
                p50_ms=data["p50_us"] / 1000,
                p99_ms=data["p99_us"] / 1000,
            )
    raise BenchError(f"wrk printed no result:\n{output}")
