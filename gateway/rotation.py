"""Password rotation: a login that also changes the Webapp password, and the schedule for it.

The Webapp changes a password as part of a login that carries ``{"new_password": ...}`` and still
returns a token, so a rotation is a login like any other for the token pool. :func:`log_in` is
the login the gateway makes whenever its password comes from ``WA_PASSWORD_FILE``; it sends
nothing itself (``post`` does) and decides, under the file's lock, with one rule above all: a
password that may have reached the Webapp is never destroyed.

1. A rotation writes the new password to ``<file>.next`` before sending it, and renames it over
   the file once the Webapp accepted it. A 401 or another 4xx answer means the Webapp did not
   act, and the new password is dropped; after anything else (a lost answer, a timeout, a 5xx,
   a cancelled login) the Webapp may have taken it, so it stays.
2. Every login tries a waiting ``<file>.next`` first, and finishes the rename when it works. A
   refused one is kept for ``SETTLE_AFTER`` seconds, since a Webapp that was too slow to answer
   may still act on it; only then, once the old password is seen to work, is it dropped. Until
   then no new rotation starts, so nothing overwrites it.
3. A login that the Webapp answers "password change required" (code 1024) rotates at once when
   rotation is on; otherwise the failure says how to do it.
4. Steps on disk run to their end even when the login is cancelled, and the lock is held until
   they have: a cancelled login can leave a new password waiting, never half a rename.

:class:`Rotator` starts a rotation once the password file is older than
``WA_PASSWORD_ROTATE_EVERY``, measured by the file's modification time, so the schedule survives
restarts and an operator who writes a new password by hand resets it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from .bearer import Account
from .config import TokenConfig
from .errors import reason
from .log import log_crash
from .login import BadCredentials, Grant, LoginFailed, LoginRefused, PasswordChangeRequired
from .metrics import Metrics
from .passwords import SETTLE_AFTER, LockUnavailable, PasswordFile, new_password
from .schedule import backoff_delay
from .secret import Secret
from .threads import on_disk
from .tokens import TokenPool
from .values import Invalid

log = structlog.get_logger("gateway.rotation")

# Sends one login: (password, new password or None) -> the grant, or a LoginFailed.
PostLogin = Callable[[Secret, Secret | None], Awaitable[Grant]]
# The longest a Rotator sleeps before looking at the file again (someone else may rotate it),
# and the cap on its retries after failed rotations.
RECHECK = 3600.0


async def log_in(
    file: PasswordFile, post: PostLogin, *, rotate: bool, rotate_if_required: bool, lock_wait: float
) -> Grant:
    """Log in with the password in ``file``; with ``rotate``, change it too (see the module)."""
    try:
        async with file.locked(lock_wait):
            return await _log_in(file, post, rotate=rotate, rotate_if_required=rotate_if_required)
    except LockUnavailable as exc:
        raise LoginFailed(f"The password file's lock is unavailable: {exc}.") from None


async def _log_in(
    file: PasswordFile, post: PostLogin, *, rotate: bool, rotate_if_required: bool
) -> Grant:
    current = await _read(file)
    pending = await _read_next(file)
    if pending is not None:
        try:
            grant = await post(pending, None)
        except BadCredentials:
            pass  # not taken, or not yet: the old password decides below
        else:
            committed = await _commit(file, pending)
            if committed:
                # Unlike a rotation, worth a look: one was interrupted (see the module).
                log.warning("password.recovered", password_file=str(file.path))
            if not (rotate and committed):  # a rotation on top waits until this one is kept
                return grant
            current, pending = pending, None
    if rotate:
        await _settled(file, pending)
        return await _rotate(file, post, current)
    try:
        grant = await post(current, None)
    except PasswordChangeRequired:
        if not rotate_if_required:
            raise
        await _settled(file, pending)
        return await _rotate(file, post, current)
    if pending is not None and not await on_disk(file.next_age) < SETTLE_AFTER:
        await _discard(file)  # refused long enough while the old password works: never taken
    return grant


async def _rotate(file: PasswordFile, post: PostLogin, current: Secret) -> Grant:
    password = new_password()
    try:
        await on_disk(file.write_next, password)
    except OSError as exc:
        raise LoginFailed(
            f"The new password could not be written to {file.next_path} ({reason(exc)}); "
            "nothing was sent."
        ) from None
    try:
        grant = await post(current, password)
    except (BadCredentials, LoginRefused):  # the Webapp answered no: it did not act
        await _discard(file)
        raise
    except BaseException:
        # It may act yet: its settling time starts now, not when the password was written.
        await on_disk(file.touch_next)
        raise
    if await _commit(file, password):
        log.info("password.rotated", password_file=str(file.path))
    return grant


async def _settled(file: PasswordFile, refused: Secret | None) -> None:
    """Refuse to start a rotation while a refused new password may still be taken late."""
    if refused is None:
        return
    age = await on_disk(file.next_age)
    if age < SETTLE_AFTER:
        raise LoginFailed(
            f"An earlier rotation's outcome is not known yet ({file.next_path} is kept); "
            f"the next one can start in {math.ceil(SETTLE_AFTER - age)} s."
        )


async def _commit(file: PasswordFile, password: Secret) -> bool:
    """Rename the accepted new password over the file; False (logged) if that failed, in
    which case it stays in ``<file>.next``, where every login tries it first."""
    problem = None
    try:
        await on_disk(file.commit, password)
    except (OSError, Invalid) as exc:
        problem = reason(exc)
    if problem is not None:
        log.error("password.commit_failed", password_file=str(file.path), problem=problem)
        return False
    return True


async def _discard(file: PasswordFile) -> None:
    try:
        await on_disk(file.discard_next)
    except OSError as exc:  # a read-only directory, say: it is tried and refused again later
        log.warning(
            "password.discard_failed", password_file=str(file.next_path), problem=reason(exc)
        )


async def _read(file: PasswordFile) -> Secret:
    try:
        return await asyncio.to_thread(file.read)
    except Invalid as exc:
        raise BadCredentials(f"The password file {exc}.") from None


async def _read_next(file: PasswordFile) -> Secret | None:
    try:
        return await asyncio.to_thread(file.read_next)
    except Invalid as exc:
        # It may hold the Webapp's password: neither ignore it nor write over it.
        raise LoginFailed(
            f"{file.next_path} {exc}; it may hold the Webapp's password, so the gateway "
            "neither uses nor replaces it until it is readable (or removed by hand)."
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
    # A failed rotation is not urgent (the old password still works): retries start where
    # failed logins' stop, and double up to RECHECK.
    _retry: TokenConfig = field(init=False)

    def __post_init__(self) -> None:
        self._retry = dataclasses.replace(
            self.config, backoff_initial=self.config.backoff_max, backoff_max=RECHECK
        )

    def start(self) -> None:
        """Start the schedule in the background."""
        self._task = asyncio.get_running_loop().create_task(self.run())

    async def close(self) -> None:
        """Stop the schedule (a rotation under way is the pool's to finish or cancel)."""
        if self._task is not None:
            self._task.cancel()
            # A cancellation of close() itself goes through (gather passes it on).
            await asyncio.gather(self._task, return_exceptions=True)

    def due_in(self) -> float:
        """Seconds until the next rotation is due (0 or less: now). Blocks on ``stat``."""
        age = self.file.age()
        if math.isnan(age):
            return 0.0  # a file that cannot be seen: the rotation's login says what is wrong
        waiting = self.file.next_age()  # an unsettled new password: no rotation before it is
        settles_in = 0.0 if math.isnan(waiting) else SETTLE_AFTER - waiting
        return max(self.every - age, settles_in)

    async def _rotate(self) -> str:
        """Rotate now; the result as the rotations metric names it."""
        outcome = await self.pool.rotate(self.account)
        if isinstance(outcome, LoginFailed):
            return outcome.kind
        if await asyncio.to_thread(self.file.not_kept):
            # Taken by the Webapp, not by the file: no rotation can follow until it is.
            return "not_kept"
        return "ok"

    async def run(self) -> None:
        """Rotate whenever due, forever. After a success, wait a whole interval whatever the
        file's clock says; after a failure, back off from GATEWAY_LOGIN_BACKOFF_MAX up to
        RECHECK."""
        failures = 0
        while True:
            try:
                due_in = await asyncio.to_thread(self.due_in)
                if due_in > 0:
                    await asyncio.sleep(min(due_in, RECHECK))
                    continue
                result = await self._rotate()
            except Exception as exc:  # a bug or a failing disk must not end the schedule for good
                log_crash("password.rotation_crashed", exc)
                result = LoginFailed.kind
            self.metrics.rotations.labels(result).inc()
            if result != "ok":
                failures += 1
                delay = backoff_delay(failures, self._retry, self.rng)
                log.warning("password.rotation_failed", kind=result, retry_in_s=round(delay))
            else:
                failures = 0
                delay = self.every
            await asyncio.sleep(delay)
