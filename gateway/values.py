"""How each setting's raw value (a TOML value or an environment string) becomes a typed one.

Every parser raises :class:`Invalid` with a message that says what is wrong without repeating the
value, so that a problem line never echoes a secret. The files a setting names (the password file,
CA and listener certificates, the listener's key) are checked here too: readable, of the right
kind, and not writable by every user where they hold a secret.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path

from yarl import URL

from .policy import forward_prefix
from .secret import Secret

LOG_LEVELS = ("debug", "info", "warning", "error")
_SIZE_UNITS = {"": 1, "b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30}
_SIZE = re.compile(r"^\s*(\d{1,20})\s*([a-z]*)\s*$", re.IGNORECASE)
_SIZE_HINT = "must be a size in bytes, optionally with KiB, MiB or GiB, e.g. 100MiB"
# A password file is a few bytes; reading a bounded amount keeps /dev/zero from hanging the check.
_MAX_PASSWORD_FILE = 4096


class Invalid(ValueError):
    """A parser's verdict on one value; the message says what is wrong without repeating it."""


@dataclass(frozen=True)
class Address:
    """A ``host:port`` to listen on."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise Invalid("must be a string")
    return value


def _nonempty(value: object) -> str:
    text = _text(value).strip()
    if not text:
        raise Invalid("must not be empty")
    return text


def _basic_auth_text(text: str) -> None:
    # The Webapp login is HTTP Basic auth, which the gateway encodes as Latin-1 (webapp.py): the
    # historical default that servers decode alike; UTF-8 would differ from it beyond ASCII.
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        raise Invalid(
            "must be Latin-1 text (HTTP Basic auth cannot carry other characters)"
        ) from None


def username(value: object) -> str:
    name = _nonempty(value)
    if ":" in name:
        raise Invalid("must not contain ':' (HTTP Basic auth cannot carry it)")
    if not name.isprintable():
        raise Invalid("must not contain control characters")
    _basic_auth_text(name)
    return name


def password_value(value: object) -> Secret:
    # Taken verbatim: leading or trailing spaces may be part of a password.
    password = _text(value)
    if not password.strip():
        raise Invalid("must not be empty")
    _basic_auth_text(password)
    return Secret(password)


def read_password_file(path: Path) -> Secret:
    """The password in ``path`` (one trailing newline ignored), or :class:`Invalid` saying why not.

    Used to check the configuration and again at every login, so both apply the same rule.
    """
    try:
        with path.open("rb") as file:
            _refuse_world_writable(
                os.fstat(file.fileno()).st_mode, "the password the gateway sends"
            )
            data = file.read(_MAX_PASSWORD_FILE + 1)
    except OSError as exc:
        raise Invalid(f"cannot be read ({exc.strerror or type(exc).__name__})") from None
    if len(data) > _MAX_PASSWORD_FILE:
        raise Invalid(f"is larger than {_MAX_PASSWORD_FILE} bytes, it cannot hold just a password")
    try:
        password = data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise Invalid("is not UTF-8 text") from None
    if not password.strip():
        raise Invalid("holds no password")
    _basic_auth_text(password)
    return Secret(password)


def password_file(value: object) -> Path:
    path = Path(_nonempty(value))
    read_password_file(path)
    return path


def _refuse_world_writable(mode: int, what: str) -> None:
    # Devices and pipes (/dev/stdin, <(...)) have modes that say nothing about who may edit them.
    if stat.S_ISREG(mode) and mode & stat.S_IWOTH:
        raise Invalid(
            f"is writable by every user (mode {stat.S_IMODE(mode):04o}), so anyone could change "
            f"{what}; chmod 600 it"
        )


def world_readable(path: Path) -> str | None:
    """Why the secret file at ``path`` deserves a warning (every user may read it), or None."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None  # reported as a problem already, or gone since; nothing to warn about
    if not stat.S_ISREG(mode) or not mode & stat.S_IROTH:
        return None
    return f"is readable by every user (mode {stat.S_IMODE(mode):04o}); chmod 600 it"


def api_key(value: object) -> Secret:
    key = _text(value)
    if not 12 <= len(key) <= 128:
        raise Invalid(f"must be 12 to 128 characters long, it has {len(key)}")
    # It travels in an Authorization header, where spaces and control characters break it.
    if not all("!" <= char <= "~" for char in key):
        raise Invalid("must be visible ASCII characters only, without spaces")
    return Secret(key)


def url(value: object) -> URL:
    text = _nonempty(value)
    try:
        url = URL(text)
    except ValueError:
        raise Invalid("is not a URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise Invalid("must be an http:// or https:// URL with a host, e.g. https://webapp:443")
    if url.user is not None or url.password is not None:
        raise Invalid("must not carry credentials: set WA_USERNAME and WA_PASSWORD instead")
    if url.query_string or url.fragment:
        raise Invalid("must not have a query or fragment")
    # The raw (still encoded) path, so that an escaped character such as %2F keeps its meaning.
    return url.with_path(url.raw_path.rstrip("/"), encoded=True)


def listen(value: object) -> Address:
    text = _nonempty(value)
    match = re.fullmatch(r"\[([^\[\]\s]+)\]:(\d{1,5})|([^:\[\]\s]+):(\d{1,5})", text)
    if match is None:
        raise Invalid("must be host:port, e.g. 127.0.0.1:8080 or [::1]:8080")
    if match.group(1) is not None:
        try:
            host = str(ipaddress.IPv6Address(match.group(1)))
        except ValueError:
            raise Invalid("has an address in brackets that is not an IPv6 address") from None
    else:
        host = match.group(3)
    port = int(match.group(2) or match.group(4))
    if port > 65535:
        raise Invalid("has a port above 65535")
    return Address(host, port)


def boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = _text(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise Invalid("must be true or false")


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise Invalid("must be a number")
    try:
        number = float(value)
    except (ValueError, OverflowError):  # TOML integers have no size limit
        raise Invalid("must be a number") from None
    if not math.isfinite(number):
        raise Invalid("must be a finite number")
    return number


def seconds(value: object) -> float:
    number = _number(value)
    if number <= 0:
        raise Invalid("must be a number of seconds above 0")
    return number


def seconds_or_zero(value: object) -> float:
    number = _number(value)
    if number < 0:
        raise Invalid("must be a number of seconds, 0 or more")
    return number


_INTERVAL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$", re.IGNORECASE)
_INTERVAL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_INTERVAL_HINT = "must be 0 (never) or seconds, optionally with s, m, h or d, e.g. 30d"
# A rotation is a login: more often than this would only strain the Webapp.
MIN_ROTATION_INTERVAL = 60.0


def rotation_interval(value: object) -> float:
    if isinstance(value, str):
        match = _INTERVAL.match(value)
        if match is None:
            raise Invalid(_INTERVAL_HINT)
        number = float(match.group(1)) * _INTERVAL_UNITS[match.group(2).lower()]
    else:
        try:
            number = _number(value)
        except Invalid:
            raise Invalid(_INTERVAL_HINT) from None
    if number != 0 and not MIN_ROTATION_INTERVAL <= number < math.inf:
        raise Invalid(f"must be 0 (never) or at least {MIN_ROTATION_INTERVAL:g} seconds")
    return number


def fraction(value: object) -> float:
    number = _number(value)
    if not 0 <= number < 1:
        raise Invalid("must be a fraction from 0 up to (not including) 1")
    return number


# Beyond these, aiohttp's C parser overflows and drops every connection without a word: far
# above any sane setting, so a typo with extra digits is refused at start-up instead.
MAX_COUNT = 2**31 - 1
MAX_SIZE = 1 << 50  # 1PiB


def count(value: object) -> int:
    number = _number(value)
    if number != int(number) or not 1 <= number <= MAX_COUNT:
        raise Invalid(f"must be a whole number from 1 to {MAX_COUNT}")
    return int(number)


def size(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str):
        match = _SIZE.match(value)
        unit = match.group(2).lower() if match else ""
        if match is None or unit not in _SIZE_UNITS:
            raise Invalid(_SIZE_HINT)
        size = int(match.group(1)) * _SIZE_UNITS[unit]
    else:
        raise Invalid(_SIZE_HINT)
    if size < 1:
        raise Invalid("must be at least 1 byte")
    if size > MAX_SIZE:
        raise Invalid("must be at most 1PiB")
    return size


def forward_paths(value: object) -> tuple[str, ...]:
    """A TOML array of paths, or a comma-separated string of them (the environment's form)."""
    if isinstance(value, str):
        value = [entry for entry in value.split(",") if entry.strip()]
    if not isinstance(value, list) or not all(isinstance(entry, str) for entry in value):
        raise Invalid("must be a list of paths, such as /v1/messages,/v1/media")
    if not value:
        raise Invalid("must hold at least one path")
    try:
        prefixes = [forward_prefix(entry) for entry in value]
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    return tuple(dict.fromkeys(prefixes))  # in order, without repeats


def log_level(value: object) -> str:
    level = _text(value).strip().lower()
    if level not in LOG_LEVELS:
        raise Invalid(f"must be one of {', '.join(LOG_LEVELS)}")
    return level


def _readable_file(value: object) -> Path:
    path = Path(_nonempty(value))
    try:
        with path.open("rb") as file:
            file.read(1)
    except OSError as exc:
        raise Invalid(f"cannot be read ({exc.strerror or type(exc).__name__})") from None
    return path


def _holds_certificates(path: Path) -> bool:
    try:
        ssl.create_default_context(cafile=str(path))
    except (ssl.SSLError, OSError):
        return False
    return True


def ca_file(value: object) -> Path:
    path = _readable_file(value)
    if not _holds_certificates(path):
        raise Invalid("holds no PEM CA certificate")
    return path


def certificate_file(value: object) -> Path:
    path = _readable_file(value)
    if not _holds_certificates(path):
        raise Invalid("holds no PEM certificate")
    return path


def key_file(value: object) -> Path:
    path = Path(_nonempty(value))
    try:
        with path.open("rb") as file:
            mode = os.fstat(file.fileno()).st_mode
    except OSError as exc:
        raise Invalid(f"cannot be read ({exc.strerror or type(exc).__name__})") from None
    _refuse_world_writable(mode, "the key the gateway's listener uses")
    return path


class _Encrypted(Exception):
    """The private key asks for a passphrase."""


def _no_passphrase() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal, and a service would hang there.
    raise _Encrypted


def load_pair(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    # Python's defaults for a server: TLS 1.2 at least, no compression, strong ciphers.
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert_file, key_file, password=_no_passphrase)
    except _Encrypted:
        raise Invalid(
            "holds an encrypted private key; give the gateway an unencrypted one"
        ) from None
    except ssl.SSLError as exc:
        # OpenSSL's reason is a fixed name such as KEY_VALUES_MISMATCH, never the key itself.
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise Invalid(
                "is not the private key of the certificate in GATEWAY_TLS_CERT_FILE"
            ) from None
        raise Invalid("holds no PEM private key") from None
    except OSError as exc:
        raise Invalid(f"cannot be read ({exc.strerror or type(exc).__name__})") from None
    return context


def directory(value: object) -> Path:
    path = Path(_nonempty(value))
    if not path.is_dir():
        raise Invalid("is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise Invalid("is not writable")
    return path
