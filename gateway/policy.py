"""Which requests may pass, and as what: decided on the normalised target, with no I/O.

:func:`decide` turns a method and the request target exactly as it came off the wire into a
:class:`Target` whose ``path_qs`` is both what the rules were checked against and what is sent
to the Webapp, or raises a :class:`~gateway.errors.Refused`. Normalising means: only RFC 3986
characters, escapes of unreserved characters decoded and the others upper-cased, ``.`` and ``..``
segments resolved, repeated slashes merged; escaped slashes, backslashes, control characters and
anything beyond ASCII are refused rather than guessed at. An absolute-form target contributes its
path and query only: the gateway has exactly one destination.

The rules are matched against a key that is the strictest reading any server might give the path:
percent-decoded, lower-cased and without ``;parameters``, so that neither a case-insensitive router
nor one that drops path parameters (``/v1/Users/admin``, ``/v1/users;x/admin``) can reach the
user endpoints with the gateway's credentials. The rules that refuse also match the key with every
segment cut at its first dot (``/v1/users.json``). What is sent is still the normalised path.

Two tables decide, both matched against that key: the :data:`RULES` (first match wins) say what is
special, such as the logins the gateway answers itself, the user endpoints it refuses and the
endpoints that take the API key; the :class:`Prefixes` (``GATEWAY_FORWARD_PATHS``) say what may be
forwarded at all. A path in neither is not the Webapp's API: 404, and it never reaches the Webapp.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from enum import Enum
from urllib.parse import unquote, unquote_to_bytes

from .errors import BadRequest, Forbidden, MethodNotAllowed, NotFound


class Action(Enum):
    """What the gateway does with a request that passed the rules."""

    LOGIN = "login"  # answered locally with a gateway token
    LOGOUT = "logout"  # answered locally, revokes nothing
    FORWARD = "forward"  # sent with the pooled bearer token
    FORWARD_APIKEY = "forward_apikey"  # sent with the API key when one is configured


@dataclass(frozen=True)
class Rule:
    """``methods`` (None: any) on ``path`` (or below it, unless ``exact``) get ``action``.

    An action of None refuses the request with 403. ``path`` is compared with the matching key
    (see the module docstring), so it is written decoded and in lower case.
    """

    path: str
    action: Action | None
    methods: frozenset[str] | None = None
    exact: bool = False
    _below: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_below", self.path + "/")

    def matches(self, method: str, key: str) -> bool:
        """Whether this rule applies to the method and the matching key of a normalised path."""
        if self.methods is not None and method not in self.methods:
            return False
        return key == self.path or (not self.exact and key.startswith(self._below))


GET = frozenset({"GET"})
POST = frozenset({"POST"})
# First match wins. Everything under /v1/users but login and logout would act with the gateway's
# admin credential, so it is refused, whatever the forwarded prefixes say.
RULES: tuple[Rule, ...] = (
    Rule("/v1/users/login", Action.LOGIN, POST, exact=True),
    Rule("/v1/users/logout", Action.LOGOUT, POST, exact=True),
    Rule("/v1/users", None),
    Rule("/v1/health", Action.FORWARD_APIKEY, GET, exact=True),
    # wa-api.md names these four API-key endpoints and no others.
    Rule("/v1/stats/app", Action.FORWARD_APIKEY, GET, exact=True),
    Rule("/v1/stats/db", Action.FORWARD_APIKEY, GET, exact=True),
    Rule("/metrics", Action.FORWARD_APIKEY, GET, exact=True),
)
# TRACE would echo the injected credential back to the caller; CONNECT would open a tunnel.
REFUSED_METHODS = frozenset({"TRACE", "CONNECT"})
# The Webapp's whole API. As in nginx's "location = /path", a leading "=" means that path only.
FORWARD_PATHS = ("/v1", "=/metrics")
# What the rules refuse, and the gateway's own endpoints: no forwarded path may name them.
_NEVER_FORWARDED = (*(rule.path for rule in RULES if rule.action is None), "/_gateway")


@dataclass(frozen=True)
class Prefixes:
    """The paths that may be forwarded: each one and everything below it, or, written
    ``=/path``, that path alone.

    Like rule paths, they are written decoded and in lower case (see :func:`forward_prefix`).
    """

    paths: tuple[str, ...] = FORWARD_PATHS
    _exact: frozenset[str] = field(init=False, repr=False, compare=False)
    _below: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        exact = {path.removeprefix("=") for path in self.paths}
        below = tuple(path + "/" for path in self.paths if not path.startswith("="))
        object.__setattr__(self, "_exact", frozenset(exact))
        object.__setattr__(self, "_below", below)

    def cover(self, key: str) -> bool:
        """Whether the matching key of a normalised path lies within one of the prefixes."""
        return key in self._exact or key.startswith(self._below)


def forward_prefix(text: str) -> str:
    """``text`` as a forwarded path (lower case), or :class:`ValueError`.

    It must be a normalised path with nothing to decode, below the root (forwarding everything
    would make the policy pointless) and outside the paths never forwarded. A prefix loses its
    trailing slash (``/v1/`` covers what ``/v1`` covers); an exact ``=`` path keeps it, since
    ``/v1/media/`` is another path than ``/v1/media``.
    """
    text = text.strip()
    exact = text.startswith("=")
    path = text.removeprefix("=").lstrip().lower()
    if not path.startswith("/"):
        raise ValueError("must hold paths that start with /, such as /v1/messages")
    if not _PLAIN_PATH_CHARS.issuperset(path):
        raise ValueError(
            "must hold plain paths: no spaces, %-escapes, ';' parameters, query or characters "
            "beyond ASCII (separate paths with commas)"
        )
    if not exact:
        path = path.rstrip("/")
    if path in ("", "/"):
        raise ValueError("must not hold /: name the Webapp's paths, such as /v1")
    try:
        normalised = normalise_path(path)
    except BadRequest:
        normalised = None
    if normalised != path:
        raise ValueError("must hold normalised paths (no '.', '..' or empty segments)")
    for never in _NEVER_FORWARDED:
        if path.rstrip("/") == never or path.startswith(never + "/"):
            raise ValueError(f"must not hold {never} or a path below it: they are never forwarded")
    return "=" + path if exact else path


@dataclass(frozen=True)
class Target:
    """A request that may pass: the normalised path, the query as received, and what to do."""

    path: str
    query: str | None
    action: Action

    @property
    def path_qs(self) -> str:
        """Path and query as they are sent upstream."""
        return self.path if self.query is None else f"{self.path}?{self.query}"


def decide(
    method: str,
    raw_target: str,
    prefixes: Prefixes = Prefixes(),  # frozen, so one shared default is safe
    rules: tuple[Rule, ...] = RULES,
) -> Target:
    """Check a request against ``rules`` and ``prefixes``; raise
    :class:`~gateway.errors.Refused` if it may not pass."""
    method = method.upper()  # methods are case-sensitive, but a lenient server may not think so
    if method in REFUSED_METHODS:
        raise MethodNotAllowed(f"{method} is not supported by the gateway.")
    raw_path, query = split_target(raw_target)
    path = normalise_path(raw_path)
    key = _matching_key(path)
    loose = _without_suffixes(key)
    action = Action.FORWARD
    for rule in rules:
        if rule.matches(method, key) or (rule.action is None and rule.matches(method, loose)):
            if rule.action is None:
                raise Forbidden(
                    f"{method} {path} would act with the gateway's own credentials: "
                    "manage Webapp users directly, not through the gateway."
                )
            if rule.action in _LOCAL:
                return Target(path, query, rule.action)
            action = rule.action
            break
    if not prefixes.cover(key):
        raise NotFound(f"{path} is not part of the Webapp API that the gateway forwards.")
    return Target(path, query, action)


_LOCAL = frozenset({Action.LOGIN, Action.LOGOUT})


# The query is forwarded as received; it only has to be printable ASCII to be one unambiguous thing.
_QUERY_CHARS = frozenset(map(chr, range(0x21, 0x7F))) - {"#"}
_ABSOLUTE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*(?P<rest>[/?].*)?", re.DOTALL)


def split_target(raw_target: str) -> tuple[str, str | None]:
    """Split an origin-form or absolute-form target into raw path and raw query.

    The authority of an absolute-form target is dropped: it never chooses a destination.
    """
    if not raw_target.startswith("/"):
        match = _ABSOLUTE.fullmatch(raw_target)
        if match is None:
            raise BadRequest("The request target must be a path such as /v1/messages.")
        raw_target = match.group("rest") or "/"
        if raw_target.startswith("?"):
            raw_target = "/" + raw_target
    path, sep, query = raw_target.partition("?")
    if sep and not _QUERY_CHARS.issuperset(query):
        raise BadRequest("The query string holds characters that must be percent-encoded.")
    return path, query if sep else None


_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
_PATH_CHARS = _UNRESERVED | frozenset("!$&'()*+,;=:@/%")
_PLAIN_PATH_CHARS = _PATH_CHARS - {";", "%"}  # what a forwarded path may be written with
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Escaped, these would let one path mean two things: a separator to one server, data to another.
# An escaped "%" is a second layer of escaping: a server that decodes twice would see another
# path (/v1/%2575sers is /v1/users to it) than the one checked here. A front that decodes the
# path and sends it on unescaped (nginx's "proxy_pass http://webapp$uri") would end the path at an
# escaped "?", "#" or space: /v1/users%3F would reach the Webapp as /v1/users.
_REFUSED_BYTES = frozenset({*range(0x21), 0x7F, *b"/\\%?#"})


def _normalise_escape(match: re.Match[str]) -> str:
    byte = int(match.group(1), 16)
    if byte in _REFUSED_BYTES:
        raise BadRequest(
            "The path holds an escaped slash, backslash, percent sign, '?', '#', space or "
            "control character."
        )
    char = chr(byte)
    return char if char in _UNRESERVED else "%" + match.group(1).upper()


def normalise_path(raw_path: str) -> str:
    """The canonical form of a raw (still percent-encoded) path, or :class:`BadRequest`."""
    if not raw_path.startswith("/") or not _PATH_CHARS.issuperset(raw_path):
        raise BadRequest("The path holds characters that must be percent-encoded.")
    if "%" in raw_path:
        if _BAD_ESCAPE.search(raw_path):
            raise BadRequest("The path holds a malformed percent-escape.")
        path = _ESCAPE.sub(_normalise_escape, raw_path)
        if not unquote_to_bytes(path).isascii():
            # The Webapp's API has no such path, and a router that folds case or compatibility
            # forms (U+017F long s to s, U+FF55 fullwidth u to u) would read them as /v1/users.
            raise BadRequest("The path holds characters beyond ASCII once percent-decoded.")
    else:
        path = raw_path
    segments: list[str] = []
    for segment in path.split("/")[1:]:
        if segment == "..":
            if not segments:
                raise BadRequest("The path climbs above the root with '..'.")
            segments.pop()
        elif segment not in ("", "."):
            segments.append(segment)
    trailing = "/" if segments and path.rsplit("/", 1)[1] in ("", ".", "..") else ""
    return "/" + "/".join(segments) + trailing


_DOT_OR_EMPTY = frozenset({"", ".", ".."})


def _without_suffixes(key: str) -> str:
    """``key`` with every segment cut at its first dot, as the refusing rules also read it: a
    router that takes a suffix for a format (Rails, Spring before 5.3) sends /v1/users.json to
    /v1/users, and one that trims trailing dots sends /v1/users. there too."""
    if "." not in key:
        return key
    return "/".join(segment.partition(".")[0] for segment in key.split("/"))


def _matching_key(path: str) -> str:
    """The normalised ``path`` as the most lenient server would route it (module docstring)."""
    key = unquote(path).lower()  # normalise_path has checked that it decodes to ASCII
    if ";" not in key:
        return key
    segments = []
    for segment in key.split("/"):
        name, semicolon, _ = segment.partition(";")
        # Tomcat reads "/..;/" as "/../": a parameter on a dot or empty segment is refused.
        if semicolon and name in _DOT_OR_EMPTY:
            raise BadRequest("The path holds a ';' parameter on an empty or dot segment.")
        segments.append(name)
    return "/".join(segments)
