"""Logging: structlog events as JSON lines (a console renderer on a TTY), secrets redacted.

Every event, the gateway's own and those of aiohttp and asyncio through the standard library, goes
through :func:`redact` after its traceback has been rendered, so no token, password, API key or
``Authorization`` value can reach the output even inside an exception message. Redaction knows
secrets by where they stand (a sensitive key, a credential scheme, a ``password=`` assignment)
or by their type (:class:`~gateway.secret.Secret`); a bare secret in free text is not recognised,
so code must not put one there.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
import traceback
from collections.abc import Mapping
from typing import TextIO, cast

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from .secret import MASK, Secret
from .sink import LineSink

REDACTED = "[redacted]"
_sink: LineSink | None = None
# A key whose lower-cased name ends with one of these holds a secret, whatever its value:
# token, access_token, X-Api-Key, new_password, Proxy-Authorization, Set-Cookie...
SENSITIVE_KEY_ENDINGS = (
    "authorization",
    "password",
    "passwd",
    "token",
    "secret",
    "apikey",
    "api_key",
    "api-key",
    "cookie",
    "credentials",
)
_SCHEMES = "bearer|basic|apikey|digest"
_NAMES = "|".join(f"(?<={name})" for name in SENSITIVE_KEY_ENDINGS)
# One pass over the text finds both shapes; only the named group (the secret) is replaced.
# - a credential after an Authorization scheme: "Bearer abc", "Basic dXNlcjpw", "Apikey k";
# - a value assigned to a name with a sensitive ending: password=x, "token": "x y", WA_API_KEY: x,
#   \"secret\": \"x\", Authorization: x (a credential with a scheme is left to the first shape,
#   which keeps the scheme).
# The name is matched possessively and checked by look-behind, so the scan stays linear.
_SECRET = re.compile(
    rf"""(?ix)
    \b(?:{_SCHEMES})\s+(?P<credential>[^\s,;"'}}\]]+)
    | (?<![\w-])[\w-]++(?:{_NAMES})
      \\?["']?[ \t]*[=:][ \t]*
      (?!\\?["']?(?:{_SCHEMES})\s)
      (?: \\?"(?P<double>[^"]*) | \\?'(?P<single>[^']*) | (?P<bare>[^\s,;"'}}\])]+) )
    """
)
# Neither shape can match a string without a space, '=' or ':' (most values of most events).
_MAYBE_SECRET = re.compile(r"[\s=:]")


def redact(_logger: WrappedLogger, _method: str, event: EventDict) -> EventDict:
    """Mask every value that is, or may contain, a secret."""
    for key, value in event.items():
        event[key] = _clean(key, value)
    return event


def _clean(key: object, value: object) -> object:
    if isinstance(key, str) and _sensitive(key):
        return REDACTED
    if isinstance(value, str):
        return scrub(value)
    if value is None or isinstance(value, int | float):
        return value
    return _clean_object(value)


@functools.lru_cache(maxsize=4096)
def _sensitive(key: str) -> bool:
    # Events use a few dozen keys again and again: the verdict is worth remembering.
    return key.lower().endswith(SENSITIVE_KEY_ENDINGS)


def _clean_object(value: object) -> object:
    if isinstance(value, Secret):
        return MASK
    if isinstance(value, Mapping):
        return {k: _clean(k, v) for k, v in value.items()}
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        return [value[0], _clean(*value)]  # a (name, value) pair, such as a header
    if isinstance(value, list | tuple | set | frozenset):
        return [_clean(None, item) for item in value]
    # Anything else would be rendered by its repr (an exception, bytes, a header multidict):
    # render it here, so that the text is scrubbed like any other.
    return scrub(repr(value))


def scrub(text: str) -> str:
    """``text`` with credentials after Bearer/Basic/Apikey and after password=/token= masked."""
    if _MAYBE_SECRET.search(text) is None:
        return text
    return _SECRET.sub(_mask, text)


def _mask(match: re.Match[str]) -> str:
    secret = match.lastgroup or "credential"
    return match.string[match.start() : match.start(secret)] + REDACTED


def configure_logging(
    level: str, stream: TextIO | None = None, *, cache: bool = True, background: bool = True
) -> None:
    """Send structlog and standard-library logging to ``stream`` (stdout) at ``level``.

    With ``background`` (the gateway's way), lines reach the stream through a
    :class:`~gateway.sink.LineSink`, so that a stream that blocks cannot stall the event loop;
    tests that read what was logged at once pass False. ``cache=False`` lets tests configure
    again and again; the gateway caches for speed (a cached logger keeps the configuration it
    first saw, whatever is configured later).
    """
    global _sink  # noqa: PLW0603 - the sink belongs to the one logging configuration
    stream = stream or sys.stdout
    if _sink is not None:
        _sink.close()
    _sink = LineSink(stream) if background else None
    # A LineSink writes text like a stream; it is one as far as the handlers go.
    target = stream if _sink is None else cast(TextIO, _sink)
    number = logging.getLevelNamesMapping()[level.upper()]
    renderer: Processor = (
        structlog.dev.ConsoleRenderer() if stream.isatty() else structlog.processors.JSONRenderer()
    )
    # Level and timestamp are added after redaction: they cannot hold a secret, so they are not
    # scanned for one.
    final: list[Processor] = [
        structlog.processors.format_exc_info,
        redact,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        renderer,
    ]
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, *final],
        wrapper_class=structlog.make_filtering_bound_logger(number),
        logger_factory=structlog.WriteLoggerFactory(target),
        cache_logger_on_first_use=cache,
    )
    handler = logging.StreamHandler(target)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.contextvars.merge_contextvars,
                structlog.stdlib.add_logger_name,
            ],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(number)


def drain_logs() -> None:
    """Wait (briefly) until every log line so far is written: before a ``print`` that must
    follow them on the same stream."""
    if _sink is not None:
        _sink.drain()


def dropped_lines() -> int:
    """Log lines dropped so far because the log's reader fell behind."""
    return 0 if _sink is None else _sink.dropped


def log_crash(event: str, exc: BaseException) -> None:
    """Log an unexpected exception by its type and the places it passed, not by its message.

    A message can hold anything, a bare token included, which no redaction could recognise.
    """
    frames = [
        f"{frame.filename}:{frame.lineno} in {frame.name}"
        for frame in traceback.extract_tb(exc.__traceback__)
    ]
    structlog.get_logger("gateway").error(event, error=type(exc).__qualname__, frames=frames)
