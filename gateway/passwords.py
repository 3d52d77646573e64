"""The Webapp password at rest: the password file, its lock, and new passwords for rotation.

A rotation changes the password in two places, the Webapp and the file, which cannot change at
one instant. :mod:`gateway.rotation` orders the steps so that every interruption can be finished
later, using three files side by side:

- ``<file>``: the password in use, read at every login;
- ``<file>.next``: a new password, written (0600, flushed to disk) *before* the Webapp hears of
  it and renamed over ``<file>`` (atomically) only once the Webapp has accepted it, so a crash or a
  lost answer in between leaves the new password where the next login finds it;
- ``<file>.lock``: an exclusive ``flock`` held for a whole login, so that ``wa-gateway
  rotate-password`` and a running gateway on the same host never interleave their steps. Where
  the directory is read-only nobody can rotate, and logins go ahead without the lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import math
import os
import random
import secrets
import string
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from .secret import Secret
from .values import read_password_file

# The Webapp's rules: 8 to 64 characters, at least one of each class. Its specials, verbatim.
SPECIALS = "!\"#$%&'()*+,-./:;<=>?@[]^_`{|}~"
CHARACTER_CLASSES = (string.ascii_lowercase, string.ascii_uppercase, string.digits, SPECIALS)
# About 200 bits: far beyond guessing, well inside the Webapp's 64-character limit.
PASSWORD_LENGTH = 32
# How often a login waiting for another process's lock looks again.
_LOCK_POLL = 0.05


def new_password(rng: random.Random | None = None, length: int = PASSWORD_LENGTH) -> Secret:
    """A random password that meets the Webapp's rules (one character of each class at least)."""
    rng = rng or secrets.SystemRandom()
    alphabet = "".join(CHARACTER_CLASSES)
    characters = [rng.choice(group) for group in CHARACTER_CLASSES]
    characters += [rng.choice(alphabet) for _ in range(length - len(characters))]
    rng.shuffle(characters)
    return Secret("".join(characters))


class LockTimeout(Exception):
    """Another process held the password file's lock for longer than a login may wait."""


@dataclass(frozen=True)
class PasswordFile:
    """The password file named by ``WA_PASSWORD_FILE`` and its two companions.

    The methods block on the file system (``fsync`` included): call them through
    ``asyncio.to_thread``.
    """

    path: Path

    @property
    def next_path(self) -> Path:
        """Where a new password waits until the Webapp has accepted it."""
        return self.path.with_name(self.path.name + ".next")

    @property
    def lock_path(self) -> Path:
        """The file whose ``flock`` serialises logins and rotations on this host."""
        return self.path.with_name(self.path.name + ".lock")

    def read(self) -> Secret:
        """The password in use; :class:`~gateway.values.Invalid` says why it cannot be read."""
        return read_password_file(self.path)

    def read_next(self) -> Secret | None:
        """The new password of a rotation that was not finished, if there is one to try."""
        if not self.next_path.exists():
            return None
        return read_password_file(self.next_path)

    def write_next(self, password: Secret) -> None:
        """Keep ``password`` in ``<file>.next``, readable by the owner only, flushed to disk."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
        fd = os.open(self.next_path, flags, 0o600)
        try:
            os.fchmod(fd, 0o600)  # an older file of that name may have had another mode
            os.write(fd, (password.reveal() + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def commit(self) -> None:
        """Make the new password the one in use: rename it over the file, durably."""
        os.replace(self.next_path, self.path)
        self._sync_directory()

    def discard_next(self) -> None:
        """Forget a new password the Webapp never accepted."""
        self.next_path.unlink(missing_ok=True)

    def age(self) -> float:
        """Seconds since the password file was last written; NaN when it cannot be seen."""
        try:
            return time.time() - self.path.stat().st_mtime
        except OSError:
            return math.nan

    def writable(self) -> bool:
        """Whether a rotation could keep a new password here (the directory takes new files)."""
        return os.access(self.path.parent, os.W_OK | os.X_OK)

    @contextlib.asynccontextmanager
    async def locked(self, wait: float) -> AsyncIterator[None]:
        """Hold the lock for the body; raise :class:`LockTimeout` after ``wait`` seconds.

        Polls a non-blocking ``flock``, so that the wait can be cancelled like any other.
        """
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError:  # a read-only directory: no rotation can happen here to wait for
            yield
            return
        try:
            deadline = asyncio.get_running_loop().time() + wait
            while not _try_lock(fd):
                if asyncio.get_running_loop().time() >= deadline:
                    raise LockTimeout(f"{self.lock_path} stayed locked for {wait:g} s")
                await asyncio.sleep(_LOCK_POLL)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _sync_directory(self) -> None:
        fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
