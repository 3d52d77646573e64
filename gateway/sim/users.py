"""Accounts: who a request is, password changes and revocation, the user-management endpoints.

The choices the sources leave open (403 for a non-admin, the kept admin account, revoking on a
password change) are described on ``Simulator``.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from .answers import (
    ApiError,
    acceptable_password,
    access_denied,
    answer,
    not_found,
    read_json,
    string_field,
)
from .exchange import EXCHANGE, Exchange

if TYPE_CHECKING:
    from ..simulator import Simulator

_APIKEY_ENDPOINTS = frozenset(
    {("GET", "/v1/health"), ("GET", "/metrics"), ("GET", "/v1/stats/app"), ("GET", "/v1/stats/db")}
)


@dataclass(frozen=True)
class TokenRecord:
    """A valid token's owner and expiry (simulator-clock epoch seconds, whole)."""

    username: str
    expires_at: float


def authenticate(sim: Simulator, request: web.Request, exchange: Exchange) -> None:
    """Admit a secured request or raise 401; records who made it in ``exchange``."""
    if sim.reject_all_tokens:
        raise access_denied("The token was rejected")
    scheme, credential = exchange.record.auth_scheme, exchange.record.credential
    if scheme == "bearer" and credential is not None:
        record = sim.tokens.get(credential)
        if record is None:
            raise access_denied("Invalid or revoked token")
        if record.expires_at <= sim.now():
            del sim.tokens[credential]
            raise access_denied("The token has expired")
        exchange.user, exchange.token = record.username, credential
        return
    if scheme == "apikey" and credential is not None and sim.api_key is not None:
        method = "GET" if request.method == "HEAD" else request.method  # the GET's headers
        if (method, request.path) not in _APIKEY_ENDPOINTS:
            raise access_denied("The API key is not accepted on this endpoint")
        # aiohttp hands bytes that are not UTF-8 over as surrogates, which encode() refuses.
        if not hmac.compare_digest(
            credential.encode(errors="surrogateescape"), sim.api_key.encode()
        ):
            raise access_denied("Invalid API key")
        return
    raise access_denied("A bearer token is required")


def revoke_user(tokens: dict[str, TokenRecord], name: str | None) -> None:
    """Revoke every token of one user (of none, for None)."""
    for token, record in list(tokens.items()):
        if record.username == name:
            del tokens[token]


def change_password(sim: Simulator, name: str, password: str) -> None:
    """Apply an accepted password change made through the API (login or ``PUT``)."""
    sim.users[name] = password
    sim.password_changes += 1
    if sim.password_change_revokes:
        revoke_user(sim.tokens, name)


class Users:
    """The ``/v1/users`` endpoints (but for login and logout), for the admin user only."""

    def __init__(self, sim: Simulator) -> None:
        self._sim = sim

    async def create(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/users``."""
        self._require_admin(request)
        body = await read_json(request)
        name = string_field(body, "username")
        password = acceptable_password(string_field(body, "password"), "password")
        if name in self._sim.users:
            raise ApiError(409, 1004, "Resource already exists", "The user already exists")
        self._sim.users[name] = password
        return answer({"users": [{"username": name}]}, status=201)

    async def get(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/users/{name}``."""
        name = self._existing_user(request)
        return answer({"users": [{"username": name}]})

    async def update(self, request: web.Request) -> web.StreamResponse:
        """``PUT /v1/users/{name}``: a password change."""
        name = self._existing_user(request)
        body = await read_json(request)
        password = acceptable_password(string_field(body, "password"), "password")
        change_password(self._sim, name, password)
        return answer({})

    async def delete(self, request: web.Request) -> web.StreamResponse:
        """``DELETE /v1/users/{name}``."""
        name = self._existing_user(request)
        revoke_user(self._sim.tokens, name)
        if name != self._sim.username:
            del self._sim.users[name]
        return answer({})

    def _require_admin(self, request: web.Request) -> None:
        if request[EXCHANGE].user != self._sim.username:
            raise ApiError(403, 1005, "Access denied", "Only an admin user may manage users")

    def _existing_user(self, request: web.Request) -> str:
        self._require_admin(request)
        name = request.match_info["name"]
        if name not in self._sim.users:
            raise not_found("No such user")
        return name
