"""Where the load goes: the Webapp reached directly, or a proxy in front of it (the bare
aiohttp proxy, nginx, the gateway), each started as a process; and the check, before any load,
that each answers every shape with the right bytes."""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from yarl import URL

from ..processes import free_port, gateway_env
from .errors import BenchError
from .nginx import nginx_conf
from .options import Options
from .servers import Server, running
from .shapes import Shape
from .webapp import Webapp


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
