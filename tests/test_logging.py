"""What the gateway logs: one access event per request, token events by fingerprint, no secret ever.

Requests go through real sockets; the log is what ``configure_logging`` wrote, parsed line by line.
The gateway logs a request after its answer is sent, so tests wait (boundedly) for the event.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web

from gateway.bearer import Account
from gateway.log import REDACTED, configure_logging, redact, scrub
from gateway.login import Grant
from gateway.secret import MASK, Secret
from gateway.simulator import Fault, LoginFault

from . import rawhttp
from .conftest import MESSAGE, PASSWORD, Logs, MakeRig, Rig, until

OTHER_PASSWORD = "Other-pass-2!"
HEX8 = re.compile(r"[0-9a-f]{8}")
GENERATED_ID = re.compile(r"[0-9a-f]{32}")


def access_events(logs: Logs, request_id: str) -> list[dict[str, Any]]:
    return [e for e in logs.named("request.completed") if e.get("request_id") == request_id]


async def access_event(logs: Logs, request_id: str) -> dict[str, Any]:
    """The one access event of the request ``request_id``."""
    await until(lambda: access_events(logs, request_id))
    (event,) = access_events(logs, request_id)
    return event


def fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:8]


def assert_names_a_token_by_fingerprint(event: dict[str, Any], field: str, rig: Rig) -> None:
    """``event[field]`` is the short fingerprint of a token the Webapp issued, never the token."""
    value = event[field]
    assert HEX8.fullmatch(value)
    (token,) = [t for t in rig.sim.issued_tokens if fingerprint(t) == value]
    assert value != token
    assert token not in json.dumps(event)


# --- the access event --------------------------------------------------------------------------


async def test_the_access_event_of_a_forwarded_request_has_every_field(
    rig: Rig, logs: Logs
) -> None:
    body = json.dumps(MESSAGE).encode()
    headers = {"Content-Type": "application/json", "X-Request-ID": "fields-1"}
    async with rig.client.post("/v1/messages?debug=1", data=body, headers=headers) as response:
        answer = await response.read()
        assert response.status == 201
        assert response.headers["X-Request-ID"] == "fields-1"
    event = await access_event(logs, "fields-1")
    timings = {"duration_ms", "upstream_ms", "timestamp"}
    assert {key: value for key, value in event.items() if key not in timings} == {
        "event": "request.completed",
        "level": "info",
        "method": "POST",
        "path": "/v1/messages",  # without the query, which may carry data
        "status": 201,
        "request_id": "fields-1",
        "client": "127.0.0.1",
        "retried": False,
        "bytes_in": len(body),
        "bytes_out": len(answer),
        "failure": None,
    }
    assert isinstance(event["duration_ms"], float)
    assert isinstance(event["upstream_ms"], float)
    assert event["duration_ms"] >= event["upstream_ms"] > 0
    (seen,) = rig.sim.seen_on("/v1/messages")
    assert seen.request_id == "fields-1"


async def test_probes_that_succeed_are_logged_at_debug_and_the_rest_at_info(
    make_rig: MakeRig, logs: Logs
) -> None:
    """A health check every few seconds must not make most of the access log; a probe that
    fails, or a request the gateway refused or answered for lack of a token, still shows."""
    rig = await make_rig(env={"WA_PASSWORD": "Wrong-pass-1!"})  # no token: readyz says 503
    paths = {
        "probe-ok": "/_gateway/healthz",
        "scrape-ok": "/_gateway/metrics",
        "probe-failed": "/_gateway/readyz",
        "probe-unknown": "/_gateway/nothing",
        "no-token": "/v1/messages",
    }
    for request_id, path in paths.items():
        async with rig.client.get(path, headers={"X-Request-ID": request_id}) as response:
            await response.read()
    events = [await access_event(logs, request_id) for request_id in paths]
    assert {event["request_id"]: (event["level"], event["failure"]) for event in events} == {
        "probe-ok": ("debug", None),
        "scrape-ok": ("debug", None),
        "probe-failed": ("info", None),
        "probe-unknown": ("info", None),
        "no-token": ("info", "no_token"),
    }


async def test_a_request_replayed_after_a_401_is_logged_as_retried(rig: Rig, logs: Logs) -> None:
    async with rig.client.get("/v1/settings/application") as response:
        assert response.status == 200
    rig.sim.revoke_all()
    headers = {"X-Request-ID": "replayed-1"}
    async with rig.client.get("/v1/settings/application", headers=headers) as response:
        answer = await response.read()
        assert response.status == 200
    event = await access_event(logs, "replayed-1")
    assert (event["status"], event["retried"], event["bytes_out"]) == (200, True, len(answer))
    assert [e["request_id"] for e in logs.named("request.replay")] == ["replayed-1"]
    assert len(rig.sim.seen_on("/v1/settings")) == 3  # the first request, the 401, the replay


async def test_every_kind_of_answer_gets_exactly_one_access_event(
    make_rig: MakeRig, logs: Logs
) -> None:
    rig = await make_rig(env={"GATEWAY_MAX_BODY": "1KiB"})
    answered: dict[str, int] = {}

    async def call(rig: Rig, method: str, path: str, **kwargs: Any) -> None:
        request_id = f"kind-{len(answered)}"
        headers = {"X-Request-ID": request_id}
        async with rig.client.request(method, path, headers=headers, **kwargs) as response:
            await response.read()
            assert response.headers["X-Request-ID"] == request_id
            answered[request_id] = response.status

    await call(rig, "POST", "/v1/messages", json=MESSAGE)  # forwarded
    await call(rig, "GET", "/v1/unknown")  # the Webapp's 404, passed through
    await call(rig, "GET", "/nope")  # the gateway's own 404
    await call(rig, "GET", "/v1/users/admin")  # refused, 403
    await call(rig, "TRACE", "/v1/messages")  # refused, 405
    await call(rig, "POST", "/v1/users/login")  # answered locally
    await call(rig, "POST", "/v1/users/logout")  # answered locally
    await call(rig, "GET", "/_gateway/healthz")
    await call(rig, "GET", "/_gateway/readyz")
    await call(rig, "GET", "/_gateway/metrics")
    await call(rig, "POST", "/v1/media", data=b"x" * 2048)  # too large, 413
    refused = await make_rig(password=OTHER_PASSWORD)
    await call(refused, "GET", "/v1/settings/application")  # no token, 503
    await rig.webapp.close()
    await call(rig, "GET", "/v1/settings/application")  # the Webapp is down, 502

    assert list(answered.values()) == [201, 404, 404, 403, 405, *[200] * 5, 413, 503, 502]
    await until(lambda: len(logs.named("request.completed")) >= len(answered))
    events = logs.named("request.completed")
    assert collections.Counter(e["request_id"] for e in events) == dict.fromkeys(answered, 1)
    assert {e["request_id"]: e["status"] for e in events} == answered


# --- token events ------------------------------------------------------------------------------


async def test_login_and_replay_events_name_tokens_by_fingerprint(rig: Rig, logs: Logs) -> None:
    async with rig.client.get("/v1/settings/application") as response:
        assert response.status == 200
    rig.sim.revoke_all()
    async with rig.client.get("/v1/settings/application") as response:
        assert response.status == 200
    first, second = rig.sim.issued_tokens
    await until(lambda: len(logs.named("token.login")) == 2)
    logins = logs.named("token.login")
    for event in logins:
        assert_names_a_token_by_fingerprint(event, "fingerprint", rig)
    assert [e["fingerprint"] for e in logins] == [fingerprint(first), fingerprint(second)]
    (replay,) = logs.named("request.replay")
    assert_names_a_token_by_fingerprint(replay, "rejected", rig)
    assert_names_a_token_by_fingerprint(replay, "fingerprint", rig)
    assert (replay["rejected"], replay["fingerprint"]) == (fingerprint(first), fingerprint(second))


async def test_a_refresh_event_names_the_new_token_by_fingerprint(
    make_rig: MakeRig, logs: Logs
) -> None:
    # A 3 s token has a 2 s lifetime for the gateway (the Date header's second is discounted);
    # refreshing at half of it keeps the test short.
    rig = await make_rig(token_lifetime=3, env={"GATEWAY_REFRESH_BEFORE": "0.5"})
    await until(lambda: logs.named("token.refresh"))
    refresh = logs.named("token.refresh")[0]
    assert refresh["reason"] == "refresh"
    assert_names_a_token_by_fingerprint(refresh, "fingerprint", rig)
    assert refresh["fingerprint"] == fingerprint(rig.sim.issued_tokens[1])


async def test_a_failed_login_is_logged_with_its_kind_and_no_secret(
    make_rig: MakeRig, logs: Logs
) -> None:
    rig = await make_rig(password=OTHER_PASSWORD)
    async with rig.client.get("/v1/settings/application") as response:
        assert response.status == 503
    await until(lambda: logs.named("token.login_failed"))
    failed = logs.named("token.login_failed")[0]
    assert (failed["kind"], failed["attempt"], failed["level"]) == ("bad_credentials", 1, "warning")
    assert "401" in failed["details"]
    for secret in (PASSWORD, OTHER_PASSWORD):
        assert secret not in logs.text


# --- no secret anywhere --------------------------------------------------------------------------

CLIENT_PASSWORD = "Client-pass-9!"
CLIENT_BASIC = base64.b64encode(f"client-user:{CLIENT_PASSWORD}".encode()).decode()
CLIENT_BEARER = "client-own-bearer-4f9c2e7a1b"


class Crash:
    """A login function that logs in for real, then crashes ``times`` times with ``message``
    (formatted with the token it just obtained)."""

    def __init__(self, rig: Rig, message: str, times: int = 1) -> None:
        self.login = rig.gateway.pool.login_fn
        self.message = message
        self.times = times

    async def __call__(self, account: Account) -> Grant:
        grant = await self.login(account)
        if self.times > 0:
            self.times -= 1
            raise RuntimeError(self.message.format(token=grant.token.reveal()))
        return grant


class Answers:
    """Every status line, header and body the client received."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.body = b""  # the last one

    async def call(self, rig: Rig, method: str, path: str, **kwargs: Any) -> int:
        async with rig.client.request(method, path, **kwargs) as response:
            self.body = await response.read()
            self.seen.append(f"{response.status} {response.reason}")
            self.seen += [f"{name}: {value}" for name, value in response.headers.items()]
            self.seen.append(self.body.decode("utf-8", "replace"))
            return response.status

    @property
    def text(self) -> str:
        return "\n".join(self.seen)


async def test_no_secret_reaches_a_log_line_or_an_answer(
    make_rig: MakeRig, logs: Logs, tmp_path: Path
) -> None:
    """Drive every path with the log at DEBUG (the ``logs`` fixture), then search the whole log
    and every answer for every secret."""
    answers = Answers()
    rig = await make_rig(env={"GATEWAY_UPSTREAM_TIMEOUT": "0.5"})
    call = answers.call

    assert await call(rig, "POST", "/v1/messages", json=MESSAGE) == 201
    assert await call(rig, "GET", "/v1/health") == 200  # forwarded with the API key
    # The client's own credentials, at the local login and logout and on forwarded requests.
    basic = {"Authorization": f"Basic {CLIENT_BASIC}"}
    assert await call(rig, "POST", "/v1/users/login", headers=basic) == 200
    client_token = json.loads(answers.body)["users"][0]["token"]
    bearer = {"Authorization": f"Bearer {client_token}"}
    assert await call(rig, "POST", "/v1/users/logout", headers=bearer) == 200
    for credential in (f"Bearer {CLIENT_BEARER}", f"Basic {CLIENT_BASIC}"):
        headers = {"Authorization": credential, "Proxy-Authorization": credential}
        assert await call(rig, "GET", "/v1/settings/application", headers=headers) == 200
    # A 401 and its replay.
    rig.sim.revoke_all()
    assert await call(rig, "GET", "/v1/settings/application") == 200
    # A timeout.
    rig.sim.faults = [Fault("stall", path="/v1/settings")]
    assert await call(rig, "GET", "/v1/settings/application") == 504
    # A login that crashes with the new token in its message, in the shapes redaction knows.
    rig.gateway.pool.login_fn = Crash(
        rig, "cannot keep token={token} (Authorization: Bearer {token})"
    )
    rig.sim.revoke_all()
    assert await call(rig, "GET", "/v1/settings/application") == 503
    await until(lambda: rig.gateway.pool.seconds_left(rig.gateway.webapp.account) > 0)
    # A request that crashes with the token in its message.
    forwarder = rig.gateway.forwarder

    async def crash(*_args: object) -> web.StreamResponse:
        raise RuntimeError(f"unexpected Authorization: Bearer {rig.sim.issued_tokens[-1]}")

    rig.gateway.forwarder = crash  # type: ignore[assignment]
    assert await call(rig, "GET", "/v1/settings/application") == 500
    rig.gateway.forwarder = forwarder
    # The Webapp down.
    await rig.webapp.close()
    assert await call(rig, "GET", "/v1/settings/application") == 502
    # Logins that fail: bad credentials, a password change required.
    refused = await make_rig(password=OTHER_PASSWORD)
    assert await call(refused, "GET", "/v1/settings/application") == 503
    change = await make_rig(password_change_required=True)
    assert await call(change, "GET", "/v1/settings/application") == 503
    # Rotations: one the Webapp asks for, then one whose answer is lost, finished by a login.
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD)
    password_file.chmod(0o600)
    rotating = await make_rig(
        password_change_required=True,
        password_change_revokes=True,
        env={
            "WA_PASSWORD": None,
            "WA_PASSWORD_FILE": str(password_file),
            "WA_PASSWORD_ROTATE_EVERY": "30d",
        },
    )
    assert await call(rotating, "GET", "/v1/settings/application") == 200
    passwords = [rotating.sim.password]
    rotating.sim.login_script.append(LoginFault("lose_answer"))
    await rotating.gateway.pool.rotate(rotating.gateway.webapp.account)
    passwords.append(rotating.sim.password)
    await asyncio.sleep(0.3)  # past the failed rotation's backoff (TEST_ENV caps it at 0.2 s)
    assert await call(rotating, "GET", "/v1/settings/application") == 200
    await until(lambda: len(logs.named("request.completed")) == 15)

    # Every path above was taken, and logged.
    events = logs.events  # every line is one JSON object
    names = {e["event"] for e in events}
    assert {"token.login_crashed", "request.crashed", "request.replay", "token.login"} <= names
    assert {"password.rotated", "password.recovered"} <= names
    kinds = {e["kind"] for e in logs.named("token.login_failed")}
    assert {"error", "bad_credentials", "password_change_required"} <= kinds
    for crashed in ("token.login_crashed", "request.crashed"):
        (event,) = logs.named(crashed)
        assert event["error"] == "RuntimeError"  # the type and the places, never the message
        assert event["frames"]
        assert all(re.fullmatch(r".+\.py:\d+ in \w+", frame) for frame in event["frames"])

    secrets = [
        *rig.secrets,
        *refused.secrets,
        *change.secrets,
        *rotating.sim.issued_tokens,
        *passwords,
        OTHER_PASSWORD,
        CLIENT_PASSWORD,
        CLIENT_BASIC,
        CLIENT_BEARER,
    ]
    assert len(rig.sim.issued_tokens) >= 4
    for secret in [*secrets, client_token]:
        assert secret not in logs.text
    for secret in secrets:
        assert secret not in answers.text


async def test_a_login_crash_with_a_bare_token_in_its_message_does_not_leak_it(
    rig: Rig, logs: Logs
) -> None:
    async with rig.client.get("/v1/settings/application") as response:
        assert response.status == 200
    rig.gateway.pool.login_fn = Crash(rig, "unexpected answer carrying {token}")
    rig.sim.revoke_all()
    async with rig.client.get("/v1/settings/application") as response:
        assert response.status == 503
    assert logs.named("token.login_crashed")
    for secret in rig.secrets:
        assert secret not in logs.text


async def test_a_request_the_http_parser_refuses_still_gets_one_access_event(
    rig: Rig, logs: Logs
) -> None:
    response = await rawhttp.request(
        "127.0.0.1", rig.client.port, "GET /v1/settings/application HTTP/1.1", "Bad Header: 1"
    )
    assert response.status == 400
    assert json.loads(response.body)["errors"][0]["code"] == 1025
    await until(lambda: logs.named("request.completed"), within=0.5)
    (event,) = logs.named("request.completed")
    assert (event["status"], event["request_id"]) == (400, response.headers["x-request-id"])
    assert event["failure"] == "unparsable: BadHttpMessage"
    assert "Traceback" not in logs.text  # one event per refusal, not a traceback at ERROR


async def test_a_malformed_request_is_refused_without_echoing_its_credential(
    rig: Rig, logs: Logs
) -> None:
    request = (
        b"GET /v1/settings/application HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Bearer " + CLIENT_BEARER.encode() + b"\x01\r\nConnection: close\r\n\r\n"
    )
    response = rawhttp.parse(await rawhttp.exchange("127.0.0.1", rig.client.port, request))
    assert response.status == 400
    await until(lambda: logs.named("request.completed"))
    assert CLIENT_BEARER not in logs.text
    assert CLIENT_BEARER.encode() not in response.body


@pytest.mark.parametrize(
    ("line", "path", "status"),
    [
        (b"GET http://admin:hunter2@gw/_gateway/healthz", "/_gateway/healthz", 200),
        (b"GET http://admin:hunter2@gw/nope", "/nope", 404),
        (b"GET http://admin:hunter2@gw/v1/health", "/v1/health", 200),
        (b"GET //admin:hunter2@gw/v1/health", "//***@gw/v1/health", 404),
        (b"CONNECT admin:hunter2@gw:443", "***@gw:443", 405),
    ],
    ids=["gateway-route", "refused-path", "forwarded-path", "network-path", "connect-authority"],
)
async def test_a_user_and_password_in_a_target_never_reach_the_log(
    rig: Rig, logs: Logs, line: bytes, path: str, status: int
) -> None:
    """Whatever answers a request whose target names an authority (a gateway route, the policy's
    refusal, the Webapp), its access event names the path alone for an absolute-form target,
    and masks the user part otherwise: user:password no log may carry."""
    request = line + b" HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
    response = rawhttp.parse(await rawhttp.exchange("127.0.0.1", rig.client.port, request))
    assert response.status == status
    event = await access_event(logs, response.headers["x-request-id"])
    assert event["path"] == path
    assert "hunter2" not in logs.text


# --- the redaction processor ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer abc.def-123", "Authorization: Bearer [redacted]"),
        ("sent basic dXNlcjpwYXNz== upstream", "sent basic [redacted] upstream"),
        ("APIKEY k-123, then", "APIKEY [redacted], then"),
        ("Authorization: raw-token", "Authorization: [redacted]"),
        ("password='two words'", "password='[redacted]'"),
        ('{"token": "abc", "n": 1}', '{"token": "[redacted]", "n": 1}'),
        ("token: abc", "token: [redacted]"),
        ("WA_PASSWORD=hunter2 WA_API_KEY=k1", "WA_PASSWORD=[redacted] WA_API_KEY=[redacted]"),
        ("x-api-key: k1; access_token=t1", "x-api-key: [redacted]; access_token=[redacted]"),
        (
            "<CIMultiDictProxy('Authorization': 'Basic YWJj', 'Cookie': 'c=1')>",
            "<CIMultiDictProxy('Authorization': 'Basic [redacted]', 'Cookie': '[redacted]')>",
        ),
        (r"{\"secret\": \"s\"}", r"{\"secret\": \"[redacted]" + '"}'),
    ],
)
def test_scrub_masks_credentials_and_assignments_in_any_text(text: str, expected: str) -> None:
    assert scrub(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "token.login",
        "request.replay",
        "The token was rejected (401).",
        "tokens: 3",
        "/v1/messages",
        "2024-05-01T12:00:00.123456Z",
        "Check WA_USERNAME and WA_PASSWORD (or WA_PASSWORD_FILE).",
        "Invalid header token:\n\n  b'X Y: 1'",  # a colon at the end of a line assigns nothing
    ],
)
def test_scrub_leaves_ordinary_text_alone(text: str) -> None:
    assert scrub(text) == text


def test_redact_masks_sensitive_keys_in_any_case_at_any_depth() -> None:
    event = {
        "event": "token.login",
        "Authorization": "Bearer a",
        "TOKEN": "t",
        "X-Api-Key": "k",
        "new_password": "p",
        "access_token": None,
        "headers": {"Cookie": "c=1", "Accept": "application/json", "Proxy-Authorization": "x"},
        "items": [{"password": "p"}, "Bearer b", ("token=c",), Secret("d")],
        "pairs": [("X-Api-Key", "k"), ("Accept", "application/json")],
        "credential": Secret("e"),
        "count": 3,
        "ok": True,
        "ratio": 0.5,
        "nothing": None,
        "error": RuntimeError("Authorization: Bearer f"),
        "raw": b"Basic g",
    }
    assert redact(None, "info", event) == {
        "event": "token.login",
        "Authorization": REDACTED,
        "TOKEN": REDACTED,
        "X-Api-Key": REDACTED,
        "new_password": REDACTED,
        "access_token": REDACTED,
        "headers": {
            "Cookie": REDACTED,
            "Accept": "application/json",
            "Proxy-Authorization": REDACTED,
        },
        "items": [{"password": REDACTED}, "Bearer [redacted]", ["token=[redacted]"], MASK],
        "pairs": [["X-Api-Key", REDACTED], ["Accept", "application/json"]],
        "credential": MASK,
        "count": 3,
        "ok": True,
        "ratio": 0.5,
        "nothing": None,
        "error": "RuntimeError('Authorization: Bearer [redacted]')",
        "raw": "b'Basic [redacted]'",
    }


def test_a_secret_logged_by_mistake_is_masked_in_the_output(logs: Logs) -> None:
    structlog.get_logger("test").debug("debug.secret", value=Secret("s3cret-value"), n=1)
    assert logs.events == [
        {
            "event": "debug.secret",
            "value": MASK,
            "n": 1,
            "level": "debug",
            "timestamp": logs.events[0]["timestamp"],
        }
    ]
    assert "s3cret-value" not in logs.text


def test_standard_library_records_are_redacted_json_lines(logs: Logs) -> None:
    try:
        raise ConnectionError("upstream rejected Authorization: Bearer abc123")
    except ConnectionError:
        logging.getLogger("aiohttp.server").exception("Error handling %s", "Bearer abc123")
    (event,) = logs.events
    assert (event["event"], event["logger"], event["level"]) == (
        "Error handling Bearer [redacted]",
        "aiohttp.server",
        "error",
    )
    assert event["exception"].startswith("Traceback (most recent call last)")
    assert (
        "ConnectionError: upstream rejected Authorization: Bearer [redacted]" in event["exception"]
    )
    assert "abc123" not in logs.text


# --- configuration -------------------------------------------------------------------------------


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put structlog and the root logger back as they were (for tests without ``logs``)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.reset_defaults()
    root.handlers = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restore_logging")
def test_a_terminal_gets_the_console_format() -> None:
    terminal = Terminal()
    configure_logging("info", terminal, cache=False, background=False)
    structlog.get_logger("test").info("console.shown", password="hunter2", answer=42)
    logging.getLogger("test.stdlib").info("stdlib line with Bearer abc123")
    lines = terminal.getvalue().splitlines()
    assert len(lines) == 2
    for line in lines:
        with pytest.raises(json.JSONDecodeError):
            json.loads(line)
    assert "console.shown" in lines[0]
    assert "answer" in lines[0]
    assert REDACTED in lines[0]
    assert "stdlib line with Bearer [redacted]" in lines[1]
    assert "hunter2" not in terminal.getvalue()
    assert "abc123" not in terminal.getvalue()


@pytest.mark.usefixtures("restore_logging")
def test_a_stream_that_is_not_a_terminal_gets_json_lines_at_the_level_asked() -> None:
    stream = io.StringIO()
    configure_logging("info", stream, cache=False, background=False)
    log = structlog.get_logger("test")
    log.debug("dropped.debug")
    log.info("kept.info", n=1)
    logging.getLogger("aiohttp.client").debug("dropped stdlib")
    logging.getLogger("aiohttp.client").info("kept stdlib")
    log.warning("kept.warning")
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(e["event"], e["level"]) for e in events] == [
        ("kept.info", "info"),
        ("kept stdlib", "info"),
        ("kept.warning", "warning"),
    ]
    assert all(e["timestamp"].endswith("Z") for e in events)


# --- the request id ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "offered",
    [b"x" * 129, b"has space", b'quo"ted', "caf\u00e9".encode(), b"\xff\xfe", b"a{b}"],
    ids=["too-long", "space", "quote", "utf-8", "not-utf-8", "braces"],
)
async def test_a_hostile_request_id_is_replaced_and_the_log_stays_json(
    rig: Rig, logs: Logs, offered: bytes
) -> None:
    request = (
        b"GET /v1/settings/application HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"X-Request-ID: " + offered + b"\r\nConnection: close\r\n\r\n"
    )
    response = rawhttp.parse(await rawhttp.exchange("127.0.0.1", rig.client.port, request))
    assert response.status == 200
    generated = response.headers["x-request-id"]
    assert GENERATED_ID.fullmatch(generated)
    event = await access_event(logs, generated)
    assert event["status"] == 200
    (seen,) = rig.sim.seen_on("/v1/settings")
    assert seen.request_id == generated
    lines = logs.text.splitlines()
    assert all(isinstance(json.loads(line), dict) for line in lines)
