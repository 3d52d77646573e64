"""The processes the benchmark starts: servers (the simulator, the proxies), each polled until
ready and stopped with its whole process group; and commands run to their end (the load).

Each leads a process group of its own, so that one signal ends nginx's worker too; output goes
to a file (or a pipe read to the end) so that it can never block.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from ..harness.procfs import tree_cpu_seconds
from ..harness.spawn import spawn
from ..processes import FRESH
from .errors import BenchError

START_TIMEOUT = 20.0  # from spawning a server to its first good answer
STOP_GRACE = 3.0  # after a SIGTERM (the gateway's shutdown, with nothing in flight)
STOP_TIMEOUT = 10.0  # after a SIGKILL


@dataclass
class Server:
    """One running server process; its output goes to a file so it can never block."""

    name: str
    url: str
    process: asyncio.subprocess.Process
    log: Path

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.process.pid)

    def describe(self) -> str:
        output = self.log.read_text(errors="replace")[-4000:]
        return f"{self.name}: exit status {self.process.returncode}\n{output}"


async def stop(process: asyncio.subprocess.Process) -> None:
    """End the process group ``process`` leads (it was started in a session of its own) and
    wait for it: SIGTERM, so that nginx's master reaps its worker, then SIGKILL after
    STOP_GRACE, or at once when the wait is cancelled. Signals go only to a running process:
    once it ended, its id may be another process's."""

    def signal_group(signum: int) -> None:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signum)

    try:
        signal_group(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_GRACE):
                await process.wait()
    finally:
        signal_group(signal.SIGKILL)
    async with asyncio.timeout(STOP_TIMEOUT):
        await process.wait()


@contextlib.asynccontextmanager
async def running(
    name: str,
    command: Sequence[str],
    *,
    url: str,
    ready_url: str,
    workdir: Path,
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[Server]:
    """Start ``command``, wait until ``ready_url`` answers 200, kill it on the way out."""
    log = workdir / f"{name}.log"
    with log.open("wb") as output:
        process = await spawn(command, env, stdout=output, stderr=output, new_session=True)
    server = Server(name, url, process, log)
    try:
        await wait_ready(server, ready_url)
        yield server
    finally:
        await stop(process)


async def wait_ready(server: Server, url: str) -> None:
    """Poll ``url`` until it answers 200; fail early if the process exits."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while True:
            if server.process.returncode is not None:
                raise BenchError(f"exited before it was ready\n{server.describe()}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url, headers=FRESH) as answer:
                    await answer.read()
                    if answer.status == 200:
                        return
            if loop.time() > deadline:
                raise BenchError(f"not ready in {START_TIMEOUT} s\n{server.describe()}")
            await asyncio.sleep(0.05)


async def run_to_end(command: Sequence[str], timeout: float) -> str:  # noqa: ASYNC109
    """Run ``command`` to its end within ``timeout`` seconds; its stdout (BenchError if it
    failed). It is killed on the way out if it is still running."""
    pipe = asyncio.subprocess.PIPE
    process = await spawn(command, stdout=pipe, stderr=pipe, new_session=True)
    try:
        async with asyncio.timeout(timeout):
            out, err = await process.communicate()
    except TimeoutError:
        raise BenchError(f"{command[0]} did not end within {timeout:.0f} s") from None
    finally:
        await stop(process)
    if process.returncode != 0:
        raise BenchError(f"{command[0]} exited with {process.returncode}:\n{err.decode()}")
    return out.decode()
