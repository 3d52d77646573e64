"""The files a setting names, and how each is checked: the password file, the Webapp's CA file, the
listener's certificate and key, and the spool directory.

Each parser raises :class:`~gateway.values.Invalid` saying what is wrong with the file, never what
it holds. Files that hold secrets are judged by their mode bits: one *writable* by every user is
refused, since anyone could change the password the gateway sends or the key its listener uses
(the password file is judged so again at every login, by :func:`read_password_file`). One
*readable* by every user only earns a warning (:func:`world_readable`): Docker mounts secrets 0444
and Kubernetes secret volumes are 0644 by default, world-readable inside a container where no
other user exists, and refusing them would break the two most common ways to hand the gateway its
password.
"""

from __future__ import annotations

import os
import ssl
import stat
from pathlib import Path

from .errors import reason
from .secret import Secret
from .values import Invalid, basic_auth_text, nonempty

# A password file is a few bytes; reading a bounded amount keeps /dev/zero from hanging the check.
_MAX_PASSWORD_FILE = 4096


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
        raise Invalid(f"cannot be read ({reason(exc)})") from None
    if len(data) > _MAX_PASSWORD_FILE:
        raise Invalid(f"is larger than {_MAX_PASSWORD_FILE} bytes, it cannot hold just a password")
    try:
        password = data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise Invalid("is not UTF-8 text") from None
    if not password.strip():
        raise Invalid("holds no password")
    basic_auth_text(password)
    return Secret(password)


def password_file(value: object) -> Path:
    path = Path(nonempty(value))
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


def _readable_file(value: object) -> Path:
    path = Path(nonempty(value))
    try:
        with path.open("rb") as file:
            file.read(1)
    except OSError as exc:
        raise Invalid(f"cannot be read ({reason(exc)})") from None
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
    path = Path(nonempty(value))
    try:
        with path.open("rb") as file:
            mode = os.fstat(file.fileno()).st_mode
    except OSError as exc:
        raise Invalid(f"cannot be read ({reason(exc)})") from None
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
        raise Invalid(f"cannot be read ({reason(exc)})") from None
    return context


def directory(value: object) -> Path:
    path = Path(nonempty(value))
    if not path.is_dir():
        raise Invalid("is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise Invalid("is not writable")
    return path
