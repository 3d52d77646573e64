"""A login to the Webapp as data: what it yields, how it can fail, and reading its answer.

:func:`parse_login` turns the Webapp's answer into a :class:`Grant` or raises the
:class:`LoginFailed` that names the cause, with no I/O; :mod:`gateway.webapp` does the talking and
:mod:`gateway.tokens` decides what a failure means for the pool (backoff, the breaker).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import cast

from .secret import Secret

_TOKEN = re.compile(r"[!-~]+")


@dataclass(frozen=True)
class Grant:
    """What a login yields: the token, and how long it lives from when the login was sent."""

    token: Secret
    lifetime: float


class LoginFailed(Exception):
    """A login that produced no token; ``kind`` names the cause for metrics, logs and callers."""

    kind = "error"
    advice = "See the gateway's log."

    def __init__(self, details: str) -> None:
        super().__init__(details)
        self.details = details


class BadCredentials(LoginFailed):
    """The Webapp refused the username or password (401 at login)."""

    kind = "bad_credentials"
    advice = "Check WA_USERNAME and WA_PASSWORD (or WA_PASSWORD_FILE)."


class PasswordChangeRequired(LoginFailed):
    """The Webapp wants the password changed before it issues a token."""

    kind = "password_change_required"
    advice = (
        "Run `wa-gateway rotate-password`, or set WA_PASSWORD_ROTATE_EVERY so that the gateway "
        "sets one itself (both keep it in WA_PASSWORD_FILE)."
    )


class WebappUnavailable(LoginFailed):
    """The Webapp could not be reached, timed out, or answered 5xx or 429."""

    kind = "webapp_unavailable"
    advice = "The gateway keeps retrying; check that the Webapp is up and reachable."


class InvalidLoginAnswer(LoginFailed):
    """The Webapp answered the login, but not with a usable token."""

    kind = "invalid_answer"
    advice = "The gateway keeps retrying; check the Webapp's version and clock."


class LoginRefused(InvalidLoginAnswer):
    """The Webapp turned the login down with a 4xx other than 401 and 429 (a new password
    against its rules, say): it answered, so it did not act on the login."""


class TokenRejected(LoginFailed):
    """The login succeeded, but the Webapp refused the new token at once."""

    kind = "token_rejected"
    advice = "The Webapp issues tokens it then refuses; check the Webapp and its user."


PASSWORD_CHANGE_REQUIRED = 1024
# The Date header has whole seconds: the Webapp's clock may be up to this much later than it says.
DATE_RESOLUTION = 1.0


def parse_login(status: int, date: str | None, body: bytes, local_now: float) -> Grant:
    """Read a login answer; raise the :class:`LoginFailed` that names the cause.

    The token's lifetime is ``expires_after`` minus the Webapp's ``Date`` when the answer has one,
    so a skewed local clock cannot make the gateway hold an expired token; without ``Date`` it is
    measured against ``local_now``. ``expires_after`` is read in both known formats
    (``2021-09-14 15:29:26+00:00`` and ``2018-03-01T15:29:26.000Z``); one without a zone is UTC.
    """
    document = _json_object(body)
    code = _error_code(document)
    if code == PASSWORD_CHANGE_REQUIRED:
        raise PasswordChangeRequired(
            f"The Webapp requires a new password before it issues tokens ({status}, code {code})."
        )
    if status == 401:
        raise BadCredentials(f"The Webapp refused the gateway's credentials ({status}).")
    if status == 429 or status >= 500:
        raise WebappUnavailable(f"The Webapp answered the login with {status}.")
    if 400 <= status < 500:
        raise LoginRefused(f"The Webapp answered the login with {status} (code {code}).")
    if not 200 <= status < 300:
        raise InvalidLoginAnswer(f"The Webapp answered the login with {status} (code {code}).")
    token, expires_after = _token_fields(document)
    expires_at = _parse_expiry(expires_after)
    server_now = _parse_http_date(date)
    if server_now is None:
        lifetime = expires_at - local_now
    else:
        lifetime = expires_at - server_now - DATE_RESOLUTION
    if lifetime <= 0:
        raise InvalidLoginAnswer("The Webapp issued a token that had already expired.")
    return Grant(Secret(token), lifetime)


def _json_object(body: bytes) -> dict[str, object] | None:
    try:
        document = json.loads(body)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError alike
        return None
    return cast(dict[str, object], document) if isinstance(document, dict) else None


def _error_code(document: dict[str, object] | None) -> int | None:
    errors = document.get("errors") if document else None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        code = errors[0].get("code")
        return code if isinstance(code, int) else None
    return None


def _token_fields(document: dict[str, object] | None) -> tuple[str, str]:
    if document is None:
        raise InvalidLoginAnswer("The Webapp answered the login with something other than JSON.")
    users = document.get("users")
    user = users[0] if isinstance(users, list) and users else None
    if not isinstance(user, dict):
        raise InvalidLoginAnswer("The Webapp's login answer has no users[0].")
    token, expires_after = user.get("token"), user.get("expires_after")
    if not isinstance(token, str) or not token:
        raise InvalidLoginAnswer("The Webapp's login answer has no token.")
    if not _TOKEN.fullmatch(token):  # it goes into a header: CR, LF or a space would break it
        raise InvalidLoginAnswer("The Webapp's token holds characters a header cannot carry.")
    if not isinstance(expires_after, str):
        raise InvalidLoginAnswer("The Webapp's login answer has no expires_after.")
    return token, expires_after


def _parse_expiry(text: str) -> float:
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:  # nothing of the answer is repeated: it is the Webapp's, not ours to echo
        raise InvalidLoginAnswer(
            "The Webapp's expires_after is not a date the gateway knows."
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _parse_http_date(date: str | None) -> float | None:
    if not date:
        return None
    try:
        moment = parsedate_to_datetime(date)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:  # the asctime form and "-0000": GMT (RFC 9110 5.6.7), not local
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
