"""One measured (or warm-up) run of load: by wrk when it is chosen, otherwise by the Python
generator in a process of its own (``python -m tests.bench load SPEC``)."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from .servers import run_to_end
from .shapes import LoadResult, Shape
from .wrk import WRK_TIMEOUT, parse_wrk, wrk_script

LOAD_SLACK = 30.0  # seconds a load run may take beyond its duration (start-up, last answers)


@dataclass(frozen=True)
class Run:
    """One target under one shape: everything a load generator needs but the duration."""

    loadgen: Literal["wrk", "python"]
    url: str
    shape: Shape
    headers: Mapping[str, str]  # what the client sends itself: the token, for ``direct``
    connections: int
    workdir: Path


async def drive(run: Run, seconds: int) -> LoadResult:
    """``seconds`` of load, by wrk or by the Python generator in its own process."""
    if run.loadgen == "wrk":
        script = run.workdir / "load.lua"
        script.write_text(wrk_script(run.shape, run.headers))
        command = ["wrk", "-t1", f"-c{run.connections}", f"-d{seconds}s"]
        command += [f"--timeout={WRK_TIMEOUT}", "-s", str(script), run.url]
        return parse_wrk(await run_to_end(command, seconds + LOAD_SLACK))
    body = run.shape.body
    spec = {
        "url": run.url,
        "shape": {**asdict(run.shape), "body": None if body is None else body.decode()},
        "headers": dict(run.headers),
        "seconds": seconds,
        "connections": run.connections,
    }
    command = [sys.executable, "-m", "tests.bench", "load", json.dumps(spec)]
    return LoadResult(**json.loads(await run_to_end(command, seconds + LOAD_SLACK)))
