"""A login as the token pool performs it, and the check of a fresh token: each under the login
timeout, every way it can end turned into a value, and recorded in the account's schedule, the
metrics and the log.

- A login's lifetime is measured from the moment it was sent, against the Webapp's own clock
  (see :func:`gateway.webapp.parse_login`), on the monotonic clock; a token that expired before
  its login ended is a failed login.
- Nothing here raises for the functions it calls: a login that raised would leave the account
  without a retry schedule.

The pool (:mod:`gateway.tokens`) decides when a login runs and which function it calls, keeps the
token it yields, and wakes its background task after a failure, which moves the next retry.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from .bearer import Account, Clock, Token
from .config import TokenConfig
from .log import log_crash
from .login import Grant, InvalidLoginAnswer, LoginFailed, WebappUnavailable
from .metrics import Metrics
from .schedule import Schedule, refresh_time

# The pool's events: under the pool's logger name, whichever module writes them.
log = structlog.get_logger("gateway.tokens")

LoginFn = Callable[[Account], Awaitable[Grant]]
# Whether the Webapp accepts a token (any answer but 401); raises when it cannot tell.
CheckFn = Callable[[Account, Token], Awaitable[bool]]


@dataclass(eq=False)
class LoginAttempts:
    """Performs the pool's logins and token checks, with the pool's settings, metrics and clock."""

    config: TokenConfig
    metrics: Metrics
    clock: Clock
    rng: random.Random

    async def login(
        self,
        login_fn: LoginFn,
        account: Account,
        schedule: Schedule,
        reason: str,
        keep: Callable[[Token], None],
    ) -> Token | LoginFailed:
        """Log in for ``account`` with ``login_fn``: the new token, handed to ``keep`` before
        anything else is recorded, or the failure."""
        sent_at = self.clock.monotonic()
        failure: LoginFailed
        try:
            async with asyncio.timeout(self.config.login_timeout):
                grant = await login_fn(account)
        except LoginFailed as exc:
            failure = exc
        except TimeoutError:
            failure = WebappUnavailable(
                f"The login took longer than {self.config.login_timeout} s."
            )
        except Exception as exc:  # a bug must not leave the pool without a retry schedule
            log_crash("token.login_crashed", exc)
            failure = LoginFailed(f"The login crashed: {type(exc).__name__}.")
        else:
            if sent_at + grant.lifetime > self.clock.monotonic():
                return self._granted(schedule, grant, sent_at, reason, keep)
            failure = InvalidLoginAnswer(  # the login took longer than the token lives
                f"The token expired before the login ended ({grant.lifetime:.1f} s lifetime)."
            )
        # A failed rotation leaves the pooled token serving, and is the Rotator's to retry: it
        # must not hold back the logins that requests may need meanwhile.
        return self.failed(schedule, failure, sent_at, counts=reason != "rotate")

    async def check(
        self, check_fn: CheckFn | None, account: Account, schedule: Schedule, token: Token
    ) -> bool | LoginFailed:
        """Whether the Webapp accepts ``token`` now (without ``check_fn``, it does); the failure,
        recorded, when it cannot tell."""
        if check_fn is None:
            return True
        try:
            async with asyncio.timeout(self.config.login_timeout):
                return await check_fn(account, token)
        except Exception as exc:  # TimeoutError and the Webapp's failures: try again later
            failure = WebappUnavailable(
                f"Token {token.fingerprint} could not be checked ({type(exc).__name__})."
            )
            return self.failed(schedule, failure, self.clock.monotonic())

    def failed(
        self, schedule: Schedule, failure: LoginFailed, sent_at: float, *, counts: bool = True
    ) -> LoginFailed:
        """Record a failed login; unless it ``counts`` not, it arms the backoff and the breaker."""
        delay = 0.0
        if counts:
            delay = schedule.failed(failure, self.clock.monotonic(), self.rng)
        self.metrics.logins.labels(failure.kind).inc()
        log.warning(
            "token.login_failed",
            kind=failure.kind,
            details=failure.details,
            attempt=schedule.failures,
            retry_in_s=round(delay, 1),
            duration_ms=round((self.clock.monotonic() - sent_at) * 1000, 1),
        )
        return failure

    def _granted(
        self,
        schedule: Schedule,
        grant: Grant,
        sent_at: float,
        reason: str,
        keep: Callable[[Token], None],
    ) -> Token:
        token = Token(
            value=grant.token,
            generation=schedule.granted(),
            expires_at=sent_at + grant.lifetime,
            refresh_at=refresh_time(sent_at, grant.lifetime, self.config, self.rng),
        )
        # Kept first: the schedule says "logged in" now, and must never do so without a token.
        keep(token)
        self.metrics.logins.labels("ok").inc()
        if reason == "refresh":
            self.metrics.refreshes.inc()
        log.info(
            "token.refresh" if reason == "refresh" else "token.login",
            reason=reason,
            fingerprint=token.fingerprint,
            generation=token.generation,
            lifetime_s=round(grant.lifetime, 1),
            duration_ms=round((self.clock.monotonic() - sent_at) * 1000, 1),
        )
        return token
