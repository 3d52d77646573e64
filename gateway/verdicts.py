"""What the Webapp's failures and answers mean, without I/O: the one place where the client's
exceptions become gateway errors (:func:`translate`, each with its ``kind`` for metrics and logs),
and what an answer says of the token it was sent with (:func:`token_verdict`).
"""

from __future__ import annotations

import os
import socket

import aiohttp

from .errors import GatewayError, WebappTimeout, WebappUnreachable

_CONNECT_HINT = "GATEWAY_CONNECT_TIMEOUT"


def translate(exc: BaseException) -> GatewayError:  # noqa: PLR0911 - one answer per kind
    """The gateway error, with its ``kind`` for metrics and logs, for a failed exchange."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):  # nothing was sent: unreachable, not slow
        return WebappUnreachable(
            f"The gateway could not connect to the Webapp within {_CONNECT_HINT}.", kind="connect"
        )
    if isinstance(exc, TimeoutError):  # aiohttp's other timeouts are TimeoutErrors too
        return WebappTimeout("The Webapp did not answer in time.", kind="timeout")
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return WebappUnreachable(_certificate_refusal(exc.certificate_error), kind="tls")
    if isinstance(exc, aiohttp.ClientSSLError):
        return WebappUnreachable(
            f"The TLS handshake with the Webapp failed ({_ssl_reason(exc)}): check that "
            "WA_WEBAPP_URL names the Webapp's HTTPS port.",
            kind="tls",
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        return WebappUnreachable(
            f"The gateway cannot connect to the Webapp ({_connect_reason(exc.os_error)}).",
            kind="connect",
        )
    if isinstance(exc, aiohttp.ClientResponseError):
        return WebappUnreachable(
            "The Webapp sent an invalid HTTP response.", kind="invalid_response"
        )
    return WebappUnreachable(
        "The Webapp closed the connection before answering.", kind="disconnected"
    )


def token_verdict(status: int) -> bool | None:
    """What an answer says of the token it was sent with: refused (401), accepted, or nothing
    (None) for 429 and 5xx, which the Webapp may give before it looks at the token."""
    if status == 401:
        return False
    if status == 429 or status >= 500:
        return None
    return True


def _connect_reason(error: OSError) -> str:
    """Why a connection could not be made, in the system's words and without the address
    (asyncio's message names it; the operator has it in WA_WEBAPP_URL)."""
    if isinstance(error, socket.gaierror):
        return f"its host name does not resolve: {error.strerror}"
    return os.strerror(error.errno) if error.errno else type(error).__name__


# OpenSSL's verification results that a CA file cannot fix (X509_V_ERR_*).
_CERT_NOT_YET_VALID, _CERT_HAS_EXPIRED = 9, 10
_HOSTNAME_MISMATCH, _IP_ADDRESS_MISMATCH = 62, 64


def _certificate_refusal(error: BaseException) -> str:
    """What was wrong with the Webapp's certificate, and the setting that fixes it."""
    code = getattr(error, "verify_code", None)
    # OpenSSL's words (which name at most the host the gateway asked for), or Python's.
    reason = getattr(error, "verify_message", None) or str(error) or type(error).__name__
    if code in (_HOSTNAME_MISMATCH, _IP_ADDRESS_MISMATCH):
        advice = "make WA_WEBAPP_URL name a host the certificate is issued for"
    elif code in (_CERT_NOT_YET_VALID, _CERT_HAS_EXPIRED):
        advice = "renew the Webapp's certificate (or correct a clock)"
    else:
        advice = "set WA_CA_FILE to the CA certificate that issued it"
    return f"The Webapp's TLS certificate was not accepted ({reason.rstrip('.')}): {advice}."


def _ssl_reason(exc: aiohttp.ClientSSLError) -> str:
    # ssl.SSLError's reason is OpenSSL's fixed name for the failure, such as WRONG_VERSION_NUMBER.
    return getattr(exc.os_error, "reason", None) or type(exc.os_error).__name__
