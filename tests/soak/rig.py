"""The soak's rig: the simulated Webapp served from this process, and a gateway process in front
of it that reads its password from a file, with an operator ready to rotate that password."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

from gateway.simulator import Simulator

from ..harness.serving import serving
from ..processes import free_port, gateway_env, running_gateway
from .ledger import WebappAnswers
from .observe import Observer
from .rotation import Operator


def write_password_file(directory: Path, password: str) -> Path:
    """``password`` in a file of its own (0600) in ``directory`` (0700), made if need be."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / "wa-password"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(password + "\n")
    path.chmod(0o600)
    return path


@contextlib.asynccontextmanager
async def soak_rig(
    workdir: Path, sim: Simulator, answers: WebappAnswers
) -> AsyncIterator[tuple[Observer, Operator]]:
    """The simulator in this process and a gateway process before it, which reads its password
    from a file; and an operator who rotates that password."""
    app = sim.make_app()
    app.on_response_prepare.append(answers.on_response_prepare)
    spool = workdir / "spool"
    spool.mkdir(parents=True, exist_ok=True)
    password_file = write_password_file(workdir / "secrets", sim.password)
    async with serving(app) as webapp:
        webapp_port = webapp.addresses[0][1]
        port = free_port()
        settings = gateway_env(
            f"http://127.0.0.1:{webapp_port}",
            port,
            GATEWAY_SPOOL_DIR=str(spool),
            WA_PASSWORD_FILE=str(password_file),
        )
        del settings["WA_PASSWORD"]  # the file alone holds it, as rotation needs
        url = f"http://127.0.0.1:{port}"
        async with running_gateway(["serve"], settings, url, workdir) as gateway:
            observer = Observer(gateway, port, sim, webapp, webapp_port, spool)
            yield observer, Operator(settings, sim, workdir / "rotate-password.stderr")
