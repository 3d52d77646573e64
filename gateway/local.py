"""Answers the gateway gives itself: client logins and logouts, health, readiness, metrics."""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime

from .errors import META, GatewayError, NotReady
from .responses import Response

JSON = "application/json"
# What the gateway tells clients about the tokens it hands out (they are never checked).
CLIENT_TOKEN_LIFETIME = 7 * 24 * 3600
EXPIRES_AFTER_FORMAT = "%Y-%m-%d %H:%M:%S+00:00"


def json_response(document: dict[str, object], status: int = 200) -> Response:
    """A JSON answer carrying the gateway's ``meta``."""
    return Response(
        body=json.dumps({**document, "meta": META}).encode(), status=status, content_type=JSON
    )


def client_login(now: float) -> Response:
    """Answer ``POST /v1/users/login`` the way the Webapp does, with a token of the gateway's own.

    Clients call the gateway without credentials, so any login succeeds; the token is random and
    never checked, since every forwarded request gets the pooled Webapp token instead.
    """
    expires = datetime.fromtimestamp(now + CLIENT_TOKEN_LIFETIME, UTC)
    user = {
        "token": secrets.token_urlsafe(32),
        "expires_after": expires.strftime(EXPIRES_AFTER_FORMAT),
    }
    return json_response({"users": [user]})


def client_logout() -> Response:
    """Answer ``POST /v1/users/logout`` without revoking anything: the pooled token is shared."""
    return json_response({})


def health() -> Response:
    """The process is alive."""
    return json_response({"status": "alive"})


def error_response(error: GatewayError) -> Response:
    """The answer to a failure: the Webapp's error format, the error's status and headers."""
    return Response(
        body=error.body(), status=error.status, content_type=JSON, headers=error.headers()
    )


def readiness(ready: bool, reason: str) -> Response:
    """200 when requests can be served, 503 with the reason otherwise."""
    if ready:
        return json_response({"status": "ready", "details": reason})
    return error_response(NotReady(reason))
