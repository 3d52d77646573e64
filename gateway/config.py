"""Configuration: the frozen dataclasses that :func:`load_config` builds from a TOML file and the
environment (which wins).

``load_config(path, environ)`` is the only entry point. It reads nothing else, checks every setting,
and raises :class:`ConfigError` listing every problem at once, one line each, naming the setting and
never echoing a secret. The result is a tree of frozen dataclasses.

An environment variable set to the empty string counts as unset (as shells and compose files
produce them); in the file, a setting is unset by leaving it out. ``password_file`` wins over
``password`` wherever each comes from: when it is given, the password is neither read nor checked.

The parts:

- :mod:`gateway.settings`: the table of settings, and where each one's raw value is found;
- :mod:`gateway.values` and :mod:`gateway.files`: how a raw value becomes a typed one;
- :mod:`gateway.relations`: the problems and warnings of settings taken together;
- here: the dataclasses, :func:`load_config`, :func:`describe` (the result as TOML, for
  ``check-config``) and :func:`listener_ssl_context`, which loads the listener's certificate and
  key for :func:`~gateway.server.serve` the same way they were checked.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from yarl import URL

from . import relations
from .files import load_pair
from .secret import MASK, Secret
from .settings import BY_KEY, REQUIRED, SETTINGS, UnusableFile, load_document, raw_value
from .values import Address, Invalid


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
    max_header_section: int
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


SECTIONS: dict[str, type[WebappConfig | ServerConfig | TokenConfig | PolicyConfig]] = {
    "webapp": WebappConfig,
    "server": ServerConfig,
    "tokens": TokenConfig,
    "policy": PolicyConfig,
}


def load_config(path: str | Path | None, environ: Mapping[str, str]) -> Config:
    """Build the configuration from the TOML file at ``path`` (if any) and ``environ``.

    Environment variables win over the file. ``path`` of ``None`` falls back to ``GATEWAY_CONFIG``.
    Raises :class:`ConfigError` naming every problem found, or only the file's when it cannot be
    read or parsed.
    """
    problems: list[str] = []
    try:
        document = load_document(path, environ, problems)
    except UnusableFile as exc:
        # Alone: every setting the file holds would be judged missing, and reported so, wrongly.
        raise ConfigError([str(exc)]) from None
    values: dict[str, dict[str, object]] = {section: {} for section in SECTIONS}
    for setting in SETTINGS:
        winner = BY_KEY[setting.section, setting.yields_to] if setting.yields_to else None
        if winner is not None and raw_value(winner, environ, document) is not None:
            values[setting.section][setting.key] = None  # unused, so neither read nor checked
            continue
        raw = raw_value(setting, environ, document)
        try:
            value = setting.default if raw is None else setting.parse(raw)
        except Invalid as exc:
            problems.append(f"{setting.name}: {exc}")
            continue
        if value is REQUIRED:
            problems.append(f"{setting.name}: is required")
            continue
        values[setting.section][setting.key] = value
    problems.extend(relations.problems(values))
    if problems:
        raise ConfigError(problems)
    return Config(
        webapp=WebappConfig(**values["webapp"]),  # type: ignore[arg-type]
        server=ServerConfig(**values["server"]),  # type: ignore[arg-type]
        tokens=TokenConfig(**values["tokens"]),  # type: ignore[arg-type]
        policy=PolicyConfig(**values["policy"]),  # type: ignore[arg-type]
        warnings=tuple(relations.warnings(values)),
    )


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
        return load_pair(server.tls_cert_file, server.tls_key_file)
    except Invalid as exc:
        raise ConfigError([f"{BY_KEY['server', 'tls_key_file'].name}: {exc}"]) from None
