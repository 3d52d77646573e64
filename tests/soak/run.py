"""One soak, start to end: the rig up and settled, a warm-up, then traffic and chaos side by
side while memory is sampled, then the readings once everything is idle again and the gateway's
shutdown on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
from collections.abc import Callable
from pathlib import Path

import aiohttp

from gateway.simulator import Simulator

from ..conftest import API_KEY, PASSWORD
from ..harness.text import mib
from .chaos import TOKEN_LIFETIME, chaos
from .ledger import WebappAnswers
from .observe import CLIENT_TIMEOUT, Observer, log_problems
from .report import SoakReport
from .rig import soak_rig
from .rotation import EXIT_TIMEOUT, Operator
from .traffic import Traffic

DEFAULT_SECONDS = 600.0
MAX_SECONDS = 3600.0
DEFAULT_CONCURRENCY = 24
SAMPLE_EVERY = 0.5  # seconds between RSS samples
PROGRESS_EVERY = 30.0
DRIVE_SLACK = 300.0  # seconds the last transfers may take beyond the traffic's end


async def drive(
    traffic: Traffic,
    observer: Observer,
    operator: Operator,
    report: SoakReport,
    progress: Callable[[str], None] | None,
) -> None:
    """Warm up, then traffic and chaos for ``report.seconds``, sampling memory as it goes."""
    loop = asyncio.get_running_loop()
    gateway, sim = observer.gateway, traffic.sim
    started = loop.time()
    until = started + report.seconds
    warm_until = started + min(max(5.0, report.seconds / 10), 60.0)

    async def sample() -> None:
        next_progress = started + PROGRESS_EVERY
        while loop.time() < until:
            await asyncio.sleep(SAMPLE_EVERY)
            report.rss_samples.append(gateway.memory().rss)
            sim.seen.clear()  # the simulator's record of every request is not needed here
            if progress is not None and loop.time() >= next_progress:
                next_progress += PROGRESS_EVERY
                progress(
                    f"{loop.time() - started:6.0f} s  served {traffic.ledger.served:,}  "
                    f"unexplained {traffic.ledger.unexplained}  RSS "
                    f"{mib(report.rss_samples[-1])}  fds {observer.descriptors().total}"
                )

    logins_before, changes_before = sim.logins, sim.password_changes
    async with asyncio.TaskGroup() as group:
        chaos_rng = random.Random(report.seed + 1)
        chaos_done = group.create_task(chaos(operator, chaos_rng, started, until))
        group.create_task(sample())
        async with asyncio.timeout(report.seconds + DRIVE_SLACK):
            await traffic.warm_up()
            await traffic.run(report.concurrency, warm_until)
            report.rss_warm = gateway.memory().rss
            await traffic.run(report.concurrency, until)
    report.elapsed = loop.time() - started
    # Each password change is a login of rotate-password's, which the Webapp counts with the
    # gateway's: the gateway itself never changes the password here (no schedule, and no
    # "password change required").
    rotations = sim.password_changes - changes_before
    report.logins = sim.logins - logins_before - rotations
    report.chaos = chaos_done.result()


async def run_soak(
    seconds: float,
    workdir: Path,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    seed: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> SoakReport:
    """Soak a gateway process for ``seconds`` of traffic; what it measured."""
    if not 0 < seconds <= MAX_SECONDS:
        raise ValueError(f"seconds must be more than 0 and at most {MAX_SECONDS:.0f}")
    report = SoakReport(seconds, concurrency, random.randrange(2**32) if seed is None else seed)
    sim = Simulator(
        password=PASSWORD,
        password_change_required=False,
        api_key=API_KEY,
        token_lifetime=TOKEN_LIFETIME,
    )
    answers = WebappAnswers()
    async with soak_rig(workdir, sim, answers) as (observer, operator):
        gateway = observer.gateway
        report.start = await observer.settle()
        report.rss_start = gateway.memory().rss
        connector = aiohttp.TCPConnector(limit=2 * concurrency)
        async with aiohttp.ClientSession(connector=connector, timeout=CLIENT_TIMEOUT) as session:
            traffic = Traffic(session, sim, answers, report.seed)
            traffic.url = gateway.url
            await drive(traffic, observer, operator, report, progress)
        report.ledger = traffic.ledger
        report.end = await observer.settle(report.start)
        report.spool_entries = len(list(observer.spool.iterdir()))
        memory = gateway.memory()
        report.rss_end, report.rss_peak = memory.rss, memory.peak
        gateway.send_signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            report.exit_status = await gateway.wait(EXIT_TIMEOUT)
        report.log_problems = log_problems(gateway)
        report.password_changes = sim.password_changes
        report.password_file_current = operator.file_is_current()
        report.password_next_left = operator.next_left()
    return report
