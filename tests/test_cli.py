"""The ``wa-gateway`` command as a user runs it: a real ``python -m gateway`` process.

Each run gets an environment built here from nothing, a temporary working directory and a
timeout, so that neither the developer's environment nor a hung server can change the verdict.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import trustme
from pytest_aiohttp import AiohttpServer

from gateway import __version__
from gateway.healthcheck import ListenerUnknown, health_url

from .processes import child_env, gateway_env, serve_gateway, start_simulator

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "Cli-Webapp-pass-1!"
API_KEY = "cli-api-key-0123456789"
URL_SECRET = "Url-secret-pw-3"
SHORT_KEY = "Short-key-1"
LATIN_1_MISFIT = "Pässwörd-€-1"
# Nothing listens on the discard port, and nothing here ever connects to it but `serve`.
BASE = {"WA_WEBAPP_URL": "http://127.0.0.1:9", "WA_PASSWORD": PASSWORD, "WA_API_KEY": API_KEY}
SECRETS = (PASSWORD, API_KEY, URL_SECRET, SHORT_KEY, LATIN_1_MISFIT)
TIMEOUT = 30.0


def gateway(
    *args: str, env: Mapping[str, str], cwd: Path, timeout: float = TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m gateway ARGS`` with exactly ``env`` (plus what Python needs to start, and
    coverage's variables so that the child is measured too)."""
    return subprocess.run(  # noqa: S603 - our own interpreter and arguments
        [sys.executable, "-m", "gateway", *args],
        env=child_env({"PYTHONPATH": str(REPO), "PYTHONIOENCODING": "utf-8", **env}),
        cwd=cwd,
        capture_output=True,
        encoding="utf-8",
        timeout=timeout,
        check=False,
    )


def assert_no_leak(result: subprocess.CompletedProcess[str]) -> None:
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    for secret in SECRETS:
        assert secret not in output


def assert_config_errors(result: subprocess.CompletedProcess[str], *names: str) -> None:
    """Exit 2, nothing on stdout, and one stderr line per name, each naming its setting."""
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert len(lines) == len(names), lines
    for line, name in zip(lines, names, strict=True):
        assert line.startswith("wa-gateway: configuration error: ")
        assert name in line
    assert_no_leak(result)


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port on 127.0.0.1 that this test holds open (listening), so nobody else can bind it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


# --- check-config ---------------------------------------------------------------------------------


def test_check_config_prints_the_effective_configuration_as_toml(tmp_path: Path) -> None:
    result = gateway("check-config", env={**BASE, "GATEWAY_LISTEN": "[::1]:9000"}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    document = tomllib.loads(result.stdout)
    assert document["webapp"]["url"] == "http://127.0.0.1:9"
    assert document["server"]["listen"] == "[::1]:9000"
    assert document["tokens"]["backoff_max"] == 30.0


def test_check_config_masks_every_secret(tmp_path: Path) -> None:
    result = gateway("check-config", env=BASE, cwd=tmp_path)
    document = tomllib.loads(result.stdout)
    assert document["webapp"]["password"] == "***"
    assert document["webapp"]["api_key"] == "***"
    assert_no_leak(result)


def test_check_config_reads_the_config_option_before_gateway_config(tmp_path: Path) -> None:
    chosen = tmp_path / "chosen.toml"
    chosen.write_text('[webapp]\nusername = "chosen"\n', encoding="utf-8")
    other = tmp_path / "other.toml"
    other.write_text('[webapp]\nusername = "other"\n', encoding="utf-8")
    env = {**BASE, "GATEWAY_CONFIG": str(other)}
    result = gateway("check-config", "--config", str(chosen), env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert tomllib.loads(result.stdout)["webapp"]["username"] == "chosen"


def test_check_config_accepts_the_example_file(tmp_path: Path) -> None:
    example = REPO / "config" / "gateway.toml"
    result = gateway(
        "check-config", "--config", str(example), env={"WA_PASSWORD": PASSWORD}, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert_no_leak(result)


# --- warnings: one stderr line each, and still exit 0 ---------------------------------------------


def secret_file(path: Path, content: str, mode: int) -> Path:
    path.write_text(content, encoding="utf-8")
    path.chmod(mode)  # as root too: only the mode bits are judged
    return path


def test_check_config_warns_about_a_password_file_every_user_may_read(tmp_path: Path) -> None:
    password_file = secret_file(tmp_path / "password", PASSWORD + "\n", 0o644)
    env = {**BASE, "WA_PASSWORD_FILE": str(password_file)}
    result = gateway("check-config", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "wa-gateway: warning: WA_PASSWORD_FILE (webapp.password_file): is readable by every "
        "user (mode 0644); chmod 600 it"
    ]
    assert tomllib.loads(result.stdout)["webapp"]["password_file"] == str(password_file)
    assert_no_leak(result)


def test_check_config_is_quiet_about_a_password_file_only_its_owner_may_read(
    tmp_path: Path,
) -> None:
    password_file = secret_file(tmp_path / "password", PASSWORD + "\n", 0o600)
    result = gateway(
        "check-config", env={**BASE, "WA_PASSWORD_FILE": str(password_file)}, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_check_config_refuses_a_password_file_every_user_may_write(tmp_path: Path) -> None:
    password_file = secret_file(tmp_path / "password", PASSWORD + "\n", 0o666)
    result = gateway(
        "check-config", env={**BASE, "WA_PASSWORD_FILE": str(password_file)}, cwd=tmp_path
    )
    assert_config_errors(
        result, "WA_PASSWORD_FILE (webapp.password_file): is writable by every user"
    )


def test_check_config_shows_tls_verification_off_with_a_warning(tmp_path: Path) -> None:
    env = {**BASE, "WA_WEBAPP_URL": "https://127.0.0.1:9", "WA_TLS_VERIFY": "off"}
    result = gateway("check-config", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("wa-gateway: warning: WA_TLS_VERIFY (webapp.tls_verify): is false")
    assert tomllib.loads(result.stdout)["webapp"]["tls_verify"] is False


@pytest.fixture
def listener_cert() -> trustme.LeafCert:
    return trustme.CA().issue_cert("127.0.0.1")


def test_check_config_shows_the_listener_certificate_and_key(
    tmp_path: Path, listener_cert: trustme.LeafCert
) -> None:
    cert = secret_file(
        tmp_path / "cert.pem", listener_cert.cert_chain_pems[0].bytes().decode(), 0o644
    )
    key_pem = listener_cert.private_key_pem.bytes().decode()
    key = secret_file(tmp_path / "key.pem", key_pem, 0o600)
    env = {**BASE, "GATEWAY_TLS_CERT_FILE": str(cert), "GATEWAY_TLS_KEY_FILE": str(key)}
    result = gateway("check-config", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    server = tomllib.loads(result.stdout)["server"]
    assert (server["tls_cert_file"], server["tls_key_file"]) == (str(cert), str(key))
    assert key_pem not in result.stdout


def test_check_config_refuses_a_listener_key_of_another_certificate_without_echoing_it(
    tmp_path: Path, listener_cert: trustme.LeafCert
) -> None:
    cert = secret_file(
        tmp_path / "cert.pem", listener_cert.cert_chain_pems[0].bytes().decode(), 0o644
    )
    other_key = trustme.CA().issue_cert("127.0.0.1").private_key_pem.bytes().decode()
    key = secret_file(tmp_path / "key.pem", other_key, 0o600)
    env = {**BASE, "GATEWAY_TLS_CERT_FILE": str(cert), "GATEWAY_TLS_KEY_FILE": str(key)}
    result = gateway("check-config", env=env, cwd=tmp_path)
    assert_config_errors(
        result, "GATEWAY_TLS_KEY_FILE (server.tls_key_file): is not the private key"
    )
    assert "PRIVATE KEY" not in result.stderr
    assert other_key.splitlines()[1] not in result.stderr


def test_check_config_refuses_a_listener_certificate_without_its_key(
    tmp_path: Path, listener_cert: trustme.LeafCert
) -> None:
    cert = secret_file(
        tmp_path / "cert.pem", listener_cert.cert_chain_pems[0].bytes().decode(), 0o644
    )
    result = gateway("check-config", env={**BASE, "GATEWAY_TLS_CERT_FILE": str(cert)}, cwd=tmp_path)
    assert_config_errors(result, "GATEWAY_TLS_KEY_FILE (server.tls_key_file): is required when")


async def test_serve_logs_each_warning_as_a_config_warning_event_and_starts(
    aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    _, webapp_url = await start_simulator(aiohttp_server)
    password_file = secret_file(tmp_path / "password", "Gateway-pass-1!\n", 0o444)
    async with serve_gateway(webapp_url, tmp_path, WA_PASSWORD_FILE=str(password_file)) as process:
        [warning] = process.named("config.warning")
        assert warning["level"] == "warning"
        assert warning["detail"] == (
            "WA_PASSWORD_FILE (webapp.password_file): is readable by every user (mode 0444); "
            "chmod 600 it"
        )
        assert process.event_names().index("config.warning") < process.event_names().index(
            "gateway.started"
        )


# --- bad configuration: exit 2, one line per problem ----------------------------------------------


@pytest.mark.parametrize(
    ("env", "name"),
    [
        pytest.param({"WA_WEBAPP_URL": ""}, "WA_WEBAPP_URL", id="missing-url"),
        pytest.param({"WA_WEBAPP_URL": "webapp:9090"}, "WA_WEBAPP_URL", id="malformed-url"),
        pytest.param(
            {"WA_WEBAPP_URL": f"https://admin:{URL_SECRET}@webapp"},
            "WA_WEBAPP_URL",
            id="url-userinfo",
        ),
        pytest.param({"GATEWAY_LISTEN": "8080"}, "GATEWAY_LISTEN", id="listen-without-host"),
        pytest.param({"GATEWAY_LISTEN": "127.0.0.1:70000"}, "GATEWAY_LISTEN", id="listen-port"),
        pytest.param({"WA_API_KEY": SHORT_KEY}, "WA_API_KEY", id="short-api-key"),
        pytest.param({"WA_PASSWORD": LATIN_1_MISFIT}, "WA_PASSWORD", id="non-latin-1-password"),
        pytest.param(
            {"WA_PASSWORD_FILE": "/nonexistent/wa-password"},
            "WA_PASSWORD_FILE",
            id="unreadable-password-file",
        ),
        pytest.param({"WA_PASSWORD": ""}, "WA_PASSWORD or WA_PASSWORD_FILE", id="no-password"),
        pytest.param({"WA_TLS_VERIFY": "sometimes"}, "WA_TLS_VERIFY", id="bool"),
        pytest.param({"GATEWAY_UPSTREAM_TIMEOUT": "0"}, "GATEWAY_UPSTREAM_TIMEOUT", id="seconds"),
        pytest.param({"GATEWAY_MAX_BODY": "10MB"}, "GATEWAY_MAX_BODY", id="size"),
        pytest.param({"GATEWAY_LOG_LEVEL": "chatty"}, "GATEWAY_LOG_LEVEL", id="log-level"),
        pytest.param(
            {"GATEWAY_CONFIG": "/nonexistent/gateway.toml"}, "GATEWAY_CONFIG", id="missing-file"
        ),
    ],
)
def test_bad_setting_exits_2_with_one_line_naming_it(
    tmp_path: Path, env: dict[str, str], name: str
) -> None:
    result = gateway("check-config", env={**BASE, **env}, cwd=tmp_path)
    assert_config_errors(result, name)


def test_every_problem_gets_its_own_line(tmp_path: Path) -> None:
    env = {"WA_API_KEY": "short", "GATEWAY_LISTEN": "nowhere", "GATEWAY_LOG_LEVEL": "chatty"}
    result = gateway("check-config", env=env, cwd=tmp_path)
    assert_config_errors(
        result,
        "WA_WEBAPP_URL",
        "WA_API_KEY",
        "GATEWAY_LISTEN",
        "GATEWAY_LOG_LEVEL",
        "WA_PASSWORD or WA_PASSWORD_FILE",
    )


@pytest.mark.parametrize(
    ("text", "name"),
    [
        (f'[webapp]\npasword = "{PASSWORD}"\n', "unknown key webapp.pasword"),
        ("[proxy]\nport = 1\n", "unknown section [proxy]"),
        (f'[webapp]\npassword = "{PASSWORD}\n', "is not valid TOML"),
        ("[server]\nlisten = 8080\n", "GATEWAY_LISTEN (server.listen)"),
    ],
    ids=["unknown-key", "unknown-section", "invalid-toml", "wrong-type"],
)
def test_bad_file_exits_2_with_one_line_naming_the_problem(
    tmp_path: Path, text: str, name: str
) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(text, encoding="utf-8")
    result = gateway("check-config", "--config", str(path), env=BASE, cwd=tmp_path)
    assert_config_errors(result, name)


@pytest.mark.parametrize("command", ["serve", "check-config", "rotate-password"])
def test_a_config_file_that_cannot_be_read_is_the_one_line_reported(
    tmp_path: Path, command: str
) -> None:
    """Not also the required settings it would have held."""
    missing = tmp_path / "nonexistent.toml"
    result = gateway(command, "--config", str(missing), env={}, cwd=tmp_path)
    assert_config_errors(result, f"config file {missing}: cannot be read")


def test_serve_with_bad_configuration_exits_2_before_starting(tmp_path: Path) -> None:
    result = gateway("serve", env={**BASE, "GATEWAY_LISTEN": "nowhere"}, cwd=tmp_path)
    assert_config_errors(result, "GATEWAY_LISTEN")


def test_serve_on_a_host_name_that_does_not_resolve_exits_2(tmp_path: Path) -> None:
    """Well-formed, so check-config passes it; only binding finds that no such host exists."""
    env = {**BASE, "GATEWAY_LISTEN": "no-such-host.invalid:8080"}
    result = gateway("serve", env=env, cwd=tmp_path)
    [line] = result.stderr.splitlines()
    assert result.returncode == 2
    assert line.startswith(
        "wa-gateway: configuration error: "
        "GATEWAY_LISTEN (server.listen): cannot resolve no-such-host.invalid: "
    )
    assert_no_leak(result)


# --- serve ----------------------------------------------------------------------------------------


def test_serve_on_a_busy_port_says_so_in_one_line(tmp_path: Path, busy_port: int) -> None:
    env = {**BASE, "GATEWAY_LISTEN": f"127.0.0.1:{busy_port}"}
    result = gateway("serve", env=env, cwd=tmp_path)
    [line] = result.stderr.splitlines()
    assert result.returncode == 1
    assert line == f"wa-gateway: cannot listen on 127.0.0.1:{busy_port}: Address already in use"
    assert "address already in use" in line.lower()
    assert_no_leak(result)


async def test_serve_on_a_busy_port_exits_before_it_logs_in(
    aiohttp_server: AiohttpServer, tmp_path: Path, busy_port: int
) -> None:
    """The socket is bound before the app starts up: the Webapp never hears from a gateway that
    cannot listen, which says so in the same one line, with the same exit status."""
    sim, webapp_url = await start_simulator(aiohttp_server)
    env = {"PYTHONPATH": str(REPO), **gateway_env(webapp_url, busy_port)}
    # A subprocess the event loop waits for: the simulator must stay able to answer a login.
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "serve",
        env=child_env(env),
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(TIMEOUT):
        out, err = await process.communicate()
    [line] = err.decode().splitlines()
    assert process.returncode == 1
    assert line.startswith(f"wa-gateway: cannot listen on 127.0.0.1:{busy_port}: ")
    assert sim.login_attempts == 0
    assert "token.login" not in out.decode()


# --- the command line itself ----------------------------------------------------------------------


def test_version_prints_the_version(tmp_path: Path) -> None:
    result = gateway("--version", env={}, cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == f"wa-gateway {__version__}"


def test_unknown_subcommand_exits_2_with_usage(tmp_path: Path) -> None:
    result = gateway("launch", env=BASE, cwd=tmp_path)
    assert result.returncode == 2
    assert "invalid choice: 'launch'" in result.stderr
    assert result.stderr.startswith("usage: wa-gateway")
    assert_no_leak(result)


def test_missing_subcommand_exits_2_with_usage(tmp_path: Path) -> None:
    result = gateway(env=BASE, cwd=tmp_path)
    assert result.returncode == 2
    assert "usage: wa-gateway" in result.stderr
    assert_no_leak(result)


def test_config_option_is_refused_by_demo(tmp_path: Path) -> None:
    result = gateway("demo", "--config", "x.toml", env={}, cwd=tmp_path)
    assert result.returncode == 2
    assert "unrecognized arguments: --config x.toml" in result.stderr


def test_healthcheck_reads_the_listen_address_and_tls_from_the_configuration(
    tmp_path: Path,
) -> None:
    for listen, url in [
        ("0.0.0.0:8080", "http://127.0.0.1:8080/_gateway/healthz"),
        ("[::]:9000", "http://[::1]:9000/_gateway/healthz"),
        ("10.1.2.3:80", "http://10.1.2.3:80/_gateway/healthz"),
    ]:
        assert health_url(None, {"GATEWAY_LISTEN": listen}) == url
    assert health_url(None, {}) == "http://127.0.0.1:8080/_gateway/healthz"
    config = tmp_path / "gateway.toml"
    config.write_text('[server]\nlisten = "0.0.0.0:8443"\ntls_cert_file = "/no/such/cert.pem"\n')
    # The certificate is the running gateway's business: only its presence says https.
    assert health_url(config, {}) == "https://127.0.0.1:8443/_gateway/healthz"
    # So is a key the file gained (or mistyped) since the gateway started.
    config.write_text('[server]\nlisten = "0.0.0.0:8443"\n[tokens]\nrefresh_jiter = 0.05\n')
    assert health_url(config, {}) == "http://127.0.0.1:8443/_gateway/healthz"


def test_healthcheck_cannot_tell_where_the_gateway_listens_without_its_config_file(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "nonexistent.toml"
    with pytest.raises(ListenerUnknown, match=f"^config file {missing}: cannot be read"):
        health_url(missing, {})


def test_healthcheck_exits_1_when_it_cannot_tell_where_the_gateway_listens(tmp_path: Path) -> None:
    result = gateway("healthcheck", env={"GATEWAY_LISTEN": "nowhere"}, cwd=tmp_path)
    assert result.returncode == 1  # Docker reserves 2
    assert result.stderr.startswith("wa-gateway: GATEWAY_LISTEN (server.listen): ")
    assert result.stderr.count("\n") == 1


async def test_healthcheck_exits_0_while_the_gateway_answers_and_1_once_it_is_gone(
    aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    _, webapp_url = await start_simulator(aiohttp_server)
    # A container's proxy for outbound traffic (here, one that is not there) is never asked.
    proxy = "http://127.0.0.1:9"
    async with serve_gateway(webapp_url, tmp_path) as process:
        env = {
            **BASE,
            "GATEWAY_LISTEN": process.url.removeprefix("http://"),
            **dict.fromkeys(("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"), proxy),
        }
        running = await asyncio.to_thread(gateway, "healthcheck", env=env, cwd=tmp_path)
        # Settings the running gateway read long ago (a password file being replaced, say) do
        # not make it look dead: only the listener's are read.
        unreadable = {
            **env,
            "WA_PASSWORD_FILE": str(tmp_path / "being-replaced"),
            "WA_API_KEY": "x",
        }
        still = await asyncio.to_thread(gateway, "healthcheck", env=unreadable, cwd=tmp_path)
    gone = await asyncio.to_thread(gateway, "healthcheck", env=env, cwd=tmp_path)
    assert (running.returncode, still.returncode, gone.returncode) == (0, 0, 1)
    assert running.stdout == running.stderr == still.stderr == gone.stderr == ""
