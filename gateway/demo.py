"""``wa-gateway demo``: the gateway on its usual address in front of the Webapp simulator."""

from __future__ import annotations

import secrets
from collections.abc import Mapping

from aiohttp import web

from .app import create_app
from .config import load_config
from .log import configure_logging, drain_logs
from .server import serve
from .settings import CONFIG_ENV
from .simulator import RateLimit, Simulator

CURL = (
    "curl -s {url}/v1/messages -H 'Content-Type: application/json' "
    """-d '{{"to": "16315551234", "type": "text", "text": {{"body": "hi"}}}}'"""
)


async def run_demo(environ: Mapping[str, str]) -> None:
    """Run the simulator and the gateway in front of it until a stop signal."""
    # A fresh password and API key each run: the simulator only lives as long as the demo.
    password = "Demo-" + secrets.token_urlsafe(12) + "-1a!"
    api_key = secrets.token_urlsafe(24)
    simulator = Simulator(
        password=password,
        password_change_required=False,
        api_key=api_key,
        rate_limit=RateLimit(),  # as the real one: 20 requests/s per endpoint, bursts to 60
    )
    runner = web.AppRunner(simulator.make_app(), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        webapp_url = f"http://{host}:{port}"
        # The demo's own Webapp settings replace any WA_* of the environment; GATEWAY_* still
        # apply, but for GATEWAY_CONFIG: its [webapp] (a production password file, rotation)
        # would win over the demo's.
        settings = {
            key: value
            for key, value in environ.items()
            if not key.startswith("WA_") and key != CONFIG_ENV
        }
        settings |= {"WA_WEBAPP_URL": webapp_url, "WA_PASSWORD": password, "WA_API_KEY": api_key}
        config = load_config(None, settings)
        configure_logging(config.server.log_level)

        def banner(url: str) -> None:
            drain_logs()  # after gateway.started, not in the middle of it
            print(
                f"\nwa-gateway demo: the gateway listens on {url}, in front of a simulated Webapp "
                f"on {webapp_url}.\nTry:\n  {CURL.format(url=url)}\n"
                f"  curl -s {url}/v1/health\nStop with Ctrl-C.\n",
                flush=True,
            )

        await serve(create_app(config), config, on_started=banner, then_exit=True)
    finally:
        await runner.cleanup()
