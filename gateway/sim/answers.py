"""The Webapp's answers and what it asks of request bodies.

Every body carries ``meta`` (as in ``wa-api.md``); errors are an ``errors`` array, raised from
anywhere in a handler as an ``ApiError``. Request bodies are small JSON objects whose fields
and new passwords are checked here.
"""

from __future__ import annotations

import contextlib
import json
import string
from collections.abc import Mapping

from aiohttp import web

from .exchange import body_chunks

META: Mapping[str, str] = {"version": "v2.45.1", "api_status": "stable"}
_SPECIALS = frozenset("!\"#$%&'()*+,-./:;<=>?@[]^_`{|}~")
_JSON_LIMIT = 1024 * 1024


class ApiError(Exception):
    """An answer in the Webapp's error shape, raised from anywhere in a handler."""

    def __init__(self, status: int, code: int, title: str, details: str) -> None:
        super().__init__(details)
        self.status = status
        self.code = code
        self.title = title
        self.details = details

    def response(self) -> web.Response:
        """Render the error body."""
        error = {"code": self.code, "title": self.title, "details": self.details}
        return answer({"errors": [error]}, status=self.status)


def answer(data: Mapping[str, object], status: int = 200) -> web.Response:
    """A JSON answer: ``data`` and the Webapp's ``meta``."""
    return web.json_response({**data, "meta": dict(META)}, status=status)


def access_denied(details: str) -> ApiError:
    """401, code 1005."""
    return ApiError(401, 1005, "Access denied", details)


def status_error(status: int, details: str) -> ApiError:
    """An error of any status, with the code and title the Webapp gives it."""
    known = {
        401: (1005, "Access denied"),
        404: (1006, "Not found"),
        429: (1015, "Too many requests"),
        503: (1016, "System overloaded"),
    }
    fallback = (1014, "Internal error") if status >= 500 else (1000, "Generic error")
    code, title = known.get(status, fallback)
    return ApiError(status, code, title, details)


def missing(name: str) -> ApiError:
    """400, code 1008: a required parameter is missing."""
    return ApiError(400, 1008, "Required parameter is missing", f"{name} is required")


def invalid(details: str) -> ApiError:
    """400, code 1009: a parameter's value is not valid."""
    return ApiError(400, 1009, "Parameter value is not valid", details)


def not_found(details: str) -> ApiError:
    """404, code 1006."""
    return ApiError(404, 1006, "Not found", details)


def password_problem(password: object, name: str) -> str | None:
    """Say what is wrong with a new password (never echoing it), or None if it is acceptable."""
    if not isinstance(password, str):
        return f"{name} must be a string"
    if not (
        8 <= len(password) <= 64
        and any(c in string.digits for c in password)
        and any(c in string.ascii_uppercase for c in password)
        and any(c in string.ascii_lowercase for c in password)
        and any(c in _SPECIALS for c in password)
    ):
        return (
            f"{name} must be 8 to 64 characters long and contain a digit, an upper-case letter, "
            "a lower-case letter and a special character"
        )
    return None


def acceptable_password(password: object, name: str) -> str:
    """``password`` if it is acceptable as a new password, else a 400 saying what is wrong."""
    problem = password_problem(password, name)
    if problem is not None:
        raise invalid(problem)
    return str(password)


def string_field(body: Mapping[str, object], name: str) -> str:
    """A required string field of a request body."""
    value = body.get(name)
    if value is None:
        raise missing(name)
    if not isinstance(value, str):
        raise invalid(f"{name} must be a string")
    return value


async def read_json(request: web.Request) -> dict[str, object]:
    """Read a small JSON object body; an empty body is an empty object."""
    body = bytearray()
    async with contextlib.aclosing(body_chunks(request)) as chunks:
        async for chunk in chunks:
            body += chunk
            if len(body) > _JSON_LIMIT:
                raise ApiError(413, 1009, "Parameter value is not valid", "Body too large")
    if not body.strip():
        return {}
    try:
        data: object = json.loads(bytes(body))
    except (ValueError, RecursionError):
        raise invalid("The request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise invalid("The request body must be a JSON object")
    return data
