"""``make bench``'s machinery, briefly: both request shapes against the Webapp reached directly
and through the gateway, driven by the Python load generator (the one a machine without wrk or
nginx uses). It asserts counts, never timings."""

from __future__ import annotations

import pytest

from .bench import MESSAGE, Options, Report, Shape, parse_wrk, run_bench, wrk_script


@pytest.mark.slow
async def test_a_short_bench_serves_every_target_and_shape_with_nothing_but_2xx() -> None:
    """Every run is answered, the gateway answers nothing but 2xx, the simulator's own count
    agrees with the load generator's, and the report has a row per target and shape."""
    options = Options(
        seconds=1, connections=4, warmup=0, targets=("direct", "gateway"), loadgen="python"
    )
    report: Report = await run_bench(options)

    assert [(row.target, row.shape) for row in report.rows] == [
        ("direct", "message"),
        ("gateway", "message"),
        ("direct", "media"),
        ("gateway", "media"),
    ]
    for row in report.rows:
        assert row.load.requests > 0, row
        assert row.load.non_2xx == row.load.errors == 0, row
        # The Python generator finishes every request it starts: the counts are equal.
        assert row.received == row.load.requests, row
        assert row.webapp_cpu >= 0, row
        assert (row.proxy_cpu is None) == (row.target == "direct"), row
    assert report.problems() == []
    rendered = report.render()
    for row in report.rows:
        assert f"| {row.target.ljust(7)} | {row.shape.ljust(7)} | {row.load.requests} " in rendered
    assert "| message | direct   |" in rendered  # the gateway's overhead, shape by shape
    assert "| media   | direct   |" in rendered


def test_the_wrk_script_sets_the_request_and_its_result_line_is_read() -> None:
    """wrk itself is not on every machine: its script and its result line are checked here."""
    shape = Shape("message", "POST", "/v1/messages", MESSAGE, "application/json")
    script = wrk_script(shape, {"Authorization": "Bearer t"})

    assert "wrk.method = [==[POST]==]" in script
    assert f"wrk.body = [==[{MESSAGE.decode()}]==]" in script
    # "wrk.headers[[==[" would open a long string: a syntax error that wrk only warns about.
    assert "wrk.headers[ [==[Authorization]==] ] = [==[Bearer t]==]" in script
    line = (
        'BENCH_RESULT {"requests": 200, "duration_us": 2000000, "non_2xx": 1, "errors": 2, '
        '"p50_us": 1500, "p99_us": 9000}'
    )
    result = parse_wrk(f"Running 2s test\n{line}\n")
    assert (result.requests, result.rps, result.non_2xx, result.errors) == (200, 100.0, 1, 2)
    assert (result.p50_ms, result.p99_ms) == (1.5, 9.0)
