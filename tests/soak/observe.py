"""The gateway process, observed from outside: its descriptors by kind (``/proc``), its metrics
(scraped), the warnings and errors in its log; and waiting, bounded, for it to settle."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from gateway.simulator import Simulator

from ..harness.procfs import open_files, tcp_sockets
from ..processes import FRESH, GatewayProcess

CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=120, sock_connect=10, sock_read=30)
SETTLE_TIMEOUT = 15.0  # the bounded wait for connections and tasks to end after the traffic


@dataclass(frozen=True)
class Descriptors:
    """A process's open file descriptors, by kind."""

    total: int = 0
    kinds: Counter[str] = field(default_factory=Counter)

    def describe(self) -> str:
        return ", ".join(f"{kind} {count}" for kind, count in sorted(self.kinds.items()))


@dataclass(frozen=True)
class Reading:
    """The gateway's descriptors, read from outside, and its metrics, scraped."""

    fds: Descriptors = field(default_factory=Descriptors)
    metrics: Mapping[str, float] = field(default_factory=dict)

    @property
    def tasks(self) -> int | None:
        """asyncio tasks alive (the scrape's own included); None if the gateway has no gauge."""
        tasks = self.metrics.get("wa_gateway_asyncio_tasks")
        return None if tasks is None else int(tasks)

    def total(self, name: str, part: str = "") -> float:
        """The sum of metric ``name``'s samples whose labels contain ``part``."""
        return sum(
            value
            for key, value in self.metrics.items()
            if key.partition("{")[0] == name and part in key
        )


@dataclass
class Observer:
    """Reads a gateway process's descriptors and tasks, and closes idle Webapp connections."""

    gateway: GatewayProcess
    port: int
    sim: Simulator
    webapp: web.AppRunner
    webapp_port: int
    spool: Path

    def descriptors(self) -> Descriptors:
        """``/proc/<pid>/fd`` by kind: sockets by their ports, spool files, pipes and the rest."""
        pid = self.gateway.pid
        tcp = tcp_sockets(pid)
        kinds: Counter[str] = Counter()
        for target in open_files(pid):
            if target in tcp:
                local, remote, state = tcp[target]
                if state == "0A":
                    kinds["listening"] += 1
                elif remote == self.webapp_port:
                    kinds["Webapp connections"] += 1
                elif local == self.port:
                    kinds["client connections"] += 1
                else:
                    kinds["other TCP"] += 1
            elif target.startswith(str(self.spool)):
                kinds["spool files"] += 1
            else:
                kinds[target.partition(":")[0] if ":" in target else "files"] += 1
        return Descriptors(sum(kinds.values()), kinds)

    def close_idle_webapp_connections(self) -> None:
        """The Webapp hangs up its keep-alive connections, if it is handling no request.

        (Not ``Server.pre_shutdown()``: in aiohttp 3.14 that leaves an idle connection open but
        deaf, so the gateway's next request on it would hang until its timeout.)
        """
        server = self.webapp.server
        if server is not None and self.sim.in_flight == 0:
            for connection in server.connections:
                connection.force_close()

    async def settle(self, back_to: Reading | None = None) -> Reading:
        """Close the Webapp's idle connections, then wait (bounded) until the descriptor and task
        counts are back at ``back_to``'s; without it, until no connection is open and two
        readings in a row agree."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_TIMEOUT
        previous: tuple[int, int | None] | None = None
        while True:
            self.close_idle_webapp_connections()
            await asyncio.sleep(0.2)
            reading = Reading(self.descriptors(), await scrape(self.gateway.url))
            counts = reading.fds.total, reading.tasks
            if back_to is None:
                kinds = reading.fds.kinds
                idle = not kinds["client connections"] + kinds["Webapp connections"]
                done, previous = idle and counts == previous, counts
            else:
                done = counts == (back_to.fds.total, back_to.tasks)
            if done or loop.time() > deadline:
                return reading


async def scrape(url: str) -> dict[str, float]:
    """The gateway's metric samples as ``name{label=value,...}`` -> value (``name`` alone when
    there are no labels). The scrape's own connection is closed after it."""
    async with (
        aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session,
        session.get(url + "/_gateway/metrics", headers=FRESH) as response,
    ):
        text = await response.text()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


def log_problems(gateway: GatewayProcess) -> Counter[str]:
    """Warning and error events in the gateway's log, by level and name."""
    problems: Counter[str] = Counter()
    with gateway.stdout_path.open(errors="replace") as log:
        for line in log:
            if '"request.completed"' in line or not line.startswith("{"):
                continue  # access lines are info; reading them all would only be slow
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if event.get("level") in ("warning", "error", "critical"):
                    problems[f"{event['level']} {event.get('event')}"] += 1
    return problems
