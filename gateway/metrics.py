"""The gateway's Prometheus metrics, in a registry of their own: one per app, no globals."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from .log import dropped_lines

# The format generate_latest() writes. Not prometheus_client's CONTENT_TYPE_LATEST, which in current
# releases names text format 1.0.0, sent only to a scraper that asks for it (see choose_encoder()).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Label values come from clients: anything outside these sets is counted as "other", so that a
# client inventing methods cannot grow the registry without bound.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _DroppedLines(Collector):
    """Log lines the sink dropped: a counter whose value lives in the logging configuration."""

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "wa_gateway_log_lines_dropped",
            "Log lines dropped because the log's reader fell behind.",
            value=dropped_lines(),
        )


class Metrics:
    """Every metric the gateway exports; ``render()`` gives the exposition text."""

    def __init__(self) -> None:
        # A "_created" gauge beside every counter and histogram doubles the series and, in text
        # format 0.0.4, reads as a value of its own (with the counter's help): left out, as
        # prometheus_client can only do for the whole process.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "wa_gateway_requests",
            "Requests answered, by method and status.",
            ["method", "status"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "wa_gateway_request_duration_seconds",
            "Time from receiving a request to the end of its answer.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.upstream_seconds = Histogram(
            "wa_gateway_upstream_duration_seconds",
            "Time from sending a request to the Webapp to receiving its response headers.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.logins = Counter(
            "wa_gateway_logins",
            "Logins to the Webapp, by result (ok or the failure kind).",
            ["result"],
            registry=registry,
        )
        self.refreshes = Counter(
            "wa_gateway_token_refreshes",
            "Tokens replaced before they expired.",
            registry=registry,
        )
        self.replays = Counter(
            "wa_gateway_replays",
            "Requests sent again with a new token after the Webapp answered 401.",
            registry=registry,
        )
        self.upstream_errors = Counter(
            "wa_gateway_upstream_errors",
            "Requests for which no complete answer came from the Webapp, by kind.",
            ["kind"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "wa_gateway_requests_in_flight",
            "Requests being handled now.",
            registry=registry,
        )
        self.client_connections = Gauge(
            "wa_gateway_client_connections",
            "Client connections open now.",
            registry=registry,
        )
        self.connections_refused = Counter(
            "wa_gateway_client_connections_refused",
            "Client connections closed at accept because GATEWAY_MAX_CONNECTIONS were open.",
            registry=registry,
        )
        self.upstream_in_use = Gauge(
            "wa_gateway_upstream_connections_in_use",
            "Connections to the Webapp held by forwarded requests now.",
            registry=registry,
        )
        self.token_expiry = Gauge(
            "wa_gateway_token_expiry_seconds",
            "Seconds until the pooled token expires (0 when the gateway holds none).",
            registry=registry,
        )
        self.login_breaker = Gauge(
            "wa_gateway_login_breaker_state",
            "The login circuit breaker: 0 closed, 1 half-open, 2 open.",
            registry=registry,
        )
        self.rotations = Counter(
            "wa_gateway_password_rotations",
            "Scheduled password rotations, by result (ok or the failure kind).",
            ["result"],
            registry=registry,
        )
        self.password_age = Gauge(
            "wa_gateway_password_age_seconds",
            "Seconds since the password file was last written (NaN without a readable one).",
            registry=registry,
        )
        self.password_age.set(math.nan)
        registry.register(_DroppedLines())
        tasks = Gauge(
            "wa_gateway_asyncio_tasks",
            "asyncio tasks alive in the gateway's event loop (a leak shows as growth).",
            registry=registry,
        )
        tasks.set_function(lambda: len(asyncio.all_tasks()))
        # process_resident_memory_bytes, process_open_fds, process_cpu_seconds_total, ...
        ProcessCollector(registry=registry)

    def count_request(self, method: str, status: int, seconds: float) -> None:
        """Record one answered request."""
        label = method if method in KNOWN_METHODS else "other"
        self.requests.labels(label, str(status)).inc()
        self.request_seconds.observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE
