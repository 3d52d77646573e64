"""The Webapp password at rest: the password file, its lock, and new passwords for rotation.

A rotation changes the password in two places, the Webapp and the file, which cannot change at
one instant. :mod:`gateway.rotation` orders the steps so that no interruption can lose the
password, using three files side by side:

- ``<file>``: the password in use, read at every login;
- ``<file>.next``: a new password, complete on disk (written to a temporary name, flushed and
  renamed, directory included) *before* the Webapp hears of it, and renamed over ``<file>`` only
  once the Webapp has accepted it. It takes the owner, group and (at most owner and group) mode
  of ``<file>``, so a rotation run by another user leaves a file the gateway can still read;
- ``<file>.lock``: an exclusive ``flock`` held for a whole login, so that ``wa-gateway
  rotate-password`` and a running gateway on the same host never interleave their steps. It is
  opened for writing where it can be: NFS turns ``flock`` into a byte-range lock, which refuses
  an exclusive lock on a descriptor open for reading only. Only where the directory cannot take
  new files (nobody can rotate there) do logins go without it; any other failure to open or lock
  it fails the login, named, rather than risk an unguarded rotation.

The methods block on the file system (an NFS server may take its time): callers run them in a
worker thread with :func:`on_disk`, :meth:`PasswordFile.locked` does so itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import math
import os
import random
import secrets
import stat
import string
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from .errors import reason
from .files import read_password_file
from .secret import Secret
from .threads import on_disk

# The Webapp's rules: 8 to 64 characters, at least one of each class. Its specials, verbatim.
SPECIALS = "!\"#$%&'()*+,-./:;<=>?@[]^_`{|}~"
CHARACTER_CLASSES = (string.ascii_lowercase, string.ascii_uppercase, string.digits, SPECIALS)
# About 200 bits: far beyond guessing, well inside the Webapp's 64-character limit.
PASSWORD_LENGTH = 32
# How long a new password the Webapp refused is kept in case a late answer is still to come:
# far beyond any login timeout (at most a third of it), and short next to any sensible rotation
# interval. Counted from when the last login that carried it gave up.
SETTLE_AFTER = 900.0
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


class LockUnavailable(Exception):
    """The password file's lock could not be taken: held elsewhere too long, or unusable."""


@dataclass(frozen=True)
class PasswordFile:
    """The password file named by ``WA_PASSWORD_FILE`` and its two companions."""

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
        """The new password of a rotation not finished yet, if any (``Invalid`` if unreadable)."""
        if not os.path.lexists(self.next_path):
            return None
        return read_password_file(self.next_path)

    def next_age(self) -> float:
        """Seconds since ``<file>.next`` was written; NaN without one."""
        return _age(self.next_path)

    def not_kept(self) -> bool:
        """Whether a new password waits in ``<file>.next``: right after a rotation the Webapp
        accepted, one that could not be renamed over the file (every login tries it first, but
        no further rotation happens until it can be)."""
        return self.next_path.exists()

    def age(self) -> float:
        """Seconds since the password file was last written; NaN when it cannot be seen."""
        return _age(self.path)

    def write_next(self, password: Secret) -> None:
        """Keep ``password`` in ``<file>.next``, complete and durable before this returns."""
        current = self.path.stat()
        # A name of its own (mkstemp: O_EXCL, 0600), so that no other writer can interleave.
        fd, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=self.next_path.name + ".")
        try:
            _take_owner(fd, current)
            os.fchmod(fd, stat.S_IMODE(current.st_mode) & 0o660 | 0o600)
            os.write(fd, (password.reveal() + "\n").encode())
            os.fsync(fd)
        except BaseException:
            os.unlink(temporary)
            raise
        finally:
            os.close(fd)
        os.replace(temporary, self.next_path)
        self._sync_directory()

    def touch_next(self) -> None:
        """Restart the settling time of ``<file>.next``: a login carrying it just gave up."""
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.next_path)

    def commit(self, password: Secret) -> None:
        """Make ``password``, waiting in ``<file>.next``, the one in use: rename it, durably.

        Only if ``<file>.next`` still holds ``password``: a writer the lock cannot reach (on
        another host) may have replaced it meanwhile.
        """
        waiting = self.read_next()
        if waiting is None and self.read() == password:
            return  # finished by another process that logged in with it
        if waiting != password:
            raise FileNotFoundError(errno.ENOENT, f"{self.next_path} no longer holds it")
        os.replace(self.next_path, self.path)
        with contextlib.suppress(OSError):  # renamed already: durability is best effort now
            self._sync_directory()

    def discard_next(self) -> None:
        """Forget a new password the Webapp is known not to have taken."""
        self.next_path.unlink(missing_ok=True)

    def cannot_rotate(self) -> str | None:
        """Why a rotation could not keep a new password here, or None: the file must be one a
        rename can replace (not a symlink), in a directory that takes new files."""
        if self.path.is_symlink():
            return f"{self.path} is a symlink, which a new password would replace"
        if not os.access(self.path.parent, os.W_OK | os.X_OK):
            return (
                f"the directory of {self.path} is not writable, so a new password could not be kept"
            )
        return None

    @contextlib.asynccontextmanager
    async def locked(self, wait: float) -> AsyncIterator[None]:
        """Hold the lock for the body; :class:`LockUnavailable` after ``wait`` seconds, or at
        once when the lock file cannot be used where a rotation could happen.

        Polls a non-blocking ``flock`` in a worker thread, so that neither a slow file server
        stalls the event loop nor the wait escapes cancellation.
        """
        fd = await on_disk(self._open_lock, undo=_close)
        if fd is None:
            yield
            return
        try:
            deadline = asyncio.get_running_loop().time() + wait
            while not await on_disk(self._try_lock, fd):
                if asyncio.get_running_loop().time() >= deadline:
                    raise LockUnavailable(f"{self.lock_path} stayed locked for {wait:g} s")
                await asyncio.sleep(_LOCK_POLL)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _open_lock(self) -> int | None:
        try:
            fd = _open_for_locking(self.lock_path)
        except OSError as exc:
            if exc.errno == errno.EROFS or not os.access(self.path.parent, os.W_OK):
                return None  # nobody can write a new password here: no rotation to wait for
            raise LockUnavailable(f"{self.lock_path} cannot be opened ({reason(exc)})") from None
        # Made by another user (a rotate-password run as root, say) with a tight umask, it must
        # still open for the password file's owner and group: hand it over (it is empty).
        with contextlib.suppress(OSError):
            _take_owner(fd, self.path.stat())
            os.fchmod(fd, 0o660)
        return fd

    def _try_lock(self, fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # held by another login
        except OSError as exc:  # ENOLCK without a lock manager, EBADF on NFS read-only...
            raise LockUnavailable(f"{self.lock_path} cannot be locked ({reason(exc)})") from None
        return True

    def _sync_directory(self) -> None:
        fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _take_owner(fd: int, like: os.stat_result) -> None:
    """Give the file at ``fd`` the owner and group of ``like`` where this process may; as that
    owner already (the usual case) there is nothing to do."""
    mine = os.fstat(fd)
    if (mine.st_uid, mine.st_gid) != (like.st_uid, like.st_gid):
        with contextlib.suppress(PermissionError):  # not root: it stays ours
            os.fchown(fd, like.st_uid, like.st_gid)


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return math.nan


def _open_for_locking(path: Path) -> int:
    flags = os.O_CREAT | os.O_NOFOLLOW
    try:
        return os.open(path, os.O_RDWR | flags, 0o660)
    except PermissionError:
        # Another user's lock file, closed to us for writing: reading is enough for flock on a
        # local file system (on NFS the lock itself then fails, named).
        return os.open(path, os.O_RDONLY | flags, 0o660)


def _close(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)
