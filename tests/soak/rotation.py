"""The password rotation during the soak, as an operator runs it: ``python -m gateway
rotate-password`` with the gateway's own settings, and what the password file holds after."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.passwords import PasswordFile
from gateway.simulator import Simulator
from gateway.values import Invalid

from ..harness.spawn import spawn

ROTATE_TIMEOUT = 30.0  # for one rotate-password run: a loaded machine's start-up and its login
EXIT_TIMEOUT = 15.0  # for a process to exit once killed (or, for the gateway, sent SIGTERM)


@dataclass(frozen=True)
class Operator:
    """Rotates the Webapp password the way an operator does: ``python -m gateway rotate-password``
    with the gateway's own settings. An asyncio subprocess, since this process's event loop
    serves the Webapp the command logs in at."""

    settings: Mapping[str, str]  # the gateway's
    sim: Simulator
    stderr_path: Path  # the last run's

    @property
    def password_file(self) -> PasswordFile:
        return PasswordFile(Path(self.settings["WA_PASSWORD_FILE"]))

    def file_is_current(self) -> bool:
        """Whether the password file holds the Webapp's password now."""
        try:
            return self.password_file.read().reveal() == self.sim.password
        except Invalid:
            return False

    def next_left(self) -> bool:
        """Whether a new password still waits in ``<file>.next``."""
        return os.path.lexists(self.password_file.next_path)

    async def rotate_password(self) -> str | None:
        """Run the command once (killed after ``ROTATE_TIMEOUT``); None if it exited 0 with the
        Webapp's password in the file and nothing in ``<file>.next``, else what went wrong."""
        command = [sys.executable, "-m", "gateway", "rotate-password"]
        with self.stderr_path.open("wb") as stderr:
            process = await spawn(command, self.settings, stderr=stderr)
        try:
            async with asyncio.timeout(ROTATE_TIMEOUT):
                status = await process.wait()
        except TimeoutError:
            return f"rotate-password still ran after {ROTATE_TIMEOUT:g} s"
        finally:
            if process.returncode is None:  # timed out, or the soak was cancelled
                process.kill()
                async with asyncio.timeout(EXIT_TIMEOUT):
                    await process.wait()
        if status != 0:
            said = self.stderr_path.read_text(errors="replace").strip().splitlines()
            return f"rotate-password exited {status}: {said[-1] if said else 'nothing said'}"
        if not self.file_is_current():
            return "rotate-password exited 0, but the file does not hold the Webapp's password"
        if self.next_left():
            return f"rotate-password exited 0, but left {self.password_file.next_path.name}"
        return None
