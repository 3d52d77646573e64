"""``wa-gateway healthcheck``: ask the gateway running on this host whether it is alive.

For a container's HEALTHCHECK, which cannot know the port, or whether the listener speaks TLS,
without reading the same configuration as the gateway itself.
"""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request

from .config import Config

HEALTH_PATH = "/_gateway/healthz"
TIMEOUT = 3.0


def health_url(config: Config) -> str:
    """Where the gateway configured by ``config`` answers its liveness check, seen from here."""
    server = config.server
    host = server.listen.host
    if host in ("0.0.0.0", ""):  # noqa: S104 - an address to reach, not to bind
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if server.tls_cert_file is not None else "http"
    return f"{scheme}://{host}:{server.listen.port}{HEALTH_PATH}"


def check_health(config: Config) -> bool:
    """Whether the gateway answered 200 within a few seconds."""
    context = None
    if config.server.tls_cert_file is not None:
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
        with opener.open(health_url(config), timeout=TIMEOUT) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False
