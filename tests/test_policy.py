"""The request policy: which method and target may pass, normalised how, and as what action."""

from __future__ import annotations

import re
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.errors import BadRequest, Forbidden, MethodNotAllowed, NotFound, Refused
from gateway.policy import (
    RULES,
    Action,
    Prefixes,
    Rule,
    Target,
    decide,
    forward_prefix,
    normalise_path,
    split_target,
)

FORWARD = Action.FORWARD
APIKEY = Action.FORWARD_APIKEY
LOGIN = Action.LOGIN
LOGOUT = Action.LOGOUT

# --- normalise_path: a raw path in, its canonical form (or the error) out

NORMALISED = [
    ("/v1/messages", "/v1/messages", "plain"),
    ("/", "/", "root"),
    ("/v1/a/../messages", "/v1/messages", "dot-dot"),
    ("/v1/./messages", "/v1/messages", "dot"),
    ("/v1/a/%2e%2e/messages", "/v1/messages", "escaped-dot-dot-lower"),
    ("/v1/a/%2E%2e/messages", "/v1/messages", "escaped-dot-dot-mixed"),
    ("/v1/a/.%2e/messages", "/v1/messages", "half-escaped-dot-dot"),
    ("/v1/%2e/messages", "/v1/messages", "escaped-dot"),
    ("/v1/a/b/../../messages", "/v1/messages", "two-dot-dots"),
    ("/v1/messages/..", "/v1/", "trailing-dot-dot-keeps-slash"),
    ("/v1/messages/.", "/v1/messages/", "trailing-dot-keeps-slash"),
    ("/v1/..", "/", "dot-dot-to-root"),
    ("//v1///messages", "/v1/messages", "repeated-slashes"),
    ("/v1/messages//", "/v1/messages/", "repeated-trailing-slashes"),
    ("/v1/messages/", "/v1/messages/", "trailing-slash-kept"),
    ("/v1/%6Dessages", "/v1/messages", "unreserved-escape-decoded"),
    ("/v1/%7e%2D%5f%2E%41%7A%30", "/v1/~-_.Az0", "all-unreserved-kinds-decoded"),
    ("/v1/a%3bb", "/v1/a%3Bb", "reserved-escape-upper-cased"),
    ("/v1/a%3bb%40d%2B", "/v1/a%3Bb%40d%2B", "reserved-escapes-kept"),
    ("/v1/a%7cb%5ec", "/v1/a%7Cb%5Ec", "escapes-upper-cased"),
    ("/v1/a;b=c,d:e@f!$&'()*+", "/v1/a;b=c,d:e@f!$&'()*+", "sub-delims-kept"),
    ("/v1/...", "/v1/...", "three-dots-is-a-name"),
    ("/v1/.a/..b", "/v1/.a/..b", "dotted-names"),
]

NORMALISE_REFUSED = [
    ("/..", "climbs-from-root"),
    ("/v1/../..", "climbs-above-root"),
    ("/%2e%2e/v1/messages", "escaped-climb"),
    ("/v1/a%2fb", "encoded-slash-lower"),
    ("/v1/a%2Fb", "encoded-slash-upper"),
    ("/v1/a%252e", "double-encoded-dot"),
    ("/v1/%2575sers/admin", "double-encoded-users"),
    ("/v1/a%25", "escaped-percent"),
    ("/v1/a%5cb", "encoded-backslash"),
    ("/v1/users%3F", "encoded-question-mark"),
    ("/v1/users%3f/admin", "encoded-question-mark-lower"),
    ("/v1/users%23", "encoded-hash"),
    ("/v1/users%20", "encoded-space"),
    ("/v1/a%5Cb", "encoded-backslash-upper"),
    ("/v1/a\\b", "raw-backslash"),
    ("/v1/a%00b", "nul"),
    ("/v1/a%0ab", "line-feed"),
    ("/v1/a%0Db", "carriage-return"),
    ("/v1/a%09b", "tab"),
    ("/v1/a%7fb", "delete"),
    ("/v1/a%ffb", "not-utf8"),
    ("/v1/caf%c3%a9", "utf8-beyond-ascii"),
    ("/v1/u%C5%BFers/admin", "long-s-that-folds-to-users"),
    ("/v1/%EF%BD%95sers/admin", "fullwidth-u-that-folds-to-users"),
    ("/v1/%c0%af", "overlong-utf8"),
    ("/v1/%ed%a0%80", "surrogate-utf8"),
    ("/v1/a%zz", "malformed-escape"),
    ("/v1/a%4", "truncated-escape"),
    ("/v1/a%", "bare-percent"),
    ("/v1/caf\u00e9", "raw-non-ascii"),
    ("/v1/a b", "raw-space"),
    ('/v1/a"b', "raw-quote"),
    ("/v1/a<b>", "raw-angle-brackets"),
    ("/v1/a#b", "raw-hash"),
    ("/v1/a\nb", "raw-line-feed"),
    ("v1/messages", "relative"),
    ("", "empty"),
]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(raw, want) for raw, want, _ in NORMALISED],
    ids=[i for *_, i in NORMALISED],
)
def test_normalise_path(raw: str, expected: str) -> None:
    assert normalise_path(raw) == expected
    assert normalise_path(expected) == expected


@pytest.mark.parametrize(
    "raw", [raw for raw, _ in NORMALISE_REFUSED], ids=[i for _, i in NORMALISE_REFUSED]
)
def test_normalise_path_refuses(raw: str) -> None:
    with pytest.raises(BadRequest):
        normalise_path(raw)


# --- decide: method and raw target in, Target (or the refusal) out

ALLOWED = [
    ("POST", "/v1/messages", "/v1/messages", None, FORWARD, "messages"),
    ("GET", "/v1/media/abc-1", "/v1/media/abc-1", None, FORWARD, "media"),
    ("DELETE", "/v1/media/abc-1", "/v1/media/abc-1", None, FORWARD, "delete-media"),
    ("POST", "/v1/a/../messages", "/v1/messages", None, FORWARD, "checked-path-is-sent"),
    ("POST", "/v1/users/login", "/v1/users/login", None, LOGIN, "login"),
    ("POST", "/v1/%75sers/login", "/v1/users/login", None, LOGIN, "login-escaped-u"),
    ("POST", "/v1/users/%6C%6F%67%69%6E", "/v1/users/login", None, LOGIN, "login-all-escaped"),
    ("POST", "//v1//users/./login", "/v1/users/login", None, LOGIN, "login-slashes-and-dot"),
    ("POST", "/v1/users/../users/logout", "/v1/users/logout", None, LOGOUT, "logout-dot-dot"),
    ("POST", "/v1/users/logout", "/v1/users/logout", None, LOGOUT, "logout"),
    ("POST", "/v1/users/login?x=1", "/v1/users/login", "x=1", LOGIN, "login-with-query"),
    ("post", "/v1/users/login", "/v1/users/login", None, LOGIN, "login-lower-case-method"),
    ("GET", "/v1/usersx", "/v1/usersx", None, FORWARD, "users-prefix-is-not-users"),
    ("GET", "/v1/health", "/v1/health", None, APIKEY, "health"),
    ("POST", "/v1/health", "/v1/health", None, FORWARD, "health-post-is-bearer"),
    ("GET", "/v1/health/x", "/v1/health/x", None, FORWARD, "below-health-is-bearer"),
    ("GET", "/metrics", "/metrics", None, APIKEY, "metrics"),
    ("GET", "/metrics?format=prometheus", "/metrics", "format=prometheus", APIKEY, "metrics-q"),
    ("POST", "/metrics", "/metrics", None, FORWARD, "metrics-post-is-bearer"),
    ("GET", "/v1/stats/app", "/v1/stats/app", None, APIKEY, "stats-app"),
    ("GET", "/v1/stats/db", "/v1/stats/db", None, APIKEY, "stats-db"),
    ("GET", "/v1/stats", "/v1/stats", None, FORWARD, "stats-itself-is-bearer"),
    ("GET", "/v1/stats/other", "/v1/stats/other", None, FORWARD, "other-stats-is-bearer"),
    ("POST", "/v1/stats/app", "/v1/stats/app", None, FORWARD, "stats-post-is-bearer"),
    ("GET", "/v1/statsx", "/v1/statsx", None, FORWARD, "stats-prefix-is-not-stats"),
    ("GET", "/v1", "/v1", None, FORWARD, "v1-itself"),
    ("GET", "/v1/", "/v1/", None, FORWARD, "v1-slash"),
    ("PATCH", "/v1/settings/application", "/v1/settings/application", None, FORWARD, "patch"),
    ("GET", "http://evil.example/v1/messages?x=1", "/v1/messages", "x=1", FORWARD, "absolute"),
    ("GET", "HTTPS://evil.example:8443/v1/health", "/v1/health", None, APIKEY, "absolute-https"),
    ("GET", "http://u:p@evil/v1/health", "/v1/health", None, APIKEY, "absolute-userinfo"),
    ("POST", "http://evil/v1/users/login", "/v1/users/login", None, LOGIN, "absolute-login"),
    ("GET", "/v1/x?", "/v1/x", "", FORWARD, "empty-query-kept"),
    ("GET", "/v1/x?a=%2f&b=+c%zz", "/v1/x", "a=%2f&b=+c%zz", FORWARD, "query-byte-for-byte"),
    ("GET", "/v1/x?a=1&a=2&=&&", "/v1/x", "a=1&a=2&=&&", FORWARD, "query-repeats-and-empties"),
    ("GET", "/v1/x?a?b/../c", "/v1/x", "a?b/../c", FORWARD, "query-not-normalised"),
    ("GET", "/v1/a/..?x=/..", "/v1/", "x=/..", FORWARD, "query-not-normalised-after-dot-dot"),
]


@pytest.mark.parametrize(
    ("method", "raw_target", "path", "query", "action"),
    [row[:5] for row in ALLOWED],
    ids=[row[5] for row in ALLOWED],
)
def test_decide_allows(
    method: str, raw_target: str, path: str, query: str | None, action: Action
) -> None:
    target = decide(method, raw_target)
    assert target == Target(path, query, action)
    assert target.path_qs == (path if query is None else f"{path}?{query}")
    assert decide(method, target.path_qs) == target


REFUSED = [
    ("GET", "/v1/users/login", Forbidden, "login-get"),
    ("PUT", "/v1/users/login", Forbidden, "login-put"),
    ("POST", "/v1/users/login/", Forbidden, "login-trailing-slash"),
    ("POST", "/v1/users/login/x", Forbidden, "below-login"),
    ("GET", "/v1/users/logout", Forbidden, "logout-get"),
    ("POST", "/v1/users", Forbidden, "create-user"),
    ("GET", "/v1/users/", Forbidden, "users-slash"),
    ("POST", "/v1/messages/../users", Forbidden, "create-user-dot-dot"),
    ("DELETE", "/v1/%75sers/admin", Forbidden, "escaped-users"),
    ("DELETE", "/v1/Users/admin", Forbidden, "users-other-case"),
    ("DELETE", "/v1/USERS/admin", Forbidden, "users-upper-case"),
    ("DELETE", "/v1/users;x/admin", Forbidden, "users-path-parameter"),
    ("POST", "/v1/users%3B", Forbidden, "users-escaped-path-parameter"),
    ("PUT", "/v1/users/admin;a=b", Forbidden, "user-path-parameter"),
    ("GET", "/v1/messages/..;/users/admin", BadRequest, "tomcat-dot-dot-parameter"),
    ("GET", "/v1/;x/users/admin", BadRequest, "parameter-only-segment"),
    ("GET", "/v1/.;x/users", BadRequest, "dot-parameter"),
    ("GET", "/", NotFound, "root"),
    ("GET", "/_gateway/x", NotFound, "gateway-namespace"),
    ("GET", "/v2/x", NotFound, "v2"),
    ("GET", "/v1x", NotFound, "v1-prefix-is-not-v1"),
    ("GET", "/metricsx", NotFound, "metrics-prefix"),
    ("GET", "/metrics/x", NotFound, "below-metrics"),
    ("GET", "/v1/../etc/passwd", NotFound, "dot-dot-out-of-v1"),
    ("GET", "https://evil/", NotFound, "absolute-root"),
    ("GET", "http://evil", NotFound, "absolute-no-path"),
    ("GET", "http://evil?x=1", NotFound, "absolute-query-only"),
    ("GET", "*", BadRequest, "asterisk"),
    ("OPTIONS", "*", BadRequest, "options-asterisk"),
    ("GET", "evil.example:443", BadRequest, "authority-form"),
    ("GET", "", BadRequest, "empty"),
    ("GET", "http:/v1/messages", BadRequest, "absolute-missing-slashes"),
    ("GET", "http://evil#/v1/messages", BadRequest, "absolute-hash-authority"),
    ("GET", "http://evil/v1/x#frag", BadRequest, "absolute-fragment"),
    ("CONNECT", "evil.example:443", MethodNotAllowed, "connect"),
    ("CONNECT", "/v1/messages", MethodNotAllowed, "connect-path"),
    ("TRACE", "/v1/messages", MethodNotAllowed, "trace"),
    ("trace", "/v1/messages", MethodNotAllowed, "trace-lower-case"),
    ("GET", "/v1/x?a b", BadRequest, "query-space"),
    ("GET", "/v1/x?a#b", BadRequest, "query-hash"),
    ("GET", "/v1/x?caf\u00e9", BadRequest, "query-non-ascii"),
    ("GET", "/v1/x?a\tb", BadRequest, "query-tab"),
    ("GET", "/v1/x?a\x7f", BadRequest, "query-delete"),
    ("GET", "/v1/a%2fb?x=1", BadRequest, "encoded-slash"),
    ("GET", "/v1/a%00", BadRequest, "nul"),
    ("GET", "/v1/a/../../..", BadRequest, "climb"),
]


@pytest.mark.parametrize(
    ("method", "raw_target", "error"),
    [row[:3] for row in REFUSED],
    ids=[row[3] for row in REFUSED],
)
def test_decide_refuses(method: str, raw_target: str, error: type[Refused]) -> None:
    with pytest.raises(error):
        decide(method, raw_target)


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
@pytest.mark.parametrize(
    "path",
    [
        *("/v1/users/x", "/v1/users", "/v1/users/admin/x", "/v1/users/"),
        # A format suffix (Rails, Spring) or trailing dots, which some routers drop.
        *("/v1/users.json", "/v1/users.", "/v1/users..", "/v1/Users.XML/admin", "/v1.0/users"),
    ],
)
def test_every_method_on_users_is_forbidden(method: str, path: str) -> None:
    with pytest.raises(Forbidden):
        decide(method, path)


def test_error_details_do_not_echo_the_raw_target() -> None:
    """Refusals of malformed targets say what is wrong without repeating the attacker's bytes."""
    for raw in ["/v1/<script>", "/v1/a%0d%0aSet-Cookie:x", "/v1/x?<script>#", "\u202e/v1"]:
        with pytest.raises(BadRequest) as caught:
            decide("GET", raw)
        assert "script" not in caught.value.details
        assert "Set-Cookie" not in caught.value.details
        assert "\u202e" not in caught.value.details


def test_forbidden_details_name_only_the_normalised_path() -> None:
    with pytest.raises(Forbidden) as caught:
        decide("DELETE", "/v1/%75sers/../users/ad%6Din")
    assert "/v1/users/admin" in caught.value.details
    assert "%" not in caught.value.details


def test_split_target_drops_the_authority() -> None:
    assert split_target("http://evil.example:1/p?q") == ("/p", "q")
    assert split_target("/p") == ("/p", None)
    assert split_target("/p?") == ("/p", "")


def test_custom_rules() -> None:
    """Rules are data: the first match wins, and a path no rule names is forwarded when the
    prefixes cover it, and not found otherwise."""
    rules = (Rule("/v1/media", None, frozenset({"DELETE"})),)
    prefixes = Prefixes(("/v1",))
    assert decide("GET", "/v1/media/1", prefixes, rules).action is FORWARD
    with pytest.raises(Forbidden):
        decide("DELETE", "/v1/media/1", prefixes, rules)
    with pytest.raises(NotFound):
        decide("GET", "/metrics", prefixes, rules)


NARROW = Prefixes(("/v1/messages", "=/v1/stats/app", "=/v1/media/", "/v2"))


@pytest.mark.parametrize(
    ("method", "raw_target", "outcome"),
    [
        ("POST", "/v1/messages", FORWARD),
        ("GET", "/v1/messages/abc", FORWARD),
        ("POST", "/V1/MESSAGES", FORWARD),
        ("POST", "/v1/media/../messages", FORWARD),
        ("GET", "/v1/messagesx", NotFound),
        ("GET", "/v1", NotFound),
        ("GET", "/v1/media", NotFound),
        ("GET", "/v1/media/", FORWARD),  # "=/v1/media/": that path alone, its slash included
        ("GET", "/v1/media/1", NotFound),
        ("GET", "/v1/stats/app", APIKEY),  # a covered path keeps its credential
        ("GET", "/v1/stats/app/x", NotFound),  # "=": that path alone
        ("GET", "/v1/stats/db", NotFound),
        ("GET", "/v1/health", NotFound),
        ("GET", "/metrics", NotFound),
        ("GET", "/v2/anything", FORWARD),  # a prefix may reach beyond the default API
        ("POST", "/v1/users/login", LOGIN),  # answered locally whatever the prefixes say
        ("POST", "/v1/users/logout", LOGOUT),
        ("DELETE", "/v1/users/admin", Forbidden),
    ],
)
def test_forward_prefixes_decide_what_may_be_forwarded(
    method: str, raw_target: str, outcome: Action | type[Refused]
) -> None:
    try:
        result: Action | type[Refused] = decide(method, raw_target, NARROW).action
    except Refused as refused:
        result = type(refused)
    assert result == outcome


@pytest.mark.parametrize(
    ("text", "prefix"),
    [
        ("/v1/messages", "/v1/messages"),
        (" /V1/Media/ ", "/v1/media"),
        ("/v2", "/v2"),
        ("/v1", "/v1"),  # /v1/users below it stays refused by the rules
        ("=/metrics", "=/metrics"),
        (" = /Metrics ", "=/metrics"),
        ("=/v1/media/", "=/v1/media/"),  # exact: another path than /v1/media
    ],
)
def test_forward_prefix_accepts_plain_paths(text: str, prefix: str) -> None:
    assert forward_prefix(text) == prefix


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("v1", "start with /"),
        ("", "start with /"),
        ("/", "must not hold /"),
        ("=/", "must not hold /"),
        ("=metrics", "start with /"),
        ("==/metrics", "start with /"),
        ("/v1/%6Dessages", "must hold plain paths"),
        ("/v1;x", "must hold plain paths"),
        ("/v1?x=1", "must hold plain paths"),
        ("/v1/messages /v1/media", "separate paths with commas"),
        ("/v1/m\u00e9dia", "must hold plain paths"),
        ("/v1/#x", "must hold plain paths"),
        ("/v1/./messages", "normalised"),
        ("/v1//messages", "normalised"),
        ("/v1/a/../messages", "normalised"),
        ("/..", "normalised"),  # climbs above the root
        ("/v1/me ssages", "no spaces"),
        ("/v1/users", "/v1/users or a path below it"),
        ("/V1/Users/admin", "/v1/users or a path below it"),
        ("/_gateway/metrics", "/_gateway or a path below it"),
    ],
)
def test_forward_prefix_refuses_what_the_policy_could_not_honour(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        forward_prefix(text)


def test_rules_are_written_decoded_and_lower_case() -> None:
    """Rule paths are compared with a decoded, lower-case key, so they must be written that way."""
    for rule in RULES:
        assert rule.path == rule.path.lower() == unquote(rule.path)
        assert normalise_path(rule.path) == rule.path


# --- properties

METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "get"])
HEX = "0123456789abcdefABCDEF"
ESCAPES = st.builds(lambda a, b: f"%{a}{b}", st.sampled_from(HEX + "gz"), st.sampled_from(HEX))
# Escapes that matter most: dots, slashes, backslashes, the letters of "users", NUL, ';', '%'.
INTERESTING_ESCAPES = st.sampled_from(
    ["%2e", "%2E", "%2f", "%2F", "%5c", "%5C", "%75", "%55", "%00", "%3b", "%3B", "%25", "%ff", "%"]
)
# fmt: off
WORDS = [
    "/", "/", "//", ".", "..", "/./", "/../", "v1", "users", "Users", "login", "logout",
    "stats", "metrics", "health", "messages", ";", ";x", "?", "&", "=", "+", "\\", "~",
]
# fmt: on
PIECES = st.one_of(
    st.sampled_from(WORDS),
    INTERESTING_ESCAPES,
    ESCAPES,
    st.text(alphabet="abcdefxyz019-_.~%/;:@!$&'()*+,=", max_size=4),
    st.text(max_size=3),
)
PATHISH = st.lists(PIECES, max_size=12).map("".join)
PREFIXES = st.sampled_from(["", "/", "/v1/", "/v1/users/", "http://evil.example", "https://h:1"])
TARGETS = st.one_of(st.builds(str.__add__, PREFIXES, PATHISH), st.text(max_size=30))

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_RFC3986_PATH = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-F]{2})*")
_REFUSED_ESCAPE = re.compile(r"%(?:2F|5C|00|3F|23|20)", re.IGNORECASE)


def _decision(method: str, raw_target: str) -> Action | type[Refused]:
    try:
        return decide(method, raw_target).action
    except Refused as refused:
        return type(refused)


@SETTINGS
@given(method=METHODS, raw_target=TARGETS)
@example(method="DELETE", raw_target="/v1/%75sers/admin")
@example(method="POST", raw_target="/v1/users/..%2f..%2fusers/login")
@example(method="GET", raw_target="/v1/messages/..;/users/x")
def test_decide_only_passes_canonical_targets(method: str, raw_target: str) -> None:
    """Any target is either refused or becomes a canonical, idempotent Target."""
    try:
        target = decide(method, raw_target)
    except Refused:
        return
    path = target.path
    assert path.startswith("/")
    assert "//" not in path
    segments = path.split("/")
    assert "." not in segments
    assert ".." not in segments
    assert not _REFUSED_ESCAPE.search(path)
    assert _RFC3986_PATH.fullmatch(path), path
    assert normalise_path(path) == path
    assert decide(method, target.path_qs) == target
    if target.query is not None:
        assert raw_target.endswith("?" + target.query)


@SETTINGS
@given(method=METHODS, raw_target=TARGETS)
@example(method="GET", raw_target="/v1/%6Dessages")
@example(method="GET", raw_target="/v1/messages%3Bx")
def test_only_covered_paths_are_forwarded(method: str, raw_target: str) -> None:
    """Whatever the encoding, a forwarded path decodes to a listed prefix or lies below one."""
    try:
        target = decide(method, raw_target, NARROW)
    except Refused:
        return
    if target.action in (LOGIN, LOGOUT):
        return
    # A ;parameter is no part of the path to a server that drops them, so it counts for nothing.
    key = re.sub(r";[^/]*", "", unquote(target.path).lower())
    covered = any(
        key == path.removeprefix("=") or (path[0] == "/" and key.startswith(path + "/"))
        for path in NARROW.paths
    )
    assert covered, target


SENSITIVE = (LOGIN, LOGOUT, Forbidden)


@SETTINGS
@given(method=METHODS, raw_target=TARGETS)
@example(method="DELETE", raw_target="/v1/%75sers/admin")
@example(method="POST", raw_target="/v1/%75sers/login")
@example(method="POST", raw_target="/v1/users%3Bx/admin")
def test_encoding_never_changes_a_sensitive_decision(method: str, raw_target: str) -> None:
    """Login, logout and the forbidden user endpoints are decided the same encoded or decoded,
    so no escape lets a request reach the user endpoints with the gateway's credentials."""
    try:
        path = normalise_path(split_target(raw_target)[0])
    except BadRequest:
        return
    decoded_path = unquote(path)
    if any(char in decoded_path for char in "%?#"):
        return  # decoding once more, or reading a query out of data, is not what servers do
    original = _decision(method, raw_target)
    decoded = _decision(method, decoded_path)
    if BadRequest in (original, decoded):
        return
    if original in SENSITIVE or decoded in SENSITIVE:
        assert original == decoded


@SETTINGS
@given(method=METHODS, raw_target=TARGETS)
@example(method="DELETE", raw_target="/v1/Users/admin")
@example(method="DELETE", raw_target="/v1/users;x/admin")
@example(method="POST", raw_target="/v1/%55SERS%3b")
def test_encoded_forms_of_user_endpoints_are_never_forwarded(method: str, raw_target: str) -> None:
    """If the decoded path is under /v1/users, the request is never forwarded."""
    try:
        target = decide(method, raw_target)
    except Refused:
        return
    decoded = unquote(target.path).lower()
    if decoded == "/v1/users" or decoded.startswith(("/v1/users/", "/v1/users;")):
        assert target.action in (LOGIN, LOGOUT)


@SETTINGS
@given(raw_path=PATHISH.map(lambda p: "/" + p))
def test_normalise_path_is_idempotent_or_refuses(raw_path: str) -> None:
    try:
        path = normalise_path(raw_path)
    except BadRequest:
        return
    assert normalise_path(path) == path
