"""The login and logout endpoints: login faults carried out, credentials checked, tokens issued.

A ``late`` login is carried out in a task the endpoints own, so a server that cancels the handler
of a client that hung up does not cancel the login; ``cleanup`` waits for those tasks.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import math
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from aiohttp import web

from .answers import ApiError, acceptable_password, access_denied, answer, read_json, status_error
from .connection import hang_up, pause
from .exchange import DATE_AT, EXCHANGE, split_authorization
from .faults import LoginFault, LoginFaultKind
from .users import TokenRecord, change_password, revoke_user

if TYPE_CHECKING:
    from ..simulator import Simulator

LOGIN_PATH = "/v1/users/login"
# Faults that replace the whole login answer without processing the login; "lose_answer"
# processes it and then drops the answer; the other kinds only reshape a normal success.
_LOGIN_FAILURES = frozenset({"status", "reset", "invalid_json", "empty", "oversized", "hang"})
# A well-formed login answer but for its size: a megabyte of padding.
_OVERSIZED = (
    b'{"users": [{"token": "t", "expires_after": "2099-01-01 00:00:00+00:00"}], '
    b'"meta": {"padding": "' + b"x" * (1 << 20) + b'"}}'
)


def _forget_late(
    tasks: set[asyncio.Task[web.StreamResponse]],
) -> Callable[[asyncio.Task[web.StreamResponse]], None]:
    def forget(task: asyncio.Task[web.StreamResponse]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()  # an error answer nobody waited for any more is no error here

    return forget


class Logins:
    """``POST /v1/users/login`` and ``POST /v1/users/logout``; waits end when ``closing`` is set."""

    def __init__(self, sim: Simulator, closing: asyncio.Event) -> None:
        self._sim = sim
        self._closing = closing
        self._late: set[asyncio.Task[web.StreamResponse]] = set()  # "late" logins under way

    async def cleanup(self, _app: web.Application) -> None:
        """Wait for the late logins (they saw ``closing``: quick)."""
        await asyncio.gather(*self._late, return_exceptions=True)

    async def login(self, request: web.Request) -> web.StreamResponse:
        """A login, as the next fault of ``Simulator.login_script`` (if any) has it."""
        self._sim.login_attempts += 1
        script = self._sim.login_script
        fault = script.popleft() if script else None
        if not await pause(request, self._sim.login_delay, self._closing):
            return hang_up(request)
        if fault is None:
            return await self._accept(request, None)
        if fault.kind in _LOGIN_FAILURES:
            return await self._fail(request, fault)
        if fault.kind == "late":
            return await self._late_login(request, fault.delay)
        if fault.kind == "lose_answer":
            # Everything a normal login does happens (or, if it fails, nothing does); only
            # the answer, success or error, never leaves.
            with contextlib.suppress(ApiError):
                await self._accept(request, None)
            return hang_up(request)
        return await self._accept(request, fault.kind)

    async def logout(self, request: web.Request) -> web.StreamResponse:
        """Revoke the request's token, or every token of its user (``logout_revokes``)."""
        exchange = request[EXCHANGE]
        if self._sim.logout_revokes == "all":
            revoke_user(self._sim.tokens, exchange.user)
        else:
            self._sim.revoke(exchange.token)
        return answer({})

    async def _late_login(self, request: web.Request, delay: float) -> web.StreamResponse:
        """Process the login after ``delay`` seconds whether or not the client still waits
        (only the simulator's shutdown cuts the wait short, and then nothing happens)."""
        body = await read_json(request)  # it came with the request, before the client left
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
            return hang_up(request)
        return await self._accept(request, None, body)

    async def _accept(
        self,
        request: web.Request,
        shape: LoginFaultKind | None,
        body: dict[str, object] | None = None,
    ) -> web.StreamResponse:
        """Check the credentials, apply ``new_password`` and issue a token shaped by ``shape``
        (``body``: the request's, when it was read already)."""
        sim = self._sim
        user = self._check_basic(request)
        if body is None:
            body = await read_json(request)
        new_password = body.get("new_password")
        if new_password is None:
            if user == sim.username and sim.password_change_required:
                raise ApiError(
                    400,
                    1024,
                    "Password Change Required",
                    "The first login must set a new password with new_password",
                )
        else:
            password = acceptable_password(new_password, "new_password")
            # Before the token is issued, so a revoking change spares the token of this login.
            change_password(sim, user, password)
            if user == sim.username:
                sim.password_change_required = False
        return self._issue_token(user, shape)

    async def _fail(self, request: web.Request, fault: LoginFault) -> web.StreamResponse:
        match fault.kind:
            case "status":
                raise status_error(fault.status, "Injected login fault")
            case "invalid_json":
                return web.Response(text="<html>Bad Gateway</html>", content_type="text/html")
            case "empty":
                return web.Response()
            case "oversized":  # a megabyte, where a login answer is a few hundred bytes
                return web.Response(body=_OVERSIZED, content_type="application/json")
            case "hang":
                await pause(request, math.inf, self._closing)
        # "reset", and a "hang" that ended because the client or the app went away.
        return hang_up(request)

    def _check_basic(self, request: web.Request) -> str:
        scheme, credential = split_authorization(request)
        if scheme != "basic" or credential is None:
            raise access_denied("Basic credentials are required")
        try:
            decoded = base64.b64decode(credential, validate=True).decode(self._sim.basic_charset)
        except ValueError:  # not base64 (binascii.Error), not ASCII, not in the charset
            raise access_denied("Malformed Basic credentials") from None
        name, colon, password = decoded.partition(":")
        expected = self._sim.users.get(name)
        if not colon or expected is None:
            raise access_denied("Invalid username or password")
        if not hmac.compare_digest(password.encode(), expected.encode()):
            raise access_denied("Invalid username or password")
        return name

    def _issue_token(self, user: str, shape: LoginFaultKind | None) -> web.Response:
        sim = self._sim
        now = sim.now()
        expires_at = float(math.floor(now + sim.token_lifetime))
        if shape == "expired":
            expires_at = float(math.floor(now)) - 3600.0
        token = secrets.token_urlsafe(32)
        sim.tokens[token] = TokenRecord(user, expires_at)
        sim.issued_tokens.append(token)
        sim.logins += 1
        expiry = datetime.fromtimestamp(expires_at, UTC)
        entry: dict[str, str] = {"token": token}
        if shape == "iso_expiry":
            entry["expires_after"] = expiry.strftime("%Y-%m-%dT%H:%M:%S.000Z")
        elif shape == "bad_expiry":
            entry["expires_after"] = "next tuesday"
        elif shape != "no_expiry":
            entry["expires_after"] = expiry.isoformat(sep=" ", timespec="seconds")
        response = answer({"users": [entry]})
        response[DATE_AT] = None if shape == "no_date" else now
        return response
