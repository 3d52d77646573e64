"""Problems and warnings of settings taken together, for :func:`~gateway.config.load_config`.

Settings that are fine one by one can still not go together: a password rotation without a
password file it can replace, the listener's certificate without its key (TLS needs both or
neither), a key that does not match its certificate (loaded here already, so that it stops the
gateway before it starts), timings that contradict each other. Those are problems.

A secret file that every user may read (:mod:`gateway.files` says why it is not refused), or TLS
verification turned off, only earns a warning in :attr:`~gateway.config.Config.warnings`:
``check-config`` prints the warnings, ``serve`` logs them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

from yarl import URL

from .files import load_pair, world_readable
from .passwords import SETTLE_AFTER, PasswordFile
from .settings import BY_KEY
from .values import Invalid

MAX_LOGIN_TIMEOUT = SETTLE_AFTER / 3


def problems(values: Mapping[str, Mapping[str, object]]) -> Iterator[str]:
    """Problems between settings that are fine one by one."""
    # A setting that failed to parse is missing from ``values``; its problem is reported already.
    webapp, server, tokens = values["webapp"], values["server"], values["tokens"]
    if webapp.get("password", "") is None and webapp.get("password_file", "") is None:
        yield "WA_PASSWORD or WA_PASSWORD_FILE: one of them is required"
    yield from _rotation(webapp)
    yield from _listener_tls(server)
    before, jitter = tokens.get("refresh_before"), tokens.get("refresh_jitter")
    if isinstance(before, float) and isinstance(jitter, float) and before + jitter >= 1:
        yield (
            "GATEWAY_REFRESH_BEFORE and GATEWAY_REFRESH_JITTER (tokens.refresh_before, "
            "tokens.refresh_jitter): must add up to less than 1, or every token is due at once"
        )
    login_timeout = tokens.get("login_timeout")
    if isinstance(login_timeout, float) and login_timeout > MAX_LOGIN_TIMEOUT:
        # A rotation whose answer never came is settled SETTLE_AFTER later: far beyond this.
        yield (
            f"GATEWAY_LOGIN_TIMEOUT (tokens.login_timeout): must be at most "
            f"{MAX_LOGIN_TIMEOUT:g} seconds"
        )
    section = server.get("max_header_section")
    lines = [server.get("max_url"), server.get("max_header")]
    if isinstance(section, int) and any(isinstance(n, int) and n > section for n in lines):
        yield (
            "GATEWAY_MAX_HEADER_SECTION (server.max_header_section): must not be below "
            "GATEWAY_MAX_URL or GATEWAY_MAX_HEADER, which it holds"
        )
    initial, ceiling = tokens.get("backoff_initial"), tokens.get("backoff_max")
    if isinstance(initial, float) and isinstance(ceiling, float) and initial > ceiling:
        yield (
            "GATEWAY_LOGIN_BACKOFF_INITIAL (tokens.backoff_initial): "
            "must not be above GATEWAY_LOGIN_BACKOFF_MAX (tokens.backoff_max)"
        )


def _rotation(webapp: Mapping[str, object]) -> Iterator[str]:
    """Rotation keeps each new password in the password file, so it needs one it can replace."""
    path = webapp.get("password_file", "")  # "": unreadable, and reported as such already
    if not webapp.get("password_rotate_every") or not (path is None or isinstance(path, Path)):
        return
    if problem := rotation_problem(path):
        yield f"{BY_KEY['webapp', 'password_rotate_every'].name}: {problem}"


def rotation_problem(password_file: Path | None) -> str | None:
    """Why passwords cannot be rotated with this password file, or None: for the setting that
    turns rotation on and for ``wa-gateway rotate-password`` alike."""
    if password_file is None:
        return "needs WA_PASSWORD_FILE, where the gateway keeps each new password"
    return PasswordFile(password_file).cannot_rotate()


def _listener_tls(server: Mapping[str, object]) -> Iterator[str]:
    """The listener's certificate and key: both or neither, and a pair that loads."""
    cert_setting = BY_KEY["server", "tls_cert_file"]
    key_setting = BY_KEY["server", "tls_key_file"]
    cert, key = server.get("tls_cert_file", ""), server.get("tls_key_file", "")
    if cert is None and isinstance(key, Path):
        yield f"{cert_setting.name}: is required when {key_setting.env} is set (both or neither)"
    elif key is None and isinstance(cert, Path):
        yield f"{key_setting.name}: is required when {cert_setting.env} is set (both or neither)"
    elif isinstance(cert, Path) and isinstance(key, Path):
        try:
            load_pair(cert, key)
        except Invalid as exc:
            yield f"{key_setting.name}: {exc}"


def warnings(values: Mapping[str, Mapping[str, object]]) -> Iterator[str]:
    """Settings that work but deserve a warning, one line each (only called without problems)."""
    webapp = values["webapp"]
    for section, key in (("webapp", "password_file"), ("server", "tls_key_file")):
        path = values[section][key]
        if isinstance(path, Path) and (warning := world_readable(path)):
            yield f"{BY_KEY[section, key].name}: {warning}"
    url = webapp["url"]
    if isinstance(url, URL) and url.scheme == "https" and webapp["tls_verify"] is False:
        yield f"{BY_KEY['webapp', 'tls_verify'].name}: {_unverified(webapp['ca_file'])}"


def _unverified(ca_file: object) -> str:
    """The warning for an https Webapp whose certificate is not checked, with the fix that fits:
    a CA file already given is not used while verification is off."""
    if ca_file is None:
        return (
            "is false, so the Webapp's certificate is not checked and whoever can intercept the "
            "connection gets the password; set WA_CA_FILE to the Webapp's CA instead"
        )
    return (
        "is false, so the Webapp's certificate is not checked and WA_CA_FILE is not used: "
        "whoever can intercept the connection gets the password; set WA_TLS_VERIFY to true "
        "to check the certificate against WA_CA_FILE"
    )
