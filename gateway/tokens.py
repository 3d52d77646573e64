"""The token pool: the Webapp bearer tokens the gateway holds, and the logins that obtain them.

- Tokens (:mod:`gateway.bearer`) live in a cachetools ``TLRUCache`` keyed by :class:`Account`
  (Webapp URL and user), each evicted at its own expiry, so an expired token is never handed out.
- Each token carries a generation. :meth:`TokenPool.invalidate` drops a rejected token only while
  it is still the pooled one, so any number of 401s for one token cause one login, and a late 401
  for an old token never throws away a new one.
- At most one login per account is in flight. It runs in a task the pool owns; callers wait on it
  through ``asyncio.shield``, so a caller that hangs up cannot cancel it. :mod:`gateway.attempts`
  performs each login and records its outcome.
- A background task (:mod:`gateway.refresher`) refreshes each token before it expires
  (``refresh_before`` of its lifetime, minus jitter) while the old one keeps serving, and retries
  failed logins with capped exponential backoff and jitter. A request that finds its token due for
  refresh starts the refresh itself without waiting for it, covering a missed background slot.
- While logins fail and no token is held, callers get a fast :class:`TokenUnavailable` (503) with
  ``Retry-After`` and the cause; they never trigger a login of their own.
- What failures mean (backoff, the login circuit breaker, fresh tokens refused in a row) is decided
  by :mod:`gateway.schedule`; the pool reports them (:meth:`TokenPool.report`) and acts. Once fresh
  tokens are refused in a row, each trial login also checks the new token with ``check_fn``, so the
  pool recovers without traffic (which a gateway whose readiness says 503 does not get).
- :meth:`TokenPool.rotate` runs ``rotate_fn`` (a login that changes the password, see
  :mod:`gateway.rotation`) as the account's one login in flight; its token replaces the pooled
  one like a refresh's.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import random
from dataclasses import dataclass, field
from functools import partial

import structlog
from cachetools import TLRUCache

from .attempts import CheckFn, LoginAttempts, LoginFn
from .bearer import Account, Clock, SystemClock, Token
from .config import TokenConfig
from .log import log_crash
from .login import LoginFailed, TokenRejected
from .metrics import Metrics
from .refresher import Refresher
from .schedule import Breaker, Readiness, Refusal, Schedule

log = structlog.get_logger("gateway.tokens")


@dataclass(eq=False)
class _Slot:
    """One account's place in the pool: its login schedule and the login in flight."""

    account: Account
    schedule: Schedule
    login: asyncio.Task[Token | LoginFailed] | None = None


@dataclass(eq=False)
class TokenPool:
    """Tokens for any number of accounts, obtained with ``login`` and kept fresh.

    ``config``, ``metrics``, ``clock``, ``rng`` and ``maxsize`` are read once, at construction
    (the cache, the schedules and the login attempts keep them); the login and check functions
    are read at each use.
    """

    login_fn: LoginFn
    config: TokenConfig
    metrics: Metrics
    clock: Clock = field(default_factory=SystemClock)
    rng: random.Random = field(default_factory=random.Random)
    check_fn: CheckFn | None = None
    maxsize: int = 64
    # A login that also changes the password (see gateway.rotation); rotate() needs it.
    rotate_fn: LoginFn | None = None

    def __post_init__(self) -> None:
        self._tokens: TLRUCache[Account, Token] = TLRUCache(
            maxsize=self.maxsize,
            ttu=lambda _key, token, _now: token.expires_at,
            timer=self.clock.monotonic,
        )
        self._slots: dict[Account, _Slot] = {}
        self._attempts = LoginAttempts(self.config, self.metrics, self.clock, self.rng)
        self._refresher = Refresher(self._start_due_logins, self.clock)

    # --- the request path ------------------------------------------------------------------------

    async def token(self, account: Account) -> Token:
        """A valid token for ``account``, logging in first if the pool holds none.

        Raises :class:`~gateway.errors.TokenUnavailable` while logins fail.
        """
        slot = self._slot(account)
        schedule = slot.schedule
        now = self.clock.monotonic()
        token = self._tokens.get(account)
        if token is not None:
            if now >= token.refresh_at and now >= schedule.retry_at:
                self._start_login(slot, "refresh")
            return token
        self._fail_fast(slot, now)
        outcome = await asyncio.shield(self._start_login(slot, "no_token"))
        if isinstance(outcome, LoginFailed) and outcome is not schedule.last_failure:
            # The login joined was a rotation, whose failure does not count: a plain one may work.
            outcome = await asyncio.shield(self._start_login(slot, "no_token"))
        if isinstance(outcome, LoginFailed):
            raise schedule.unavailable(self.clock.monotonic())
        return outcome

    def raise_if_unavailable(self, account: Account) -> None:
        """Raise the :class:`~gateway.errors.TokenUnavailable` that :meth:`token` would raise
        now: so that a caller can refuse before it receives a large body."""
        if account not in self._tokens:
            self._fail_fast(self._slot(account), self.clock.monotonic())

    def report(self, account: Account, token: Token, *, accepted: bool) -> None:
        """Tell the pool whether the Webapp accepted ``token`` (401 or not; an answer that
        cannot tell, see :func:`gateway.verdicts.token_verdict`, is not reported).

        A refused token that is the newest one was issued for this very request's replay. It is
        dropped, so that the next caller logs in afresh; once fresh tokens are refused in a row,
        each further one counts as a failed login (see :meth:`Schedule.refused`).
        """
        slot = self._slots.get(account)
        if slot is None:
            return
        if accepted:
            slot.schedule.accepted(token.generation)
            return
        refusal = slot.schedule.refused(token.generation)
        if refusal is Refusal.STALE:
            return
        self.invalidate(account, token)
        if refusal is Refusal.FAIL:
            failure = TokenRejected(f"The Webapp refused token {token.fingerprint} at once.")
            self._attempts.failed(slot.schedule, failure, self.clock.monotonic())
            self._refresher.wake()  # the background task retries at the new time

    async def rotate(self, account: Account) -> Token | LoginFailed:
        """Log in for ``account`` with ``rotate_fn``, once no other login is in flight; the new
        token replaces the pooled one like a refresh's."""
        if self.rotate_fn is None:
            raise RuntimeError("TokenPool.rotate() needs a rotate_fn")
        slot = self._slot(account)
        while slot.login is not None:  # one login at a time: wait for the one under way
            await asyncio.shield(slot.login)
        return await asyncio.shield(self._start_login(slot, "rotate"))

    def invalidate(self, account: Account, rejected: Token) -> bool:
        """Forget ``rejected`` if it is still the pooled token; True if it was."""
        # One reading of the clock for both: cachetools raises for an item that expires between.
        with self._tokens.timer:
            current = self._tokens.get(account)
            if current is None or current.generation != rejected.generation:
                return False
            del self._tokens[account]
        log.info(
            "token.invalidated", fingerprint=rejected.fingerprint, generation=rejected.generation
        )
        self._refresher.wake()
        return True

    # --- state for readiness and metrics ---------------------------------------------------------

    def readiness(self, account: Account) -> Readiness:
        """Ready while a usable token is held or the last login succeeded."""
        holding = account in self._tokens
        return self._slot(account).schedule.readiness(holding, self.clock.monotonic())

    def breaker(self, account: Account) -> Breaker:
        """The login circuit breaker's state."""
        return self._slot(account).schedule.breaker(self.clock.monotonic())

    def seconds_left(self, account: Account) -> float:
        """Seconds until the pooled token of ``account`` expires; 0 without one."""
        token = self._tokens.get(account)
        return 0.0 if token is None else max(0.0, token.expires_at - self.clock.monotonic())

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self, accounts: list[Account]) -> None:
        """Log in for ``accounts`` now and keep their tokens fresh in the background."""
        for account in accounts:
            self._slot(account)
        self._refresher.start()

    async def close(self) -> None:
        """Stop the background task and any login in flight."""
        tasks = [self._refresher.task, *(slot.login for slot in self._slots.values())]
        running = [task for task in tasks if task is not None]
        for task in running:
            task.cancel()
        # Their crashes are logged already; a cancellation of close() itself goes through.
        await asyncio.gather(*running, return_exceptions=True)

    # --- internals -------------------------------------------------------------------------------

    def _slot(self, account: Account) -> _Slot:
        slot = self._slots.get(account)
        if slot is None:
            slot = self._slots[account] = _Slot(account, Schedule(self.config))
        return slot

    def _fail_fast(self, slot: _Slot, now: float) -> None:
        """While logins fail, raise at once for a caller without a token. Retries are the
        background task's; a caller that finds the backoff over starts one (covering a missed
        background slot) but waits for none: against a Webapp that hangs, that wait would last
        GATEWAY_LOGIN_TIMEOUT."""
        schedule = slot.schedule
        if schedule.failing:
            if now >= schedule.retry_at:
                self._start_login(slot, schedule.retry_reason)
            raise schedule.unavailable(now)

    def _start_login(self, slot: _Slot, reason: str) -> asyncio.Task[Token | LoginFailed]:
        if slot.login is None:
            # A context of its own: the login serves every caller, not the request that started it.
            slot.login = asyncio.get_running_loop().create_task(
                self._login(slot, reason), context=contextvars.Context()
            )
        return slot.login

    async def _login(self, slot: _Slot, reason: str) -> Token | LoginFailed:
        try:
            login = self.rotate_fn if reason == "rotate" and self.rotate_fn else self.login_fn
            outcome = await self._attempts.login(
                login, slot.account, slot.schedule, reason, keep=partial(self._keep, slot.account)
            )
            if isinstance(outcome, Token) and reason == "recheck":
                outcome = await self._check(slot, outcome) or outcome
        except Exception as exc:  # a bug while a login was recorded: never a login per wake-up
            log_crash("token.login_crashed", exc)
            failure = LoginFailed(f"The login crashed: {type(exc).__name__}.")
            kept = self._tokens.get(slot.account)
            if kept is None:
                self._attempts.failed(slot.schedule, failure, self.clock.monotonic())
            return kept or failure
        else:
            return outcome
        finally:
            slot.login = None
            self._refresher.wake()  # the slot is free, and a failure moved the next retry

    def _keep(self, account: Account, token: Token) -> None:
        self._tokens[account] = token

    async def _check(self, slot: _Slot, token: Token) -> LoginFailed | None:
        """Ask the Webapp whether it accepts ``token`` now, so that a gateway taken out of
        rotation by its readiness (which no request then reaches) finds out by itself; the
        failure if it does not (or cannot tell), else None. Without ``check_fn``, accepted."""
        accepted = await self._attempts.check(self.check_fn, slot.account, slot.schedule, token)
        if isinstance(accepted, LoginFailed):
            return accepted
        self.report(slot.account, token, accepted=accepted)
        return None if accepted else slot.schedule.last_failure

    def _start_due_logins(self, now: float) -> float:
        """Start every login that is due; return when the next one will be."""
        next_due = math.inf
        for slot in list(self._slots.values()):
            if slot.login is not None:
                continue
            token = self._tokens.get(slot.account)
            due, reason = slot.schedule.due(None if token is None else token.refresh_at)
            if due <= now:
                self._start_login(slot, reason)
            else:
                next_due = min(next_due, due)
        return next_due
