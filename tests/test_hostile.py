"""Hostile or broken clients, spoken to in raw bytes on the gateway's socket.

``CASES`` is the table: each row is what a client sends and exactly what must come of it: the
status (or a connection closed without an answer), whether the connection ends after the answer,
and what the Webapp receives (nothing, or one sanitised request). Every row is also checked for what
must never happen: a 5xx, a traceback or an ERROR event in the log, a request at the Webapp that
should not be there, a request still counted in flight, a gateway that no longer answers.

The behaviours a table row cannot express (slow clients, clients that stop reading, hang up halfway
or pipeline) have a test each below it, and a property sends random headers over the wire.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import tracemalloc
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
from aiohttp import web_protocol
from aiohttp.http_parser import HttpRequestParserPy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.headers import HOP_BY_HOP
from gateway.simulator import Fault, Seen

from . import rawhttp
from .conftest import API_KEY, Logs, MakeRig, Rig, open_files, until
from .rawhttp import Connection, RawResponse

MiB = 1 << 20
HOST = b"Host: 127.0.0.1"
LOGIN = "/v1/users/login"
# Small limits and timeouts keep the table fast; the simulator's own limits (aiohttp's defaults,
# 8190 bytes a line) stay above the gateway's, so a request at the gateway's limit can pass.
LIMITS = {
    "GATEWAY_MAX_URL": "4096",
    "GATEWAY_MAX_HEADER": "4096",
    "GATEWAY_MAX_HEADER_SECTION": "16KiB",
    "GATEWAY_MAX_BODY": "64KiB",
    "GATEWAY_BODY_MEMORY": "16KiB",
    "GATEWAY_CLIENT_IDLE_TIMEOUT": "0.5",
    "GATEWAY_CLIENT_BODY_TIMEOUT": "0.5",
}
IDLE = 0.5
# The WhatsApp-style code of each status the gateway answers itself (the README's errors table).
ERROR_CODES = {
    400: 1025,
    403: 1005,
    404: 1006,
    405: 1025,
    408: 1025,
    413: 1009,
    414: 1025,
    431: 1025,
}


def http(line: bytes, *headers: bytes, body: bytes = b"", host: bool = True) -> bytes:
    """A request in raw bytes: ``line``, a Host header unless ``host`` is False, ``headers``
    (each without its CRLF), the empty line and ``body``, exactly as given."""
    fields = [HOST, *headers] if host else list(headers)
    return line + b"\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n" + body


def chunked(line: bytes, *headers: bytes, chunks: bytes) -> bytes:
    return http(line, *headers, b"Transfer-Encoding: chunked", body=chunks)


@dataclass(frozen=True)
class Upstream:
    """The one request the Webapp must receive for a case (beyond the gateway's own login).

    ``headers`` must be there with these values and ``absent`` must not be; ``content_length``
    None means the request carries no Content-Length at all.
    """

    method: str
    path_qs: str
    content_length: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    absent: tuple[str, ...] = ()


@dataclass(frozen=True)
class Case:
    """One hostile request: ``raw`` (or parts sent a moment apart), and its exact outcome."""

    name: str
    raw: bytes | tuple[bytes, ...]
    expect: int | Literal["closed"]
    reaches: Upstream | None = None  # None: nothing reaches the Webapp
    closes: bool = True  # the connection ends after the answer (else it serves another request)
    details: str | None = None  # a fragment of the error's `details`, when it matters


HEALTH = Upstream("GET", "/v1/health")
MEDIA3 = Upstream("POST", "/v1/media", content_length=3)
GET = b"GET /v1/health HTTP/1.1"
POST = b"POST /v1/media HTTP/1.1"
LONG = b"a" * 5000
BODY_IN_BODY = b"GET /v1/users/admin HTTP/1.1\r\nHost: x\r\n\r\n"
# Every header a client may not pass on: credentials, hop-by-hop ones, forwarding claims.
STRIPPED = (
    b"Authorization: Bearer client-token",
    b"Proxy-Authorization: Basic eDp5",
    b"Connection: X-Secret, Keep-Alive",
    b"X-Secret: s3cret",
    b"Keep-Alive: timeout=5",
    b"TE: trailers",
    b"Trailer: X-Late",
    b"Upgrade: websocket",
    b"Proxy-Connection: keep-alive",
    b"Forwarded: for=6.6.6.6;host=evil.example",
    b"X-Forwarded-Host: evil.example",
    b"X-Forwarded-Proto: gopher",
    b"X-Forwarded-Port: 1",
    b"X-Forwarded-For: 1.2.3.4",
)
STRIPPED_NAMES = (
    *("Proxy-Authorization", "Connection", "X-Secret", "Keep-Alive", "TE", "Trailer"),
    *("Upgrade", "Proxy-Connection", "Forwarded", "X-Forwarded-Port"),
)

CASES: list[Case] = [
    # --- request lines -----------------------------------------------------------------------
    Case("line-method-only", b"GET\r\n\r\n", 400),
    Case("line-http09-simple-request", b"GET /v1/health\r\n\r\n", 400),
    Case("line-http2-version", http(b"GET /v1/health HTTP/2.0"), 400, details="HTTP/1.1"),
    Case("line-http12-version", http(b"GET /v1/health HTTP/1.2"), 400),
    Case("line-lowercase-version", http(b"GET /v1/health http/1.1"), 400),
    Case("line-extra-token", http(b"GET /v1/health HTTP/1.1 x"), 400),
    Case("line-trailing-space", http(b"GET /v1/health HTTP/1.1 "), 400),
    Case("line-tab-separator", http(b"GET\t/v1/health HTTP/1.1"), 400),
    Case("line-lowercase-method", http(b"get /v1/health HTTP/1.1"), 400),
    Case("line-unknown-method", http(b"FOO /v1/health HTTP/1.1"), 400),
    Case("line-bare-lf", b"GET /v1/health HTTP/1.1\nHost: 127.0.0.1\n\n", 400),
    Case("line-bare-cr", http(b"GET /v1/health HTTP/1.1\rX: y"), 400),
    Case("line-space-before-first-header", http(GET, b" X-A: 1"), 400),
    # RFC 9112 section 3 lets a server split the line on whitespace; what is sent is rebuilt.
    Case("line-double-space", http(b"GET  /v1/health HTTP/1.1"), 200, HEALTH, closes=False),
    # RFC 9112 section 2.2: an empty line before the request line is ignored.
    Case("line-leading-empty-line", b"\r\n" + http(GET), 200, HEALTH, closes=False),
    Case("http2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
    Case(
        "tls-client-hello",
        bytes.fromhex("160301002f0100002b0303") + bytes(32) + bytes.fromhex("000002002f0100"),
        400,
    ),
    Case("binary-garbage", bytes(range(256)) * 4, 400),
    # --- Content-Length ----------------------------------------------------------------------
    Case("cl-not-a-number", http(POST, b"Content-Length: abc"), 400),
    Case("cl-negative", http(POST, b"Content-Length: -1"), 400),
    Case("cl-plus-sign", http(POST, b"Content-Length: +3", body=b"abc"), 400),
    Case("cl-hex", http(POST, b"Content-Length: 0x3", body=b"abc"), 400),
    Case("cl-empty", http(POST, b"Content-Length: ", body=b"abc"), 400),
    Case("cl-inner-space", http(POST, b"Content-Length: 1 2", body=b"abc"), 400),
    Case("cl-list-of-equal-values", http(POST, b"Content-Length: 3, 3", body=b"abc"), 400),
    Case(
        "cl-duplicated",
        http(POST, b"Content-Length: 3", b"Content-Length: 3", body=b"abc"),
        400,
    ),
    Case(
        "cl-conflicting",
        http(POST, b"Content-Length: 3", b"Content-Length: 4", body=b"abcd"),
        400,
    ),
    Case("cl-overflow", http(POST, b"Content-Length: 99999999999999999999999"), 400),
    Case("cl-space-before-colon", http(POST, b"Content-Length : 3", body=b"abc"), 400),
    Case(
        "cl-leading-zeros",
        http(POST, b"Content-Length: 003", body=b"abc"),
        201,
        MEDIA3,
        closes=False,
    ),
    Case("cl-above-max-body", http(POST, b"Content-Length: 65537", body=b"abc"), 413),
    Case("cl-body-stalls", http(POST, b"Content-Length: 10", body=b"abc"), 408, details="stalled"),
    # --- request smuggling -------------------------------------------------------------------
    Case(
        "smuggle-cl-te",
        http(
            POST, b"Content-Length: 3", b"Transfer-Encoding: chunked", body=b"3\r\nabc\r\n0\r\n\r\n"
        ),
        400,
    ),
    Case(
        "smuggle-te-cl",
        http(
            POST, b"Transfer-Encoding: chunked", b"Content-Length: 3", body=b"3\r\nabc\r\n0\r\n\r\n"
        ),
        400,
    ),
    Case(
        "smuggle-te-chunked-identity",
        http(POST, b"Transfer-Encoding: chunked, identity", body=b"3\r\nabc\r\n0\r\n\r\n"),
        400,
    ),
    Case("smuggle-te-identity", http(POST, b"Transfer-Encoding: identity", body=b"abc"), 400),
    Case(
        "smuggle-te-space-before-colon",
        http(POST, b"Transfer-Encoding : chunked", body=b"3\r\nabc\r\n0\r\n\r\n"),
        400,
    ),
    Case(
        "smuggle-te-vertical-tab",
        http(POST, b"Transfer-Encoding: \x0bchunked", body=b"3\r\nabc\r\n0\r\n\r\n"),
        400,
    ),
    Case(
        "smuggle-te-xchunked",
        http(POST, b"Transfer-Encoding: xchunked", body=b"3\r\nabc\r\n0\r\n\r\n"),
        400,
    ),
    Case(
        "smuggle-te-quoted",
        http(POST, b'Transfer-Encoding: "chunked"', body=b"3\r\nabc\r\n0\r\n\r\n"),
        400,
    ),
    Case(
        "smuggle-te-trailing-comma",
        http(POST, b"Transfer-Encoding: chunked,", body=b"3\r\nabc\r\n0\r\n\r\n"),
        400,
    ),
    Case(
        "smuggle-te-duplicated",
        http(
            POST,
            b"Transfer-Encoding: chunked",
            b"Transfer-Encoding: chunked",
            body=b"3\r\nabc\r\n0\r\n\r\n",
        ),
        400,
    ),
    Case(
        "smuggle-te-empty-with-cl",
        http(POST, b"Transfer-Encoding: ", b"Content-Length: 3", body=b"abc"),
        400,
        details="Transfer-Encoding",
    ),
    Case(
        "smuggle-te-gzip-chunked",
        http(POST, b"Transfer-Encoding: gzip, chunked", body=b"3\r\nabc\r\n0\r\n\r\n"),
        400,
        details="Transfer-Encoding",
    ),
    Case(
        "smuggle-te-in-http10",
        http(
            b"POST /v1/media HTTP/1.0",
            b"Connection: keep-alive",
            b"Transfer-Encoding: chunked",
            body=b"3\r\nabc\r\n0\r\n\r\n",
        ),
        400,
        details="Transfer-Encoding",
    ),
    # A tab is optional whitespace (RFC 9110 section 5.6.3): this is plain chunked framing.
    Case(
        "smuggle-te-tab-is-whitespace",
        http(POST, b"Transfer-Encoding:\tchunked", body=b"3\r\nabc\r\n0\r\n\r\n"),
        201,
        MEDIA3,
    ),
    Case(
        "smuggle-te-uppercase",
        http(POST, b"Transfer-Encoding: CHUNKED", body=b"3\r\nabc\r\n0\r\n\r\n"),
        201,
        MEDIA3,
    ),
    Case(
        "smuggle-request-in-body",
        http(
            POST,
            b"Content-Type: application/octet-stream",
            f"Content-Length: {len(BODY_IN_BODY)}".encode(),
            body=BODY_IN_BODY,
        ),
        201,
        Upstream("POST", "/v1/media", content_length=len(BODY_IN_BODY)),
        closes=False,
    ),
    # The Webapp gets the body with its length, so it cannot read it as a second request either.
    Case(
        "smuggle-request-in-get-body",
        http(GET, f"Content-Length: {len(BODY_IN_BODY)}".encode(), body=BODY_IN_BODY),
        200,
        Upstream("GET", "/v1/health", content_length=len(BODY_IN_BODY)),
        closes=False,
    ),
    # --- chunked bodies ----------------------------------------------------------------------
    Case("chunk-size-not-hex", chunked(POST, chunks=b"zz\r\nabc\r\n0\r\n\r\n"), 400),
    Case(
        "chunk-size-overflow", chunked(POST, chunks=b"fffffffffffffffffff\r\nabc\r\n0\r\n\r\n"), 400
    ),
    Case("chunk-size-negative", chunked(POST, chunks=b"-3\r\nabc\r\n0\r\n\r\n"), 400),
    Case("chunk-size-0x-prefix", chunked(POST, chunks=b"0x3\r\nabc\r\n0\r\n\r\n"), 400),
    Case("chunk-size-trailing-space", chunked(POST, chunks=b"3 \r\nabc\r\n0\r\n\r\n"), 400),
    Case("chunk-longer-than-its-size", chunked(POST, chunks=b"3\r\nabcX\r\n0\r\n\r\n"), 400),
    Case("chunk-extension-bare-lf", chunked(POST, chunks=b"3;x\nabc\r\n0\r\n\r\n"), 400),
    Case(
        "chunk-size-broken-after-headers",
        (chunked(POST, chunks=b"3\r\nabc\r\n"), b"zz\r\nabc\r\n0\r\n\r\n"),
        400,
        details="framed",
    ),
    Case(
        "chunk-extension",
        chunked(POST, chunks=b"3;name=value\r\nabc\r\n0\r\n\r\n"),
        201,
        MEDIA3,
    ),
    # A chunked request's connection closes after the answer: aiohttp's C parser hands the
    # trailer's fields to the next request on it, as headers of its own.
    Case(
        "chunk-trailer-carries-credentials",
        chunked(POST, chunks=b"3\r\nabc\r\n0\r\nAuthorization: Bearer client\r\nX-Late: 1\r\n\r\n"),
        201,
        Upstream("POST", "/v1/media", content_length=3, absent=("X-Late",)),
    ),
    Case(
        "chunked-body-above-max-body",
        chunked(POST, chunks=b"10001\r\n" + b"x" * 0x10001),  # and more to come
        413,
    ),
    # --- sizes -------------------------------------------------------------------------------
    Case(
        "url-at-limit",
        http(b"GET /v1/health?" + b"a" * (4096 - 11) + b" HTTP/1.1"),
        200,
        Upstream("GET", "/v1/health?" + "a" * (4096 - 11)),
        closes=False,
    ),
    Case(
        "url-over-limit",
        http(b"GET /v1/health?" + b"a" * (4097 - 11) + b" HTTP/1.1"),
        414,
        closes=False,
    ),
    Case("url-over-line-limit", http(b"GET /v1/health?" + b"a" * 9000 + b" HTTP/1.1"), 414),
    Case(
        "header-at-limit",
        http(GET, b"X-Big: " + b"a" * 4096),
        200,
        Upstream("GET", "/v1/health", headers={"X-Big": "a" * 4096}),
        closes=False,
    ),
    Case("header-value-over-limit", http(GET, b"X-Big: " + b"a" * 4097), 431),
    Case("header-name-over-limit", http(GET, b"X-" + LONG + b": 1"), 431),
    Case(
        "headers-at-count-limit",
        http(GET, *(b"X-%d: 1" % i for i in range(99))),
        200,
        Upstream("GET", "/v1/health", headers={"X-98": "1"}),
        closes=False,
    ),
    Case("headers-over-count-limit", http(GET, *(b"X-%d: 1" % i for i in range(100))), 431),
    Case(
        "header-section-within-limit",
        http(GET, *(b"X-Big-%d: " % i + b"a" * 4000 for i in range(3))),
        200,
        Upstream("GET", "/v1/health", headers={"X-Big-2": "a" * 4000}),
        closes=False,
    ),
    Case(
        "header-section-over-limit",
        http(GET, *(b"X-Big-%d: " % i + b"a" * 4000 for i in range(5))),
        431,
        details="together",
    ),
    Case(
        # Fields that are each within the limits, dribbled in and never finished: refused once
        # they add up, not held until the idle timeout.
        "header-section-over-limit-never-finished",
        (
            GET + b"\r\n" + HOST + b"\r\nX-Pad: " + b"a" * 400 + b"\r\n",
            *(b"X-Big-%d: " % i + b"a" * 4000 + b"\r\n" for i in range(4)),
        ),
        431,
        details="together",
    ),
    # --- targets that would choose another destination ---------------------------------------
    Case(
        "absolute-form",
        http(b"GET http://evil.example/v1/health HTTP/1.1"),
        200,
        Upstream("GET", "/v1/health", headers={"X-Forwarded-Host": "127.0.0.1"}),
        closes=False,
    ),
    Case(
        "absolute-form-userinfo-port-query",
        http(b"GET http://user:pw@evil.example:81/v1/health?x=1 HTTP/1.1"),
        200,
        Upstream("GET", "/v1/health?x=1"),
        closes=False,
    ),
    Case(
        "absolute-form-user-admin",
        http(b"GET http://evil.example/v1/users/admin HTTP/1.1"),
        403,
        closes=False,
    ),
    Case("absolute-form-no-path", http(b"GET http://evil.example HTTP/1.1"), 404, closes=False),
    Case("authority-form-get", http(b"GET evil.example:443 HTTP/1.1"), 400),
    Case(
        "connect-authority",
        http(b"CONNECT evil.example:443 HTTP/1.1", b"Host: evil.example:443", host=False),
        405,
        closes=False,
        details="no tunnels",
    ),
    Case("connect-path", http(b"CONNECT /v1/health HTTP/1.1"), 405, closes=False),
    Case("trace", http(b"TRACE /v1/health HTTP/1.1"), 405, closes=False),
    Case("options-asterisk", http(b"OPTIONS * HTTP/1.1"), 404, closes=False),
    Case(
        "double-slash-authority", http(b"GET //evil.example/v1/health HTTP/1.1"), 404, closes=False
    ),
    # --- paths -------------------------------------------------------------------------------
    Case("dot-dot-into-users", http(b"GET /v1/../v1/users/admin HTTP/1.1"), 403, closes=False),
    Case(
        "encoded-dot-dot-into-users",
        http(b"GET /v1/%2e%2e/v1/users/admin HTTP/1.1"),
        403,
        closes=False,
    ),
    Case(
        "encoded-dot-dot-above-root",
        http(b"GET /v1/%2E%2E/%2e%2e/etc/passwd HTTP/1.1"),
        400,
        closes=False,
    ),
    Case(
        "dot-dot-into-the-api",
        http(b"GET /nope/../v1/./health HTTP/1.1"),
        200,
        HEALTH,
        closes=False,
    ),
    Case("encoded-slash", http(b"GET /v1/users%2fadmin HTTP/1.1"), 400, closes=False),
    Case("encoded-slash-upper", http(b"GET /v1/users%2Fadmin HTTP/1.1"), 400, closes=False),
    Case("encoded-backslash", http(b"GET /v1/%5c..%5cusers HTTP/1.1"), 400, closes=False),
    Case("raw-backslash", http(b"GET /v1\\..\\users HTTP/1.1"), 400, closes=False),
    Case("dot-dot-semicolon", http(b"GET /v1/..;/v1/users/admin HTTP/1.1"), 400, closes=False),
    Case("encoded-nul", http(b"GET /v1/health%00 HTTP/1.1"), 400, closes=False),
    # The router's pattern must match a decoded newline too, or the policy never sees the path.
    Case("encoded-line-feed", http(b"GET /v1/health%0a HTTP/1.1"), 400, closes=False),
    Case("encoded-line-feed-users", http(b"GET /v1/users%0a/admin HTTP/1.1"), 400, closes=False),
    Case("encoded-non-utf8", http(b"GET /v1/%ff HTTP/1.1"), 400, closes=False),
    Case("encoded-overlong-dots", http(b"GET /v1/%c0%ae%c0%ae/users HTTP/1.1"), 400, closes=False),
    Case("raw-non-utf8", http(b"GET /v1/\xff HTTP/1.1"), 400),
    Case("raw-utf8", http(b"GET /v1/caf\xc3\xa9 HTTP/1.1"), 400),
    Case("raw-nul", http(b"GET /v1/\x00 HTTP/1.1"), 400),
    Case("fragment", http(b"GET /v1/health#x HTTP/1.1"), 400, closes=False),
    Case("query-raw-non-ascii", http(b"GET /v1/health?a=\xc3\xa9 HTTP/1.1"), 400),
    Case(
        "query-escapes-pass-verbatim",
        http(b"GET /v1/health?a=%20&b=%00&c=%2f HTTP/1.1"),
        200,
        Upstream("GET", "/v1/health?a=%20&b=%00&c=%2f"),
        closes=False,
    ),
    # --- header injection --------------------------------------------------------------------
    Case("header-nul", http(GET, b"X-A: a\x00Injected: 1"), 400),
    Case("header-bare-cr", http(GET, b"X-A: a\rInjected: 1"), 400),
    Case("header-bare-lf", http(GET, b"X-A: a\nInjected: 1"), 400),
    Case("header-obs-fold-space", http(GET, b"X-A: a", b" Injected: 1"), 400),
    Case("header-obs-fold-tab", http(GET, b"X-A: a", b"\tInjected: 1"), 400),
    Case("header-control-character", http(GET, b"X-A: a\x01b"), 400),
    Case("header-delete-character", http(GET, b"X-A: a\x7fb"), 400),
    Case("header-name-with-space", http(GET, b"Bad Header: 1"), 400),
    Case("header-name-non-ascii", http(GET, b"X-\xc3\xa9: 1"), 400),
    Case("header-without-colon", http(GET, b"NoColon"), 400),
    Case("header-empty-name", http(GET, b": x"), 400),
    Case(
        "header-value-not-utf8",
        http(GET, b"X-A: caf\xe9"),
        400,
        closes=False,
        details="UTF-8",
    ),
    Case(
        "header-value-utf8",
        http(GET, b"X-A: caf\xc3\xa9"),
        200,
        Upstream("GET", "/v1/health", headers={"X-A": "caf\u00e9"}),
        closes=False,
    ),
    Case("host-duplicated", http(GET, HOST), 400),
    Case("host-missing", http(GET, host=False), 400),
    Case(
        "credentials-and-hop-by-hop-headers",
        http(GET, *STRIPPED),
        200,
        Upstream(
            "GET",
            "/v1/health",
            headers={"X-Forwarded-For": "1.2.3.4, 127.0.0.1", "X-Forwarded-Host": "127.0.0.1"},
            absent=STRIPPED_NAMES,
        ),
        closes=False,
    ),
    Case(
        "upgrade-h2c-is-not-performed",
        http(
            GET,
            b"Connection: Upgrade, HTTP2-Settings",
            b"Upgrade: h2c",
            b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
        ),
        200,
        Upstream("GET", "/v1/health", absent=("Upgrade", "HTTP2-Settings", "Connection")),
        # aiohttp's C parser would drop a request pipelined behind this one: see protocol.py.
        closes=True,
    ),
    Case(
        "expect-100-continue",
        http(POST, b"Expect: 100-continue", b"Content-Length: 3", body=b"abc"),
        201,
        Upstream("POST", "/v1/media", content_length=3, absent=("Expect",)),
        closes=False,
    ),
    Case(
        "expect-unknown-is-ignored",
        http(POST, b"Expect: the-unexpected", b"Content-Length: 3", body=b"abc"),
        201,
        Upstream("POST", "/v1/media", content_length=3, absent=("Expect",)),
        closes=False,
    ),
    Case(
        "expect-on-a-refused-path",
        http(b"POST /nope HTTP/1.1", b"Expect: 100-continue", b"Content-Length: 3"),
        404,
    ),
    # --- clients that say nothing ------------------------------------------------------------
    Case("silent-connection", b"", "closed"),
    Case("request-line-never-ends", b"GET /v1/hea", "closed"),
    Case("headers-never-end", b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n", "closed"),
]
CASE_NAMES = [case.name for case in CASES]
HOSTILE_CASE_COUNT = len(CASES)


# --- helpers -------------------------------------------------------------------------------------


def forwarded(rig: Rig) -> list[Seen]:
    """What reached the Webapp, without the gateway's own logins."""
    return [seen for seen in rig.sim.seen if seen.path_qs != LOGIN]


def error_of(response: RawResponse) -> dict[str, object]:
    """The gateway's WhatsApp-style error in ``response``, checked for shape."""
    assert response.headers["content-type"].startswith("application/json")
    document = json.loads(response.body)
    (error,) = document["errors"]
    assert set(error) == {"code", "title", "details"}
    assert document["meta"]["version"].startswith("wa-gateway")
    return dict(error)


def assert_sanitised(seen: Seen, rig: Rig) -> None:
    """What every forwarded request has: the gateway's credential and framing, no hop-by-hop."""
    (credential,) = [
        value for name, value in seen.headers.items() if name.lower() == "authorization"
    ]
    scheme, _, value = credential.partition(" ")
    assert (scheme, value) in {
        ("Apikey", API_KEY),
        *(("Bearer", token) for token in rig.sim.issued_tokens),
    }
    names = {name.lower() for name in seen.headers}
    assert not names & HOP_BY_HOP, names & HOP_BY_HOP
    assert "forwarded" not in names


def assert_reached(seen: list[Seen], expected: Upstream | None, rig: Rig) -> None:
    if expected is None:
        assert seen == []
        return
    (request,) = seen
    assert (request.method, request.path_qs) == (expected.method, expected.path_qs)
    assert_sanitised(request, rig)
    length = request.headers.get("Content-Length")
    assert length == (None if expected.content_length is None else str(expected.content_length))
    for name, value in expected.headers.items():
        assert request.headers.get(name) == value, name
    for name in expected.absent:
        assert name not in request.headers, name


async def assert_healthy(rig: Rig, logs: Logs) -> None:
    """The gateway still answers, holds no request, and logged no crash."""
    async with Connection(rig.client.port) as conn:
        await conn.send(http(GET, b"Connection: close"))
        assert (await conn.response()).status == 200
    await until(lambda: rig.gateway.in_flight.count == 0)
    assert "Traceback" not in logs.text
    levels = {event.get("level") for event in logs.events}
    assert not levels & {"error", "critical"}, [e for e in logs.events if e.get("level") == "error"]


async def send(conn: Connection, raw: bytes | tuple[bytes, ...]) -> None:
    parts = (raw,) if isinstance(raw, bytes) else raw
    for index, part in enumerate(parts):
        if index:
            await asyncio.sleep(0.1)  # a separate read for the server
        await conn.send(part)


# --- the table -------------------------------------------------------------------------------


def test_the_table_names_each_case_once() -> None:
    assert len(set(CASE_NAMES)) == HOSTILE_CASE_COUNT


@pytest.mark.parametrize("case", CASES, ids=CASE_NAMES)
async def test_hostile_request(make_rig: MakeRig, logs: Logs, case: Case) -> None:
    rig = await make_rig(env=LIMITS)
    started = time.monotonic()
    async with Connection(rig.client.port) as conn:
        await send(conn, case.raw)
        if case.expect == "closed":
            assert await conn.closed(within=4 * IDLE)
            assert time.monotonic() - started < 4 * IDLE
        else:
            response = await conn.response()
            assert response.status == case.expect
            request_id = response.headers["x-request-id"]
            assert request_id
            if case.reaches is None:  # answered by the gateway itself
                error = error_of(response)
                assert error["code"] == ERROR_CODES[case.expect]
                assert case.details is None or case.details in str(error["details"])
                events = logs.named("request.completed")
                assert [e["status"] for e in events if e["request_id"] == request_id] == [
                    case.expect
                ]
            assert_reached(forwarded(rig), case.reaches, rig)
            if case.closes:
                assert response.closes
                conn.half_close()
                assert await conn.closed(within=1)
            else:
                assert not response.closes
                await conn.send(http(GET))  # the same connection, still in step
                assert (await conn.response()).status == 200
    if case.expect == "closed":
        assert forwarded(rig) == []
    await assert_healthy(rig, logs)


# --- slow clients ------------------------------------------------------------------------------


async def test_headers_sent_byte_by_byte_are_cut_off_without_holding_a_request(
    make_rig: MakeRig, logs: Logs
) -> None:
    """Slowloris: ten clients trickle their headers; each is disconnected once the idle timeout
    has passed, none is ever a request in flight, and the gateway serves others meanwhile."""
    rig = await make_rig(env=LIMITS)
    request = http(GET, b"X-Padding: " + b"p" * 40)

    async def trickle() -> tuple[int, bytes, float]:
        async with Connection(rig.client.port) as conn:
            started = time.monotonic()
            sent, received = await conn.trickle(request, pause=0.05)
            return sent, received, time.monotonic() - started

    async def meanwhile() -> int:
        await asyncio.sleep(0.2)
        assert rig.gateway.in_flight.count == 0
        async with Connection(rig.client.port) as conn:
            await conn.send(http(GET, b"Connection: close"))
            return (await conn.response()).status

    *slow, status = await asyncio.gather(*(trickle() for _ in range(10)), meanwhile())
    assert status == 200
    for sent, received, elapsed in slow:
        assert sent < len(request)
        assert received == b""
        assert 0.8 * IDLE <= elapsed < 3 * IDLE  # timed from the connection, opened just before
    assert [seen.path_qs for seen in forwarded(rig)] == ["/v1/health"]  # the other client's
    await assert_healthy(rig, logs)


async def test_a_body_sent_byte_by_byte_gets_408_and_is_never_forwarded(
    make_rig: MakeRig, logs: Logs
) -> None:
    """Each byte comes later than the body timeout allows: 408 with the error body after the first
    pause, the connection closed at once, and the Webapp never hears of the upload."""
    rig = await make_rig(env=LIMITS)
    async with Connection(rig.client.port) as conn:
        await conn.send(http(POST, b"Content-Length: 20"))
        started = time.monotonic()
        sent, received = await conn.trickle(b"x" * 20, pause=2 * IDLE)
        elapsed = time.monotonic() - started
    assert sent < 20
    assert 0.8 * IDLE <= elapsed < 4 * IDLE
    response = rawhttp.parse(received)
    assert response.status == 408
    assert error_of(response)["code"] == 1025
    assert response.headers["x-request-id"]
    assert response.closes
    assert forwarded(rig) == []
    assert rig.gateway.in_flight.count == 0
    (event,) = logs.named("request.completed")
    assert event["failure"] == "client_body_timeout"
    await assert_healthy(rig, logs)


async def test_a_body_trickled_in_time_but_too_slowly_gets_408_and_is_never_forwarded(
    make_rig: MakeRig, logs: Logs
) -> None:
    """Each byte comes well within the body timeout, so no pause is too long; but 10 bytes a
    second is below the minimum rate of 100, so the body is cut off once its bytes have used up
    the time they bought (the timeout plus 10 ms a byte), not when the last byte would come."""
    rig = await make_rig(env={**LIMITS, "GATEWAY_CLIENT_BODY_MIN_RATE": "100"})
    async with Connection(rig.client.port) as conn:
        await conn.send(http(POST, b"Content-Length: 200"))
        sent, received = await conn.trickle(b"x" * 200, pause=IDLE / 5)
    assert sent < 50  # about 0.5 s + 10 ms a byte, at 10 bytes a second: the seventh byte or so
    response = rawhttp.parse(received)
    assert response.status == 408
    assert "slower than 100 bytes/s" in str(error_of(response)["details"])
    assert response.closes
    assert forwarded(rig) == []
    (event,) = logs.named("request.completed")
    assert event["failure"] == "client_body_too_slow"
    await assert_healthy(rig, logs)


async def test_a_fast_start_buys_no_more_than_one_timeout_for_a_trickle_after_it(
    make_rig: MakeRig, logs: Logs
) -> None:
    """10,000 bytes at once would buy 100 s at 100 bytes a second, were credit unbounded; it is
    capped at the body timeout, so the trickle after it is cut off within about that."""
    rig = await make_rig(env={**LIMITS, "GATEWAY_CLIENT_BODY_MIN_RATE": "100"})
    async with Connection(rig.client.port) as conn:
        await conn.send(http(POST, b"Content-Length: 10200") + b"x" * 10000)
        sent, received = await conn.trickle(b"x" * 200, pause=IDLE / 5)
    assert sent < 20  # about 0.5 s of one byte every 0.1 s
    response = rawhttp.parse(received)
    assert response.status == 408
    assert forwarded(rig) == []
    await assert_healthy(rig, logs)


async def test_a_body_slower_than_its_timeout_but_above_the_rate_is_forwarded(
    make_rig: MakeRig, logs: Logs
) -> None:
    """A 20 KiB upload that takes four times the body timeout, in 1 KiB pieces, each in time and
    at 10 KiB/s, above the minimum rate: it reaches the Webapp whole."""
    rig = await make_rig(env={**LIMITS, "GATEWAY_CLIENT_BODY_MIN_RATE": "1KiB"})
    async with Connection(rig.client.port) as conn:
        await conn.send(http(POST, b"Content-Length: 20480", b"Connection: close"))
        for _ in range(20):
            conn.writer.write(b"y" * 1024)
            await asyncio.sleep(IDLE / 5)
        response = await conn.response()
    assert response.status == 201
    assert [seen.body_size for seen in forwarded(rig)] == [20480]
    await assert_healthy(rig, logs)


async def test_a_body_that_never_starts_gets_408_and_is_never_forwarded(
    make_rig: MakeRig, logs: Logs
) -> None:
    """Headers announce a body and not one byte of it follows: the wait for the first byte has
    the body timeout too, so the request does not hold its slot for ever."""
    rig = await make_rig(env=LIMITS)
    async with Connection(rig.client.port) as conn:
        await conn.send(http(POST, b"Content-Length: 20"))
        async with asyncio.timeout(8 * IDLE):
            response = await conn.response()
    assert response.status == 408
    assert error_of(response)["code"] == 1025
    assert forwarded(rig) == []
    assert rig.gateway.in_flight.count == 0
    await assert_healthy(rig, logs)


async def test_an_idle_keep_alive_connection_is_closed(make_rig: MakeRig, logs: Logs) -> None:
    rig = await make_rig(env=LIMITS)
    async with Connection(rig.client.port) as conn:
        await conn.send(http(GET))
        assert (await conn.response()).status == 200
        started = time.monotonic()
        assert await conn.closed(within=4 * IDLE)
        assert 0.8 * IDLE <= time.monotonic() - started < 3 * IDLE
    await assert_healthy(rig, logs)


# --- clients that stop reading, or hang up halfway ---------------------------------------------

DOWNLOAD = 64 * MiB
# Python memory allocated from the request until well into the stall of a client that reads
# nothing of a 64 MiB answer. Backpressure keeps it to a few buffers on the way (under 2 MiB
# measured); without it, the whole answer would pile up (on 127.0.0.1 it arrives in the stall).
STALL_BOUND = 8 * MiB


async def test_a_client_that_stops_reading_holds_back_the_webapp_and_is_cut_off(
    make_rig: MakeRig, logs: Logs
) -> None:
    """Backpressure: memory stays bounded while the client reads nothing; past the send timeout
    the gateway resets the connection and releases the Webapp's."""
    rig = await make_rig(env={**LIMITS, "GATEWAY_CLIENT_SEND_TIMEOUT": "1"})
    media_id = rig.sim.add_media(DOWNLOAD)
    async with Connection(rig.client.port, receive_buffer=64 * 1024) as conn:
        tracemalloc.start()
        try:
            await conn.send(http(f"GET /v1/media/{media_id} HTTP/1.1".encode()))
            await until(lambda: rig.sim.in_flight == 1)
            await asyncio.sleep(0.7)  # the client reads nothing
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < STALL_BOUND, f"{peak} bytes allocated while the client read nothing"
        # Past the send timeout the gateway gives up on the client and frees the Webapp.
        await until(lambda: logs.named("request.completed"), within=3)
        (event,) = logs.named("request.completed")
        assert (event["status"], event["failure"]) == (200, "client_send_timeout")
        assert event["bytes_out"] < DOWNLOAD // 4
        await until(lambda: rig.sim.in_flight == 0)
        # ... and drops the connection, with whatever was still buffered for it.
        await until(lambda: not rig.client.server.runner.server.connections)
        received = await conn.read_rest()
    assert len(received) < DOWNLOAD // 4
    assert [s.path_qs for s in forwarded(rig)] == [f"/v1/media/{media_id}"]
    await assert_healthy(rig, logs)


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="counts descriptors in /proc")
async def test_a_client_that_hangs_up_mid_upload_leaves_nothing_behind(
    make_rig: MakeRig, logs: Logs, tmp_path: Path
) -> None:
    """Nothing of the upload reaches the Webapp and its spool file is closed."""
    rig = await make_rig(env={"GATEWAY_SPOOL_DIR": str(tmp_path)})
    total, sent = 8 * MiB, 3 * MiB
    async with Connection(rig.client.port) as conn:
        await conn.send(http(POST, f"Content-Length: {total}".encode()) + b"x" * sent)
        await until(lambda: open_files(tmp_path) == 1)  # beyond 1 MiB: spooled
        conn.abort()
    await until(lambda: open_files(tmp_path) == 0)
    await until(lambda: rig.gateway.in_flight.count == 0)
    assert forwarded(rig) == []
    (event,) = logs.named("request.completed")
    assert event["status"] == 499
    assert os.listdir(tmp_path) == []  # unlinked at creation
    await assert_healthy(rig, logs)


async def test_a_client_that_hangs_up_mid_download_releases_the_webapp(
    make_rig: MakeRig, logs: Logs
) -> None:
    rig = await make_rig()
    media_id = rig.sim.add_media(DOWNLOAD)
    async with Connection(rig.client.port) as conn:
        await conn.send(http(f"GET /v1/media/{media_id} HTTP/1.1".encode()))
        async with asyncio.timeout(5):
            await conn.reader.readexactly(MiB)
        conn.abort()
    await until(lambda: rig.sim.in_flight == 0)
    await until(lambda: rig.gateway.in_flight.count == 0)
    (download,) = forwarded(rig)  # sent once, never again
    assert download.path_qs == f"/v1/media/{media_id}"
    (event,) = logs.named("request.completed")
    assert event["failure"] in {"client_disconnected", "cancelled"}
    await assert_healthy(rig, logs)


# --- pipelining --------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [2, 10])
async def test_pipelined_requests_are_answered_in_order(rig: Rig, logs: Logs, count: int) -> None:
    ids = [f"pipelined-{n}" for n in range(count)]
    paths = ["/v1/health", "/v1/settings/application"]
    requests = [
        http(f"GET {paths[n % 2]} HTTP/1.1".encode(), f"X-Request-ID: {rid}".encode())
        for n, rid in enumerate(ids)
    ]
    async with Connection(rig.client.port) as conn:
        await conn.send(b"".join(requests))
        answers = [await conn.response() for _ in ids]
    assert [a.headers["x-request-id"] for a in answers] == ids
    assert [a.status for a in answers] == [200] * count
    assert [(s.request_id, s.path_qs) for s in forwarded(rig)] == [
        (rid, paths[n % 2]) for n, rid in enumerate(ids)
    ]
    await assert_healthy(rig, logs)


PIPELINES = [
    # (name, requests sent at once, statuses answered, paths the Webapp sees)
    ("after-an-unparsable-request", [http(GET, b"Bad Header: 1"), http(GET)], [400], []),
    # aiohttp drops what it parsed in the same read as the error: the good request is never
    # processed (nor answered), so the one answer is the 400.
    ("good-one-in-the-same-read", [http(GET), http(GET, b"X-A: \x00"), http(GET)], [400], []),
    (
        "inside-a-refused-body",
        [http(POST, b"Content-Length: 65537") + http(GET)],
        [413],
        [],
    ),
    (
        "after-a-broken-chunked-body",
        [chunked(POST, chunks=b"3\r\nabc\r\nzz\r\n"), http(GET)],
        [400],
        [],
    ),
    (
        "after-an-upgrade-request",
        [
            http(GET, b"Connection: Upgrade", b"Upgrade: websocket"),
            http(b"GET /v1/users/x HTTP/1.1"),
        ],
        [200, 403],
        ["/v1/health"],
    ),
    (
        # aiohttp's C parser drops what follows an h2c offer: the connection closes instead of
        # leaving the second request unanswered.
        "after-an-h2c-upgrade-request",
        [
            http(GET, b"Connection: Upgrade, HTTP2-Settings", b"Upgrade: h2c"),
            http(b"GET /v1/settings/application HTTP/1.1"),
        ],
        [200],
        ["/v1/health"],
    ),
    (
        # Answered, then closed: what follows a chunked body is not read (see above).
        "after-the-last-chunk",
        [chunked(POST, chunks=b"3\r\nabc\r\n0\r\n\r\n"), http(b"DELETE /v1/users/admin HTTP/1.1")],
        [201],
        ["/v1/media"],
    ),
    (
        "after-a-trailer",
        [
            chunked(POST, chunks=b"3\r\nabc\r\n0\r\nX-Leak: 1\r\n\r\n"),
            http(b"GET /v1/settings/application HTTP/1.1"),
        ],
        [201],
        ["/v1/media"],
    ),
]


@pytest.mark.parametrize(
    ("requests", "statuses", "reached"),
    [case[1:] for case in PIPELINES],
    ids=[case[0] for case in PIPELINES],
)
async def test_a_pipelined_request_is_processed_only_if_its_framing_is_sound(
    make_rig: MakeRig,
    logs: Logs,
    requests: list[bytes],
    statuses: list[int],
    reached: list[str],
) -> None:
    """After a request the gateway could not frame, nothing more is read from the connection; a
    request that follows sound framing is a request of its own, with its own policy check."""
    rig = await make_rig(env=LIMITS)
    async with Connection(rig.client.port) as conn:
        await conn.send(b"".join(requests))
        answers = [await conn.response() for _ in statuses]
        conn.half_close()
        assert await conn.closed(within=2)
    assert [a.status for a in answers] == statuses
    assert [s.path_qs for s in forwarded(rig)] == reached
    await assert_healthy(rig, logs)


# Five fields within GATEWAY_MAX_HEADER, 20 KB together: beyond the 16 KiB of LIMITS.
BIG_FIELDS = tuple(b"X-Big-%d: " % i + b"a" * 4000 for i in range(5))


@pytest.mark.parametrize(
    ("parts", "first_status"),
    [
        ((http(POST, b"Content-Length: 1"), b"x" + http(GET, *BIG_FIELDS)), 201),
        ((http(GET) + http(GET, *BIG_FIELDS)[:-5000], http(GET, *BIG_FIELDS)[-5000:]), 200),
    ],
    ids=["behind-the-end-of-a-body", "behind-a-request-across-two-reads"],
)
async def test_a_head_beyond_the_section_limit_is_refused_however_its_bytes_arrive(
    make_rig: MakeRig, logs: Logs, parts: tuple[bytes, ...], first_status: int
) -> None:
    """Bytes counted as they arrive miss the start of a head that shares a read with the end
    of the request before it; each parsed request is measured as well."""
    rig = await make_rig(env=LIMITS)
    async with Connection(rig.client.port) as conn:
        await send(conn, parts)
        answers = [await conn.response() for _ in range(2)]
    assert [answer.status for answer in answers] == [first_status, 431]
    assert len(forwarded(rig)) == 1
    await assert_healthy(rig, logs)


async def test_a_body_beyond_the_section_limit_is_a_body_not_a_head(
    make_rig: MakeRig, logs: Logs
) -> None:
    """A 40 KB upload whose last 39 KB arrive in one read, the one that ends the body, then the
    next request on the same connection: neither is taken for a head beyond
    GATEWAY_MAX_HEADER_SECTION."""
    rig = await make_rig(env=LIMITS)
    upload = http(POST, b"Content-Length: 40000", body=b"m" * 40000)
    async with Connection(rig.client.port) as conn:
        await send(conn, (upload[:-39000], upload[-39000:]))
        await asyncio.sleep(0.1)
        await conn.send(http(GET))
        answers = [await conn.response() for _ in range(2)]
    assert [answer.status for answer in answers] == [201, 200]
    assert [(seen.method, seen.body_size) for seen in forwarded(rig)] == [
        ("POST", 40000),
        ("GET", 0),
    ]
    await assert_healthy(rig, logs)


# --- both of aiohttp's parsers ----------------------------------------------------------------


@pytest.fixture(params=["c", "python"])
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The listener with aiohttp's C parser (when built), and with its pure-Python one, which
    aiohttp uses where no wheel is built or AIOHTTP_NO_EXTENSIONS is set."""
    if request.param == "python":
        monkeypatch.setattr(web_protocol, "HttpRequestParser", HttpRequestParserPy)
    return str(request.param)


CHUNKED_HEAD = http(POST, b"Transfer-Encoding: chunked")
BROKEN_BODIES = [
    # (name, parts sent a moment apart, statuses with the C parser and the pure-Python one)
    ("bad-size-after-a-chunks-end", (CHUNKED_HEAD + b"3\r\nabc", b"\r\nzz\r\n"), (400, 400)),
    ("bad-size-inside-a-chunk", (CHUNKED_HEAD + b"3\r\nab", b"c\r\nzz\r\n"), (400, 400)),
    (
        "long-chunk-extension",
        (CHUNKED_HEAD + b"3;x=" + b"e" * 6000 + b"\r\nabc\r\n0\r\n\r\n",),
        (201, 400),
    ),
    (
        "long-trailer",
        (CHUNKED_HEAD + b"3\r\nabc\r\n0\r\nX-T: " + b"t" * 6000 + b"\r\n\r\n",),
        (431, 400),
    ),
]


@pytest.mark.parametrize(
    ("parts", "statuses"),
    [case[1:] for case in BROKEN_BODIES],
    ids=[case[0] for case in BROKEN_BODIES],
)
async def test_a_chunked_body_either_parser_refuses_gets_4xx_at_once(
    make_rig: MakeRig,
    logs: Logs,
    parser: str,
    parts: tuple[bytes, ...],
    statuses: tuple[int, int],
) -> None:
    """Not a 408 once the body timeout has passed (the C parser's reader, woken by the end of a
    chunk, waited again), nor a 500 (the pure-Python parser's failures arrive wrapped)."""
    rig = await make_rig(env=LIMITS)
    async with Connection(rig.client.port) as conn:
        await send(conn, parts)
        response = await conn.response()
    assert response.status == statuses[parser == "python"]
    assert [seen.body_size for seen in forwarded(rig)] in ([], [3])
    assert not logs.named("request.crashed")
    await assert_healthy(rig, logs)


async def test_a_header_line_over_the_limit_is_431_however_it_arrives(
    make_rig: MakeRig, logs: Logs, parser: str
) -> None:
    """The pure-Python parser measures a line that has not ended against the request line's
    limit: what it quotes of the line tells a header field (431) from a target (414)."""
    rig = await make_rig(env=LIMITS)
    async with Connection(rig.client.port) as conn:
        await send(conn, (http(GET)[:-2] + b"X-Big: " + b"a" * 5000, b"\r\n\r\n"))
        response = await conn.response()
    assert response.status == 431
    assert forwarded(rig) == []


@pytest.mark.parametrize("answered", [False, True], ids=["while-answered", "once-answered"])
async def test_a_body_behind_a_declined_websocket_offer_is_a_body(
    make_rig: MakeRig, logs: Logs, parser: str, answered: bool
) -> None:
    """aiohttp holds what arrives behind a WebSocket offer unparsed until the offer is answered,
    then parses it outside data_received: either way, a 40 KB body among it is a body, not a
    head beyond GATEWAY_MAX_HEADER_SECTION."""
    rig = await make_rig(env=LIMITS)
    rig.sim.faults.append(Fault("delay", path="/v1/health", delay=0 if answered else 0.5))
    body = b"m" * 40000
    async with Connection(rig.client.port) as conn:
        await conn.send(
            http(GET, b"Connection: Upgrade", b"Upgrade: websocket")
            + http(POST, b"Content-Length: 40000")
        )
        if answered:
            await asyncio.sleep(0.3)  # the GET is answered, and the POST parsed, meanwhile
        for start in range(0, len(body), 4000):
            await asyncio.sleep(0.01)  # a read for each piece
            await conn.send(body[start : start + 4000])
        answers = [await conn.response() for _ in range(2)]
    assert [answer.status for answer in answers] == [200, 201]
    assert [seen.body_size for seen in forwarded(rig)] == [0, 40000]
    await assert_healthy(rig, logs)


async def test_100_continue_is_sent_only_when_the_body_is_wanted(
    make_rig: MakeRig, logs: Logs
) -> None:
    rig = await make_rig(env=LIMITS)
    expect = b"Expect: 100-continue"
    async with Connection(rig.client.port) as conn:
        await conn.send(http(b"POST /v1/users/admin HTTP/1.1", expect, b"Content-Length: 3"))
        refused = await conn.response()
    async with Connection(rig.client.port) as conn:
        await conn.send(http(POST, expect, b"Content-Length: 65537"))
        too_large = await conn.response()
    async with Connection(rig.client.port) as conn:
        await conn.send(http(POST, expect, b"Content-Length: 3"))
        await asyncio.sleep(0.1)  # a client waits for the 100 before it sends the body
        await conn.send(b"abc")
        accepted = await conn.response()
    assert [(r.status, r.interim) for r in (refused, too_large, accepted)] == [
        (403, ()),
        (413, ()),
        (201, (100,)),
    ]
    assert refused.closes  # the body that was not asked for is not read
    assert too_large.closes
    assert [s.path_qs for s in forwarded(rig)] == ["/v1/media"]
    await assert_healthy(rig, logs)


# --- a property over the wire ------------------------------------------------------------------

# Headers a client may send but never pass on: credentials, and the ones the gateway sets itself.
NOT_PASSED_ON = frozenset(
    {
        *("authorization", "proxy-authorization", "forwarded", "expect"),
        *("x-forwarded-host", "x-forwarded-proto", "x-forwarded-port", "x-forwarded-prefix"),
    }
)
# What the gateway sets itself: a client's header may happen to carry the same value.
GATEWAY_VALUES = {("x-forwarded-proto", "http"), ("x-forwarded-host", "127.0.0.1")}
# Framing and protocol switches have rows of their own in the table.
FRAMING = frozenset({"transfer-encoding", "content-length", "host", "upgrade"})
SPECIAL_NAMES = st.sampled_from(sorted((HOP_BY_HOP | NOT_PASSED_ON) - FRAMING))
OTHER_NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12).map(
    "x-".__add__
)
VALUES = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=24)


@st.composite
def wire_headers(draw: st.DrawFn) -> list[tuple[str, str]]:
    """Random headers in random case: credentials, hop-by-hop and gateway-owned names, others,
    and a Connection header listing some of them."""
    names = draw(st.lists(st.one_of(SPECIAL_NAMES, OTHER_NAMES), max_size=10))
    headers = [
        ("".join(c.upper() if draw(st.booleans()) else c for c in name), draw(VALUES))
        for name in names
    ]
    if names and draw(st.booleans()):
        listed = draw(st.lists(st.sampled_from(names), min_size=1, max_size=3))
        headers.append(("Connection", ", ".join(listed)))
    return headers


def _listed_in_connection(headers: list[tuple[str, str]]) -> set[str]:
    return {
        token.strip().lower()
        for name, value in headers
        if name.lower() == "connection"
        for token in value.split(",")
    }


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(headers=wire_headers())
async def test_no_hop_by_hop_or_credential_header_sent_over_the_wire_reaches_the_webapp(
    rig: Rig, headers: list[tuple[str, str]]
) -> None:
    rig.sim.seen.clear()
    lines = [f"{name}: {value}".encode() for name, value in headers]
    async with Connection(rig.client.port) as conn:
        await conn.send(http(b"GET /v1/stats/app HTTP/1.1", *lines, b"Connection: close"))
        assert (await conn.response()).status == 200
    (seen,) = forwarded(rig)
    assert_sanitised(seen, rig)
    received = {(name.lower(), value) for name, value in seen.headers.items()}
    not_passed_on = HOP_BY_HOP | NOT_PASSED_ON | _listed_in_connection(headers)
    for name, value in headers:
        if name.lower() in not_passed_on and (name.lower(), value) not in GATEWAY_VALUES:
            assert (name.lower(), value) not in received, name
