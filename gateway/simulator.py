"""A simulated WhatsApp Business API Webapp, served by a real aiohttp application.

The gateway's tests and ``wa-gateway demo`` run against it. It owns:

- the Webapp's state: users, tokens (with expiry on a skewable clock), media and settings;
- the Webapp's answers, shaped as in ``wa-api.md`` (``meta`` on every body, ``errors`` arrays);
- records and counters of what reached it (``seen``, ``login_attempts``, ``logins``,
  ``password_changes``, ...);
- fault injection: a script of login faults (including a login whose answer is lost) and
  path-matched request faults (statuses, resets, cut bodies, stalls, trickles, delays), and
  ``restarted()``, the state a restarted Webapp has.

This module holds the state, the test hooks, the application and the middleware that records,
limits, faults and authenticates each request; the parts live in ``gateway/sim/`` (its
``__init__`` lists them). Everything a test imports is importable from here.

A ``HEAD`` request gets the headers its ``GET`` would get and never a body byte, faults included:
aiohttp sends whatever a ``StreamResponse`` writes, even in answer to ``HEAD``.

Everything that waits (hangs, stalls, delays) ends when the client hangs up or the app shuts
down, so a test's teardown never waits out aiohttp's shutdown timeout.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import math
import time
from dataclasses import replace
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Literal

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from .sim.answers import ApiError, status_error
from .sim.connection import apply_fault, client_gone
from .sim.endpoints import Endpoints
from .sim.exchange import DATE_AT, EXCHANGE, Exchange, Seen, arrived, settle
from .sim.faults import (
    Fault,
    FaultKind,
    LoginFault,
    LoginFaultKind,
    RateBuckets,
    RateLimit,
    take_fault,
)
from .sim.login import LOGIN_PATH, Logins
from .sim.media import MediaStore, synthetic_media_bytes, synthetic_media_sha256
from .sim.users import TokenRecord, Users, authenticate

__all__ = [
    "LOGIN_PATH",
    "SIMULATOR",
    "Fault",
    "FaultKind",
    "LoginFault",
    "LoginFaultKind",
    "RateBuckets",
    "RateLimit",
    "Seen",
    "Simulator",
    "TokenRecord",
    "synthetic_media_bytes",
    "synthetic_media_sha256",
]


class Simulator:
    """State, hooks and counters of a simulated Webapp; make_app() serves it.

    Behaviour the sources leave open is decided here: a login of ``username`` without
    ``new_password`` while ``password_change_required`` answers 400 with code 1024 (the real
    status is not confirmed); user management by a non-admin user answers 403 with code 1005;
    deleting the simulator's own ``username`` revokes its tokens but keeps the account, so
    ``password`` always has a meaning.

    Whether a password change revokes the user's tokens is not documented either, so it is an
    option: with ``password_change_revokes`` every successful change (a login with
    ``new_password``, ``PUT /v1/users/{name}``) revokes the tokens of that user issued before
    it; the token the changing login issues stays valid. Setting ``password`` (or ``users``)
    directly is a test hook: it neither revokes nor counts as a change.
    """

    def __init__(
        self,
        *,
        username: str = "admin",
        password: str = "secret",  # noqa: S107 - the real default account, public knowledge
        password_change_required: bool = True,
        api_key: str | None = None,
        token_lifetime: float = 7 * 24 * 3600,
        logout_revokes: Literal["token", "all"] = "token",
        clock_skew: float = 0.0,
        media_dir: str | None = None,
        max_media_size: int = 100 * 1024 * 1024,
        password_change_revokes: bool = False,
        rate_limit: RateLimit | None = None,
        basic_charset: Literal["utf-8", "latin-1"] = "utf-8",
    ) -> None:
        self.username = username
        self.users: dict[str, str] = {username: password}
        self.password_change_required = password_change_required
        self.api_key = api_key
        self.token_lifetime = token_lifetime
        self.logout_revokes: Literal["token", "all"] = logout_revokes
        self.password_change_revokes = password_change_revokes
        self.clock_skew = clock_skew
        self._buckets = None if rate_limit is None else RateBuckets(rate_limit)
        # How it decodes Basic credentials: wa-api.md does not say, so either.
        self.basic_charset = basic_charset
        if api_key is not None and not 12 <= len(api_key) <= 128:
            raise ValueError("the Webapp's API key is 12 to 128 characters")
        self.login_delay = 0.0
        self.reject_all_tokens = False
        self.login_script: collections.deque[LoginFault] = collections.deque()
        self.faults: list[Fault] = []
        self.login_attempts = 0
        self.logins = 0
        self.password_changes = 0  # successful changes of any user's password, via the API
        self.seen: list[Seen] = []
        self.tokens: dict[str, TokenRecord] = {}
        self.issued_tokens: list[str] = []  # every token ever issued, revoked or not
        self.application_settings: dict[str, object] = {
            "callback_persist": True,
            "max_callback_backoff_delay_ms": 900000,
            "webhooks": {"url": ""},
        }
        self._media = MediaStore(None if media_dir is None else Path(media_dir), max_media_size)
        self._unauthorized = 0
        self._in_flight = 0
        self._closing = asyncio.Event()
        self._app: web.Application | None = None

    # --- state ---------------------------------------------------------------------------

    @property
    def password(self) -> str:
        """The current password of ``username``."""
        return self.users[self.username]

    @password.setter
    def password(self, value: str) -> None:
        self.users[self.username] = value

    @property
    def max_media_size(self) -> int:
        """The largest media upload accepted, in bytes (larger ones get 413)."""
        return self._media.max_size

    @max_media_size.setter
    def max_media_size(self, value: int) -> None:
        self._media.max_size = value

    def now(self) -> float:
        """The simulator clock: ``time.time() + clock_skew``."""
        return time.time() + self.clock_skew

    def seen_on(self, path_prefix: str, method: str | None = None) -> list[Seen]:
        """The seen requests whose path starts with ``path_prefix`` (and method matches)."""
        return [
            s
            for s in self.seen
            if s.path_qs.partition("?")[0].startswith(path_prefix)
            and (method is None or s.method == method.upper())
        ]

    def unauthorized_count(self) -> int:
        """How many 401 answers were given to non-login requests (injected 401 faults too)."""
        return self._unauthorized

    @property
    def in_flight(self) -> int:
        """How many requests are being handled now (held ones end when their client hangs up)."""
        return self._in_flight

    # --- hooks ---------------------------------------------------------------------------

    def revoke_all(self) -> None:
        """Revoke every token (as ``DELETE /v1/users/{name}`` does for one user)."""
        self.tokens.clear()

    def revoke(self, token: str) -> None:
        """Revoke one token; unknown tokens are ignored."""
        self.tokens.pop(token, None)

    def expire_all(self) -> None:
        """Make every current token expired: its next use gets 401 and deletes it."""
        past = math.floor(self.now()) - 1.0
        for token, record in self.tokens.items():
            self.tokens[token] = replace(record, expires_at=past)

    def add_media(self, data_size: int, content_type: str = "application/octet-stream") -> str:
        """Register a synthetic media object of ``data_size`` bytes and return its id.

        Its content is ``synthetic_media_bytes(data_size)``, generated while it is downloaded.
        """
        return self._media.add_synthetic(data_size, content_type)

    def media_digest(self, media_id: str) -> tuple[int, str]:
        """Return (size, sha256 hex) of a stored media object; KeyError if there is none."""
        return self._media.digest(media_id)

    def restarted(self) -> Simulator:
        """A new simulator in the state this Webapp has after a restart, to serve on its port.

        The accounts (with their passwords), the options and the application settings survive;
        tokens, faults, delays, counters and the media registry do not (files in a ``media_dir``
        stay on disk, unknown to the new simulator), so every token issued before the restart
        gets 401 from the new one.
        """
        media_dir = self._media.directory
        successor = Simulator(
            username=self.username,
            password=self.password,
            password_change_required=self.password_change_required,
            api_key=self.api_key,
            token_lifetime=self.token_lifetime,
            logout_revokes=self.logout_revokes,
            clock_skew=self.clock_skew,
            media_dir=None if media_dir is None else str(media_dir),
            max_media_size=self.max_media_size,
            password_change_revokes=self.password_change_revokes,
            rate_limit=None if self._buckets is None else self._buckets.limit,
            basic_charset=self.basic_charset,
        )
        successor.users = dict(self.users)
        successor.application_settings = copy.deepcopy(self.application_settings)
        return successor

    def close(self) -> None:
        """Remove the temporary media directory, if the simulator created one."""
        self._media.close()

    # --- application ---------------------------------------------------------------------

    def make_app(self) -> web.Application:
        """Build the aiohttp application serving this simulator (once per simulator)."""
        if self._app is not None:
            raise RuntimeError("make_app() may be called only once per Simulator")
        logins = Logins(self, self._closing)
        users = Users(self)
        media = self._media
        endpoints = Endpoints(self, media)
        app = web.Application(middlewares=[self._middleware])
        app[SIMULATOR] = self
        app.router.add_post(LOGIN_PATH, logins.login)
        app.router.add_post("/v1/users/logout", logins.logout)
        app.router.add_post("/v1/users", users.create)
        app.router.add_get("/v1/users/{name}", users.get)
        app.router.add_put("/v1/users/{name}", users.update)
        app.router.add_delete("/v1/users/{name}", users.delete)
        app.router.add_post("/v1/messages", endpoints.send_message)
        app.router.add_post("/v1/contacts", endpoints.check_contacts)
        app.router.add_post("/v1/media", media.upload)
        app.router.add_get("/v1/media/{id}", media.download)
        app.router.add_delete("/v1/media/{id}", media.delete)
        app.router.add_get("/v1/health", endpoints.health)
        app.router.add_get("/metrics", endpoints.metrics)
        app.router.add_get("/v1/stats/app", endpoints.stats_app)
        app.router.add_get("/v1/stats/db", endpoints.stats_db)
        app.router.add_get("/v1/settings/application", endpoints.get_settings)
        app.router.add_patch("/v1/settings/application", endpoints.patch_settings)
        app.router.add_route("*", "/{tail:.*}", endpoints.unknown)
        app.on_response_prepare.append(self._date_header)
        app.on_shutdown.append(self._on_shutdown)
        app.on_cleanup.append(logins.cleanup)  # before the media go: late logins end quickly
        app.on_cleanup.append(self._on_cleanup)
        self._app = app
        return app

    async def _on_shutdown(self, _app: web.Application) -> None:
        # Releases held requests before aiohttp starts waiting for handlers to finish.
        self._closing.set()

    async def _on_cleanup(self, _app: web.Application) -> None:
        await asyncio.to_thread(self.close)

    async def _date_header(self, _request: web.Request, response: web.StreamResponse) -> None:
        date_at = response.get(DATE_AT, self.now())
        if date_at is None:
            response.headers.popall(hdrs.DATE, None)
        else:
            moment = datetime.fromtimestamp(date_at, UTC)
            response.headers[hdrs.DATE] = format_datetime(moment, usegmt=True)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        is_login = request.method == "POST" and request.path == LOGIN_PATH
        exchange = Exchange(arrived(request))
        self.seen.append(exchange.record)
        request[EXCHANGE] = exchange
        self._in_flight += 1
        try:
            try:
                response = await self._dispatch(request, handler, exchange, is_login=is_login)
            except ApiError as error:
                response = error.response()
            if response.prepared or not client_gone(request):
                exchange.status = response.status
        finally:
            self._in_flight -= 1
            settle(self.seen, exchange)
        if response.status == 401 and not is_login:
            self._unauthorized += 1
        return response

    async def _dispatch(
        self, request: web.Request, handler: Handler, exchange: Exchange, *, is_login: bool
    ) -> web.StreamResponse:
        # Before anything else, logins included: the Webapp limits every endpoint.
        if self._buckets is not None and not self._buckets.admit(request.method, request.path):
            raise status_error(429, "Rate limit hit: retry later")
        if not is_login:
            fault = take_fault(self.faults, request.method, request.path)
            if fault is not None:
                answer = await apply_fault(request, fault, self._closing)
                if answer is not None:
                    return answer
            if request.path == "/metrics" or request.path.startswith("/v1/"):
                authenticate(self, request, exchange)
        return await handler(request)


SIMULATOR = web.AppKey("wa_simulator", Simulator)
"""The app key under which make_app() stores its Simulator."""
