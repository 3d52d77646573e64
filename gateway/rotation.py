"""Password rotation: a login that also changes the Webapp password, and the schedule for it.

The Webapp changes a password as part of a login that carries ``{"new_password": ...}`` and still
returns a token, so a rotation is a login like any other for the token pool. :func:`log_in` is
the login the gateway makes whenever its password comes from ``WA_PASSWORD_FILE``; it sends
nothing itself (``post`` does) and only decides, in this order, under the file's lock:

1. A ``<file>.next`` left by an unfinished rotation is settled first: the Webapp either accepted
   it (a login with it works: it becomes the password in use) or refused it (a login with the
   old password works: it is discarded). Either way nothing can overwrite it before then.
2. A rotation writes the new password to ``<file>.next`` before sending it, and renames it over
   the file only after the Webapp accepted it. A 401 means the old password was refused, so
   nothing changed and the new one is dropped; any other failure (a lost answer, a timeout, a
   5xx) may have changed it, so it is kept for step 1.
3. A login that the Webapp answers "password change required" (code 1024) rotates at once when
   rotation is on; otherwise the failure says how to do it.

:class:`Rotator` starts a rotation once the password file is older than
``WA_PASSWORD_ROTATE_EVERY``, measured by the file's modification time, so the schedule survives
restarts and an operator who writes a new password by hand resets it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from .config import TokenConfig
from .log import log_crash
from .login import BadCredentials, Grant, LoginFailed, PasswordChangeRequired
from .metrics import Metrics
from .passwords import LockTimeout, PasswordFile, new_password
from .secret import Secret
from .tokens import Account, TokenPool, backoff_delay
from .values import Invalid

log = structlog.get_logger("gateway.rotation")

# Sends one login: (password, new password or None) -> the grant, or a LoginFailed.
PostLogin = Callable[[Secret, Secret | None], Awaitable[Grant]]
# The longest a Rotator sleeps before looking at the file again: someone else may rotate it.
RECHECK = 3600.0


async def log_in(
    file: PasswordFile, post: PostLogin, *, rotate: bool, rotate_if_required: bool, lock_wait: float
) -> Grant:
    """Log in with the password in ``file``; with ``rotate``, change it too (see the module)."""
    try:
        async with file.locked(lock_wait):
            current = await _read(file)
            pending = await _read_next(file)
            stale = False
            if pending is not None:
                recovered = await _try(post, pending)
                if recovered is not None:
                    await _commit(file, "password.recovered")
                    if not rotate:
                        return recovered
                    current = pending
                else:
                    stale = True
            if rotate:
                return await _rotate(file, post, current)
            try:
                grant = await post(current, None)
            except PasswordChangeRequired:
                if not rotate_if_required:
                    raise
                return await _rotate(file, post, current)
            if stale:  # refused while the old password works: that rotation never happened
                await asyncio.to_thread(file.discard_next)
            return grant
    except LockTimeout as exc:
        raise LoginFailed(f"The password file's lock is held elsewhere: {exc}.") from None


async def _rotate(file: PasswordFile, post: PostLogin, current: Secret) -> Grant:
    password = new_password()
    await _io(file.write_next, password)
    try:
        grant = await post(current, password)
    except BadCredentials:  # the old password was refused: nothing changed at the Webapp
        await asyncio.to_thread(file.discard_next)
        raise
    await _commit(file, "password.rotated")
    return grant


async def _try(post: PostLogin, password: Secret) -> Grant | None:
    try:
        return await post(password, None)
    except BadCredentials:
        return None


async def _commit(file: PasswordFile, event: str) -> None:
    await _io(file.commit)
    log.warning(event, password_file=str(file.path))


async def _read(file: PasswordFile) -> Secret:
    try:
        return await asyncio.to_thread(file.read)
    except Invalid as exc:
        raise BadCredentials(f"The password file {exc}.") from None


async def _read_next(file: PasswordFile) -> Secret | None:
    try:
        return await asyncio.to_thread(file.read_next)
    except Invalid as exc:
        log.warning("password.next_unreadable", password_file=str(file.next_path), problem=str(exc))
        return None


async def _io(step: Callable[..., None], *args: object) -> None:
    """Run a blocking step on the password files; a failure is a failed login, kind ``error``."""
    try:
        await asyncio.to_thread(step, *args)
    except OSError as exc:
        raise LoginFailed(
            f"The password file could not be updated ({exc.strerror or type(exc).__name__}); "
            "an unfinished rotation is finished at the next login."
        ) from None


@dataclass(eq=False)
class Rotator:
    """Rotates the password of ``account`` through ``pool`` once the file is ``every`` s old."""

    pool: TokenPool
    account: Account
    file: PasswordFile
    every: float
    config: TokenConfig
    metrics: Metrics
    rng: random.Random = field(default_factory=random.Random)
    _task: asyncio.Task[None] | None = field(default=None, init=False)

    def start(self) -> None:
        """Start the schedule in the background."""
        self._task = asyncio.get_running_loop().create_task(self.run())

    async def close(self) -> None:
        """Stop the schedule (a rotation under way is the pool's to finish or cancel)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def due_in(self) -> float:
        """Seconds until the next rotation is due (0 or less: now). Blocks on a ``stat``."""
        age = self.file.age()
        # A file that cannot be seen: the rotation's login will say what is wrong with it.
        return 0.0 if math.isnan(age) else self.every - age

    async def run(self) -> None:
        """Rotate whenever due, forever; after a failure, back off like a failed login."""
        failures = 0
        while True:
            due_in = await asyncio.to_thread(self.due_in)
            if due_in > 0:
                await asyncio.sleep(min(due_in, RECHECK))
                continue
            try:
                outcome = await self.pool.rotate(self.account)
            except Exception as exc:  # a bug must not end the schedule for good
                log_crash("password.rotation_crashed", exc)
                outcome = LoginFailed("The rotation crashed.")
            if isinstance(outcome, LoginFailed):
                failures += 1
                self.metrics.rotations.labels(outcome.kind).inc()
                delay = backoff_delay(failures, self.config, self.rng)
                log.warning("password.rotation_failed", kind=outcome.kind, retry_in_s=round(delay))
                await asyncio.sleep(delay)
            else:
                failures = 0
                self.metrics.rotations.labels("ok").inc()
