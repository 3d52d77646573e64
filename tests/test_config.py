"""load_config: TOML plus environment, every setting parsed and checked, every problem at once."""

from __future__ import annotations

import os
import re
import ssl
import tomllib
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import get_args, get_origin, get_type_hints

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from gateway.config import (
    SECTIONS,
    Config,
    ConfigError,
    describe,
    listener_ssl_context,
    load_config,
)
from gateway.files import read_password_file
from gateway.secret import Secret
from gateway.settings import REQUIRED, SETTINGS, Setting
from gateway.values import Address, Invalid

PASSWORD = "Webapp-pass-1!"
API_KEY = "api-key-0123456789abcdef"
URL = "https://webapp:9090"
BASE = {"WA_WEBAPP_URL": URL, "WA_PASSWORD": PASSWORD}
EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "gateway.toml"
# A self-signed CA certificate; loading it checks only its form, never its dates.
CA_PEM = """\
-----BEGIN CERTIFICATE-----
MIIBkTCCATegAwIBAgIUKwdpLZY7oPMZiNduwL9bzPyp5iAwCgYIKoZIzj0EAwIw
HTEbMBkGA1UEAwwSd2EtZ2F0ZXdheSB0ZXN0IENBMCAXDTI2MTEyNTEwMDgzNVoY
DzIxMjYxMTAxMTAwODM1WjAdMRswGQYDVQQDDBJ3YS1nYXRld2F5IHRlc3QgQ0Ew
WTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAQcnlxCvQc+pRWE5prE4j0buZzZGAsW
s6dhWmokDg2379Ryl+1PgsHfE7gTkvI07RePaPuq5BxAPokU3ATpVMJWo1MwUTAd
BgNVHQ4EFgQU8e3iKR7NDeh5xTpowc3L1g7b2QcwHwYDVR0jBBgwFoAU8e3iKR7N
Deh5xTpowc3L1g7b2QcwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBF
AiB0jnKLG/b3slk9Ve1aHQgFEz+y8HiUCg2wr869bO2VhQIhAIh6YMxl1VXbxK4e
rgbhgMK4VMhSjw8ZZGJeJNPDr6IF
-----END CERTIFICATE-----
"""


def load(path: Path | None = None, **env: str) -> Config:
    """The configuration from ``BASE`` plus ``env`` (and the file at ``path``)."""
    return load_config(path, {**BASE, **env})


def problems(path: Path | None = None, *, base: dict[str, str] = BASE, **env: str) -> list[str]:
    """The problems load_config reports for ``base`` plus ``env``."""
    with pytest.raises(ConfigError) as info:
        load_config(path, {**base, **env})
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def problem(**env: str) -> str:
    """The one problem reported for ``BASE`` plus ``env``."""
    [line] = problems(**env)
    return line


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def unreadable(tmp_path: Path) -> Iterator[Path]:
    """A path that cannot be read: mode 000, or (as root, who reads anything) a missing file."""
    if os.geteuid() == 0:
        yield tmp_path / "missing"
        return
    path = write(tmp_path / "locked", PASSWORD)
    path.chmod(0)
    yield path
    path.chmod(0o600)


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    return write(tmp_path / "password", "From-the-file-1!\n")


# --- defaults and precedence ----------------------------------------------------------------------


def test_defaults_apply_when_only_the_required_settings_are_given() -> None:
    config = load()
    assert str(config.webapp.url) == URL
    assert config.webapp.username == "admin"
    assert config.webapp.password == Secret(PASSWORD)
    assert config.webapp.password_file is None
    assert config.webapp.api_key is None
    assert config.webapp.ca_file is None
    assert config.webapp.tls_verify is True
    assert config.server.listen == Address("127.0.0.1", 8080)
    assert config.server.upstream_timeout == 60.0
    assert config.server.log_level == "info"
    assert config.server.spool_dir is None


def test_every_unset_setting_takes_its_default_from_the_table() -> None:
    config = load()
    for setting in SETTINGS:
        if setting.default is not REQUIRED and setting.env not in BASE:
            assert getattr(getattr(config, setting.section), setting.key) == setting.default


def test_the_file_sets_what_the_environment_leaves_unset(tmp_path: Path) -> None:
    path = write(
        tmp_path / "g.toml", '[webapp]\nusername = "filer"\n[server]\nlog_level = "debug"\n'
    )
    config = load(path)
    assert config.webapp.username == "filer"
    assert config.server.log_level == "debug"


def test_the_environment_wins_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "g.toml", '[webapp]\nurl = "http://from-file"\nusername = "filer"\n')
    config = load(path, WA_USERNAME="from-env")
    assert config.webapp.username == "from-env"
    assert str(config.webapp.url) == URL


def test_an_empty_variable_counts_as_unset(tmp_path: Path) -> None:
    path = write(tmp_path / "g.toml", '[webapp]\nusername = "filer"\n')
    config = load(path, WA_USERNAME="", WA_API_KEY="", GATEWAY_LISTEN="")
    assert config.webapp.username == "filer"
    assert config.webapp.api_key is None
    assert config.server.listen == Address("127.0.0.1", 8080)


def test_the_file_named_in_gateway_config_is_read(tmp_path: Path) -> None:
    path = write(tmp_path / "g.toml", '[webapp]\nusername = "filer"\n')
    assert load(GATEWAY_CONFIG=str(path)).webapp.username == "filer"


def test_the_path_argument_wins_over_gateway_config(tmp_path: Path) -> None:
    chosen = write(tmp_path / "chosen.toml", '[webapp]\nusername = "chosen"\n')
    other = write(tmp_path / "other.toml", '[webapp]\nusername = "other"\n')
    assert load(chosen, GATEWAY_CONFIG=str(other)).webapp.username == "chosen"


def test_the_file_may_hold_every_value_in_its_own_toml_type(tmp_path: Path) -> None:
    path = write(
        tmp_path / "g.toml",
        "[webapp]\ntls_verify = false\n"
        "[server]\nupstream_timeout = 5\nmax_body = 4096\nupstream_connections = 7\n"
        "[tokens]\nrefresh_before = 0.2\n",
    )
    config = load(path)
    assert config.webapp.tls_verify is False
    assert config.server.upstream_timeout == 5.0
    assert config.server.max_body == 4096
    assert config.server.upstream_connections == 7
    assert config.tokens.refresh_before == 0.2


# --- the URL --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://webapp", "http://webapp"),
        ("https://webapp:9090/", "https://webapp:9090"),
        ("HTTPS://WebApp:9090", "https://webapp:9090"),
        ("https://10.0.0.5:9090/prefix/", "https://10.0.0.5:9090/prefix"),
        ("https://[fd00::1]:9090/a/b", "https://[fd00::1]:9090/a/b"),
        ("https://webapp/a%2Fb/", "https://webapp/a%2Fb"),
    ],
)
def test_url_is_accepted_with_the_trailing_slash_stripped_and_the_path_kept(
    given: str, expected: str
) -> None:
    assert str(load(WA_WEBAPP_URL=given).webapp.url) == expected


@pytest.mark.parametrize(
    ("given", "complaint"),
    [
        ("ftp://webapp", "http:// or https://"),
        ("webapp:9090", "http:// or https://"),
        ("https://", "with a host"),
        ("https:///path", "with a host"),
        ("https://webapp?debug=1", "query or fragment"),
        ("https://webapp/#top", "query or fragment"),
        ("http://webapp:99999", "is not a URL"),
        ("http://[fd00::1", "is not a URL"),
        ("   ", "must not be empty"),
    ],
)
def test_url_is_refused_unless_http_with_a_host(given: str, complaint: str) -> None:
    line = problem(WA_WEBAPP_URL=given)
    assert line.startswith("WA_WEBAPP_URL (webapp.url): ")
    assert complaint in line


@pytest.mark.parametrize(
    "given", ["https://alice:Hunter2-pw@webapp", "https://alice@webapp", "https://:Hunter2-pw@w"]
)
def test_url_with_credentials_is_refused_without_echoing_them(given: str) -> None:
    line = problem(WA_WEBAPP_URL=given)
    assert "must not carry credentials" in line
    assert "Hunter2-pw" not in line
    assert "alice" not in line


def test_missing_url_is_reported_as_required() -> None:
    assert problems(base={"WA_PASSWORD": PASSWORD}) == ["WA_WEBAPP_URL (webapp.url): is required"]


# --- the listen address ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "host", "port", "shown"),
    [
        ("0.0.0.0:9000", "0.0.0.0", 9000, "0.0.0.0:9000"),  # noqa: S104 - parsed, not bound
        ("localhost:80", "localhost", 80, "localhost:80"),
        ("127.0.0.1:65535", "127.0.0.1", 65535, "127.0.0.1:65535"),
        ("127.0.0.1:0", "127.0.0.1", 0, "127.0.0.1:0"),
        ("[::1]:8080", "::1", 8080, "[::1]:8080"),
        ("[::]:443", "::", 443, "[::]:443"),
        ("[fd00:0::1]:1", "fd00::1", 1, "[fd00::1]:1"),
    ],
)
def test_listen_accepts_host_port_and_bracketed_ipv6(
    given: str, host: str, port: int, shown: str
) -> None:
    listen = load(GATEWAY_LISTEN=given).server.listen
    assert listen == Address(host, port)
    assert str(listen) == shown


@pytest.mark.parametrize(
    ("given", "complaint"),
    [
        ("8080", "must be host:port"),
        (":8080", "must be host:port"),
        ("::1:8080", "must be host:port"),
        ("[::1]", "must be host:port"),
        ("127.0.0.1:http", "must be host:port"),
        ("127.0.0.1:123456", "must be host:port"),
        ("my host:80", "must be host:port"),
        ("127.0.0.1:65536", "port above 65535"),
        ("[webapp]:80", "not an IPv6 address"),
        ("[1.2.3.4]:80", "not an IPv6 address"),
    ],
)
def test_listen_refuses_anything_but_host_port(given: str, complaint: str) -> None:
    line = problem(GATEWAY_LISTEN=given)
    assert line.startswith("GATEWAY_LISTEN (server.listen): ")
    assert complaint in line


# --- booleans, numbers, sizes, levels -------------------------------------------------------------


@pytest.mark.parametrize("given", ["true", "TRUE", "1", "yes", "on", " On "])
def test_bool_accepts_true_words(given: str) -> None:
    assert load(WA_TLS_VERIFY=given).webapp.tls_verify is True


@pytest.mark.parametrize("given", ["false", "False", "0", "no", "off"])
def test_bool_accepts_false_words(given: str) -> None:
    assert load(WA_TLS_VERIFY=given).webapp.tls_verify is False


@pytest.mark.parametrize("given", ["maybe", "2", "enabled"])
def test_bool_refuses_other_words(given: str) -> None:
    assert (
        problem(WA_TLS_VERIFY=given) == "WA_TLS_VERIFY (webapp.tls_verify): must be true or false"
    )


@pytest.mark.parametrize(("given", "expected"), [("60", 60.0), ("1.5", 1.5), ("0.001", 0.001)])
def test_seconds_accept_positive_numbers(given: str, expected: float) -> None:
    assert load(GATEWAY_UPSTREAM_TIMEOUT=given).server.upstream_timeout == expected


@pytest.mark.parametrize(
    ("given", "complaint"),
    [
        ("0", "above 0"),
        ("-1", "above 0"),
        ("soon", "must be a number"),
        ("60s", "must be a number"),
        ("inf", "finite"),
        ("nan", "finite"),
    ],
)
def test_seconds_refuse_zero_negative_and_non_numbers(given: str, complaint: str) -> None:
    line = problem(GATEWAY_UPSTREAM_TIMEOUT=given)
    assert line.startswith("GATEWAY_UPSTREAM_TIMEOUT (server.upstream_timeout): ")
    assert complaint in line


def test_seconds_refuse_an_integer_too_large_for_a_float(tmp_path: Path) -> None:
    path = write(tmp_path / "g.toml", f"[server]\nupstream_timeout = {10**400}\n")
    assert "must be a number" in problems(path)[0]


def test_seconds_or_zero_accept_zero() -> None:
    assert load(GATEWAY_SHUTDOWN_DRAIN="0").server.shutdown_drain == 0.0


def test_seconds_or_zero_refuse_negative() -> None:
    assert "0 or more" in problem(GATEWAY_SHUTDOWN_GRACE="-0.5")


def test_toml_boolean_is_not_a_number(tmp_path: Path) -> None:
    path = write(tmp_path / "g.toml", "[server]\nupstream_timeout = true\n")
    assert problems(path) == [
        "GATEWAY_UPSTREAM_TIMEOUT (server.upstream_timeout): must be a number"
    ]


@pytest.mark.parametrize(("given", "expected"), [("0", 0.0), ("0.25", 0.25), ("0.999", 0.999)])
def test_fraction_accepts_zero_up_to_one(given: str, expected: float) -> None:
    config = load(GATEWAY_REFRESH_BEFORE="0", GATEWAY_REFRESH_JITTER=given)
    assert config.tokens.refresh_jitter == expected


@pytest.mark.parametrize("given", ["1", "1.5", "-0.1", "ten"])
def test_fraction_refuses_one_and_beyond(given: str) -> None:
    assert problem(GATEWAY_REFRESH_BEFORE=given).startswith(
        "GATEWAY_REFRESH_BEFORE (tokens.refresh_before): must be a"
    )


@pytest.mark.parametrize(
    ("given", "expected"), [("1", 1), ("250", 250), (str(2**31 - 1), 2**31 - 1)]
)
def test_count_accepts_whole_numbers_above_zero(given: str, expected: int) -> None:
    assert load(GATEWAY_UPSTREAM_CONNECTIONS=given).server.upstream_connections == expected


@pytest.mark.parametrize("given", ["0", "-3", "2.5", "many", str(2**31), str(2**64)])
def test_count_refuses_zero_fractions_words_and_overflows(given: str) -> None:
    """Overflows: aiohttp's C parser would drop every connection without a word."""
    assert problem(GATEWAY_MAX_HEADERS=given) in (
        "GATEWAY_MAX_HEADERS (server.max_headers): must be a whole number from 1 to 2147483647",
        "GATEWAY_MAX_HEADERS (server.max_headers): must be a number",
    )


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("1", 1),
        ("1024", 1024),
        ("5b", 5),
        ("1KiB", 1 << 10),
        ("2 MiB", 2 << 20),
        ("100mib", 100 << 20),
        ("1GiB", 1 << 30),
        (" 3 GIB ", 3 << 30),
        ("1048576GiB", 1 << 50),
    ],
)
def test_size_accepts_bytes_kib_mib_and_gib(given: str, expected: int) -> None:
    assert load(GATEWAY_MAX_BODY=given).server.max_body == expected


@pytest.mark.parametrize(
    "given",
    ["1MB", "1k", "1.5MiB", "MiB", "-1", "lots", "0", "0KiB", pytest.param("9" * 5000, id="huge")],
)
def test_size_refuses_other_units_fractions_and_zero(given: str) -> None:
    assert problem(GATEWAY_BODY_MEMORY=given).startswith(
        "GATEWAY_BODY_MEMORY (server.body_memory): "
    )


@pytest.mark.parametrize("given", ["1048577GiB", str(2**64)])
def test_size_refuses_more_than_a_pebibyte(given: str) -> None:
    assert problem(GATEWAY_MAX_HEADER=given) == (
        "GATEWAY_MAX_HEADER (server.max_header): must be at most 1PiB"
    )


def test_size_in_the_file_may_be_an_integer_of_bytes(tmp_path: Path) -> None:
    path = write(tmp_path / "g.toml", "[server]\nbody_memory = 65536\n")
    assert load(path).server.body_memory == 65536


def test_size_in_the_file_refuses_a_float(tmp_path: Path) -> None:
    path = write(tmp_path / "g.toml", "[server]\nmax_body = 1.5\n")
    assert "must be a size in bytes" in problems(path)[0]


@pytest.mark.parametrize(
    ("given", "expected"), [("debug", "debug"), ("INFO", "info"), ("Warning", "warning")]
)
def test_log_level_accepts_the_four_levels_in_any_case(given: str, expected: str) -> None:
    assert load(GATEWAY_LOG_LEVEL=given).server.log_level == expected


@pytest.mark.parametrize("given", ["verbose", "warn", "critical", "trace"])
def test_log_level_refuses_other_names(given: str) -> None:
    assert problem(GATEWAY_LOG_LEVEL=given) == (
        "GATEWAY_LOG_LEVEL (server.log_level): must be one of debug, info, warning, error"
    )


# --- the forwarded paths -------------------------------------------------------------------------


def test_forward_paths_default_to_the_webapps_api() -> None:
    assert load().policy.forward_paths == ("/v1", "=/metrics")


def test_forward_paths_come_comma_separated_from_the_environment() -> None:
    config = load(GATEWAY_FORWARD_PATHS=" /v1/messages, /V1/Media/ ,,=/metrics,/v1/messages")
    assert config.policy.forward_paths == ("/v1/messages", "/v1/media", "=/metrics")


def test_forward_paths_come_as_an_array_from_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "g.toml", '[policy]\nforward_paths = ["/v1/messages", "=/v1/health"]\n')
    assert load(path).policy.forward_paths == ("/v1/messages", "=/v1/health")


@pytest.mark.parametrize(
    ("given", "complaint"),
    [
        ("", "must not be empty"),
        (" , ", "must hold at least one path"),
        ("v1", "must hold paths that start with /, such as /v1/messages"),
        ("/v1,/", "must not hold /: name the Webapp's paths, such as /v1"),
        ("/v1/users/admin", "must not hold /v1/users or a path below it: they are never forwarded"),
        (
            "/v1/messages /v1/media",
            "must hold plain paths: no spaces, %-escapes, ';' parameters, query or characters "
            "beyond ASCII (separate paths with commas)",
        ),
        ("/v1/../etc", "must hold normalised paths (no '.', '..' or empty segments)"),
    ],
)
def test_forward_paths_that_the_policy_cannot_honour_are_refused(
    given: str, complaint: str
) -> None:
    if not given:
        assert load(GATEWAY_FORWARD_PATHS=given).policy.forward_paths == ("/v1", "=/metrics")
        return  # an empty variable counts as unset
    assert problem(GATEWAY_FORWARD_PATHS=given) == (
        f"GATEWAY_FORWARD_PATHS (policy.forward_paths): {complaint}"
    )


@pytest.mark.parametrize("text", ["forward_paths = []", "forward_paths = [1]", "forward_paths = 1"])
def test_forward_paths_in_the_file_must_be_a_list_of_paths(tmp_path: Path, text: str) -> None:
    path = write(tmp_path / "g.toml", f"[policy]\n{text}\n")
    [line] = problems(path)
    assert line.startswith("GATEWAY_FORWARD_PATHS (policy.forward_paths): must ")


# --- credentials ----------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [12, 64, 128])
def test_api_key_of_12_to_128_characters_is_accepted(length: int) -> None:
    key = "k" * length
    api_key = load(WA_API_KEY=key).webapp.api_key
    assert api_key is not None
    assert api_key.reveal() == key


@pytest.mark.parametrize("length", [1, 11, 129])
def test_api_key_of_other_lengths_is_refused_without_echo(length: int) -> None:
    key = "Q" * length
    line = problem(WA_API_KEY=key)
    assert line == (
        f"WA_API_KEY (webapp.api_key): must be 12 to 128 characters long, it has {length}"
    )
    assert key not in line


@pytest.mark.parametrize("key", ["with a space inside", "tab\there-0123456", "line\nbreak-0123456"])
def test_api_key_with_whitespace_or_control_characters_is_refused(key: str) -> None:
    line = problem(WA_API_KEY=key)
    assert "visible ASCII" in line
    assert key not in line


def test_username_is_stripped_of_surrounding_spaces() -> None:
    assert load(WA_USERNAME="  operator ").webapp.username == "operator"


@pytest.mark.parametrize(
    ("given", "complaint"),
    [("ad:min", "':'"), ("ad\nmin", "control characters"), ("Łukasz", "Latin-1")],
)
def test_username_that_basic_auth_cannot_carry_is_refused(given: str, complaint: str) -> None:
    line = problem(WA_USERNAME=given)
    assert line.startswith("WA_USERNAME (webapp.username): ")
    assert complaint in line


def test_password_is_kept_verbatim_with_its_spaces() -> None:
    password = load(WA_PASSWORD="  spaced pass  ").webapp.password
    assert password is not None
    assert password.reveal() == "  spaced pass  "


def test_blank_password_is_refused() -> None:
    assert problem(WA_PASSWORD="   ") == "WA_PASSWORD (webapp.password): must not be empty"


def test_password_basic_auth_cannot_carry_is_refused_without_echo() -> None:
    line = problem(WA_PASSWORD="pass-€-word")
    assert "Latin-1" in line
    assert "pass-€-word" not in line


def test_neither_password_nor_password_file_is_an_error() -> None:
    assert problems(base={"WA_WEBAPP_URL": URL}) == [
        "WA_PASSWORD or WA_PASSWORD_FILE: one of them is required"
    ]


def test_password_file_alone_is_enough(password_file: Path) -> None:
    webapp = load_config(
        None, {"WA_WEBAPP_URL": URL, "WA_PASSWORD_FILE": str(password_file)}
    ).webapp
    assert webapp.password_file == password_file
    assert webapp.password is None


def test_password_file_wins_over_password(password_file: Path) -> None:
    webapp = load(WA_PASSWORD_FILE=str(password_file)).webapp
    assert webapp.password_file == password_file
    assert webapp.password is None


def test_password_is_not_checked_when_password_file_wins(password_file: Path) -> None:
    assert load(WA_PASSWORD="   ", WA_PASSWORD_FILE=str(password_file)).webapp.password is None


def test_password_file_in_the_file_wins_over_password_in_the_environment(
    tmp_path: Path, password_file: Path
) -> None:
    path = write(tmp_path / "g.toml", f'[webapp]\npassword_file = "{password_file}"\n')
    webapp = load(path).webapp
    assert webapp.password_file == password_file
    assert webapp.password is None


def test_unreadable_password_file_is_reported_once(unreadable: Path) -> None:
    line = problem(WA_PASSWORD_FILE=str(unreadable))
    assert line.startswith("WA_PASSWORD_FILE (webapp.password_file): cannot be read (")


def test_directory_as_password_file_is_refused(tmp_path: Path) -> None:
    assert "cannot be read" in problem(WA_PASSWORD_FILE=str(tmp_path))


@pytest.mark.parametrize("content", [b"", b"\n", b"\r\n", b"   \n"])
def test_password_file_without_a_password_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "password"
    path.write_bytes(content)
    assert problem(WA_PASSWORD_FILE=str(path)).endswith(": holds no password")


def test_password_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "password"
    path.write_bytes(b"caf\xe9-pass\n")
    assert problem(WA_PASSWORD_FILE=str(path)).endswith(": is not UTF-8 text")


def test_password_file_that_is_too_large_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "password", "x" * 5000)
    assert "is larger than 4096 bytes" in problem(WA_PASSWORD_FILE=str(path))


def test_password_file_content_is_never_echoed(tmp_path: Path) -> None:
    path = write(tmp_path / "password", "Pass-€-word\n")
    line = problem(WA_PASSWORD_FILE=str(path))
    assert "Latin-1" in line
    assert "Pass-€-word" not in line


# --- who may read or write a secret file ----------------------------------------------------------
# The suite may run as root, who reads and writes anything: only the mode bits are judged, and
# os.chmod sets them for root too.


def test_password_file_only_its_owner_may_read_gives_no_warning(password_file: Path) -> None:
    password_file.chmod(0o600)
    assert load(WA_PASSWORD_FILE=str(password_file)).warnings == ()


@pytest.mark.parametrize("mode", [0o400, 0o440, 0o640, 0o660])
def test_password_file_its_group_may_read_gives_no_warning(password_file: Path, mode: int) -> None:
    password_file.chmod(mode)
    assert load(WA_PASSWORD_FILE=str(password_file)).warnings == ()


@pytest.mark.parametrize("mode", [0o444, 0o644])  # Docker secrets, Kubernetes secret volumes
def test_password_file_every_user_may_read_is_accepted_with_a_warning(
    password_file: Path, mode: int
) -> None:
    password_file.chmod(mode)
    config = load(WA_PASSWORD_FILE=str(password_file))
    assert config.webapp.password_file == password_file
    assert config.warnings == (
        f"WA_PASSWORD_FILE (webapp.password_file): is readable by every user (mode {mode:04o}); "
        "chmod 600 it",
    )


@pytest.mark.parametrize("mode", [0o602, 0o666, 0o777])
def test_password_file_every_user_may_write_is_refused(password_file: Path, mode: int) -> None:
    password_file.chmod(mode)
    assert problem(WA_PASSWORD_FILE=str(password_file)) == (
        f"WA_PASSWORD_FILE (webapp.password_file): is writable by every user (mode {mode:04o}), "
        "so anyone could change the password the gateway sends; chmod 600 it"
    )


def test_password_file_made_writable_by_every_user_later_fails_the_next_login(
    password_file: Path,
) -> None:
    password_file.chmod(0o600)
    load(WA_PASSWORD_FILE=str(password_file))
    password_file.chmod(0o666)  # the rule at every login is the rule of the check
    with pytest.raises(Invalid, match=r"^is writable by every user"):
        read_password_file(password_file)


def test_password_file_that_is_not_a_regular_file_is_not_judged_by_its_mode() -> None:
    # /dev/null is 0666 like every character device; it fails for holding nothing instead.
    assert problem(WA_PASSWORD_FILE="/dev/null").endswith(": holds no password")


def test_tls_verify_off_for_an_https_webapp_gives_a_warning() -> None:
    assert load(WA_TLS_VERIFY="false").warnings == (
        "WA_TLS_VERIFY (webapp.tls_verify): is false, so the Webapp's certificate is not "
        "checked and whoever can intercept the connection gets the password; set WA_CA_FILE "
        "to the Webapp's CA instead",
    )


def test_tls_verify_off_with_a_ca_file_warns_that_the_ca_file_is_not_used(tmp_path: Path) -> None:
    """Not the advice to set WA_CA_FILE, which is set: to turn verification back on."""
    ca_file = write(tmp_path / "ca.pem", CA_PEM)
    [warning] = load(WA_TLS_VERIFY="false", WA_CA_FILE=str(ca_file)).warnings
    assert warning == (
        "WA_TLS_VERIFY (webapp.tls_verify): is false, so the Webapp's certificate is not "
        "checked and WA_CA_FILE is not used: whoever can intercept the connection gets the "
        "password; set WA_TLS_VERIFY to true to check the certificate against WA_CA_FILE"
    )


@pytest.mark.parametrize(
    "env",
    [{"WA_TLS_VERIFY": "true"}, {"WA_TLS_VERIFY": "false", "WA_WEBAPP_URL": "http://webapp:80"}],
    ids=["verifying", "plain-http"],
)
def test_tls_verify_gives_no_warning_when_on_or_without_tls(env: dict[str, str]) -> None:
    assert load(**env).warnings == ()


def test_every_warning_is_reported_at_once(password_file: Path) -> None:
    password_file.chmod(0o644)
    warnings = load(WA_PASSWORD_FILE=str(password_file), WA_TLS_VERIFY="no").warnings
    assert [line.split(" ", 1)[0] for line in warnings] == ["WA_PASSWORD_FILE", "WA_TLS_VERIFY"]


# --- files and directories ------------------------------------------------------------------------


def test_ca_file_with_a_pem_certificate_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path / "ca.pem", CA_PEM)
    assert load(WA_CA_FILE=str(path)).webapp.ca_file == path


def test_ca_file_without_a_certificate_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "ca.pem", "not a certificate\n")
    assert (
        problem(WA_CA_FILE=str(path)) == "WA_CA_FILE (webapp.ca_file): holds no PEM CA certificate"
    )


def test_unreadable_ca_file_is_refused(unreadable: Path) -> None:
    assert problem(WA_CA_FILE=str(unreadable)).startswith(
        "WA_CA_FILE (webapp.ca_file): cannot be read ("
    )


# --- TLS on the gateway's own listener ------------------------------------------------------------


@pytest.fixture
def listener_cert() -> trustme.LeafCert:
    return trustme.CA().issue_cert("127.0.0.1")


@pytest.fixture
def cert_file(tmp_path: Path, listener_cert: trustme.LeafCert) -> Path:
    path = tmp_path / "cert.pem"
    listener_cert.cert_chain_pems[0].write_to_path(str(path))
    return path


@pytest.fixture
def key_file(tmp_path: Path, listener_cert: trustme.LeafCert) -> Path:
    path = tmp_path / "key.pem"
    listener_cert.private_key_pem.write_to_path(str(path))
    path.chmod(0o600)
    return path


def tls_key_problem(cert: Path, key: Path) -> str:
    line = problem(GATEWAY_TLS_CERT_FILE=str(cert), GATEWAY_TLS_KEY_FILE=str(key))
    assert "PRIVATE KEY" not in line
    return line


def test_listener_certificate_and_key_that_match_are_accepted(
    cert_file: Path, key_file: Path
) -> None:
    config = load(GATEWAY_TLS_CERT_FILE=str(cert_file), GATEWAY_TLS_KEY_FILE=str(key_file))
    assert config.server.tls_cert_file == cert_file
    assert config.server.tls_key_file == key_file
    assert config.warnings == ()
    assert isinstance(listener_ssl_context(config.server), ssl.SSLContext)
    lines = list(describe(config))
    assert f'tls_cert_file = "{cert_file}"' in lines
    assert f'tls_key_file = "{key_file}"' in lines


def test_listener_speaks_plain_http_without_certificate_and_key() -> None:
    config = load()
    assert config.server.tls_cert_file is None
    assert config.server.tls_key_file is None
    assert listener_ssl_context(config.server) is None


def test_listener_certificate_without_its_key_is_refused(cert_file: Path) -> None:
    assert problem(GATEWAY_TLS_CERT_FILE=str(cert_file)) == (
        "GATEWAY_TLS_KEY_FILE (server.tls_key_file): "
        "is required when GATEWAY_TLS_CERT_FILE is set (both or neither)"
    )


def test_listener_key_without_its_certificate_is_refused(key_file: Path) -> None:
    assert problem(GATEWAY_TLS_KEY_FILE=str(key_file)) == (
        "GATEWAY_TLS_CERT_FILE (server.tls_cert_file): "
        "is required when GATEWAY_TLS_KEY_FILE is set (both or neither)"
    )


def test_listener_key_of_another_certificate_is_refused_without_echo(
    cert_file: Path, tmp_path: Path
) -> None:
    other = trustme.CA().issue_cert("127.0.0.1").private_key_pem
    key = tmp_path / "other-key.pem"
    other.write_to_path(str(key))
    assert tls_key_problem(cert_file, key) == (
        "GATEWAY_TLS_KEY_FILE (server.tls_key_file): "
        "is not the private key of the certificate in GATEWAY_TLS_CERT_FILE"
    )


@pytest.mark.parametrize("content", ["", "not a key\n", CA_PEM])
def test_listener_key_file_without_a_private_key_is_refused(
    cert_file: Path, tmp_path: Path, content: str
) -> None:
    key = write(tmp_path / "key.txt", content)
    assert tls_key_problem(cert_file, key) == (
        "GATEWAY_TLS_KEY_FILE (server.tls_key_file): holds no PEM private key"
    )


def test_listener_key_with_a_passphrase_is_refused_without_a_prompt(
    cert_file: Path, listener_cert: trustme.LeafCert, tmp_path: Path
) -> None:
    key = serialization.load_pem_private_key(listener_cert.private_key_pem.bytes(), None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"Key-passphrase-1"),
    )
    path = tmp_path / "encrypted-key.pem"
    path.write_bytes(encrypted)
    assert tls_key_problem(cert_file, path) == (
        "GATEWAY_TLS_KEY_FILE (server.tls_key_file): "
        "holds an encrypted private key; give the gateway an unencrypted one"
    )


def test_listener_certificate_file_without_a_certificate_is_refused(
    key_file: Path, tmp_path: Path
) -> None:
    cert = write(tmp_path / "cert.txt", "not a certificate\n")
    assert problem(GATEWAY_TLS_CERT_FILE=str(cert), GATEWAY_TLS_KEY_FILE=str(key_file)) == (
        "GATEWAY_TLS_CERT_FILE (server.tls_cert_file): holds no PEM certificate"
    )


def test_unreadable_listener_files_are_each_reported(unreadable: Path) -> None:
    lines = problems(GATEWAY_TLS_CERT_FILE=str(unreadable), GATEWAY_TLS_KEY_FILE=str(unreadable))
    assert [line.split(": ", 1)[1].split(" (")[0] for line in lines] == ["cannot be read"] * 2
    assert lines[0].startswith("GATEWAY_TLS_CERT_FILE (server.tls_cert_file): ")
    assert lines[1].startswith("GATEWAY_TLS_KEY_FILE (server.tls_key_file): ")


def test_listener_key_every_user_may_read_is_accepted_with_a_warning(
    cert_file: Path, key_file: Path
) -> None:
    key_file.chmod(0o644)
    config = load(GATEWAY_TLS_CERT_FILE=str(cert_file), GATEWAY_TLS_KEY_FILE=str(key_file))
    assert config.warnings == (
        "GATEWAY_TLS_KEY_FILE (server.tls_key_file): is readable by every user (mode 0644); "
        "chmod 600 it",
    )


def test_listener_key_every_user_may_write_is_refused(cert_file: Path, key_file: Path) -> None:
    key_file.chmod(0o666)
    assert tls_key_problem(cert_file, key_file) == (
        "GATEWAY_TLS_KEY_FILE (server.tls_key_file): is writable by every user (mode 0666), "
        "so anyone could change the key the gateway's listener uses; chmod 600 it"
    )


def test_listener_context_that_no_longer_loads_is_a_configuration_error(
    cert_file: Path, key_file: Path
) -> None:
    config = load(GATEWAY_TLS_CERT_FILE=str(cert_file), GATEWAY_TLS_KEY_FILE=str(key_file))
    key_file.write_text("gone\n")
    with pytest.raises(ConfigError) as info:
        listener_ssl_context(config.server)
    assert info.value.problems == [
        "GATEWAY_TLS_KEY_FILE (server.tls_key_file): holds no PEM private key"
    ]


def test_spool_dir_that_exists_is_accepted(tmp_path: Path) -> None:
    assert load(GATEWAY_SPOOL_DIR=str(tmp_path)).server.spool_dir == tmp_path


@pytest.mark.parametrize("name", ["missing", "a-file"])
def test_spool_dir_that_is_not_a_directory_is_refused(tmp_path: Path, name: str) -> None:
    write(tmp_path / "a-file", "")
    assert problem(GATEWAY_SPOOL_DIR=str(tmp_path / name)) == (
        "GATEWAY_SPOOL_DIR (server.spool_dir): is not a directory"
    )


# --- settings that must agree ---------------------------------------------------------------------


def test_refresh_before_and_jitter_must_leave_part_of_the_lifetime() -> None:
    line = problem(GATEWAY_REFRESH_BEFORE="0.6", GATEWAY_REFRESH_JITTER="0.4")
    assert "GATEWAY_REFRESH_BEFORE and GATEWAY_REFRESH_JITTER" in line
    assert "less than 1" in line


def test_backoff_initial_above_backoff_max_is_refused() -> None:
    line = problem(GATEWAY_LOGIN_BACKOFF_INITIAL="60", GATEWAY_LOGIN_BACKOFF_MAX="30")
    assert line.startswith("GATEWAY_LOGIN_BACKOFF_INITIAL (tokens.backoff_initial): ")


@pytest.mark.parametrize(
    "env",
    [
        {"GATEWAY_MAX_URL": "64KiB"},
        {"GATEWAY_MAX_HEADER": "64KiB"},
        {"GATEWAY_MAX_HEADER_SECTION": "4KiB"},
    ],
)
def test_the_header_section_must_hold_the_longest_target_and_field(env: dict[str, str]) -> None:
    line = problem(**env)
    assert line.startswith("GATEWAY_MAX_HEADER_SECTION (server.max_header_section): ")


def test_every_problem_is_reported_at_once_in_table_order() -> None:
    found = problems(
        base={},
        WA_API_KEY="short",
        GATEWAY_LISTEN="nowhere",
        GATEWAY_MAX_BODY="1MB",
        GATEWAY_LOG_LEVEL="loud",
    )
    assert [line.split(" ", 1)[0] for line in found] == [
        "WA_WEBAPP_URL",
        "WA_API_KEY",
        "GATEWAY_LISTEN",
        "GATEWAY_MAX_BODY",
        "GATEWAY_LOG_LEVEL",
        "WA_PASSWORD",
    ]


def test_file_and_environment_problems_are_reported_together(tmp_path: Path) -> None:
    path = write(tmp_path / "g.toml", '[server]\nlisten = "nowhere"\nlisten_port = 1\n')
    found = problems(path, GATEWAY_LOG_LEVEL="loud")
    assert len(found) == 3
    assert any("unknown key server.listen_port" in line for line in found)
    assert any(line.startswith("GATEWAY_LISTEN (server.listen): ") for line in found)
    assert any(line.startswith("GATEWAY_LOG_LEVEL (server.log_level): ") for line in found)


# --- the file itself ------------------------------------------------------------------------------


def test_unknown_key_is_reported_without_its_value(tmp_path: Path) -> None:
    path = write(tmp_path / "g.toml", '[webapp]\npasword = "Typo-Secret-9"\n')
    [line] = problems(path)
    assert line == f"config file {path}: unknown key webapp.pasword"


def test_unknown_section_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path / "g.toml", "[proxy]\nlisten = 1\n")
    assert problems(path) == [
        f"config file {path}: unknown section [proxy] "
        "(sections are [webapp], [server], [tokens], [policy])"
    ]


def test_key_outside_any_section_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path / "g.toml", 'log_level = "debug"\n')
    assert "unknown key log_level (settings belong in [webapp]" in problems(path)[0]


def test_section_given_as_a_plain_value_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path / "g.toml", "server = 5\n")
    assert problems(path) == [f"config file {path}: server must be a section, [server]"]


def test_wrongly_typed_value_in_the_file_names_its_key(tmp_path: Path) -> None:
    path = write(tmp_path / "g.toml", "[webapp]\nusername = 5\n")
    assert problems(path) == ["WA_USERNAME (webapp.username): must be a string"]


def test_invalid_toml_is_reported_with_its_position(tmp_path: Path) -> None:
    path = write(tmp_path / "g.toml", "[webapp]\nusername = admin\n")
    [line] = problems(path)
    assert line.startswith(f"config file {path}: is not valid TOML (")
    assert "line 2" in line


def test_invalid_toml_does_not_echo_a_secret(tmp_path: Path) -> None:
    path = write(tmp_path / "g.toml", '[webapp]\npassword = "Unclosed-Secret-7\n')
    [line] = problems(path)
    assert "is not valid TOML" in line
    assert "Unclosed-Secret-7" not in line


def test_file_that_is_not_utf8_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_bytes(b'[webapp]\nusername = "caf\xe9"\n')
    assert problems(path) == [f"config file {path}: is not UTF-8 text"]


def test_missing_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    assert problems(path) == [f"config file {path}: cannot be read (No such file or directory)"]


def test_missing_file_named_by_gateway_config_names_the_variable(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    [line] = problems(GATEWAY_CONFIG=str(path))
    assert line.startswith(f"GATEWAY_CONFIG ({path}): cannot be read")


def test_unreadable_file_is_reported(unreadable: Path) -> None:
    assert problems(unreadable)[0].startswith(f"config file {unreadable}: cannot be read (")


@pytest.mark.parametrize(
    ("name", "content", "complaint"),
    [
        ("absent.toml", None, "cannot be read (No such file or directory)"),
        ("latin1.toml", b'[webapp]\nusername = "caf\xe9"\n', "is not UTF-8 text"),
        ("broken.toml", b"[webapp\n", "is not valid TOML ("),
    ],
    ids=["missing", "not-utf8", "invalid-toml"],
)
def test_a_file_that_cannot_be_used_is_the_only_problem_reported(
    tmp_path: Path, name: str, content: bytes | None, complaint: str
) -> None:
    """The settings it may hold are unknown, so neither a required one it lacks nor a bad one in
    the environment is reported next to it: only the file."""
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    [line] = problems(path, base={}, GATEWAY_LOG_LEVEL="loud")
    assert line.startswith(f"config file {path}: {complaint}")


# --- the table and the dataclasses ----------------------------------------------------------------


def test_config_has_one_field_per_section_and_the_warnings() -> None:
    assert [f.name for f in fields(Config)] == [*SECTIONS, "warnings"]


@pytest.mark.parametrize("section", list(SECTIONS))
def test_settings_table_and_dataclass_agree_field_by_field(section: str) -> None:
    keys = [s.key for s in SETTINGS if s.section == section]
    assert keys == [f.name for f in fields(SECTIONS[section])]


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.env)
def test_each_default_has_the_type_of_its_field(setting: Setting[object]) -> None:
    hint = get_type_hints(SECTIONS[setting.section])[setting.key]
    if get_origin(hint) is tuple:  # tuple[str, ...]: the container, then each item
        assert isinstance(setting.default, tuple)
        assert all(isinstance(item, get_args(hint)[0]) for item in setting.default)
        return
    assert setting.default is REQUIRED or isinstance(setting.default, hint)


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.env)
def test_exactly_the_secret_typed_fields_are_masked(setting: Setting[object]) -> None:
    hint = get_type_hints(SECTIONS[setting.section])[setting.key]
    assert setting.secret == (Secret in get_args(hint))


def test_settings_have_unique_keys_and_variables() -> None:
    assert len({(s.section, s.key) for s in SETTINGS}) == len(SETTINGS)
    assert len({s.env for s in SETTINGS}) == len(SETTINGS)
    assert all(re.fullmatch(r"(WA|GATEWAY)_[A-Z_]+", s.env) for s in SETTINGS)


# --- describe -------------------------------------------------------------------------------------


def test_describe_is_toml_with_secrets_masked() -> None:
    config = load(WA_API_KEY=API_KEY)
    text = "\n".join(describe(config))
    document = tomllib.loads(text)
    assert document["webapp"]["password"] == "***"
    assert document["webapp"]["api_key"] == "***"
    assert PASSWORD not in text
    assert API_KEY not in text


def test_describe_lists_unset_settings_as_comments() -> None:
    lines = list(describe(load()))
    assert "# api_key is not set" in lines
    assert "# spool_dir is not set" in lines


def test_describe_says_the_password_is_unused_when_password_file_wins(password_file: Path) -> None:
    lines = list(describe(load(WA_PASSWORD_FILE=str(password_file))))
    assert "# password is not used: password_file is set" in lines
    assert f'password_file = "{password_file}"' in lines


def test_describe_output_loads_back_to_the_same_configuration(tmp_path: Path) -> None:
    config = load(WA_API_KEY=API_KEY, GATEWAY_LISTEN="[::1]:9000", GATEWAY_MAX_BODY="3MiB")
    path = write(tmp_path / "effective.toml", "\n".join(describe(config)))
    # The masked secrets come back from the environment, as they would in production.
    assert load_config(path, {"WA_PASSWORD": PASSWORD, "WA_API_KEY": API_KEY}) == config


def test_describe_escapes_quotes_backslashes_and_control_characters(tmp_path: Path) -> None:
    spool = tmp_path / 'odd "dir"\\with\ttab\x7f'
    spool.mkdir()
    document = tomllib.loads("\n".join(describe(load(GATEWAY_SPOOL_DIR=str(spool)))))
    assert document["server"]["spool_dir"] == str(spool)


# --- the example file -----------------------------------------------------------------------------


def _example_keys() -> dict[str, set[str]]:
    """Every key the example names, set or commented out, by section."""
    keys: dict[str, set[str]] = {}
    section = ""
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        if heading := re.fullmatch(r"\[(\w+)\]", line):
            section = heading.group(1)
        elif entry := re.fullmatch(r"(?:# )?(\w+) = .*", line):
            keys.setdefault(section, set()).add(entry.group(1))
    return keys


def test_example_file_loads() -> None:
    config = load_config(EXAMPLE, {"WA_PASSWORD": PASSWORD})
    assert str(config.webapp.url) == "https://webapp"


def test_example_file_names_every_setting_in_its_section() -> None:
    expected: dict[str, set[str]] = {}
    for setting in SETTINGS:
        expected.setdefault(setting.section, set()).add(setting.key)
    assert _example_keys() == expected


def test_example_file_names_every_environment_variable() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    assert [s.env for s in SETTINGS if s.env not in text] == []


def test_example_file_sets_every_value_to_its_default() -> None:
    config = load_config(EXAMPLE, {"WA_PASSWORD": PASSWORD})
    for setting in SETTINGS:
        if setting.default is not REQUIRED and setting.env != "WA_PASSWORD":
            assert getattr(getattr(config, setting.section), setting.key) == setting.default


def test_the_readme_documents_every_setting() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for setting in SETTINGS:
        assert f"`{setting.env}`" in readme, setting.env
        assert f"`{setting.section}.{setting.key}`" in readme, setting.key
