"""The benchmark: the gateway against the Webapp reached directly, a bare aiohttp proxy and nginx.

``python -m tests.bench`` (``make bench``) prints a table and exits 0 when every check holds, 1
otherwise; ``tests/test_bench.py`` runs a few seconds of it in ``make test``.

- Every server is a process of its own, so that none shares an event loop (or a GIL) with
  another or with the load: the Webapp simulator (``python -m tests.bench simulator``, plus a
  control port that counts its answers), the bare aiohttp proxy (``... proxy``), nginx (when
  it is on PATH) and the gateway (``python -m gateway serve``, log level warning).
- Four targets take the same load in turn. ``direct``: the simulator, the client sending the
  bearer token itself. ``aiohttp``: one ClientSession, one login at start, a fixed
  ``Authorization``, no policy, logging or metrics: the floor any aiohttp proxy pays. ``nginx``:
  one worker process (like the single event loop of the others), keep-alive upstream.
  ``gateway``.
- Two request shapes: ``message``, ``POST /v1/messages`` with a small JSON body (the everyday
  call), and ``media``, ``GET /v1/media/{id}`` of a 1 MiB object uploaded at start (streaming
  throughput: its requests/s are MiB/s).
- Load: ``wrk`` when on PATH (one thread, a Lua script whose ``done()`` prints the numbers as
  JSON), otherwise an aiohttp load generator in its own process (``... load``), the one the
  test uses. A one-second warm-up precedes every measured run.
- Cost: CPU seconds (utime + stime of the server's process tree, from ``/proc``) per 1000
  requests; on a small shared machine that is steadier than requests/s.
- Checks: the gateway answers nothing but 2xx and has no socket errors; for every target the
  simulator's own count of its 2xx answers agrees with the load generator (at least the 2xx it
  saw, at most what it completed plus one request in flight per connection); one download
  through every target matches the upload's sha256 before the load starts.

Every process is killed in a ``finally`` (its whole process group: nginx has a worker), every
wait has a deadline, the whole run has a hard limit printed at the start, and the simulator and
the bare proxy exit by themselves when the benchmark that started them is gone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, cast

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict
from yarl import URL

from gateway.simulator import LOGIN_PATH, Simulator

from .conftest import API_KEY, PASSWORD
from .processes import FRESH, REPO, child_env, free_port, gateway_env

MiB = 1 << 20
MEDIA_SIZE = MiB
USERNAME = "admin"
TARGETS = ("direct", "aiohttp", "nginx", "gateway")
DEFAULT_SECONDS = 10
MAX_SECONDS = 300
DEFAULT_CONNECTIONS = 32
WARMUP = 1  # seconds of unmeasured load before each run: pools filled, caches warm
START_TIMEOUT = 20.0  # from spawning a server to its first good answer
STOP_GRACE = 3.0  # after a SIGTERM (the gateway's shutdown, with nothing in flight)
STOP_TIMEOUT = 10.0  # after a SIGKILL
LOAD_SLACK = 30.0  # seconds a load run may take beyond its duration (start-up, last answers)
SETTLE_TIMEOUT = 5.0  # for the simulator to finish what a run left in flight
SETTLE_POLL = 0.1
SETUP_ESTIMATE = 1.5  # seconds per server to start, per run to spawn the load and settle
WRK_TIMEOUT = "10s"  # slower answers count as latency, not as wrk socket timeouts
ORPHAN_POLL = 0.5
# The simulator records every request it sees; a long run would keep hundreds of thousands of
# records, and the garbage collector's walks over them would slow the later targets' runs.
SEEN_KEEP = 10_000
MESSAGE = b'{"to": "16315551234", "type": "text", "text": {"body": "bench"}}'
# RFC 9110 section 7.6.1, and Host: the bare proxy's client sets the upstream's.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)
_TICKS = os.sysconf("SC_CLK_TCK")
LoadGen = Literal["auto", "wrk", "python"]


class BenchError(Exception):
    """The benchmark cannot go on: a server did not start, a check before the load failed."""


# --- the simulator and the bare proxy, each run as ``python -m tests.bench <role>`` -------------


def shape_of(path: str) -> str:
    """The request shape a path belongs to, as the simulator counts its answers."""
    if path == "/v1/messages":
        return "message"
    if path.startswith("/v1/media/"):
        return "media"
    return "other"


async def serve_until_orphaned(apps: Sequence[tuple[web.Application, int]]) -> None:
    """Serve each app on its 127.0.0.1 port until the parent process is gone.

    The benchmark kills its servers itself; this is for when the benchmark was killed first.
    """
    runners: list[web.AppRunner] = []
    try:
        for app, port in apps:
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            runners.append(runner)
            await web.TCPSite(runner, "127.0.0.1", port).start()
        parent = os.getppid()
        while os.getppid() == parent:
            await asyncio.sleep(ORPHAN_POLL)
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


def simulator_apps(media_dir: str) -> tuple[web.Application, web.Application]:
    """The simulated Webapp, and a control app whose ``GET /counts`` says what it answered."""
    sim = Simulator(
        password=PASSWORD, password_change_required=False, api_key=API_KEY, media_dir=media_dir
    )
    app = sim.make_app()
    answers: Counter[str] = Counter()

    async def count(request: web.Request, response: web.StreamResponse) -> None:
        answers[f"{shape_of(request.path)} {response.status}"] += 1
        if len(sim.seen) > SEEN_KEEP:
            sim.seen.clear()

    async def counts(_request: web.Request) -> web.Response:
        return web.json_response({"in_flight": sim.in_flight, "answers": answers})

    app.on_response_prepare.append(count)
    control = web.Application()
    control.router.add_get("/counts", counts)
    return app, control


SESSION = web.AppKey("bench_session", aiohttp.ClientSession)
AUTHORIZATION = web.AppKey("bench_authorization", str)


def bare_proxy(upstream: str) -> web.Application:
    """A reverse proxy with nothing but forwarding: the floor any aiohttp proxy pays."""

    async def session(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(auto_decompress=False) as client:
            basic = {hdrs.AUTHORIZATION: aiohttp.encode_basic_auth(USERNAME, PASSWORD)}
            async with client.post(upstream + LOGIN_PATH, headers=basic) as answer:
                answer.raise_for_status()
                token = (await answer.json())["users"][0]["token"]
            app[SESSION], app[AUTHORIZATION] = client, f"Bearer {token}"
            yield

    async def forward(request: web.Request) -> web.StreamResponse:
        headers = CIMultiDict(
            (name, value)
            for name, value in request.headers.items()
            if name.lower() not in HOP_BY_HOP
        )
        headers[hdrs.AUTHORIZATION] = request.app[AUTHORIZATION]
        async with request.app[SESSION].request(
            request.method,
            URL(upstream + request.raw_path, encoded=True),
            headers=headers,
            data=request.content if request.can_read_body else None,
            allow_redirects=False,
        ) as answer:
            response = web.StreamResponse(
                status=answer.status,
                reason=answer.reason,
                headers=CIMultiDict(
                    (name, value)
                    for name, value in answer.headers.items()
                    if name.lower() not in HOP_BY_HOP
                ),
            )
            await response.prepare(request)
            while chunk := await answer.content.readany():
                await response.write(chunk)
            await response.write_eof()
            return response

    app = web.Application()
    app.cleanup_ctx.append(session)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


# --- load --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """One kind of request the load repeats."""

    name: str
    method: str
    path: str
    body: bytes | None = None
    content_type: str | None = None
    expect_bytes: int | None = None  # the answer's body size, checked by the Python generator

    def headers(self, client: Mapping[str, str]) -> dict[str, str]:
        """The request's headers: the ``client``'s own, and the body's type."""
        if self.content_type is None:
            return dict(client)
        return {**client, hdrs.CONTENT_TYPE: self.content_type}


@dataclass(frozen=True)
class LoadResult:
    """What a load generator saw in one run."""

    requests: int  # complete answers
    seconds: float
    non_2xx: int
    errors: int  # connect, read, write errors and timeouts; a wrong body size (Python only)
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


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

        async def client(deadline: float) -> None:
            while loop.time() < deadline:
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
                    continue
                latencies.append(loop.time() - started)
                if not 200 <= answer.status < 300:
                    failures["non_2xx"] += 1
                elif shape.expect_bytes is not None and size != shape.expect_bytes:
                    failures["errors"] += 1

        started = loop.time()
        await asyncio.gather(*(client(started + seconds) for _ in range(connections)))
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


async def run_to_end(command: Sequence[str], timeout: float) -> str:  # noqa: ASYNC109
    """Run ``command`` to its end within ``timeout`` seconds; its stdout (BenchError if it
    failed). It is killed on the way out if it is still running."""
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=REPO,
        env=child_env({}),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
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


# --- server processes --------------------------------------------------------------------------


def tree_cpu_seconds(root: int) -> float:
    """utime + stime of process ``root`` and its descendants (nginx's worker), from ``/proc``."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue  # the process ended meanwhile
        # After "pid (comm) ": state, ppid, ... utime and stime are fields 14 and 15 of stat(5).
        fields = stat[stat.rindex(")") + 2 :].split()
        pid = int(entry.name)
        parents[pid], ticks[pid] = int(fields[1]), int(fields[11]) + int(fields[12])
    tree, grown = {root}, True
    while grown:
        children = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= children
        grown = bool(children)
    return sum(ticks.get(pid, 0) for pid in tree) / _TICKS


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
        process = await asyncio.create_subprocess_exec(
            *command,
            cwd=REPO,
            env=child_env(env or {}),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            start_new_session=True,  # one group, so that one kill ends nginx's worker too
        )
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


def nginx_conf(prefix: Path, port: int, upstream_port: int, token: str, connections: int) -> str:
    """A minimal nginx.conf: one worker, no access log, keep-alive upstream, a fixed token."""
    temp = {f"{kind}_temp_path": prefix / kind for kind in ("client_body", "proxy", "fastcgi")}
    temp |= {f"{kind}_temp_path": prefix / kind for kind in ("uwsgi", "scgi")}
    temp_lines = "".join(f"    {key} {path};\n" for key, path in temp.items())
    return f"""\
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
{temp_lines}    upstream webapp {{
        server 127.0.0.1:{upstream_port};
        keepalive {connections};
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://webapp;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer {token}";
            # Streamed as it arrives, with backpressure and no temporary files, as the gateway
            # and the bare proxy do; 64 KiB reads, as theirs (proxy_buffers only so that
            # nginx accepts a 64 KiB proxy_buffer_size).
            proxy_buffering off;
            proxy_buffer_size 64k;
            proxy_buffers 4 64k;
        }}
    }}
}}
"""


# --- the benchmark -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """What to run: ``make bench`` takes the defaults, the test a short run of two targets."""

    seconds: int = DEFAULT_SECONDS  # of measured load per target and shape
    connections: int = DEFAULT_CONNECTIONS
    warmup: int = WARMUP
    targets: tuple[str, ...] = TARGETS
    loadgen: LoadGen = "auto"
    # The baselines write no access log, so neither does the gateway by default; "info" (the
    # gateway's own default) measures the access log's cost too.
    log_level: str = "warning"

    def runs(self) -> int:
        return len(self.targets) * 2  # two shapes

    def expected_seconds(self) -> float:
        """About how long the whole benchmark takes."""
        per_run = self.warmup + self.seconds + SETUP_ESTIMATE
        return SETUP_ESTIMATE * (len(self.targets) + 1) + self.runs() * per_run

    def limit_seconds(self) -> float:
        """The hard limit: every server's start and every run's deadlines, at worst."""
        per_run = self.warmup + self.seconds + 2 * LOAD_SLACK + 2 * SETTLE_TIMEOUT
        per_server = START_TIMEOUT + STOP_GRACE
        return per_server * (len(self.targets) + 1) + self.runs() * per_run


@dataclass(frozen=True)
class Target:
    """Where the load goes, what the client sends itself, and whose CPU is the proxy's."""

    name: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    proxy: Server | None = None

    def cpu_seconds(self) -> float | None:
        """The proxy's CPU seconds so far; None for the Webapp reached directly."""
        return None if self.proxy is None else self.proxy.cpu_seconds()


@dataclass(frozen=True)
class Row:
    """One measured run: a target under one request shape."""

    target: str
    shape: str
    load: LoadResult
    received: int  # 2xx answers the simulator gave to this shape during the run
    connections: int
    proxy_cpu: float | None  # CPU seconds of the proxy during the run; None: no proxy
    webapp_cpu: float

    def per_1k(self, cpu: float | None) -> float | None:
        if cpu is None or self.load.requests == 0:
            return None
        return cpu * 1000 / self.load.requests

    def problems(self) -> list[str]:
        """What is wrong with this run: no answers, failures from the gateway, or counts on
        the simulator that do not match the load generator's."""
        load, name = self.load, f"{self.target} {self.shape}"
        found = []
        if load.requests == 0:
            found.append(f"{name}: no request was answered")
        if self.target == "gateway" and (load.non_2xx or load.errors):
            found.append(f"{name}: {load.non_2xx} non-2xx answers, {load.errors} errors")
        ok = load.requests - load.non_2xx
        if not ok <= self.received <= load.requests + self.connections:
            found.append(
                f"{name}: the Webapp gave {self.received} 2xx answers, the load generator "
                f"saw {ok} of {load.requests} (at most {self.connections} more were in flight)"
            )
        return found


@dataclass
class Report:
    """Every run's row, what was skipped, and how the load was made."""

    options: Options
    loadgen: str
    rows: list[Row] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        return [problem for row in self.rows for problem in row.problems()]

    def row(self, target: str, shape: str) -> Row | None:
        return next((r for r in self.rows if r.target == target and r.shape == shape), None)

    def render(self) -> str:
        opts = self.options
        lines = [
            f"load: {self.loadgen}, {opts.connections} connections, {opts.seconds} s per run "
            f"after {opts.warmup} s of warm-up; CPU in seconds per 1000 requests "
            "(= ms per request)",
            "",
        ]
        lines += table(
            [
                "target",
                "shape",
                "requests",
                "req/s",
                "p50 ms",
                "p99 ms",
                "non-2xx",
                "errors",
                "webapp 2xx",
                "proxy CPU",
                "webapp CPU",
            ],
            [
                [
                    r.target,
                    r.shape,
                    str(r.load.requests),
                    f"{r.load.rps:.0f}",
                    f"{r.load.p50_ms:.2f}",
                    f"{r.load.p99_ms:.2f}",
                    str(r.load.non_2xx),
                    str(r.load.errors),
                    str(r.received),
                    number(r.per_1k(r.proxy_cpu), 3),
                    number(r.per_1k(r.webapp_cpu), 3),
                ]
                for r in self.rows
            ],
        )
        overhead = self.overhead()
        if overhead:
            title = "gateway / baseline (req/s below 1: slower; latency and CPU above 1: costlier)"
            lines += ["", title, ""]
            header = ["shape", "baseline", "req/s", "p50", "p99", "proxy CPU", "total CPU"]
            lines += table(header, overhead)
        lines += [f"skipped: {skip}" for skip in self.skipped]
        return "\n".join(lines)

    def overhead(self) -> list[list[str]]:
        """The gateway's rows divided by each baseline's, shape by shape."""
        rows = []
        for gateway in (r for r in self.rows if r.target == "gateway"):
            for name in ("direct", "aiohttp", "nginx"):
                base = self.row(name, gateway.shape)
                if base is None:
                    continue
                rows.append(
                    [
                        gateway.shape,
                        name,
                        ratio(gateway.load.rps, base.load.rps),
                        ratio(gateway.load.p50_ms, base.load.p50_ms),
                        ratio(gateway.load.p99_ms, base.load.p99_ms),
                        ratio(gateway.per_1k(gateway.proxy_cpu), base.per_1k(base.proxy_cpu)),
                        ratio(total_cpu(gateway), total_cpu(base)),
                    ]
                )
        return rows


def total_cpu(row: Row) -> float | None:
    """CPU seconds per 1000 requests of the proxy and the Webapp together."""
    return row.per_1k((row.proxy_cpu or 0.0) + row.webapp_cpu)


def number(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def ratio(value: float | None, base: float | None) -> str:
    return "—" if value is None or not base else f"{value / base:.2f}x"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table, padded so that it reads as well in a terminal."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return [line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)]


class Webapp:
    """The simulator process, seen from the benchmark: its URL, its counters, its CPU."""

    def __init__(self, server: Server, control: str, session: aiohttp.ClientSession) -> None:
        self.server = server
        self.url = server.url
        self._control = control
        self._session = session

    async def counts(self) -> tuple[int, Counter[str]]:
        """Requests in flight now, and the answers given so far by ``shape status``."""
        async with self._session.get(self._control + "/counts") as answer:
            data = await answer.json()
        return int(data["in_flight"]), Counter(data["answers"])

    async def settled(self) -> Counter[str]:
        """The answers, once nothing is in flight and nothing changed for a moment (or after
        SETTLE_TIMEOUT: a mismatch then shows in the run's check)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_TIMEOUT
        _, previous = await self.counts()
        while True:
            await asyncio.sleep(SETTLE_POLL)
            in_flight, answers = await self.counts()
            if (in_flight == 0 and answers == previous) or loop.time() > deadline:
                return answers
            previous = answers

    async def login(self) -> str:
        """A bearer token, from one login."""
        headers = {hdrs.AUTHORIZATION: aiohttp.encode_basic_auth(USERNAME, PASSWORD)}
        async with self._session.post(self.url + LOGIN_PATH, headers=headers) as answer:
            answer.raise_for_status()
            return cast(str, (await answer.json())["users"][0]["token"])

    async def upload(self, token: str, data: bytes) -> str:
        """Store ``data`` as a media object; its id."""
        headers = {"Authorization": f"Bearer {token}", hdrs.CONTENT_TYPE: "image/jpeg"}
        async with self._session.post(self.url + "/v1/media", data=data, headers=headers) as a:
            a.raise_for_status()
            return cast(str, (await a.json())["media"][0]["id"])


def two_xx(answers: Counter[str], shape: str) -> int:
    """How many 2xx answers a shape got, from the simulator's ``shape status`` counters."""
    return sum(n for key, n in answers.items() if key.startswith(f"{shape} 2"))


async def check_target(
    session: aiohttp.ClientSession, target: Target, shapes: Sequence[Shape], digest: str
) -> None:
    """One request of each shape through ``target``: a 2xx, and the media's exact bytes."""
    for shape in shapes:
        headers = shape.headers(target.headers)
        url = target.url + shape.path
        async with session.request(shape.method, url, data=shape.body, headers=headers) as answer:
            body = await answer.read()
        if not 200 <= answer.status < 300:
            raise BenchError(f"{target.name}: {shape.name} answered {answer.status}: {body!r}")
        if shape.expect_bytes is not None and hashlib.sha256(body).hexdigest() != digest:
            raise BenchError(f"{target.name}: the media downloaded is not the one uploaded")


async def start_targets(
    stack: contextlib.AsyncExitStack, webapp: Webapp, token: str, options: Options, workdir: Path
) -> tuple[list[Target], list[str]]:
    """Start the proxies the options name (nginx only when it is on PATH), in the order
    named; the targets, and what was skipped."""
    targets, skipped = [], []
    for name in options.targets:
        if name == "direct":
            targets.append(Target(name, webapp.url, {"Authorization": f"Bearer {token}"}))
            continue
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        ready, env = url + "/v1/health", {}  # the proxies' health: a request to the Webapp
        if name == "aiohttp":
            command = [sys.executable, "-m", "tests.bench", "proxy", str(port), webapp.url]
        elif name == "nginx":
            nginx = shutil.which("nginx")
            if nginx is None:
                skipped.append("nginx (not on PATH)")
                continue
            prefix = workdir / "nginx"
            prefix.mkdir()
            conf = prefix / "nginx.conf"
            upstream_port = URL(webapp.url).port or 80
            conf.write_text(nginx_conf(prefix, port, upstream_port, token, options.connections))
            command = [nginx, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
        else:
            command = [sys.executable, "-m", "gateway", "serve"]
            ready = url + "/_gateway/readyz"
            env = gateway_env(webapp.url, port, GATEWAY_LOG_LEVEL=options.log_level)
        proxy = await stack.enter_async_context(
            running(name, command, url=url, ready_url=ready, workdir=workdir, env=env)
        )
        targets.append(Target(name, url, {}, proxy))
    return targets, skipped


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
            shapes = (
                Shape("message", "POST", "/v1/messages", MESSAGE, "application/json"),
                Shape("media", "GET", f"/v1/media/{media_id}", expect_bytes=MEDIA_SIZE),
            )
            targets, report.skipped = await start_targets(stack, webapp, token, options, workdir)
            for skipped in report.skipped:
                inform(say, f"skipped: {skipped}")
            digest = hashlib.sha256(media).hexdigest()
            for target in targets:
                await check_target(session, target, shapes, digest)
            for shape in shapes:
                for target in targets:
                    inform(say, f"{target.name} {shape.name}: {options.seconds} s")
                    url = target.url + shape.path
                    run = Run(loadgen, url, shape, target.headers, options.connections, workdir)
                    report.rows.append(await measure(webapp, target, run, options))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return report


async def start_webapp(
    stack: contextlib.AsyncExitStack, session: aiohttp.ClientSession, workdir: Path
) -> Webapp:
    """The simulator in its own process, its media stored in ``workdir``."""
    port, control_port = free_port(), free_port()
    media_dir = workdir / "media"
    media_dir.mkdir()
    command = [sys.executable, "-m", "tests.bench", "simulator"]
    command += [str(port), str(control_port), str(media_dir)]
    control = f"http://127.0.0.1:{control_port}"
    url = f"http://127.0.0.1:{port}"
    server = await stack.enter_async_context(
        running("simulator", command, url=url, ready_url=control + "/counts", workdir=workdir)
    )
    return Webapp(server, control, session)


def inform(say: bool, text: str) -> None:
    if say:
        print(text, flush=True)


async def bench_main(options: Options) -> int:
    """Run the benchmark within its hard limit; print the report; the exit status."""
    # SIGTERM (a CI timeout, say) unwinds like Ctrl-C, so every server is still killed.
    main = asyncio.current_task()
    assert main is not None
    terminated = asyncio.Event()

    def terminate() -> None:
        terminated.set()
        main.cancel()

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, terminate)
    print(
        f"wa-gateway bench: {', '.join(options.targets)}; about "
        f"{options.expected_seconds():.0f} s, at most {options.limit_seconds():.0f} s",
        flush=True,
    )
    try:
        async with asyncio.timeout(options.limit_seconds()):
            report = await run_bench(options, say=True)
    except (BenchError, TimeoutError, aiohttp.ClientError) as exc:
        print(f"bench failed: {exc!r}", file=sys.stderr)
        return 1
    except asyncio.CancelledError:
        if not terminated.is_set():
            raise
        print("bench stopped by SIGTERM", file=sys.stderr)
        return 128 + signal.SIGTERM
    print()
    print(report.render())
    problems = report.problems()
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench", description=__doc__.split("\n")[0]
    )
    # String defaults go through type=int too, so a bad BENCH_* value is a usage error.
    seconds = os.environ.get("BENCH_SECONDS", str(DEFAULT_SECONDS))
    connections = os.environ.get("BENCH_CONNECTIONS", str(DEFAULT_CONNECTIONS))
    parser.add_argument(
        "--seconds", type=int, default=seconds, help="of load per target and shape (10)"
    )
    parser.add_argument("--connections", type=int, default=connections, help="(32)")
    parser.add_argument("--warmup", type=int, default=WARMUP, help="seconds, before each run")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated (all)")
    parser.add_argument(
        "--loadgen", choices=("auto", "wrk", "python"), default="auto", help="auto: wrk if on PATH"
    )
    parser.add_argument(
        "--log-level",
        choices=("warning", "info"),
        default=os.environ.get("BENCH_LOG_LEVEL", "warning"),
        help="the gateway's; info adds its access log (warning)",
    )
    roles = parser.add_subparsers(dest="role", help="internal: the processes the bench starts")
    simulator = roles.add_parser("simulator")
    simulator.add_argument("port", type=int)
    simulator.add_argument("control_port", type=int)
    simulator.add_argument("media_dir")
    proxy = roles.add_parser("proxy")
    proxy.add_argument("port", type=int)
    proxy.add_argument("upstream")
    load = roles.add_parser("load")
    load.add_argument("spec", help="JSON: url, shape, headers, seconds, connections")
    args = parser.parse_args(argv)
    if not 1 <= args.seconds <= MAX_SECONDS:
        parser.error(f"--seconds must be 1 to {MAX_SECONDS}")
    if not 1 <= args.connections <= 1000:
        parser.error("--connections must be 1 to 1000")
    if not 0 <= args.warmup <= MAX_SECONDS:
        parser.error(f"--warmup must be 0 to {MAX_SECONDS}")
    unknown = set(args.targets.split(",")) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}; known: {', '.join(TARGETS)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.role == "simulator":
        apps = simulator_apps(args.media_dir)
        asyncio.run(serve_until_orphaned([(apps[0], args.port), (apps[1], args.control_port)]))
        return 0
    if args.role == "proxy":
        asyncio.run(serve_until_orphaned([(bare_proxy(args.upstream), args.port)]))
        return 0
    if args.role == "load":
        load_main(args.spec)
        return 0
    options = Options(
        seconds=args.seconds,
        connections=args.connections,
        warmup=args.warmup,
        targets=tuple(name for name in TARGETS if name in args.targets.split(",")),
        loadgen=args.loadgen,
        log_level=args.log_level,
    )
    try:
        return asyncio.run(bench_main(options))
    except KeyboardInterrupt:  # asyncio.run cancelled the benchmark: its servers are killed
        print("bench interrupted", file=sys.stderr)
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
