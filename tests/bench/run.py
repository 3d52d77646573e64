"""One benchmark: the simulator and the targets started, each target checked, then every
target loaded with every shape in turn, each run measured (the load generator's numbers, the
simulator's count of its answers, the CPU each side spent)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import aiohttp

from .errors import BenchError
from .load import LOAD_SLACK, Run, drive
from .options import LoadGen, Options
from .report import Report, Row
from .shapes import MEDIA_SIZE, shapes
from .targets import Target, check_target, start_targets
from .webapp import Webapp, start_webapp, two_xx


async def measure(webapp: Webapp, target: Target, run: Run, options: Options) -> Row:
    """A warm-up, then one measured run: the load generator's numbers, the simulator's count
    of 2xx answers, and the CPU the proxy and the simulator spent meanwhile."""
    if options.warmup:
        await drive(run, options.warmup)
    before = await webapp.settled()
    cpu_before = (target.cpu_seconds(), webapp.server.cpu_seconds())
    load = await drive(run, options.seconds)
    cpu_after = (target.cpu_seconds(), webapp.server.cpu_seconds())
    after = await webapp.settled()
    proxy_cpu = None
    if cpu_after[0] is not None and cpu_before[0] is not None:
        proxy_cpu = cpu_after[0] - cpu_before[0]
    return Row(
        target=target.name,
        shape=run.shape.name,
        load=load,
        received=two_xx(after, run.shape.name) - two_xx(before, run.shape.name),
        connections=run.connections,
        proxy_cpu=proxy_cpu,
        webapp_cpu=cpu_after[1] - cpu_before[1],
    )


def resolve_loadgen(choice: LoadGen) -> Literal["wrk", "python"]:
    if choice == "python":
        return "python"
    if shutil.which("wrk") is not None:
        return "wrk"
    if choice == "wrk":
        raise BenchError("wrk is not on PATH")
    return "python"


async def run_bench(options: Options, *, say: bool = False) -> Report:
    """Start the simulator and the targets, load each with each shape, and report.

    ``say`` prints progress, one line per step, as ``make bench`` shows it.
    """
    loadgen = resolve_loadgen(options.loadgen)
    report = Report(options, loadgen)
    workdir = Path(tempfile.mkdtemp(prefix="wa-bench-"))
    try:
        async with contextlib.AsyncExitStack() as stack:
            session = await stack.enter_async_context(
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=LOAD_SLACK))
            )
            webapp = await start_webapp(stack, session, workdir)
            token = await webapp.login()
            media = os.urandom(MEDIA_SIZE)
            media_id = await webapp.upload(token, media)
            both = shapes(media_id)
            targets, report.skipped = await start_targets(stack, webapp, token, options, workdir)
            for skipped in report.skipped:
                inform(say, f"skipped: {skipped}")
            digest = hashlib.sha256(media).hexdigest()
            for target in targets:
                await check_target(session, target, both, digest)
            for shape in both:
                for target in targets:
                    inform(say, f"{target.name} {shape.name}: {options.seconds} s")
                    url = target.url + shape.path
                    run = Run(loadgen, url, shape, target.headers, options.connections, workdir)
                    report.rows.append(await measure(webapp, target, run, options))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return report


def inform(say: bool, text: str) -> None:
    if say:
        print(text, flush=True)
