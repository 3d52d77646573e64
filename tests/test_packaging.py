"""The Dockerfile's promises, checked without Docker.

The two ``python -m pip`` commands of its RUN lines are read from the Dockerfile itself and run
here: the wheel build in a copy of the build stage's context (made by its COPY lines), the
offline install into a fresh venv. The installed ``wa-gateway`` must then start, mask secrets and
pass the image's own HEALTHCHECK command. One deliberate difference: the wheel build here keeps
pip's cache (``--no-cache-dir`` only keeps the image small), so the test is fast after its first
run.
"""

from __future__ import annotations

import asyncio
import glob
import json
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

import gateway

from .processes import REPO, child_env, free_port, running_gateway

DOCKERFILE = REPO / "Dockerfile"
IMAGE = "python:3.11-slim"
PIP = ["python", "-m", "pip"]
PIP_TIMEOUT = 300.0  # seconds; a first run without pip's cache downloads every dependency
RUN_TIMEOUT = 60.0
PASSWORD = "Packaged-pass-1!"
SECRET_NAMES = re.compile(r"PASSWORD|API_KEY|TOKEN|SECRET", re.IGNORECASE)
SECRET_VALUE = re.compile(r"\b(WA_PASSWORD|WA_API_KEY)\s*=|\b(Bearer|Apikey)\s+\S", re.IGNORECASE)


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def instructions(text: str) -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    found: list[Instruction] = []
    logical = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not logical and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        logical += stripped
        keyword, _, arguments = logical.partition(" ")
        found.append(Instruction(keyword.upper(), arguments.strip()))
        logical = ""
    assert not logical, "the Dockerfile ends inside a continued line"
    return found


def stages(found: list[Instruction]) -> list[list[Instruction]]:
    """The instructions grouped by stage, each group starting with its FROM."""
    groups: list[list[Instruction]] = []
    for instruction in found:
        if instruction.keyword == "FROM":
            groups.append([])
        assert groups, "an instruction comes before the first FROM"
        groups[-1].append(instruction)
    return groups


@dataclass(frozen=True)
class PipCommands:
    """The Dockerfile's two pip commands, as argument lists, and the directory between them."""

    wheel: list[str]
    install: list[str]
    wheel_dir: str


def pip_commands(found: list[Instruction]) -> PipCommands:
    """Find the pip commands in RUN lines and check they still have the shape this test runs."""
    commands = [
        shlex.split(part)
        for instruction in found
        if instruction.keyword == "RUN"
        for part in instruction.arguments.split("&&")
        if part.split()[:3] == PIP
    ]
    assert [c[3] for c in commands] == ["wheel", "install"], commands
    wheel, install = commands
    assert wheel[-1] == ".", "the wheel build no longer builds the build stage's context"
    wheel_dir = _option(wheel, "--wheel-dir")
    assert "--no-index" in install, "the image's install is no longer offline"
    assert _option(install, "--find-links") == wheel_dir
    assert install[-1] == f"{wheel_dir}/wa_gateway-*.whl"
    return PipCommands(wheel, install, wheel_dir)


def _option(command: list[str], name: str) -> str:
    assert command.count(name) == 1, f"{name} should appear once in {command}"
    return command[command.index(name) + 1]


def _run(
    command: list[str], *, cwd: Path, timeout: float, env: dict[str, str] | None = None
) -> str:
    done = subprocess.run(  # noqa: S603 - the commands come from this repository's Dockerfile
        command,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"{command} failed\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return instructions(DOCKERFILE.read_text())


def build_context(build_stage: list[Instruction], context: Path) -> Path:
    """Lay out the build stage's WORKDIR as its COPY lines do; return that directory."""
    workdirs = [i.arguments for i in build_stage if i.keyword == "WORKDIR"]
    assert len(workdirs) == 1, "the build stage should set one WORKDIR"
    for copy in (i for i in build_stage if i.keyword == "COPY"):
        *sources, destination = shlex.split(copy.arguments)
        assert not any(s.startswith("--") for s in sources), f"unexpected COPY flags: {copy}"
        assert not destination.startswith("/"), f"COPY should be relative to WORKDIR: {copy}"
        target = context / destination
        for source in sources:
            origin = REPO / source
            place = target / origin.name if destination.endswith("/") else target
            if origin.is_dir():
                shutil.copytree(origin, place, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                place.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, place)
    return context


@dataclass(frozen=True)
class Installed:
    venv: Path
    wheel: Path

    @property
    def bin(self) -> Path:
        return self.venv / "bin"


@pytest.fixture(scope="module")
def installed(dockerfile: list[Instruction], tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The Dockerfile's wheel build and offline install, run here into a fresh venv."""
    root = tmp_path_factory.mktemp("packaging")
    commands = pip_commands(dockerfile)
    wheels = root / "wheels"

    def local(command: list[str], python: Path | str) -> list[str]:
        args = [arg.replace(commands.wheel_dir, str(wheels)) for arg in command[1:]]
        return [str(python), *args]

    context = build_context(stages(dockerfile)[0], root / "context")
    wheel_command = [
        arg for arg in local(commands.wheel, sys.executable) if arg != "--no-cache-dir"
    ]
    _run(wheel_command, cwd=context, timeout=PIP_TIMEOUT)

    venv = root / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=root, timeout=PIP_TIMEOUT)
    install = local(commands.install, venv / "bin" / "python")
    matches = glob.glob(install[-1])
    assert len(matches) == 1, f"expected one gateway wheel, found {matches}"
    _run([*install[:-1], matches[0]], cwd=root, timeout=PIP_TIMEOUT)
    return Installed(venv, Path(matches[0]))


def test_dockerfile_has_two_slim_stages_a_non_root_user_and_no_secrets(
    dockerfile: list[Instruction],
) -> None:
    """Two stages on python:3.11-slim; the final one runs ``wa-gateway serve`` as a non-root
    user on 0.0.0.0:8080, and no setting carries a secret."""
    build, final = stages(dockerfile)
    assert build[0].arguments.split()[0] == IMAGE
    assert final[0].arguments == IMAGE
    users = [i.arguments for i in final if i.keyword == "USER"]
    assert users, "the final stage sets no USER"
    assert users[-1].split(":")[0] not in ("root", "0")
    env = _env(final)
    assert env["GATEWAY_LISTEN"] == "0.0.0.0:8080"
    assert [i.arguments for i in final if i.keyword == "EXPOSE"] == ["8080"]
    assert not SECRET_VALUE.search(DOCKERFILE.read_text())
    for instruction in dockerfile:
        if instruction.keyword in ("ENV", "ARG"):
            names = [word.split("=")[0] for word in shlex.split(instruction.arguments)]
            assert not [n for n in names if SECRET_NAMES.search(n)], instruction
    assert _exec_form(final, "ENTRYPOINT") == ["wa-gateway"]
    assert _exec_form(final, "CMD") == ["serve"]


def test_healthcheck_runs_the_gateways_own_check(dockerfile: list[Instruction]) -> None:
    """The HEALTHCHECK is ``wa-gateway healthcheck``, which reads the gateway's configuration."""
    assert _healthcheck_command(dockerfile) == ["wa-gateway", "healthcheck"]


def _env(stage: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in (i for i in stage if i.keyword == "ENV"):
        for word in shlex.split(instruction.arguments):
            name, equals, value = word.partition("=")
            assert equals, f"ENV should use the name=value form: {instruction}"
            env[name] = value
    return env


def _exec_form(stage: list[Instruction], keyword: str) -> list[str]:
    (instruction,) = [i for i in stage if i.keyword == keyword]
    form: list[str] = json.loads(instruction.arguments)
    return form


def _healthcheck_command(found: list[Instruction]) -> list[str]:
    (healthcheck,) = [i for i in found if i.keyword == "HEALTHCHECK"]
    command: list[str] = json.loads(healthcheck.arguments.partition(" CMD ")[2])
    return command


@pytest.mark.slow
def test_installed_wheel_runs_check_config_with_the_password_masked(installed: Installed) -> None:
    """The console script from the offline install validates a minimal configuration, exits 0
    and prints the password masked."""
    env = child_env({"WA_WEBAPP_URL": "http://127.0.0.1:9", "WA_PASSWORD": PASSWORD})
    output = _run(
        [str(installed.bin / "wa-gateway"), "check-config"],
        cwd=installed.venv,
        env=env,
        timeout=RUN_TIMEOUT,
    )
    assert 'password = "***"' in output
    assert PASSWORD not in output
    assert 'url = "http://127.0.0.1:9"' in output


@pytest.mark.slow
def test_installed_wheel_reports_its_version_and_is_self_contained(installed: Installed) -> None:
    """``wa-gateway --version`` names this version, the package comes from the venv (not this
    checkout), and the wheel carries py.typed and nothing but the package."""
    env = child_env({})
    output = _run(
        [str(installed.bin / "wa-gateway"), "--version"],
        cwd=installed.venv,
        env=env,
        timeout=RUN_TIMEOUT,
    )
    assert output.strip() == f"wa-gateway {gateway.__version__}"
    where = _run(
        [str(installed.bin / "python"), "-c", "import gateway; print(gateway.__file__)"],
        cwd=installed.venv,
        env=env,
        timeout=RUN_TIMEOUT,
    )
    assert Path(where.strip()).is_relative_to(installed.venv)
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = wheel.namelist()
    assert "gateway/py.typed" in names
    assert {name.split("/")[0] for name in names} <= {
        "gateway",
        f"wa_gateway-{gateway.__version__}.dist-info",
    }


@pytest.mark.slow
async def test_image_healthcheck_passes_against_the_installed_gateway(
    installed: Installed, dockerfile: list[Instruction], tmp_path: Path
) -> None:
    """The HEALTHCHECK command, run with the gateway's configuration, exits 0 while the installed
    gateway runs (health needs no Webapp, so none is running) and 1 once it stopped."""
    port = free_port()
    settings = {
        "WA_WEBAPP_URL": "http://127.0.0.1:9",
        "WA_PASSWORD": PASSWORD,
        "GATEWAY_LISTEN": f"127.0.0.1:{port}",
    }
    url = f"http://127.0.0.1:{port}"
    program, *arguments = _healthcheck_command(dockerfile)
    healthcheck = [str(installed.bin / program), *arguments]
    async with running_gateway(
        ["serve"],
        settings,
        url,
        tmp_path,
        ready_path="/_gateway/healthz",
        command=[str(installed.bin / "wa-gateway")],
        cwd=tmp_path,
    ):
        assert await _exit_status(healthcheck, settings, tmp_path) == 0
    assert await _exit_status(healthcheck, settings, tmp_path) == 1


async def _exit_status(command: list[str], settings: dict[str, str], cwd: Path) -> int:
    check = await asyncio.create_subprocess_exec(*command, env=child_env(settings), cwd=cwd)
    try:
        async with asyncio.timeout(RUN_TIMEOUT):
            return await check.wait()
    finally:
        if check.returncode is None:
            check.kill()
            await check.wait()
