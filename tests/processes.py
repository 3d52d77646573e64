"""Running ``python -m gateway`` as a real subprocess: an explicit environment, readiness polled
with a deadline, its output in files, its memory from ``/proc``, and a kill that always happens.

The Webapp simulator stays in the test's own event loop (``aiohttp_server``), so nothing here
blocks that loop: the process is an asyncio subprocess and every wait is an ``await`` with a
deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from pytest_aiohttp import AiohttpServer

from gateway.simulator import Simulator

from .conftest import API_KEY, PASSWORD, TEST_ENV

REPO = Path(__file__).resolve().parent.parent
READY_PATH = "/_gateway/readyz"
START_TIMEOUT = 20.0  # from spawning to a ready gateway, generous for a loaded CI machine
EXIT_TIMEOUT = 10.0  # after a kill
_POLL = 0.05
# What a child inherits besides its settings: enough for Python, temporary files and coverage.
_INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")
# New connections only: a pooled one may be a connection the gateway is closing.
FRESH = {"Connection": "close"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, for a child process to bind.

    It is chosen below the kernel's ephemeral range: a port from that range could be handed to
    an outgoing connection of a test running in parallel before the child binds it.
    """
    low = _ephemeral_floor()
    for _ in range(100):
        port = random.randrange(max(1024, low - 16384), low)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port below {low}")


def _ephemeral_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def child_env(settings: Mapping[str, str]) -> dict[str, str]:
    """The complete environment of a child process: ``settings`` and little else.

    ``COVERAGE_*`` variables pass, so that subprocess coverage works where it is configured.
    """
    inherited = {
        key: value
        for key, value in os.environ.items()
        if key in _INHERITED or key.startswith("COVERAGE_")
    }
    return {**inherited, "PYTHONUNBUFFERED": "1", **settings}


def gateway_env(webapp_url: str, port: int, **overrides: str) -> dict[str, str]:
    """Settings for a gateway on 127.0.0.1:``port`` in front of ``webapp_url``."""
    return {
        **TEST_ENV,
        "WA_WEBAPP_URL": webapp_url,
        "WA_PASSWORD": PASSWORD,
        "WA_API_KEY": API_KEY,
        "GATEWAY_LISTEN": f"127.0.0.1:{port}",
        "GATEWAY_LOG_LEVEL": "info",
        **overrides,
    }


@dataclass(frozen=True)
class Memory:
    """A process's resident set size now and at its peak (``VmHWM``), in bytes."""

    rss: int
    peak: int


@dataclass
class GatewayProcess:
    """One running ``python -m gateway``; its output goes to files so it can never block."""

    process: asyncio.subprocess.Process
    url: str
    stdout_path: Path
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    @property
    def events(self) -> list[dict[str, Any]]:
        """The JSON log events on stdout, in order (other lines, like a banner, are skipped)."""
        events = []
        for line in self.stdout.splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    events.append(json.loads(line))
        return events

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == event]

    def event_names(self) -> list[str]:
        return [str(e.get("event")) for e in self.events]

    async def logged(self, event: str, timeout: float = START_TIMEOUT) -> None:  # noqa: ASYNC109
        """Wait until ``event`` is on stdout: the gateway writes its log from a thread of its
        own, so a line may follow what the process did (such as answering) by a few ms."""
        async with asyncio.timeout(timeout):
            while not self.named(event):
                await asyncio.sleep(_POLL)

    def memory(self) -> Memory:
        """``VmRSS`` and ``VmHWM`` from ``/proc/<pid>/status``."""
        fields: dict[str, int] = {}
        status = Path(f"/proc/{self.pid}/status").read_text()
        for line in status.splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) * 1024  # reported in kB
        return Memory(rss=fields["VmRSS"], peak=fields["VmHWM"])

    def send_signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    async def wait(self, timeout: float) -> int:  # noqa: ASYNC109 - the deadline is the point
        """The exit status, or TimeoutError if the process is still running after ``timeout``."""
        async with asyncio.timeout(timeout):
            return await self.process.wait()

    def describe(self) -> str:
        """Everything the process printed, for assertion messages."""
        status = self.process.returncode
        return f"exit status {status}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


@contextlib.asynccontextmanager
async def running_gateway(
    args: Sequence[str],
    settings: Mapping[str, str],
    url: str,
    workdir: Path,
    *,
    ready_path: str = READY_PATH,
    command: Sequence[str] = (sys.executable, "-m", "gateway"),
    cwd: Path = REPO,
) -> AsyncIterator[GatewayProcess]:
    """Start ``python -m gateway *args`` (or ``command *args``) with exactly ``settings`` (plus
    :func:`child_env`'s basics), wait until ``url + ready_path`` answers 200, and kill the process
    on the way out."""
    stdout_path, stderr_path = workdir / "gateway.stdout", workdir / "gateway.stderr"
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            *command,
            *args,
            env=child_env(settings),
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
        )
    gateway = GatewayProcess(process, url, stdout_path, stderr_path)
    try:
        await wait_ready(gateway, ready_path)
        if settings.get("GATEWAY_LOG_LEVEL", "info") in ("debug", "info"):
            await gateway.logged("gateway.started")  # so the start-up's log is there to read
        yield gateway
    finally:
        if process.returncode is None:
            process.kill()
        async with asyncio.timeout(EXIT_TIMEOUT):
            await process.wait()


async def wait_ready(
    gateway: GatewayProcess,
    path: str = READY_PATH,
    timeout: float = START_TIMEOUT,  # noqa: ASYNC109
) -> None:
    """Poll ``path`` until it answers 200; fail early if the process exits."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    client_timeout = aiohttp.ClientTimeout(total=2)
    async with aiohttp.ClientSession(timeout=client_timeout) as session:
        while True:
            if gateway.process.returncode is not None:
                raise AssertionError(
                    f"the gateway exited before it was ready\n{gateway.describe()}"
                )
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(gateway.url + path, headers=FRESH) as response:
                    await response.read()
                    if response.status == 200:
                        return
            if loop.time() > deadline:
                raise AssertionError(
                    f"the gateway was not ready in {timeout} s\n{gateway.describe()}"
                )
            await asyncio.sleep(_POLL)


async def start_simulator(aiohttp_server: AiohttpServer) -> tuple[Simulator, str]:
    """A simulated Webapp in the test's event loop, taking the test credentials; and its URL."""
    sim = Simulator(password=PASSWORD, password_change_required=False, api_key=API_KEY)
    server = await aiohttp_server(sim.make_app())
    return sim, str(server.make_url("")).rstrip("/")


def serve_gateway(
    webapp_url: str, workdir: Path, **settings: str
) -> contextlib.AbstractAsyncContextManager[GatewayProcess]:
    """``wa-gateway serve`` on a free 127.0.0.1 port in front of ``webapp_url``, ready."""
    port = free_port()
    env = gateway_env(webapp_url, port, **settings)
    return running_gateway(["serve"], env, f"http://127.0.0.1:{port}", workdir)
