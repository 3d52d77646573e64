"""The ``wa-gateway`` command: argument parsing and the subcommands, nothing more."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping, Sequence

from . import __version__
from .app import create_app
from .config import Config, ConfigError, describe, load_config
from .demo import run_demo
from .healthcheck import ListenerUnknown, check_health, health_url
from .log import configure_logging, drain_logs
from .login import LoginFailed
from .passwords import PasswordFile
from .relations import rotation_problem
from .server import INTERRUPTED, ListenError, serve
from .webapp import Webapp

CONFIG_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wa-gateway",
        description="Authenticating reverse proxy in front of the WhatsApp Business API Webapp.",
    )
    parser.add_argument("--version", action="version", version=f"wa-gateway {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve_cmd = commands.add_parser("serve", help="run the gateway")
    check_cmd = commands.add_parser(
        "check-config", help="validate the configuration and print it with secrets masked"
    )
    health_cmd = commands.add_parser(
        "healthcheck", help="exit 0 if the gateway configured here answers its liveness check"
    )
    rotate_cmd = commands.add_parser(
        "rotate-password",
        help="change the Webapp password now, keeping the new one in WA_PASSWORD_FILE",
    )
    for command in (serve_cmd, check_cmd, health_cmd, rotate_cmd):
        command.add_argument(
            "--config", metavar="FILE", help="TOML file (default: $GATEWAY_CONFIG, if set)"
        )
    commands.add_parser("demo", help="run the gateway in front of the built-in Webapp simulator")
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        return _run(args, os.environ if environ is None else environ)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"wa-gateway: configuration error: {problem}", file=sys.stderr)
        return CONFIG_ERROR
    except ListenError as exc:
        print(f"wa-gateway: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C before serve() has its signal handlers in place
        return INTERRUPTED


# The failures' own advice is the serving gateway's, which retries by itself ("the gateway keeps
# retrying"); rotate-password tries once, so whatever the cause, the last step is to run it again.
_CHECK = {
    "bad_credentials": "check WA_USERNAME and WA_PASSWORD_FILE",
    "webapp_unavailable": "check that the Webapp is up and reachable",
    "invalid_answer": "check the Webapp's version and clock",
    "token_rejected": "check the Webapp and its user",
}


def _retry_advice(failure: LoginFailed) -> str:
    check = _CHECK.get(failure.kind)
    if check is None:
        return "This command does not retry; run it again once that is resolved."
    return f"This command does not retry; {check}, then run it again."


async def _rotate_password(config: Config) -> int:
    """Rotate once, as a running gateway would; its logins read the new password from the file.

    The token this login yields is not used, and not logged out either: by one reading of the
    Webapp's documentation a logout revokes every token of the user, the gateways' too.
    """
    file = config.webapp.password_file
    problem = rotation_problem(file)
    if file is None or problem:
        raise ConfigError([f"WA_PASSWORD_FILE (webapp.password_file): rotate-password {problem}"])
    webapp = Webapp(config)
    await webapp.open()
    failure = None
    try:
        async with asyncio.timeout(config.tokens.login_timeout):
            await webapp.login(webapp.account, rotate=True)
    except LoginFailed as exc:
        failure = f"rotation failed ({exc.kind}): {exc.details} {_retry_advice(exc)}"
    except TimeoutError:
        failure = (
            f"rotation failed: no answer within GATEWAY_LOGIN_TIMEOUT "
            f"({config.tokens.login_timeout:g} s); the next login finishes it if it took effect"
        )
    finally:
        await webapp.close()
    password_file = PasswordFile(file)
    if failure is None and password_file.not_kept():  # accepted, but the rename failed (logged)
        failure = (
            f"the Webapp took the new password, but it waits in {password_file.next_path}, "
            "which every login tries first"
        )
    drain_logs()  # the log (on stderr too) first, then the verdict
    if failure is not None:
        print(f"wa-gateway: {failure}", file=sys.stderr)
        return 1
    print(f"wa-gateway: password rotated; the new one is in {file}")
    return 0


def _run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    if args.command == "demo":
        asyncio.run(run_demo(environ))
        return 0
    if args.command == "healthcheck":
        try:
            return 0 if check_health(health_url(args.config, environ)) else 1
        except ListenerUnknown as exc:
            print(f"wa-gateway: {exc}", file=sys.stderr)
            return 1
    config = load_config(args.config, environ)
    if args.command == "check-config":
        for warning in config.warnings:
            print(f"wa-gateway: warning: {warning}", file=sys.stderr)
        print("\n".join(describe(config)).rstrip())
        return 0
    if args.command == "rotate-password":
        configure_logging(config.server.log_level, sys.stderr)
        return asyncio.run(_rotate_password(config))
    configure_logging(config.server.log_level)
    asyncio.run(serve(create_app(config), config, then_exit=True))
    return 0
