"""What a test scripts to go wrong, as data: login faults, request faults, the rate limit.

Carrying a fault out is ``connection.py``'s job (and ``login.py``'s for login faults); this
module only describes faults, picks the one a request meets and keeps the rate limit's buckets.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal, get_args

LoginFaultKind = Literal[
    "status",
    "reset",
    "invalid_json",
    "empty",
    "oversized",
    "no_expiry",
    "bad_expiry",
    "iso_expiry",
    "expired",
    "hang",
    "no_date",
    "lose_answer",
    "late",
]
FaultKind = Literal[
    "status",
    "reset_before",
    "reset_after",
    "cut_body",
    "bad_chunk",
    "stall",
    "trickle",
    "delay",
    "slow_read",
]


@dataclass(frozen=True)
class LoginFault:
    """What one login attempt does instead of behaving normally.

    ``status``, ``reset``, ``invalid_json``, ``empty``, ``oversized`` and ``hang`` replace the
    answer without looking at the credentials. ``no_expiry``, ``bad_expiry``, ``iso_expiry``,
    ``expired`` and ``no_date`` only reshape a success: the credentials and ``new_password``
    are still checked.
    ``lose_answer`` processes the login completely (credentials checked, ``new_password``
    applied, token issued and valid) and then hangs up instead of answering, as ``reset`` does:
    a password change whose answer never reaches the client. A login that fails is hung up on
    too, and changes nothing. ``late`` waits ``delay`` seconds, whether or not the client is
    still there, and then processes the login normally: a Webapp too busy to answer in time
    that still acts on a login its client gave up on.
    """

    kind: LoginFaultKind
    status: int = 500
    delay: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in get_args(LoginFaultKind):
            raise ValueError(f"unknown login fault kind {self.kind!r}")


@dataclass(frozen=True)
class Fault:
    """A fault for non-login requests whose path starts with ``path`` (and method matches).

    Each match uses one of ``times`` (``None``: forever); the simulator replaces the entry in
    ``Simulator.faults`` by one with the remaining count and drops it at zero. ``delay`` is the
    pause of ``delay`` and ``trickle`` (before each byte of the answer) and of ``slow_read``
    (before each 64 KiB of the request body is read; then it answers 200). ``cut_body`` hangs up
    mid-body; ``bad_chunk`` breaks a chunked body's framing and keeps the connection open.
    """

    kind: FaultKind
    path: str = "/"
    method: str | None = None
    times: int | None = 1
    status: int = 500
    delay: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in get_args(FaultKind):
            raise ValueError(f"unknown fault kind {self.kind!r}")
        if self.times is not None and self.times < 1:
            raise ValueError("times must be at least 1 (None: forever)")

    def matches(self, method: str, path: str) -> bool:
        """Tell whether this fault applies to a request."""
        return path.startswith(self.path) and (self.method is None or self.method.upper() == method)


def take_fault(faults: list[Fault], method: str, path: str) -> Fault | None:
    """The first fault in ``faults`` that matches a request, one of its ``times`` used up."""
    for index, fault in enumerate(faults):
        if fault.matches(method, path):
            if fault.times is None:
                pass
            elif fault.times <= 1:
                del faults[index]
            else:
                faults[index] = replace(fault, times=fault.times - 1)
            return fault
    return None


@dataclass(frozen=True)
class RateLimit:
    """The Webapp's rate limit: ``rate`` requests per second per endpoint, bursts to ``burst``;
    beyond it, 429 with code 1015. An endpoint is a method and the path's first two segments
    (``POST /v1/messages``, ``GET /v1/media``, ``POST /v1/users`` for logins); a request counts
    before its credentials are checked."""

    rate: float = 20.0
    burst: float = 60.0


class RateBuckets:
    """A token bucket per endpoint, on a monotonic ``clock``."""

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}  # (tokens, at)

    def admit(self, method: str, path: str) -> bool:
        """Whether a request to this endpoint is within the limit now (and counts it if so)."""
        key = (method, "/".join(path.split("/", 3)[:3]))
        now = self._clock()
        tokens, at = self._buckets.get(key, (self.limit.burst, now))
        tokens = min(self.limit.burst, tokens + (now - at) * self.limit.rate)
        admitted = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if admitted else tokens, now)
        return admitted
