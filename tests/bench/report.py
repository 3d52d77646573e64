"""The benchmark's report: one row per measured run, what is wrong with it, and the printed
tables (every run; then the gateway divided by each baseline)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..harness.text import markdown_table
from .options import Options
from .shapes import LoadResult

HEADER = (
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
)
OVERHEAD_HEADER = ("shape", "baseline", "req/s", "p50", "p99", "proxy CPU", "total CPU")
BASELINES = ("direct", "aiohttp", "nginx")


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

    def cells(self) -> list[str]:
        """The row as the report's table prints it."""
        load = self.load
        return [
            self.target,
            self.shape,
            str(load.requests),
            f"{load.rps:.0f}",
            f"{load.p50_ms:.2f}",
            f"{load.p99_ms:.2f}",
            str(load.non_2xx),
            str(load.errors),
            str(self.received),
            number(self.per_1k(self.proxy_cpu), 3),
            number(self.per_1k(self.webapp_cpu), 3),
        ]


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
        lines += markdown_table(HEADER, [row.cells() for row in self.rows])
        overhead = self.overhead()
        if overhead:
            title = "gateway / baseline (req/s below 1: slower; latency and CPU above 1: costlier)"
            lines += ["", title, ""]
            lines += markdown_table(OVERHEAD_HEADER, overhead)
        lines += [f"skipped: {skip}" for skip in self.skipped]
        return "\n".join(lines)

    def overhead(self) -> list[list[str]]:
        """The gateway's rows divided by each baseline's, shape by shape."""
        rows = []
        for gateway in (r for r in self.rows if r.target == "gateway"):
            for name in BASELINES:
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
