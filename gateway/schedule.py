"""One account's login schedule: when to log in next and what the failures so far mean.

Pure state and arithmetic over the pool's monotonic clock, no tasks and no I/O: the token pool
(:mod:`gateway.tokens`) owns the logins and asks this module what to do.

- A failed login arms a capped exponential backoff with jitter; until it ends, callers get a fast
  :class:`TokenUnavailable` instead of a login of their own.
- ``breaker_threshold`` failures in a row open the login circuit breaker until the backoff ends;
  then it is half-open for one trial login.
- Fresh tokens that the Webapp refuses at once, :data:`REFUSALS_TO_FAIL` times in a row, count as
  a failed login: a Webapp that answers 401 to everything meets the backoff, while a revocation
  that races a login costs one more login, not a backoff.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from enum import Enum

from .config import TokenConfig
from .errors import TokenUnavailable
from .login import LoginFailed

# Fresh tokens refused in a row before the Webapp is taken to refuse them all.
REFUSALS_TO_FAIL = 2


class Breaker(Enum):
    """The login circuit breaker; the value is what the metric shows."""

    CLOSED = 0
    HALF_OPEN = 1  # the backoff ended: the next login is a trial
    OPEN = 2  # too many failures in a row: no login until the backoff ends


class Refusal(Enum):
    """What the Webapp refusing a token means for the pool."""

    STALE = "stale"  # an older token, or one already counted: nothing to do
    DROP = "drop"  # forget the token, so that the next caller logs in afresh
    FAIL = "fail"  # forget it, and count a failed login: fresh tokens are refused in a row


@dataclass(frozen=True)
class Readiness:
    """Whether the pool can serve an account now, and why not."""

    ready: bool
    reason: str


def refresh_time(sent_at: float, lifetime: float, config: TokenConfig, rng: random.Random) -> float:
    """When to replace a token: ``refresh_before`` of its lifetime early, and up to
    ``refresh_jitter`` more, so that gateways started together do not log in together."""
    early = config.refresh_before + config.refresh_jitter * rng.random()
    return sent_at + lifetime * (1 - early)


def backoff_delay(failures: int, config: TokenConfig, rng: random.Random) -> float:
    """Seconds to wait after the ``failures``-th consecutive failed login (equal jitter)."""
    ceiling = min(config.backoff_max, config.backoff_initial * 2.0 ** min(failures - 1, 32))
    return ceiling / 2 + rng.random() * ceiling / 2


@dataclass(eq=False)
class Schedule:
    """What the pool knows about one account's logins, besides its token and the login in flight."""

    config: TokenConfig
    generation: int = 0  # of the newest token granted
    failures: int = 0  # counted failed logins in a row
    last_failure: LoginFailed | None = None
    retry_at: float = 0.0  # no login before this, unless a caller holds a token to refresh
    logged_in: bool = False
    rejected_generation: int = 0  # the last token counted as refused, so it counts once
    refused_in_a_row: int = 0  # fresh tokens the Webapp refused, without one accepted since
    # Fresh tokens were refused REFUSALS_TO_FAIL times in a row: until a token is accepted, the
    # pool is not ready and logs in and checks the token after each backoff.
    needs_check: bool = False

    def granted(self) -> int:
        """A login succeeded; the generation of its token."""
        self.generation += 1
        self.logged_in = True
        if not self.needs_check:  # a login proves little while the Webapp refuses fresh tokens
            self._recovered()
        return self.generation

    def failed(self, failure: LoginFailed, now: float, rng: random.Random) -> float:
        """A login failed and counts: the seconds of backoff it arms."""
        self.failures += 1
        self.last_failure = failure
        delay = backoff_delay(self.failures, self.config, rng)
        self.retry_at = now + delay
        return delay

    def accepted(self, generation: int) -> None:
        """The Webapp accepted the token of ``generation``."""
        if generation != self.generation:
            return
        if self.needs_check:  # the failures counted meanwhile were all about refused tokens
            self._recovered()
        self.refused_in_a_row, self.needs_check = 0, False

    def refused(self, generation: int) -> Refusal:
        """The Webapp refused the token of ``generation`` with a 401."""
        if generation != self.generation or generation == self.rejected_generation:
            return Refusal.STALE  # many replays may have waited for one token: one refusal
        self.rejected_generation = generation
        self.refused_in_a_row += 1
        if self.refused_in_a_row < REFUSALS_TO_FAIL:
            return Refusal.DROP
        self.needs_check = True
        return Refusal.FAIL

    def due(self, refresh_at: float | None) -> tuple[float, str]:
        """When the next login should start and why, given the held token's ``refresh_at``."""
        if self.needs_check or refresh_at is None:
            return self.retry_at, self.retry_reason
        return max(refresh_at, self.retry_at), "refresh"

    @property
    def retry_reason(self) -> str:
        """Why the next login without a usable token happens: to check a fresh token before
        readiness returns (after refused ones), or because none is held."""
        return "recheck" if self.needs_check else "no_token"

    @property
    def failing(self) -> bool:
        """Whether the last login counted failed (and none succeeded since)."""
        return self.last_failure is not None

    def breaker(self, now: float) -> Breaker:
        """The login circuit breaker, derived from the failures in a row and the backoff."""
        if self.failures < self.config.breaker_threshold:
            return Breaker.CLOSED
        return Breaker.OPEN if now < self.retry_at else Breaker.HALF_OPEN

    def readiness(self, holding_token: bool, now: float) -> Readiness:
        """Ready while a usable token is held or the last login succeeded."""
        failure = self.last_failure
        if holding_token and not self.needs_check:
            return Readiness(True, "holding a valid token")
        if failure is not None:
            breaker = self.breaker(now).name.lower().replace("_", "-")
            return Readiness(
                False,
                f"login failed ({failure.kind}, {self.failures} in a row, login breaker "
                f"{breaker}): {failure.details}",
            )
        if self.logged_in:
            return Readiness(True, "last login succeeded")
        return Readiness(False, "no token yet: the first login is under way")

    def unavailable(self, now: float) -> TokenUnavailable:
        """The error for callers while no token can be had: the cause and when to retry."""
        failure = self.last_failure
        cause = "the login failed" if failure is None else f"{failure.details} {failure.advice}"
        retry_after = max(1.0, self.retry_at - now)
        return TokenUnavailable(
            f"The gateway holds no token for the Webapp: {cause} "
            f"Next attempt in {math.ceil(retry_after)} s.",
            retry_after=retry_after,
            kind="no_token",
        )

    def _recovered(self) -> None:
        self.failures, self.last_failure, self.retry_at = 0, None, 0.0
