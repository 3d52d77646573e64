"""The table of settings, and where each one's raw value is found: the TOML file or the environment.

Every setting has a key in a section of the file, an environment variable (which wins), a parser
from :mod:`gateway.values` or :mod:`gateway.files`, and a default. :func:`load_document` reads the
file into its sections, listing each unknown section or key as a problem, and raising
:class:`UnusableFile` for a file that cannot be read or parsed at all (:func:`read_document` lists
that as a problem too); :func:`raw_value` picks a setting's raw value from the environment and the
document.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from . import files, values
from .errors import reason
from .policy import FORWARD_PATHS
from .values import Address

T = TypeVar("T")


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
    Setting("webapp", "url", "WA_WEBAPP_URL", values.url, REQUIRED),
    Setting("webapp", "username", "WA_USERNAME", values.username, "admin"),
    Setting(
        "webapp",
        "password",
        "WA_PASSWORD",
        values.password_value,
        None,
        secret=True,
        yields_to="password_file",
    ),
    Setting("webapp", "password_file", "WA_PASSWORD_FILE", files.password_file, None),
    Setting(
        "webapp",
        "password_rotate_every",
        "WA_PASSWORD_ROTATE_EVERY",
        values.rotation_interval,
        0.0,
    ),
    Setting("webapp", "api_key", "WA_API_KEY", values.api_key, None, secret=True),
    Setting("webapp", "ca_file", "WA_CA_FILE", files.ca_file, None),
    Setting("webapp", "tls_verify", "WA_TLS_VERIFY", values.boolean, True),
    Setting("server", "listen", "GATEWAY_LISTEN", values.listen, Address("127.0.0.1", 8080)),
    Setting("server", "tls_cert_file", "GATEWAY_TLS_CERT_FILE", files.certificate_file, None),
    Setting("server", "tls_key_file", "GATEWAY_TLS_KEY_FILE", files.key_file, None),
    Setting("server", "upstream_timeout", "GATEWAY_UPSTREAM_TIMEOUT", values.seconds, 60.0),
    Setting(
        "server", "upstream_idle_timeout", "GATEWAY_UPSTREAM_IDLE_TIMEOUT", values.seconds, 60.0
    ),
    Setting("server", "connect_timeout", "GATEWAY_CONNECT_TIMEOUT", values.seconds, 10.0),
    Setting("server", "upstream_connections", "GATEWAY_UPSTREAM_CONNECTIONS", values.count, 100),
    Setting(
        "server", "upstream_queue_timeout", "GATEWAY_UPSTREAM_QUEUE_TIMEOUT", values.seconds, 5.0
    ),
    Setting("server", "max_connections", "GATEWAY_MAX_CONNECTIONS", values.count, 4096),
    Setting("server", "max_concurrent", "GATEWAY_MAX_CONCURRENT", values.count, 1000),
    Setting("server", "max_body", "GATEWAY_MAX_BODY", values.size, 100 << 20),
    Setting("server", "body_memory", "GATEWAY_BODY_MEMORY", values.size, 1 << 20),
    Setting("server", "spool_dir", "GATEWAY_SPOOL_DIR", files.directory, None),
    Setting("server", "max_url", "GATEWAY_MAX_URL", values.size, 8 << 10),
    Setting("server", "max_header", "GATEWAY_MAX_HEADER", values.size, 8 << 10),
    Setting("server", "max_headers", "GATEWAY_MAX_HEADERS", values.count, 100),
    Setting("server", "max_header_section", "GATEWAY_MAX_HEADER_SECTION", values.size, 32 << 10),
    Setting("server", "client_idle_timeout", "GATEWAY_CLIENT_IDLE_TIMEOUT", values.seconds, 30.0),
    Setting("server", "client_body_timeout", "GATEWAY_CLIENT_BODY_TIMEOUT", values.seconds, 30.0),
    Setting("server", "client_body_min_rate", "GATEWAY_CLIENT_BODY_MIN_RATE", values.size, 1 << 10),
    Setting("server", "client_send_timeout", "GATEWAY_CLIENT_SEND_TIMEOUT", values.seconds, 60.0),
    Setting("server", "shutdown_drain", "GATEWAY_SHUTDOWN_DRAIN", values.seconds_or_zero, 0.0),
    Setting("server", "shutdown_grace", "GATEWAY_SHUTDOWN_GRACE", values.seconds_or_zero, 30.0),
    Setting("server", "log_level", "GATEWAY_LOG_LEVEL", values.log_level, "info"),
    Setting("tokens", "login_timeout", "GATEWAY_LOGIN_TIMEOUT", values.seconds, 30.0),
    Setting("tokens", "refresh_before", "GATEWAY_REFRESH_BEFORE", values.fraction, 0.1),
    Setting("tokens", "refresh_jitter", "GATEWAY_REFRESH_JITTER", values.fraction, 0.05),
    Setting("tokens", "backoff_initial", "GATEWAY_LOGIN_BACKOFF_INITIAL", values.seconds, 1.0),
    Setting("tokens", "backoff_max", "GATEWAY_LOGIN_BACKOFF_MAX", values.seconds, 30.0),
    Setting("tokens", "breaker_threshold", "GATEWAY_LOGIN_BREAKER_THRESHOLD", values.count, 5),
    Setting(
        "policy", "forward_paths", "GATEWAY_FORWARD_PATHS", values.forward_paths, FORWARD_PATHS
    ),
)
# In the table's order, which is that of config.SECTIONS (the fields of Config).
SECTION_NAMES = tuple(dict.fromkeys(setting.section for setting in SETTINGS))
CONFIG_ENV = "GATEWAY_CONFIG"
BY_KEY = {(s.section, s.key): s for s in SETTINGS}
_SECTION_LIST = ", ".join(f"[{section}]" for section in SECTION_NAMES)
Document = dict[str, dict[str, object]]


def raw_value(setting: Setting[object], environ: Mapping[str, str], document: Document) -> object:
    # An empty variable is unset: shells and compose files make them for values nobody gave.
    return environ.get(setting.env) or document.get(setting.section, {}).get(setting.key)


class UnusableFile(Exception):
    """The configuration file cannot be read or parsed; the message is the one line to report."""


def load_document(
    path: str | Path | None, environ: Mapping[str, str], problems: list[str]
) -> Document:
    """The TOML file at ``path`` (or ``GATEWAY_CONFIG``) by section; its unknown sections and keys
    are added to ``problems``. Raises :class:`UnusableFile` when it cannot be read or parsed."""
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
        raise UnusableFile(f"{label}: cannot be read ({reason(exc)})") from None
    except UnicodeDecodeError:
        raise UnusableFile(f"{label}: is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        # tomllib's messages name a position and at most one character, never a value.
        raise UnusableFile(f"{label}: is not valid TOML ({exc})") from None
    return _sections(document, label, problems)


def read_document(
    path: str | Path | None, environ: Mapping[str, str], problems: list[str]
) -> Document:
    """As :func:`load_document`, with a file that cannot be read or parsed added to ``problems``
    too (and no settings from it)."""
    try:
        return load_document(path, environ, problems)
    except UnusableFile as exc:
        problems.append(str(exc))
        return {}


def _sections(document: Mapping[str, object], label: str, problems: list[str]) -> Document:
    tables: Document = {}
    for name, table in document.items():
        if name in SECTION_NAMES and isinstance(table, dict):
            problems.extend(
                f"{label}: unknown key {name}.{key}" for key in table if (name, key) not in BY_KEY
            )
            tables[name] = table
        elif name in SECTION_NAMES:
            problems.append(f"{label}: {name} must be a section, [{name}]")
        elif isinstance(table, dict):
            problems.append(f"{label}: unknown section [{name}] (sections are {_SECTION_LIST})")
        else:
            problems.append(f"{label}: unknown key {name} (settings belong in {_SECTION_LIST})")
    return tables
