"""How each setting's raw value (a TOML value or an environment string) becomes a typed one.

Every parser raises :class:`Invalid` with a message that says what is wrong without repeating the
value, so that a problem line never echoes a secret. The files a setting names are checked in
:mod:`gateway.files`, which shares :func:`nonempty` and :func:`basic_auth_text` from here.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass

from yarl import URL

from .policy import forward_prefix
from .secret import Secret

LOG_LEVELS = ("debug", "info", "warning", "error")
_SIZE_UNITS = {"": 1, "b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30}
_SIZE = re.compile(r"^\s*(\d{1,20})\s*([a-z]*)\s*$", re.IGNORECASE)
_SIZE_HINT = "must be a size in bytes, optionally with KiB, MiB or GiB, e.g. 100MiB"


class Invalid(ValueError):
    """A parser's verdict on one value; the message says what is wrong without repeating it."""


@dataclass(frozen=True)
class Address:
    """A ``host:port`` to listen on."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise Invalid("must be a string")
    return value


def nonempty(value: object) -> str:
    """``value`` as text without surrounding spaces, of which there must be some left."""
    text = _text(value).strip()
    if not text:
        raise Invalid("must not be empty")
    return text


def basic_auth_text(text: str) -> None:
    """Refuse ``text`` that the Webapp's login cannot carry."""
    # The Webapp login is HTTP Basic auth, which the gateway encodes as Latin-1 and then, if
    # refused, as UTF-8 (webapp.py): Latin-1 text can be sent both ways.
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        raise Invalid(
            "must be Latin-1 text (HTTP Basic auth cannot carry other characters)"
        ) from None


def username(value: object) -> str:
    name = nonempty(value)
    if ":" in name:
        raise Invalid("must not contain ':' (HTTP Basic auth cannot carry it)")
    if not name.isprintable():
        raise Invalid("must not contain control characters")
    basic_auth_text(name)
    return name


def password_value(value: object) -> Secret:
    # Taken verbatim: leading or trailing spaces may be part of a password.
    password = _text(value)
    if not password.strip():
        raise Invalid("must not be empty")
    basic_auth_text(password)
    return Secret(password)


def api_key(value: object) -> Secret:
    key = _text(value)
    if not 12 <= len(key) <= 128:
        raise Invalid(f"must be 12 to 128 characters long, it has {len(key)}")
    # It travels in an Authorization header, where spaces and control characters break it.
    if not all("!" <= char <= "~" for char in key):
        raise Invalid("must be visible ASCII characters only, without spaces")
    return Secret(key)


def url(value: object) -> URL:
    text = nonempty(value)
    try:
        url = URL(text)
    except ValueError:
        raise Invalid("is not a URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise Invalid("must be an http:// or https:// URL with a host, e.g. https://webapp:443")
    if url.user is not None or url.password is not None:
        raise Invalid("must not carry credentials: set WA_USERNAME and WA_PASSWORD instead")
    if url.query_string or url.fragment:
        raise Invalid("must not have a query or fragment")
    # The raw (still encoded) path, so that an escaped character such as %2F keeps its meaning.
    return url.with_path(url.raw_path.rstrip("/"), encoded=True)


def listen(value: object) -> Address:
    text = nonempty(value)
    match = re.fullmatch(r"\[([^\[\]\s]+)\]:(\d{1,5})|([^:\[\]\s]+):(\d{1,5})", text)
    if match is None:
        raise Invalid("must be host:port, e.g. 127.0.0.1:8080 or [::1]:8080")
    if match.group(1) is not None:
        try:
            host = str(ipaddress.IPv6Address(match.group(1)))
        except ValueError:
            raise Invalid("has an address in brackets that is not an IPv6 address") from None
    else:
        host = match.group(3)
    port = int(match.group(2) or match.group(4))
    if port > 65535:
        raise Invalid("has a port above 65535")
    return Address(host, port)


def boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = _text(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise Invalid("must be true or false")


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise Invalid("must be a number")
    try:
        number = float(value)
    except (ValueError, OverflowError):  # TOML integers have no size limit
        raise Invalid("must be a number") from None
    if not math.isfinite(number):
        raise Invalid("must be a finite number")
    return number


def seconds(value: object) -> float:
    number = _number(value)
    if number <= 0:
        raise Invalid("must be a number of seconds above 0")
    return number


def seconds_or_zero(value: object) -> float:
    number = _number(value)
    if number < 0:
        raise Invalid("must be a number of seconds, 0 or more")
    return number


_INTERVAL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$", re.IGNORECASE)
_INTERVAL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_INTERVAL_HINT = "must be 0 (never) or seconds, optionally with s, m, h or d, e.g. 30d"
# A rotation is a login: more often than this would only strain the Webapp.
MIN_ROTATION_INTERVAL = 60.0


def rotation_interval(value: object) -> float:
    if isinstance(value, str):
        match = _INTERVAL.match(value)
        if match is None:
            raise Invalid(_INTERVAL_HINT)
        number = float(match.group(1)) * _INTERVAL_UNITS[match.group(2).lower()]
    else:
        try:
            number = _number(value)
        except Invalid:
            raise Invalid(_INTERVAL_HINT) from None
    if number != 0 and not MIN_ROTATION_INTERVAL <= number < math.inf:
        raise Invalid(f"must be 0 (never) or at least {MIN_ROTATION_INTERVAL:g} seconds")
    return number


def fraction(value: object) -> float:
    number = _number(value)
    if not 0 <= number < 1:
        raise Invalid("must be a fraction from 0 up to (not including) 1")
    return number


# Beyond these, aiohttp's C parser overflows and drops every connection without a word: far
# above any sane setting, so a typo with extra digits is refused at start-up instead.
MAX_COUNT = 2**31 - 1
MAX_SIZE = 1 << 50  # 1PiB


def count(value: object) -> int:
    number = _number(value)
    if number != int(number) or not 1 <= number <= MAX_COUNT:
        raise Invalid(f"must be a whole number from 1 to {MAX_COUNT}")
    return int(number)


def size(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str):
        match = _SIZE.match(value)
        unit = match.group(2).lower() if match else ""
        if match is None or unit not in _SIZE_UNITS:
            raise Invalid(_SIZE_HINT)
        size = int(match.group(1)) * _SIZE_UNITS[unit]
    else:
        raise Invalid(_SIZE_HINT)
    if size < 1:
        raise Invalid("must be at least 1 byte")
    if size > MAX_SIZE:
        raise Invalid("must be at most 1PiB")
    return size


def forward_paths(value: object) -> tuple[str, ...]:
    """A TOML array of paths, or a comma-separated string of them (the environment's form)."""
    if isinstance(value, str):
        value = [entry for entry in value.split(",") if entry.strip()]
    if not isinstance(value, list) or not all(isinstance(entry, str) for entry in value):
        raise Invalid("must be a list of paths, such as /v1/messages,/v1/media")
    if not value:
        raise Invalid("must hold at least one path")
    try:
        prefixes = [forward_prefix(entry) for entry in value]
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    return tuple(dict.fromkeys(prefixes))  # in order, without repeats


def log_level(value: object) -> str:
    level = _text(value).strip().lower()
    if level not in LOG_LEVELS:
        raise Invalid(f"must be one of {', '.join(LOG_LEVELS)}")
    return level
