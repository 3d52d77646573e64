"""A simulated WhatsApp Business API Webapp, served by a real aiohttp application.

The gateway's tests and ``wa-gateway demo`` run against it. It owns:

- the Webapp's state: users, tokens (with expiry on a skewable clock), media and settings;
- the Webapp's answers, shaped as in ``wa-api.md`` (``meta`` on every body, ``errors`` arrays);
- records and counters of what reached it (``seen``, ``login_attempts``, ``logins``,
  ``password_changes``, ...);
- fault injection: a script of login faults (including a login whose answer is lost) and
  path-matched request faults (statuses, resets, cut bodies, stalls, trickles, delays), and
  ``restarted()``, the state a restarted Webapp has.

A ``HEAD`` request gets the headers its ``GET`` would get and never a body byte, faults included:
aiohttp sends whatever a ``StreamResponse`` writes, even in answer to ``HEAD``.

Everything that waits (hangs, stalls, delays) ends when the client hangs up or the app shuts
down, so a test's teardown never waits out aiohttp's shutdown timeout.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import copy
import hashlib
import hmac
import json
import math
import secrets
import shutil
import string
import tempfile
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.utils import format_datetime
from io import BufferedWriter
from pathlib import Path
from typing import Literal, get_args

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

__all__ = [
    "SIMULATOR",
    "Fault",
    "FaultKind",
    "LoginFault",
    "LoginFaultKind",
    "Seen",
    "Simulator",
    "TokenRecord",
    "synthetic_media_bytes",
    "synthetic_media_sha256",
]

LoginFaultKind = Literal[
    "status",
    "reset",
    "invalid_json",
    "empty",
    "oversized",
    "no_expiry",
    "bad_expiry",
    "iso_expiry",
    "expired",
    "hang",
    "no_date",
    "lose_answer",
    "late",
]
FaultKind = Literal[
    "status", "reset_before", "reset_after", "cut_body", "stall", "trickle", "delay", "slow_read"
]

LOGIN_PATH = "/v1/users/login"
_META: Mapping[str, str] = {"version": "v2.45.1", "api_status": "stable"}
# Faults that replace the whole login answer without processing the login; "lose_answer"
# processes it and then drops the answer; the other kinds only reshape a normal success.
_LOGIN_FAILURES = frozenset({"status", "reset", "invalid_json", "empty", "oversized", "hang"})
# A well-formed login answer but for its size: a megabyte of padding.
_OVERSIZED = (
    b'{"users": [{"token": "t", "expires_after": "2099-01-01 00:00:00+00:00"}], '
    b'"meta": {"padding": "' + b"x" * (1 << 20) + b'"}}'
)
_APIKEY_ENDPOINTS = frozenset(
    {("GET", "/v1/health"), ("GET", "/metrics"), ("GET", "/v1/stats/app"), ("GET", "/v1/stats/db")}
)
_SPECIALS = frozenset("!\"#$%&'()*+,-./:;<=>?@[]^_`{|}~")
_CHUNK = 64 * 1024
_JSON_LIMIT = 1024 * 1024
# How often held requests look for a hung-up client: aiohttp does not cancel handlers on
# disconnect (handler_cancellation is off by default), so nothing else would tell them.
_POLL = 0.05
_CUT_DECLARED = 1_000_000
_CUT_SENT = 1000
_TRICKLE_BODY = b'{"meta":1}'
# Synthetic media repeat a pseudo-random block of prime length, so that a chunk lost, repeated
# or shifted anywhere in a download changes the digest.
_PERIOD = 65_521
_PATTERN = hashlib.shake_256(b"wa-gateway synthetic media").digest(_PERIOD) * 2
_SYNTHETIC_CHUNK = 32 * 1024


def synthetic_media_bytes(size: int) -> Iterator[bytes]:
    """Yield the exact content of a synthetic media object of ``size`` bytes, in chunks."""
    position = 0
    while position < size:
        length = min(_SYNTHETIC_CHUNK, size - position)
        offset = position % _PERIOD
        yield _PATTERN[offset : offset + length]
        position += length


def synthetic_media_sha256(size: int) -> str:
    """Return the sha256 hex digest of ``synthetic_media_bytes(size)``."""
    digest = hashlib.sha256()
    for chunk in synthetic_media_bytes(size):
        digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Seen:
    """One request that reached the simulator, as it arrived.

    ``body_size`` (the body bytes the simulator read) and ``status`` (the status it answered
    with) are filled in when the request ends; ``status`` stays None while the request is
    handled, and for good when the simulator hung up (or the client went away) before a status
    line went out.
    """

    method: str
    path_qs: str
    auth_scheme: str | None
    credential: str | None
    request_id: str | None
    headers: Mapping[str, str]
    body_size: int = 0
    status: int | None = None


@dataclass(frozen=True)
class TokenRecord:
    """A valid token's owner and expiry (simulator-clock epoch seconds, whole)."""

    username: str
    expires_at: float


@dataclass(frozen=True)
class LoginFault:
    """What one login attempt does instead of behaving normally.

    ``status``, ``reset``, ``invalid_json``, ``empty``, ``oversized`` and ``hang`` replace the
    answer without looking at the credentials. ``no_expiry``, ``bad_expiry``, ``iso_expiry``,
    ``expired`` and ``no_date`` only reshape a success: the credentials and ``new_password``
    are still checked.
    ``lose_answer`` processes the login completely (credentials checked, ``new_password``
    applied, token issued and valid) and then hangs up instead of answering, as ``reset`` does:
    a password change whose answer never reaches the client. A login that fails is hung up on
    too, and changes nothing. ``late`` waits ``delay`` seconds, whether or not the client is
    still there, and then processes the login normally: a Webapp too busy to answer in time
    that still acts on a login its client gave up on.
    """

    kind: LoginFaultKind
    status: int = 500
    delay: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in get_args(LoginFaultKind):
            raise ValueError(f"unknown login fault kind {self.kind!r}")


@dataclass(frozen=True)
class Fault:
    """A fault for non-login requests whose path starts with ``path`` (and method matches).

    Each match uses one of ``times`` (``None``: forever); the simulator replaces the entry in
    ``Simulator.faults`` by one with the remaining count and drops it at zero. ``delay`` is the
    pause of ``delay`` and ``trickle`` (before each byte of the answer) and of ``slow_read``
    (before each 64 KiB of the request body is read; then it answers 200).
    """

    kind: FaultKind
    path: str = "/"
    method: str | None = None
    times: int | None = 1
    status: int = 500
    delay: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in get_args(FaultKind):
            raise ValueError(f"unknown fault kind {self.kind!r}")

    def matches(self, method: str, path: str) -> bool:
        """Tell whether this fault applies to a request."""
        return path.startswith(self.path) and (self.method is None or self.method.upper() == method)


@dataclass(frozen=True)
class RateLimit:
    """The Webapp's rate limit: ``rate`` requests per second per endpoint, bursts to ``burst``;
    beyond it, 429 with code 1015. An endpoint is a method and the path's first two segments
    (``POST /v1/messages``, ``GET /v1/media``); logins are not limited."""

    rate: float = 20.0
    burst: float = 60.0


class RateBuckets:
    """A token bucket per endpoint, on a monotonic ``clock``."""

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}  # (tokens, at)

    def admit(self, method: str, path: str) -> bool:
        """Whether a request to this endpoint is within the limit now (and counts it if so)."""
        key = (method, "/".join(path.split("/", 3)[:3]))
        now = self._clock()
        tokens, at = self._buckets.get(key, (self.limit.burst, now))
        tokens = min(self.limit.burst, tokens + (now - at) * self.limit.rate)
        admitted = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if admitted else tokens, now)
        return admitted


@dataclass
class _Exchange:
    """Per-request state the middleware shares with the handlers."""

    record: Seen
    body_size: int = 0
    status: int | None = None
    user: str | None = None
    token: str = ""  # the bearer token that authenticated the request, if one did


@dataclass
class _Media:
    content_type: str
    size: int
    path: Path | None  # None: synthetic, generated on download
    sha256: str | None = None  # computed lazily for synthetic media


class _ApiError(Exception):
    """An answer in the Webapp's error shape, raised from anywhere in a handler."""

    def __init__(self, status: int, code: int, title: str, details: str) -> None:
        super().__init__(details)
        self.status = status
        self.code = code
        self.title = title
        self.details = details

    def response(self) -> web.Response:
        """Render the error body."""
        error = {"code": self.code, "title": self.title, "details": self.details}
        return _answer({"errors": [error]}, status=self.status)


_EXCHANGE = web.RequestKey("wa_sim_exchange", _Exchange)
# The Date a response must carry: a timestamp, or None for no Date header at all.
_DATE_AT: web.ResponseKey[float | None] = web.ResponseKey("wa_sim_date_at")


def _answer(data: Mapping[str, object], status: int = 200) -> web.Response:
    return web.json_response({**data, "meta": dict(_META)}, status=status)


def _access_denied(details: str) -> _ApiError:
    return _ApiError(401, 1005, "Access denied", details)


def _status_error(status: int, details: str) -> _ApiError:
    known = {
        401: (1005, "Access denied"),
        404: (1006, "Not found"),
        429: (1015, "Too many requests"),
        503: (1016, "System overloaded"),
    }
    fallback = (1014, "Internal error") if status >= 500 else (1000, "Generic error")
    code, title = known.get(status, fallback)
    return _ApiError(status, code, title, details)


def _missing(name: str) -> _ApiError:
    return _ApiError(400, 1008, "Required parameter is missing", f"{name} is required")


def _invalid(details: str) -> _ApiError:
    return _ApiError(400, 1009, "Parameter value is not valid", details)


def _not_found(details: str) -> _ApiError:
    return _ApiError(404, 1006, "Not found", details)


def _http_date(timestamp: float) -> str:
    return format_datetime(datetime.fromtimestamp(timestamp, UTC), usegmt=True)


def _split_authorization(request: web.Request) -> tuple[str | None, str | None]:
    value = request.headers.get(hdrs.AUTHORIZATION, "").strip()
    if not value:
        return None, None
    scheme, _, credential = value.partition(" ")
    return scheme.lower(), credential.strip() or None


def _password_problem(password: object, name: str) -> str | None:
    """Say what is wrong with a new password (never echoing it), or None if it is acceptable."""
    if not isinstance(password, str):
        return f"{name} must be a string"
    if not (
        8 <= len(password) <= 64
        and any(c in string.digits for c in password)
        and any(c in string.ascii_uppercase for c in password)
        and any(c in string.ascii_lowercase for c in password)
        and any(c in _SPECIALS for c in password)
    ):
        return (
            f"{name} must be 8 to 64 characters long and contain a digit, an upper-case letter, "
            "a lower-case letter and a special character"
        )
    return None


def _string_field(body: Mapping[str, object], name: str) -> str:
    value = body.get(name)
    if value is None:
        raise _missing(name)
    if not isinstance(value, str):
        raise _invalid(f"{name} must be a string")
    return value


def _open_for_write(path: Path) -> BufferedWriter:
    return path.open("xb")


def _hang_up(request: web.Request) -> web.StreamResponse:
    """Close the connection; the returned response is never written.

    close() (not abort()) so whatever was already written still reaches the client. aiohttp
    finds the transport closing when it finishes the response and drops it quietly.
    """
    transport = request.transport
    if transport is not None:
        transport.close()
    return web.Response()


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _bodiless(request: web.Request) -> bool:
    """Whether the answer may have no body: a StreamResponse sends what it writes, even to HEAD."""
    return request.method == hdrs.METH_HEAD


async def _body_chunks(request: web.Request) -> AsyncGenerator[bytes, None]:
    """Yield the request body chunk by chunk, counting what the app read for ``Seen``."""
    exchange = request[_EXCHANGE]
    async for chunk in request.content.iter_chunked(_CHUNK):
        exchange.body_size += len(chunk)
        yield chunk


def _forget_late(
    tasks: set[asyncio.Task[web.StreamResponse]],
) -> Callable[[asyncio.Task[web.StreamResponse]], None]:
    def forget(task: asyncio.Task[web.StreamResponse]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()  # an error answer nobody waited for any more is no error here

    return forget


async def _read_json(request: web.Request) -> dict[str, object]:
    """Read a small JSON object body; an empty body is an empty object."""
    body = bytearray()
    async with contextlib.aclosing(_body_chunks(request)) as chunks:
        async for chunk in chunks:
            body += chunk
            if len(body) > _JSON_LIMIT:
                raise _ApiError(413, 1009, "Parameter value is not valid", "Body too large")
    if not body.strip():
        return {}
    try:
        data: object = json.loads(bytes(body))
    except (ValueError, RecursionError):
        raise _invalid("The request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise _invalid("The request body must be a JSON object")
    return data


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
    ) -> None:
        self.username = username
        self.users: dict[str, str] = {username: password}
        self.password_change_required = password_change_required
        self.api_key = api_key
        self.token_lifetime = token_lifetime
        self.logout_revokes: Literal["token", "all"] = logout_revokes
        self.password_change_revokes = password_change_revokes
        self.clock_skew = clock_skew
        self.max_media_size = max_media_size
        self._buckets = None if rate_limit is None else RateBuckets(rate_limit)
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
        self._media_dir = Path(media_dir) if media_dir is not None else None
        self._temp_media_dir: Path | None = None
        self._media: dict[str, _Media] = {}
        self._unauthorized = 0
        self._in_flight = 0
        self._closing = asyncio.Event()
        self._late: set[asyncio.Task[web.StreamResponse]] = set()  # "late" logins under way
        self._app: web.Application | None = None

    # --- state ---------------------------------------------------------------------------

    @property
    def password(self) -> str:
        """The current password of ``username``."""
        return self.users[self.username]

    @password.setter
    def password(self, value: str) -> None:
        self.users[self.username] = value

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
        media_id = str(uuid.uuid4())
        self._media[media_id] = _Media(content_type, data_size, None)
        return media_id

    def media_digest(self, media_id: str) -> tuple[int, str]:
        """Return (size, sha256 hex) of a stored media object; KeyError if there is none."""
        media = self._media[media_id]
        if media.sha256 is None:
            media.sha256 = synthetic_media_sha256(media.size)
        return media.size, media.sha256

    def restarted(self) -> Simulator:
        """A new simulator in the state this Webapp has after a restart, to serve on its port.

        The accounts (with their passwords), the options and the application settings survive;
        tokens, faults, delays, counters and the media registry do not (files in a ``media_dir``
        stay on disk, unknown to the new simulator), so every token issued before the restart
        gets 401 from the new one.
        """
        successor = Simulator(
            username=self.username,
            password=self.password,
            password_change_required=self.password_change_required,
            api_key=self.api_key,
            token_lifetime=self.token_lifetime,
            logout_revokes=self.logout_revokes,
            clock_skew=self.clock_skew,
            media_dir=None if self._media_dir is None else str(self._media_dir),
            max_media_size=self.max_media_size,
            password_change_revokes=self.password_change_revokes,
            rate_limit=None if self._buckets is None else self._buckets.limit,
        )
        successor.users = dict(self.users)
        successor.application_settings = copy.deepcopy(self.application_settings)
        return successor

    def close(self) -> None:
        """Remove the temporary media directory, if the simulator created one."""
        if self._temp_media_dir is not None:
            shutil.rmtree(self._temp_media_dir, ignore_errors=True)
            self._temp_media_dir = None
            self._media = {k: m for k, m in self._media.items() if m.path is None}

    # --- application ---------------------------------------------------------------------

    def make_app(self) -> web.Application:
        """Build the aiohttp application serving this simulator (once per simulator)."""
        if self._app is not None:
            raise RuntimeError("make_app() may be called only once per Simulator")
        app = web.Application(middlewares=[self._middleware])
        app[SIMULATOR] = self
        app.router.add_post(LOGIN_PATH, self._login)
        app.router.add_post("/v1/users/logout", self._logout)
        app.router.add_post("/v1/users", self._create_user)
        app.router.add_get("/v1/users/{name}", self._get_user)
        app.router.add_put("/v1/users/{name}", self._update_user)
        app.router.add_delete("/v1/users/{name}", self._delete_user)
        app.router.add_post("/v1/messages", self._send_message)
        app.router.add_post("/v1/contacts", self._check_contacts)
        app.router.add_post("/v1/media", self._upload_media)
        app.router.add_get("/v1/media/{id}", self._download_media)
        app.router.add_delete("/v1/media/{id}", self._delete_media)
        app.router.add_get("/v1/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/v1/stats/app", self._stats_app)
        app.router.add_get("/v1/stats/db", self._stats_db)
        app.router.add_get("/v1/settings/application", self._get_settings)
        app.router.add_patch("/v1/settings/application", self._patch_settings)
        app.router.add_route("*", "/{tail:.*}", self._unknown)
        app.on_response_prepare.append(self._date_header)
        app.on_shutdown.append(self._on_shutdown)
        app.on_cleanup.append(self._on_cleanup)
        self._app = app
        return app

    async def _on_shutdown(self, _app: web.Application) -> None:
        # Releases held requests before aiohttp starts waiting for handlers to finish.
        self._closing.set()

    async def _on_cleanup(self, _app: web.Application) -> None:
        await asyncio.gather(*self._late, return_exceptions=True)  # they saw _closing: quick
        await asyncio.to_thread(self.close)

    async def _date_header(self, _request: web.Request, response: web.StreamResponse) -> None:
        date_at = response.get(_DATE_AT, self.now())
        if date_at is None:
            response.headers.popall(hdrs.DATE, None)
        else:
            response.headers[hdrs.DATE] = _http_date(date_at)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        is_login = request.method == "POST" and request.path == LOGIN_PATH
        exchange = _Exchange(self._record(request))
        request[_EXCHANGE] = exchange
        self._in_flight += 1
        try:
            try:
                response = await self._dispatch(request, handler, exchange, is_login=is_login)
            except _ApiError as error:
                response = error.response()
            if response.prepared or not _client_gone(request):
                exchange.status = response.status
        finally:
            self._in_flight -= 1
            self._settle(exchange)
        if response.status == 401 and not is_login:
            self._unauthorized += 1
        return response

    def _record(self, request: web.Request) -> Seen:
        scheme, credential = _split_authorization(request)
        record = Seen(
            method=request.method,
            path_qs=request.raw_path,
            auth_scheme=scheme,
            credential=credential,
            request_id=request.headers.get("X-Request-ID"),
            headers=request.headers.copy(),
        )
        self.seen.append(record)
        return record

    def _settle(self, exchange: _Exchange) -> None:
        """Put the body bytes read and the status answered into the request's (frozen) record."""
        if exchange.body_size == 0 and exchange.status is None:
            return
        settled = replace(exchange.record, body_size=exchange.body_size, status=exchange.status)
        # Searched by identity: a test may have cleared or trimmed `seen` meanwhile.
        for index in range(len(self.seen) - 1, -1, -1):
            if self.seen[index] is exchange.record:
                self.seen[index] = settled
                return

    async def _dispatch(
        self, request: web.Request, handler: Handler, exchange: _Exchange, *, is_login: bool
    ) -> web.StreamResponse:
        if not is_login:
            if self._buckets is not None and not self._buckets.admit(request.method, request.path):
                raise _status_error(429, "Rate limit hit: retry later")
            fault = self._take_fault(request)
            if fault is not None:
                answer = await self._apply_fault(request, fault)
                if answer is not None:
                    return answer
            if request.path == "/metrics" or request.path.startswith("/v1/"):
                self._authenticate(request, exchange)
        return await handler(request)

    def _take_fault(self, request: web.Request) -> Fault | None:
        for index, fault in enumerate(self.faults):
            if fault.matches(request.method, request.path):
                if fault.times is None:
                    pass
                elif fault.times <= 1:
                    del self.faults[index]
                else:
                    self.faults[index] = replace(fault, times=fault.times - 1)
                return fault
        return None

    async def _apply_fault(  # noqa: PLR0911 - one answer per fault kind
        self, request: web.Request, fault: Fault
    ) -> web.StreamResponse | None:
        """Answer as the fault says, or return None to let the request proceed normally."""
        match fault.kind:
            case "status":
                raise _status_error(fault.status, "Injected fault")
            case "reset_before":
                return _hang_up(request)
            case "reset_after":
                async with contextlib.aclosing(_body_chunks(request)) as chunks:
                    async for _chunk in chunks:
                        pass
                return _hang_up(request)
            case "cut_body":
                return await self._cut_body(request)
            case "stall":
                await self._pause(request, math.inf)
                return _hang_up(request)
            case "trickle":
                return await self._trickle(request, fault.delay)
            case "slow_read":
                return await self._slow_read(request, fault.delay)
            case "delay":  # pragma: no branch - the kinds are exhaustive
                return None if await self._pause(request, fault.delay) else _hang_up(request)

    async def _pause(self, request: web.Request, seconds: float) -> bool:
        """Wait ``seconds``; False if the client hung up or the app shut down first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not self._closing.is_set() and not _client_gone(request):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return True
            # wait_for, not asyncio.timeout: on Python 3.11 a timeout thrown into this frame
            # makes coverage lose the callers' later lines (python/cpython#106749).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), min(remaining, _POLL))
        return False

    async def _slow_read(self, request: web.Request, delay: float) -> web.StreamResponse:
        """Take the body steadily but slowly, then answer."""
        async with contextlib.aclosing(_body_chunks(request)) as chunks:
            async for _chunk in chunks:
                if not await self._pause(request, delay):
                    return _hang_up(request)
        return _answer({})

    async def _cut_body(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={hdrs.CONTENT_TYPE: "application/octet-stream"})
        response.content_length = _CUT_DECLARED
        await response.prepare(request)
        if not _bodiless(request):  # a HEAD answer has no body to cut: headers, then hang up
            with contextlib.suppress(ConnectionError):
                await response.write(b"x" * _CUT_SENT)
        _hang_up(request)
        return response

    async def _trickle(self, request: web.Request, delay: float) -> web.StreamResponse:
        response = web.StreamResponse(headers={hdrs.CONTENT_TYPE: "application/json"})
        response.content_length = len(_TRICKLE_BODY)
        await response.prepare(request)
        if _bodiless(request):
            return response  # a HEAD answer has no body to trickle
        for index in range(len(_TRICKLE_BODY)):
            # Nothing awaits between a pause that saw the client and the write, so a write
            # cannot find the connection closed.
            if not await self._pause(request, delay):
                _hang_up(request)
                break
            await response.write(_TRICKLE_BODY[index : index + 1])
        return response

    def _authenticate(self, request: web.Request, exchange: _Exchange) -> None:
        """Admit a secured request or raise 401; records who made it in ``exchange``."""
        if self.reject_all_tokens:
            raise _access_denied("The token was rejected")
        scheme, credential = exchange.record.auth_scheme, exchange.record.credential
        if scheme == "bearer" and credential is not None:
            record = self.tokens.get(credential)
            if record is None:
                raise _access_denied("Invalid or revoked token")
            if record.expires_at <= self.now():
                del self.tokens[credential]
                raise _access_denied("The token has expired")
            exchange.user, exchange.token = record.username, credential
            return
        if scheme == "apikey" and credential is not None and self.api_key is not None:
            if (request.method, request.path) not in _APIKEY_ENDPOINTS:
                raise _access_denied("The API key is not accepted on this endpoint")
            if not hmac.compare_digest(credential.encode(), self.api_key.encode()):
                raise _access_denied("Invalid API key")
            return
        raise _access_denied("A bearer token is required")

    def _require_admin(self, request: web.Request) -> None:
        if request[_EXCHANGE].user != self.username:
            raise _ApiError(403, 1005, "Access denied", "Only an admin user may manage users")

    # --- login ---------------------------------------------------------------------------

    async def _login(self, request: web.Request) -> web.StreamResponse:
        self.login_attempts += 1
        fault = self.login_script.popleft() if self.login_script else None
        if not await self._pause(request, self.login_delay):
            return _hang_up(request)
        if fault is None:
            return await self._accept_login(request, None)
        if fault.kind in _LOGIN_FAILURES:
            return await self._failed_login(request, fault)
        if fault.kind == "late":
            return await self._late_login(request, fault.delay)
        if fault.kind == "lose_answer":
            # Everything a normal login does happens (or, if it fails, nothing does); only
            # the answer, success or error, never leaves.
            with contextlib.suppress(_ApiError):
                await self._accept_login(request, None)
            return _hang_up(request)
        return await self._accept_login(request, fault.kind)

    async def _late_login(self, request: web.Request, delay: float) -> web.StreamResponse:
        """Process the login after ``delay`` seconds whether or not the client still waits
        (only the simulator's shutdown cuts the wait short, and then nothing happens)."""
        body = await _read_json(request)  # it came with the request, before the client left
        # In a task of its own: a server that cancels handlers whose client hung up (aiohttp's
        # test servers do) must not cancel what the Webapp has set out to do.
        task = asyncio.ensure_future(self._act_late(request, body, delay))
        self._late.add(task)
        task.add_done_callback(_forget_late(self._late))
        return await asyncio.shield(task)

    async def _act_late(
        self, request: web.Request, body: dict[str, object], delay: float
    ) -> web.StreamResponse:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), delay)
        if self._closing.is_set():
            return _hang_up(request)
        return await self._accept_login(request, None, body)

    async def _accept_login(
        self,
        request: web.Request,
        shape: LoginFaultKind | None,
        body: dict[str, object] | None = None,
    ) -> web.StreamResponse:
        """Check the credentials, apply ``new_password`` and issue a token shaped by ``shape``
        (``body``: the request's, when it was read already)."""
        user = self._check_basic(request)
        if body is None:
            body = await _read_json(request)
        new_password = body.get("new_password")
        if new_password is None:
            if user == self.username and self.password_change_required:
                raise _ApiError(
                    400,
                    1024,
                    "Password Change Required",
                    "The first login must set a new password with new_password",
                )
        else:
            problem = _password_problem(new_password, "new_password")
            if problem is not None:
                raise _invalid(problem)
            # Before the token is issued, so a revoking change spares the token of this login.
            self._change_password(user, str(new_password))
            if user == self.username:
                self.password_change_required = False
        return self._issue_token(user, shape)

    async def _failed_login(self, request: web.Request, fault: LoginFault) -> web.StreamResponse:
        match fault.kind:
            case "status":
                raise _status_error(fault.status, "Injected login fault")
            case "invalid_json":
                return web.Response(text="<html>Bad Gateway</html>", content_type="text/html")
            case "empty":
                return web.Response()
            case "oversized":  # a megabyte, where a login answer is a few hundred bytes
                return web.Response(body=_OVERSIZED, content_type="application/json")
            case "hang":
                await self._pause(request, math.inf)
        # "reset", and a "hang" that ended because the client or the app went away.
        return _hang_up(request)

    def _check_basic(self, request: web.Request) -> str:
        scheme, credential = _split_authorization(request)
        if scheme != "basic" or credential is None:
            raise _access_denied("Basic credentials are required")
        try:
            decoded = base64.b64decode(credential, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise _access_denied("Malformed Basic credentials") from None
        name, colon, password = decoded.partition(":")
        expected = self.users.get(name)
        if not colon or expected is None:
            raise _access_denied("Invalid username or password")
        if not hmac.compare_digest(password.encode(), expected.encode()):
            raise _access_denied("Invalid username or password")
        return name

    def _issue_token(self, user: str, shape: LoginFaultKind | None) -> web.Response:
        now = self.now()
        expires_at = float(math.floor(now + self.token_lifetime))
        if shape == "expired":
            expires_at = float(math.floor(now)) - 3600.0
        token = secrets.token_urlsafe(32)
        self.tokens[token] = TokenRecord(user, expires_at)
        self.issued_tokens.append(token)
        self.logins += 1
        expiry = datetime.fromtimestamp(expires_at, UTC)
        entry: dict[str, str] = {"token": token}
        if shape == "iso_expiry":
            entry["expires_after"] = expiry.strftime("%Y-%m-%dT%H:%M:%S.000Z")
        elif shape == "bad_expiry":
            entry["expires_after"] = "next tuesday"
        elif shape != "no_expiry":
            entry["expires_after"] = expiry.isoformat(sep=" ", timespec="seconds")
        response = _answer({"users": [entry]})
        response[_DATE_AT] = None if shape == "no_date" else now
        return response

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        exchange = request[_EXCHANGE]
        if self.logout_revokes == "all":
            for token, record in list(self.tokens.items()):
                if record.username == exchange.user:
                    del self.tokens[token]
        else:
            self.revoke(exchange.token)
        return _answer({})

    # --- users ---------------------------------------------------------------------------

    def _revoke_user(self, name: str) -> None:
        """Revoke every token of one user."""
        for token, record in list(self.tokens.items()):
            if record.username == name:
                del self.tokens[token]

    def _change_password(self, name: str, password: str) -> None:
        """Apply an accepted password change made through the API (login or ``PUT``)."""
        self.users[name] = password
        self.password_changes += 1
        if self.password_change_revokes:
            self._revoke_user(name)

    async def _create_user(self, request: web.Request) -> web.StreamResponse:
        self._require_admin(request)
        body = await _read_json(request)
        name = _string_field(body, "username")
        password = _string_field(body, "password")
        problem = _password_problem(password, "password")
        if problem is not None:
            raise _invalid(problem)
        if name in self.users:
            raise _ApiError(409, 1004, "Resource already exists", "The user already exists")
        self.users[name] = password
        return _answer({"users": [{"username": name}]}, status=201)

    def _existing_user(self, request: web.Request) -> str:
        self._require_admin(request)
        name = request.match_info["name"]
        if name not in self.users:
            raise _not_found("No such user")
        return name

    async def _get_user(self, request: web.Request) -> web.StreamResponse:
        name = self._existing_user(request)
        return _answer({"users": [{"username": name}]})

    async def _update_user(self, request: web.Request) -> web.StreamResponse:
        name = self._existing_user(request)
        password = _string_field(await _read_json(request), "password")
        problem = _password_problem(password, "password")
        if problem is not None:
            raise _invalid(problem)
        self._change_password(name, password)
        return _answer({})

    async def _delete_user(self, request: web.Request) -> web.StreamResponse:
        name = self._existing_user(request)
        self._revoke_user(name)
        if name != self.username:
            del self.users[name]
        return _answer({})

    # --- everyday endpoints --------------------------------------------------------------

    async def _send_message(self, request: web.Request) -> web.StreamResponse:
        _string_field(await _read_json(request), "to")
        alphabet = string.ascii_letters + string.digits
        message_id = "gBEG" + "".join(secrets.choice(alphabet) for _ in range(24))
        return _answer({"messages": [{"id": message_id}]}, status=201)

    async def _check_contacts(self, request: web.Request) -> web.StreamResponse:
        contacts = (await _read_json(request)).get("contacts")
        if contacts is None:
            raise _missing("contacts")
        if not isinstance(contacts, list) or not all(isinstance(c, str) for c in contacts):
            raise _invalid("contacts must be a list of strings")
        results: list[dict[str, str]] = []
        for contact in contacts:
            wa_id = "".join(c for c in contact if c in string.digits)
            if wa_id:
                results.append({"input": contact, "status": "valid", "wa_id": wa_id})
            else:
                results.append({"input": contact, "status": "invalid"})
        return _answer({"contacts": results})

    async def _health(self, _request: web.Request) -> web.StreamResponse:
        return _answer({"health": {"gateway_status": "connected"}})

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        values = {
            "requests_total": len(self.seen),
            "logins_total": self.logins,
            "tokens_valid": len(self.tokens),
        }
        if request.query.get("format") != "prometheus":
            return _answer({"metrics": values})
        lines: list[str] = []
        for name, value in values.items():
            kind = "counter" if name.endswith("_total") else "gauge"
            lines += [f"# TYPE wa_{name} {kind}", f"wa_{name} {value}"]
        return web.Response(
            body=("\n".join(lines) + "\n").encode(),
            headers={hdrs.CONTENT_TYPE: "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def _stats_app(self, _request: web.Request) -> web.StreamResponse:
        stats = {"requests": len(self.seen), "logins": self.logins}
        return _answer({"app": {"stats": stats}})

    async def _stats_db(self, _request: web.Request) -> web.StreamResponse:
        return _answer({"db": {"stats": {"users": len(self.users), "media": len(self._media)}}})

    async def _get_settings(self, _request: web.Request) -> web.StreamResponse:
        return _answer({"settings": {"application": self.application_settings}})

    async def _patch_settings(self, request: web.Request) -> web.StreamResponse:
        self.application_settings.update(await _read_json(request))
        return _answer({})

    async def _unknown(self, _request: web.Request) -> web.StreamResponse:
        raise _not_found("Unknown path")

    # --- media ---------------------------------------------------------------------------

    def _media_root(self) -> Path:
        if self._media_dir is not None:
            return self._media_dir
        if self._temp_media_dir is None:
            self._temp_media_dir = Path(tempfile.mkdtemp(prefix="wa-sim-media-"))
        return self._temp_media_dir

    async def _upload_media(self, request: web.Request) -> web.StreamResponse:
        content_type = request.headers.get(hdrs.CONTENT_TYPE, "application/octet-stream")
        media_id = str(uuid.uuid4())
        path = self._media_root() / media_id
        digest = hashlib.sha256()
        size = 0
        stored = False
        file = await asyncio.to_thread(_open_for_write, path)
        try:
            async with contextlib.aclosing(_body_chunks(request)) as chunks:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_media_size:
                        raise _ApiError(
                            413,
                            1009,
                            "Parameter value is not valid",
                            f"Media larger than {self.max_media_size} bytes",
                        )
                    digest.update(chunk)
                    await asyncio.to_thread(file.write, chunk)
            stored = True
        finally:
            await asyncio.to_thread(file.close)
            if not stored:
                await asyncio.to_thread(path.unlink, missing_ok=True)
        self._media[media_id] = _Media(content_type, size, path, digest.hexdigest())
        return _answer({"media": [{"id": media_id}]}, status=201)

    async def _download_media(self, request: web.Request) -> web.StreamResponse:
        media = self._media.get(request.match_info["id"])
        if media is None:
            # The real Webapp answers an unknown id with an empty body, not an errors body.
            return web.Response(status=404)
        if media.path is not None:
            return web.FileResponse(media.path, headers={hdrs.CONTENT_TYPE: media.content_type})
        response = web.StreamResponse(headers={hdrs.CONTENT_TYPE: media.content_type})
        response.content_length = media.size
        await response.prepare(request)
        if _bodiless(request):
            return response
        try:
            for chunk in synthetic_media_bytes(media.size):
                await response.write(chunk)
        except ConnectionError:
            pass  # the client hung up mid-download
        return response

    async def _delete_media(self, request: web.Request) -> web.StreamResponse:
        media = self._media.pop(request.match_info["id"], None)
        if media is None:
            raise _not_found("No such media")
        if media.path is not None:
            await asyncio.to_thread(media.path.unlink, missing_ok=True)
        return _answer({})


SIMULATOR = web.AppKey("wa_simulator", Simulator)
"""The app key under which make_app() stores its Simulator."""
