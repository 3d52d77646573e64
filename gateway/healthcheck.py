"""``wa-gateway healthcheck``: ask the gateway running on this host whether it is alive.

For a container's HEALTHCHECK, which cannot know the port, or whether the listener speaks TLS,
without reading the same configuration as the gateway itself. It reads only those two settings:
a password file being replaced, or any other setting the running gateway has long since read,
must not make a live gateway look dead. Its exit status is 0 or 1, as Docker expects (2 is
reserved there): a listener setting it cannot read is a 1, with the problem on stderr.
"""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from . import values
from .settings import BY_KEY, raw_value, read_document

HEALTH_PATH = "/_gateway/healthz"
TIMEOUT = 3.0


class ListenerUnknown(Exception):
    """The listener's settings cannot be read; the message says why, one line."""


def health_url(path: str | Path | None, environ: Mapping[str, str]) -> str:
    """Where the gateway configured by the file at ``path`` (or ``GATEWAY_CONFIG``) and
    ``environ`` answers its liveness check, seen from here."""
    problems: list[str] = []
    document = read_document(path, environ, problems)
    if document:
        problems = []  # unknown keys elsewhere: the running gateway's business, not ours
    listen_setting = BY_KEY["server", "listen"]
    raw = raw_value(listen_setting, environ, document)
    try:
        listen = values.listen(str(listen_setting.default) if raw is None else raw)
    except values.Invalid as exc:
        problems.append(f"{listen_setting.name}: {exc}")
    if problems:
        raise ListenerUnknown(problems[0])
    tls = raw_value(BY_KEY["server", "tls_cert_file"], environ, document) is not None
    host = listen.host
    if host in ("0.0.0.0", ""):  # noqa: S104 - an address to reach, not to bind
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{listen.port}{HEALTH_PATH}"


def check_health(url: str) -> bool:
    """Whether the gateway answered 200 at ``url`` within a few seconds."""
    context = None
    if url.startswith("https:"):
        # Our own listener on a local address: its certificate names the service, not this one.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    # No proxy: urlopen would follow HTTP_PROXY and its kin, which a container may well have set
    # for its outbound traffic, and ask the proxy for a loopback address.
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    try:
        with opener.open(url, timeout=TIMEOUT) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False
