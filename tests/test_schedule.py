"""One account's login schedule on its own: pure state, no clock but the numbers passed in."""

from __future__ import annotations

import random

import pytest

from gateway.login import BadCredentials, TokenRejected, WebappUnavailable
from gateway.schedule import Breaker, Refusal, Schedule, backoff_delay, refresh_time

from .conftest import TOKEN_CONFIG as CONFIG

WEEK = 7 * 24 * 3600.0


def test_backoff_doubles_from_the_initial_delay_up_to_the_cap_with_jitter() -> None:
    rng = random.Random(3)
    for failures in range(1, 12):
        ceiling = min(30.0, 2.0 ** (failures - 1))
        delays = [backoff_delay(failures, CONFIG, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling / 4  # jittered, not fixed
    assert backoff_delay(10_000, CONFIG, rng) <= 30.0


def test_refresh_falls_between_the_margin_and_the_margin_plus_jitter() -> None:
    rng = random.Random(5)
    times = [refresh_time(0.0, WEEK, CONFIG, rng) for _ in range(500)]
    assert all(WEEK * 0.85 <= t <= WEEK * 0.9 for t in times)
    assert len(set(times)) > 400


def test_a_failure_arms_the_backoff_and_a_login_clears_it() -> None:
    schedule = Schedule(CONFIG)
    delay = schedule.failed(WebappUnavailable("down"), 100.0, random.Random(1))
    assert 0.5 <= delay <= 1.0
    assert schedule.failing
    assert schedule.due(None) == (100.0 + delay, "no_token")
    assert schedule.unavailable(100.0).retry_after == 1.0  # never less than a second
    assert schedule.granted() == 1
    assert (schedule.failures, schedule.last_failure, schedule.retry_at) == (0, None, 0.0)
    assert schedule.due(5000.0) == (5000.0, "refresh")


def test_the_unavailable_error_names_the_cause_and_the_wait() -> None:
    schedule = Schedule(CONFIG)
    schedule.failed(BadCredentials("The Webapp refused the password."), 0.0, random.Random(2))
    error = schedule.unavailable(0.0)
    assert "The Webapp refused the password." in error.details
    assert BadCredentials.advice in error.details
    assert error.details.endswith("Next attempt in 1 s.")


@pytest.mark.parametrize(
    ("failures", "now", "expected"),
    [
        (2, 0.0, Breaker.CLOSED),  # below the threshold, even during the backoff
        (3, 0.0, Breaker.OPEN),  # at the threshold, during the backoff
        (3, 1e9, Breaker.HALF_OPEN),  # the backoff ended: one trial
    ],
)
def test_the_breaker_follows_failures_in_a_row_and_the_backoff(
    failures: int, now: float, expected: Breaker
) -> None:
    schedule = Schedule(CONFIG)
    for _ in range(failures):
        schedule.failed(WebappUnavailable("down"), 0.0, random.Random(3))
    assert schedule.breaker(now) is expected


def test_refusals_count_once_per_token_and_only_for_the_newest() -> None:
    schedule = Schedule(CONFIG)
    first, second = schedule.granted(), schedule.granted()
    assert schedule.refused(first) is Refusal.STALE  # an older token
    assert schedule.refused(second) is Refusal.DROP  # one refusal: a revocation may explain it
    assert schedule.refused(second) is Refusal.STALE  # many replays waited for that token
    third = schedule.granted()
    assert schedule.refused(third) is Refusal.FAIL  # fresh tokens refused twice in a row
    assert schedule.needs_check
    assert schedule.due(None)[1] == "recheck"


def test_an_accepted_token_ends_the_refusals_and_their_failures() -> None:
    schedule = Schedule(CONFIG)
    schedule.refused(schedule.granted())
    schedule.refused(schedule.granted())
    schedule.failed(TokenRejected("refused at once"), 0.0, random.Random(4))
    token = schedule.granted()  # while tokens are refused, a login alone proves nothing
    assert schedule.failures == 1
    assert not schedule.readiness(True, 0.0).ready
    schedule.accepted(token - 1)  # an older token accepted proves nothing about this one
    assert schedule.needs_check
    schedule.accepted(token)
    assert (schedule.needs_check, schedule.refused_in_a_row, schedule.failures) == (False, 0, 0)
    assert schedule.readiness(True, 0.0).ready


def test_readiness_says_why_not() -> None:
    schedule = Schedule(CONFIG)
    assert schedule.readiness(False, 0.0).reason == "no token yet: the first login is under way"
    for _ in range(3):
        schedule.failed(WebappUnavailable("The Webapp is down."), 0.0, random.Random(5))
    reason = schedule.readiness(False, 0.0).reason
    assert reason == (
        "login failed (webapp_unavailable, 3 in a row, login breaker open): The Webapp is down."
    )
    schedule.granted()
    assert schedule.readiness(False, 0.0).reason == "last login succeeded"
