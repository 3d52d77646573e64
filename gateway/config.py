"""Configuration: one table of settings, read from a TOML file and the environment (which wins).

``load_config(path, environ)`` is the only entry point. It reads nothing else, checks every setting,
and raises :class:`ConfigError` listing every problem at once, one line each, naming the setting and
never echoing a secret. The result is a tree of frozen dataclasses.

An environment variable set to the empty string counts as unset (as shells and compose files
produce them); in the file, a setting is unset by leaving it out. ``password_file`` wins over
``password`` wherever each comes from: when it is given, the password is neither read nor checked.

Files that hold secrets (``password_file``, ``tls_key_file``) are judged by their mode bits: one
*writable* by every user is refused, since anyone could change the password the gateway sends (the
password file is judged so again at every login). One *readable* by every user only earns a
warning in :attr:`Config.warnings`: Docker mounts secrets 0444 and Kubernetes secret volumes are
0644 by default, world-readable inside a container where no other user exists, and refusing them
would break the two most common ways to hand the gateway its password. ``check-config`` prints
the warnings, ``serve`` logs them. Turning TLS verification off earns a warning too.

The gateway's own listener speaks TLS when both ``tls_cert_file`` and ``tls_key_file`` are set
(one alone is a problem); the pair is loaded here already, so a key that does not match its
certificate stops the gateway before it starts, and :func:`listener_ssl_context` loads it again
the same way for :func:`~gateway.server.serve`.
"""

from __future__ import annotations

import json
import ssl
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from yarl import URL

from . import values as parse
from .passwords import SETTLE_AFTER, PasswordFile
from .policy import FORWARD_PATHS
from .secret import MASK, Secret
from .values import Address, Invalid

T = TypeVar("T")
MAX_LOGIN_TIMEOUT = SETTLE_AFTER / 3


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class WebappConfig:
    """Where the Webapp is and how the gateway authenticates to it."""

    url: URL
    username: str
    password: Secret | None
    password_file: Path | None
    password_rotate_every: float  # seconds; 0: never
    api_key: Secret | None
    ca_file: Path | None
    tls_verify: bool


@dataclass(frozen=True)
class ServerConfig:
    """The gateway's own listener, limits and timeouts."""

    listen: Address
    tls_cert_file: Path | None
    tls_key_file: Path | None
    upstream_timeout: float
    upstream_idle_timeout: float
    connect_timeout: float
    upstream_connections: int
    upstream_queue_timeout: float
    max_connections: int
    max_concurrent: int
    max_body: int
    body_memory: int
    spool_dir: Path | None
    max_url: int
    max_header: int
    max_headers: int
    client_idle_timeout: float
    client_body_timeout: float
    client_body_min_rate: int
    client_send_timeout: float
    shutdown_drain: float
    shutdown_grace: float
    log_level: str


@dataclass(frozen=True)
class TokenConfig:
    """When the token pool logs in, refreshes and backs off."""

    login_timeout: float
    refresh_before: float
    refresh_jitter: float
    backoff_initial: float
    backoff_max: float
    breaker_threshold: int


@dataclass(frozen=True)
class PolicyConfig:
    """Which of the Webapp's paths the gateway forwards (see :mod:`gateway.policy`)."""

    forward_paths: tuple[str, ...]


@dataclass(frozen=True)
class Config:
    """The whole, checked configuration, and what is worth a warning in it (one line each)."""

    webapp: WebappConfig
    server: ServerConfig
    tokens: TokenConfig
    policy: PolicyConfig
    warnings: tuple[str, ...] = ()


# --- the table -----------------------------------------------------------------------------------


class _Required:
    """Marks a setting without a default."""


REQUIRED = _Required()


@dataclass(frozen=True)
class Setting(Generic[T]):
    """One configuration setting: where it lives in the file, its variable, how to read it."""

    section: str
    key: str
    env: str
    parse: Callable[[object], T]
    default: T | _Required | None
    secret: bool = False
    # The key of a setting in the same section that, when given, makes this one unused.
    yields_to: str | None = field(default=None, kw_only=True)

    @property
    def name(self) -> str:
        """How error messages name the setting: the variable and the file key."""
        return f"{self.env} ({self.section}.{self.key})"


SETTINGS: tuple[Setting[object], ...] = (
    Setting("webapp", "url", "WA_WEBAPP_URL", parse.url, REQUIRED),
    Setting("webapp", "username", "WA_USERNAME", parse.username, "admin"),
    Setting(
        "webapp",
        "password",
        "WA_PASSWORD",
        parse.password_value,
        None,
        secret=True,
        yields_to="password_file",
    ),
    Setting("webapp", "password_file", "WA_PASSWORD_FILE", parse.password_file, None),
    Setting(
        "webapp",
        "password_rotate_every",
        "WA_PASSWORD_ROTATE_EVERY",
        parse.rotation_interval,
        0.0,
    ),
    Setting("webapp", "api_key", "WA_API_KEY", parse.api_key, None, secret=True),
    Setting("webapp", "ca_file", "WA_CA_FILE", parse.ca_file, None),
    Setting("webapp", "tls_verify", "WA_TLS_VERIFY", parse.boolean, True),
    Setting("server", "listen", "GATEWAY_LISTEN", parse.listen, Address("127.0.0.1", 8080)),
    Setting("server", "tls_cert_file", "GATEWAY_TLS_CERT_FILE", parse.certificate_file, None),
    Setting("server", "tls_key_file", "GATEWAY_TLS_KEY_FILE", parse.key_file, None),
    Setting("server", "upstream_timeout", "GATEWAY_UPSTREAM_TIMEOUT", parse.seconds, 60.0),
    Setting(
        "server", "upstream_idle_timeout", "GATEWAY_UPSTREAM_IDLE_TIMEOUT", parse.seconds, 60.0
    ),
    Setting("server", "connect_timeout", "GATEWAY_CONNECT_TIMEOUT", parse.seconds, 10.0),
    Setting("server", "upstream_connections", "GATEWAY_UPSTREAM_CONNECTIONS", parse.count, 100),
    Setting(
        "server", "upstream_queue_timeout", "GATEWAY_UPSTREAM_QUEUE_TIMEOUT", parse.seconds, 5.0
    ),
    Setting("server", "max_connections", "GATEWAY_MAX_CONNECTIONS", parse.count, 4096),
    Setting("server", "max_concurrent", "GATEWAY_MAX_CONCURRENT", parse.count, 1000),
    Setting("server", "max_body", "GATEWAY_MAX_BODY", parse.size, 100 << 20),
    Setting("server", "body_memory", "GATEWAY_BODY_MEMORY", parse.size, 1 << 20),
    Setting("server", "spool_dir", "GATEWAY_SPOOL_DIR", parse.directory, None),
    Setting("server", "max_url", "GATEWAY_MAX_URL", parse.size, 8 << 10),
    Setting("server", "max_header", "GATEWAY_MAX_HEADER", parse.size, 8 << 10),
    Setting("server", "max_headers", "GATEWAY_MAX_HEADERS", parse.count, 100),
    Setting("server", "client_idle_timeout", "GATEWAY_CLIENT_IDLE_TIMEOUT", parse.seconds, 30.0),
    Setting("server", "client_body_timeout", "GATEWAY_CLIENT_BODY_TIMEOUT", parse.seconds, 30.0),
    Setting("server", "client_body_min_rate", "GATEWAY_CLIENT_BODY_MIN_RATE", parse.size, 1 << 10),
    Setting("server", "client_send_timeout", "GATEWAY_CLIENT_SEND_TIMEOUT", parse.seconds, 60.0),
    Setting("server", "shutdown_drain", "GATEWAY_SHUTDOWN_DRAIN", parse.seconds_or_zero, 0.0),
    Setting("server", "shutdown_grace", "GATEWAY_SHUTDOWN_GRACE", parse.seconds_or_zero, 30.0),
    Setting("server", "log_level", "GATEWAY_LOG_LEVEL", parse.log_level, "info"),
    Setting("tokens", "login_timeout", "GATEWAY_LOGIN_TIMEOUT", parse.seconds, 30.0),
    Setting("tokens", "refresh_before", "GATEWAY_REFRESH_BEFORE", parse.fraction, 0.1),
    Setting("tokens", "refresh_jitter", "GATEWAY_REFRESH_JITTER", parse.fraction, 0.05),
    Setting("tokens", "backoff_initial", "GATEWAY_LOGIN_BACKOFF_INITIAL", parse.seconds, 1.0),
    Setting("tokens", "backoff_max", "GATEWAY_LOGIN_BACKOFF_MAX", parse.seconds, 30.0),
    Setting("tokens", "breaker_threshold", "GATEWAY_LOGIN_BREAKER_THRESHOLD", parse.count, 5),
    Setting("policy", "forward_paths", "GATEWAY_FORWARD_PATHS", parse.forward_paths, FORWARD_PATHS),
)
SECTIONS: dict[str, type[WebappConfig | ServerConfig | TokenConfig | PolicyConfig]] = {
    "webapp": WebappConfig,
    "server": ServerConfig,
    "tokens": TokenConfig,
    "policy": PolicyConfig,
}
CONFIG_ENV = "GATEWAY_CONFIG"
_BY_KEY = {(s.section, s.key): s for s in SETTINGS}
_SECTION_LIST = ", ".join(f"[{section}]" for section in SECTIONS)
_Document = dict[str, dict[str, object]]


def load_config(path: str | Path | None, environ: Mapping[str, str]) -> Config:
    """Build the configuration from the TOML file at ``path`` (if any) and ``environ``.

    Environment variables win over the file. ``path`` of ``None`` falls back to ``GATEWAY_CONFIG``.
    Raises :class:`ConfigError` naming every problem found.
    """
    problems: list[str] = []
    document = _read_document(path, environ, problems)
    values: dict[str, dict[str, object]] = {section: {} for section in SECTIONS}
    for setting in SETTINGS:
        winner = _BY_KEY[setting.section, setting.yields_to] if setting.yields_to else None
        if winner is not None and _raw(winner, environ, document) is not None:
            values[setting.section][setting.key] = None  # unused, so neither read nor checked
            continue
        raw = _raw(setting, environ, document)
        try:
            value = setting.default if raw is None else setting.parse(raw)
        except Invalid as exc:
            problems.append(f"{setting.name}: {exc}")
            continue
        if isinstance(value, _Required):
            problems.append(f"{setting.name}: is required")
            continue
        values[setting.section][setting.key] = value
    problems.extend(_relations(values))
    if problems:
        raise ConfigError(problems)
    return Config(
        webapp=WebappConfig(**values["webapp"]),  # type: ignore[arg-type]
        server=ServerConfig(**values["server"]),  # type: ignore[arg-type]
        tokens=TokenConfig(**values["tokens"]),  # type: ignore[arg-type]
        policy=PolicyConfig(**values["policy"]),  # type: ignore[arg-type]
        warnings=tuple(_warnings(values)),
    )


def _raw(setting: Setting[object], environ: Mapping[str, str], document: _Document) -> object:
    # An empty variable is unset: shells and compose files make them for values nobody gave.
    return environ.get(setting.env) or document.get(setting.section, {}).get(setting.key)


def _relations(values: Mapping[str, Mapping[str, object]]) -> Iterator[str]:
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
        yield f"{_BY_KEY['webapp', 'password_rotate_every'].name}: {problem}"


def rotation_problem(password_file: Path | None) -> str | None:
    """Why passwords cannot be rotated with this password file, or None: for the setting that
    turns rotation on and for ``wa-gateway rotate-password`` alike."""
    if password_file is None:
        return "needs WA_PASSWORD_FILE, where the gateway keeps each new password"
    return PasswordFile(password_file).cannot_rotate()


def _listener_tls(server: Mapping[str, object]) -> Iterator[str]:
    """The listener's certificate and key: both or neither, and a pair that loads."""
    cert_setting = _BY_KEY["server", "tls_cert_file"]
    key_setting = _BY_KEY["server", "tls_key_file"]
    cert, key = server.get("tls_cert_file", ""), server.get("tls_key_file", "")
    if cert is None and isinstance(key, Path):
        yield f"{cert_setting.name}: is required when {key_setting.env} is set (both or neither)"
    elif key is None and isinstance(cert, Path):
        yield f"{key_setting.name}: is required when {cert_setting.env} is set (both or neither)"
    elif isinstance(cert, Path) and isinstance(key, Path):
        try:
            parse.load_pair(cert, key)
        except Invalid as exc:
            yield f"{key_setting.name}: {exc}"


def _warnings(values: Mapping[str, Mapping[str, object]]) -> Iterator[str]:
    """Settings that work but deserve a warning, one line each (only called without problems)."""
    webapp = values["webapp"]
    for section, key in (("webapp", "password_file"), ("server", "tls_key_file")):
        path = values[section][key]
        if isinstance(path, Path) and (warning := parse.world_readable(path)):
            yield f"{_BY_KEY[section, key].name}: {warning}"
    url = webapp["url"]
    if isinstance(url, URL) and url.scheme == "https" and webapp["tls_verify"] is False:
        yield (
            f"{_BY_KEY['webapp', 'tls_verify'].name}: is false, so the Webapp's certificate is "
            "not checked and whoever can intercept the connection gets the password; "
            "set WA_CA_FILE to the Webapp's CA instead"
        )


def _read_document(
    path: str | Path | None, environ: Mapping[str, str], problems: list[str]
) -> _Document:
    if path is not None:
        label = f"config file {path}"
    elif environ.get(CONFIG_ENV):
        path = environ[CONFIG_ENV]
        label = f"{CONFIG_ENV} ({path})"
    else:
        return {}
    try:
        with Path(path).open("rb") as file:
            document = tomllib.load(file)
    except OSError as exc:
        problems.append(f"{label}: cannot be read ({exc.strerror or type(exc).__name__})")
        return {}
    except UnicodeDecodeError:
        problems.append(f"{label}: is not UTF-8 text")
        return {}
    except tomllib.TOMLDecodeError as exc:
        # tomllib's messages name a position and at most one character, never a value.
        problems.append(f"{label}: is not valid TOML ({exc})")
        return {}
    return _sections(document, label, problems)


def _sections(document: Mapping[str, object], label: str, problems: list[str]) -> _Document:
    tables: _Document = {}
    for name, table in document.items():
        if name in SECTIONS and isinstance(table, dict):
            problems.extend(
                f"{label}: unknown key {name}.{key}" for key in table if (name, key) not in _BY_KEY
            )
            tables[name] = table
        elif name in SECTIONS:
            problems.append(f"{label}: {name} must be a section, [{name}]")
        elif isinstance(table, dict):
            problems.append(f"{label}: unknown section [{name}] (sections are {_SECTION_LIST})")
        else:
            problems.append(f"{label}: unknown key {name} (settings belong in {_SECTION_LIST})")
    return tables


def describe(config: Config) -> Iterator[str]:
    """The effective configuration as TOML lines, secrets masked, for ``check-config``.

    Unset settings are comments, so the output loads again as a configuration file once the
    masked secrets are filled in.
    """
    for section in SECTIONS:
        yield f"[{section}]"
        group = getattr(config, section)
        for setting in (s for s in SETTINGS if s.section == section):
            value = getattr(group, setting.key)
            if value is not None:
                yield f"{setting.key} = {_toml_value(MASK if setting.secret else value)}"
            elif setting.yields_to and getattr(group, setting.yields_to) is not None:
                yield f"# {setting.key} is not used: {setting.yields_to} is set"
            else:
                yield f"# {setting.key} is not set"
        yield ""


def _toml_value(value: object) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(map(_toml_value, value)) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    # JSON's string escapes are TOML's; ASCII-only output also survives any terminal encoding.
    return json.dumps(str(value)).replace("\x7f", "\\u007f")


def listener_ssl_context(server: ServerConfig) -> ssl.SSLContext | None:
    """The TLS context of the gateway's own listener, or None when it speaks plain HTTP.

    Raises :class:`ConfigError` (one line, the key never echoed) when the pair does not load.
    """
    if server.tls_cert_file is None or server.tls_key_file is None:
        return None
    try:
        return parse.load_pair(server.tls_cert_file, server.tls_key_file)
    except Invalid as exc:
        raise ConfigError([f"{_BY_KEY['server', 'tls_key_file'].name}: {exc}"]) from None
