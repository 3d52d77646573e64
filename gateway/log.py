"""Logging: structlog events as JSON lines (a console renderer on a TTY), secrets redacted.

Every event, the gateway's own and those of aiohttp and asyncio through the standard library, goes
through :func:`redact` after its traceback has been rendered, so no token, password, API key or
``Authorization`` value can reach the output even inside an exception message.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from .secret import MASK, Secret

REDACTED = "[redacted]"
SENSITIVE_KEYS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "password",
        "new_password",
        "token",
        "api_key",
        "apikey",
        "secret",
        "cookie",
        "set-cookie",
    }
)
# "Bearer abc", "Basic abc", "Apikey abc" and password='abc' / token: abc, wherever they stand.
_CREDENTIAL = re.compile(r"(?i)\b(bearer|basic|apikey)(\s+)[^\s,;\"'}\]]+")
_ASSIGNMENT = re.compile(
    r"(?i)\b(password|new_password|token|api_key|apikey|secret)(['\"]?\s*[=:]\s*['\"]?)[^\s,;\"'}\])]+"
)


def redact(_logger: WrappedLogger, _method: str, event: EventDict) -> EventDict:
    """Mask every value that is, or may contain, a secret."""
    return {key: _clean(key, value) for key, value in event.items()}


def _clean(key: object, value: object) -> object:
    if isinstance(key, str) and key.lower() in SENSITIVE_KEYS:
        return REDACTED
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, Secret):
        return MASK
    if isinstance(value, Mapping):
        return {k: _clean(k, v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(None, item) for item in value]
    return value


def scrub(text: str) -> str:
    """``text`` with credentials after Bearer/Basic/Apikey and after password=/token= masked."""
    text = _CREDENTIAL.sub(rf"\1\2{REDACTED}", text)
    return _ASSIGNMENT.sub(rf"\1\2{REDACTED}", text)


def configure_logging(level: str, stream: TextIO | None = None, *, cache: bool = True) -> None:
    """Send structlog and standard-library logging to ``stream`` (stdout) at ``level``.

    ``cache=False`` lets tests configure again and again; the gateway caches for speed.
    """
    stream = stream or sys.stdout
    number = logging.getLevelNamesMapping()[level.upper()]
    renderer: Processor = (
        structlog.dev.ConsoleRenderer() if stream.isatty() else structlog.processors.JSONRenderer()
    )
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    final: list[Processor] = [structlog.processors.format_exc_info, redact, renderer]
    structlog.configure(
        processors=[*shared, *final],
        wrapper_class=structlog.make_filtering_bound_logger(number),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=cache,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(number)
