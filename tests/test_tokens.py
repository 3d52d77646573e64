"""The token pool on its own: a scripted login function and a fake clock, no sockets."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
import structlog

from gateway.bearer import Account, SystemClock, Token
from gateway.errors import TokenUnavailable
from gateway.login import BadCredentials, Grant, PasswordChangeRequired, WebappUnavailable
from gateway.metrics import Metrics
from gateway.refresher import Refresher
from gateway.schedule import Breaker, Readiness
from gateway.secret import Secret
from gateway.tokens import TokenPool

from .conftest import TOKEN_CONFIG as CONFIG
from .conftest import Logs, until

ACCOUNT = Account("https://webapp:443", "admin")
WEEK = 7 * 24 * 3600.0


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_800_000_000.0 + self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Logins:
    """A login function whose outcomes are scripted and whose calls are counted."""

    def __init__(self, lifetime: float = WEEK) -> None:
        self.calls = 0
        self.lifetime = lifetime
        self.failures: list[Exception] = []
        self.gate: asyncio.Event | None = None

    async def __call__(self, account: Account) -> Grant:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.failures:
            raise self.failures.pop(0)
        return Grant(Secret(f"token-{self.calls}"), self.lifetime)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def logins() -> Logins:
    return Logins()


@pytest.fixture
async def pool(logins: Logins, clock: FakeClock) -> AsyncIterator[TokenPool]:
    pool = TokenPool(logins, CONFIG, Metrics(), clock, random.Random(7))
    yield pool
    await pool.close()


async def settle() -> None:
    """Let tasks the pool started run to their next wait."""
    for _ in range(5):
        await asyncio.sleep(0)


async def after_retry(pool: TokenPool) -> Token:
    """The token from the retry that a caller starts once the backoff is over: that caller gets
    its 503 at once, without waiting for the login."""
    with pytest.raises(TokenUnavailable):
        await pool.token(ACCOUNT)
    await settle()
    return await pool.token(ACCOUNT)


async def test_a_thousand_concurrent_callers_on_a_cold_pool_cause_one_login(
    pool: TokenPool, logins: Logins
) -> None:
    logins.gate = asyncio.Event()
    callers = [asyncio.ensure_future(pool.token(ACCOUNT)) for _ in range(1000)]
    await settle()
    logins.gate.set()
    tokens = await asyncio.gather(*callers)
    assert logins.calls == 1
    assert {t.value.reveal() for t in tokens} == {"token-1"}
    assert {t.generation for t in tokens} == {1}


async def test_a_caller_that_hangs_up_does_not_cancel_the_login(
    pool: TokenPool, logins: Logins
) -> None:
    logins.gate = asyncio.Event()
    impatient = asyncio.ensure_future(pool.token(ACCOUNT))
    await settle()
    impatient.cancel()
    await settle()
    logins.gate.set()
    token = await pool.token(ACCOUNT)
    assert impatient.cancelled()
    assert token.value.reveal() == "token-1"
    assert logins.calls == 1


async def test_invalidating_the_pooled_token_makes_the_next_caller_log_in(
    pool: TokenPool, logins: Logins
) -> None:
    first = await pool.token(ACCOUNT)
    assert pool.invalidate(ACCOUNT, first) is True
    second = await pool.token(ACCOUNT)
    assert (second.generation, second.value.reveal()) == (2, "token-2")
    assert logins.calls == 2


class TickingClock(FakeClock):
    """A clock that moves a microsecond each time it is read, once ``tick`` is set."""

    tick = 0.0

    def monotonic(self) -> float:
        self.now += self.tick
        return self.now


async def test_a_token_rejected_as_it_expires_is_invalidated_without_an_error(
    logins: Logins,
) -> None:
    """The pooled token expires between the look-up and the removal: no KeyError (a 500 for
    the request whose 401 was being handled), and the next caller logs in."""
    clock = TickingClock()
    pool = TokenPool(logins, CONFIG, Metrics(), clock, random.Random(1))
    try:
        token = await pool.token(ACCOUNT)
        # Alive at the look-up's reading of the clock, expired at the removal's.
        clock.now, clock.tick = token.expires_at - 1.5e-6, 1e-6
        assert pool.invalidate(ACCOUNT, token) is True
        clock.tick = 0.0
        assert (await pool.token(ACCOUNT)).generation == 2
    finally:
        await pool.close()


async def test_a_late_rejection_of_an_old_token_keeps_the_new_one(
    pool: TokenPool, logins: Logins
) -> None:
    old = await pool.token(ACCOUNT)
    pool.invalidate(ACCOUNT, old)
    new = await pool.token(ACCOUNT)
    assert pool.invalidate(ACCOUNT, old) is False
    assert await pool.token(ACCOUNT) is new
    assert logins.calls == 2


async def test_two_hundred_rejections_of_one_token_cause_one_login(
    pool: TokenPool, logins: Logins
) -> None:
    stale = await pool.token(ACCOUNT)
    logins.gate = asyncio.Event()

    async def rejected() -> int:
        pool.invalidate(ACCOUNT, stale)
        return (await pool.token(ACCOUNT)).generation

    callers = [asyncio.ensure_future(rejected()) for _ in range(200)]
    await settle()
    logins.gate.set()
    assert set(await asyncio.gather(*callers)) == {2}
    assert logins.calls == 2


async def test_a_token_due_for_refresh_keeps_serving_while_the_refresh_runs(
    pool: TokenPool, logins: Logins, clock: FakeClock
) -> None:
    old = await pool.token(ACCOUNT)
    clock.advance(old.refresh_at - clock.now)
    logins.gate = asyncio.Event()
    assert await pool.token(ACCOUNT) is old
    assert await pool.token(ACCOUNT) is old
    await settle()
    assert logins.calls == 2  # one refresh, however many callers saw the token due
    logins.gate.set()
    await settle()
    assert (await pool.token(ACCOUNT)).generation == 2
    assert pool.metrics.refreshes._value.get() == 1


async def test_an_expired_token_is_never_handed_out(
    pool: TokenPool, logins: Logins, clock: FakeClock
) -> None:
    old = await pool.token(ACCOUNT)
    clock.advance(old.expires_at - clock.now)
    new = await pool.token(ACCOUNT)
    assert new.generation == 2
    assert logins.calls == 2


async def test_the_lifetime_counts_from_when_the_login_was_sent(
    logins: Logins, clock: FakeClock
) -> None:
    class SlowLogin(Logins):
        async def __call__(self, account: Account) -> Grant:
            clock.advance(30)  # the login took 30 s
            return await super().__call__(account)

    pool = TokenPool(SlowLogin(lifetime=100.0), CONFIG, Metrics(), clock, random.Random(1))
    sent = clock.now
    token = await pool.token(ACCOUNT)
    assert token.expires_at == sent + 100.0
    await pool.close()


async def test_a_failed_login_gives_callers_a_fast_503_until_the_backoff_ends(
    pool: TokenPool, logins: Logins, clock: FakeClock
) -> None:
    logins.failures = [BadCredentials("The Webapp refused the gateway's credentials (401).")]
    with pytest.raises(TokenUnavailable) as first:
        await pool.token(ACCOUNT)
    for _ in range(50):
        with pytest.raises(TokenUnavailable) as fast:
            await pool.token(ACCOUNT)
    assert logins.calls == 1  # no caller triggers a login while the pool backs off
    assert first.value.status == 503
    assert "refused the gateway's credentials" in fast.value.details
    assert "WA_PASSWORD" in fast.value.details
    assert 1 <= int(fast.value.headers()["Retry-After"]) <= 1  # first backoff is 0.5 to 1 s
    clock.advance(1.0)
    assert (await after_retry(pool)).generation == 1
    assert logins.calls == 2


async def test_callers_never_wait_for_a_retry_under_way(
    pool: TokenPool, logins: Logins, clock: FakeClock
) -> None:
    """Against a Webapp whose logins hang, a wait for the retry would last the login timeout."""
    logins.failures = [WebappUnavailable("answered 503")]
    with pytest.raises(TokenUnavailable):
        await pool.token(ACCOUNT)
    clock.advance(CONFIG.backoff_initial)
    logins.gate = asyncio.Event()  # the retry hangs
    for _ in range(20):
        with pytest.raises(TokenUnavailable) as raised:
            await pool.token(ACCOUNT)
        await settle()
    assert logins.calls == 2  # the one retry, started by the first caller after the backoff
    assert raised.value.headers()["Retry-After"] == "1"
    logins.gate.set()
    await settle()
    assert (await pool.token(ACCOUNT)).generation == 1


@pytest.mark.parametrize(
    "failure",
    [
        BadCredentials("refused (401)"),
        PasswordChangeRequired("needs a new password (code 1024)"),
        WebappUnavailable("answered 503"),
    ],
    ids=lambda f: f.kind,
)
async def test_each_kind_of_login_failure_is_counted_and_named(
    pool: TokenPool, logins: Logins, failure: Exception
) -> None:
    logins.failures = [failure]
    with pytest.raises(TokenUnavailable) as raised:
        await pool.token(ACCOUNT)
    assert str(failure) in raised.value.details
    kind = failure.kind  # type: ignore[attr-defined]
    assert pool.metrics.logins.labels(kind)._value.get() == 1
    readiness = pool.readiness(ACCOUNT)
    assert not readiness.ready
    assert kind in readiness.reason


async def test_a_login_that_hangs_past_the_timeout_fails_as_unavailable(
    logins: Logins, clock: FakeClock
) -> None:
    logins.gate = asyncio.Event()  # never set
    pool = TokenPool(logins, replace(CONFIG, login_timeout=0.05), Metrics(), clock)
    with pytest.raises(TokenUnavailable) as raised:
        await pool.token(ACCOUNT)
    assert "longer than 0.05 s" in raised.value.details
    assert pool.metrics.logins.labels("webapp_unavailable")._value.get() == 1
    await pool.close()


async def test_a_crashing_login_function_still_leaves_a_retry_schedule(
    pool: TokenPool, logins: Logins, clock: FakeClock
) -> None:
    logins.failures = [ZeroDivisionError("bug")]
    with pytest.raises(TokenUnavailable):
        await pool.token(ACCOUNT)
    clock.advance(CONFIG.backoff_initial)
    assert (await after_retry(pool)).generation == 1


class BrokenCounter:
    """A metric whose recording fails: a bug while a successful login is recorded."""

    def labels(self, result: str) -> BrokenCounter:
        if result == "ok":
            raise RuntimeError("a bug in recording")
        return self

    def inc(self) -> None: ...


@pytest.fixture
async def unrecordable(logins: Logins, clock: FakeClock) -> AsyncIterator[TokenPool]:
    """A pool whose successful logins fail to be recorded (their metric raises)."""
    metrics = Metrics()
    metrics.logins = BrokenCounter()  # type: ignore[assignment]
    pool = TokenPool(logins, CONFIG, metrics, clock)
    yield pool
    await pool.close()


async def test_a_bug_while_a_login_is_recorded_keeps_the_token_and_starts_no_login_loop(
    unrecordable: TokenPool, logins: Logins, logs: Logs
) -> None:
    """The token is kept before anything about it is recorded: the schedule, which says "logged
    in" by then, never does so without one, so the background task starts no login after it."""
    unrecordable.start([ACCOUNT])
    await until(lambda: logs.named("token.login_crashed"))
    for _ in range(20):
        await settle()
    assert logins.calls == 1
    assert unrecordable.seconds_left(ACCOUNT) > 0


async def test_a_caller_waiting_for_a_login_whose_recording_failed_gets_its_token(
    unrecordable: TokenPool, logins: Logins, logs: Logs
) -> None:
    token = await unrecordable.token(ACCOUNT)
    assert token.generation == 1
    assert logins.calls == 1
    assert logs.named("token.login_crashed")


async def test_close_returns_after_the_background_task_crashed(
    logins: Logins, clock: FakeClock, logs: Logs
) -> None:
    """The crash is logged when it happens; closing the pool must not raise it again (and skip
    closing what comes after it)."""

    def broken(_now: float) -> float:
        raise RuntimeError("a bug in the refresher")

    pool = TokenPool(logins, CONFIG, Metrics(), clock)
    pool._refresher = Refresher(broken, clock)  # the task, calling a broken pool
    pool.start([ACCOUNT])
    await until(lambda: logs.named("token.refresher_crashed"))
    await pool.close()


async def test_readiness_follows_the_pool(pool: TokenPool, logins: Logins) -> None:
    assert pool.readiness(ACCOUNT) == Readiness(False, "no token yet: the first login is under way")
    token = await pool.token(ACCOUNT)
    assert pool.readiness(ACCOUNT).ready
    pool.invalidate(ACCOUNT, token)
    assert pool.readiness(ACCOUNT).reason == "last login succeeded"


async def test_the_background_task_logs_in_at_start_and_refreshes_before_expiry() -> None:
    logins = Logins(lifetime=0.4)
    pool = TokenPool(logins, CONFIG, Metrics(), SystemClock())
    pool.start([ACCOUNT])
    try:
        async with asyncio.timeout(5):
            while logins.calls < 4:
                await asyncio.sleep(0.02)
        token = await pool.token(ACCOUNT)
        # Nobody asked for a token until now, yet it was refreshed before each expiry.
        assert token.generation >= 3
        assert pool.metrics.refreshes._value.get() >= 2
    finally:
        await pool.close()


async def test_the_background_task_retries_failed_logins_without_any_caller() -> None:
    logins = Logins()
    logins.failures = [WebappUnavailable("down")] * 3
    config = replace(CONFIG, backoff_initial=0.02, backoff_max=0.05)
    pool = TokenPool(logins, config, Metrics(), SystemClock())
    pool.start([ACCOUNT])
    try:
        async with asyncio.timeout(5):
            while not pool.readiness(ACCOUNT).ready:
                await asyncio.sleep(0.01)
    finally:
        await pool.close()
    assert logins.calls == 4


async def test_closing_the_pool_stops_a_login_in_flight(logins: Logins) -> None:
    logins.gate = asyncio.Event()
    pool = TokenPool(logins, CONFIG, Metrics(), SystemClock())
    pool.start([ACCOUNT])
    await settle()
    assert logins.calls == 1
    await pool.close()
    assert all(task.done() for task in asyncio.all_tasks() if task is not asyncio.current_task())


async def refuse_fresh_tokens(pool: TokenPool, times: int) -> Token:
    """``times`` fresh tokens in a row, each refused by the Webapp at once; the last one."""
    for _ in range(times):
        token = await pool.token(ACCOUNT)
        pool.report(ACCOUNT, token, accepted=False)
    return token


async def test_one_refused_fresh_token_is_replaced_without_a_backoff(
    pool: TokenPool, logins: Logins
) -> None:
    """A revocation that races a login explains one refusal: log in again at once."""
    token = await refuse_fresh_tokens(pool, 1)
    for _ in range(20):  # twenty replays refused with the same fresh token: one refusal
        pool.report(ACCOUNT, token, accepted=False)
    assert pool.readiness(ACCOUNT).ready
    assert (await pool.token(ACCOUNT)).generation == 2
    assert pool.metrics.logins.labels("token_rejected")._value.get() == 0


async def test_fresh_tokens_refused_twice_in_a_row_count_as_a_failed_login(
    pool: TokenPool, logins: Logins
) -> None:
    await refuse_fresh_tokens(pool, 2)
    readiness = pool.readiness(ACCOUNT)
    assert not readiness.ready
    assert "token_rejected, 1 in a row" in readiness.reason
    assert pool.metrics.logins.labels("token_rejected")._value.get() == 1


async def test_refusals_of_an_older_token_are_not_counted(pool: TokenPool) -> None:
    old = await pool.token(ACCOUNT)
    pool.invalidate(ACCOUNT, old)
    await pool.token(ACCOUNT)
    pool.report(ACCOUNT, old, accepted=False)
    assert pool.readiness(ACCOUNT).ready


async def test_the_breaker_opens_after_failures_in_a_row_and_half_opens_after_the_backoff(
    pool: TokenPool, logins: Logins, clock: FakeClock
) -> None:
    logins.failures = [WebappUnavailable("down")] * 3
    for attempt in range(3):
        assert pool.breaker(ACCOUNT) is Breaker.CLOSED
        with pytest.raises(TokenUnavailable):
            await pool.token(ACCOUNT)  # the first caller's login, then each retry's caller
        await settle()
        if attempt < 2:
            clock.advance(CONFIG.backoff_max)
    assert pool.breaker(ACCOUNT) is Breaker.OPEN
    assert "login breaker open" in pool.readiness(ACCOUNT).reason
    clock.advance(CONFIG.backoff_max)
    assert pool.breaker(ACCOUNT) is Breaker.HALF_OPEN
    await after_retry(pool)  # the trial login succeeds
    assert pool.breaker(ACCOUNT) is Breaker.CLOSED
    assert pool.readiness(ACCOUNT).ready


async def test_refused_fresh_tokens_open_the_breaker_until_a_token_is_accepted(
    logins: Logins, clock: FakeClock
) -> None:
    verdicts = [False, False, True]  # what the Webapp says of each retry's token when checked

    async def check(account: Account, token: Token) -> bool:
        return verdicts.pop(0)

    pool = TokenPool(logins, CONFIG, Metrics(), clock, random.Random(7), check)
    await refuse_fresh_tokens(pool, 2)  # the first failure
    for _ in range(2):  # two more, each after the backoff of the one before
        clock.advance(CONFIG.backoff_max)
        with pytest.raises(TokenUnavailable):
            await after_retry(pool)
    assert pool.breaker(ACCOUNT) is Breaker.OPEN
    clock.advance(CONFIG.backoff_max)
    await after_retry(pool)
    assert pool.breaker(ACCOUNT) is Breaker.CLOSED
    assert pool.readiness(ACCOUNT).ready
    await pool.close()


async def test_while_refused_tokens_back_off_callers_get_fast_503s(
    pool: TokenPool, logins: Logins
) -> None:
    await refuse_fresh_tokens(pool, 2)
    for _ in range(20):
        with pytest.raises(TokenUnavailable):
            await pool.token(ACCOUNT)
    assert logins.calls == 2


async def test_the_login_task_does_not_inherit_the_callers_log_context(
    pool: TokenPool,
) -> None:
    seen: list[object] = []

    async def login(account: Account) -> Grant:
        seen.append(structlog.contextvars.get_contextvars().get("request_id"))
        return Grant(Secret("t"), WEEK)

    pool.login_fn = login
    with structlog.contextvars.bound_contextvars(request_id="caller-1"):
        await pool.token(ACCOUNT)
    assert seen == [None]


async def test_after_refused_tokens_the_pool_checks_a_fresh_one_by_itself() -> None:
    """Readiness 503 takes a gateway out of rotation, so no request would ever show that the
    Webapp accepts tokens again: the background task logs in and checks the token itself."""
    logins = Logins()
    verdicts = [False, True]  # the Webapp refuses the first checked token, accepts the second

    async def check(account: Account, token: Token) -> bool:
        return verdicts.pop(0)

    config = replace(CONFIG, backoff_initial=0.02, backoff_max=0.05)
    pool = TokenPool(logins, config, Metrics(), SystemClock(), check_fn=check)
    pool.start([ACCOUNT])
    try:
        await refuse_fresh_tokens(pool, 2)  # two requests' replays were refused
        assert not pool.readiness(ACCOUNT).ready
        async with asyncio.timeout(5):
            while not pool.readiness(ACCOUNT).ready:
                await asyncio.sleep(0.01)
    finally:
        await pool.close()
    assert verdicts == []
    assert logins.calls == 4  # two refused by requests, one refused on its check, one accepted


FAST_BACKOFF = replace(CONFIG, backoff_initial=0.02, backoff_max=0.05)


class CheckThatCannotTell:
    """A token check that never gets an answer from the Webapp."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, account: Account, token: Token) -> bool:
        self.calls += 1
        raise ConnectionResetError("Webapp gone")


async def test_a_check_that_cannot_tell_keeps_the_pool_backing_off() -> None:
    logins, check = Logins(), CheckThatCannotTell()
    pool = TokenPool(logins, FAST_BACKOFF, Metrics(), SystemClock(), check_fn=check)
    pool.start([ACCOUNT])
    try:
        await refuse_fresh_tokens(pool, 2)
        await until(lambda: check.calls >= 3, within=5)
        readiness = pool.readiness(ACCOUNT)
    finally:
        await pool.close()
    assert not readiness.ready
    assert "could not be checked (ConnectionResetError)" in readiness.reason


async def test_a_request_accepted_while_checks_fail_ends_the_checks_for_good() -> None:
    """Checks that cannot tell keep the pool backing off; then a request's token is accepted:
    the pool is ready again and the background task stops logging in (no login loop)."""
    logins, check = Logins(), CheckThatCannotTell()
    pool = TokenPool(logins, FAST_BACKOFF, Metrics(), SystemClock(), check_fn=check)
    pool.start([ACCOUNT])
    try:
        await refuse_fresh_tokens(pool, 2)
        async with asyncio.timeout(5):
            while check.calls < 1:
                await asyncio.sleep(0.01)
            while True:  # a request, once the backoff lets it have a token
                with contextlib.suppress(TokenUnavailable):
                    token = await pool.token(ACCOUNT)
                    break
                await asyncio.sleep(0.01)
        pool.report(ACCOUNT, token, accepted=True)
        assert pool.readiness(ACCOUNT).ready
        settled = logins.calls
        await asyncio.sleep(0.3)  # many backoff periods: a stuck check would log in again
        assert logins.calls == settled
        assert pool.readiness(ACCOUNT).ready
    finally:
        await pool.close()


async def test_a_login_whose_token_expires_before_it_ends_is_a_failure(clock: FakeClock) -> None:
    class Slow(Logins):
        async def __call__(self, account: Account) -> Grant:
            clock.advance(2.0)  # the login took longer than the token lives
            return await super().__call__(account)

    pool = TokenPool(Slow(lifetime=1.0), CONFIG, Metrics(), clock)
    with pytest.raises(TokenUnavailable) as raised:
        await pool.token(ACCOUNT)
    assert "expired before the login ended" in raised.value.details
    assert pool.metrics.logins.labels("invalid_answer")._value.get() == 1
    await pool.close()
