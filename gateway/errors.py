"""The gateway's own failures, each knowing its HTTP status and WhatsApp-style error code.

Answers of the Webapp, 4xx and 5xx included, are never turned into these: they pass through. Only
requests the gateway refuses, and requests for which it could not get an answer, end here::

    GatewayError
    ├── Refused                 the request is not forwarded (4xx)
    │   ├── BadRequest          400  1025 Invalid request
    │   │   └── BadFraming      400  1025 (and the connection is closed)
    │   ├── Forbidden           403  1005 Access denied
    │   ├── NotFound            404  1006 Not found
    │   ├── MethodNotAllowed    405  1025 Invalid request
    │   ├── RequestTimeout      408  1025 Invalid request
    │   ├── BodyTooLarge        413  1009 Invalid parameter
    │   ├── UriTooLong          414  1025 Invalid request
    │   └── HeadersTooLarge     431  1025 Invalid request
    └── Unavailable             no answer from the Webapp (5xx)
        ├── WebappUnreachable   502  1014 Internal error
        ├── Overloaded          503  1016 System overloaded (with Retry-After)
        ├── SpoolFailed         503  1014 Internal error (the body could not be stored)
        ├── NotReady            503  1011 Service not ready (readiness)
        │   └── TokenUnavailable     1011 (with Retry-After)
        └── WebappTimeout       504  1014 Internal error
"""

from __future__ import annotations

import json
import math
from typing import ClassVar

from . import __version__

META = {"version": f"wa-gateway {__version__}", "api_status": "stable"}


class GatewayError(Exception):
    """A failure the gateway answers itself; ``details`` says what happened and what to do."""

    status: ClassVar[int] = 500
    code: ClassVar[int] = 1014
    title: ClassVar[str] = "Internal error"

    def __init__(self, details: str, *, retry_after: float | None = None, kind: str = "") -> None:
        super().__init__(details)
        self.details = details
        self.retry_after = retry_after
        # For the access event's failure, and for an exchange with the Webapp that failed,
        # wa_gateway_upstream_errors_total's label.
        self.kind = kind

    def body(self) -> bytes:
        """The WhatsApp-style JSON body."""
        errors = [{"code": self.code, "title": self.title, "details": self.details}]
        return json.dumps({"errors": errors, "meta": META}).encode()

    def headers(self) -> dict[str, str]:
        """Headers the answer needs besides Content-Type."""
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}


class Refused(GatewayError):
    """The gateway does not forward this request."""


class BadRequest(Refused):
    status = 400
    code = 1025
    title = "Invalid request"


class BadFraming(BadRequest):
    """The body's framing cannot be trusted, so neither can anything after it on the connection:
    answered, then the connection is closed (RFC 9112 section 6.3)."""


class Forbidden(Refused):
    status = 403
    code = 1005
    title = "Access denied"


class NotFound(Refused):
    status = 404
    code = 1006
    title = "Not found"


class MethodNotAllowed(Refused):
    status = 405
    code = 1025
    title = "Invalid request"

    # The gateway forwards any method but TRACE and CONNECT; these are the ones HTTP defines.
    ALLOW = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"

    def headers(self) -> dict[str, str]:
        """A 405 says which methods are allowed (RFC 9110 section 15.5.6)."""
        return {**super().headers(), "Allow": self.ALLOW}


class RequestTimeout(Refused):
    status = 408
    code = 1025
    title = "Invalid request"


class BodyTooLarge(Refused):
    status = 413
    code = 1009
    title = "Invalid parameter"


class UriTooLong(Refused):
    status = 414
    code = 1025
    title = "Invalid request"


class HeadersTooLarge(Refused):
    status = 431
    code = 1025
    title = "Invalid request"


class Unavailable(GatewayError):
    """No answer could be obtained from the Webapp."""


class WebappUnreachable(Unavailable):
    status = 502
    code = 1014
    title = "Internal error"


class Overloaded(Unavailable):
    status = 503
    code = 1016
    title = "System overloaded"


class SpoolFailed(Unavailable):
    status = 503
    code = 1014
    title = "Internal error"


class NotReady(Unavailable):
    status = 503
    code = 1011
    title = "Service not ready"


class TokenUnavailable(NotReady):
    """No token, because logins fail."""


class WebappTimeout(Unavailable):
    status = 504
    code = 1014
    title = "Internal error"


def reason(exc: BaseException) -> str:
    """A failure in a few words: an OS error's text (never the file name it may carry), else
    the exception's message."""
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return str(exc)
