"""Everything that talks to the Webapp: the one client session, the login, and sending requests.

This module owns the ``aiohttp.ClientSession`` (one keep-alive connection pool). What its failures
and answers mean is decided without I/O in :mod:`gateway.verdicts`, as :func:`parse_login` reads
a login answer.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from .bearer import Account, Clock, SystemClock, Token
from .config import Config
from .connector import Connector
from .cutoff import CutWatch
from .deadlines import extend
from .errors import WebappUnreachable
from .headers import framing_problem
from .login import BadCredentials, Grant, InvalidLoginAnswer, WebappUnavailable, parse_login
from .passwords import PasswordFile
from .rotation import log_in
from .secret import Secret
from .slots import Slots
from .verdicts import token_verdict, translate

LOGIN_PATH = "/v1/users/login"
CHECK_PATH = "/v1/health"
# A login answer is a few hundred bytes; anything much larger is not one.
MAX_LOGIN_ANSWER = 64 * 1024
# Connections beyond GATEWAY_UPSTREAM_CONNECTIONS, kept for logins and token checks: forwarded
# requests never take them (see Slots), so a pool full of slow downloads cannot hold up the
# login that every request depends on.
AUTH_CONNECTIONS = 2


def ssl_context(config: Config) -> ssl.SSLContext | bool:
    """How the Webapp's certificate is checked: the CA file if given, system CAs otherwise."""
    webapp = config.webapp
    if not webapp.tls_verify:
        return False
    if webapp.ca_file is None:
        return True
    return ssl.create_default_context(cafile=str(webapp.ca_file))


class Webapp:
    """The Webapp at one URL, reached through one connection pool."""

    def __init__(self, config: Config, clock: Clock | None = None) -> None:
        self.config = config
        self.account = Account(str(config.webapp.url), config.webapp.username)
        self._base = str(config.webapp.url)
        self._clock = clock or SystemClock()
        self._session: aiohttp.ClientSession | None = None
        self._basic_encoding = "latin-1"  # see _post_login
        file = config.webapp.password_file
        self._password_file = None if file is None else PasswordFile(file)
        server = config.server
        # Forwarded requests hold one of these from sending until their answer has streamed back.
        self.slots = Slots(server.upstream_connections, server.upstream_queue_timeout)
        # Answers whose body is being read, failed at once if their connection closes first.
        self.cuts = CutWatch()

    async def open(self) -> None:
        """Create the connection pool (inside the running loop)."""
        server = self.config.server
        connector = Connector(
            limit=server.upstream_connections + AUTH_CONNECTIONS,
            ssl=ssl_context(self.config),
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            # Only the connect phase is timed here: send() times the wait for the response
            # headers, the relay the silences within the body, the token pool each login.
            timeout=aiohttp.ClientTimeout(
                total=None, connect=None, sock_connect=server.connect_timeout, sock_read=None
            ),
            auto_decompress=False,  # bytes pass through exactly as the Webapp sent them
            cookie_jar=aiohttp.DummyCookieJar(),  # one client's cookies must not reach another
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            trust_env=False,
        )

    async def close(self) -> None:
        """Close every pooled connection."""
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        """The session; only valid between :meth:`open` and :meth:`close`."""
        if self._session is None:
            raise RuntimeError("Webapp.open() was not called")
        return self._session

    async def send(
        self,
        method: str,
        path_qs: str,
        headers: CIMultiDict[str],
        body: bytes | AsyncIterator[bytes] | None,
    ) -> aiohttp.ClientResponse:
        """Send one request; the caller holds one of :attr:`slots` and owns (and must release)
        the response.

        Raises :class:`~gateway.errors.GatewayError` with ``kind`` set when no response came.
        """
        url = URL(self._base + path_qs, encoded=True)
        silence = self.config.server.upstream_timeout
        progress = None
        try:
            # From sending to the response headers, moved on while the Webapp takes the body.
            async with asyncio.timeout(silence) as deadline:
                if body is not None and not isinstance(body, bytes):
                    body = progress = _Progress(deadline, silence, body)
                response = await self.session.request(
                    method, url, headers=headers, data=body, allow_redirects=False
                )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise translate(exc) from exc
        finally:
            # A Webapp may answer before it has taken the whole body; the rest goes out while
            # its answer streams back, with no deadline left to move (aiohttp closes the
            # connection once the answer has ended, and the rest of the upload with it).
            if progress is not None:
                progress.answered = True
        if response.status < 200:
            # aiohttp hands back a 101 as if final; the connection no longer speaks HTTP, and a
            # front proxy that saw the 101 would tunnel whatever the client sends next.
            response.close()
            raise WebappUnreachable(
                f"The Webapp answered with the interim status {response.status}.",
                kind="invalid_response",
            )
        problem = framing_problem(response.headers)
        if problem is not None:
            response.close()
            raise WebappUnreachable(
                f"The Webapp framed its answer {problem}.", kind="invalid_response"
            )
        return response

    async def check(self, account: Account, token: Token) -> bool:
        """Whether the Webapp accepts ``token``, as ``GET /v1/health`` (the cheapest call that
        needs one) says. Raises when the Webapp gives no answer, or one that cannot tell."""
        headers = {"Authorization": token.authorization()}
        async with self.session.get(
            self._base + CHECK_PATH, headers=headers, allow_redirects=False
        ) as response:
            accepted = token_verdict(response.status)
        if accepted is None:
            raise WebappUnavailable(f"The Webapp answered the token check with {response.status}.")
        return accepted

    async def login(self, account: Account, *, rotate: bool = False) -> Grant:
        """Log in as ``account`` with Basic auth; raise :class:`LoginFailed` naming the cause.

        With a password file, the login goes through :func:`gateway.rotation.log_in`, which
        finishes an interrupted rotation first and, with ``rotate`` (or when the Webapp requires
        a new password and rotation is on), changes the password as part of the login.
        """
        webapp = self.config.webapp
        if self._password_file is None:
            if webapp.password is None or rotate:  # load_config and the CLI never let this happen
                raise BadCredentials("No password file is configured.")
            return await self._post_login(account, webapp.password, None)
        return await log_in(
            self._password_file,
            lambda password, new: self._post_login(account, password, new),
            rotate=rotate,
            rotate_if_required=webapp.password_rotate_every > 0,
            # Within the pool's limit on the whole login, so that a held lock is named as such.
            lock_wait=self.config.tokens.login_timeout / 2,
        )

    async def _post_login(
        self, account: Account, password: Secret, new_password: Secret | None
    ) -> Grant:
        """Log in with Basic credentials encoded as Latin-1, HTTP's historical default; a
        Webapp that refuses credentials with characters beyond ASCII is asked again with them
        in UTF-8, since which one it decodes is not documented (a 401 means it did not act).
        The encoding that worked is tried first from then on."""
        first = self._basic_encoding
        try:
            return await self._post_login_as(account, password, new_password, first)
        except BadCredentials:
            if account.username.isascii() and password.reveal().isascii():
                raise  # the same bytes either way
            other = "utf-8" if first == "latin-1" else "latin-1"
            grant = await self._post_login_as(account, password, new_password, other)
            self._basic_encoding = other  # the Webapp's reading: first from now on
            return grant

    async def _post_login_as(
        self, account: Account, password: Secret, new_password: Secret | None, encoding: str
    ) -> Grant:
        headers = {
            "Authorization": aiohttp.encode_basic_auth(
                account.username, password.reveal(), encoding=encoding
            ),
            "Accept": "application/json",
        }
        body = None
        if new_password is not None:
            body = {"new_password": new_password.reveal()}
            headers["Content-Type"] = "application/json"  # the session skips the automatic one
        local_now = self._clock.time()
        try:
            # A redirect is an answer, never followed: it could take a new password elsewhere.
            async with self.session.post(
                self._base + LOGIN_PATH, headers=headers, json=body, allow_redirects=False
            ) as response:
                answer = await _read_capped(response.content, MAX_LOGIN_ANSWER)
                return parse_login(response.status, response.headers.get("Date"), answer, local_now)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise WebappUnavailable(f"Login: {translate(exc).details}") from exc


class _Progress:
    """A body's ``chunks``, moving ``deadline`` to ``silence`` seconds after each is asked for,
    until the answer has come: aiohttp asks for the next chunk once the connection took the last
    one, so a Webapp that keeps taking a large body is not silent, however long it takes."""

    def __init__(
        self, deadline: asyncio.Timeout, silence: float, chunks: AsyncIterator[bytes]
    ) -> None:
        self._deadline = deadline
        self._silence = silence
        self._chunks = chunks
        self.answered = False

    def __aiter__(self) -> _Progress:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await anext(self._chunks)
        finally:  # after the last chunk too: then the silence before the answer starts
            if not self.answered:
                now = asyncio.get_running_loop().time()
                extend(self._deadline, now + self._silence, self._silence)


async def _read_capped(content: aiohttp.StreamReader, limit: int) -> bytes:
    data = bytearray()
    while chunk := await content.read(limit + 1 - len(data)):
        data += chunk
        if len(data) > limit:
            raise InvalidLoginAnswer(f"The Webapp's login answer is larger than {limit} bytes.")
    return bytes(data)
