"""Reading the Webapp's login answer: pure, table-driven, every failure classified."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from gateway.login import (
    BadCredentials,
    InvalidLoginAnswer,
    LoginFailed,
    LoginRefused,
    PasswordChangeRequired,
    WebappUnavailable,
    parse_login,
)

NOW = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC).timestamp()
DATE = format_datetime(datetime.fromtimestamp(NOW, UTC), usegmt=True)
WEEK = 7 * 24 * 3600


def answer(token: object = "tok", expires_after: object = "2026-12-02 12:00:00+00:00") -> bytes:
    user: dict[str, object] = {}
    if token is not None:
        user["token"] = token
    if expires_after is not None:
        user["expires_after"] = expires_after
    return json.dumps({"users": [user], "meta": {"version": "v2.45.1"}}).encode()


def error(code: int) -> bytes:
    return json.dumps({"errors": [{"code": code, "title": "x"}]}).encode()


def test_a_normal_answer_gives_the_token_and_a_seven_day_lifetime() -> None:
    grant = parse_login(200, DATE, answer(), NOW)
    assert grant.token.reveal() == "tok"
    assert grant.lifetime == WEEK - 1  # the Date header's one-second resolution is held back


def test_the_iso_variant_of_expires_after_is_understood() -> None:
    grant = parse_login(200, DATE, answer(expires_after="2026-12-02T12:00:00.000Z"), NOW)
    assert grant.lifetime == WEEK - 1


def test_an_expiry_without_a_zone_is_read_as_utc() -> None:
    grant = parse_login(200, DATE, answer(expires_after="2026-12-02 12:00:00"), NOW)
    assert grant.lifetime == WEEK - 1


@pytest.mark.parametrize("skew", [-3 * 24 * 3600, -3600, 3600, 6 * 24 * 3600])
def test_the_lifetime_is_measured_on_the_webapps_clock_not_the_local_one(skew: int) -> None:
    # The Webapp's clock is `skew` seconds off ours: it dates everything accordingly.
    webapp_now = NOW + skew
    date = format_datetime(datetime.fromtimestamp(webapp_now, UTC), usegmt=True)
    expires = datetime.fromtimestamp(webapp_now + WEEK, UTC).strftime("%Y-%m-%d %H:%M:%S+00:00")
    grant = parse_login(200, date, answer(expires_after=expires), NOW)
    assert grant.lifetime == WEEK - 1


@pytest.fixture
def east_of_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A host whose local time is nine hours ahead of UTC."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize(
    "date",
    [
        "Wed, 25 Nov 2026 12:00:00 GMT",  # IMF-fixdate
        "Wednesday, 25-Nov-26 12:00:00 GMT",  # RFC 850
        "Wed Nov 25 12:00:00 2026",  # asctime: no zone, and GMT all the same
        "Wed, 25 Nov 2026 12:00:00 -0000",
    ],
)
@pytest.mark.usefixtures("east_of_utc")
def test_every_http_date_format_is_read_as_gmt_whatever_the_local_zone(date: str) -> None:
    """RFC 9110 section 5.6.7: recipients accept all three formats, all of them in GMT."""
    assert parse_login(200, date, answer(), NOW).lifetime == WEEK - 1


def test_without_a_date_header_the_local_clock_is_used() -> None:
    assert parse_login(200, None, answer(), NOW).lifetime == WEEK
    assert parse_login(200, "not a date", answer(), NOW).lifetime == WEEK


@pytest.mark.parametrize(
    ("status", "body", "failure"),
    [
        (401, error(1005), BadCredentials),
        (401, b"", BadCredentials),
        (400, error(1024), PasswordChangeRequired),
        (401, error(1024), PasswordChangeRequired),
        (500, error(1014), WebappUnavailable),
        (503, b"<html>", WebappUnavailable),
        (429, error(1015), WebappUnavailable),
        (403, error(1005), LoginRefused),
        (404, b"", LoginRefused),
        (400, error(1009), LoginRefused),
        (200, b"", InvalidLoginAnswer),
        (200, b"not json", InvalidLoginAnswer),
        (200, b"\xff\xfe", InvalidLoginAnswer),
        (200, b"[1, 2]", InvalidLoginAnswer),
        (200, b'{"users": []}', InvalidLoginAnswer),
        (200, b'{"users": ["x"]}', InvalidLoginAnswer),
        (200, answer(token=None), InvalidLoginAnswer),
        (200, answer(token=""), InvalidLoginAnswer),
        (200, answer(token=42), InvalidLoginAnswer),
        (200, answer(token="to\r\nken"), InvalidLoginAnswer),
        (200, answer(token="two words"), InvalidLoginAnswer),
        (200, answer(expires_after=None), InvalidLoginAnswer),
        (200, answer(expires_after=1700000000), InvalidLoginAnswer),
        (200, answer(expires_after="next tuesday"), InvalidLoginAnswer),
        (200, answer(expires_after="2026-11-25 11:00:00+00:00"), InvalidLoginAnswer),
        (200, answer(expires_after="2026-11-25 12:00:00+00:00"), InvalidLoginAnswer),
    ],
)
def test_every_unusable_answer_is_classified(
    status: int, body: bytes, failure: type[LoginFailed]
) -> None:
    with pytest.raises(failure) as raised:
        parse_login(status, DATE, body, NOW)
    assert type(raised.value) is failure
    assert raised.value.details


def test_failure_details_never_contain_the_token() -> None:
    with pytest.raises(InvalidLoginAnswer) as raised:
        parse_login(200, DATE, answer(token="s3cret-token", expires_after="garbage"), NOW)
    assert "s3cret-token" not in raised.value.details
