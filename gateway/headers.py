"""Header rewriting in both directions, as pure functions over multidicts.

Toward the Webapp: hop-by-hop headers (RFC 9110 section 7.6.1, and any named in ``Connection``) and
every header the gateway owns (credentials, framing, forwarding, request id) are dropped, then the
gateway's own are set; a value that is not UTF-8 is refused, since it could only be sent altered.
Headers that would let a client pick another target or method than the one the policy checked
(``X-Original-URL``, ``X-HTTP-Method-Override``...), or a proxy for a CGI-style Webapp (``Proxy``,
httpoxy), are dropped too: nothing says the Webapp ignores them. So is any name with an
underscore, as nginx does by default: a CGI-style server reads ``X_Original_URL`` as
``X-Original-URL``, past every name checked here.
Toward the client: hop-by-hop headers are dropped, and so is a field whose value is not UTF-8
(aiohttp could only send it altered: cut short at the first such byte) or holds a control
character (aiohttp's parser takes them, its writer refuses them), and a field whose name is not
a token (``Content-Length : 5``); framing comes from the Webapp's ``Content-Length`` when it sent
one, and :func:`framing_problem` says when the Webapp's framing cannot be relayed at all.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Iterable

from multidict import CIMultiDict, MultiMapping

from .errors import BadRequest
from .secret import MASK

# Lower-case names: comparing name.lower() is cheaper than building case-insensitive strings.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Set by the gateway on the way to the Webapp, whatever the client sent; so is every X-Forwarded-*.
GATEWAY_OWNED = frozenset(
    {
        "authorization",
        "host",
        "content-length",
        "expect",
        "x-request-id",
        "forwarded",  # RFC 7239: the gateway speaks X-Forwarded-* only, so a client's is a claim
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
    }
)
# Claims some servers act on: another target or method than the request line's, a proxy to use
# (httpoxy), the client's address (the gateway says it in X-Forwarded-For).
REROUTING = frozenset(
    {
        "x-original-url",
        "x-rewrite-url",
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
        "proxy",
        "x-real-ip",
    }
)
_UPSTREAM_DROPPED = HOP_BY_HOP | GATEWAY_OWNED | REROUTING
_FORWARDED_PREFIX = "x-forwarded-"
REQUEST_ID = "X-Request-ID"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:+=@/-]{1,128}")


def request_id(offered: str | None) -> str:
    """The client's X-Request-ID when it is a sane token, otherwise a new one."""
    if offered is not None and _REQUEST_ID.fullmatch(offered):
        return offered
    # Unique, not secret: the Mersenne Twister spares uuid4's system call for every request.
    return f"{random.getrandbits(128):032x}"


def _connection_named(headers: MultiMapping[str]) -> frozenset[str]:
    """Lower-case names the sender listed in Connection: hop-by-hop for this message only."""
    values = headers.getall("Connection", ())
    if not values:
        return frozenset()
    return frozenset(token.strip().lower() for value in values for token in value.split(","))


def upstream_headers(
    incoming: MultiMapping[str],
    *,
    request_id: str,
    client: str | None,
    scheme: str,
) -> CIMultiDict[str]:
    """The headers sent to the Webapp for a client's request, but for ``Authorization`` and
    ``Content-Length``, which the forwarder sets once it has them. Raises :class:`BadRequest`
    for a value that could only be sent altered (see :func:`refuse_undecodable`)."""
    named = _connection_named(incoming)
    dropped = _UPSTREAM_DROPPED | named if named else _UPSTREAM_DROPPED
    headers: CIMultiDict[str] = CIMultiDict(
        (name, value)
        for name, value in incoming.items()
        if (lower := name.lower()) not in dropped
        and not lower.startswith(_FORWARDED_PREFIX)
        and "_" not in lower
    )
    # The client's chain is kept and the peer appended, unless the client named it hop-by-hop.
    chain = [] if "x-forwarded-for" in named else incoming.getall("X-Forwarded-For", [])
    hops = [hop for value in chain if (hop := value.strip())]
    if client:
        hops.append(client)
    if hops:
        headers["X-Forwarded-For"] = ", ".join(hops)
    headers["X-Forwarded-Proto"] = scheme
    if "Host" in incoming:
        headers["X-Forwarded-Host"] = incoming["Host"]
    headers[REQUEST_ID] = request_id
    refuse_undecodable(headers.values())
    return headers


def refuse_undecodable(values: Iterable[str]) -> None:
    """Refuse header values that are not UTF-8 (400): the parser keeps such bytes as lone
    surrogates, and aiohttp's client would silently drop them, so the Webapp would get a value
    the client never sent."""
    for value in values:
        if not _decodable(value):
            raise BadRequest("A header value is not valid UTF-8.")


def _decodable(value: str) -> bool:
    """Whether ``value`` came off the wire as UTF-8 (the parser keeps other bytes as lone
    surrogates, which no encoder takes)."""
    if value.isascii():
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def downstream_headers(
    upstream: MultiMapping[str], *, request_id: str, credential: str | None = None
) -> CIMultiDict[str]:
    """The headers returned to the client for the Webapp's response, with ``credential`` (the
    token or API key the request was sent with) masked wherever the Webapp echoed it."""
    named = _connection_named(upstream)
    dropped = HOP_BY_HOP | named if named else HOP_BY_HOP
    headers: CIMultiDict[str] = CIMultiDict(
        (name, masked(value, credential))
        for name, value in upstream.items()
        if name.lower() not in dropped and sendable(value) and _TOKEN.issuperset(name)
    )
    headers[REQUEST_ID] = request_id
    return headers


def masked(text: str, credential: str | None) -> str:
    """``text`` with every occurrence of ``credential`` replaced by ``***``: a Webapp that echoes
    the Authorization it got (in WWW-Authenticate, a Location, a reason phrase) would hand the
    gateway's credential to a client that never had it."""
    if credential and credential in text:
        return text.replace(credential, MASK)
    return text


# What a field name may hold (RFC 9110 section 5.1). aiohttp's C parser keeps a name written with
# a space before its colon (``Content-Length : 5``) as "Content-Length ": it would pass every
# check above and reach the client, where a front proxy that trims it reads two framings.
_TOKEN = frozenset("!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits)


_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f]")  # all but HTAB, which a value may hold


def sendable(text: str) -> bool:
    """Whether aiohttp can send ``text`` (a header value, a reason phrase) as it is."""
    # Printable text (the usual case) holds neither a control character nor a lone surrogate.
    return text.isprintable() or (_CONTROL.search(text) is None and _decodable(text))


def framing_problem(answer: MultiMapping[str]) -> str | None:
    """Why an answer's framing cannot be relayed as it is, or None. aiohttp undoes the chunks of
    ``gzip, chunked`` and leaves the rest (relayed, the body would be garbage), and its
    pure-Python parser takes a length from Content-Length fields that disagree (the C parser
    refuses them); relayed, the client would get both."""
    if not only_chunked(answer.getall("Transfer-Encoding", ())):
        return "with a Transfer-Encoding other than chunked"
    if len(set(answer.getall("Content-Length", ()))) > 1:
        return "with Content-Length fields that disagree"
    return None


def only_chunked(transfer_encoding: Iterable[str]) -> bool:
    """Whether ``Transfer-Encoding`` values name no coding but ``chunked``, which HTTP/1.1 peers
    undo themselves; any other (``gzip, chunked``) would reach the other side undone."""
    codings = [coding.strip().lower() for value in transfer_encoding for coding in value.split(",")]
    return codings in ([], ["chunked"])
