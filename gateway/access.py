"""The record of one request and its canonical access event (one per request, always)."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import structlog
from aiohttp import web

from .metrics import Metrics

log = structlog.get_logger("gateway.access")

MAX_LOGGED_PATH = 512
# The user part of a target's authority: after "scheme://" or "//", or at the start of CONNECT's.
_USERINFO = re.compile(r"^((?:[A-Za-z][A-Za-z0-9+.-]*:)?//|)[^/?#@]*@")
OWN_PREFIX = "/_gateway/"  # the gateway's own endpoints


@dataclass(eq=False)
class Exchange:
    """What the access event tells about one request; filled in as the request goes."""

    request_id: str
    started: float
    path: str | None = None  # the normalised path, once the policy has passed the request
    upstream_ms: float = 0.0
    retried: bool = False
    bytes_in: int = 0
    bytes_out: int = 0
    failure: str | None = None  # why the answer was cut short or refused, when it was
    streaming: web.StreamResponse | None = None  # the answer whose status line went out


def completed(
    metrics: Metrics,
    exchange: Exchange,
    *,
    method: str | None,
    raw_path: str | None,
    status: int,
    client: str | None,
) -> None:
    """Count the request and write its ``request.completed`` event (at debug for a probe or
    scrape of the gateway's own endpoints that succeeded: a health check every few seconds
    would otherwise make most of the access log)."""
    elapsed = time.perf_counter() - exchange.started
    metrics.count_request(method or "other", status, elapsed)
    path = exchange.path
    if path is None and raw_path is not None:  # refused before it was normalised: log it raw
        path = _logged_path(raw_path)
    probe = status == 200 and path is not None and path.startswith(OWN_PREFIX)
    (log.debug if probe else log.info)(
        "request.completed",
        method=method,
        path=path,
        status=status,
        duration_ms=round(elapsed * 1000, 2),
        upstream_ms=round(exchange.upstream_ms, 2),
        request_id=exchange.request_id,
        client=client,
        retried=exchange.retried,
        bytes_in=exchange.bytes_in,
        bytes_out=exchange.bytes_out,
        failure=exchange.failure,
    )


def _logged_path(raw_target: str) -> str:
    """The path of a raw target, without the query or the authority of an absolute-form one
    (``http://user:password@host/...``: a credential, as likely as not), and with the user part
    of one written as ``//user:password@host/...`` or, for CONNECT, ``user:password@host``
    masked."""
    path = _USERINFO.sub(r"\1***@", raw_target.partition("?")[0], count=1)
    if not path.startswith("/") and "://" in path:
        path = "/" + path.partition("://")[2].partition("/")[2]
    return path[:MAX_LOGGED_PATH]
