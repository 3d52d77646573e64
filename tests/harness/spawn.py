"""Child processes started in the repository: exactly the settings they are given (plus
``tests.processes.child_env``'s basics), stdin closed, output where the caller says.

``tests.processes.running_gateway`` starts the gateway the tests run the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import IO

from ..processes import REPO, child_env

# Where a child's stdout or stderr goes: a file, or asyncio.subprocess.PIPE or DEVNULL.
Output = int | IO[bytes]


async def spawn(
    command: Sequence[str],
    settings: Mapping[str, str] | None = None,
    *,
    stdout: Output = asyncio.subprocess.DEVNULL,
    stderr: Output = asyncio.subprocess.DEVNULL,
    new_session: bool = False,
) -> asyncio.subprocess.Process:
    """Start ``command`` in the repository. ``new_session``: it leads a process group of its
    own, which one signal ends whole (nginx's master and its worker, say)."""
    return await asyncio.create_subprocess_exec(
        *command,
        cwd=REPO,
        env=child_env(settings or {}),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        start_new_session=new_session,
    )
