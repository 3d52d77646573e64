"""The short soak: 30 seconds of ``tests.soak`` (``make soak`` runs ten minutes of the same).

One gateway process takes mixed traffic while the Webapp's tokens are revoked or expired every
few seconds and an operator rotates the password with ``rotate-password``; the tests below hold
the counts it reports against the expectations, never its timings. Run with ``pytest -s`` to see
the whole report (each failure message carries it too).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from .soak import RSS_GROWTH_BOUND, SoakReport, judge, run_soak

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="reads /proc"),
]

SECONDS = 30.0
SEED = 20240601  # the traffic mix is reproducible; the chaos follows the clock
# Far below what even a loaded CI machine serves in 30 s (some 15,000 on a quiet 2-CPU one).
MIN_SERVED = 1000


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> SoakReport:
    workdir = tmp_path_factory.mktemp("soak")
    soaked = asyncio.run(run_soak(SECONDS, workdir, seed=SEED))
    print(soaked.render())
    return soaked


def test_the_soak_served_traffic_through_revocations_and_expiries(report: SoakReport) -> None:
    """Every kind of request was answered, in the thousands, while chaos struck."""
    assert report.ledger.served > MIN_SERVED, report.render()
    assert set(report.ledger.requests) >= {"message", "upload", "slow upload", "download"}
    assert report.chaos.events >= 3, report.render()


def test_no_request_failed_that_the_webapp_did_not_fail(report: SoakReport) -> None:
    """No 5xx, no cut answer, no revocation that reached a client: every failure a client saw
    (none, in a healthy soak) was the Webapp's own answer."""
    assert report.ledger.unexplained == 0, report.render()
    assert report.gateway_5xx == 0, report.render()
    assert report.ledger.hidden_401s >= 1, report.render()  # revocations did hit requests


def test_each_revocation_expiry_or_refresh_costs_one_login(report: SoakReport) -> None:
    """However many requests a revocation hits, it causes one login (and refreshes one each); a
    password change that revokes the gateway's token counts as a revocation, and the logins
    ``rotate-password`` made are not the gateway's."""
    assert report.chaos.events - 1 <= report.logins <= report.login_budget, report.render()
    assert report.gateway_logins == report.logins, report.render()


def test_the_password_was_rotated_under_load(report: SoakReport) -> None:
    """``rotate-password``, run as an operator would while the traffic flowed, succeeded every
    time (twice at least, with a password change that revokes the gateway's token and one that
    does not), and the password file ends up holding the Webapp's password with no ``.next``
    beside it."""
    chaos = report.chaos
    assert chaos.rotations >= 2, report.render()
    assert chaos.rotation_failures == [], report.render()
    assert 1 <= chaos.revoking_rotations < chaos.rotations, report.render()
    assert report.password_changes == chaos.rotations, report.render()
    assert report.password_file_current, report.render()
    assert not report.password_next_left, report.render()


def test_no_descriptor_spool_file_or_task_is_left_behind(report: SoakReport) -> None:
    """Once the traffic stopped and idle connections closed, the gateway holds the descriptors
    and asyncio tasks it held before it, and no spool file."""
    start, end = report.start, report.end
    assert end.fds.kinds["spool files"] + report.spool_entries == 0, report.render()
    assert end.fds.total == start.fds.total, report.render()
    assert start.tasks is not None, report.render()
    assert end.tasks == start.tasks, report.render()


def test_memory_stays_flat(report: SoakReport) -> None:
    """The gateway's RSS grows less than the bound between the end of the warm-up and the end."""
    assert report.rss_growth < RSS_GROWTH_BOUND, report.render()


def test_the_gateway_stops_cleanly_after_the_soak(report: SoakReport) -> None:
    """SIGTERM after the soak: exit status 0, and no error in the gateway's log."""
    assert report.exit_status == 0, report.render()
    assert not [p for p in report.log_problems if not p.startswith("warning")], report.render()


@pytest.mark.parametrize(
    ("expected", "outcome", "webapp", "replayable", "verdict"),
    [
        (201, 201, [201], True, "ok"),
        (201, 201, [401, 201], True, "ok"),  # a revocation hidden by the replay
        (200, 200, [], True, "ok"),  # answered by the gateway itself (a client login)
        (201, 401, [401, 401], True, "webapp"),  # the replay was refused too
        (200, 401, [401], False, "webapp"),  # the API key refused: passed on without a replay
        (201, 429, [429], True, "webapp"),
        (201, 401, [401], True, "a 401 passed on without a replay"),
        (201, 503, [], True, "the gateway answered 503"),
        (201, 502, [201], True, "the gateway answered 502"),
        (
            200,
            "client error: ServerDisconnectedError",
            [200],
            True,
            "client error: ServerDisconnectedError",
        ),
    ],
)
def test_a_failure_is_explained_only_by_the_webapps_own_answer(
    expected: int, outcome: int | str, webapp: list[int], replayable: bool, verdict: str
) -> None:
    assert judge(expected, outcome, webapp, replayable=replayable) == verdict
