"""Header rewriting: what reaches the Webapp, what reaches the client, and request ids."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.headers import (
    HOP_BY_HOP,
    REQUEST_ID,
    REROUTING,
    downstream_headers,
    request_id,
    sendable,
    upstream_headers,
)

AUTH = "Bearer gateway-token"
RID = "rid-1"


def upstream(
    incoming: list[tuple[str, str]],
    *,
    client: str | None = "10.0.0.9",
    content_length: int | None = None,
) -> CIMultiDict[str]:
    headers = upstream_headers(
        CIMultiDictProxy(CIMultiDict(incoming)), request_id=RID, client=client, scheme="https"
    )
    # What the forwarder adds once it has them.
    headers["Authorization"] = AUTH
    if content_length is not None:
        headers["Content-Length"] = str(content_length)
    return headers


def downstream(answer: list[tuple[str, str]]) -> CIMultiDict[str]:
    return downstream_headers(CIMultiDictProxy(CIMultiDict(answer)), request_id=RID)


# --- toward the Webapp


def test_upstream_sets_the_gateways_own_headers() -> None:
    headers = upstream([("Host", "gw.example"), ("Accept", "application/json")])
    assert list(headers.items()) == [
        ("Accept", "application/json"),
        ("X-Forwarded-For", "10.0.0.9"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "gw.example"),
        (REQUEST_ID, RID),
        ("Authorization", AUTH),
    ]


UPSTREAM_DROPPED = [
    ([("Authorization", "Basic YTpi")], "authorization"),
    (
        [("authorization", "Bearer a"), ("AUTHORIZATION", "Bearer b")],
        "authorization-twice-any-case",
    ),
    ([("Proxy-Authorization", "Basic YTpi")], "proxy-authorization"),
    ([("Connection", "keep-alive"), ("Keep-Alive", "timeout=5")], "keep-alive"),
    ([("Transfer-Encoding", "chunked")], "transfer-encoding"),
    ([("TE", "trailers"), ("Trailer", "X-Sum")], "te-trailer"),
    ([("Upgrade", "websocket"), ("Connection", "Upgrade")], "upgrade"),
    ([("Proxy-Connection", "keep-alive")], "proxy-connection"),
    ([("Connection", "X-Secret, x-other"), ("X-Secret", "1"), ("X-Other", "2")], "named"),
    ([("Connection", "close"), ("Connection", "X-Secret"), ("x-secret", "1")], "named-later"),
    ([("Content-Length", "999")], "content-length"),
    ([("Expect", "100-continue")], "expect"),
    ([("X-Request-ID", "client-id")], "request-id"),
    ([("X-Forwarded-Proto", "http"), ("X-Forwarded-Host", "evil")], "forwarded-proto-host"),
    ([("X-Forwarded-Port", "1"), ("X-Forwarded-Prefix", "/x")], "other-x-forwarded"),
    ([("Forwarded", "for=1.2.3.4;proto=https")], "rfc7239-forwarded"),
    # Would let a server that honours them act on another target or method than the one the
    # policy checked, use a proxy of the client's choosing (httpoxy), or believe another client.
    ([("X-Original-URL", "/v1/users/admin"), ("X-Rewrite-URL", "/v1/users")], "rewrite-url"),
    ([("X-HTTP-Method-Override", "DELETE"), ("X-HTTP-Method", "TRACE")], "method-override"),
    ([("X-Method-Override", "DELETE")], "x-method-override"),
    ([("Proxy", "http://evil.example:3128")], "httpoxy"),
    ([("X-Real-IP", "6.6.6.6")], "real-ip"),
    # A CGI-style server reads an underscore as a dash: these would be the names above.
    ([("X_HTTP_Method_Override", "DELETE"), ("X_Original_URL", "/v1/users/admin")], "underscore"),
    ([("X_Forwarded_For", "10.6.6.6"), ("x_real_ip", "6.6.6.6")], "underscore-forwarded"),
]


@pytest.mark.parametrize(
    "incoming", [row for row, _ in UPSTREAM_DROPPED], ids=[i for _, i in UPSTREAM_DROPPED]
)
def test_upstream_drops_what_the_client_may_not_set(incoming: list[tuple[str, str]]) -> None:
    headers = upstream([*incoming, ("Accept", "*/*")])
    assert list(headers.items()) == [
        ("Accept", "*/*"),
        ("X-Forwarded-For", "10.0.0.9"),
        ("X-Forwarded-Proto", "https"),
        (REQUEST_ID, RID),
        ("Authorization", AUTH),
    ]


@pytest.mark.parametrize(
    ("incoming", "client", "expected"),
    [
        ([], "10.0.0.9", "10.0.0.9"),
        ([], None, None),
        ([], "", None),
        ([("X-Forwarded-For", "1.1.1.1")], "10.0.0.9", "1.1.1.1, 10.0.0.9"),
        ([("X-Forwarded-For", "1.1.1.1")], None, "1.1.1.1"),
        ([("X-Forwarded-For", "1.1.1.1, 2.2.2.2"), ("x-forwarded-for", " 3.3.3.3 ")], "10.0.0.9",
         "1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.9"),
        ([("X-Forwarded-For", ""), ("X-Forwarded-For", " ")], "10.0.0.9", "10.0.0.9"),
        ([("X-Forwarded-For", "1.1.1.1"), ("Connection", "X-Forwarded-For")], "10.0.0.9",
         "10.0.0.9"),
    ],
    ids=["client", "no-client", "empty-client", "appended", "kept-without-client",
         "several-joined", "blank-skipped", "hop-by-hop-chain-dropped"],
)  # fmt: skip
def test_upstream_x_forwarded_for(
    incoming: list[tuple[str, str]], client: str | None, expected: str | None
) -> None:
    headers = upstream(incoming, client=client)
    assert headers.getall("X-Forwarded-For", []) == ([] if expected is None else [expected])


@pytest.mark.parametrize(
    ("incoming", "content_length", "expected"),
    [
        ([], None, []),
        ([], 0, ["0"]),
        ([("Content-Length", "5")], 12, ["12"]),
        ([("Content-Length", "5"), ("Transfer-Encoding", "chunked")], None, []),
    ],
    ids=["none", "zero", "replaced", "client-framing-dropped"],
)
def test_upstream_content_length_only_as_given(
    incoming: list[tuple[str, str]], content_length: int | None, expected: list[str]
) -> None:
    headers = upstream(incoming, content_length=content_length)
    assert headers.getall("Content-Length", []) == expected
    assert "Transfer-Encoding" not in headers


def test_upstream_keeps_end_to_end_duplicates_in_order() -> None:
    headers = upstream([("Cookie", "a=1"), ("Accept", "x"), ("cookie", "b=2")])
    assert headers.getall("Cookie") == ["a=1", "b=2"]


def test_upstream_does_not_change_the_incoming_headers() -> None:
    incoming = CIMultiDict([("Authorization", "Basic x"), ("Connection", "close")])
    upstream_headers(incoming, request_id=RID, client=None, scheme="http")
    assert list(incoming.items()) == [("Authorization", "Basic x"), ("Connection", "close")]


# --- toward the client


def test_downstream_drops_hop_by_hop_and_keeps_the_rest_in_order() -> None:
    headers = downstream(
        [
            ("Content-Type", "application/json"),
            ("Set-Cookie", "a=1"),
            ("Connection", "keep-alive, X-Internal"),
            ("Keep-Alive", "timeout=5"),
            ("Transfer-Encoding", "chunked"),
            ("x-internal", "secret"),
            ("Set-Cookie", "b=2"),
            ("Content-Length", "10"),
            ("X-Request-ID", "upstream-id"),
            ("Proxy-Authenticate", "Basic"),
        ]
    )
    assert list(headers.items()) == [
        ("Content-Type", "application/json"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("Content-Length", "10"),
        (REQUEST_ID, RID),
    ]


def test_downstream_drops_a_value_that_is_not_utf8_rather_than_cut_it_short() -> None:
    """The parser keeps the byte 0xE9 of a Latin-1 value as a lone surrogate; aiohttp would send
    the value cut short before it."""
    assert list(downstream([("X-A", "caf\udce9"), ("X-B", "caf\u00e9")]).items()) == [
        ("X-B", "caf\u00e9"),
        (REQUEST_ID, RID),
    ]


@pytest.mark.parametrize("control", ["\x00", "\x01", "\x08", "\n", "\r", "\x1f", "\x7f"], ids=repr)
def test_downstream_drops_a_value_with_a_control_character(control: str) -> None:
    """aiohttp's parser takes these from the Webapp, its writer refuses to send them: kept, the
    field would crash the answer."""
    answer = [("X-A", f"a{control}b"), ("X-B", "tab\tand caf\u00e9")]
    assert list(downstream(answer).items()) == [("X-B", "tab\tand caf\u00e9"), (REQUEST_ID, RID)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        *[("OK", True), ("", True), ("a\tb", True), ("caf\u00e9", True), ("\u00a0", True)],
        *[("O\x01K", False), ("a\x7f", False), ("a\r\nX: y", False), ("caf\udce9", False)],
    ],
    ids=repr,
)
def test_sendable(text: str, expected: bool) -> None:
    assert sendable(text) is expected


def test_downstream_without_connection_header() -> None:
    assert list(downstream([("Date", "x"), ("Upgrade", "h2c")]).items()) == [
        ("Date", "x"),
        (REQUEST_ID, RID),
    ]


# --- request ids

SANE_IDS = ["a", "0" * 128, "req-1.2_3:4+5=6@7/8", "4bf92f3577b34da6a3ce929d0e0e4736", "ABC"]
INSANE_IDS = [
    None,
    "",
    "0" * 129,
    "a\r\nSet-Cookie: x=1",
    "a\n",
    "a b",
    "a\tb",
    "caf\u00e9",
    "\uff21",  # a full-width letter
    "\u0661",  # an Arabic-Indic digit
    "a,b",
    "a;b",
    '"a"',
    "a\x00",
]
_FRESH = re.compile(r"[0-9a-f]{32}")


@pytest.mark.parametrize("offered", SANE_IDS)
def test_request_id_keeps_sane_ids(offered: str) -> None:
    assert request_id(offered) == offered


@pytest.mark.parametrize("offered", INSANE_IDS, ids=repr)
def test_request_id_replaces_other_ids(offered: str | None) -> None:
    fresh = request_id(offered)
    assert _FRESH.fullmatch(fresh)
    assert fresh != offered


def test_fresh_request_ids_differ() -> None:
    assert len({request_id(None) for _ in range(100)}) == 100


# --- properties


def _in_random_case(name: str) -> st.SearchStrategy[str]:
    def apply(mask: int) -> str:
        return "".join(c.upper() if mask >> i & 1 else c.lower() for i, c in enumerate(name))

    return st.integers(0, 2 ** len(name) - 1).map(apply)


TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12)
END_TO_END = st.sampled_from(
    ["Accept", "Content-Type", "Cookie", "Set-Cookie", "X-Custom", "Date", "Cache-Control"]
)
SPECIAL = st.sampled_from(
    [
        *sorted(HOP_BY_HOP),
        *["Authorization", "Host", "Content-Length", "Expect", "X-Request-ID"],
        *["X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Forwarded-Port"],
        *sorted(REROUTING),
    ]
)
VALUES = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20)
AUTH_VALUES = st.sampled_from(["Basic YWRtaW46c2VjcmV0", "Bearer x", "Apikey k", "", "bearer  y"])
PROPERTY_SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@st.composite
def header_lists(draw: st.DrawFn) -> list[tuple[str, str]]:
    """Header lists mixing end-to-end, hop-by-hop and gateway-owned names in random case, with
    Connection values naming any of them."""
    names = draw(st.lists(st.one_of(END_TO_END, SPECIAL, TOKEN), max_size=12))
    headers = []
    for name in names:
        value = draw(AUTH_VALUES if name.lower() == "authorization" else VALUES)
        headers.append((draw(_in_random_case(name)), value))
    for _ in range(draw(st.integers(0, 2))):
        named = draw(st.lists(st.one_of(st.sampled_from(names or ["x"]), TOKEN), max_size=4))
        spaced = draw(st.sampled_from([",", ", ", " ,"])).join(named)
        headers.insert(draw(st.integers(0, len(headers))), ("Connection", spaced))
    return headers


def _connection_named(headers: list[tuple[str, str]]) -> set[str]:
    return {
        token.strip().lower()
        for name, value in headers
        if name.lower() == "connection"
        for token in value.split(",")
    }


GATEWAY_SET = {
    "authorization",
    "x-request-id",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "content-length",
}


@PROPERTY_SETTINGS
@given(
    incoming=header_lists(),
    client=st.one_of(st.none(), st.sampled_from(["10.0.0.9", "::1"])),
    content_length=st.one_of(st.none(), st.integers(0, 10**9)),
)
def test_upstream_headers_property(
    incoming: list[tuple[str, str]], client: str | None, content_length: int | None
) -> None:
    headers = upstream(incoming, client=client, content_length=content_length)
    names = [name.lower() for name in headers]
    named = _connection_named(incoming)
    assert not HOP_BY_HOP.intersection(names)
    assert not (named - GATEWAY_SET).intersection(names)
    assert headers.getall("Authorization") == [AUTH]
    assert headers.getall(REQUEST_ID) == [RID]
    assert headers.getall("Content-Length", []) == (
        [] if content_length is None else [str(content_length)]
    )
    forwarded_for = headers.getall("X-Forwarded-For", [])
    assert len(forwarded_for) <= 1
    if client:
        assert forwarded_for[0].endswith(client)
    # Everything else the client sent passes, in order.
    assert not REROUTING.intersection(names)
    dropped = HOP_BY_HOP | named | GATEWAY_SET | REROUTING | {"host", "expect"}
    passed = [
        (n, v)
        for n, v in incoming
        if n.lower() not in dropped and not n.lower().startswith("x-forwarded-")
    ]
    assert [(n, v) for n, v in headers.items() if n.lower() not in GATEWAY_SET] == passed


@PROPERTY_SETTINGS
@given(answer=header_lists())
def test_downstream_headers_property(answer: list[tuple[str, str]]) -> None:
    headers = downstream(answer)
    dropped = HOP_BY_HOP | _connection_named(answer) | {"x-request-id"}
    kept = [(n, v) for n, v in answer if n.lower() not in dropped]
    assert [(n, v) for n, v in headers.items() if n.lower() != "x-request-id"] == kept
    assert headers.getall(REQUEST_ID) == [RID]


@PROPERTY_SETTINGS
@given(offered=st.one_of(st.none(), st.text(max_size=140)))
def test_request_id_property(offered: str | None) -> None:
    """Whatever is offered, the id is safe to put in a header and a log line."""
    rid = request_id(offered)
    assert 1 <= len(rid) <= 128
    assert rid.isascii()
    assert rid.isprintable()
    assert not any(c in rid for c in ' ,;"\\')
    assert rid == offered or _FRESH.fullmatch(rid)
